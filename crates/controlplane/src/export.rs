//! Failure events as CSV, for a spreadsheet or an incident report: one row per takeover, one
//! column per phase the agents reported (whatever phases they report, so a newer agent's extra
//! phases appear without a change here).

use std::collections::BTreeSet;

use serde_json::Value;

/// A CSV text with a header row.
pub fn csv(events: &[Value]) -> String {
    let mut phases = BTreeSet::new();
    for e in events {
        if let Value::Object(o) = e {
            for (k, v) in o {
                if k.ends_with("_ms") && k != "detected_unix_ms" && v.is_number() {
                    phases.insert(k.clone());
                }
            }
        }
    }
    let mut out = String::from("node,epoch,detected_unix_ms,cause");
    for p in &phases {
        out.push(',');
        out.push_str(p);
    }
    out.push('\n');
    for e in events {
        let f = |k: &str| e.get(k).map(plain).unwrap_or_default();
        let mut row = vec![
            quote(&f("node")),
            f("epoch"),
            f("detected_unix_ms"),
            quote(&f("cause")),
        ];
        row.extend(phases.iter().map(|p| f(p)));
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// RFC 4180 quoting; a leading formula character is neutralised so that a cause text cannot
/// become a spreadsheet formula.
fn quote(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_column_per_phase_and_quoted_text() {
        let ev = vec![
            json!({"node": "gw-2", "epoch": 5, "detected_unix_ms": 10, "cause": "=cmd \"x\"", "ready_ms": 2.5}),
            json!({"node": "gw-1", "epoch": 6, "detected_unix_ms": 20, "cause": "c", "epoch_durable_ms": 0.4}),
        ];
        let text = csv(&ev);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "node,epoch,detected_unix_ms,cause,epoch_durable_ms,ready_ms"
        );
        assert_eq!(lines[1], "\"gw-2\",5,10,\"'=cmd \"\"x\"\"\",,2.5");
        assert_eq!(lines[2], "\"gw-1\",6,20,\"c\",0.4,");
    }
}
