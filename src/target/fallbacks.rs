//! The `Helicone-Fallbacks` header: a JSON array of targets tried in order. Pure: the header's
//! bytes in, checked entries (or a message naming the entry and field) out.

use super::url::TargetUrl;
use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::ops::RangeInclusive;

pub const HEADER: &str = "helicone-fallbacks";

/// One entry, checked.
#[derive(Debug, Clone)]
pub struct Entry {
    pub url: TargetUrl,
    /// Set on the request, replacing the client's header of the same name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Statuses that move on to the next entry.
    pub on_codes: Vec<RangeInclusive<u16>>,
    /// Merged into the JSON body for this entry.
    pub body_override: Option<Map<String, Value>>,
}

impl Entry {
    pub fn moves_on(&self, status: u16) -> bool {
        self.on_codes.iter().any(|r| r.contains(&status))
    }
}

/// Header names a header-mode request never passes on from the client, and an entry may not
/// set: hop-by-hop, framing and `Host` (set per attempt), and detour's and Helicone's own.
pub fn reserved_header(name: &str) -> bool {
    crate::headers::hop_by_hop(name)
        || matches!(name, "host" | "content-length" | "expect")
        || crate::headers::steering(name)
}

/// Parse and check the header's value; at most `max` entries.
pub fn parse(value: &[u8], max: usize) -> Result<Vec<Entry>, String> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| format!("Helicone-Fallbacks is not valid JSON: {e}"))?;
    let Value::Array(items) = v else {
        return Err("Helicone-Fallbacks must be a JSON array of targets".into());
    };
    if items.is_empty() {
        return Err("Helicone-Fallbacks is empty: give at least one target".into());
    }
    if items.len() > max {
        return Err(format!(
            "Helicone-Fallbacks has {} entries; at most {max} are allowed",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| entry(item).map_err(|m| format!("Helicone-Fallbacks[{i}]{m}")))
        .collect()
}

fn entry(item: &Value) -> Result<Entry, String> {
    let Value::Object(o) = item else {
        return Err(": must be an object".into());
    };
    let url = match o.get("target-url") {
        Some(Value::String(s)) => TargetUrl::parse(s).map_err(|m| format!(".target-url {m}"))?,
        Some(_) => return Err(".target-url: must be a string".into()),
        None => return Err(": lacks `target-url`".into()),
    };
    let headers = match o.get("headers") {
        Some(Value::Object(h)) => headers(h)?,
        Some(_) => return Err(".headers: must be an object of strings".into()),
        None => return Err(": lacks `headers` (use {} for none)".into()),
    };
    let on_codes = match o.get("onCodes") {
        Some(Value::Array(c)) => c
            .iter()
            .enumerate()
            .map(|(j, c)| code(c).map_err(|m| format!(".onCodes[{j}]: {m}")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(".onCodes: must be an array".into()),
        None => return Err(": lacks `onCodes` (use [] for none)".into()),
    };
    let body_override = match o.get("bodyKeyOverride") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(".bodyKeyOverride: must be an object".into()),
    };
    Ok(Entry {
        url,
        headers,
        on_codes,
        body_override,
    })
}

fn headers(h: &Map<String, Value>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    h.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!(".headers: `{k}` is not a valid header name"))?;
            if reserved_header(name.as_str()) {
                return Err(format!(
                    ".headers: `{k}` may not be set by a fallback entry"
                ));
            }
            let Value::String(s) = v else {
                return Err(format!(".headers.{k}: must be a string"));
            };
            let value = HeaderValue::from_str(s)
                .map_err(|_| format!(".headers.{k}: not a valid header value"))?;
            Ok((name, value))
        })
        .collect()
}

fn code(c: &Value) -> Result<RangeInclusive<u16>, String> {
    let status = |v: Option<&Value>| -> Option<u16> {
        v?.as_u64()
            .filter(|n| (100..=599).contains(n))
            .map(|n| n as u16)
    };
    match c {
        Value::Number(_) => status(Some(c))
            .map(|s| s..=s)
            .ok_or_else(|| "a status code must be an integer in 100..=599".into()),
        Value::Object(o) => match (status(o.get("from")), status(o.get("to"))) {
            (Some(f), Some(t)) if f <= t => Ok(f..=t),
            (Some(_), Some(_)) => Err("`from` must not be greater than `to`".into()),
            _ => Err("a range needs `from` and `to`, integers in 100..=599".into()),
        },
        _ => Err("expected a status code or {\"from\": n, \"to\": n}".into()),
    }
}

