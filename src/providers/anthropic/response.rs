//! Anthropic answers in OpenAI's shape: the JSON answer, the error body, and the event stream
//! (`event:`-typed SSE → `chat.completion.chunk` SSE ending in `[DONE]`). Pure.

use super::*;

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
