//! Gemini answers in OpenAI's shape: the JSON answer, the error body, and the stream. Pure.

use super::*;

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
