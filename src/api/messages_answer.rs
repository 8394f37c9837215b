//! OpenAI chat answer → Anthropic Messages answer, for a Messages client served by a target
//! that speaks chat completions: a `chat.completion` becomes a `message`
//! ([`to_message`]), a `chat.completion.chunk` stream becomes Anthropic's event stream
//! ([`StreamToMessages`]). Pure: values and bytes in, bytes out.
//!
//! Stop reasons: `stop` → `end_turn`, `length` → `max_tokens`, `tool_calls` (and the older
//! `function_call`) → `tool_use`, `content_filter` → `refusal`. A tool call's `arguments` (a
//! JSON string) become the block's `input` object; arguments that are not a JSON object make
//! the answer unusable (an error, as for any malformed answer).

use serde_json::{json, Value};

/// Anthropic's `stop_reason` for a chat `finish_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// The `message` for a `chat.completion`; its `model` is the answer's, else `model`.
pub fn to_message(chat: &Value, model: &str) -> Result<Value, String> {
    let choice = chat["choices"].get(0).ok_or("the answer has no choices")?;
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        content.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().unwrap_or_default(),
            "name": f["name"].as_str().unwrap_or_default(),
            "input": input_of(f["arguments"].as_str().unwrap_or_default())?,
        }));
    }
    let usage = &chat["usage"];
    Ok(json!({
        "id": message_id(chat["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": chat["model"].as_str().unwrap_or(model),
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage["prompt_tokens"].as_u64().unwrap_or(0),
            "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0),
        },
    }))
}

fn input_of(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err("a tool call's arguments are not a JSON object".into()),
    }
}

/// `msg_` and the chat answer's id, as Anthropic's ids look.
fn message_id(chat_id: Option<&str>) -> String {
    let id = chat_id.unwrap_or("detour");
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    format!("msg_{clean}")
}

/// What a block open in the stream is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Text,
    /// A tool call, by its index in the chat stream.
    Tool(u64),
}

/// A `chat.completion.chunk` stream, one `data:` payload at a time, as Anthropic's events.
#[derive(Debug)]
pub struct StreamToMessages {
    model: String,
    started: bool,
    /// The open block and its index; `next` is the next block's index.
    open: Option<(Open, usize)>,
    next: usize,
    stop: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    /// `message_stop` or an `error` event was written: nothing may follow.
    ended: bool,
}

/// One `event: name` / `data: JSON` SSE event, as Anthropic's streams are written.
pub fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl StreamToMessages {
    pub fn new(model: &str) -> StreamToMessages {
        StreamToMessages {
            model: model.to_string(),
            started: false,
            open: None,
            next: 0,
            stop: None,
            input_tokens: 0,
            output_tokens: 0,
            ended: false,
        }
    }

    /// The rest of a message already open (a continuation): no `message_start`; text goes on
    /// in block `open_text` if one is open, and new blocks take indices from `next`.
    pub fn continuing(open_text: Option<usize>, next: usize) -> StreamToMessages {
        StreamToMessages {
            started: true,
            open: open_text.map(|i| (Open::Text, i)),
            next,
            ..StreamToMessages::new("")
        }
    }

    /// Whether the stream was ended, whole (`message_stop`) or failed (`error`).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// One chunk's `data:` payload (`[DONE]` ends the stream); the events it makes go to `out`.
    pub fn push(&mut self, data: &str, out: &mut Vec<u8>) -> Result<(), String> {
        if data.trim() == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("a chunk is not JSON: {e}"))?;
        if let Some(e) = chunk.get("error").filter(|e| e.is_object()) {
            // An in-band error, or detour's end of a broken stream.
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_ascii_lowercase();
            let overloaded = text("code").contains("overload") || text("type").contains("overload");
            let kind = if overloaded {
                "overloaded_error"
            } else {
                "api_error"
            };
            let message = e["message"].as_str().unwrap_or("the answer broke off");
            self.fail(kind, message, out);
            return Ok(());
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = u["completion_tokens"]
                .as_u64()
                .unwrap_or(self.output_tokens);
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(());
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.block(Open::Text, || json!({"type": "text", "text": ""}), out);
            let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}});
            event(out, "content_block_delta", &d);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.tool_delta(call, out);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.stop = Some(stop_reason(Some(f)).to_string());
        }
        Ok(())
    }

    /// `message_start` (with the first chunk's id and model) and a `ping`, once.
    fn start(&mut self, first: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = first["model"].as_str().unwrap_or(&self.model);
        let message = json!({
            "id": message_id(first["id"].as_str()), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
        event(out, "ping", &json!({"type": "ping"}));
    }

    /// The index of the open block of kind `kind`, opening it (and closing another) if needed.
    fn block(&mut self, kind: Open, first: impl FnOnce() -> Value, out: &mut Vec<u8>) -> usize {
        if let Some((open, index)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((kind, index));
        let start =
            json!({"type": "content_block_start", "index": index, "content_block": first()});
        event(out, "content_block_start", &start);
        index
    }

    fn tool_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let n = call["index"].as_u64().unwrap_or(0);
        let f = &call["function"];
        let (id, name) = (call["id"].as_str(), f["name"].as_str());
        // A call with an id starts a new block, even at the index just open.
        if id.is_some() && self.open.is_some_and(|(o, _)| o == Open::Tool(n)) {
            self.close(out);
        }
        let index = self.block(
            Open::Tool(n),
            || json!({"type": "tool_use", "id": id.unwrap_or_default(), "name": name.unwrap_or_default(), "input": {}}),
            out,
        );
        if let Some(args) = f["arguments"].as_str().filter(|a| !a.is_empty()) {
            let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}});
            event(out, "content_block_delta", &d);
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// The end of a whole stream: the open block closed, the stop reason and usage, and
    /// `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.start(&Value::Null, out);
        self.close(out);
        let stop = self.stop.as_deref().unwrap_or("end_turn");
        let usage = json!({"input_tokens": self.input_tokens, "output_tokens": self.output_tokens});
        let d = json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage});
        event(out, "message_delta", &d);
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    /// A failure after the stream began: Anthropic's `event: error`, and no `message_stop`.
    pub fn fail(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let e = json!({"type": "error", "error": {"type": kind, "message": message}});
        event(out, "error", &e);
    }
}

#[cfg(test)]
#[path = "messages_answer_tests.rs"]
mod tests;
