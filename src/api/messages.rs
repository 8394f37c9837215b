//! Anthropic Messages request → OpenAI chat request, for the targets that speak chat
//! completions (OpenAI, Azure, Gemini through its adapter). Pure: a JSON tree in, a tree out; a
//! field that cannot be carried is a 400 that names it. Anthropic-family targets get the
//! client's body as sent instead.
//!
//! Rules: `system` (a string or text blocks) → a first `system` message; text blocks → text
//! parts; image blocks (base64 or URL) → `image_url` parts; `tool_use` → the assistant's
//! `tool_calls` (input as a JSON string); `tool_result` → a `tool` message (text only;
//! `is_error` is dropped) placed before the rest of its user turn; `tools` → functions; `tool_choice` `auto`/`any`/`tool`/
//! `none` → `auto`/`required`/the function/`none`, `disable_parallel_tool_use` →
//! `parallel_tool_calls: false`; `stop_sequences` → `stop`; `max_tokens` (required) →
//! `max_tokens`; `temperature`, `top_p` as they are; `metadata.user_id` → `user`; `stream` →
//! `stream` with `stream_options.include_usage` (the usage ends Anthropic's stream). Dropped:
//! `top_k` (chat completions has none; the Gemini adapter reads it from the body as sent), `thinking` and the `thinking`/`redacted_thinking`
//! blocks of earlier turns (another model cannot verify their signatures), and fields chat
//! completions does not know. Refused (400): `document` and other block types, images inside a
//! `tool_result`, server tools (a `type` other than `custom`).

use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::ops::Range;

/// Ends the message of every refusal that is about the target, not the request: such a request
/// still goes to the chain's Anthropic-family targets, which take it as sent.
pub const NOT_CARRIED: &str = "cannot be sent to this target";

/// Whether `to_chat`'s error is about chat-completions targets only (the request is valid).
pub fn only_not_carried(e: &str) -> bool {
    e.ends_with(NOT_CARRIED)
}

/// A Messages request as the client sent it, for the targets that speak the Messages API:
/// Anthropic gets it with only `model` replaced, Claude on Bedrock and Vertex in their envelope.
#[derive(Debug)]
pub struct Native {
    pub body: Bytes,
    /// Byte span of the `model` string literal (quotes included) in `body`.
    pub model_span: Range<usize>,
    /// `POST /v1/messages/count_tokens`, not a message.
    pub count_tokens: bool,
    /// Why chat-completions targets cannot take it (`to_chat`'s refusal), if they cannot.
    pub not_chat: Option<String>,
    /// The client's `anthropic-beta` features, for the targets that take them in the body
    /// (Claude on Bedrock: `anthropic_beta`); the others get the header itself.
    pub betas: Vec<String>,
    /// Its `top_k`, if a non-negative integer, for targets that have one but do not take the
    /// body as sent (Gemini's `topK`). Read by the same pass that finds `model`.
    pub top_k: Option<u64>,
}

impl Native {
    /// The client's body and the span of its `model` string; `None` if it names none.
    pub fn new(body: Bytes, count_tokens: bool, not_chat: Option<String>) -> Option<Native> {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            model: &'a serde_json::value::RawValue,
            #[serde(borrow, default)]
            top_k: Option<&'a serde_json::value::RawValue>,
        }
        let p: Probe<'_> = serde_json::from_slice(&body).ok()?;
        let top_k = p.top_k.and_then(|k| serde_json::from_str(k.get()).ok());
        let start = p.model.get().as_ptr() as usize - body.as_ptr() as usize;
        let model_span = start..start + p.model.get().len();
        Some(Native {
            model_span,
            body,
            count_tokens,
            not_chat,
            betas: Vec::new(),
            top_k,
        })
    }

    /// With the features of the client's `anthropic-beta` headers (comma-separated lists).
    pub fn with_betas<'a>(mut self, headers: impl Iterator<Item = &'a str>) -> Native {
        self.betas = headers
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(String::from)
            .collect();
        self
    }

    /// The body with `model_id` in place of the client's `model`, the rest byte for byte.
    pub fn body_for_model(&self, model_id: &str) -> Bytes {
        super::request::splice_model(&self.body, &self.model_span, model_id)
    }

    /// This request with `text` as a trailing assistant turn (a continuation's prefill). Its
    /// trailing whitespace is left out: Anthropic refuses a final assistant turn ending in it.
    pub fn with_prefill(&self, text: &str) -> Result<Native, String> {
        let text = text.trim_end();
        if text.is_empty() {
            return Err("nothing to prefill".into());
        }
        let mut v: Map<String, Value> =
            serde_json::from_slice(&self.body).map_err(|e| e.to_string())?;
        v.get_mut("messages")
            .and_then(Value::as_array_mut)
            .ok_or("the request has no messages")?
            .push(json!({"role": "assistant", "content": text}));
        let body = Bytes::from(serde_json::to_vec(&v).map_err(|e| e.to_string())?);
        let mut n = Native::new(body, self.count_tokens, self.not_chat.clone())
            .ok_or("the request names no model")?;
        n.betas = self.betas.clone();
        Ok(n)
    }

    /// The body as a JSON object without the `remove` fields, with `extra` fields added:
    /// Claude on Bedrock and Vertex (the model is in the URL, the API version in the body).
    pub fn enveloped(&self, remove: &[&str], extra: &[(&str, Value)]) -> Result<Vec<u8>, String> {
        let mut v: Map<String, Value> =
            serde_json::from_slice(&self.body).map_err(|e| e.to_string())?;
        for k in remove {
            v.remove(*k);
        }
        for (k, x) in extra {
            v.insert((*k).into(), x.clone());
        }
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    }
}

