//! One attempt up to its commit point, with no access to the client: build the provider's
//! request, send it, classify the answer, and read until there is something worth committing
//! to — the whole JSON answer, or a stream's first event with content. The result is a
//! [`Ready`] answer (written later by `relay.rs`) or a [`Failure`] that falls back invisibly.
//!
//! Because it never touches the client's session, two attempts can run at once (hedging), and
//! the caller alone watches for the client going away.

use super::classify::{self, decide, BodyError, Decision, FailClass};
use super::watch::{self, Watch};
use super::{bad_response, short_error, upstream, Engine, Failure};
use crate::api::Capabilities;
use crate::plan::Target;
use crate::providers::{Auth, Call, Credentials, Provider, Relay, Route, Wire};
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// The most of an upstream error body read to find its message.
const ERROR_BODY_CAP: usize = 64 * 1024;
/// The longest wait for an upstream error body after its header.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// What the request asks of every attempt.
pub(super) struct Ask<'a> {
    /// The client's headers to forward.
    pub client: &'a [(http::HeaderName, http::HeaderValue)],
    pub req: &'a crate::api::ChatRequest,
    pub request_id: &'a str,
    pub stream: bool,
    /// The request's overall deadline.
    pub deadline: Instant,
}

/// What to do with a ready answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Serve,
    /// The client's own fault (a 4xx the next provider would refuse too): give it back.
    PassThrough,
    /// The prompt does not fit this model: only a target with a larger window may serve it.
    ContextLength(String),
    /// The provider refused on content policy.
    ContentFilter(String),
}

/// An answer at its commit point.
pub(super) struct Ready {
    pub up: HttpSession,
    pub peer: HttpPeer,
    /// The upstream's response header; the client's is built from it at commit.
    pub resp: ResponseHeader,
    pub verdict: Verdict,
    pub body: ReadyBody,
    pub started: Instant,
    /// When the first content arrived (streams) or the answer was read (JSON).
    pub ttft: Duration,
    /// This attempt's own deadline (its `total`, within the request's).
    pub deadline: Instant,
}

pub(super) enum ReadyBody {
    /// Read whole (`complete`) or up to the buffer limit; translated answers are always whole.
    Json {
        chunks: Vec<Bytes>,
        total: usize,
        complete: bool,
        usage: Option<watch::Usage>,
    },
    /// The events up to and including the first with content, not yet sent.
    Stream {
        relay: Relay,
        watch: Watch,
        held: Bytes,
        /// The upstream already ended (cleanly) before commit.
        ended: bool,
    },
}

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

fn unsupported(provider: &Provider, why: &str) -> Failure {
    Failure::new(
        FailClass::Unsupported,
        Some(400),
        format!("not sent to {}: {why}", provider.name),
    )
}

/// An error event inside a 200 stream, as the failure it stands for: the status a provider
/// uses for that error, so the configured triggers decide as for a status.
pub(super) fn in_band_failure(kind: &str, message: &str) -> Failure {
    let status = crate::providers::wire::in_band_status(kind);
    let class = status.map_or(FailClass::BadResponse, FailClass::of_status);
    Failure::new(class, status, format!("in-stream {kind}: {message}"))
}

