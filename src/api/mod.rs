//! OpenAI wire shapes detour accepts and emits: the request probe and the error JSON.
//!
//! The request body is never rebuilt: [`ChatRequest::parse`] validates it and finds the byte
//! span of the `model` value, and [`ChatRequest::body_for_model`] splices a provider-side id in,
//! so every field detour does not know reaches the provider byte for byte.

use crate::catalog::Capabilities;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// Every error detour itself returns. The client always gets OpenAI-shaped JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// The body is not JSON, or not a JSON object.
    InvalidJson(String),
    /// Well-formed JSON with a missing or wrongly typed field.
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The `model` chain could not be planned (unknown entry, too long, ...).
    InvalidChain(String),
    BodyTooLarge {
        limit: usize,
    },
    NotFound {
        path: String,
    },
    MethodNotAllowed {
        method: String,
        path: String,
    },
    /// Every target failed or was skipped.
    AllFailed {
        status: u16,
        attempts: Vec<AttemptReport>,
    },
    /// The client went away before the answer was complete (never sent: for logs and metrics).
    ClientClosed,
    /// Reading the request from the client failed or timed out.
    ClientRead(String),
    /// Too many request bodies are held at once (`limits.max-total-body-bytes`): try again in
    /// `retry_after` seconds.
    Overloaded {
        retry_after: u64,
    },
    /// A committed non-stream answer was cut: never written, the connection is aborted so
    /// that the client cannot take the partial body for a whole one.
    AnswerCut,
}

/// One line of the `attempts` list in the all-failed error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptReport {
    pub source: String,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidJson(_) => 400,
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::InvalidChain(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::AllFailed { status, .. } => *status,
            GatewayError::ClientClosed => 499,
            GatewayError::ClientRead(_) => 400,
            GatewayError::Overloaded { .. } => 503,
            GatewayError::AnswerCut => 502,
        }
    }

    /// The bounded label used for the `outcome` of a request in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_request",
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::InvalidChain(_) => "invalid_request",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::AllFailed { .. } => "all_failed",
            GatewayError::ClientClosed => "client_closed",
            GatewayError::ClientRead(_) => "client_read_error",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::AnswerCut => "stream_error",
        }
    }

    /// The JSON body `{"error":{...}}`.
    pub fn to_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Envelope<'a, T: serde::Serialize> {
            error: &'a T,
        }
        #[derive(serde::Serialize)]
        struct AllFailedBody<'a> {
            message: &'static str,
            #[serde(rename = "type")]
            kind: &'static str,
            attempts: &'a [AttemptReport],
        }
        #[derive(serde::Serialize)]
        struct Plain<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            param: Option<&'static str>,
            code: &'static str,
        }
        let out = match self {
            GatewayError::AllFailed { attempts, .. } => serde_json::to_vec(&Envelope {
                error: &AllFailedBody {
                    message: "All fallback attempts failed",
                    kind: "all_attempts_failed",
                    attempts,
                },
            }),
            other => {
                let (message, param, code) = other.plain_parts();
                let kind = match other {
                    GatewayError::ClientClosed => "client_closed",
                    GatewayError::Overloaded { .. } | GatewayError::AnswerCut => "server_error",
                    _ => "invalid_request_error",
                };
                serde_json::to_vec(&Envelope {
                    error: &Plain {
                        message: &message,
                        kind,
                        param,
                        code,
                    },
                })
            }
        };
        Bytes::from(out.unwrap_or_default())
    }

    fn plain_parts(&self) -> (String, Option<&'static str>, &'static str) {
        match self {
            GatewayError::InvalidJson(m) => (
                format!("We could not parse the JSON body of your request: {m}"),
                None,
                "invalid_json",
            ),
            GatewayError::InvalidRequest { message, param } => {
                (message.clone(), *param, "invalid_request")
            }
            GatewayError::InvalidChain(m) => (m.clone(), Some("model"), "invalid_model_chain"),
            GatewayError::BodyTooLarge { limit } => (
                format!("The request body exceeds the limit of {limit} bytes"),
                None,
                "request_too_large",
            ),
            GatewayError::NotFound { path } => (
                format!("Unknown request URL: {}", truncate(path, 200)),
                None,
                "unknown_url",
            ),
            GatewayError::MethodNotAllowed { method, path } => (
                format!(
                    "Method {} is not allowed for {}",
                    truncate(method, 20),
                    truncate(path, 200)
                ),
                None,
                "method_not_allowed",
            ),
            GatewayError::ClientRead(m) => (
                format!("Could not read the request: {m}"),
                None,
                "bad_request",
            ),
            GatewayError::ClientClosed => (
                "The client closed the connection".into(),
                None,
                "client_closed",
            ),
            GatewayError::AllFailed { .. } => (
                "All fallback attempts failed".into(),
                None,
                "all_attempts_failed",
            ),
            GatewayError::Overloaded { retry_after } => (
                format!(
                    "detour is holding as many request bodies as it may; retry in {retry_after} s"
                ),
                None,
                "overloaded",
            ),
            GatewayError::AnswerCut => (
                "The answer was cut after it had started".into(),
                None,
                "answer_cut",
            ),
        }
    }
}

