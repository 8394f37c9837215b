//! A committed stream, relayed as it arrives: everything that has already arrived goes out in
//! one write (never waiting for more), every event is inspected, and the end is checked. A
//! failure now is reported in band; a stream that did not reach its proper end never looks
//! complete, and one that ended without `[DONE]` after its answer finished is finalised.

use super::read::Read;
use super::relay::{chunk_head, commit, Delivered, Upstream};
use super::splice::{Head, Splice};
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
    pub watch: Box<Watch>,
    /// The first events (a reference, not a copy): the answer's identity, should the stream
    /// need finalising or continuing.
    pub first: Bytes,
    /// A continuation's events go on in the original answer's stream.
    pub splice: Option<Splice<'a>>,
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
    fn spliced(&mut self, seg: Bytes) -> Bytes {
        match &mut self.splice {
            Some(to) => to.apply(&seg),
            None => seg,
        }
    }

    /// The dialect the client reads: the answer's own, or a continued stream's.
    fn client_dialect(&self) -> crate::api::Dialect {
        match &self.splice {
            Some(to) => to.client_dialect(),
            None => self.watch.dialect(),
        }
    }

    fn broken(self, reason: String) -> Delivered {
        let head = match self.watch.dialect() {
            crate::api::Dialect::Anthropic => Some(Head::Events(self.watch.blocks())),
            crate::api::Dialect::OpenAi => chunk_head(&self.first).map(Head::Chunks),
        };
        Delivered::Broken {
            reason,
            watch: self.watch,
            head,
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
                            out.push(self.spliced(seg.slice(..at)));
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
            let head = self
                .splice
                .as_ref()
                .and_then(Splice::chunk_head)
                .cloned()
                .or_else(|| chunk_head(&self.first));
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
        let ping = match st.client_dialect() {
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
            let end = st.spliced(end.into());
            if s.write_response_body(Some(end), false).await.is_err() {
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
