//! Anthropic Messages API ⇄ OpenAI chat completions. Pure: values in, values out.
//!
//! Request: OpenAI chat request → `POST /v1/messages` body. Response: Anthropic message →
//! `chat.completion`. Stream: Anthropic's `event:`-typed SSE → `chat.completion.chunk` SSE ending
//! in `[DONE]`. Errors: Anthropic's error body → OpenAI's error shape.
//!
//! Parameter rules (README, "Providers"): system messages → `system`; `max_tokens` /
//! `max_completion_tokens` → `max_tokens` (else the route's `max-output-tokens`, else 4096);
//! `stop` → `stop_sequences`; `user` → `metadata.user_id`; tools, `tool_choice`, tool calls and
//! tool results map one to one; image parts (data URL or URL) map to image blocks. Refused (400):
//! `n` > 1, `response_format` `json_object`/`json_schema` (Anthropic has no JSON mode),
//! `logprobs`, audio/file parts. Dropped:
//! `temperature` and `top_p` (not in the Messages API's published request type since the
//! `anthropic` SDK 1.0; tests/sdk/anthropic_shapes.py checks against it), `presence_penalty`,
//! `frequency_penalty`, `seed`, `logit_bias`, `response_format` `text`,
//! `parallel_tool_calls`, `store`, and every field Anthropic does not know.

use super::common::{
    call_arguments, data_url, push_json_str, push_stream_end, push_turn, text_of, ChunkWriter,
    InBandError, StreamOpts,
};
use crate::sse::SseDecoder;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The `anthropic-version` header sent when the provider sets no `api-version`.
const DEFAULT_VERSION: &str = "2023-06-01";

/// The Anthropic Messages API: `{base}/v1/messages`, `x-api-key`, `anthropic-version`.
#[derive(Debug)]
pub struct Anthropic {
    version: String,
}

pub(super) fn build(
    p: &crate::config::ProviderConfig,
    env: super::Env<'_>,
) -> Result<super::Built, crate::config::ConfigError> {
    let version = p
        .api_version
        .clone()
        .unwrap_or_else(|| DEFAULT_VERSION.into());
    Ok(super::Built {
        adapter: Box::new(Anthropic { version }),
        endpoint: super::endpoint(p, None)?,
        credentials: super::Credentials::from_env(p, env),
    })
}

impl super::Adapter for Anthropic {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        let max = call.route.max_output_tokens.unwrap_or(4096);
        let (body, opts) = request(call.req.tree()?, call.route.id, max)?;
        Ok(super::Prepared {
            path: format!("{}/v1/messages", call.base_path),
            body: body.into(),
            wire: super::Wire::Anthropic(opts),
        })
    }

    fn authorize(
        &self,
        h: &mut pingora_http::RequestHeader,
        auth: &super::Auth<'_>,
    ) -> pingora_core::Result<()> {
        match auth {
            super::Auth::Key(k) => h.insert_header("x-api-key", *k)?,
            super::Auth::Token(t) => super::bearer(h, t)?,
            super::Auth::None | super::Auth::Aws(_) => {}
        }
        h.insert_header("anthropic-version", self.version.as_str())
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be an object"))
}

/// An image_url part → an Anthropic image block.
fn image_block(part: &Value) -> Result<Value, String> {
    let url = part
        .pointer("/image_url/url")
        .or_else(|| part.get("image_url"))
        .and_then(Value::as_str)
        .ok_or("image_url part without a url")?;
    if let Some((media_type, data)) = data_url(url)? {
        return Ok(
            json!({"type":"image","source":{"type":"base64","media_type":media_type,"data":data}}),
        );
    }
    Ok(json!({"type":"image","source":{"type":"url","url":url}}))
}

/// OpenAI user/assistant content → Anthropic content blocks.
fn blocks_of(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) => Ok(if s.is_empty() {
            vec![]
        } else {
            vec![json!({"type":"text","text":s})]
        }),
        Value::Null => Ok(vec![]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type":"text","text":p.get("text").cloned().unwrap_or(Value::String(String::new()))})),
                Some("image_url") => image_block(p),
                other => Err(format!(
                    "content part type {} is not supported by anthropic",
                    other.unwrap_or("(none)")
                )),
            })
            .collect(),
        _ => Err("content must be a string or an array of parts".into()),
    }
}

/// OpenAI chat request → Anthropic Messages body for `model_id`.
pub fn request(
    req: &Value,
    model_id: &str,
    default_max_tokens: u32,
) -> Result<(Vec<u8>, StreamOpts), String> {
    request_with(req, ("model", model_id), default_max_tokens)
}

