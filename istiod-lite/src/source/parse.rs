//! Splitting a YAML file into documents and documents into typed objects.
//!
//! Documents are split on `---` lines *before* YAML parsing so that a syntax error in one
//! document cannot hide the other documents of the same file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::Value;

use super::kinds::{decode_kind, FieldError, Object};

/// One invalid object (or document), skipped while the rest of the config keeps working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// File the object came from.
    pub file: PathBuf,
    /// 1-based index of the document in the file (empty documents not counted); 0 for an
    /// object read from the Kubernetes API.
    pub document: usize,
    /// Line where the document starts.
    pub line: usize,
    /// `kind:` when it could be read.
    pub kind: Option<String>,
    /// `namespace/name` or `name` when it could be read.
    pub object: Option<String>,
    /// Dotted path of the offending field; empty when the whole document is bad.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// Metric label: the object's kind, or "unknown" when the document has none.
    pub fn kind_label(&self) -> &str {
        self.kind.as_deref().unwrap_or("unknown")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        match (&self.kind, &self.object) {
            (Some(k), Some(o)) => write!(f, "{k} {o}")?,
            (Some(k), None) => write!(f, "{k} (unnamed)")?,
            (None, Some(o)) => write!(f, "object {o}")?,
            (None, None) => f.write_str("object")?,
        }
        // Objects from the API server have no document or line (document 0).
        if self.document > 0 {
            write!(f, " (document {}, line {})", self.document, self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Result of parsing one file: its good objects and one error per bad document.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Objects of supported kinds, in file order.
    pub objects: Vec<Object>,
    /// Invalid documents.
    pub errors: Vec<ConfigError>,
}

/// A document's text and the 1-based line where it starts.
struct Document<'a> {
    line: usize,
    text: &'a str,
}

/// Splits on `---` document markers (and `...` end markers) at column 0.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        let marker =
            line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "...";
        if marker {
            docs.push(Document {
                line: start_line,
                text: &text[start_byte..offset],
            });
            if line == "..." || line[3..].trim().is_empty() {
                start_byte = offset + raw.len();
                start_line = idx + 2;
            } else {
                // Content after "--- " on the marker line belongs to the new document.
                start_byte = offset + 3;
                start_line = idx + 1;
            }
        }
        offset += raw.len();
    }
    docs.push(Document {
        line: start_line,
        text: &text[start_byte..],
    });
    docs.retain(|d| !is_blank(d.text));
    docs
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// Parses every document of `text` (the contents of `file`).
pub fn parse_file(file: &Path, text: &str) -> ParsedFile {
    let mut out = ParsedFile::default();
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let mut err = ConfigError {
            file: file.to_path_buf(),
            document: i + 1,
            line: doc.line,
            kind: None,
            object: None,
            field: String::new(),
            message: String::new(),
        };
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                // libyaml counts lines from the start of the document; report file lines.
                err.message = format!(
                    "invalid YAML: {}",
                    shift_lines(&e.to_string(), doc.line - 1)
                );
                out.errors.push(err);
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let Some(map) = value.as_mapping() else {
            err.message =
                "document is not a mapping (expected an object with apiVersion, kind, metadata)"
                    .into();
            out.errors.push(err);
            continue;
        };
        err.object = object_name(map);
        let kind = match map.get("kind") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            Some(_) => {
                err.field = "kind".into();
                err.message = "must be a non-empty string".into();
                out.errors.push(err);
                continue;
            }
            None => {
                err.field = "kind".into();
                err.message = "required field is missing".into();
                out.errors.push(err);
                continue;
            }
        };
        err.kind = Some(kind.clone());
        match decode_kind(&kind, value) {
            Ok(Some(obj)) => out.objects.push(obj),
            Ok(None) => {
                tracing::debug!(file = %file.display(), document = i + 1, kind = %kind, "ignoring unsupported kind");
            }
            Err(FieldError { field, message }) => {
                err.field = field;
                err.message = message;
                out.errors.push(err);
            }
        }
    }
    out
}

