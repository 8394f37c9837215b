//! `POST /v1/messages`: clients of Anthropic's Messages API get the chain mode.
//!
//! The request is translated to a chat request (`api::messages`) and served by the engine like
//! any other; what the engine writes to the client (an answer, a stream, an error, in OpenAI's
//! shape) passes through [`MessagesOut`], a Pingora downstream module, which rewrites it into
//! Anthropic's shape as it goes: a JSON answer whole (`api::messages_answer::to_message`), a
//! stream event by event (`StreamToMessages`), an error as `{"type":"error",…}`. The module is
//! installed for every request and does nothing until `activate` turns it on.

use crate::api::anthropic::error_from_openai;
use crate::api::messages::only_not_carried;
use crate::api::messages_answer::{to_message, StreamToMessages};
use crate::api::{ChatRequest, Dialect, GatewayError, Native};
use crate::sse::SseDecoder;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora_http::ResponseHeader;
use serde_json::Value;
use std::any::Any;
use std::sync::Arc;

/// The largest JSON answer translated: a larger one (an upstream's, relayed as it came) is
/// replaced by an error rather than held in memory whole.
const MAX_ANSWER: usize = 32 << 20;

/// What the client is being written, once the answer's head has gone.
enum Body {
    /// A JSON answer or error, gathered whole: `(status, bytes)`.
    Json(u16, Vec<u8>),
    Stream(SseDecoder, StreamToMessages),
}

/// The downstream module that turns detour's OpenAI-shaped output into Anthropic's.
#[derive(Default)]
pub struct MessagesOut {
    /// `None`: not a Messages request (the module passes everything through).
    on: Option<On>,
}

struct On {
    /// The chain as the client sent it: the `model` of an answer that names none.
    model: String,
    body: Option<Body>,
}

/// Installs [`MessagesOut`] on every request (off).
pub struct Builder;

impl HttpModuleBuilder for Builder {
    fn init(&self) -> Module {
        Box::new(MessagesOut::default())
    }
}

/// Add the module to a service's downstream modules.
pub fn install(modules: &mut HttpModules) {
    modules.add_module(Box::new(Builder));
}

/// Turn the module on for this request: everything written to the client from now on is
/// rewritten into Anthropic's shape.
pub fn activate(session: &mut pingora_proxy::Session, model: &str) {
    if let Some(m) = session.downstream_modules_ctx.get_mut::<MessagesOut>() {
        m.on = Some(On {
            model: crate::text::truncate(model, 512).to_string(),
            body: None,
        });
    }
}

/// Turn the module off again: what is written next is already in Anthropic's shape.
pub fn deactivate(session: &mut pingora_proxy::Session) {
    if let Some(m) = session.downstream_modules_ctx.get_mut::<MessagesOut>() {
        m.on = None;
    }
}

/// A token count's plan: its targets with Anthropic's count endpoint (Anthropic's, and Claude
/// on Vertex); the others are listed as skipped.
pub fn count_plan(plan: &mut crate::plan::Plan, gw: &crate::gateway::Gateway) {
    let counts = |t: &crate::plan::Target| match gw.providers[t.route.provider].kind {
        "anthropic" => true,
        "vertex" => crate::providers::vertex::is_anthropic(&t.route.id),
        _ => false,
    };
    let (keep, rest) = std::mem::take(&mut plan.targets)
        .into_iter()
        .partition(counts);
    plan.targets = keep;
    for t in rest {
        plan.skipped.push(crate::plan::Skipped {
            source: t.source(gw),
            provider: t.route.provider,
            reason: "skipped: tokens are counted by Anthropic and Claude-on-Vertex targets only"
                .into(),
            why: "count_tokens",
        });
    }
}

/// detour's own estimate of a request's input tokens, marked as one: about 4 bytes a token of
/// its messages, system and tools as JSON, 3 tokens a message and 3 more (the rule detour's
/// estimated usage follows); for a request chat targets cannot take, of its whole body.
pub fn estimate(req: &ChatRequest) -> Bytes {
    let tokens = match req.native.as_deref() {
        Some(n) if n.not_chat.is_some() => {
            n.body.len().div_ceil(crate::api::BYTES_PER_TOKEN) as u64
        }
        _ => req.estimated_prompt_tokens(),
    };
    let v = serde_json::json!({"input_tokens": tokens, "detour_estimated": true});
    Bytes::from(v.to_string())
}

/// A Messages request body as the chat request the engine serves, carrying the body as sent
/// for Anthropic-family targets. A field no target could take is a 400 naming it; one only
/// chat-completions targets cannot take leaves them a refusal (`ChatRequest::chat`) and the
/// rest of the chain the request.
pub fn to_chat_request(
    body: Bytes,
    count_tokens: bool,
    client: &pingora_http::RequestHeader,
) -> Result<ChatRequest, GatewayError> {
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let invalid = |message: String| GatewayError::InvalidRequest {
        message,
        param: None,
    };
    let (chat, not_chat) = match crate::api::messages::to_chat_for(&v, count_tokens) {
        Ok(chat) => (chat, None),
        Err(e) if only_not_carried(&e) => (stand_in(&v), Some(e)),
        Err(e) => return Err(invalid(e)),
    };
    let mut req = ChatRequest::from_tree(chat)?;
    let betas = client
        .headers
        .get_all("anthropic-beta")
        .into_iter()
        .filter_map(|v| v.to_str().ok());
    let native = Native::new(body, count_tokens, not_chat)
        .ok_or_else(|| invalid("model must be a string".into()))?
        .with_betas(betas);
    req.native = Some(Arc::new(native));
    Ok(req)
}

