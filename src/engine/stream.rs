//! A committed stream, relayed as it arrives: everything that has already arrived goes out in
//! one write (never waiting for more), every event is inspected, and the end is checked. A
//! failure now is reported in band; a stream that did not reach its proper end never looks
//! complete, and one that ended without `[DONE]` after its answer finished is finalised.

use super::read::Read;
use super::relay::{chunk_head, commit, ChunkHead, Delivered, Upstream};
use super::watch::{BadEvent, Usage, Watch};
use super::Engine;
use crate::api::ChatRequest;
use crate::providers::Relay;
use bytes::Bytes;
use futures_util::FutureExt;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// A stream after its commit point.
pub(super) struct StreamState<'a> {
    pub relay: Relay,
    pub watch: Watch,
    /// The answer's identity, kept for a continuation.
    pub head: Option<ChunkHead>,
    /// The first events (a reference, not a copy): the answer's identity, should the stream
    /// need finalising.
    pub first: Bytes,
    /// A continuation's target identity: its chunks are spliced into the original answer.
    pub splice: Option<&'a ChunkHead>,
    /// `limits.max-event-bytes`.
    pub cap: usize,
}

/// How a batch of reads ended.
enum End {
    /// Nothing more has arrived yet.
    More,
    /// The upstream ended cleanly.
    Clean,
    /// The stream broke, with why.
    Broke(String),
}

impl StreamState<'_> {
    fn spliced(&self, seg: Bytes) -> Bytes {
        match self.splice {
            Some(to) => spliced(&seg, to),
            None => seg,
        }
    }

    fn broken(self, reason: String) -> Delivered {
        Delivered::Broken {
            reason,
            watch: Box::new(self.watch),
            head: self.head,
        }
    }

    /// Take `read` and everything else that has already arrived, into one write.
    fn batch(&mut self, conn: &mut Upstream, mut read: Read) -> (Option<Bytes>, End) {
        let mut out = Batch::default();
        loop {
            let c = match read {
                Read::Chunk(c) => c,
                Read::End => return (out.take(), End::Clean),
                Read::Timeout => return (out.take(), End::Broke(FAILED.into())),
                Read::Failed(_) => return (out.take(), End::Broke(FAILED.into())),
            };
            match self.relay.push(c, self.cap) {
                Ok(Some(seg)) => match self.watch.inspect(&seg) {
                    Ok(()) => out.push(self.spliced(seg)),
                    Err(BadEvent { at, kind, message }) => {
                        if at > 0 {
                            out.push(seg.slice(..at));
                        }
                        return (out.take(), End::Broke(in_band_reason(&kind, &message)));
                    }
                },
                Ok(None) => {}
                Err(e) => return (out.take(), End::Broke(in_band_reason(&e.kind, &e.message))),
            }
            read = match conn.up.read_response_body().now_or_never() {
                Some(Ok(Some(c))) => Read::Chunk(c),
                Some(Ok(None)) => Read::End,
                Some(Err(e)) => Read::Failed(super::short_error(&e)),
                None => return (out.take(), End::More),
            };
        }
    }

    /// At a clean end without `[DONE]`: complete only if the answer itself finished and
    /// nothing partial is held back; then `[DONE]`, preceded by an estimated usage chunk if
    /// the client asked for usage and none came.
    fn finalise(&self, request: &ChatRequest) -> Result<(Vec<u8>, Option<Usage>), String> {
        if !(self.watch.finished() && self.relay.pending() == 0) {
            return Err("the upstream ended the stream before the answer finished".into());
        }
        if self.watch.dialect() == crate::api::Dialect::Anthropic {
            // The stop reason and usage went out in `message_delta`: only the stop is owed.
            return Ok((
                crate::api::anthropic::MESSAGE_STOP.to_vec(),
                self.watch.usage(),
            ));
        }
        let mut end = Vec::new();
        let mut usage = self.watch.usage();
        if usage.is_none() {
            let estimate = super::watch::estimated_usage(request, self.watch.output_bytes());
            let head = self.splice.cloned().or_else(|| chunk_head(&self.first));
            if let (Some(u), Some(head)) = (estimate, head) {
                end = crate::providers::common::usage_event(
                    (&head.id, head.created, &head.model),
                    (u.prompt_tokens, u.completion_tokens),
                    u.estimated,
                )
                .into_bytes();
                usage = Some(u);
            }
        }
        end.extend_from_slice(b"data: [DONE]\n\n");
        Ok((end, usage))
    }
}

/// Why a stream broke when the reason is only that its connection did.
const FAILED: &str = "the upstream connection failed mid-stream";