/// The chat request for a Messages request `m`.
pub fn to_chat(m: &Value) -> Result<Value, String> {
    to_chat_for(m, false)
}

/// The same, for a message or (`count_tokens`, which takes no `max_tokens`) a token count.
pub fn to_chat_for(m: &Value, count_tokens: bool) -> Result<Value, String> {
    let m = m.as_object().ok_or("the body must be a JSON object")?;
    let mut out = Map::new();
    if let Some(model) = m.get("model") {
        out.insert("model".into(), model.clone());
    }
    match (m.get("max_tokens").and_then(Value::as_u64), count_tokens) {
        (Some(max), _) => {
            out.insert("max_tokens".into(), max.into());
        }
        (None, true) => {}
        (None, false) => return Err("max_tokens: a positive integer is required".into()),
    }
    let mut messages = Vec::new();
    if let Some(system) = m.get("system") {
        messages.push(json!({"role": "system", "content": system_text(system)?}));
    }
    let turns = m.get("messages").and_then(Value::as_array);
    for (i, turn) in turns
        .ok_or("messages: an array is required")?
        .iter()
        .enumerate()
    {
        push_turn(&mut messages, turn).map_err(|e| format!("messages[{i}]: {e}"))?;
    }
    out.insert("messages".into(), messages.into());
    copy_sampling(m, &mut out)?;
    if let Some(tools) = m.get("tools") {
        out.insert("tools".into(), tools_of(tools)?);
    }
    if let Some(choice) = m.get("tool_choice") {
        tool_choice(choice, &mut out)?;
    }
    if m.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

fn copy_sampling(m: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), String> {
    for key in ["temperature", "top_p"] {
        if let Some(v) = m.get(key) {
            let n = v.as_f64().ok_or(format!("{key}: a number is required"))?;
            out.insert(key.into(), n.into());
        }
    }
    if let Some(stop) = m.get("stop_sequences") {
        let ok = stop
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("stop_sequences: an array of strings is required".into());
        }
        out.insert("stop".into(), stop.clone());
    }
    if let Some(user) = m.get("metadata").and_then(|md| md.get("user_id")) {
        if let Some(u) = user.as_str() {
            out.insert("user".into(), u.into());
        }
    }
    Ok(())
}

fn system_text(system: &Value) -> Result<String, String> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let texts: Result<Vec<&str>, String> = blocks
                .iter()
                .map(|b| match b.get("type").and_then(Value::as_str) {
                    Some("text") => b["text"]
                        .as_str()
                        .ok_or("system: a text block needs text".into()),
                    _ => Err(format!("system: only text blocks {NOT_CARRIED}")),
                })
                .collect();
            Ok(texts?.join("\n"))
        }
        _ => Err("system: a string or an array of text blocks is required".into()),
    }
}