pub use crate::text::truncate;

/// What detour reads of a chat completion request; the rest is forwarded untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The `model` field, unescaped: the fallback chain.
    pub model: String,
    /// Byte span of the `model` JSON string literal (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
}

/// What a request asks of a model, in the catalog's terms: tools, image parts, JSON mode or a
/// JSON schema. Parsed only for a target whose catalog entry lacks one of them; a body that
/// does not parse needs nothing here (the translator or the provider reports it).
pub fn needs(body: &[u8]) -> Capabilities {
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        content: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Needs<'a> {
        #[serde(borrow, default)]
        tools: Option<&'a RawValue>,
        #[serde(borrow, default)]
        response_format: Option<Format<'a>>,
        #[serde(borrow, default)]
        messages: Option<Vec<Message<'a>>>,
    }
    let Ok(n) = serde_json::from_slice::<Needs<'_>>(body) else {
        return Capabilities::NONE;
    };
    let mut caps = Capabilities::NONE;
    if let Some(t) = n.tools {
        if serde_json::from_str::<Vec<&RawValue>>(t.get()).is_ok_and(|v| !v.is_empty()) {
            caps = caps.union(Capabilities::TOOLS);
        }
    }
    match n.response_format.and_then(|f| f.kind).as_deref() {
        Some("json_object") => caps = caps.union(Capabilities::JSON_MODE),
        Some("json_schema") => caps = caps.union(Capabilities::JSON_SCHEMA),
        _ => {}
    }
    let image = n
        .messages
        .iter()
        .flatten()
        .filter_map(|m| m.content)
        .any(|c| {
            c.get().starts_with('[')
                && serde_json::from_str::<Vec<Part<'_>>>(c.get())
                    .is_ok_and(|parts| parts.iter().any(|p| p.kind.as_deref() == Some("image_url")))
        });
    if image {
        caps = caps.union(Capabilities::VISION);
    }
    caps
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
}