/// Adds `offset` to every "line N" in a parser message.
fn shift_lines(msg: &str, offset: usize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(pos) = rest.find("line ") {
        let (head, tail) = rest.split_at(pos + "line ".len());
        out.push_str(head);
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Best-effort `namespace/name` of a document, for error messages about it.
fn object_name(map: &serde_yaml_ng::Mapping) -> Option<String> {
    let meta = map.get("metadata")?.as_mapping()?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinds::{IntOrString, TargetPort};

    fn parse(text: &str) -> ParsedFile {
        parse_file(Path::new("cfg/app.yaml"), text)
    }

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo-a
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo-a
  labels: {app: client}
spec:
  nodeName: node1
  serviceAccountName: client
  containers:
  - name: app
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: 127.0.1.1
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo-b}
spec:
  selector: {app: server}
  clusterIP: 127.0.2.1
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: tcp}
  - {name: grpc-x, port: 90, targetPort: grpc}
  - {port: 100}
---
# a kind we do not handle is ignored
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: waypoint}
"#;

    #[test]
    fn parses_supported_kinds_and_ignores_others() {
        let p = parse(GOOD);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 3);
        let Object::Pod(pod) = &p.objects[1] else {
            panic!("not a pod")
        };
        assert_eq!(pod.status.ip, Some("127.0.1.1".parse().unwrap()));
        assert_eq!(pod.service_account(), "client");
        assert_eq!(pod.named_port("http"), Some(8080));
        assert!(pod.is_ready());
        let Object::Service(svc) = &p.objects[2] else {
            panic!("not a service")
        };
        assert_eq!(svc.spec.ip, Some("127.0.2.1".parse().unwrap()));
        assert_eq!(svc.spec.ports[0].target_port, Some(IntOrString::Int(8080)));
        assert_eq!(svc.spec.ports[1].target(), TargetPort::Named("grpc".into()));
        assert_eq!(svc.spec.ports[2].target(), TargetPort::Number(100));
    }

    #[test]
    fn namespace_defaults() {
        let p = parse("kind: Pod\nmetadata: {name: p}\n---\nkind: Namespace\nmetadata: {name: n, namespace: x}\n");
        assert_eq!(p.objects[0].meta().namespace.as_deref(), Some("default"));
        assert_eq!(p.objects[1].meta().namespace, None);
    }

    #[test]
    fn bad_pod_ip_names_file_object_and_field_and_keeps_other_documents() {
        let text = "kind: Pod\nmetadata: {name: a, namespace: ns}\nstatus: {podIP: 10.0.0.300}\n---\nkind: Pod\nmetadata: {name: b, namespace: ns}\n";
        let p = parse(text);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.objects[0].meta().name, "b");
        assert_eq!(p.errors.len(), 1);
        let e = &p.errors[0];
        assert_eq!(e.field, "status.podIP");
        assert_eq!(e.kind_label(), "Pod");
        let msg = e.to_string();
        assert!(
            msg.starts_with("cfg/app.yaml: Pod ns/a (document 1, line 1): field status.podIP:"),
            "{msg}"
        );
        assert!(msg.contains("10.0.0.300"), "{msg}");
    }

    #[test]
    fn missing_name_points_at_metadata_name() {
        let p = parse("---\nkind: Service\nmetadata:\n  namespace: ns\nspec: {}\n");
        let e = &p.errors[0];
        assert_eq!(
            (e.field.as_str(), e.line, e.document),
            ("metadata.name", 2, 1)
        );
        assert_eq!(e.to_string(), "cfg/app.yaml: Service (unnamed) (document 1, line 2): field metadata.name: required field is missing");
    }

    #[test]
    fn wrong_types_report_the_path() {
        let p = parse("kind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n");
        assert_eq!(p.errors[0].field, "spec.ports[0].port");
        assert_eq!(p.errors[0].object.as_deref(), Some("s"));
        let p = parse("kind: Service\nmetadata: {name: s}\nspec: {clusterIP: banana}\n");
        assert_eq!(p.errors[0].field, "spec.clusterIP");
        let p = parse("kind: Pod\nmetadata: {name: p, labels: {version: [1]}}\n");
        assert_eq!(p.errors[0].field, "metadata.labels.version");
    }

    #[test]
    fn broken_yaml_in_one_document_keeps_the_others() {
        let text = "kind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [unclosed\n---\nkind: Namespace\nmetadata: {name: c}\n";
        let p = parse(text);
        assert_eq!(p.objects.len(), 2, "{:?}", p.errors);
        assert_eq!(p.errors.len(), 1);
        let e = &p.errors[0];
        assert_eq!((e.document, e.line), (2, 4));
        assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
        // libyaml's position is a file position thanks to the padding.
        assert!(
            e.message.contains("line 5") || e.message.contains("line 6"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_kind_and_non_mapping() {
        let p = parse("metadata: {name: x}\n---\n- a list\n---\n# only a comment\n");
        assert_eq!(p.errors.len(), 2);
        assert_eq!(p.errors[0].field, "kind");
        assert_eq!(p.errors[0].kind_label(), "unknown");
        assert!(p.errors[1].message.contains("not a mapping"));
    }

    #[test]
    fn null_lists_and_maps_are_empty() {
        let p = parse("kind: Pod\nmetadata:\n  name: p\n  labels:\nspec:\n  containers:\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }

    #[test]
    fn document_markers() {
        let docs = split_documents("a: 1\n---\n\n---   \n--- \nb: 2\n...\n---\nc: 3");
        let texts: Vec<_> = docs.iter().map(|d| (d.line, d.text.trim())).collect();
        // "---   " with trailing spaces is a marker too.
        assert_eq!(texts, vec![(1, "a: 1"), (6, "b: 2"), (9, "c: 3")]);
    }
}
