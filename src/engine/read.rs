//! Reading an upstream answer up to its commit point, without touching the client: a JSON
//! answer or an error body read whole (within the buffer limit), or a stream read until its
//! first event with content. A failure here falls back invisibly.

use super::attempt::{Ready, ReadyBody};
use super::classify::{self, FailClass, Failure};
use super::watch::{self, Watch};
use super::{bad_response, short_error, Engine};
use crate::providers::{wire, Provider, Relay, Wire};
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::client::HttpSession;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// The most of an upstream error body read to find its message (a trigger status).
const ERROR_BODY_CAP: usize = 64 * 1024;
/// The longest wait for such an error body after its header.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// How one read of an upstream body ended.
pub(super) enum Read {
    Chunk(Bytes),
    End,
    /// Nothing arrived before the deadline.
    Timeout,
    Failed(String),
}

/// The next upstream body chunk, giving up at `until`.
pub(super) async fn read_until(up: &mut HttpSession, until: Instant) -> Read {
    match timeout_at(until.into(), up.read_response_body()).await {
        Err(_) => Read::Timeout,
        Ok(Err(e)) => Read::Failed(short_error(&e)),
        Ok(Ok(None)) => Read::End,
        Ok(Ok(Some(c))) => Read::Chunk(c),
    }
}

/// An error event inside a 200 stream, as the failure it stands for: the status a provider
/// uses for that error, so the configured triggers decide as for a status.
pub(super) fn in_band_failure(kind: &str, message: &str) -> Failure {
    let status = wire::in_band_status(kind);
    let class = status.map_or(FailClass::BadResponse, FailClass::of_status);
    Failure::new(class, status, format!("in-stream {kind}: {message}"))
}

/// A body read whole, or as much of it as the limit allows.
struct Whole {
    chunks: Vec<Bytes>,
    total: usize,
    complete: bool,
}

impl Engine {
    /// The error body of a trigger status, read for its message only (at most 64 KiB, 5 s).
    /// Failures to read it are ignored; the connection is reused only if it was read whole.
    pub(super) async fn read_small_body(&self, ready: &mut Ready) {
        let mut buf = Vec::new();
        let up = &mut ready.up;
        let read = async {
            while let Ok(Some(chunk)) = up.read_response_body().await {
                buf.extend_from_slice(&chunk);
                if buf.len() > ERROR_BODY_CAP {
                    break;
                }
            }
        };
        let _ = timeout_at((Instant::now() + ERROR_BODY_WAIT).into(), read).await;
        ready.body = ReadyBody::Json {
            total: buf.len(),
            chunks: vec![Bytes::from(buf)],
            complete: true,
            usage: None,
        };
    }

    /// Read up to `cap` bytes of a body (more than `cap` means it is not complete).
    async fn read_whole(
        &self,
        ready: &mut Ready,
        provider: &Provider,
        cap: usize,
    ) -> Result<Whole, Failure> {
        let mut w = Whole {
            chunks: Vec::new(),
            total: 0,
            complete: false,
        };
        while w.total <= cap {
            let idle = ready.deadline.min(Instant::now() + provider.timeouts.idle);
            match read_until(&mut ready.up, idle).await {
                Read::Chunk(c) => {
                    w.total += c.len();
                    w.chunks.push(c);
                }
                Read::End => {
                    w.complete = true;
                    break;
                }
                Read::Timeout => {
                    let m = "upstream stalled while sending its answer";
                    return Err(Failure::new(FailClass::FirstByteTimeout, None, m.into()));
                }
                Read::Failed(e) => {
                    let m = format!("upstream closed the connection mid-answer: {e}");
                    return Err(Failure::new(FailClass::UpstreamClosed, None, m));
                }
            }
        }
        Ok(w)
    }

    /// A JSON answer (or an error the client may get): read whole before committing, up to the
    /// configured size, so a body cut short still falls back. Error bodies are masked and read
    /// for what they say beyond their status (context length, content policy).
    pub(super) async fn read_json(
        &self,
        ready: &mut Ready,
        provider: &Provider,
        wire: Wire,
    ) -> Result<(), Failure> {
        let cap = self.gw.cfg.limits.max_buffered_response_bytes;
        let mut w = self.read_whole(ready, provider, cap).await?;
        let ok = ready.resp.status.is_success();
        let status = ready.resp.status.as_u16();
        if !ok {
            // An error answer that may reach the client: whole, credentials masked (a provider
            // may quote its key, or another's).
            if !w.complete {
                let m = format!(
                    "{} answered {status} with an error body over {cap} bytes; it is not relayed",
                    provider.name
                );
                w.chunks = vec![Bytes::from(crate::sse::error_json(
                    &m,
                    "upstream_error_too_large",
                ))];
                w.complete = true;
            }
            w.chunks = vec![Bytes::from(self.masked_body(&w.chunks.concat()))];
            w.total = w.chunks[0].len();
        }
        if wire.translated(ok) {
            self.translate_answer(&mut w, &wire, ok, status)?;
        }
        if !ok {
            ready.said = classify::body_error(&w.chunks.concat());
        }
        let usage = (ok && w.complete)
            .then(|| match w.chunks.as_slice() {
                [one] => watch::json_usage(one),
                many => watch::json_usage(&many.concat()),
            })
            .flatten();
        ready.body = ReadyBody::Json {
            chunks: w.chunks,
            total: w.total,
            complete: w.complete,
            usage,
        };
        Ok(())
    }

