//! The mock's Gemini dialect: `…/models/{model}:generateContent` and
//! `:streamGenerateContent` (Google AI Studio, and Gemini on Vertex).

use super::faults::Answer;
use serde_json::{json, Value};

pub(super) fn error(status: u16, message: &str) -> Value {
    let name = match status {
        429 => "RESOURCE_EXHAUSTED",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        503 => "UNAVAILABLE",
        s if s >= 500 => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    };
    json!({"error": {"code": status, "message": message, "status": name}})
}

pub(super) fn answer(a: &Answer<'_>) -> Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": a.content()}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12},
        "modelVersion": a.model, "responseId": a.name,
    })
}

/// One event per chunk (Gemini streams carry no `[DONE]`); the last has the finish and usage.
pub(super) fn events(a: &Answer<'_>) -> usize {
    a.chunks
}

pub(super) fn event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    let n = a.chunks;
    let mut candidate = json!({"content": {"role": "model", "parts": [{"text": a.word(i)}]},
                               "index": 0});
    let mut v = json!({"candidates": [], "modelVersion": a.model});
    if i + 1 == n {
        candidate["finishReason"] = "STOP".into();
        v["usageMetadata"] =
            json!({"promptTokenCount": 9, "candidatesTokenCount": n, "totalTokenCount": 9 + n});
    }
    v["candidates"] = json!([candidate]);
    format!("data: {v}\r\n\r\n").into_bytes()
}

pub(super) fn stream_error() -> Vec<u8> {
    let e = json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}});
    format!("data: {e}\r\n\r\n").into_bytes()
}
