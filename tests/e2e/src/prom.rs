//! Prometheus text exposition: parse samples and pick labelled series.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// Value of label `k`, or "".
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }

    /// True when every `(k, v)` pair matches.
    pub fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format, skipping comments and lines it cannot read.
    pub fn parse(text: &str) -> Self {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Samples of `name` whose labels include all of `want`.
    pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.matches(want))
            .collect()
    }

    /// Sum of the values of [`Metrics::find`].
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.find(name, want).iter().map(|s| s.value).sum()
    }

    /// Lines of series whose name starts with `prefix` (for printing).
    pub fn lines_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], BTreeMap::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip separators; `}` ends the set.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let (i, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &s[i + 1..]));
        }
        let mut key = String::from(c);
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    other => val.push(other),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.insert(key.trim().to_string(), val);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_plain_series() {
        let m = Metrics::parse(
            "# TYPE x counter\nistio_tcp_connections_opened_total{reporter=\"source\",source_principal=\"spiffe://cluster.local/ns/a/sa/b\",q=\"a\\\"b\"} 3\nup 1\nh_bucket{le=\"+Inf\"} 2\n",
        );
        assert_eq!(m.samples.len(), 3);
        let s = &m.find(
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        )[0];
        assert_eq!(s.value, 3.0);
        assert_eq!(
            s.label("source_principal"),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        assert_eq!(s.label("q"), "a\"b");
        assert_eq!(m.sum("up", &[]), 1.0);
        assert!(m
            .find(
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination")]
            )
            .is_empty());
    }
}