impl Engine {
    /// Run one target up to its commit point. No I/O with the client. `rewritten`: a request
    /// detour made (a continuation's prefill) in place of the client's.
    pub(super) async fn prepare(
        &self,
        ask: &Ask<'_>,
        target: &Target,
        rewritten: Option<&crate::api::ChatRequest>,
    ) -> Result<Box<Ready>, Failure> {
        let started = Instant::now();
        let provider = &self.gw.providers[target.route.provider];
        let req = rewritten.unwrap_or(ask.req);
        // A route the catalog says cannot serve this request is skipped like a refused one.
        let caps = target.route.capabilities;
        if caps != Capabilities::ALL {
            let missing = req.needs.missing_from(caps);
            if !missing.is_empty() {
                let why = format!(
                    "the catalog lists no {} support for {}",
                    missing.names().join(", "),
                    target.route.id
                );
                return Err(unsupported(provider, &why));
            }
        }
        let r = &target.route;
        let call = Call {
            route: Route {
                id: &r.id,
                deployment: r.deployment.as_deref(),
                api_version: r.api_version.as_deref(),
                max_output_tokens: r.max_output_tokens,
            },
            req,
            stream: ask.stream,
            base_path: &provider.endpoint.base_path,
        };
        let prepared = provider
            .adapter
            .prepare(&call)
            .map_err(|m| unsupported(provider, &m))?;
        let deadline = ask.deadline.min(started + provider.timeouts.total);
        let peer = self
            .peers
            .get(target.route.provider)
            .await
            .map_err(|m| Failure::new(FailClass::ConnectError, None, m))?;
        let token = match &provider.credentials {
            Credentials::ServiceAccount(sa) => {
                Some(self.access_token(target.route.provider, sa).await?)
            }
            _ => None,
        };
        let auth = match (&provider.credentials, &token) {
            (_, Some(t)) => Auth::Token(t.expose()),
            (Credentials::Key(k), None) => Auth::Key(k.expose()),
            (Credentials::Aws(a), None) => Auth::Aws(a),
            _ => Auth::None,
        };
        let header = upstream::request_header(
            provider,
            &prepared.path,
            ask.client,
            &prepared.body,
            ask.request_id,
            &auth,
        )
        .map_err(|e| {
            Failure::new(
                FailClass::BadResponse,
                None,
                format!("could not build the upstream request: {}", short_error(&e)),
            )
        })?;
        let wire = prepared.wire;
        let (up, peer) = self
            .send(&peer, provider, &header, &prepared.body, deadline)
            .await?;
        let Some(resp) = up.response_header().cloned() else {
            return Err(bad_response("no response header"));
        };
        let status = resp.status.as_u16();
        self.metrics
            .upstream_ttfb
            .with_label_values(&[provider.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let verdict = match decide(status, &self.gw.cfg.fallback) {
            Decision::Next(class) => {
                let err_body = self.read_small_body(up, &peer).await;
                let mut f = Failure::new(
                    class,
                    Some(status),
                    classify::error_message(status, &err_body, &self.masker),
                );
                f.retry_after =
                    crate::durations::retry_after(&resp.headers, std::time::SystemTime::now());
                return Err(f);
            }
            Decision::PassThrough => Verdict::PassThrough,
            Decision::Serve => Verdict::Serve,
        };
        let is_stream = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| wire.is_stream(ct));
        // Boxed: it is moved through the attempt loop and into the relay.
        let mut ready = Box::new(Ready {
            up,
            peer,
            resp,
            verdict,
            body: ReadyBody::Json {
                chunks: Vec::new(),
                total: 0,
                complete: false,
                usage: None,
            },
            started,
            ttft: Duration::ZERO,
            deadline,
        });
        if ask.stream && is_stream && ready.verdict == Verdict::Serve {
            self.first_content(&mut ready, provider, wire).await?;
        } else {
            self.read_json(&mut ready, provider, wire).await?;
        }
        ready.ttft = started.elapsed();
        Ok(ready)
    }

    /// Open a session to `peer` and send the request; returns it with the response header read.
    /// A failure on a reused pooled connection is retried once on a fresh one.
    async fn send(
        &self,
        peer: &HttpPeer,
        provider: &Provider,
        header: &RequestHeader,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<(HttpSession, HttpPeer), Failure> {
        let mut peer = peer.clone();
        let mut fresh_retry_done = false;
        loop {
            let connect_deadline = deadline.min(Instant::now() + provider.timeouts.connect);
            let connect = timeout_at(
                connect_deadline.into(),
                self.connector.get_http_session(&peer),
            );
            let (mut up, reused) = match connect.await {
                Err(_) => {
                    return Err(Failure::new(
                        FailClass::ConnectTimeout,
                        None,
                        format!(
                            "connect timeout after {} ms",
                            provider.timeouts.connect.as_millis()
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    let class = if matches!(
                        e.etype(),
                        pingora_error::ErrorType::ConnectTimedout
                            | pingora_error::ErrorType::TLSHandshakeTimedout
                    ) {
                        FailClass::ConnectTimeout
                    } else {
                        FailClass::ConnectError
                    };
                    return Err(Failure::new(
                        class,
                        None,
                        format!("connect failed: {}", short_error(&e)),
                    ));
                }
                Ok(Ok(x)) => x,
            };
            let exchange = async {
                up.write_request_header(Box::new(header.clone())).await?;
                up.write_request_body(body.clone(), true).await?;
                up.finish_request_body().await?;
                up.read_response_header().await
            };
            let now = Instant::now();
            let fb_deadline = deadline.min(now + provider.timeouts.first_byte);
            let budget = fb_deadline.saturating_duration_since(now);
            match timeout_at(fb_deadline.into(), exchange).await {
                Err(_) => {
                    return Err(Failure::new(
                        FailClass::FirstByteTimeout,
                        None,
                        format!("no response within {} ms", budget.as_millis()),
                    ))
                }
                Ok(Ok(())) => return Ok((up, peer)),
                Ok(Err(e)) => {
                    if reused && !fresh_retry_done {
                        // A pooled connection the upstream had closed: one more try on a new one.
                        fresh_retry_done = true;
                        peer.group_key = self.fresh_group.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Err(Failure::new(
                        FailClass::UpstreamClosed,
                        None,
                        format!(
                            "upstream closed the connection before responding: {}",
                            short_error(&e)
                        ),
                    ));
                }
            }
        }
    }

    /// Read a (small) error body; the connection goes back to the pool if it was read whole.
    async fn read_small_body(&self, mut up: HttpSession, peer: &HttpPeer) -> Bytes {
        let mut buf = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = up.read_response_body().await {
                buf.extend_from_slice(&chunk);
                if buf.len() > ERROR_BODY_CAP {
                    return false;
                }
            }
            true
        };
        let whole = matches!(
            timeout_at((Instant::now() + ERROR_BODY_WAIT).into(), read).await,
            Ok(true)
        );
        if whole {
            self.release(up, peer).await;
        }
        Bytes::from(buf)
    }

    /// A JSON answer (or a passed-through error): read whole before committing, up to the
    /// configured size, so a body cut short still falls back. Error bodies are classified:
    /// context length and content policy are told apart from other 400s here.
    async fn read_json(
        &self,
        ready: &mut Ready,
        provider: &Provider,
        wire: Wire,
    ) -> Result<(), Failure> {
        let cap = self.gw.cfg.limits.max_buffered_response_bytes;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut complete = false;
        while total <= cap {
            let idle = ready.deadline.min(Instant::now() + provider.timeouts.idle);
            match read_until(&mut ready.up, idle).await {
                Read::Chunk(c) => {
                    total += c.len();
                    chunks.push(c);
                }
                Read::End => {
                    complete = true;
                    break;
                }
                Read::Timeout => {
                    return Err(Failure::new(
                        FailClass::FirstByteTimeout,
                        None,
                        "upstream stalled while sending its answer".into(),
                    ))
                }
                Read::Failed(e) => {
                    return Err(Failure::new(
                        FailClass::UpstreamClosed,
                        None,
                        format!("upstream closed the connection mid-answer: {e}"),
                    ))
                }
            }
        }
        let ok = ready.resp.status.is_success();
        if !ok {
            // An error answer that reaches the client: read whole, credentials masked (a
            // provider may quote its key, or another's).
            if !complete {
                chunks = vec![Bytes::from(crate::sse::error_json(
                    &format!(
                        "{} answered {} with an error body over {cap} bytes; it is not relayed",
                        provider.name,
                        ready.resp.status.as_u16()
                    ),
                    "upstream_error_too_large",
                ))];
                complete = true;
            }
            chunks = vec![Bytes::from(self.masked_body(&chunks.concat()))];
            total = chunks[0].len();
        }
        if wire.translated() {
            // Translated answers are read whole: the OpenAI JSON is built from the entire body.
            if !complete {
                return Err(bad_response("the answer is too large to translate"));
            }
            let raw: Vec<u8> = chunks.concat();
            let status = ready.resp.status.as_u16();
            let translated = wire.answer(ok, status, &raw).unwrap_or(Ok(raw));
            let mut b =
                translated.map_err(|e| bad_response(&format!("untranslatable answer: {e}")))?;
            if !ok {
                // Translation decodes escapes: mask what it produced too.
                b = self.masked_body(&b);
            }
            total = b.len();
            chunks = vec![Bytes::from(b)];
        }
        if !ok && complete {
            let whole: Vec<u8> = chunks.concat();
            match classify::body_error(&whole) {
                Some(BodyError::ContextLength(m)) => ready.verdict = Verdict::ContextLength(m),
                Some(BodyError::ContentFilter(m)) => ready.verdict = Verdict::ContentFilter(m),
                None => {}
            }
        }
        let usage = (ok && complete)
            .then(|| {
                if chunks.len() == 1 {
                    watch::json_usage(&chunks[0])
                } else {
                    watch::json_usage(&chunks.concat())
                }
            })
            .flatten();
        ready.body = ReadyBody::Json {
            chunks,
            total,
            complete,
            usage,
        };
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
    /// deadline. Any failure before it — an error event, an event that is not JSON, a reset, a
    /// stall, a slow first token — is a [`Failure`] nobody saw.
    async fn first_content(
        &self,
        ready: &mut Ready,
        provider: &Provider,
        wire: Wire,
    ) -> Result<(), Failure> {
        // A translated event stream may reach the client as another content type (SSE).
        if let Some(ct) = wire.client_stream_type() {
            if ready
                .resp
                .insert_header(http::header::CONTENT_TYPE, ct)
                .is_err()
            {
                return Err(bad_response("unusable response header"));
            }
        }
        let mut relay: Relay = wire.relay();
        let mut watch = Watch::new(self.gw.cfg.failover.continuation);
        let mut held = bytes::BytesMut::new();
        let first_token = ready
            .deadline
            .min(ready.started + provider.timeouts.first_token);
        let cap = self.gw.cfg.limits.max_event_bytes;
        let mut take = |seg: Bytes, watch: &mut Watch| -> Result<(), Failure> {
            watch
                .inspect(&seg)
                .map_err(|e| in_band_failure(&e.kind, &e.message))?;
            held.extend_from_slice(&seg);
            // What is held before the first content (role chunks, keep-alives) is bounded too.
            if held.len() > cap {
                return Err(bad_response(&format!(
                    "the stream sent over {cap} bytes before its first content"
                )));
            }
            Ok(())
        };
        let ended = loop {
            if watch.has_content() {
                break false;
            }
            let wait = first_token.min(Instant::now() + provider.timeouts.idle);
            match read_until(&mut ready.up, wait).await {
                Read::Chunk(c) => match relay.push(c, cap) {
                    Ok(Some(seg)) => take(seg, &mut watch)?,
                    Ok(None) => {}
                    // An error event before anything was sent (e.g. overloaded): fall back.
                    Err(e) => return Err(in_band_failure(&e.kind, &e.message)),
                },
                Read::End => {
                    if let Some(tail) = relay.finish() {
                        take(tail, &mut watch)?;
                    }
                    if relay.complete() {
                        break true; // an empty answer, properly ended
                    }
                    return Err(bad_response("upstream ended the stream before any content"));
                }
                Read::Timeout if Instant::now() >= first_token => {
                    return Err(Failure::new(
                        FailClass::FirstTokenTimeout,
                        None,
                        format!(
                            "no content within the first-token timeout ({} ms)",
                            first_token
                                .saturating_duration_since(ready.started)
                                .as_millis()
                        ),
                    ))
                }
                Read::Timeout => {
                    return Err(Failure::new(
                        FailClass::FirstTokenTimeout,
                        None,
                        "the stream stalled before its first content (idle timeout)".into(),
                    ))
                }
                Read::Failed(e) => {
                    return Err(Failure::new(
                        FailClass::UpstreamClosed,
                        None,
                        format!("upstream closed the stream before its first content: {e}"),
                    ))
                }
            }
        };
        ready.body = ReadyBody::Stream {
            relay,
            watch,
            held: held.freeze(),
            ended,
        };
        Ok(())
    }
}
