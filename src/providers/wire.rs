//! The response side of each wire format: OpenAI's (passed through), Anthropic's, Gemini's and
//! Bedrock's (translated). An adapter picks the format of each attempt ([`Wire`]); the engine
//! reads answers and relays streams through it without knowing which it is.

use super::common::{InBandError, StreamOpts};
use super::{anthropic, bedrock, gemini};
use crate::sse::EventAligner;
use bytes::Bytes;

/// The in-band error kind of an event over `limits.max-event-bytes`.
pub const EVENT_TOO_LARGE: &str = "event_too_large";

/// The wire format of an attempt's answer.
#[derive(Debug, Clone)]
pub enum Wire {
    OpenAi,
    /// Anthropic's Messages API answering a Messages client (or Claude on Vertex): a 2xx
    /// answer or stream is the client's own dialect, passed through byte for byte; an error
    /// body is read in OpenAI's shape, as every other.
    Native,
    Anthropic(StreamOpts),
    /// Gemini, with the provider-side model id (its answers may not name it).
    Gemini(StreamOpts, String),
    /// Bedrock Converse, with the provider-side model id (its answers do not name it).
    Bedrock(StreamOpts, String),
    /// Claude on Bedrock answering a Messages client (InvokeModel): a 2xx answer is
    /// Anthropic's message as it is, a stream Anthropic's events out of their frames.
    BedrockNative,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Wire {
    /// Whether an answer with this `content-type` is this format's stream.
    pub fn is_stream(&self, content_type: &str) -> bool {
        match self {
            Wire::Bedrock(..) | Wire::BedrockNative => {
                content_type.starts_with("application/vnd.amazon.eventstream")
            }
            Wire::OpenAi | Wire::Native | Wire::Anthropic(_) | Wire::Gemini(..) => {
                content_type.starts_with("text/event-stream")
            }
        }
    }

    /// The `content-type` a client gets for this format's stream, where it is not the
    /// provider's (a Bedrock event stream reaches the client as SSE).
    pub fn client_stream_type(&self) -> Option<&'static str> {
        match self {
            Wire::Bedrock(..) | Wire::BedrockNative => Some("text/event-stream"),
            Wire::OpenAi | Wire::Native | Wire::Anthropic(_) | Wire::Gemini(..) => None,
        }
    }

    /// Whether an answer (`ok`: a 2xx) is translated, and so always read whole before it is
    /// sent.
    pub fn translated(&self, ok: bool) -> bool {
        match self {
            Wire::OpenAi => false,
            Wire::Native | Wire::BedrockNative => !ok,
            Wire::Anthropic(_) | Wire::Gemini(..) | Wire::Bedrock(..) => true,
        }
    }

    /// The dialect of a 2xx answer in this format, as the client gets it.
    pub fn dialect(&self) -> crate::api::Dialect {
        match self {
            Wire::Native | Wire::BedrockNative => crate::api::Dialect::Anthropic,
            Wire::OpenAi | Wire::Anthropic(_) | Wire::Gemini(..) | Wire::Bedrock(..) => {
                crate::api::Dialect::OpenAi
            }
        }
    }

    /// A whole answer body (`ok`: a 2xx) in OpenAI's shape; `None` when it already is.
    pub fn answer(&self, ok: bool, status: u16, raw: &[u8]) -> Option<Result<Vec<u8>, String>> {
        let now = unix_now();
        Some(match self {
            Wire::OpenAi => return None,
            Wire::Native | Wire::BedrockNative if ok => return None,
            Wire::BedrockNative => Ok(bedrock::error_body(raw, status)),
            Wire::Native => Ok(anthropic::error_body(raw)),
            Wire::Anthropic(_) if ok => anthropic::response(raw, now),
            Wire::Anthropic(_) => Ok(anthropic::error_body(raw)),
            Wire::Gemini(_, model) if ok => gemini::response(raw, model, now),
            Wire::Gemini(..) => Ok(gemini::error_body(raw)),
            Wire::Bedrock(_, model) if ok => bedrock::response(raw, model, now),
            Wire::Bedrock(..) => Ok(bedrock::error_body(raw, status)),
        })
    }

    /// The relay for this format's stream.
    pub fn relay(self) -> Relay {
        let now = unix_now();
        match self {
            Wire::OpenAi => Relay::Pass(EventAligner::default()),
            Wire::Native => Relay::Native(EventAligner::default()),
            Wire::BedrockNative => Relay::BedrockNative(Default::default()),
            Wire::Anthropic(opts) => Relay::Anthropic(anthropic::StreamTranslator::new(opts, now)),
            Wire::Gemini(opts, model) => {
                Relay::Gemini(gemini::StreamTranslator::new(opts, &model, now))
            }
            Wire::Bedrock(opts, model) => {
                Relay::Bedrock(bedrock::StreamTranslator::new(opts, &model, now))
            }
        }
    }
}

