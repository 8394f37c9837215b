//! From the commit point on: write the client's header and the answer, then relay the rest of
//! a stream as it arrives (the upstream's own `Bytes` when a read ends on an event boundary).
//! A failure now can no longer fall back: it is reported in band, and a stream that did not
//! reach its proper end never looks complete.

use super::attempt::{Ready, ReadyBody};
use super::read::{read_until, Read};
use super::watch::{BadEvent, Usage, Watch};
use super::{unless_client_gone, Engine};
use crate::providers::Provider;
use bytes::Bytes;
use futures_util::FutureExt;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// How a committed answer ended.
pub(super) enum Delivered {
    /// Written to its end. `finalised`: the upstream ended without `[DONE]` after the answer
    /// had finished, and detour closed the stream properly.
    Done {
        usage: Option<Usage>,
        finalised: bool,
    },
    ClientGone,
    /// A JSON answer (relayed past the buffer limit) was cut after its header went out. The
    /// client's connection must end abnormally: no terminating chunk, no clean close.
    Cut {
        reason: String,
    },
    /// A stream broke after commit; nothing has been written about it yet. The caller may
    /// continue it elsewhere, and otherwise ends it with [`Engine::end_broken`].
    Broken {
        reason: String,
        watch: Box<Watch>,
        /// The answer's `id`, `created` and `model`, for a continuation's chunks.
        head: Option<ChunkHead>,
    },
}

