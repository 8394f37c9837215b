//! The mock's Anthropic dialect: `POST …/v1/messages`, and Claude on Vertex (`:rawPredict`).

use super::faults::{Answer, Reply};
use serde_json::{json, Value};

pub(super) fn error(status: u16, message: &str) -> Value {
    let kind = match status {
        429 => "rate_limit_error",
        529 => "overloaded_error",
        401 => "authentication_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The answer's `stop_reason`.
fn stop_reason(a: &Answer<'_>) -> &'static str {
    match a.reply {
        Reply::Text => "end_turn",
        Reply::Length => "max_tokens",
        Reply::Tool(_) => "tool_use",
    }
}

pub(super) fn answer(a: &Answer<'_>) -> Value {
    let content = match a.tool() {
        Some(t) => json!([{"type": "tool_use", "id": "toolu_mock1", "name": t,
                           "input": {"city": "Paris"}}]),
        None => json!([{"type": "text", "text": a.content()}]),
    };
    json!({
        "id": format!("msg_{}", a.name), "type": "message", "role": "assistant", "model": a.model,
        "content": content,
        "stop_reason": stop_reason(a), "stop_sequence": null,
        "usage": {"input_tokens": 9, "output_tokens": 3},
    })
}

/// `message_start`, `content_block_start`, `ping`, one delta per chunk, `content_block_stop`,
/// `message_delta`, `message_stop`.
pub(super) fn events(a: &Answer<'_>) -> usize {
    a.chunks + 6
}

pub(super) fn event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    let (name, data) = event_json(a, i);
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// Event `i`'s name and data.
pub(super) fn event_json(a: &Answer<'_>, i: usize) -> (&'static str, Value) {
    let n = a.chunks;
    match i {
        0 => (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_{}", a.name), "type": "message", "role": "assistant",
                "content": [], "model": a.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        1 => (
            "content_block_start",
            match a.tool() {
                Some(t) => json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": t, "input": {}}}),
                None => json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            },
        ),
        2 => ("ping", json!({"type": "ping"})),
        i if i < n + 3 => (
            "content_block_delta",
            match a.tool() {
                Some(_) => json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"Paris\"}"}}),
                None => json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": a.word(i - 3)}}),
            },
        ),
        i if i == n + 3 => (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        i if i == n + 4 => (
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(a), "stop_sequence": null},
                   "usage": {"output_tokens": n}}),
        ),
        _ => ("message_stop", json!({"type": "message_stop"})),
    }
}

/// Event `i` as InvokeModelWithResponseStream sends it: a `chunk` frame (Claude on Bedrock).
pub(super) fn invoke_event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    crate::providers::bedrock::invoke::chunk_frame(&event_json(a, i).1)
}

pub(super) fn stream_error() -> Vec<u8> {
    let e =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    format!("event: error\ndata: {e}\n\n").into_bytes()
}
