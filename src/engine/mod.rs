//! The attempt loop: try each planned target in order until one serves the request.
//!
//! Runs inside `request_filter` for `POST /v1/chat/completions` after the body has been read and
//! planned. Nothing is written to the client until an attempt has produced its first body bytes
//! (streams) or its whole answer (JSON up to `max-buffered-response-bytes`), so every failure
//! before that point falls back invisibly. After that point a failure can only be reported in
//! band: an SSE error event and no `[DONE]`.

pub mod classify;
pub mod upstream;

use crate::api::{AttemptReport, ChatRequest, GatewayError};
use crate::config::{ApiKey, Capabilities, Config, Provider, ProviderKind, Secret, VertexAuth};
use crate::metrics::Metrics;
use crate::plan::{Plan, Target};
use crate::providers::{anthropic, bedrock, gemini, vertex};
use crate::sse::{error_event, EventAligner};
use bytes::Bytes;
use classify::{decide, Decision, FailClass};
use futures_util::FutureExt;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

/// The most of an upstream error body read to find its message.
const ERROR_BODY_CAP: usize = 64 * 1024;
/// The longest wait for an upstream error body after its header.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

/// One attempt as logged and counted.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    pub provider: usize,
    pub source: String,
    /// `success`, `skipped`, or a [`FailClass`] label.
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Everything one request did, for the access log and metrics (`logging()` reads it).
#[derive(Debug, Default)]
pub struct RequestLog {
    pub request_id: String,
    pub started: Option<Instant>,
    pub stream: bool,
    pub is_chat: bool,
    /// Request outcome label; empty until decided.
    pub outcome: &'static str,
    pub status: u16,
    pub attempts: Vec<AttemptLog>,
    /// Set when an answer failed after the client had started receiving it.
    pub post_commit_error: Option<String>,
}

impl RequestLog {
    /// Attempts actually sent upstream (skipped ones excluded).
    pub fn attempts_made(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.outcome != "skipped")
            .count()
    }
}

struct Failure {
    class: FailClass,
    status: Option<u16>,
    message: String,
}

enum Outcome {
    /// A response went to the client: the answer, a passed-through 4xx, or a stream that failed
    /// after commit (reported in band).
    Done,
    Failed(Failure),
    ClientGone,
}

pub struct Engine {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    connector: Connector,
    peers: upstream::Peers,
    fresh_group: AtomicU64,
    /// Per provider: the token endpoint's peer (vertex) and the cached access token.
    token_peers: upstream::Peers,
    tokens: Vec<tokio::sync::Mutex<Option<(Secret, Instant)>>>,
}

/// A cached access token is renewed when less than this is left of its life.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Run `fut`, but give up (`None`) as soon as the client closes its connection.
async fn unless_client_gone<F: Future>(s: &mut Session, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = s.read_body_or_idle(true) => None,
    }
}

impl Engine {
    pub fn new(cfg: Arc<Config>, metrics: Arc<Metrics>, options: ConnectorOptions) -> Engine {
        let connector = Connector::new(Some(options));
        let peers = upstream::Peers::new(&cfg.providers);
        let endpoints: Vec<Provider> = cfg
            .providers
            .iter()
            .map(|p| match &p.vertex {
                Some(auth) => auth.endpoint.clone(),
                None => p.clone(),
            })
            .collect();
        let token_peers = upstream::Peers::new(&endpoints);
        let tokens = cfg
            .providers
            .iter()
            .map(|_| tokio::sync::Mutex::new(None))
            .collect();
        Engine {
            cfg,
            metrics,
            connector,
            peers,
            fresh_group: AtomicU64::new(1),
            token_peers,
            tokens,
        }
    }