    /// A translated answer is read whole: the OpenAI JSON is built from the entire body.
    fn translate_answer(
        &self,
        w: &mut Whole,
        wire: &Wire,
        ok: bool,
        status: u16,
    ) -> Result<(), Failure> {
        if !w.complete {
            return Err(bad_response("the answer is too large to translate"));
        }
        let raw: Vec<u8> = w.chunks.concat();
        let translated = wire.answer(ok, status, &raw).unwrap_or(Ok(raw));
        let mut b = translated.map_err(|e| bad_response(&format!("untranslatable answer: {e}")))?;
        if !ok {
            // Translation decodes escapes: mask what it produced too.
            b = self.masked_body(&b);
        }
        w.total = b.len();
        w.chunks = vec![Bytes::from(b)];
        Ok(())
    }

    /// An error body with every credential masked: in the bytes as sent, and (for JSON) in
    /// its decoded text, since `\u0073k-…` is the same key to the client's JSON parser. A body
    /// without any credential is relayed as it came.
    fn masked_body(&self, raw: &[u8]) -> Vec<u8> {
        let canonical = serde_json::from_slice::<serde_json::Value>(raw)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok());
        match canonical {
            Some(c) if self.masker.finds(&c) => self.masker.bytes(&c).into_owned(),
            _ => self.masker.bytes(raw).into_owned(),
        }
    }

    /// A stream: read until the first event that carries content, within the first-token
    /// deadline. Any failure before it — an error event, an event that is not JSON or too
    /// large, a reset, a stall, a slow first token — is a [`Failure`] nobody saw.
    pub(super) async fn first_content(
        &self,
        ready: &mut Ready,
        provider: &Provider,
        wire: Wire,
    ) -> Result<(), Failure> {
        // A translated event stream may reach the client as another content type (SSE).
        if let Some(ct) = wire.client_stream_type() {
            ready
                .resp
                .insert_header(http::header::CONTENT_TYPE, ct)
                .map_err(|_| bad_response("unusable response header"))?;
        }
        let watch = Watch::new(self.gw.cfg.failover.continuation).for_dialect(wire.dialect());
        let mut s = Start {
            relay: wire.relay(),
            watch,
            held: BytesMut::new(),
            cap: self.gw.cfg.limits.max_event_bytes,
        };
        let first_token = ready
            .deadline
            .min(ready.started + provider.timeouts.first_token);
        let ended = loop {
            if s.watch.has_content() {
                break false;
            }
            let wait = first_token.min(Instant::now() + provider.timeouts.idle);
            match read_until(&mut ready.up, wait).await {
                Read::Chunk(c) => s.push(c)?,
                Read::End => {
                    s.end()?;
                    break true; // an empty answer, properly ended
                }
                other => return Err(before_content(other, first_token, ready.started)),
            }
        };
        ready.body = ReadyBody::Stream {
            relay: s.relay,
            watch: Box::new(s.watch),
            held: s.held.freeze(),
            ended,
        };
        Ok(())
    }
}

/// A stream before its commit point: the relay, what it says, and the events held back.
struct Start {
    relay: Relay,
    watch: Watch,
    held: BytesMut,
    cap: usize,
}

impl Start {
    fn push(&mut self, c: Bytes) -> Result<(), Failure> {
        match self.relay.push(c, self.cap) {
            Ok(Some(seg)) => self.take(seg),
            Ok(None) => Ok(()),
            // An error event before anything was sent (e.g. overloaded): fall back.
            Err(e) => Err(in_band_failure(&e.kind, &e.message)),
        }
    }

    fn take(&mut self, seg: Bytes) -> Result<(), Failure> {
        self.watch
            .inspect(&seg)
            .map_err(|e| in_band_failure(&e.kind, &e.message))?;
        self.held.extend_from_slice(&seg);
        // What is held before the first content (role chunks, keep-alives) is bounded too.
        if self.held.len() > self.cap {
            let m = format!(
                "the stream sent over {} bytes before its first content",
                self.cap
            );
            return Err(bad_response(&m));
        }
        Ok(())
    }

    /// The upstream ended cleanly before any content: fine if the stream is complete.
    fn end(&mut self) -> Result<(), Failure> {
        if let Some(tail) = self.relay.finish() {
            self.take(tail)?;
        }
        if self.relay.complete(self.watch.done()) {
            return Ok(());
        }
        Err(bad_response("upstream ended the stream before any content"))
    }
}

/// A read that ended a stream before its first content, as a failure.
fn before_content(read: Read, first_token: Instant, started: Instant) -> Failure {
    match read {
        Read::Timeout if Instant::now() >= first_token => Failure::new(
            FailClass::FirstTokenTimeout,
            None,
            format!(
                "no content within the first-token timeout ({} ms)",
                first_token.saturating_duration_since(started).as_millis()
            ),
        ),
        Read::Timeout => Failure::new(
            FailClass::FirstTokenTimeout,
            None,
            "the stream stalled before its first content (idle timeout)".into(),
        ),
        Read::Failed(e) => Failure::new(
            FailClass::UpstreamClosed,
            None,
            format!("upstream closed the stream before its first content: {e}"),
        ),
        Read::Chunk(_) | Read::End => bad_response("unexpected read"),
    }
}
