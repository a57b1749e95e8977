//! Prometheus data: the text exposition format components serve on `/metrics`, and instant
//! vectors from a Prometheus server's `/api/v1/query`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Labels of one series.
pub type Labels = BTreeMap<String, String>;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_total` etc. suffixes as exposed).
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

/// Parses the text exposition format; lines that do not parse are skipped (a scrape is read
/// for a handful of metrics, not validated).
pub fn parse_text(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if rest.starts_with('{') {
        let (l, after) = parse_labels(&rest[1..])?;
        labels = l;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parses `k="v",...}`; returns the labels and what follows the closing brace.
fn parse_labels(s: &str) -> Option<(Labels, &str)> {
    let mut labels = Labels::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip separators; a closing brace ends the set.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &s[start + 1..]));
        }
        let eq = s[start..].find('=')? + start;
        let key = s[start..eq].trim().to_string();
        while chars.peek().is_some_and(|&(i, _)| i <= eq) {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Why a Prometheus answer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `status: error`.
    #[error("query failed: {0}")]
    Failed(String),
    /// A result type other than an instant vector.
    #[error("expected a vector result, got {0}")]
    NotAVector(String),
}

/// The samples of an instant-vector answer of `/api/v1/query`.
pub fn parse_vector(body: &[u8]) -> Result<Vec<Sample>, QueryError> {
    let v: Value = serde_json::from_slice(body)?;
    if v.get("status").and_then(Value::as_str) != Some("success") {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no status: success")
            .to_string();
        return Err(QueryError::Failed(why));
    }
    let data = v.get("data").cloned().unwrap_or_default();
    let kind = data.get("resultType").and_then(Value::as_str).unwrap_or("");
    if kind != "vector" {
        return Err(QueryError::NotAVector(kind.to_string()));
    }
    let result = data
        .get("result")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(result
        .iter()
        .filter_map(|r| {
            let labels: Labels = r
                .get("metric")?
                .as_object()?
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let value = parse_value(r.get("value")?.get(1)?.as_str()?)?;
            Some(Sample {
                name: labels.get("__name__").cloned().unwrap_or_default(),
                labels,
                value,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines() {
        let text = r#"
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",destination_workload="server",x="a\"b,c}"} 3
istio_build{component="ztunnel",tag="0.1.0"} 1
up 1 1700000000000
h_bucket{le="+Inf"} +Inf
broken{a="b" 1
"#;
        let s = parse_text(text);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].labels["destination_workload"], "server");
        assert_eq!(s[0].labels["x"], "a\"b,c}");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[2].name, "up");
        assert!(s[3].value.is_infinite());
    }

    #[test]
    fn api_vectors() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"destination_workload":"server"},"value":[1700000000.1,"2.5"]}]}}"#;
        let s = parse_vector(body).unwrap();
        assert_eq!(s[0].labels["destination_workload"], "server");
        assert_eq!(s[0].value, 2.5);
        let e = parse_vector(br#"{"status":"error","error":"parse error"}"#).unwrap_err();
        assert!(e.to_string().contains("parse error"));
    }
}
