//! From the commit point on: write the client's header and the answer, then relay the rest of
//! a stream as it arrives (the upstream's own `Bytes` when a read ends on an event boundary).
//! A failure now can no longer fall back: it is reported in band, and a stream that did not
//! reach its proper end never looks complete.

use super::attempt::{Ready, ReadyBody};
use super::read::{read_until, Read};
use super::splice::{Head, Splice};
use super::stream::StreamState;
use super::watch::{Usage, Watch};
use super::{unless_client_gone, Engine};
use crate::api::Dialect;
use crate::providers::Provider;
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

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
        /// Where the answer stood, for a continuation.
        head: Option<Head>,
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
pub(super) fn upstream_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A committed answer's upstream: its session, and when reading it gives up.
pub(super) struct Upstream {
    pub up: HttpSession,
    pub peer: HttpPeer,
    /// The attempt's deadline.
    pub deadline: Instant,
    /// The longest gap between two chunks.
    pub idle: Duration,
    /// A committed stream's keep-alive interval (`timeouts.keep-alive`).
    pub keep_alive: Duration,
}

impl Upstream {
    /// The next chunk, giving up at the idle timeout or the deadline, or as soon as the client
    /// leaves (`None`).
    pub async fn next(&mut self, s: &mut Session) -> Option<Read> {
        let until = self.deadline.min(Instant::now() + self.idle);
        unless_client_gone(s, read_until(&mut self.up, until)).await
    }

    /// The next chunk of a committed stream, as [`Upstream::next`]; while the upstream is
    /// quiet, `ping` is written to the client every `keep_alive` (the idle timeout still counts
    /// from the call).
    pub async fn next_in_stream(&mut self, s: &mut Session, ping: &[u8]) -> Option<Read> {
        let until = self.deadline.min(Instant::now() + self.idle);
        loop {
            let wake = until.min(Instant::now() + self.keep_alive);
            match unless_client_gone(s, read_until(&mut self.up, wake)).await? {
                Read::Timeout if Instant::now() < until => {
                    let ping = Bytes::copy_from_slice(ping);
                    s.write_response_body(Some(ping), false).await.ok()?;
                }
                r => return Some(r),
            }
        }
    }
}

/// The whole or first part of a JSON answer, as read before commit.
struct JsonBody {
    chunks: Vec<Bytes>,
    complete: bool,
    usage: Option<Usage>,
    /// The client's `Content-Length`, when known.
    length: Option<usize>,
}

/// `id`, `created` and `model` of the first chunk in `seg`.
pub(super) fn chunk_head(seg: &[u8]) -> Option<ChunkHead> {
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
    /// of its own (`h` is `None`: the client's stream is already open) and its events are
    /// `splice`d into it where the broken answer stood (`splice.rs`). `request` is
    /// the client's (read only to finalise a stream that ended without its usage).
    ///
    /// Returns the chosen relay's future, boxed: a request's own future then holds neither
    /// relay inline, nor a second copy of the upstream session moved into it.
    pub(super) fn deliver<'a>(
        &'a self,
        s: &'a mut Session,
        ready: Box<Ready>,
        h: Option<ResponseHeader>,
        provider: &'a Provider,
        splice: Option<&'a Head>,
        request: &'a crate::api::ChatRequest,
    ) -> Pin<Box<dyn Future<Output = Delivered> + Send + 'a>> {
        let Ready {
            up,
            peer,
            body,
            deadline,
            resp,
            ..
        } = *ready;
        let conn = Upstream {
            up,
            peer,
            deadline,
            idle: provider.timeouts.idle,
            keep_alive: provider.timeouts.keep_alive,
        };
        match body {
            ReadyBody::Json {
                chunks,
                total,
                complete,
                usage,
            } => {
                let Some(h) = h else {
                    return Box::pin(std::future::ready(Delivered::Broken {
                        reason: "a JSON answer cannot continue a stream".into(),
                        watch: Box::default(),
                        head: None,
                    }));
                };
                // Past the buffer limit, the upstream's own length (a pass-through answer is
                // relayed byte for byte): a cut is then visible to any client as a short body.
                let length = if complete {
                    Some(total)
                } else {
                    upstream_length(&resp)
                };
                let body = JsonBody {
                    chunks,
                    complete,
                    usage,
                    length,
                };
                Box::pin(self.deliver_json(s, conn, h, body))
            }
            ReadyBody::Stream {
                relay,
                watch,
                held,
                ended,
            } => {
                let splice = match splice.map(|to| Splice::new(to, watch.dialect())) {
                    None => None,
                    Some(Some(sp)) => Some(sp),
                    Some(None) => {
                        return Box::pin(std::future::ready(Delivered::Broken {
                            reason: "an Anthropic answer cannot continue a chat stream".into(),
                            watch,
                            head: None,
                        }))
                    }
                };
                let st = StreamState {
                    relay,
                    watch,
                    first: held.clone(),
                    splice,
                    cap: self.gw.cfg.limits.max_event_bytes,
                };
                Box::pin(self.deliver_stream(s, conn, h, st, (held, ended), request))
            }
        }
    }

    /// A JSON answer: whole, with `Content-Length`; or, past the buffer limit, relayed as it
    /// comes (with the upstream's own length if it gave one) — a failure then can only cut it.
    async fn deliver_json(
        &self,
        s: &mut Session,
        conn: Upstream,
        h: ResponseHeader,
        body: JsonBody,
    ) -> Delivered {
        let length = body.length;
        if commit(s, h, length).await.is_err() {
            return Delivered::ClientGone;
        }
        let n = body.chunks.len();
        for (i, c) in body.chunks.into_iter().enumerate() {
            let end = body.complete && i + 1 == n;
            if s.write_response_body(Some(c), end).await.is_err() {
                return Delivered::ClientGone;
            }
        }
        if body.complete {
            if n == 0 && s.write_response_body(None, true).await.is_err() {
                return Delivered::ClientGone;
            }
            self.release(conn.up, &conn.peer).await;
            return Delivered::Done {
                usage: body.usage,
                finalised: false,
            };
        }
        self.relay_rest(s, conn).await
    }

    /// Pass the rest of a committed answer on as it comes, byte for byte; a failure now can
    /// only cut it (`Delivered::Cut`). Its end releases the connection.
    pub(super) async fn relay_rest(&self, s: &mut Session, mut conn: Upstream) -> Delivered {
        loop {
            match conn.next(s).await {
                Some(Read::Chunk(c)) => {
                    if s.write_response_body(Some(c), false).await.is_err() {
                        return Delivered::ClientGone;
                    }
                }
                Some(Read::End) => {
                    let _ = s.write_response_body(None, true).await;
                    self.release(conn.up, &conn.peer).await;
                    return Delivered::Done {
                        usage: None,
                        finalised: false,
                    };
                }
                None => return Delivered::ClientGone,
                Some(Read::Timeout) => {
                    let reason = "the upstream stalled mid-answer".into();
                    return Delivered::Cut { reason };
                }
                Some(Read::Failed(e)) => {
                    let reason = format!("the upstream failed mid-answer: {e}");
                    return Delivered::Cut { reason };
                }
            }
        }
    }

    /// End a broken stream: an SSE error event and no `[DONE]`.
    pub(super) async fn end_broken(&self, s: &mut Session, reason: &str, d: Dialect) {
        let reason = self.masker.text(reason);
        let message = format!("{reason}; the answer is incomplete");
        let ev = match d {
            Dialect::OpenAi => crate::sse::error_event(&message, "stream_interrupted"),
            Dialect::Anthropic => crate::api::anthropic::broken_stream_event(&message).into(),
        };
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