/// The identity fields of a stream's chunks.
#[derive(Debug, Clone)]
pub struct ChunkHead {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Write the client's header: the commit point. `Content-Length` when the body's length is
/// known; else chunked framing for HTTP/1.1, a close-delimited body for HTTP/1.0 (which has no
/// chunked encoding), and HTTP/2's own framing.
pub(super) async fn commit(
    s: &mut Session,
    mut h: ResponseHeader,
    content_length: Option<usize>,
) -> Result<(), ()> {
    let framed = match content_length {
        Some(n) => h.insert_header(http::header::CONTENT_LENGTH, n),
        None if s.as_downstream().is_http2() => Ok(()),
        None if s.req_header().version == http::Version::HTTP_10 => {
            // Pingora writes a body without length or chunking until it closes the connection.
            s.set_keepalive(None);
            Ok(())
        }
        None => h.insert_header(http::header::TRANSFER_ENCODING, "chunked"),
    };
    // A header that cannot be framed is not sent; the client then sees a closed connection.
    framed.map_err(|_| ())?;
    s.write_response_header(Box::new(h), false)
        .await
        .map_err(|_| ())
}

/// The upstream answer's `Content-Length`, if it gave a valid one.
fn upstream_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The next upstream chunk, giving up at `until` or as soon as the client leaves (`None`).
async fn next_chunk(s: &mut Session, up: &mut HttpSession, until: Instant) -> Option<Read> {
    unless_client_gone(s, read_until(up, until)).await
}

/// `id`, `created` and `model` of the first chunk in `seg`.
fn chunk_head(seg: &[u8]) -> Option<ChunkHead> {
    let line = seg.split(|&b| b == b'\n').find_map(crate::sse::data_line)?;
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(ChunkHead {
        id: v.get("id")?.as_str()?.to_string(),
        created: v.get("created").and_then(|c| c.as_u64()).unwrap_or(0),
        model: v.get("model")?.as_str()?.to_string(),
    })
}

impl Engine {
    /// Commit `ready` with header `h` and write it to the client. A continuation has no header
    /// of its own (`h` is `None`: the client's stream is already open) and its chunks are
    /// `splice`d: given the original answer's identity, role-only chunks dropped. `request` is
    /// the client's body (read only to finalise a stream that ended without its usage).
    pub(super) async fn deliver(
        &self,
        s: &mut Session,
        ready: Box<Ready>,
        h: Option<ResponseHeader>,
        provider: &Provider,
        splice: Option<&ChunkHead>,
        request: &crate::api::ChatRequest,
    ) -> Delivered {
        let Ready {
            mut up,
            peer,
            body,
            deadline,
            resp,
            ..
        } = *ready;
        match body {
            ReadyBody::Json {
                chunks,
                total,
                complete,
                usage,
            } => {
                let Some(h) = h else {
                    return Delivered::Broken {
                        reason: "a JSON answer cannot continue a stream".into(),
                        watch: Box::default(),
                        head: None,
                    };
                };
                // Past the buffer limit, the upstream's own length (a pass-through answer is
                // relayed byte for byte): a cut is then visible to any client as a short body.
                let length = if complete {
                    Some(total)
                } else {
                    upstream_length(&resp)
                };
                if commit(s, h, length).await.is_err() {
                    return Delivered::ClientGone;
                }
                let n = chunks.len();
                for (i, c) in chunks.into_iter().enumerate() {
                    let end = complete && i + 1 == n;
                    if s.write_response_body(Some(c), end).await.is_err() {
                        return Delivered::ClientGone;
                    }
                }
                if complete {
                    if n == 0 && s.write_response_body(None, true).await.is_err() {
                        return Delivered::ClientGone;
                    }
                    self.release(up, &peer).await;
                    return Delivered::Done {
                        usage,
                        finalised: false,
                    };
                }
                // Larger than the buffer: relay the rest as it comes. A failure can only cut it.
                loop {
                    let idle = deadline.min(Instant::now() + provider.timeouts.idle);
                    match next_chunk(s, &mut up, idle).await {
                        Some(Read::Chunk(c)) => {
                            if s.write_response_body(Some(c), false).await.is_err() {
                                return Delivered::ClientGone;
                            }
                        }
                        Some(Read::End) => {
                            let _ = s.write_response_body(None, true).await;
                            self.release(up, &peer).await;
                            return Delivered::Done {
                                usage: None,
                                finalised: false,
                            };
                        }
                        None => return Delivered::ClientGone,
                        Some(Read::Timeout) => {
                            return Delivered::Cut {
                                reason: "the upstream stalled mid-answer".into(),
                            }
                        }
                        Some(Read::Failed(e)) => {
                            return Delivered::Cut {
                                reason: format!("the upstream failed mid-answer: {e}"),
                            }
                        }
                    }
                }
            }
            ReadyBody::Stream {
                mut relay,
                mut watch,
                held,
                ended,
            } => {
                // Only a continuation needs the answer's identity.
                let head = self
                    .gw
                    .cfg
                    .failover
                    .continuation
                    .then(|| chunk_head(&held))
                    .flatten();
                if let Some(h) = h {
                    if commit(s, h, None).await.is_err() {
                        return Delivered::ClientGone;
                    }
                }
                // The first events, kept (a reference, not a copy) for the answer's identity
                // should the stream need finalising.
                let first = held.clone();
                let held = match splice {
                    Some(to) => spliced(&held, to),
                    None => held,
                };
                if !held.is_empty() && s.write_response_body(Some(held), false).await.is_err() {
                    return Delivered::ClientGone;
                }
                if ended {
                    if s.write_response_body(None, true).await.is_err() {
                        return Delivered::ClientGone;
                    }
                    self.release(up, &peer).await;
                    return Delivered::Done {
                        usage: watch.usage(),
                        finalised: false,
                    };
                }
                let event_cap = self.gw.cfg.limits.max_event_bytes;
                // Committed. From here a failure is reported in band and never looks complete.
                let broken =
                    |reason: String, watch: Watch, head: Option<ChunkHead>| Delivered::Broken {
                        reason,
                        watch: Box::new(watch),
                        head,
                    };
                loop {
                    let idle = deadline.min(Instant::now() + provider.timeouts.idle);
                    let mut read = match next_chunk(s, &mut up, idle).await {
                        None => return Delivered::ClientGone,
                        Some(Read::Timeout) => {
                            let why = if Instant::now() >= deadline {
                                "the attempt reached its deadline mid-stream"
                            } else {
                                "the upstream stream stalled past the idle timeout"
                            };
                            return broken(why.into(), watch, head);
                        }
                        Some(r) => r,
                    };
                    // Relay everything that has already arrived in one write; never wait.
                    let mut out = Batch::default();
                    let mut bad: Option<String> = None;
                    let end = loop {
                        match read {
                            Read::Chunk(c) => match relay.push(c, event_cap) {
                                Ok(Some(seg)) => match watch.inspect(&seg) {
                                    Ok(()) => match splice {
                                        Some(to) => out.push(spliced(&seg, to)),
                                        None => out.push(seg),
                                    },
                                    Err(BadEvent { at, kind, message }) => {
                                        if at > 0 {
                                            out.push(seg.slice(..at));
                                        }
                                        bad = Some(in_band_reason(&kind, &message));
                                        break Some(false);
                                    }
                                },
                                Ok(None) => {}
                                Err(e) => {
                                    bad = Some(in_band_reason(&e.kind, &e.message));
                                    break Some(false);
                                }
                            },
                            Read::End => break Some(true),
                            Read::Timeout => break Some(false),
                            Read::Failed(_) => {
                                bad = Some("the upstream connection failed mid-stream".into());
                                break Some(false);
                            }
                        }
                        match up.read_response_body().now_or_never() {
                            Some(Ok(Some(c))) => read = Read::Chunk(c),
                            Some(Ok(None)) => read = Read::End,
                            Some(Err(e)) => read = Read::Failed(super::short_error(&e)),
                            None => break None,
                        }
                    };
                    if let Some(out) = out.take() {
                        if s.write_response_body(Some(out), false).await.is_err() {
                            return Delivered::ClientGone;
                        }
                    }
                    match end {
                        None => {}
                        Some(false) => {
                            let why = bad.unwrap_or_else(|| {
                                "the upstream connection failed mid-stream".into()
                            });
                            return broken(why, watch, head);
                        }
                        Some(true) => {
                            // Formats without [DONE] of their own get it here.
                            if let Some(tail) = relay.finish() {
                                if let Err(e) = watch.inspect(&tail) {
                                    return broken(
                                        in_band_reason(&e.kind, &e.message),
                                        watch,
                                        head,
                                    );
                                }
                                let tail = match splice {
                                    Some(to) => spliced(&tail, to),
                                    None => tail,
                                };
                                if s.write_response_body(Some(tail), false).await.is_err() {
                                    return Delivered::ClientGone;
                                }
                            }
                            let finalised = !relay.complete();
                            let mut usage = watch.usage();
                            if finalised {
                                // Ended at the HTTP level without [DONE]: complete only if the
                                // answer itself finished and nothing partial is held back.
                                if !(watch.finished() && relay.pending() == 0) {
                                    return broken(
                                        "the upstream ended the stream before the answer finished"
                                            .into(),
                                        watch,
                                        head,
                                    );
                                }
                                // The usage chunk, if the client asked for one and none came.
                                let mut end = Vec::new();
                                if watch.usage().is_none() {
                                    let estimate = super::watch::estimated_usage(
                                        request,
                                        watch.output_bytes(),
                                    );
                                    let head = splice.cloned().or_else(|| chunk_head(&first));
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
                                if s.write_response_body(Some(end.into()), false)
                                    .await
                                    .is_err()
                                {
                                    return Delivered::ClientGone;
                                }
                            }
                            if s.write_response_body(None, true).await.is_err() {
                                return Delivered::ClientGone;
                            }
                            self.release(up, &peer).await;
                            return Delivered::Done { usage, finalised };
                        }
                    }
                }
            }
        }
    }

    /// End a broken stream: an SSE error event and no `[DONE]`.
    pub(super) async fn end_broken(&self, s: &mut Session, reason: &str) {
        let reason = self.masker.text(reason);
        let ev = crate::sse::error_event(
            &format!("{reason}; the answer is incomplete"),
            "stream_interrupted",
        );
        let _ = s.write_response_body(Some(ev), false).await;
        let _ = s.write_response_body(None, true).await;
    }

    /// Give a finished upstream session back to the pool; an unfinished one is dropped (closed).
    pub(super) async fn release(&self, mut up: HttpSession, peer: &HttpPeer) {
        if up.response_done() {
            self.connector
                .release_http_session(up, peer, peer.options.idle_timeout)
                .await;
        }
    }
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
pub(super) enum Batch {
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