/// The same, with the model named by another field: Claude on Vertex takes the model from the
/// URL and `anthropic_version` in the body (`("anthropic_version", "vertex-2023-10-16")`).
pub fn request_with(
    value: &Value,
    (key, value_of_key): (&str, &str),
    default_max_tokens: u32,
) -> Result<(Vec<u8>, StreamOpts), String> {
    let req = obj(value, "the request")?;
    let mut out = Map::new();
    out.insert(key.into(), Value::String(value_of_key.into()));
    let mut system = String::new();
    let mut messages: Vec<Value> = Vec::new();
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text_of(content).map_err(|e| format!("messages[{i}]: {e}"))?);
            }
            "user" => {
                let b = blocks_of(content).map_err(|e| format!("messages[{i}]: {e}"))?;
                push_turn(&mut messages, "content", "user", b);
            }
            "assistant" => {
                let mut b = blocks_of(content).map_err(|e| format!("messages[{i}]: {e}"))?;
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let input = call_arguments(tc).map_err(|e| format!("messages[{i}]: {e}"))?;
                    b.push(json!({"type":"tool_use","id":tc.get("id").cloned().unwrap_or(Value::Null),
                        "name":tc.pointer("/function/name").cloned().unwrap_or(Value::Null),"input":input}));
                }
                push_turn(&mut messages, "content", "assistant", b);
            }
            "tool" => {
                let text = text_of(content).map_err(|e| format!("messages[{i}]: {e}"))?;
                let id = m.get("tool_call_id").cloned().unwrap_or(Value::Null);
                push_turn(
                    &mut messages,
                    "content",
                    "user",
                    vec![json!({"type":"tool_result","tool_use_id":id,"content":text})],
                );
            }
            other => return Err(format!("messages[{i}]: unknown role `{other}`")),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(default_max_tokens));
    out.insert("max_tokens".into(), json!(max));
    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(u) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("anthropic cannot return n > 1 choices".into());
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err("anthropic does not return logprobs".into());
    }
    if let Some(f @ ("json_schema" | "json_object")) = value
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        return Err(format!("anthropic has no JSON mode (response_format {f})"));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let mapped: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"name": t.pointer("/function/name").cloned().unwrap_or(Value::Null),
                       "description": t.pointer("/function/description").cloned().unwrap_or(Value::String(String::new())),
                       "input_schema": t.pointer("/function/parameters").cloned().unwrap_or(json!({"type":"object","properties":{}}))})
            })
            .collect();
        if !mapped.is_empty() {
            out.insert("tools".into(), Value::Array(mapped));
        }
    }
    if let Some(tc) = req.get("tool_choice") {
        let mapped = match tc {
            Value::String(s) if s == "auto" => Some(json!({"type":"auto"})),
            Value::String(s) if s == "none" => Some(json!({"type":"none"})),
            Value::String(s) if s == "required" => Some(json!({"type":"any"})),
            Value::Object(_) => tc
                .pointer("/function/name")
                .map(|n| json!({"type":"tool","name":n})),
            _ => None,
        };
        if let Some(m) = mapped {
            out.insert("tool_choice".into(), m);
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    let opts = StreamOpts {
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    Ok((
        serde_json::to_vec(&Value::Object(out)).map_err(|e| e.to_string())?,
        opts,
    ))
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `usage` → (prompt tokens, completion tokens). Cache reads and writes are input
/// tokens too, so OpenAI's `prompt_tokens` counts them.
fn token_usage(usage: &Value) -> (u64, u64) {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    (
        n("input_tokens") + n("cache_read_input_tokens") + n("cache_creation_input_tokens"),
        n("output_tokens"),
    )
}

fn usage_json(input: u64, output: u64) -> Value {
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

/// Anthropic message JSON → OpenAI `chat.completion` JSON.
pub fn response(body: &[u8], created: u64) -> Result<Vec<u8>, String> {
    let m: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in m
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": block.get("name").cloned().unwrap_or(Value::Null),
                             "arguments": serde_json::to_string(block.get("input").unwrap_or(&json!({}))).unwrap_or_default()}
            })),
            _ => {}
        }
    }
    let mut message = json!({"role":"assistant","content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let stop = m
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let (input, output) = token_usage(&m["usage"]);
    let out = json!({
        "id": m.get("id").cloned().unwrap_or(Value::String("msg".into())),
        "object": "chat.completion",
        "created": created,
        "model": m.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index":0,"message":message,"finish_reason":finish_reason(stop)}],
        "usage": usage_json(input, output),
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Anthropic error body → OpenAI error JSON (for errors passed through to the client).
pub fn error_body(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the provider returned an error");
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    serde_json::to_vec(&json!({"error":{"message":message,"type":kind,"param":null,"code":null}}))
        .unwrap_or_default()
}

/// One Anthropic stream event, borrowed from the received bytes where it can be. Only
/// `message_start` and `content_block_start` (once per message / block) build owned values.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorInfo>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct Usage {
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ErrorInfo {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Anthropic SSE → OpenAI `chat.completion.chunk` SSE, incrementally.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    opts: StreamOpts,
    created: u64,
    id: String,
    model: String,
    /// Chunk framing; its identity is set at `message_start`. It holds the role chunk back until
    /// the first content-bearing event, so that nothing reaches the client (no commit) before
    /// the answer really starts: an `overloaded_error` right after `message_start` still falls
    /// back.
    writer: ChunkWriter,
    input_tokens: u64,
    output_tokens: u64,
    /// Anthropic content block index → OpenAI tool_calls index.
    tool_index: Vec<(u64, usize)>,
    done: bool,
}

impl StreamTranslator {
    pub fn new(opts: StreamOpts, created: u64) -> Self {
        StreamTranslator {
            decoder: SseDecoder::default(),
            opts,
            created,
            id: String::new(),
            model: String::new(),
            writer: ChunkWriter::new("", created, ""),
            input_tokens: 0,
            output_tokens: 0,
            tool_index: Vec::new(),
            done: false,
        }
    }

    /// Whether `[DONE]` has been produced (the upstream's `message_stop` arrived).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Bytes of a partial upstream event still held.
    pub fn pending(&self) -> usize {
        self.decoder.pending()
    }

    /// Feed upstream bytes; returns the OpenAI SSE bytes to send now (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, InBandError> {
        let mut out = String::new();
        for ev in self.decoder.push(bytes) {
            let data: Event<'_> = match serde_json::from_str(&ev.data) {
                Ok(v) => v,
                Err(_) => {
                    return Err(InBandError {
                        kind: "invalid_event".into(),
                        message: "the provider sent an event that is not JSON".into(),
                    })
                }
            };
            match data.kind.as_ref() {
                "message_start" => {
                    let m = data.message.unwrap_or(Value::Null);
                    self.id = m
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("msg")
                        .to_string();
                    self.model = m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (self.input_tokens, self.output_tokens) = token_usage(&m["usage"]);
                    self.writer
                        .set_identity(&self.id, self.created, &self.model);
                }
                "content_block_start" => {
                    let block = data.content_block.unwrap_or(Value::Null);
                    if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                        let idx = data.index.unwrap_or(0);
                        let n = self.tool_index.len();
                        self.tool_index.push((idx, n));
                        let delta = json!({"tool_calls":[{"index":n,"id":block.get("id"),"type":"function",
                                "function":{"name":block.get("name"),"arguments":""}}]});
                        self.writer.chunk(&mut out, &delta.to_string(), None);
                    }
                }
                "content_block_delta" => {
                    let Some(d) = data.delta else { continue };
                    match d.kind.as_deref() {
                        Some("text_delta") => {
                            let mut delta =
                                String::with_capacity(16 + d.text.as_ref().map_or(0, |t| t.len()));
                            delta.push_str("{\"content\":");
                            push_json_str(&mut delta, d.text.as_deref().unwrap_or(""));
                            delta.push('}');
                            self.writer.chunk(&mut out, &delta, None);
                        }
                        Some("input_json_delta") => {
                            let idx = data.index.unwrap_or(0);
                            let n = self
                                .tool_index
                                .iter()
                                .find(|(b, _)| *b == idx)
                                .map(|(_, n)| *n)
                                .unwrap_or(0);
                            let mut delta = String::with_capacity(64);
                            delta.push_str("{\"tool_calls\":[{\"index\":");
                            delta.push_str(&n.to_string());
                            delta.push_str(",\"function\":{\"arguments\":");
                            push_json_str(&mut delta, d.partial_json.as_deref().unwrap_or(""));
                            delta.push_str("}}]}");
                            self.writer.chunk(&mut out, &delta, None);
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(o) = data.usage.and_then(|u| u.output_tokens) {
                        self.output_tokens = o;
                    }
                    if let Some(stop) = data.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                        self.writer.chunk(&mut out, "{}", Some(finish_reason(stop)));
                    }
                }
                "message_stop" => {
                    if !self.writer.role_sent() {
                        self.writer.chunk(&mut out, "{}", Some("stop"));
                    }
                    push_stream_end(
                        &mut out,
                        self.opts.include_usage,
                        (&self.id, self.created, &self.model),
                        (self.input_tokens, self.output_tokens),
                    );
                    self.done = true;
                }
                "error" => {
                    let e = data.error;
                    return Err(InBandError {
                        kind: e
                            .as_ref()
                            .and_then(|e| e.kind.clone())
                            .unwrap_or_else(|| "api_error".into()),
                        message: e
                            .and_then(|e| e.message)
                            .unwrap_or_else(|| "the provider reported an error mid-stream".into()),
                    });
                }
                // ping, content_block_stop, and event types added later
                _ => {}
            }
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("test request is JSON")
    }

    #[test]
    fn request_maps_roles_tools_and_parameters() {
        let body = br#"{"model":"claude","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"},
            {"role":"user","content":"thanks"}],
          "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
          "tool_choice":"required","max_tokens":300,"temperature":0.2,"stop":"END","user":"u-1","stream":true,
          "stream_options":{"include_usage":true},"presence_penalty":1}"#;
        let (out, opts) = request(&tree(body), "claude-sonnet-4-20250514", 4096).expect("maps");
        assert!(opts.include_usage);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            json!({
                "model":"claude-sonnet-4-20250514",
                "system":"Be brief.",
                "messages":[
                    {"role":"user","content":[{"type":"text","text":"What is in this image?"},
                        {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0"}}]},
                    {"role":"assistant","content":[{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}}]},
                    {"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1","content":"18C"},
                        {"type":"text","text":"thanks"}]}],
                "max_tokens":300,"stop_sequences":["END"],"metadata":{"user_id":"u-1"},
                "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
                "tool_choice":{"type":"any"},"stream":true
            })
        );
    }

    #[test]
    fn request_defaults_and_refusals() {
        let (out, _) = request(
            &tree(br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#),
            "c",
            8192,
        )
        .expect("maps");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["max_tokens"], 8192);
        assert!(v.get("stream").is_none());
        for (body, needle) in [
            (r#"{"messages":[],"n":2}"#, "n > 1"),
            (
                r#"{"messages":[],"response_format":{"type":"json_schema"}}"#,
                "json_schema",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
                "input_audio",
            ),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                "unknown role",
            ),
        ] {
            let e = request(&tree(body.as_bytes()), "c", 1).expect_err(body);
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn response_maps_text_tools_finish_and_usage() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
          "content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],
          "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":7}}"#;
        let v: Value =
            serde_json::from_slice(&response(body, 1700000000).expect("ok")).expect("json");
        assert_eq!(
            v,
            json!({"id":"msg_1","object":"chat.completion","created":1700000000,"model":"claude-sonnet-4-20250514",
              "choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.",
                "tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                "finish_reason":"tool_calls"}],
              "usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}})
        );
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
        ] {
            assert_eq!(finish_reason(stop), finish);
        }
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn translate_split(split: &[usize], opts: StreamOpts) -> (String, bool) {
        let mut t = StreamTranslator::new(opts, 5);
        let bytes = STREAM.as_bytes();
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in split.iter().chain(std::iter::once(&bytes.len())) {
            out.extend(t.push(&bytes[start..cut]).expect("no error"));
            start = cut;
        }
        (String::from_utf8(out).expect("utf8"), t.done())
    }

    #[test]
    fn stream_translates_the_same_at_every_split() {
        let opts = StreamOpts {
            include_usage: true,
        };
        let (whole, done) = translate_split(&[], opts);
        assert!(done);
        let data: Vec<Value> = whole
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("chunk json"))
            .collect();
        assert!(whole.ends_with("data: [DONE]\n\n"));
        assert_eq!(
            data[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(data[0]["id"], "msg_9");
        assert_eq!(data[0]["model"], "claude-x");
        assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hé");
        assert_eq!(data[2]["choices"][0]["delta"]["content"], "llo");
        assert_eq!(
            data[3]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index":0,"id":"toolu_2","type":"function","function":{"name":"f","arguments":""}})
        );
        assert_eq!(
            data[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(
            data[5]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "1}"
        );
        assert_eq!(data[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            data[7]["usage"],
            json!({"prompt_tokens":11,"completion_tokens":9,"total_tokens":20})
        );
        assert_eq!(data[7]["choices"], json!([]));
        assert_eq!(data.len(), 8);
        // Every byte boundary gives the same output (multi-byte `é` included).
        for i in 0..=STREAM.len() {
            assert_eq!(
                translate_split(&[i], opts),
                (whole.clone(), true),
                "split at {i}"
            );
        }
        let (no_usage, _) = translate_split(&[], StreamOpts::default());
        assert!(!no_usage.contains("\"usage\""));
    }

    #[test]
    fn nothing_is_emitted_before_content() {
        let mut t = StreamTranslator::new(StreamOpts::default(), 0);
        let head = STREAM
            .split("event: content_block_delta")
            .next()
            .unwrap_or("");
        assert!(head.contains("message_start") && head.contains("ping"));
        assert!(t.push(head.as_bytes()).expect("ok").is_empty());
        let e = t
            .push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
            .expect_err("error event");
        assert_eq!(e.kind, "overloaded_error");
    }

    #[test]
    fn in_band_error_is_reported() {
        let mut t = StreamTranslator::new(StreamOpts::default(), 0);
        let e = t
            .push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
            .expect_err("error event");
        assert_eq!(e.kind, "overloaded_error");
        assert_eq!(e.message, "Overloaded");
    }

    #[test]
    fn error_body_in_openai_shape() {
        let b = error_body(br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#);
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"]["message"], "max_tokens: too large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