/// Merge `over` into `base`: objects key by key, recursively; any other value replaces.
pub fn merge(base: &mut Value, over: &Map<String, Value>) {
    if !base.is_object() {
        *base = Value::Object(Map::new());
    }
    let Value::Object(b) = base else { return };
    for (k, v) in over {
        match (b.get_mut(k), v) {
            (Some(existing @ Value::Object(_)), Value::Object(o)) => merge(existing, o),
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: &str) -> String {
        parse(v.as_bytes(), 10).expect_err(v)
    }

    #[test]
    fn a_full_entry() {
        let h = r#"[{"target-url":"https://api.openai.com","headers":{"authorization":"Bearer k"},
            "onCodes":[429,{"from":500,"to":599}],"bodyKeyOverride":{"model":"x"}},
            {"target-url":"https://api.groq.com/openai","headers":{},"onCodes":[]}]"#;
        let e = parse(h.as_bytes(), 10).expect("parses");
        assert_eq!(e.len(), 2);
        assert!(e[0].moves_on(429) && e[0].moves_on(503) && !e[0].moves_on(400));
        assert_eq!(e[0].headers[0].0.as_str(), "authorization");
        assert_eq!(e[1].url.base_path, "/openai");
        assert!(e[1].body_override.is_none());
    }

    #[test]
    fn every_fault_names_the_entry_and_field() {
        let ok = r#"{"target-url":"https://a.com","headers":{},"onCodes":[]}"#;
        for (h, want) in [
            ("not json", "not valid JSON"),
            ("{}", "JSON array"),
            ("[]", "empty"),
            ("[1]", "[0]: must be an object"),
            (
                r#"[{"headers":{},"onCodes":[]}]"#,
                "[0]: lacks `target-url`",
            ),
            (
                r#"[{"target-url":5,"headers":{},"onCodes":[]}]"#,
                "[0].target-url: must be a string",
            ),
            (
                r#"[{"target-url":"ftp://a","headers":{},"onCodes":[]}]"#,
                "[0].target-url must start",
            ),
            (
                r#"[{"target-url":"https://a.com","onCodes":[]}]"#,
                "[0]: lacks `headers`",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":[],"onCodes":[]}]"#,
                "[0].headers: must be",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{"a":1},"onCodes":[]}]"#,
                "[0].headers.a",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{"host":"x"},"onCodes":[]}]"#,
                "`host` may not",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{"a b":"x"},"onCodes":[]}]"#,
                "valid header name",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{"a":"x\ny"},"onCodes":[]}]"#,
                "valid header value",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{}}]"#,
                "[0]: lacks `onCodes`",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":"429"}]"#,
                "[0].onCodes: must be an array",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":[700]}]"#,
                "[0].onCodes[0]",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":[4.5]}]"#,
                "[0].onCodes[0]",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":[{"from":500}]}]"#,
                "needs `from` and `to`",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":[{"from":599,"to":500}]}]"#,
                "greater",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":["5xx"]}]"#,
                "expected a status",
            ),
            (
                r#"[{"target-url":"https://a.com","headers":{},"onCodes":[],"bodyKeyOverride":[1]}]"#,
                "bodyKeyOverride",
            ),
        ] {
            let e = err(h);
            assert!(e.contains(want), "{h}: {e}");
        }
        let second = format!("[{ok},{{\"target-url\":\"https://a.com\",\"headers\":{{}}}}]");
        assert!(err(&second).contains("Helicone-Fallbacks[1]: lacks `onCodes`"));
        let many = format!("[{}]", [ok; 11].join(","));
        assert!(err(&many).contains("at most 10"));
    }

    #[test]
    fn overrides_merge_deep_and_replace_the_rest() {
        let mut body = json!({"model":"a","opts":{"t":1,"deep":{"x":1,"y":2}},"list":[1,2]});
        let over = json!({"model":"b","opts":{"deep":{"y":3,"z":4}},"list":[9],"new":true});
        merge(&mut body, over.as_object().expect("object"));
        assert_eq!(
            body,
            json!({"model":"b","opts":{"t":1,"deep":{"x":1,"y":3,"z":4}},"list":[9],"new":true})
        );
    }
}
