//! Claude on Bedrock for clients of Anthropic's Messages API: `InvokeModel`
//! (`/model/{id}/invoke`) and `InvokeModelWithResponseStream` (`/invoke-with-response-stream`)
//! take the Messages body itself (no `model`, no `stream`; `anthropic_version` in the body).
//! The JSON answer is Anthropic's message as it is; the stream is Anthropic's events, each the
//! base64 `bytes` of a `chunk` frame in AWS event-stream framing, which [`InvokeStream`] turns
//! back into Anthropic's SSE (`event: <type>` and the event's JSON as it came). Pure.

use super::super::common::InBandError;
use super::header_str;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use base64::Engine as _;
use bytes::BytesMut;

/// The `anthropic_version` Bedrock's Messages bodies carry.
pub const VERSION: &str = "bedrock-2023-05-31";

/// Whether Bedrock serves `model_id` with Anthropic's Messages API (Claude models, inference
/// profiles included: `us.anthropic.claude-…`).
pub fn is_anthropic(model_id: &str) -> bool {
    model_id.starts_with("anthropic.") || model_id.contains(".anthropic.")
}

/// The InvokeModel path for `model_id` (one URI label, as for Converse).
pub fn path(base_path: &str, model_id: &str, stream: bool) -> String {
    let method = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    format!(
        "{base_path}/model/{}/{method}",
        crate::text::query_value(model_id)
    )
}

/// InvokeModelWithResponseStream frames → Anthropic's SSE events, incrementally.
#[derive(Debug, Default)]
pub struct InvokeStream {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
}

#[derive(serde::Deserialize)]
struct Chunk {
    #[serde(default)]
    bytes: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

fn invalid(message: &str) -> InBandError {
    InBandError {
        kind: "invalid_event".into(),
        message: message.into(),
    }
}

impl InvokeStream {
    /// Bytes of a frame not yet whole.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed upstream bytes; Anthropic's SSE events to send now (possibly none).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, InBandError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let frame = self.decoder.decode_frame(&mut self.buf).map_err(|e| {
                invalid(&format!(
                    "the provider sent a malformed event-stream frame: {e}"
                ))
            })?;
            let DecodedFrame::Complete(msg) = frame else {
                break;
            };
            let chunk: Chunk = serde_json::from_slice(msg.payload())
                .map_err(|_| invalid("the provider sent an event that is not JSON"))?;
            match header_str(&msg, ":message-type") {
                Some("event") => {}
                Some("exception") | Some("error") => {
                    return Err(InBandError {
                        kind: header_str(&msg, ":exception-type")
                            .or_else(|| header_str(&msg, ":error-code"))
                            .unwrap_or("exception")
                            .to_string(),
                        message: chunk.message.unwrap_or_else(|| "error".into()),
                    })
                }
                _ => return Err(invalid("the provider sent a frame of no known type")),
            }
            if header_str(&msg, ":event-type") != Some("chunk") {
                continue;
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(chunk.bytes.unwrap_or_default())
                .map_err(|_| invalid("the provider sent a chunk that is not base64"))?;
            let ev: Typed<'_> = serde_json::from_slice(&data)
                .map_err(|_| invalid("the provider sent an event that is not JSON"))?;
            if ev.kind.contains(['\n', '\r']) {
                return Err(invalid("the provider sent an event type with a line break"));
            }
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(ev.kind.as_bytes());
            out.extend_from_slice(b"\ndata: ");
            // One `data:` line: JSON's raw line breaks are whitespace between tokens (a
            // string escapes its own), so dropping them changes nothing.
            out.extend(data.iter().filter(|b| **b != b'\n' && **b != b'\r'));
            out.extend_from_slice(b"\n\n");
        }
        Ok(out)
    }
}

/// A `chunk` frame carrying `event` (for the mock and tests).
pub fn chunk_frame(event: &serde_json::Value) -> Vec<u8> {
    let b = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    super::frame("chunk", &serde_json::json!({ "bytes": b }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_become_anthropic_events_at_every_split() {
        let events = [
            json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hé\n"}}),
            json!({"type": "message_stop"}),
        ];
        let input: Vec<u8> = events.iter().flat_map(chunk_frame).collect();
        let want: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
            .collect();
        for cut in 0..input.len() {
            let mut s = InvokeStream::default();
            let mut out = s.push(&input[..cut]).expect("valid");
            out.extend(s.push(&input[cut..]).expect("valid"));
            assert_eq!(String::from_utf8_lossy(&out), want, "cut at {cut}");
            assert_eq!(s.pending(), 0);
        }
        let e = InvokeStream::default()
            .push(&super::super::exception_frame(
                "throttlingException",
                "slow down",
            ))
            .expect_err("an exception");
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("throttlingException", "slow down")
        );
        let bad = super::super::frame("chunk", &json!({"bytes": "%%%"}));
        assert!(InvokeStream::default().push(&bad).is_err());
        let not_json = super::super::frame("chunk", &json!({"bytes": "bm90IGpzb24="}));
        assert!(InvokeStream::default().push(&not_json).is_err());
    }

    #[test]
    fn claude_ids_and_paths() {
        assert!(is_anthropic("anthropic.claude-3-5-sonnet-20241022-v2:0"));
        assert!(is_anthropic("us.anthropic.claude-sonnet-4-20250514-v1:0"));
        assert!(!is_anthropic("amazon.nova-pro-v1:0"));
        assert_eq!(
            path("", "anthropic.claude-v2:1", true),
            "/model/anthropic.claude-v2%3A1/invoke-with-response-stream"
        );
    }
}
