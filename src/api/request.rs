//! The chat completion request, read once.
//!
//! [`ChatRequest::parse`] makes one borrowing pass over the body that validates it and takes
//! everything planning and accounting need: the `model` chain and the byte span of its value,
//! `stream` and `stream_options.include_usage`, the capabilities the request needs (tools,
//! images, JSON modes), and the size of its prompt (for a usage estimate). The body itself is
//! never rebuilt: [`ChatRequest::body_for_model`] splices a provider-side id in, so every field
//! detour does not know reaches an OpenAI-compatible provider byte for byte. Adapters that
//! translate the request read its JSON tree, [`ChatRequest::tree`], built at most once per
//! request however many targets translate it.

use super::messages::Native;
use super::{Capabilities, GatewayError};
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::OnceLock;

/// What detour reads of a chat completion request; the rest is forwarded untouched.
#[derive(Debug)]
pub struct ChatRequest {
    /// The body as the client sent it.
    pub body: Bytes,
    /// The `model` field, unescaped: the fallback chain.
    pub model: String,
    /// Byte span of the `model` JSON string literal (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// What the request needs of a model: tools, image parts, JSON mode or a JSON schema.
    pub needs: Capabilities,
    /// Bytes of the messages' `content` and `tool_calls` and of `tools`, as JSON.
    pub prompt_bytes: usize,
    /// Messages in the request.
    pub messages: usize,
    /// `max_completion_tokens`, else `max_tokens`, when a non-negative integer.
    pub max_tokens: Option<u64>,
    tree: OnceLock<Result<Value, String>>,
    /// A Messages client's request as sent (`POST /v1/messages`), for Anthropic-family targets.
    pub native: Option<Arc<Native>>,
}

/// About how many bytes of text make a token (OpenAI's rule of thumb for English; UTF-8 text
/// in other scripts has more bytes per character and about as many per token).
pub const BYTES_PER_TOKEN: usize = 4;

/// `body` with the JSON string at `span` replaced by `model_id`: one copy.
pub(crate) fn splice_model(body: &Bytes, span: &Range<usize>, model_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + model_id.len() + 8);
    out.put_slice(&body[..span.start]);
    let quoted = serde_json::to_string(model_id).unwrap_or_else(|_| "\"\"".into());
    out.put_slice(quoted.as_bytes());
    out.put_slice(&body[span.end..]);
    out.freeze()
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Messages<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response_format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
}

/// `messages`, taken in the same pass: an array of messages, or something else (a 400).
enum Messages<'a> {
    List(Vec<Message<'a>>),
    NotArray,
}

/// What a message says that detour reads: its content and tool calls, as raw JSON.
#[derive(Default)]
struct Message<'a> {
    content: Option<&'a RawValue>,
    tool_calls: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Messages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(m) = seq.next_element::<Message<'a>>()? {
                    v.push(m);
                }
                Ok(Messages::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Messages::NotArray)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Messages::NotArray)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Message<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut m = Message::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "content" => m.content = Some(map.next_value()?),
                        "tool_calls" => m.tool_calls = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
            // Anything else is the provider's to refuse; it holds no content detour reads.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Message::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Message::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn invalid(message: &str, param: &'static str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.into(),
        param: Some(param),
    }
}

/// Whether a JSON value (valid, as a `RawValue` is) is a non-empty array.
fn nonempty_array(raw: &RawValue) -> bool {
    let s = raw.get().trim_start();
    s.starts_with('[') && s[1..].trim_start().as_bytes().first() != Some(&b']')
}

/// Whether a message's content has an image part.
fn has_image(content: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    content.get().starts_with('[')
        && serde_json::from_str::<Vec<Part<'_>>>(content.get())
            .is_ok_and(|parts| parts.iter().any(|p| p.kind.as_deref() == Some("image_url")))
}

