//! Gemini (Google AI Studio, `generateContent` / `streamGenerateContent?alt=sse`) ⇄ OpenAI chat
//! completions. Pure: values in, values out.
//!
//! Parameter rules (README, "Providers"): system messages → `systemInstruction`; assistant →
//! role `model`; image parts must be data URLs (→ `inlineData`); tools → `functionDeclarations`,
//! `tool_choice` → `toolConfig.functionCallingConfig`; tool calls → `functionCall` parts, tool
//! results → `functionResponse` parts (the function name is found from the call's id);
//! `max_completion_tokens`/`max_tokens` → `maxOutputTokens`; `temperature`, `top_p`, `stop`,
//! `seed`, `presence_penalty`, `frequency_penalty` → `generationConfig`; `response_format`
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
    })
}

impl super::Adapter for GoogleAiStudio {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        let (body, opts) = request(call.req.tree()?)?;
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

/// Gemini `finishReason` → OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

fn usage(v: &Value) -> (u64, u64) {
    let n = |k: &str| v.pointer(k).and_then(Value::as_u64).unwrap_or(0);
    (
        n("/usageMetadata/promptTokenCount"),
        n("/usageMetadata/candidatesTokenCount") + n("/usageMetadata/thoughtsTokenCount"),
    )
}

/// Text and function calls of the first candidate; calls get ids `call_<n>` unless Gemini
/// gave one.
fn candidate_parts(v: &Value, first_call: usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in v
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) != Some(true) {
                text.push_str(t);
            }
        } else if let Some(fc) = p.get("functionCall") {
            let n = first_call + calls.len();
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{n}"));
            calls.push(json!({"id": id, "type": "function", "function": {
                "name": fc.get("name").cloned().unwrap_or(Value::Null),
                "arguments": serde_json::to_string(fc.get("args").unwrap_or(&json!({}))).unwrap_or_default()}}));
        }
    }
    (text, calls)
}

/// Gemini `GenerateContentResponse` → OpenAI `chat.completion`.
pub fn response(body: &[u8], model_id: &str, created: u64) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let (text, calls) = candidate_parts(&v, 0);
    let reason = v
        .pointer("/candidates/0/finishReason")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/promptFeedback/blockReason").map(|_| "SAFETY"))
        .unwrap_or("STOP");
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.clone());
    }
    let (input, output) = usage(&v);
    let out = json!({
        "id": v.get("responseId").and_then(Value::as_str).map(|r| format!("chatcmpl-{r}")).unwrap_or_else(|| "chatcmpl-gemini".into()),
        "object": "chat.completion",
        "created": created,
        "model": v.get("modelVersion").and_then(Value::as_str).unwrap_or(model_id),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reason, !calls.is_empty())}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Gemini error body (`{"error":{"code","message","status"}}`) → OpenAI error JSON.
pub fn error_body(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the provider returned an error");
    let kind = v
        .pointer("/error/status")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    serde_json::to_vec(
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
    .unwrap_or_default()
}

/// One streamed `GenerateContentResponse`, borrowed from the received bytes where it can be.
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default, rename = "usageMetadata")]
    usage: Option<UsageMeta>,
    #[serde(default, rename = "modelVersion", borrow)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<ErrorInfo>,
}

#[derive(serde::Deserialize)]
struct Candidate<'a> {
    #[serde(default, borrow)]
    content: Option<CandidateContent<'a>>,
    #[serde(default, rename = "finishReason", borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct CandidateContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<Part<'a>>,
}

