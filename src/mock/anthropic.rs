//! The mock's Anthropic dialect: `POST …/v1/messages`, and Claude on Vertex (`:rawPredict`).

use super::faults::Answer;
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

pub(super) fn answer(a: &Answer<'_>) -> Value {
    json!({
        "id": format!("msg_{}", a.name), "type": "message", "role": "assistant", "model": a.model,
        "content": [{"type": "text", "text": a.content()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 9, "output_tokens": 3},
    })
}

/// `message_start`, `content_block_start`, `ping`, one delta per chunk, `content_block_stop`,
/// `message_delta`, `message_stop`.
pub(super) fn events(a: &Answer<'_>) -> usize {
    a.chunks + 6
}

pub(super) fn event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    let n = a.chunks;
    let (name, data) = match i {
        0 => (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_{}", a.name), "type": "message", "role": "assistant",
                "content": [], "model": a.model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        1 => (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        2 => ("ping", json!({"type": "ping"})),
        i if i < n + 3 => (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": a.word(i - 3)}}),
        ),
        i if i == n + 3 => (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        i if i == n + 4 => (
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": n}}),
        ),
        _ => ("message_stop", json!({"type": "message_stop"})),
    };
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

pub(super) fn stream_error() -> Vec<u8> {
    let e =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    format!("event: error\ndata: {e}\n\n").into_bytes()
}