/// One Messages turn as chat messages: a user turn's tool results first (each a `tool`
/// message), then the rest of it; an assistant turn's text and tool calls as one message.
fn push_turn(messages: &mut Vec<Value>, turn: &Value) -> Result<(), String> {
    let role = turn.get("role").and_then(Value::as_str);
    let role = role
        .filter(|r| *r == "user" || *r == "assistant")
        .ok_or("role must be user or assistant")?;
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => {
            messages.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => return Err("content: a string or an array of blocks is required".into()),
    };
    let (mut parts, mut calls) = (Vec::new(), Vec::new());
    for (i, b) in blocks.iter().enumerate() {
        let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
        let at = |e: String| format!("content[{i}]: {e}");
        match (role, kind) {
            (_, "text") => parts.push(json!({"type": "text", "text": b["text"].as_str().ok_or(at("text is required".into()))?})),
            ("user", "image") => parts.push(image_part(b).map_err(at)?),
            ("user", "tool_result") => messages.push(tool_message(b).map_err(at)?),
            ("assistant", "tool_use") => calls.push(tool_call(b).map_err(at)?),
            ("assistant", "thinking" | "redacted_thinking") => {}
            _ => return Err(at(format!("a {role} block of type `{kind}` {NOT_CARRIED}"))),
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.join("").into() }});
        if !calls.is_empty() {
            msg["tool_calls"] = calls.into();
        }
        messages.push(msg);
    } else if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image_part(b: &Value) -> Result<Value, String> {
    let src = &b["source"];
    let url = match src["type"].as_str() {
        Some("base64") => {
            let (mt, data) = (src["media_type"].as_str(), src["data"].as_str());
            let (mt, data) = mt.zip(data).ok_or("an image needs media_type and data")?;
            format!("data:{mt};base64,{data}")
        }
        Some("url") => src["url"]
            .as_str()
            .ok_or("an image URL is required")?
            .to_string(),
        _ => return Err("an image source must be base64 or url".into()),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_message(b: &Value) -> Result<Value, String> {
    let id = b["tool_use_id"].as_str().ok_or("tool_use_id is required")?;
    let content = match &b["content"] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Option<Vec<&str>> = parts
                .iter()
                .map(|p| (p["type"] == "text").then(|| p["text"].as_str()).flatten())
                .collect();
            texts
                .ok_or(format!(
                    "a tool_result's blocks other than text {NOT_CARRIED}"
                ))?
                .join("")
        }
        _ => return Err("a tool_result's content must be a string or blocks".into()),
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn tool_call(b: &Value) -> Result<Value, String> {
    let id = b["id"].as_str().ok_or("a tool_use needs an id")?;
    let name = b["name"].as_str().ok_or("a tool_use needs a name")?;
    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
    Ok(
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}}),
    )
}

fn tools_of(tools: &Value) -> Result<Value, String> {
    let tools = tools.as_array().ok_or("tools: an array is required")?;
    let out: Result<Vec<Value>, String> = tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").is_some_and(|k| k != "custom") {
                return Err(format!("tools[{i}]: server tools {NOT_CARRIED}"));
            }
            let name = t["name"].as_str().ok_or(format!("tools[{i}]: name is required"))?;
            let mut f = json!({"name": name, "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect();
    Ok(out?.into())
}

fn tool_choice(c: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    let choice = match c["type"].as_str() {
        Some("auto") => "auto".into(),
        Some("any") => "required".into(),
        Some("none") => "none".into(),
        Some("tool") => {
            let name = c["name"].as_str().ok_or("tool_choice: name is required")?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err("tool_choice: type must be auto, any, tool or none".into()),
    };
    out.insert("tool_choice".into(), choice);
    if c["disable_parallel_tool_use"] == true {
        out.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_round_trip_with_system_and_images() {
        let m = json!({
            "model": "claude-sonnet-4/anthropic,gpt-4o/openai", "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "stop_sequences": ["END"], "temperature": 0.2, "top_k": 5, "stream": true,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris? "},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "call it", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "Thanks"}]}
            ]
        });
        let c = to_chat(&m).unwrap();
        assert_eq!(
            c,
            json!({
                "model": "claude-sonnet-4/anthropic,gpt-4o/openai", "max_tokens": 300,
                "messages": [
                    {"role": "system", "content": "Be brief.\nUse tools."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather in Paris? "},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}
                ],
                "temperature": 0.2, "stop": ["END"], "user": "u-1",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required", "parallel_tool_calls": false,
                "stream": true, "stream_options": {"include_usage": true}
            })
        );
        // What detour's own chat pipeline reads of it.
        let req = crate::api::ChatRequest::parse(c.to_string().into()).unwrap();
        assert_eq!(req.model, "claude-sonnet-4/anthropic,gpt-4o/openai");
        assert!(req.stream && req.include_usage);
        let needs = crate::api::Capabilities::TOOLS;
        assert!(req.needs.contains(needs) && req.needs.contains(crate::api::Capabilities::VISION));
        assert_eq!(req.max_tokens, Some(300));
    }

    #[test]
    fn what_cannot_be_carried_is_a_400_that_names_it() {
        let base = |extra: Value| {
            let mut m = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                m[k] = v.clone();
            }
            to_chat(&m)
        };
        assert!(base(json!({})).is_ok());
        let bad = [
            (json!({"max_tokens": null}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"messages": "hi"}), "messages"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
                "content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]}),
                "other than text",
            ),
            (json!({"system": [{"type": "image"}]}), "system"),
            (
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0]",
            ),
            (json!({"tool_choice": {"type": "maybe"}}), "tool_choice"),
            (json!({"stop_sequences": "END"}), "stop_sequences"),
            (json!({"temperature": "hot"}), "temperature"),
        ];
        for (extra, names) in bad {
            let e = base(extra.clone()).unwrap_err();
            assert!(e.contains(names), "{extra}: {e}");
            // Blocks and tools an Anthropic target still takes; every other fault is the
            // request's own.
            let anthropic_only = ["content[0]", "other than text", "system", "tools[0]"];
            assert_eq!(
                only_not_carried(&e),
                anthropic_only.contains(&names),
                "{extra}: {e}"
            );
        }
        assert!(to_chat(&json!([1])).is_err());
    }
}