/// What a request needs of a model, from its tools, response format and messages.
fn needs_of(p: &Probe<'_>, messages: &[Message<'_>]) -> Capabilities {
    #[derive(Deserialize)]
    struct Format<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    let mut caps = Capabilities::NONE;
    if p.tools.is_some_and(nonempty_array) {
        caps = caps.union(Capabilities::TOOLS);
    }
    let format = p
        .response_format
        .and_then(|f| serde_json::from_str::<Format<'_>>(f.get()).ok())
        .and_then(|f| f.kind);
    match format.as_deref() {
        Some("json_object") => caps = caps.union(Capabilities::JSON_MODE),
        Some("json_schema") => caps = caps.union(Capabilities::JSON_SCHEMA),
        _ => {}
    }
    if messages.iter().filter_map(|m| m.content).any(has_image) {
        caps = caps.union(Capabilities::VISION);
    }
    caps
}

fn include_usage(opts: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct Opts {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    opts.and_then(|o| serde_json::from_str::<Opts>(o.get()).ok())
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

impl ChatRequest {
    /// Validate a request body and read what routing and accounting need, in one pass. Pure;
    /// bad input → a 4xx error.
    pub fn parse(body: Bytes) -> Result<ChatRequest, GatewayError> {
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
            serde_json::from_slice(&body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        let raw_model = probe
            .model
            .ok_or_else(|| invalid("you must provide a model parameter", "model"))?;
        let model: Cow<'_, str> = serde_json::from_str(raw_model.get())
            .map_err(|_| invalid("model must be a string", "model"))?;
        if model.trim().is_empty() {
            return Err(invalid("model must not be empty", "model"));
        }
        // The RawValue borrows from `body`, so its offset is a plain address difference.
        let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
        let model_span = start..start + raw_model.get().len();
        let stream = match probe.stream.map(|r| r.get()) {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(invalid("stream must be a boolean", "stream")),
        };
        let messages = match &probe.messages {
            Some(Messages::List(m)) => m.as_slice(),
            None => return Err(invalid("you must provide a messages parameter", "messages")),
            Some(Messages::NotArray) => {
                return Err(invalid("messages must be an array", "messages"))
            }
        };
        let raw = |v: Option<&RawValue>| v.map_or(0, |v| v.get().len());
        let prompt_bytes = messages
            .iter()
            .map(|m| raw(m.content) + raw(m.tool_calls))
            .sum::<usize>()
            + raw(probe.tools);
        let req = ChatRequest {
            model: model.into_owned(),
            model_span,
            stream,
            include_usage: include_usage(probe.stream_options),
            needs: needs_of(&probe, messages),
            prompt_bytes,
            messages: messages.len(),
            max_tokens: [probe.max_completion_tokens, probe.max_tokens]
                .into_iter()
                .flatten()
                .find_map(|v| v.get().parse::<u64>().ok()),
            tree: OnceLock::new(),
            native: None,
            body: Bytes::new(),
        };
        Ok(ChatRequest { body, ..req })
    }

    /// The request as a JSON tree, for adapters that translate it: parsed on first use, once.
    pub fn tree(&self) -> Result<&Value, String> {
        self.chat()?;
        self.tree
            .get_or_init(|| serde_json::from_slice(&self.body).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The body to send with `model_id` in place of the client's `model`. Shares the original
    /// bytes when the id is unchanged; otherwise one copy with the new string spliced in.
    pub fn body_for_model(&self, model_id: &str) -> Bytes {
        if self.model == model_id {
            return self.body.clone();
        }
        splice_model(&self.body, &self.model_span, model_id)
    }

    /// The prompt's tokens, estimated: about [`BYTES_PER_TOKEN`] bytes a token of its
    /// messages' contents and tools as JSON, plus OpenAI's 3 tokens a message and 3 for the
    /// reply.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.prompt_bytes.div_ceil(BYTES_PER_TOKEN) as u64 + 3 * self.messages as u64 + 3
    }

    /// `Err`: a Messages request chat-completions targets cannot take (they refuse it; its
    /// Anthropic-family targets take it as sent).
    pub fn chat(&self) -> Result<(), String> {
        match self.native.as_deref().and_then(|n| n.not_chat.as_ref()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// A request built from the tree `v` (a translation's, as for a Messages client): `v`
    /// written and read like any body, and kept as its tree, which is then not parsed again.
    pub fn from_tree(v: Value) -> Result<ChatRequest, GatewayError> {
        let body = serde_json::to_vec(&v).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        let req = ChatRequest::parse(Bytes::from(body))?;
        let _ = req.tree.set(Ok(v));
        Ok(req)
    }

    /// This request with `text` appended as a trailing assistant message (a prefill, for a
    /// continuation). Built from the tree; its own tree is the one it was made from. With
    /// `native`, a Messages request's body as sent gets the prefill too, for the
    /// Anthropic-family targets (otherwise they are sent the chat request, translated).
    pub fn with_prefill(&self, text: &str, native: bool) -> Result<ChatRequest, String> {
        let mut v = self.tree()?.clone();
        v.get_mut("messages")
            .and_then(Value::as_array_mut)
            .ok_or("the request has no messages")?
            .push(serde_json::json!({"role": "assistant", "content": text}));
        let mut req = ChatRequest::from_tree(v).map_err(|e| format!("{e:?}"))?;
        if let (true, Some(n)) = (native, self.native.as_deref()) {
            req.native = Some(Arc::new(n.with_prefill(text)?));
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(Bytes::copy_from_slice(b))
    }

    #[test]
    fn parse_finds_model_stream_and_usage_options() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o,claude", "stream":true,"stream_options":{"include_usage":true},"x_unknown":{"a":[1,2]}}"#;
        let r = parse(body).expect("valid");
        assert_eq!(r.model, "gpt-4o,claude");
        assert!(r.stream && r.include_usage);
        assert_eq!(&body[r.model_span.clone()], br#""gpt-4o,claude""#);
        assert_eq!(r.messages, 1);
        assert_eq!(r.prompt_bytes, 4, "the content `\"hi\"` as JSON");
        let r = parse(br#"{"model":"m","messages":[],"stream_options":"odd"}"#).expect("valid");
        assert!(
            !r.include_usage,
            "a malformed option is the provider's to refuse"
        );
    }

    #[test]
    fn splice_keeps_every_other_byte() {
        let r = parse(
            br#"{ "model":"gpt-4o/openai" ,"messages":[],"temperature":0.25,"weird":"\u00e9"}"#,
        )
        .expect("valid");
        let out = r.body_for_model("gpt-4o-2024-08-06");
        assert_eq!(
            &out[..],
            br#"{ "model":"gpt-4o-2024-08-06" ,"messages":[],"temperature":0.25,"weird":"\u00e9"}"#
        );
        // Same id: the very same allocation is shared.
        let same = parse(br#"{"model":"x","messages":[]}"#).expect("valid");
        assert_eq!(same.body_for_model("x").as_ptr(), same.body.as_ptr());
    }

    #[test]
    fn escaped_model_is_unescaped_and_respliced() {
        let r = parse(br#"{"model":"a\/b\u002fopenai","messages":[]}"#).expect("valid");
        assert_eq!(r.model, "a/b/openai");
        let out = r.body_for_model("quote\"d");
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
                b"{\"model\":\"x\",\"messages\":{\"a\":1}}",
                "invalid_request",
            ),
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
            let e = parse(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(e.status(), 400);
            let v: serde_json::Value = serde_json::from_slice(&e.to_json()).expect("json");
            assert_eq!(
                v["error"]["code"],
                *code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Messages that are not objects are the provider's to refuse.
        assert!(parse(br#"{"model":"x","messages":[1,"a",null,[2]]}"#).is_ok());
    }

    #[test]
    fn needs_finds_tools_images_and_json_modes() {
        let n = |b: &str| parse(b.as_bytes()).expect("valid").needs.names();
        assert!(n(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).is_empty());
        assert!(n(r#"{"model":"m","tools":[ ],"messages":[]}"#).is_empty());
        assert_eq!(
            n(r#"{"model":"m","tools":[{"type":"function"}],"messages":[]}"#),
            ["tools"]
        );
        assert_eq!(
            n(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"image_url"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#
            ),
            ["vision"]
        );
        assert!(
            n(r#"{"model":"m","messages":[{"role":"user","content":"an image_url"}]}"#).is_empty()
        );
        assert_eq!(
            n(r#"{"model":"m","messages":[],"response_format":{"type":"json_object"}}"#),
            ["json-mode"]
        );
        assert_eq!(
            n(r#"{"model":"m","messages":[],"response_format":{"type":"json_schema"}}"#),
            ["json-schema"]
        );
        assert!(n(r#"{"model":"m","messages":[],"response_format":{"type":"text"}}"#).is_empty());
    }

    #[test]
    fn the_tree_is_built_once_and_a_prefill_extends_it() {
        let r =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).expect("valid");
        let a = r.tree().expect("tree") as *const Value;
        let b = r.tree().expect("tree") as *const Value;
        assert_eq!(a, b, "parsed once");
        let p = r.with_prefill("Hel", false).expect("prefill");
        assert_eq!(p.messages, 2);
        assert_eq!(p.tree().expect("tree")["messages"][1]["content"], "Hel");
        assert_eq!(p.model, "m");
    }
}