/// The status a provider uses for an error it reports in band (an error event inside a 200
/// stream), so that it falls back as that status would; `None`: not a known error kind.
/// One table for every format: OpenAI-compatible servers relay the others' names too.
pub fn in_band_status(kind: &str) -> Option<u16> {
    Some(match kind {
        "overloaded_error" => 529,
        "api_error" | "server_error" => 500,
        "rate_limit_error" | "rate_limit_exceeded" => 429,
        "authentication_error" | "permission_error" => 401,
        // Gemini's status names
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        "INTERNAL" => 500,
        "DEADLINE_EXCEEDED" => 504,
        // Bedrock's exception frames
        "throttlingException" => 429,
        "serviceUnavailableException" => 503,
        "internalServerException" | "modelStreamErrorException" => 500,
        "validationException" => 400,
        _ => return None,
    })
}

/// A stream's relay: pass-through (event-aligned) or translated.
pub enum Relay {
    Pass(EventAligner),
    /// Anthropic's events to a Messages client, passed through (event-aligned).
    Native(EventAligner),
    /// Anthropic's events to a Messages client, out of Bedrock's frames.
    BedrockNative(bedrock::invoke::InvokeStream),
    Anthropic(anthropic::StreamTranslator),
    Gemini(gemini::StreamTranslator),
    Bedrock(bedrock::StreamTranslator),
}

fn nonempty(v: Vec<u8>) -> Option<Bytes> {
    (!v.is_empty()).then(|| Bytes::from(v))
}

impl Relay {
    /// Feed one upstream chunk; the OpenAI SSE bytes to send the client now, if any. A partial
    /// event held back past `cap` bytes is an error ([`EVENT_TOO_LARGE`]): an upstream that
    /// starts an event and never ends it cannot make detour buffer without bound.
    pub fn push(&mut self, c: Bytes, cap: usize) -> Result<Option<Bytes>, InBandError> {
        let out = match self {
            Relay::Pass(a) | Relay::Native(a) => Ok(a.push(c)),
            Relay::BedrockNative(t) => t.push(&c).map(nonempty),
            Relay::Anthropic(t) => t.push(&c).map(nonempty),
            Relay::Gemini(t) => t.push(&c).map(nonempty),
            Relay::Bedrock(t) => t.push(&c).map(nonempty),
        }?;
        if self.pending() > cap {
            return Err(InBandError {
                kind: EVENT_TOO_LARGE.into(),
                message: format!("the provider sent an event over {cap} bytes"),
            });
        }
        Ok(out)
    }

    /// At the upstream's clean end: closing bytes a translated format owes the client.
    pub fn finish(&mut self) -> Option<Bytes> {
        match self {
            Relay::Pass(_) | Relay::Native(_) | Relay::BedrockNative(_) | Relay::Anthropic(_) => {
                None
            }
            Relay::Gemini(t) => t.finish().map(Bytes::from),
            Relay::Bedrock(t) => t.finish().map(Bytes::from),
        }
    }

    /// Whether the stream reached its proper end (`[DONE]`, or for Anthropic's events
    /// `message_stop`, which the stream's inspection saw: `stopped`), nothing partial held back.
    pub fn complete(&self, stopped: bool) -> bool {
        match self {
            Relay::Pass(a) => a.saw_done() && a.pending() == 0,
            Relay::Native(a) => stopped && a.pending() == 0,
            Relay::BedrockNative(t) => stopped && t.pending() == 0,
            Relay::Anthropic(t) => t.done() && t.pending() == 0,
            Relay::Gemini(t) => t.finished() && t.pending() == 0,
            Relay::Bedrock(t) => t.finished() && t.pending() == 0,
        }
    }

    /// Bytes of a partial upstream event held back.
    pub fn pending(&self) -> usize {
        match self {
            Relay::Pass(a) | Relay::Native(a) => a.pending(),
            Relay::BedrockNative(t) => t.pending(),
            Relay::Anthropic(t) => t.pending(),
            Relay::Gemini(t) => t.pending(),
            Relay::Bedrock(t) => t.pending(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_types_and_in_band_statuses() {
        assert!(Wire::OpenAi.is_stream("text/event-stream; charset=utf-8"));
        let b = Wire::Bedrock(StreamOpts::default(), "m".into());
        assert!(b.is_stream("application/vnd.amazon.eventstream"));
        assert!(!b.is_stream("text/event-stream"));
        assert_eq!(b.client_stream_type(), Some("text/event-stream"));
        assert_eq!(in_band_status("overloaded_error"), Some(529));
        assert_eq!(in_band_status("throttlingException"), Some(429));
        assert_eq!(in_band_status("invalid_event"), None);
        assert!(Wire::OpenAi.answer(true, 200, b"{}").is_none());
    }

    #[test]
    fn a_partial_event_past_the_cap_fails() {
        let mut r = Wire::OpenAi.relay();
        assert!(r.push(Bytes::from_static(b"data: {\"a\":"), 64).is_ok());
        let e = r
            .push(Bytes::from(vec![b'x'; 100]), 64)
            .expect_err("over the cap");
        assert_eq!(e.kind, EVENT_TOO_LARGE);
    }
}