#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default, rename = "functionCall")]
    function_call: Option<Value>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMeta {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

#[derive(serde::Deserialize)]
struct ErrorInfo {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Gemini SSE (`data:` lines, each a whole `GenerateContentResponse`, no `[DONE]`) → OpenAI
/// chunk SSE. The stream is complete when a chunk carried a `finishReason` and the upstream
/// then ended: [`StreamTranslator::finish`] adds the usage chunk and `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: SseDecoder,
    opts: StreamOpts,
    created: u64,
    model: String,
    /// Chunk framing (the role chunk waits for the first content, as for Anthropic).
    writer: ChunkWriter,
    calls: usize,
    finished: bool,
    usage: (u64, u64),
}

impl StreamTranslator {
    pub fn new(opts: StreamOpts, model_id: &str, created: u64) -> Self {
        StreamTranslator {
            decoder: SseDecoder::default(),
            opts,
            created,
            model: model_id.to_string(),
            writer: ChunkWriter::new("chatcmpl-gemini", created, model_id),
            calls: 0,
            finished: false,
            usage: (0, 0),
        }
    }

    pub fn pending(&self) -> usize {
        self.decoder.pending()
    }

    /// Whether a `finishReason` arrived (the answer is whole once the upstream ends).
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, InBandError> {
        let mut out = String::new();
        for ev in self.decoder.push(bytes) {
            let v: Chunk<'_> = serde_json::from_str(&ev.data).map_err(|_| InBandError {
                kind: "invalid_event".into(),
                message: "the provider sent an event that is not JSON".into(),
            })?;
            if let Some(e) = v.error {
                return Err(InBandError {
                    kind: e.status.unwrap_or_else(|| "INTERNAL".into()),
                    message: e.message.unwrap_or_else(|| "error".into()),
                });
            }
            if let Some(m) = v.model_version.as_deref() {
                if m != self.model {
                    self.model = m.to_string();
                    self.writer
                        .set_identity("chatcmpl-gemini", self.created, &self.model);
                }
            }
            if let Some(u) = &v.usage {
                self.usage = (
                    u.prompt_token_count,
                    u.candidates_token_count + u.thoughts_token_count,
                );
            }
            let Some(cand) = v.candidates.into_iter().next() else {
                continue;
            };
            let mut text = String::new();
            let mut calls = Vec::new();
            for p in cand.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(t) = p.text {
                    if p.thought != Some(true) {
                        text.push_str(&t);
                    }
                } else if let Some(fc) = p.function_call {
                    calls.push(fc);
                }
            }
            if !text.is_empty() {
                let mut delta = String::with_capacity(text.len() + 16);
                delta.push_str("{\"content\":");
                push_json_str(&mut delta, &text);
                delta.push('}');
                self.writer.chunk(&mut out, &delta, None);
            }
            for fc in calls {
                let n = self.calls;
                self.calls += 1;
                let id = fc
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("call_{n}"));
                let delta = json!({"tool_calls": [{"index": n, "id": id, "type": "function", "function": {
                    "name": fc.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": serde_json::to_string(fc.get("args").unwrap_or(&json!({}))).unwrap_or_default()}}]});
                self.writer.chunk(&mut out, &delta.to_string(), None);
            }
            if let Some(reason) = cand.finish_reason.as_deref() {
                let f = finish_reason(reason, self.calls > 0);
                self.writer.chunk(&mut out, "{}", Some(f));
                self.finished = true;
            }
        }
        Ok(out.into_bytes())
    }

    /// At the upstream's clean end: the usage chunk (if asked for) and `[DONE]`, when the
    /// answer finished; nothing otherwise (the engine then reports the stream as cut).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !self.finished || self.decoder.pending() > 0 {
            return None;
        }
        let mut out = String::new();
        push_stream_end(
            &mut out,
            self.opts.include_usage,
            ("chatcmpl-gemini", self.created, &self.model),
            self.usage,
        );
        Some(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("test request is JSON")
    }

    #[test]
    fn request_maps_contents_tools_and_config() {
        let body = br#"{"model":"g","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_9","content":"{\"temp\":18}"},
            {"role":"user","content":"ok"}],
          "tools":[{"type":"function","function":{"name":"get_weather","description":"W","parameters":{"type":"object"}}}],
          "tool_choice":{"type":"function","function":{"name":"get_weather"}},
          "max_tokens":100,"temperature":0.1,"top_p":0.5,"stop":"END","seed":7,
          "response_format":{"type":"json_object"},"stream_options":{"include_usage":true}}"#;
        let (out, opts) = request(&tree(body)).expect("maps");
        assert!(opts.include_usage);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            json!({
                "contents":[
                    {"role":"user","parts":[{"text":"Look"},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]},
                    {"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},
                    {"role":"user","parts":[{"functionResponse":{"name":"get_weather","response":{"temp":18}}},{"text":"ok"}]}],
                "systemInstruction":{"parts":[{"text":"Be brief."}]},
                "generationConfig":{"maxOutputTokens":100,"temperature":0.1,"topP":0.5,"seed":7,
                    "stopSequences":["END"],"responseMimeType":"application/json"},
                "tools":[{"functionDeclarations":[{"name":"get_weather","description":"W","parameters":{"type":"object"}}]}],
                "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_weather"]}}
            })
        );
        for (b, needle) in [
            (r#"{"messages":[],"n":3}"#, "n > 1"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#,
                "data URLs",
            ),
            (
                r#"{"messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#,
                "answers no earlier",
            ),
        ] {
            let e = request(&tree(b.as_bytes())).expect_err(b);
            assert!(e.contains(needle), "{b}: {e}");
        }
        assert_eq!(
            path("", "gemini-2.0-flash", true),
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn response_maps_text_calls_and_usage() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Sure."},{"functionCall":{"name":"f","args":{"a":1}}}]},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":4,"totalTokenCount":14},"modelVersion":"gemini-2.0-flash","responseId":"r1"}"#;
        let v: Value = serde_json::from_slice(&response(body, "x", 3).expect("ok")).expect("json");
        assert_eq!(
            v,
            json!({"id":"chatcmpl-r1","object":"chat.completion","created":3,"model":"gemini-2.0-flash",
              "choices":[{"index":0,"message":{"role":"assistant","content":"Sure.",
                "tool_calls":[{"id":"call_0","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls"}],
              "usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}})
        );
        assert_eq!(finish_reason("MAX_TOKENS", false), "length");
        assert_eq!(finish_reason("SAFETY", false), "content_filter");
    }

    const STREAM: &str = "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hé\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"llo\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":3,\"totalTokenCount\":8},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n";

    fn run(split: usize) -> String {
        let mut t = StreamTranslator::new(
            StreamOpts {
                include_usage: true,
            },
            "g",
            1,
        );
        let mut out = t.push(&STREAM.as_bytes()[..split]).expect("ok");
        out.extend(t.push(&STREAM.as_bytes()[split..]).expect("ok"));
        out.extend(t.finish().expect("finished"));
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn stream_translates_the_same_at_every_split() {
        let whole = run(STREAM.len());
        let data: Vec<&str> = whole
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Héllo!");
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            chunks[5]["usage"],
            json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8})
        );
        assert_eq!(chunks[1]["model"], "gemini-2.0-flash");
        for i in 0..=STREAM.len() {
            assert_eq!(run(i), whole, "split at {i}");
        }
    }

    #[test]
    fn unfinished_stream_and_in_band_error() {
        let mut t = StreamTranslator::new(StreamOpts::default(), "g", 1);
        let first = STREAM.split("\r\n\r\n").next().unwrap_or("");
        assert!(!t
            .push(format!("{first}\r\n\r\n").as_bytes())
            .expect("ok")
            .is_empty());
        assert!(t.finish().is_none(), "no finishReason: the stream is cut");
        let e = t
            .push(b"data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\n\n")
            .expect_err("error");
        assert_eq!(e.kind, "UNAVAILABLE");
    }
}
