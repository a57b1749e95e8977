//! Rendering: aligned tables, JSON, YAML, and colour only when stdout is a terminal.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::config::{env, Source};
use crate::error::Error;

/// `-o` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Aligned columns with extra columns (where a command has them).
    Wide,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Whether to colour; decided once from the terminal and `NO_COLOR`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes.
    pub color: bool,
}

impl Style {
    /// Colour when stdout is a terminal, `NO_COLOR` is unset and `TERM` is not `dumb`.
    pub fn detect(src: &dyn Source) -> Style {
        let color = std::io::stdout().is_terminal()
            && src.get(env::NO_COLOR).is_none_or(|v| v.is_empty())
            && src.get("TERM").is_none_or(|t| t != "dumb");
        Style { color }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Green (success).
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }

    /// Red (failure).
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }

    /// Yellow (warning).
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }

    /// Bold (headings).
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// Columns separated by at least this many spaces (istioctl's ztunnel-config uses one).
const GAP: usize = 1;

/// A table of text cells, rendered with every column padded to its widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are empty, extra cells are dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The aligned text, one line per row after the header line, no trailing spaces.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut l = String::new();
            for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
                l.push_str(c);
                if i + 1 < line.len() {
                    l.push_str(&" ".repeat(w - width(c) + GAP));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Pretty JSON with a final newline.
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

/// YAML (starts with the first key; no document marker).
pub fn to_yaml<T: Serialize + ?Sized>(v: &T) -> Result<String, Error> {
    serde_yaml_ng::to_string(v)
        .map_err(|e| Error::Output(std::io::Error::other(format!("cannot encode YAML: {e}"))))
}

/// Writes `v` as JSON or YAML (`format` must be one of those).
pub fn write_data<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    format: Format,
    v: &T,
) -> Result<(), Error> {
    let text = match format {
        Format::Yaml => to_yaml(v)?,
        _ => to_json(v),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_spaces() {
        let mut t = Table::new(&["NAME", "POD NAME", "X"]);
        t.row(vec!["a".into(), "bbbbbbbbbb".into(), "".into()]);
        t.row(vec!["ccccc".into(), "d".into(), "e".into()]);
        assert_eq!(
            t.render(),
            "NAME  POD NAME   X\na     bbbbbbbbbb\nccccc d          e\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        assert_eq!(Style { color: false }.red("x"), "x");
        assert_eq!(Style { color: true }.red("x"), "\x1b[31mx\x1b[0m");
    }
}
