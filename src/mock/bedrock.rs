//! The mock's Bedrock dialect: `…/model/{modelId}/converse` and `/converse-stream` (binary AWS
//! event-stream frames).

use super::faults::Answer;
use crate::providers::bedrock::{exception_frame, frame};
use serde_json::{json, Value};

pub(super) fn error(message: &str) -> Value {
    json!({"message": message})
}

/// The `x-amzn-ErrorType` header of an error status.
pub(super) fn error_type_header(status: u16) -> (String, String) {
    let kind = match status {
        429 => "ThrottlingException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        503 => "ServiceUnavailableException",
        s if s >= 500 => "InternalServerException",
        _ => "ValidationException",
    };
    (
        "x-amzn-errortype".into(),
        format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    )
}

pub(super) fn answer(a: &Answer<'_>) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": a.content()}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12},
        "metrics": {"latencyMs": 1},
    })
}

/// `messageStart`, one `contentBlockDelta` per chunk, `contentBlockStop`, `messageStop`,
/// `metadata`.
pub(super) fn events(a: &Answer<'_>) -> usize {
    a.chunks + 4
}

pub(super) fn event(a: &Answer<'_>, i: usize) -> Vec<u8> {
    let n = a.chunks;
    // Real streams pad events with a "p" field; the translator must ignore it.
    match i {
        0 => frame(
            "messageStart",
            &json!({"role": "assistant", "p": "abcdefgh"}),
        ),
        i if i <= n => frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": a.word(i - 1)}, "p": "abc"}),
        ),
        i if i == n + 1 => frame("contentBlockStop", &json!({"contentBlockIndex": 0})),
        i if i == n + 2 => frame("messageStop", &json!({"stopReason": "end_turn"})),
        _ => frame(
            "metadata",
            &json!({"usage": {"inputTokens": 9, "outputTokens": n, "totalTokens": 9 + n},
                    "metrics": {"latencyMs": 1}}),
        ),
    }
}

pub(super) fn stream_error() -> Vec<u8> {
    exception_frame(
        "serviceUnavailableException",
        "Bedrock is unable to process your request.",
    )
}
