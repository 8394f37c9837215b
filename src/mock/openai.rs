//! The mock's OpenAI dialect: `POST …/chat/completions` (OpenAI, Azure, every compatible API).

use super::faults::{Answer, Reply};
use serde_json::{json, Value};

pub(super) fn error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// The answer's `finish_reason`.
fn finish(a: &Answer<'_>) -> &'static str {
    match a.reply {
        Reply::Text => "stop",
        Reply::Length => "length",
        Reply::Tool(_) => "tool_calls",
    }
}

fn tool_call(name: &str) -> Value {
    json!({"index": 0, "id": "call_mock1", "type": "function",
           "function": {"name": name, "arguments": "{\"city\":\"Paris\"}"}})
}

pub(super) fn answer(a: &Answer<'_>) -> Value {
    let message = match a.tool() {
        Some(t) => json!({"role": "assistant", "content": null, "tool_calls": [tool_call(t)]}),
        None => json!({"role": "assistant", "content": a.content()}),
    };
    json!({
        "id": format!("chatcmpl-{}", a.name), "object": "chat.completion", "created": 1_700_000_000,
        "model": a.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish(a)}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    })
}

/// Events of a stream: the role chunk, one per content chunk, the finish, the usage chunk
/// (when asked for), `[DONE]`.
pub(super) fn events(a: &Answer<'_>) -> usize {
    a.chunks + 3 + usize::from(a.include_usage)
}

fn chunk(a: &Answer<'_>, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": format!("chatcmpl-{}", a.name), "object": "chat.completion.chunk",
        "created": 1_700_000_000, "model": a.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

pub(super) fn event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    let n = a.chunks;
    let v = match i {
        0 => chunk(a, json!({"role": "assistant", "content": ""}), None),
        i if i <= n => match a.tool() {
            Some(t) => chunk(a, json!({"tool_calls": [tool_call(t)]}), None),
            None => chunk(a, json!({"content": a.word(i - 1)}), None),
        },
        i if i == n + 1 => chunk(a, json!({}), Some(finish(a))),
        i if i == n + 2 && a.include_usage => json!({
            "id": format!("chatcmpl-{}", a.name), "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": a.model, "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n},
        }),
        _ => return b"data: [DONE]\n\n".to_vec(),
    };
    format!("data: {v}\n\n").into_bytes()
}

pub(super) fn stream_error() -> Vec<u8> {
    let e = json!({"error": {"message": "Overloaded", "type": "server_error"}});
    format!("data: {e}\n\n").into_bytes()
}
