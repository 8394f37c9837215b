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
        token_endpoint: None,
    })
}

impl super::Adapter for Anthropic {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        if let Some(n) = call.req.native.as_deref() {
            // A Messages client's request: as it was sent, with only `model` replaced.
            let path = if n.count_tokens {
                "/v1/messages/count_tokens"
            } else {
                "/v1/messages"
            };
            return Ok(super::Prepared {
                path: format!("{}{path}", call.base_path),
                body: n.body_for_model(call.route.id),
                wire: super::Wire::Native,
            });
        }
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
        // A Messages client's own `anthropic-version` (forwarded) is the one it wrote for.
        if !h.headers.contains_key("anthropic-version") {
            h.insert_header("anthropic-version", self.version.as_str())?;
        }
        Ok(())
    }
}

/// A final assistant turn (a prefill: the client's, or a continuation's) ends without trailing
/// whitespace in its last text block: Anthropic refuses one that does (and an empty block, or
/// turn, that trimming would leave: those go).
fn trim_final_assistant_text(messages: &mut Vec<Value>) {
    let Some(last) = messages.last_mut().filter(|m| m["role"] == "assistant") else {
        return;
    };
    let Some(blocks) = last["content"].as_array_mut() else {
        return;
    };
    let Some(text) = blocks.last().and_then(|b| b.get("text")?.as_str()) else {
        return;
    };
    match text.trim_end() {
        t if t.len() == text.len() => return,
        "" => {
            blocks.pop();
        }
        t => {
            let t = Value::String(t.to_string());
            if let Some(b) = blocks.last_mut() {
                b["text"] = t;
            }
        }
    }
    if blocks.is_empty() {
        messages.pop();
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
    trim_final_assistant_text(&mut messages);
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

mod response;
pub use response::*;

#[cfg(test)]
mod tests;