    /// Provider `i`'s Vertex access token: the cached one while it has more than
    /// [`TOKEN_RENEW_BEFORE`] left, else a new one from the token endpoint (one request at a
    /// time per provider; concurrent attempts wait for it). A refused grant counts as a 401.
    async fn vertex_token(&self, i: usize, auth: &VertexAuth) -> Result<Secret, Failure> {
        let Some(slot) = self.tokens.get(i) else {
            return Err(bad_response("no token slot"));
        };
        let mut cached = slot.lock().await;
        if let Some((token, expires)) = &*cached {
            if *expires > Instant::now() + TOKEN_RENEW_BEFORE {
                return Ok(token.clone());
            }
        }
        let ep = &auth.endpoint;
        let fail = |class, status, message: String| Failure {
            class,
            status,
            message: format!("vertex token: {message}"),
        };
        let peer = self
            .token_peers
            .get(i, ep)
            .await
            .map_err(|m| fail(FailClass::ConnectError, None, m))?;
        let assertion = auth
            .account
            .assertion(unix_now())
            .map_err(|m| fail(FailClass::BadResponse, None, m))?;
        let body = Bytes::from(vertex::token_request_body(&assertion));
        let exchange = async {
            let mut h = pingora_http::RequestHeader::build("POST", ep.base_path.as_bytes(), None)?;
            h.insert_header(http::header::HOST, ep.authority.as_str())?;
            h.insert_header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )?;
            h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            h.insert_header(http::header::ACCEPT, "application/json")?;
            let (mut up, _) = self.connector.get_http_session(&peer).await?;
            up.write_request_header(Box::new(h)).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            let status = up.response_header().map(|r| r.status.as_u16()).unwrap_or(0);
            let mut answer = Vec::new();
            while let Some(c) = up.read_response_body().await? {
                answer.extend_from_slice(&c);
                if answer.len() > 64 * 1024 {
                    break;
                }
            }
            Ok::<_, pingora_error::BError>((status, answer))
        };
        let budget = ep.timeouts.connect + ep.timeouts.first_byte.min(Duration::from_secs(30));
        let (status, answer) = match tokio::time::timeout(budget, exchange).await {
            Err(_) => return Err(fail(FailClass::FirstByteTimeout, None, "timed out".into())),
            Ok(Err(e)) => {
                return Err(fail(
                    FailClass::ConnectError,
                    None,
                    format!("token endpoint unreachable: {}", short_error(&e)),
                ))
            }
            Ok(Ok(x)) => x,
        };
        if status != 200 {
            let reason = vertex::token_error(&answer);
            // A refused grant is a credentials problem, whatever status carries it.
            let (class, st) = if (400..500).contains(&status) {
                (FailClass::AuthError, 401)
            } else {
                (FailClass::of_status(status), status)
            };
            return Err(fail(
                class,
                Some(st),
                format!("the token endpoint answered {status} ({reason})"),
            ));
        }
        let (token, lifetime) =
            vertex::parse_token(&answer).map_err(|m| fail(FailClass::BadResponse, None, m))?;
        let token = Secret::new(token);
        *cached = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token)
    }

    /// Serve one planned chat completion. `Ok` means a response was written; `Err` is an error
    /// the caller writes (all attempts failed) or must not write (the client is gone).
    pub async fn serve(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        req: &ChatRequest,
        body: &Bytes,
        plan: &Plan,
    ) -> Result<(), GatewayError> {
        let mut reports = Vec::with_capacity(plan.targets.len() + plan.skipped.len());
        for sk in &plan.skipped {
            self.metrics
                .attempts
                .with_label_values(&[self.cfg.providers[sk.provider].name.as_str(), "skipped"])
                .inc();
            log.attempts.push(AttemptLog {
                provider: sk.provider,
                source: sk.source.clone(),
                outcome: "skipped",
                status: None,
                error: Some(sk.reason.clone()),
                duration: Duration::ZERO,
            });
            reports.push(AttemptReport {
                source: sk.source.clone(),
                error: sk.reason.clone(),
                status: None,
                skipped: true,
            });
        }
        for (index, target) in plan.targets.iter().enumerate() {
            let provider = &self.cfg.providers[target.route.provider];
            let started = Instant::now();
            let outcome = self
                .attempt(s, log, provider, target, index, req, body)
                .await;
            let pname = provider.name.as_str();
            match outcome {
                Outcome::Done => return Ok(()),
                Outcome::ClientGone => return Err(GatewayError::ClientClosed),
                Outcome::Failed(f) => {
                    let label = f.class.label();
                    self.metrics
                        .attempts
                        .with_label_values(&[pname, label])
                        .inc();
                    if index + 1 < plan.targets.len() {
                        self.metrics
                            .fallbacks
                            .with_label_values(&[pname, label])
                            .inc();
                    }
                    let source = target.source(&self.cfg);
                    log.attempts.push(AttemptLog {
                        provider: target.route.provider,
                        source: source.clone(),
                        outcome: label,
                        status: f.status,
                        error: Some(f.message.clone()),
                        duration: started.elapsed(),
                    });
                    reports.push(AttemptReport {
                        source,
                        error: f.message,
                        status: f.status,
                        skipped: false,
                    });
                    if !f.class.falls_back(f.status, &self.cfg.fallback) {
                        break;
                    }
                }
            }
        }
        let mut statuses = reports.iter().map(|r| r.status);
        let first = statuses.next().flatten();
        let status = match first {
            Some(s) if statuses.all(|x| x == Some(s)) => s,
            _ => 502,
        };
        Err(GatewayError::AllFailed {
            status,
            attempts: reports,
        })
    }

    fn record_success(
        &self,
        log: &mut RequestLog,
        provider: &Provider,
        target: &Target,
        outcome: &'static str,
        status: u16,
        started: Instant,
    ) {
        self.metrics
            .attempts
            .with_label_values(&[provider.name.as_str(), outcome])
            .inc();
        log.attempts.push(AttemptLog {
            provider: target.route.provider,
            source: target.source(&self.cfg),
            outcome,
            status: Some(status),
            error: None,
            duration: started.elapsed(),
        });
        log.status = status;
    }

    /// Open a session to `peer` and send the request; returns it with the response header read.
    /// A failure on a reused pooled connection is retried once on a fresh one.
    async fn send(
        &self,
        s: &mut Session,
        peer: &HttpPeer,
        provider: &Provider,
        header: &pingora_http::RequestHeader,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<Option<(HttpSession, HttpPeer)>, Failure> {
        let mut peer = peer.clone();
        let mut fresh_retry_done = false;
        loop {
            let connect_deadline = deadline.min(Instant::now() + provider.timeouts.connect);
            let connect = timeout_at(
                connect_deadline.into(),
                self.connector.get_http_session(&peer),
            );
            let (mut up, reused) = match unless_client_gone(s, connect).await {
                None => return Ok(None),
                Some(Err(_)) => {
                    return Err(Failure {
                        class: FailClass::ConnectTimeout,
                        status: None,
                        message: format!(
                            "connect timeout after {} ms",
                            provider.timeouts.connect.as_millis()
                        ),
                    })
                }
                Some(Ok(Err(e))) => {
                    let class = if matches!(
                        e.etype(),
                        pingora_error::ErrorType::ConnectTimedout
                            | pingora_error::ErrorType::TLSHandshakeTimedout
                    ) {
                        FailClass::ConnectTimeout
                    } else {
                        FailClass::ConnectError
                    };
                    return Err(Failure {
                        class,
                        status: None,
                        message: format!("connect failed: {}", short_error(&e)),
                    });
                }
                Some(Ok(Ok(x))) => x,
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
            match unless_client_gone(s, timeout_at(fb_deadline.into(), exchange)).await {
                None => return Ok(None),
                Some(Err(_)) => {
                    return Err(Failure {
                        class: FailClass::FirstByteTimeout,
                        status: None,
                        message: format!("no response within {} ms", budget.as_millis()),
                    })
                }
                Some(Ok(Ok(()))) => return Ok(Some((up, peer))),
                Some(Ok(Err(e))) => {
                    if reused && !fresh_retry_done {
                        // A pooled connection the upstream had closed: one more try on a new one.
                        fresh_retry_done = true;
                        peer.group_key = self.fresh_group.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Err(Failure {
                        class: FailClass::UpstreamClosed,
                        status: None,
                        message: format!(
                            "upstream closed the connection before responding: {}",
                            short_error(&e)
                        ),
                    });
                }
            }
        }
    }

    /// One target: connect, send, classify, and if it serves, relay the answer to the client.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        provider: &Provider,
        target: &Target,
        index: usize,
        req: &ChatRequest,
        body: &Bytes,
    ) -> Outcome {
        let started = Instant::now();
        let stream = req.stream;
        // A route the catalog says cannot serve this request is skipped like a refused one.
        let caps = target.route.capabilities;
        if caps != Capabilities::ALL {
            let missing = crate::api::needs(body).missing_from(caps);
            if !missing.is_empty() {
                let why = format!(
                    "the catalog lists no {} support for {}",
                    missing.names().join(", "),
                    target.route.id
                );
                return Outcome::Failed(unsupported(provider, &why));
            }
        }
        // The provider's request body: OpenAI's wire as sent (model spliced), or translated.
        let (body, wire) = match provider.kind {
            ProviderKind::OpenAi | ProviderKind::Azure => {
                (req.body_for_model(body, &target.route.id), Wire::OpenAi)
            }
            ProviderKind::Anthropic => {
                let max = target.route.max_output_tokens.unwrap_or(4096);
                match anthropic::request(body, &target.route.id, max) {
                    Ok((b, opts)) => (Bytes::from(b), Wire::Anthropic(opts)),
                    Err(m) => return Outcome::Failed(unsupported(provider, &m)),
                }
            }
            ProviderKind::GoogleAiStudio => match gemini::request(body) {
                Ok((b, opts)) => (Bytes::from(b), Wire::Gemini(opts, target.route.id.clone())),
                Err(m) => return Outcome::Failed(unsupported(provider, &m)),
            },
            ProviderKind::Vertex if vertex::is_anthropic(&target.route.id) => {
                let max = target.route.max_output_tokens.unwrap_or(4096);
                let version = ("anthropic_version", vertex::ANTHROPIC_VERSION);
                match anthropic::request_with(body, version, max) {
                    Ok((b, opts)) => (Bytes::from(b), Wire::Anthropic(opts)),
                    Err(m) => return Outcome::Failed(unsupported(provider, &m)),
                }
            }
            ProviderKind::Vertex => match gemini::request(body) {
                Ok((b, opts)) => (Bytes::from(b), Wire::Gemini(opts, target.route.id.clone())),
                Err(m) => return Outcome::Failed(unsupported(provider, &m)),
            },
            ProviderKind::Bedrock => match bedrock::request(body, target.route.max_output_tokens) {
                Ok((b, opts)) => (Bytes::from(b), Wire::Bedrock(opts, target.route.id.clone())),
                Err(m) => return Outcome::Failed(unsupported(provider, &m)),
            },
        };
        let deadline = started + provider.timeouts.total;
        let peer = match self.peers.get(target.route.provider, provider).await {
            Ok(p) => p,
            Err(m) => {
                return Outcome::Failed(Failure {
                    class: FailClass::ConnectError,
                    status: None,
                    message: m,
                })
            }
        };
        let token = match &provider.vertex {
            Some(auth) => match self.vertex_token(target.route.provider, auth).await {
                Ok(t) => Some(t),
                Err(f) => return Outcome::Failed(f),
            },
            None => None,
        };
        let header = match upstream::request_header(
            provider,
            target,
            s.req_header(),
            &body,
            &log.request_id,
            stream,
            token.as_ref().map(|t| t.expose()),
        ) {
            Ok(h) => h,
            Err(e) => {
                return Outcome::Failed(Failure {
                    class: FailClass::BadResponse,
                    status: None,
                    message: format!("could not build the upstream request: {}", short_error(&e)),
                })
            }
        };
        let (up, peer) = match self
            .send(s, &peer, provider, &header, &body, deadline)
            .await
        {
            Ok(Some(x)) => x,
            Ok(None) => return Outcome::ClientGone,
            Err(f) => return Outcome::Failed(f),
        };
        let Some(resp) = up.response_header() else {
            return Outcome::Failed(bad_response("no response header"));
        };
        let status = resp.status.as_u16();
        let is_sse = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| match wire {
                Wire::Bedrock(..) => ct.starts_with("application/vnd.amazon.eventstream"),
                _ => ct.starts_with("text/event-stream"),
            });
        // Fall back (with the failure class), or answer with the client's header, built while
        // the upstream's is at hand (its framing comes at commit).
        let verdict = match decide(status, &self.cfg.fallback) {
            Decision::Next(class) => Err(class),
            d => match self.client_header(resp, log, provider, target, index) {
                Ok(h) => Ok((d, h)),
                Err(_) => return Outcome::Failed(bad_response("unusable response header")),
            },
        };
        self.metrics
            .upstream_ttfb
            .with_label_values(&[provider.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match verdict {
            Err(class) => {
                let key = match &provider.key {
                    ApiKey::Present(k) => Some(k.expose()),
                    _ => None,
                };
                let err_body = self.read_small_body(s, up, &peer).await;
                let message = classify::error_message(status, &err_body, key);
                Outcome::Failed(Failure {
                    class,
                    status: Some(status),
                    message,
                })
            }
            Ok((Decision::PassThrough, h)) => {
                // The client's own fault: the next provider would refuse it too.
                let outcome = "client_error";
                let out = self
                    .relay_json(s, log, up, &peer, provider, h, wire, deadline)
                    .await;
                if let Outcome::Done = out {
                    self.record_success(log, provider, target, outcome, status, started);
                    log.outcome = "upstream_client_error";
                }
                out
            }
            Ok((_, h)) => {
                let out = if stream && is_sse {
                    self.relay_stream(s, log, up, &peer, provider, h, wire, started, deadline)
                        .await
                } else {
                    self.relay_json(s, log, up, &peer, provider, h, wire, deadline)
                        .await
                };
                if let Outcome::Done = out {
                    self.record_success(log, provider, target, "success", status, started);
                    if log.outcome.is_empty() {
                        log.outcome = "success";
                    }
                }
                out
            }
        }
    }

    /// Read a (small) error body; the connection goes back to the pool if it was read whole.
    async fn read_small_body(
        &self,
        s: &mut Session,
        mut up: HttpSession,
        peer: &HttpPeer,
    ) -> Bytes {
        let mut buf = Vec::new();
        let read = async {
            while let Ok(Some(chunk)) = up.read_response_body().await {
                buf.extend_from_slice(&chunk);
                if buf.len() > ERROR_BODY_CAP {
                    break;
                }
            }
        };
        let deadline = Instant::now() + ERROR_BODY_WAIT;
        let finished = unless_client_gone(s, timeout_at(deadline.into(), read)).await;
        if matches!(finished, Some(Ok(()))) {
            self.release(up, peer).await;
        }
        Bytes::from(buf)
    }

    /// The client's response header for an answer from `target`: the upstream status, the
    /// upstream headers a client may want (type, caching, rate-limit info) and detour's own.
    fn client_header(
        &self,
        resp: &ResponseHeader,
        log: &RequestLog,
        provider: &Provider,
        target: &Target,
        index: usize,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(resp.status, Some(12))?;
        for (name, value) in resp.headers.iter() {
            let n = name.as_str();
            if n == "content-type"
                || n == "cache-control"
                || n == "retry-after"
                || n.starts_with("x-ratelimit-")
                || n.starts_with("openai-")
            {
                h.append_header(name.clone(), value.clone())?;
            }
        }
        h.insert_header("x-detour-provider", provider.name.as_str())?;
        h.insert_header("x-detour-model", target.route.id.as_str())?;
        h.insert_header("x-detour-attempts", log.attempts_made() + 1)?;
        h.insert_header("x-detour-fallback-index", index)?;
        h.insert_header("x-request-id", log.request_id.as_str())?;
        Ok(h)
    }

    /// A JSON answer (or a passed-through error): read it whole before committing, up to the
    /// configured size, so a body cut short still falls back; write it with `Content-Length`.
    #[allow(clippy::too_many_arguments)]
    async fn relay_json(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        mut up: HttpSession,
        peer: &HttpPeer,
        provider: &Provider,
        h: ResponseHeader,
        wire: Wire,
        deadline: Instant,
    ) -> Outcome {
        let cap = self.cfg.limits.max_buffered_response_bytes;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let mut complete = false;
        while total <= cap {
            let idle = deadline.min(Instant::now() + provider.timeouts.idle);
            match next_chunk(s, &mut up, idle).await {
                Read::Chunk(c) => {
                    total += c.len();
                    chunks.push(c);
                }
                Read::End => {
                    complete = true;
                    break;
                }
                Read::ClientGone => return Outcome::ClientGone,
                Read::Timeout => {
                    return Outcome::Failed(Failure {
                        class: FailClass::FirstByteTimeout,
                        status: None,
                        message: "upstream stalled while sending its answer".into(),
                    })
                }
                Read::Failed(e) => {
                    return Outcome::Failed(Failure {
                        class: FailClass::UpstreamClosed,
                        status: None,
                        message: format!("upstream closed the connection mid-answer: {e}"),
                    })
                }
            }
        }
        if !matches!(wire, Wire::OpenAi) {
            // Translated answers are read whole: the OpenAI JSON is built from the entire body.
            if !complete {
                return Outcome::Failed(bad_response("the answer is too large to translate"));
            }
            let raw: Vec<u8> = chunks.concat();
            let ok = h.status.is_success();
            let translated = match &wire {
                Wire::Anthropic(_) if ok => anthropic::response(&raw, unix_now()),
                Wire::Anthropic(_) => Ok(anthropic::error_body(&raw)),
                Wire::Gemini(_, model) if ok => gemini::response(&raw, model, unix_now()),
                Wire::Gemini(..) => Ok(gemini::error_body(&raw)),
                Wire::Bedrock(_, model) if ok => bedrock::response(&raw, model, unix_now()),
                Wire::Bedrock(..) => Ok(bedrock::error_body(&raw, h.status.as_u16())),
                Wire::OpenAi => Ok(raw),
            };
            match translated {
                Ok(b) => {
                    total = b.len();
                    chunks = vec![Bytes::from(b)];
                }
                Err(e) => {
                    return Outcome::Failed(bad_response(&format!("untranslatable answer: {e}")))
                }
            }
        }
        if let Err(o) = commit(s, h, complete.then_some(total)).await {
            return o;
        }
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let end = complete && i + 1 == n;
            if s.write_response_body(Some(c), end).await.is_err() {
                return Outcome::ClientGone;
            }
        }
        if complete {
            if n == 0 && s.write_response_body(None, true).await.is_err() {
                return Outcome::ClientGone;
            }
            self.release(up, peer).await;
            return Outcome::Done;
        }
        // Larger than the buffer: relay the rest as it comes. A failure now can only cut it.
        loop {
            let idle = deadline.min(Instant::now() + provider.timeouts.idle);
            match next_chunk(s, &mut up, idle).await {
                Read::Chunk(c) => {
                    if s.write_response_body(Some(c), false).await.is_err() {
                        return Outcome::ClientGone;
                    }
                }
                Read::End => {
                    let _ = s.write_response_body(None, true).await;
                    self.release(up, peer).await;
                    return Outcome::Done;
                }
                Read::ClientGone => return Outcome::ClientGone,
                Read::Timeout | Read::Failed(_) => {
                    log.post_commit_error = Some("upstream failed mid-answer".into());
                    log.outcome = "stream_error";
                    // The chunked body never gets its terminator: the client sees it is cut.
                    return Outcome::Done;
                }
            }
        }
    }

    /// An SSE answer: wait for its first whole event before committing, then relay what arrives
    /// as it arrives (the upstream's own `Bytes` when a read ends on an event boundary).
    #[allow(clippy::too_many_arguments)]
    async fn relay_stream(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        mut up: HttpSession,
        peer: &HttpPeer,
        provider: &Provider,
        h: ResponseHeader,
        wire: Wire,
        started: Instant,
        deadline: Instant,
    ) -> Outcome {
        let mut relay = match wire {
            Wire::OpenAi => Relay::Pass(EventAligner::default()),
            Wire::Anthropic(opts) => {
                Relay::Anthropic(anthropic::StreamTranslator::new(opts, unix_now()))
            }
            Wire::Gemini(opts, model) => {
                Relay::Gemini(gemini::StreamTranslator::new(opts, &model, unix_now()))
            }
            Wire::Bedrock(opts, model) => {
                Relay::Bedrock(bedrock::StreamTranslator::new(opts, &model, unix_now()))
            }
        };
        // A translated event stream reaches the client as SSE.
        let mut h = h;
        if matches!(relay, Relay::Bedrock(_))
            && h.insert_header(http::header::CONTENT_TYPE, "text/event-stream")
                .is_err()
        {
            return Outcome::Failed(bad_response("unusable response header"));
        }
        // Before commit: the first whole event, within the first-byte budget.
        let first = loop {
            let wait = deadline.min(Instant::now() + provider.timeouts.first_byte);
            match next_chunk(s, &mut up, wait).await {
                Read::Chunk(c) => match relay.push(c) {
                    Ok(Some(seg)) => break seg,
                    Ok(None) => {}
                    // An error event before anything was sent (e.g. overloaded): fall back.
                    Err(e) => return Outcome::Failed(in_band_failure(&e)),
                },
                Read::End => {
                    return Outcome::Failed(bad_response(
                        "upstream ended the stream without any event",
                    ))
                }
                Read::ClientGone => return Outcome::ClientGone,
                Read::Timeout => {
                    return Outcome::Failed(Failure {
                        class: FailClass::FirstByteTimeout,
                        status: None,
                        message: "the stream sent no event within the first-byte timeout".into(),
                    })
                }
                Read::Failed(e) => {
                    return Outcome::Failed(Failure {
                        class: FailClass::UpstreamClosed,
                        status: None,
                        message: format!("upstream closed the stream before its first event: {e}"),
                    })
                }
            }
        };
        if let Err(o) = commit(s, h, None).await {
            return o;
        }
        if s.write_response_body(Some(first), false).await.is_err() {
            return Outcome::ClientGone;
        }
        self.metrics
            .stream_ttft
            .with_label_values(&[provider.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        // Committed. From here a failure is reported in band and never looks complete.
        let failure: String = loop {
            let idle = deadline.min(Instant::now() + provider.timeouts.idle);
            let mut read = match next_chunk(s, &mut up, idle).await {
                Read::ClientGone => return Outcome::ClientGone,
                Read::Timeout => break "the upstream stream stalled past the idle timeout".into(),
                r => r,
            };
            let mut in_band: Option<anthropic::InBandError> = None;
            // Relay everything that has already arrived in one write; never wait for more.
            let mut out = Batch::default();
            let end = loop {
                match read {
                    Read::Chunk(c) => match relay.push(c) {
                        Ok(Some(seg)) => out.push(seg),
                        Ok(None) => {}
                        Err(e) => {
                            in_band = Some(e);
                            break Some(Err(()));
                        }
                    },
                    Read::End => break Some(Ok(())),
                    _ => break Some(Err(())),
                }
                match up.read_response_body().now_or_never() {
                    Some(Ok(Some(c))) => read = Read::Chunk(c),
                    Some(Ok(None)) => read = Read::End,
                    Some(Err(e)) => read = Read::Failed(short_error(&e)),
                    None => break None,
                }
            };
            if let Some(out) = out.take() {
                if s.write_response_body(Some(out), false).await.is_err() {
                    return Outcome::ClientGone;
                }
            }
            match end {
                None => {}
                Some(Ok(())) => {
                    // Formats without [DONE] of their own get it here, when the answer finished.
                    if let Some(tail) = relay.finish() {
                        if s.write_response_body(Some(tail), false).await.is_err() {
                            return Outcome::ClientGone;
                        }
                    }
                    if relay.complete() {
                        if s.write_response_body(None, true).await.is_err() {
                            return Outcome::ClientGone;
                        }
                        self.release(up, peer).await;
                        return Outcome::Done;
                    }
                    break "the upstream ended the stream without [DONE]".into();
                }
                Some(Err(())) => match in_band {
                    Some(e) => break format!("the provider reported {}: {}", e.kind, e.message),
                    None => break "the upstream connection failed mid-stream".into(),
                },
            }
        };
        log.post_commit_error = Some(failure.clone());
        log.outcome = "stream_error";
        let ev = error_event(
            &format!("{failure}; the answer is incomplete"),
            "stream_interrupted",
        );
        let _ = s.write_response_body(Some(ev), false).await;
        let _ = s.write_response_body(None, true).await;
        Outcome::Done
    }

    /// Give a finished upstream session back to the pool; an unfinished one is dropped (closed).
    async fn release(&self, mut up: HttpSession, peer: &HttpPeer) {
        if up.response_done() {
            self.connector
                .release_http_session(up, peer, peer.options.idle_timeout)
                .await;
        }
    }
}

/// The wire format of the attempt's provider, for the response side.
#[derive(Debug, Clone)]
enum Wire {
    OpenAi,
    Anthropic(anthropic::StreamOpts),
    /// Gemini, with the provider-side model id (its answers may not name it).
    Gemini(anthropic::StreamOpts, String),
    /// Bedrock Converse, with the provider-side model id (its answers do not name it).
    Bedrock(anthropic::StreamOpts, String),
}

fn unsupported(provider: &Provider, why: &str) -> Failure {
    Failure {
        class: FailClass::Unsupported,
        status: Some(400),
        message: format!("not sent to {}: {why}", provider.name),
    }
}

/// A stream's relay: pass-through (event-aligned) or translated.
enum Relay {
    Pass(EventAligner),
    Anthropic(anthropic::StreamTranslator),
    Gemini(gemini::StreamTranslator),
    Bedrock(bedrock::StreamTranslator),
}

impl Relay {
    /// Feed one upstream chunk; the bytes to send the client now, if any.
    fn push(&mut self, c: Bytes) -> Result<Option<Bytes>, anthropic::InBandError> {
        match self {
            Relay::Pass(a) => Ok(a.push(c)),
            Relay::Anthropic(t) => t.push(&c).map(|v| (!v.is_empty()).then(|| Bytes::from(v))),
            Relay::Gemini(t) => t.push(&c).map(|v| (!v.is_empty()).then(|| Bytes::from(v))),
            Relay::Bedrock(t) => t.push(&c).map(|v| (!v.is_empty()).then(|| Bytes::from(v))),
        }
    }

    /// At the upstream's clean end: closing bytes a translated format owes the client.
    fn finish(&mut self) -> Option<Bytes> {
        match self {
            Relay::Pass(_) | Relay::Anthropic(_) => None,
            Relay::Gemini(t) => t.finish().map(Bytes::from),
            Relay::Bedrock(t) => t.finish().map(Bytes::from),
        }
    }

    /// Whether the stream reached its proper end (`[DONE]`, nothing partial held back).
    fn complete(&self) -> bool {
        match self {
            Relay::Pass(a) => a.saw_done() && a.pending() == 0,
            Relay::Anthropic(t) => t.done() && t.pending() == 0,
            Relay::Gemini(t) => t.finished() && t.pending() == 0,
            Relay::Bedrock(t) => t.finished() && t.pending() == 0,
        }
    }
}

/// An error event inside a 200 stream, as the failure it stands for: the status a provider
/// uses for that error, so the configured triggers decide as for a status.
fn in_band_failure(e: &anthropic::InBandError) -> Failure {
    let (class, status) = match e.kind.as_str() {
        "overloaded_error" => (FailClass::ServerError, Some(529)),
        "api_error" => (FailClass::ServerError, Some(500)),
        "rate_limit_error" => (FailClass::RateLimited, Some(429)),
        "authentication_error" | "permission_error" => (FailClass::AuthError, Some(401)),
        // Gemini's status names
        "RESOURCE_EXHAUSTED" => (FailClass::RateLimited, Some(429)),
        "UNAVAILABLE" => (FailClass::ServerError, Some(503)),
        "INTERNAL" => (FailClass::ServerError, Some(500)),
        "DEADLINE_EXCEEDED" => (FailClass::ServerError, Some(504)),
        // Bedrock's exception frames
        "throttlingException" => (FailClass::RateLimited, Some(429)),
        "serviceUnavailableException" => (FailClass::ServerError, Some(503)),
        "internalServerException" | "modelStreamErrorException" => {
            (FailClass::ServerError, Some(500))
        }
        "validationException" => (FailClass::ClientError, Some(400)),
        _ => (FailClass::BadResponse, None),
    };
    Failure {
        class,
        status,
        message: format!("in-stream {}: {}", e.kind, e.message),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How one read of an upstream body ended.
enum Read {
    Chunk(Bytes),
    End,
    /// Nothing arrived before the deadline.
    Timeout,
    Failed(String),
    ClientGone,
}

/// The next upstream body chunk, giving up at `until` or as soon as the client leaves.
async fn next_chunk(s: &mut Session, up: &mut HttpSession, until: Instant) -> Read {
    match unless_client_gone(s, timeout_at(until.into(), up.read_response_body())).await {
        None => Read::ClientGone,
        Some(Err(_)) => Read::Timeout,
        Some(Ok(Err(e))) => Read::Failed(short_error(&e)),
        Some(Ok(Ok(None))) => Read::End,
        Some(Ok(Ok(Some(c)))) => Read::Chunk(c),
    }
}

/// Write the client's header: the commit point. `Content-Length` when the whole body is known,
/// else chunked framing (HTTP/1; HTTP/2 frames the body itself).
async fn commit(
    s: &mut Session,
    mut h: ResponseHeader,
    content_length: Option<usize>,
) -> Result<(), Outcome> {
    let framed = match content_length {
        Some(n) => h.insert_header(http::header::CONTENT_LENGTH, n),
        None if s.as_downstream().is_http2() => Ok(()),
        None => h.insert_header(http::header::TRANSFER_ENCODING, "chunked"),
    };
    if framed.is_err() {
        return Err(Outcome::Failed(bad_response("unusable response header")));
    }
    if s.write_response_header(Box::new(h), false).await.is_err() {
        return Err(Outcome::ClientGone);
    }
    Ok(())
}

fn bad_response(message: &str) -> Failure {
    Failure {
        class: FailClass::BadResponse,
        status: None,
        message: message.into(),
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
    fn push(&mut self, seg: Bytes) {
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

    fn take(self) -> Option<Bytes> {
        match self {
            Batch::Empty => None,
            Batch::One(b) => Some(b),
            Batch::Many(m) => Some(m.freeze()),
        }
    }
}

/// An upstream error without the peer details Pingora appends (addresses, fd numbers).
fn short_error(e: &pingora_error::Error) -> String {
    let mut s = e.etype().as_str().to_string();
    if let Some(ctx) = e.context.as_ref() {
        s.push_str(": ");
        s.push_str(crate::api::truncate(ctx.as_str(), 160));
    }
    s
}
