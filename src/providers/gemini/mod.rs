//! Gemini (Google AI Studio, `generateContent` / `streamGenerateContent?alt=sse`) ⇄ OpenAI chat
//! completions. Pure: values in, values out.
//!
//! Parameter rules (README, "Providers"): system messages → `systemInstruction`; assistant →
//! role `model`; image parts must be data URLs (→ `inlineData`); tools → `functionDeclarations`,
//! `tool_choice` → `toolConfig.functionCallingConfig`; tool calls → `functionCall` parts, tool
//! results → `functionResponse` parts (the function name is found from the call's id);
//! `max_completion_tokens`/`max_tokens` → `maxOutputTokens`; `temperature`, `top_p`, `stop`,
//! `seed`, `presence_penalty`, `frequency_penalty` (and a Messages client's `top_k`) →
//! `generationConfig`; `response_format`
//! `json_object` → `responseMimeType`, `json_schema` → `responseJsonSchema`. Refused (400):
//! `n` > 1, `logprobs`, image URLs that are not data URLs, audio/file parts. Dropped: `user`,
//! `logit_bias`, `parallel_tool_calls`, `store`, unknown fields.

use super::common::{
    call_arguments, data_url, push_json_str, push_stream_end, push_turn, text_of, ChunkWriter,
};
use super::common::{InBandError, StreamOpts};
use crate::sse::SseDecoder;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Gemini on Google AI Studio: `{base}/v1beta/models/{id}:generateContent` (streams
/// `:streamGenerateContent?alt=sse`), the key in `x-goog-api-key`.
#[derive(Debug)]
pub struct GoogleAiStudio;

pub(super) fn build(
    p: &crate::config::ProviderConfig,
    env: super::Env<'_>,
) -> Result<super::Built, crate::config::ConfigError> {
    Ok(super::Built {
        adapter: Box::new(GoogleAiStudio),
        endpoint: super::endpoint(p, None)?,
        credentials: super::Credentials::from_env(p, env),
        token_endpoint: None,
    })
}

impl super::Adapter for GoogleAiStudio {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        let (body, opts) = request_for(call.req)?;
        Ok(super::Prepared {
            path: path(call.base_path, call.route.id, call.stream),
            body: body.into(),
            wire: super::Wire::Gemini(opts, call.route.id.to_string()),
        })
    }

    fn authorize(
        &self,
        h: &mut pingora_http::RequestHeader,
        auth: &super::Auth<'_>,
    ) -> pingora_core::Result<()> {
        match auth {
            super::Auth::Key(k) => h.insert_header("x-goog-api-key", *k),
            super::Auth::Token(t) => super::bearer(h, t),
            super::Auth::None | super::Auth::Aws(_) => Ok(()),
        }
    }
}

/// The request path for `model_id` below the provider's base path.
pub fn path(base_path: &str, model_id: &str, stream: bool) -> String {
    let model_id = crate::text::path_segment(model_id);
    if stream {
        format!("{base_path}/v1beta/models/{model_id}:streamGenerateContent?alt=sse")
    } else {
        format!("{base_path}/v1beta/models/{model_id}:generateContent")
    }
}

fn parts_of(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Null => Ok(vec![]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": p.get("text").cloned().unwrap_or(json!(""))})),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .ok_or("image_url part without a url")?;
                    let (mime, data) =
                        data_url(url)?.ok_or("gemini takes images as data URLs only")?;
                    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
                }
                other => Err(format!(
                    "content part type {} is not supported by gemini",
                    other.unwrap_or("(none)")
                )),
            })
            .collect(),
        _ => Err("content must be a string or an array of parts".into()),
    }
}

/// OpenAI chat request → Gemini `GenerateContentRequest` body.
pub fn request(value: &Value) -> Result<(Vec<u8>, StreamOpts), String> {
    request_with(value, None)
}

/// The Gemini request for `req`: its chat tree, with a Messages client's `top_k` as `topK`
/// (chat completions has no `top_k`; Gemini has).
pub fn request_for(req: &crate::api::ChatRequest) -> Result<(Vec<u8>, StreamOpts), String> {
    let top_k = req.native.as_deref().and_then(|n| n.top_k);
    request_with(req.tree()?, top_k)
}

fn request_with(value: &Value, top_k: Option<u64>) -> Result<(Vec<u8>, StreamOpts), String> {
    let req = value.as_object().ok_or("the request must be an object")?;
    let mut system = String::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call id → function name, for functionResponse parts.
    let mut call_names: Vec<(String, String)> = Vec::new();
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let at = |e: String| format!("messages[{i}]: {e}");
        match role {
            "system" | "developer" => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text_of(content).map_err(at)?);
            }
            "user" => push_turn(
                &mut contents,
                "parts",
                "user",
                parts_of(content).map_err(at)?,
            ),
            "assistant" => {
                let mut parts = parts_of(content).map_err(at)?;
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let args = call_arguments(tc).map_err(at)?;
                    if let Some(id) = tc.get("id").and_then(Value::as_str) {
                        call_names.push((id.to_string(), name.to_string()));
                    }
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                push_turn(&mut contents, "parts", "model", parts);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names
                    .iter()
                    .find(|(c, _)| c == id)
                    .map(|(_, n)| n.clone())
                    .ok_or_else(|| {
                        at(format!("tool_call_id `{id}` answers no earlier tool call"))
                    })?;
                let text = text_of(content).map_err(at)?;
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"result": text}),
                };
                push_turn(
                    &mut contents,
                    "parts",
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return Err(format!("messages[{i}]: unknown role `{other}`")),
        }
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("detour maps one gemini candidate; n > 1 is not supported".into());
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err("logprobs are not mapped for gemini".into());
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    let mut gen = Map::new();
    if let Some(n) = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
    {
        gen.insert("maxOutputTokens".into(), json!(n));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            gen.insert(to.into(), v.clone());
        }
    }
    if let Some(k) = top_k {
        gen.insert("topK".into(), json!(k));
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            gen.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            gen.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    match value
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        Some("json_object") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            gen.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = value.pointer("/response_format/json_schema/schema") {
                gen.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d =
                    json!({"name": t.pointer("/function/name").cloned().unwrap_or(Value::Null)});
                if let Some(desc) = t.pointer("/function/description") {
                    d["description"] = desc.clone();
                }
                if let Some(p) = t.pointer("/function/parameters") {
                    d["parameters"] = p.clone();
                }
                d
            })
            .collect();
        if !decls.is_empty() {
            out.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
    }
    let mode = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(tc @ Value::Object(_)) => tc
            .pointer("/function/name")
            .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
        _ => None,
    };
    if let Some(m) = mode {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": m}));
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