/// The chat request that stands in for one chat-completions targets cannot take: its model
/// and stream, for the plan; no target reads its (empty) messages.
fn stand_in(v: &Value) -> Value {
    serde_json::json!({"model": v["model"], "messages": [], "stream": v["stream"] == true})
}

impl On {
    fn json_done(&self, status: u16, raw: &[u8]) -> Vec<u8> {
        if !(200..300).contains(&status) {
            return error_from_openai(status, raw);
        }
        let answer = serde_json::from_slice::<Value>(raw)
            .map_err(|e| e.to_string())
            .and_then(|v| to_message(&v, &self.model));
        match answer {
            Ok(m) => m.to_string().into_bytes(),
            Err(e) => error_from_openai(
                502,
                format!("the answer could not be translated: {e}").as_bytes(),
            ),
        }
    }

    fn stream_bytes(
        dec: &mut SseDecoder,
        tr: &mut StreamToMessages,
        bytes: &[u8],
        end: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for ev in dec.push(bytes) {
            if tr.ended() {
                break;
            }
            if let Err(e) = tr.push(&ev.data, &mut out) {
                tr.fail("api_error", &e, &mut out);
            }
        }
        if end && !tr.ended() {
            tr.fail(
                "api_error",
                "the answer ended before it was complete",
                &mut out,
            );
        }
        out
    }
}

#[async_trait]
impl HttpModule for MessagesOut {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora_error::Result<()> {
        let Some(on) = &mut self.on else {
            return Ok(());
        };
        if resp.extensions.get::<Dialect>() == Some(&Dialect::Anthropic) {
            // Already in the client's dialect (an Anthropic-family target): byte for byte.
            self.on = None;
            return Ok(());
        }
        let status = resp.status.as_u16();
        let stream = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        on.body = Some(if stream {
            Body::Stream(SseDecoder::default(), StreamToMessages::new(&on.model))
        } else {
            Body::Json(status, Vec::new())
        });
        if !end_of_stream {
            // The body changes length: it goes chunked.
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora_error::Result<()> {
        let Some(on) = &mut self.on else {
            return Ok(());
        };
        let bytes = body.take().unwrap_or_default();
        let out = match &mut on.body {
            None => return Ok(()),
            Some(Body::Json(status, buf)) => {
                if buf.len() + bytes.len() > MAX_ANSWER {
                    // Past the cap: kept no more; what it was becomes an error at the end.
                    *status = 0;
                    buf.clear();
                } else if *status != 0 {
                    buf.extend_from_slice(&bytes);
                }
                if !end_of_stream {
                    return Ok(());
                }
                let (status, raw) = (*status, std::mem::take(buf));
                if status == 0 {
                    let e = format!(
                        "the answer is larger than the {MAX_ANSWER} bytes detour translates"
                    );
                    error_from_openai(502, e.as_bytes())
                } else {
                    on.json_done(status, &raw)
                }
            }
            // detour's keep-alive, written alone between whole events.
            Some(Body::Stream(_, tr)) if bytes == crate::sse::KEEP_ALIVE && !tr.ended() => {
                crate::api::anthropic::PING.to_vec()
            }
            Some(Body::Stream(dec, tr)) => On::stream_bytes(dec, tr, &bytes, end_of_stream),
        };
        if !out.is_empty() {
            *body = Some(Bytes::from(out));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The module's output for `input` written in pieces cut at `cuts`.
    fn through(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut m = MessagesOut {
            on: Some(On {
                model: "m".into(),
                body: Some(Body::Stream(
                    SseDecoder::default(),
                    StreamToMessages::new("m"),
                )),
            }),
        };
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut b = Some(Bytes::copy_from_slice(&input[from..to]));
            m.response_body_filter(&mut b, to == input.len()).unwrap();
            out.extend_from_slice(&b.unwrap_or_default());
            from = to;
        }
        out
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_events() {
        let input = concat!(
            "data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé \"}}]}\r\n\r\n",
            ": a comment\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        let whole = through(input, &[]);
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(text.starts_with("event: message_start\n"), "{text}");
        assert!(
            text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{text}"
        );
        assert!(text.contains("\"text\":\"Hé \""), "{text}");
        assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
        for i in 1..input.len() {
            assert_eq!(through(input, &[i]), whole, "split at {i}");
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(through(input, &every), whole, "a byte at a time");
        // Cut before [DONE]: an error event ends it.
        let cut = &input[..input.len() - "data: [DONE]\n\n".len()];
        let text = String::from_utf8(through(cut, &[])).unwrap();
        assert!(
            text.ends_with("\n\n") && text.contains("event: error\n"),
            "{text}"
        );
        assert!(!text.contains("message_stop"), "{text}");
    }

    #[test]
    fn an_answer_past_the_cap_becomes_an_error_not_memory() {
        let mut m = MessagesOut {
            on: Some(On {
                model: "m".into(),
                body: Some(Body::Json(200, Vec::new())),
            }),
        };
        let piece = Bytes::from(vec![b' '; 1 << 20]);
        for _ in 0..40 {
            let mut b = Some(piece.clone());
            m.response_body_filter(&mut b, false).unwrap();
            assert!(b.is_none(), "held until the end");
        }
        if let Some(On {
            body: Some(Body::Json(_, buf)),
            ..
        }) = &m.on
        {
            assert!(buf.len() <= MAX_ANSWER, "{}", buf.len());
        }
        let mut end = None;
        m.response_body_filter(&mut end, true).unwrap();
        let v: Value = serde_json::from_slice(&end.unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["error"]["type"], "api_error", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("larger"));
    }
}
