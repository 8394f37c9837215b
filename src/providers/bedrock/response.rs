//! Bedrock Converse answers in OpenAI's shape: the JSON answer, the error body, and the binary
//! event stream (decoded with aws-smithy-eventstream, CRCs checked). Pure.

use super::*;

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse `usage` → (prompt tokens, completion tokens); cache reads and writes are input.
fn token_usage(u: Option<&Value>) -> (u64, u64) {
    let n = |k: &str| {
        u.and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (
        n("inputTokens") + n("cacheReadInputTokens") + n("cacheWriteInputTokens"),
        n("outputTokens"),
    )
}

/// `ConverseResponse` JSON → OpenAI `chat.completion` JSON.
pub fn response(body: &[u8], model_id: &str, created: u64) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            calls.push(json!({
                "id": tu.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": tu.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": serde_json::to_string(tu.get("input").unwrap_or(&json!({}))).unwrap_or_default(),
                }
            }));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let (i, o) = token_usage(v.get("usage"));
    let out = json!({
        "id": "chatcmpl-bedrock",
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stop)}],
        "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
    });
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}

/// Bedrock error body (`{"message": …}`; the type is in `x-amzn-ErrorType`) → OpenAI error JSON.
pub fn error_body(body: &[u8], status: u16) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("the provider returned an error");
    let kind = if (400..500).contains(&status) {
        "invalid_request_error"
    } else {
        "api_error"
    };
    serde_json::to_vec(
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
    .unwrap_or_default()
}

pub(super) fn header_str<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The stream events detour reads, borrowed where it can be.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[serde(default)]
    content_block_index: Option<usize>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    start: Option<Start>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_use: Option<ToolDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct ToolDelta<'a> {
    #[serde(default, borrow)]
    input: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    #[serde(default)]
    tool_use: Option<ToolStart>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolStart {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
}

/// ConverseStream (AWS event-stream frames) → OpenAI chunk SSE. The answer is whole once
/// `messageStop` arrived and the upstream ended (`metadata`, with the usage, comes between):
/// [`StreamTranslator::finish`] then adds the usage chunk and `[DONE]`.
#[derive(Debug)]
pub struct StreamTranslator {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    opts: StreamOpts,
    created: u64,
    model: String,
    writer: ChunkWriter,
    /// contentBlockIndex → OpenAI tool-call index.
    tool_blocks: Vec<(usize, usize)>,
    finished: bool,
    usage: (u64, u64),
}

impl StreamTranslator {
    pub fn new(opts: StreamOpts, model_id: &str, created: u64) -> Self {
        StreamTranslator {
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            opts,
            created,
            model: model_id.to_string(),
            writer: ChunkWriter::new("chatcmpl-bedrock", created, model_id),
            tool_blocks: Vec::new(),
            finished: false,
            usage: (0, 0),
        }
    }

    /// Bytes of a frame not yet whole.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, InBandError> {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            let frame = self
                .decoder
                .decode_frame(&mut self.buf)
                .map_err(|e| InBandError {
                    kind: "invalid_event".into(),
                    message: format!("the provider sent a malformed event-stream frame: {e}"),
                })?;
            let DecodedFrame::Complete(msg) = frame else {
                break;
            };
            self.event(&msg, &mut out)?;
        }
        Ok(out.into_bytes())
    }

    fn event(&mut self, msg: &Message, out: &mut String) -> Result<(), InBandError> {
        let invalid = || InBandError {
            kind: "invalid_event".into(),
            message: "the provider sent an event that is not JSON".into(),
        };
        let ev: Event<'_> = serde_json::from_slice(msg.payload()).map_err(|_| invalid())?;
        match header_str(msg, ":message-type") {
            Some("event") => {}
            Some("exception") | Some("error") => {
                return Err(InBandError {
                    kind: header_str(msg, ":exception-type")
                        .or_else(|| header_str(msg, ":error-code"))
                        .unwrap_or("exception")
                        .to_string(),
                    message: ev
                        .message
                        .map(Cow::into_owned)
                        .or_else(|| header_str(msg, ":error-message").map(str::to_string))
                        .unwrap_or_else(|| "error".into()),
                })
            }
            _ => return Err(invalid()),
        }
        match header_str(msg, ":event-type") {
            Some("contentBlockStart") => {
                if let Some(tu) = ev.start.and_then(|s| s.tool_use) {
                    let n = self.tool_blocks.len();
                    self.tool_blocks
                        .push((ev.content_block_index.unwrap_or(usize::MAX), n));
                    let delta = json!({"tool_calls": [{"index": n, "id": tu.tool_use_id, "type": "function",
                        "function": {"name": tu.name, "arguments": ""}}]});
                    self.writer.chunk(out, &delta.to_string(), None);
                }
            }
            Some("contentBlockDelta") => {
                let Some(d) = ev.delta else { return Ok(()) };
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    let mut delta = String::with_capacity(t.len() + 16);
                    delta.push_str("{\"content\":");
                    push_json_str(&mut delta, &t);
                    delta.push('}');
                    self.writer.chunk(out, &delta, None);
                } else if let Some(input) = d.tool_use.and_then(|t| t.input) {
                    let block = ev.content_block_index.unwrap_or(usize::MAX);
                    let n = self
                        .tool_blocks
                        .iter()
                        .find(|(b, _)| *b == block)
                        .map(|(_, n)| *n)
                        .unwrap_or(0);
                    let mut delta = String::with_capacity(input.len() + 64);
                    delta.push_str("{\"tool_calls\":[{\"index\":");
                    delta.push_str(&n.to_string());
                    delta.push_str(",\"function\":{\"arguments\":");
                    push_json_str(&mut delta, &input);
                    delta.push_str("}}]}");
                    self.writer.chunk(out, &delta, None);
                }
            }
            Some("messageStop") => {
                let reason = finish_reason(ev.stop_reason.as_deref().unwrap_or("end_turn"));
                self.writer.chunk(out, "{}", Some(reason));
                self.finished = true;
            }
            Some("metadata") => {
                self.usage = token_usage(ev.usage.as_ref());
            }
            // messageStart (the role chunk waits for content), contentBlockStop, and events
            // this version does not know.
            _ => {}
        }
        Ok(())
    }

    /// At the upstream's clean end: the usage chunk (if asked for) and `[DONE]`, when the
    /// answer finished; nothing otherwise (the engine then reports the stream as cut).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !self.finished || !self.buf.is_empty() {
            return None;
        }
        let mut out = String::new();
        push_stream_end(
            &mut out,
            self.opts.include_usage,
            ("chatcmpl-bedrock", self.created, &self.model),
            self.usage,
        );
        Some(out.into_bytes())
    }
}

/// One event-stream frame as Bedrock sends it (for the mock and tests).
pub fn frame(event_type: &str, payload: &Value) -> Vec<u8> {
    frame_with(":event-type", event_type, "event", payload)
}

/// An exception frame (`:message-type: exception`).
pub fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    frame_with(
        ":exception-type",
        exception_type,
        "exception",
        &json!({"message": message}),
    )
}

fn frame_with(type_header: &str, type_name: &str, message_type: &str, payload: &Value) -> Vec<u8> {
    use aws_smithy_types::event_stream::Header;
    let s = |v: &str| HeaderValue::String(v.to_string().into());
    let msg = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(type_header.to_string(), s(type_name)))
        .add_header(Header::new(":content-type", s("application/json")))
        .add_header(Header::new(":message-type", s(message_type)));
    let mut out = Vec::new();
    // Writing to a Vec fails only for headers or payloads over the format's limits.
    let _ = aws_smithy_eventstream::frame::write_message_to(&msg, &mut out);
    out
}