impl Engine {
    /// Commit a stream (unless it continues one already open) and relay it to its end.
    /// `(held, ended)`: the events read before commit, and whether the upstream had ended.
    pub(super) async fn deliver_stream(
        &self,
        s: &mut Session,
        mut conn: Upstream,
        h: Option<ResponseHeader>,
        mut st: StreamState<'_>,
        (held, ended): (Bytes, bool),
        request: &ChatRequest,
    ) -> Delivered {
        if let Some(h) = h {
            // The one-off steps are boxed: they would otherwise size this future, which lives
            // as long as the stream, for their own largest state.
            if Box::pin(commit(s, h, None)).await.is_err() {
                return Delivered::ClientGone;
            }
        }
        let held = st.spliced(held);
        if !held.is_empty() && s.write_response_body(Some(held), false).await.is_err() {
            return Delivered::ClientGone;
        }
        if ended {
            if s.write_response_body(None, true).await.is_err() {
                return Delivered::ClientGone;
            }
            Box::pin(self.release(conn.up, &conn.peer)).await;
            let usage = st.watch.usage();
            return Delivered::Done {
                usage,
                finalised: false,
            };
        }
        // Committed. From here a failure is reported in band and never looks complete.
        let ping = match st.watch.dialect() {
            crate::api::Dialect::OpenAi => crate::sse::KEEP_ALIVE,
            crate::api::Dialect::Anthropic => crate::api::anthropic::PING,
        };
        loop {
            let read = match conn.next_in_stream(s, ping).await {
                None => return Delivered::ClientGone,
                Some(Read::Timeout) => {
                    let why = if Instant::now() >= conn.deadline {
                        "the attempt reached its deadline mid-stream"
                    } else {
                        "the upstream stream stalled past the idle timeout"
                    };
                    return st.broken(why.into());
                }
                Some(r) => r,
            };
            let (out, end) = st.batch(&mut conn, read);
            if let Some(out) = out {
                if s.write_response_body(Some(out), false).await.is_err() {
                    return Delivered::ClientGone;
                }
            }
            match end {
                End::More => {}
                End::Broke(why) => return st.broken(why),
                End::Clean => break,
            }
        }
        // Borrowed, not moved: a nested future holding its own copies of the session and the
        // stream's state would double their share of this future.
        match Box::pin(self.end_stream(s, &mut st, request)).await {
            Ended::Done { usage, finalised } => {
                Box::pin(self.release(conn.up, &conn.peer)).await;
                Delivered::Done { usage, finalised }
            }
            Ended::Broke(why) => st.broken(why),
            Ended::ClientGone => Delivered::ClientGone,
        }
    }

    /// The upstream ended cleanly: the closing bytes a translated format owes the client, and
    /// the end of the answer (finalised if it had no `[DONE]` of its own).
    async fn end_stream(
        &self,
        s: &mut Session,
        st: &mut StreamState<'_>,
        request: &ChatRequest,
    ) -> Ended {
        // Formats without [DONE] of their own get it here.
        if let Some(tail) = st.relay.finish() {
            if let Err(e) = st.watch.inspect(&tail) {
                return Ended::Broke(in_band_reason(&e.kind, &e.message));
            }
            let tail = st.spliced(tail);
            if s.write_response_body(Some(tail), false).await.is_err() {
                return Ended::ClientGone;
            }
        }
        let finalised = !st.relay.complete(st.watch.done());
        let mut usage = st.watch.usage();
        if finalised {
            let (end, u) = match st.finalise(request) {
                Ok(x) => x,
                Err(why) => return Ended::Broke(why),
            };
            usage = u;
            if s.write_response_body(Some(end.into()), false)
                .await
                .is_err()
            {
                return Ended::ClientGone;
            }
        }
        if s.write_response_body(None, true).await.is_err() {
            return Ended::ClientGone;
        }
        Ended::Done { usage, finalised }
    }
}

/// How a stream's clean end went.
enum Ended {
    Done {
        usage: Option<Usage>,
        finalised: bool,
    },
    Broke(String),
    ClientGone,
}

/// A continuation's events as part of the original answer: its `id`, `created` and `model`,
/// and without the role-only chunk that opens every stream. Only runs for a continuation.
fn spliced(seg: &[u8], to: &ChunkHead) -> Bytes {
    let mut out = Vec::with_capacity(seg.len() + 64);
    // Comments and event names carry nothing the client needs here.
    for data in seg.split(|&b| b == b'\n').filter_map(crate::sse::data_line) {
        if data == b"[DONE]" {
            out.extend_from_slice(b"data: [DONE]\n\n");
            continue;
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) else {
            continue;
        };
        let role_only = v
            .pointer("/choices/0/delta")
            .and_then(|d| d.as_object())
            .is_some_and(|d| {
                d.keys().all(|k| k == "role" || k == "content")
                    && d.get("content")
                        .is_none_or(|c| c.as_str().is_none_or(str::is_empty))
            })
            && v.pointer("/choices/0/finish_reason")
                .is_none_or(serde_json::Value::is_null);
        if role_only {
            continue;
        }
        if let Some(o) = v.as_object_mut() {
            o.insert("id".into(), to.id.clone().into());
            o.insert("created".into(), to.created.into());
            o.insert("model".into(), to.model.clone().into());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

fn in_band_reason(kind: &str, message: &str) -> String {
    if kind == "invalid_event" {
        "the provider sent an event that is not valid JSON".into()
    } else if kind == crate::providers::wire::EVENT_TOO_LARGE {
        message.to_string()
    } else {
        format!("the provider reported {kind}: {message}")
    }
}

/// Relay segments that arrived together, written as one. A single segment stays the upstream's
/// own `Bytes`; only a second one costs a copy.
#[derive(Default)]
enum Batch {
    #[default]
    Empty,
    One(Bytes),
    Many(bytes::BytesMut),
}

impl Batch {
    pub fn push(&mut self, seg: Bytes) {
        *self = match std::mem::take(self) {
            Batch::Empty => Batch::One(seg),
            Batch::One(first) => {
                let mut m = bytes::BytesMut::with_capacity((first.len() + seg.len()) * 2);
                m.extend_from_slice(&first);
                m.extend_from_slice(&seg);
                Batch::Many(m)
            }
            Batch::Many(mut m) => {
                m.extend_from_slice(&seg);
                Batch::Many(m)
            }
        }
    }

    pub fn take(self) -> Option<Bytes> {
        match self {
            Batch::Empty => None,
            Batch::One(b) => Some(b),
            Batch::Many(m) => Some(m.freeze()),
        }
    }
}