impl ChatRequest {
    /// Validate a request body and find what routing needs. Pure; bad input → 4xx error.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, GatewayError> {
        // A derived struct would also accept a JSON array; only an object is a request.
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            None => return Err(GatewayError::InvalidJson("the body is empty".into())),
            Some(_) => {
                return Err(GatewayError::InvalidJson(
                    "the body must be a JSON object".into(),
                ))
            }
        }
        let probe: Probe<'_> =
            serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        let raw_model = probe.model.ok_or_else(|| GatewayError::InvalidRequest {
            message: "you must provide a model parameter".into(),
            param: Some("model"),
        })?;
        let model: Cow<'_, str> =
            serde_json::from_str(raw_model.get()).map_err(|_| GatewayError::InvalidRequest {
                message: "model must be a string".into(),
                param: Some("model"),
            })?;
        if model.trim().is_empty() {
            return Err(GatewayError::InvalidRequest {
                message: "model must not be empty".into(),
                param: Some("model"),
            });
        }
        // The RawValue borrows from `body`, so its offset is a plain address difference.
        let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
        let model_span = start..start + raw_model.get().len();
        let stream = match probe.stream.map(|r| r.get()) {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(GatewayError::InvalidRequest {
                    message: "stream must be a boolean".into(),
                    param: Some("stream"),
                })
            }
        };
        match probe.messages.map(|r| r.get().as_bytes().first()) {
            Some(Some(b'[')) => {}
            None => {
                return Err(GatewayError::InvalidRequest {
                    message: "you must provide a messages parameter".into(),
                    param: Some("messages"),
                })
            }
            Some(_) => {
                return Err(GatewayError::InvalidRequest {
                    message: "messages must be an array".into(),
                    param: Some("messages"),
                })
            }
        }
        Ok(ChatRequest {
            model: model.into_owned(),
            model_span,
            stream,
        })
    }

    /// The body to send with `model_id` in place of the client's `model`. Shares the original
    /// bytes when the id is unchanged; otherwise one copy with the new string spliced in.
    pub fn body_for_model(&self, body: &Bytes, model_id: &str) -> Bytes {
        if self.model == model_id {
            return body.clone();
        }
        let mut out = BytesMut::with_capacity(body.len() + model_id.len() + 8);
        out.put_slice(&body[..self.model_span.start]);
        let quoted = serde_json::to_string(model_id).unwrap_or_else(|_| "\"\"".into());
        out.put_slice(quoted.as_bytes());
        out.put_slice(&body[self.model_span.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_finds_model_and_stream() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o,claude", "stream":true,"x_unknown":{"a":[1,2]}}"#;
        let r = ChatRequest::parse(body).expect("valid");
        assert_eq!(r.model, "gpt-4o,claude");
        assert!(r.stream);
        assert_eq!(&body[r.model_span.clone()], br#""gpt-4o,claude""#);
    }

    #[test]
    fn splice_keeps_every_other_byte() {
        let body = Bytes::from_static(
            br#"{ "model":"gpt-4o/openai" ,"messages":[],"temperature":0.25,"weird":"\u00e9"}"#,
        );
        let r = ChatRequest::parse(&body).expect("valid");
        let out = r.body_for_model(&body, "gpt-4o-2024-08-06");
        assert_eq!(
            &out[..],
            br#"{ "model":"gpt-4o-2024-08-06" ,"messages":[],"temperature":0.25,"weird":"\u00e9"}"#
        );
        // Same id: the very same allocation is shared.
        let same = ChatRequest::parse(br#"{"model":"x","messages":[]}"#).expect("valid");
        let b = Bytes::from_static(br#"{"model":"x","messages":[]}"#);
        assert_eq!(same.body_for_model(&b, "x").as_ptr(), b.as_ptr());
    }

    #[test]
    fn escaped_model_is_unescaped_and_respliced() {
        let body = Bytes::from_static(br#"{"model":"a\/b\u002fopenai","messages":[]}"#);
        let r = ChatRequest::parse(&body).expect("valid");
        assert_eq!(r.model, "a/b/openai");
        let out = r.body_for_model(&body, "quote\"d");
        assert_eq!(&out[..], br#"{"model":"quote\"d","messages":[]}"#);
    }

    #[test]
    fn bad_inputs_are_4xx() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid_json"),
            (b"not json", "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (b"{\"model\":\"x\",", "invalid_json"),
            (
                b"{\"model\":\"x\",\"messages\":[]} trailing",
                "invalid_json",
            ),
            (b"{\"messages\":[]}", "invalid_request"),
            (b"{\"model\":null,\"messages\":[]}", "invalid_request"),
            (b"{\"model\":42,\"messages\":[]}", "invalid_request"),
            (b"{\"model\":\"  \",\"messages\":[]}", "invalid_request"),
            (b"{\"model\":\"x\"}", "invalid_request"),
            (b"{\"model\":\"x\",\"messages\":\"hi\"}", "invalid_request"),
            (
                b"{\"model\":\"x\",\"messages\":[],\"stream\":\"yes\"}",
                "invalid_request",
            ),
            (
                b"{\"model\":\"x\",\"model\":\"y\",\"messages\":[]}",
                "invalid_json",
            ),
        ];
        for (body, code) in cases {
            let e = ChatRequest::parse(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(e.status(), 400);
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).expect("json");
            assert_eq!(
                v["error"]["code"],
                *code,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn all_failed_shape() {
        let e = GatewayError::AllFailed {
            status: 502,
            attempts: vec![
                AttemptReport {
                    source: "gpt-4o/openai".into(),
                    error: "Rate limit exceeded".into(),
                    status: Some(429),
                    skipped: false,
                },
                AttemptReport {
                    source: "gpt-4o/azure".into(),
                    error: "connection refused".into(),
                    status: None,
                    skipped: false,
                },
            ],
        };
        assert_eq!(
            std::str::from_utf8(&e.to_json()).expect("utf8"),
            r#"{"error":{"message":"All fallback attempts failed","type":"all_attempts_failed","attempts":[{"source":"gpt-4o/openai","error":"Rate limit exceeded","status":429},{"source":"gpt-4o/azure","error":"connection refused"}]}}"#
        );
    }

    #[test]
    fn needs_finds_tools_images_and_json_modes() {
        let n = |b: &str| needs(b.as_bytes()).names();
        assert!(n(r#"{"messages":[{"role":"user","content":"hi"}]}"#).is_empty());
        assert!(n(r#"{"tools":[],"messages":[]}"#).is_empty());
        assert_eq!(
            n(r#"{"tools":[{"type":"function"}],"messages":[]}"#),
            ["tools"]
        );
        assert_eq!(
            n(
                r#"{"messages":[{"role":"user","content":[{"type":"text","text":"image_url"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#
            ),
            ["vision"]
        );
        assert!(n(r#"{"messages":[{"role":"user","content":"an image_url"}]}"#).is_empty());
        assert_eq!(
            n(r#"{"response_format":{"type":"json_object"}}"#),
            ["json-mode"]
        );
        assert_eq!(
            n(r#"{"response_format":{"type":"json_schema"}}"#),
            ["json-schema"]
        );
        assert!(n(r#"{"response_format":{"type":"text"}}"#).is_empty());
        assert!(n("not json").is_empty());
    }
}
