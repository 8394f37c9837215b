//! The Pingora service: routes by path, reads and plans the request, hands it to the engine,
//! and logs each request once in `logging()`. No provider-specific logic lives here.

mod header_mode;
mod hooks;
mod keyed;
mod live;
mod messages;

pub use live::{Current, DetourProxy};

use crate::api::{ChatRequest, GatewayError};
use crate::engine::ledger::Via;
use crate::engine::{Engine, RequestLog};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use header_mode::{Direct, Mode};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to send its request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The error `request_filter` returns to make Pingora abort the client's connection (a
/// committed answer was cut).
const ANSWER_CUT: pingora_error::ErrorType = pingora_error::ErrorType::Custom("answer cut");

/// Request bodies held at once, all requests together, against `limits.max-total-body-bytes`.
struct BodyBudget {
    held: AtomicUsize,
    cap: usize,
    gauge: prometheus::IntGauge,
}

/// One request's share of the [`BodyBudget`], given back when dropped.
struct BodyHold<'a> {
    budget: &'a BodyBudget,
    held: usize,
}

impl<'a> BodyHold<'a> {
    fn new(budget: &'a BodyBudget) -> Self {
        BodyHold { budget, held: 0 }
    }

    fn held(&self) -> usize {
        self.held
    }

    /// Take `n` more bytes; `false` (and nothing taken) if the total would pass the cap.
    fn grow(&mut self, n: usize) -> bool {
        let cap = self.budget.cap;
        let took = self
            .budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(n).filter(|t| *t <= cap)
            })
            .is_ok();
        if took {
            self.held += n;
            self.budget.gauge.add(n as i64);
        }
        took
    }
}

impl Drop for BodyHold<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::AcqRel);
        self.budget.gauge.sub(self.held as i64);
    }
}

/// What serves requests under one loaded config: its engine and model list, with the parts
/// that outlive a reload (keys, records, the body budget, request ids) shared by handle.
/// `live::DetourProxy` hands each request the one current when it arrived.
pub struct Serving {
    engine: Engine,
    /// Gateway keys, when `auth.required` (their store opened at start-up).
    keys: Option<Arc<crate::auth::Keys>>,
    /// Every request's record, for `/admin/requests`.
    recorder: Arc<crate::records::Recorder>,
    bodies: Arc<BodyBudget>,
    models_json: Bytes,
    id_prefix: Arc<str>,
    next_id: Arc<AtomicU64>,
    connector: pingora_core::connectors::ConnectorOptions,
}

impl Serving {
    /// The same service under a reloaded config: a new engine that takes over the breaker and
    /// latency state of the providers `unchanged` names, and the header mode's counts.
    pub fn reloaded(&self, gw: Arc<Gateway>, unchanged: &dyn Fn(&str) -> bool) -> Serving {
        let models_json = models_list(&gw);
        let mut engine = Engine::new(
            gw,
            self.engine.metrics.clone(),
            self.connector.clone(),
            self.keys.as_ref(),
        );
        engine.health.inherit(&self.engine.health, unchanged);
        engine.limiter = self.engine.limiter.clone();
        Serving {
            engine,
            keys: self.keys.clone(),
            recorder: self.recorder.clone(),
            bodies: self.bodies.clone(),
            models_json,
            id_prefix: self.id_prefix.clone(),
            next_id: self.next_id.clone(),
            connector: self.connector.clone(),
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.engine.gw
    }

    /// Whether gateway keys are on (`auth.required`).
    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    pub fn new(
        gw: Arc<Gateway>,
        metrics: Arc<Metrics>,
        connector: pingora_core::connectors::ConnectorOptions,
        keys: Option<Arc<crate::auth::Keys>>,
        recorder: Arc<crate::records::Recorder>,
    ) -> Serving {
        let models_json = models_list(&gw);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        Serving {
            bodies: Arc::new(BodyBudget {
                held: AtomicUsize::new(0),
                cap: gw.cfg.limits.max_total_body_bytes,
                gauge: metrics.body_bytes_held.clone(),
            }),
            engine: Engine::new(gw, metrics, connector.clone(), keys.as_ref()),
            keys,
            recorder,
            models_json,
            id_prefix: format!("{seed:016x}").into(),
            next_id: Arc::new(AtomicU64::new(0)),
            connector,
        }
    }

    fn gw(&self) -> &Gateway {
        &self.engine.gw
    }

    /// The circuit breakers and retry budget every request shares (for the admin service).
    pub fn health(&self) -> Arc<crate::engine::health::Health> {
        self.engine.health.clone()
    }

    fn metrics(&self) -> &Metrics {
        &self.engine.metrics
    }

    /// The client's `x-request-id` if it is short and printable, else a new one.
    fn request_id(&self, session: &Session) -> String {
        if let Some(v) = session.req_header().headers.get("x-request-id") {
            if let Ok(s) = v.to_str() {
                if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
                    return s.to_string();
                }
            }
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:08x}", self.id_prefix)
    }

    /// Read the request body whole, within `limits.max-body-bytes` for this request and
    /// `limits.max-total-body-bytes` for all requests together; the returned hold keeps the
    /// body's share of the total until it is dropped.
    async fn read_body(
        &self,
        session: &mut Session,
    ) -> std::result::Result<(Bytes, BodyHold<'_>), GatewayError> {
        let limit = self.gw().cfg.limits.max_body_bytes;
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let mut hold = BodyHold::new(&self.bodies);
        if !hold.grow(declared.unwrap_or(0)) {
            return Err(GatewayError::Overloaded { retry_after: 1 });
        }
        // curl and others wait (1 s) for a go-ahead before sending a larger body. Pingora relays
        // an upstream's 100 only on its proxy path, so detour gives it here, after the checks.
        let expects_continue = session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue {
            let go = ResponseHeader::build(100, Some(0))
                .map_err(|e| GatewayError::ClientRead(e.etype().as_str().to_string()))?;
            session
                .write_response_header(Box::new(go), false)
                .await
                .map_err(|e| GatewayError::ClientRead(e.etype().as_str().to_string()))?;
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        let read = async {
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        total += chunk.len();
                        if total > limit {
                            return Err(GatewayError::BodyTooLarge { limit });
                        }
                        // A chunked body is counted as it arrives.
                        if total > hold.held() && !hold.grow(total - hold.held()) {
                            return Err(GatewayError::Overloaded { retry_after: 1 });
                        }
                        chunks.push(chunk);
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(GatewayError::ClientRead(e.etype().as_str().to_string())),
                }
            }
        };
        match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
            Err(_) => Err(GatewayError::ClientRead(
                "timed out reading the body".into(),
            )),
            Ok(Err(e)) => Err(e),
            // The common case, one chunk, is kept as it is; more are joined once.
            Ok(Ok(())) if chunks.len() == 1 => Ok((chunks.remove(0), hold)),
            Ok(Ok(())) => {
                let mut buf = BytesMut::with_capacity(total);
                for c in &chunks {
                    buf.extend_from_slice(c);
                }
                Ok((buf.freeze(), hold))
            }
        }
    }

    fn json_header(
        status: u16,
        length: usize,
        request_id: &str,
        attempts: Option<usize>,
    ) -> Result<ResponseHeader> {
        let mut h = ResponseHeader::build(status, Some(5))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, length)?;
        h.insert_header("x-request-id", request_id)?;
        if let Some(n) = attempts {
            h.insert_header("x-detour-attempts", n)?;
        }
        Ok(h)
    }

    async fn write_json(
        session: &mut Session,
        status: u16,
        body: Bytes,
        request_id: &str,
    ) -> Result<()> {
        let h = Self::json_header(status, body.len(), request_id, None)?;
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// A token count detour estimated (no target could count): Anthropic's shape, marked.
    async fn write_estimate(session: &mut Session, body: Bytes, request_id: &str) -> Result<()> {
        messages::deactivate(session);
        let mut h = Self::json_header(200, body.len(), request_id, None)?;
        h.insert_header("x-detour-estimated", "true")?;
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(body), true).await
    }

    async fn write_error(
        session: &mut Session,
        ctx: &mut RequestLog,
        e: &GatewayError,
    ) -> Result<()> {
        ctx.status = e.status();
        ctx.outcome = e.metric_label();
        if matches!(e, GatewayError::ClientClosed) {
            return Ok(());
        }
        if matches!(
            e,
            GatewayError::BodyTooLarge { .. }
                | GatewayError::ClientRead(_)
                | GatewayError::Overloaded { .. }
        ) {
            // The rest of the body was not read: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        let attempts = (!ctx.mode.is_empty()).then(|| ctx.attempts_made());
        let mut h = Self::json_header(e.status(), e.to_json().len(), &ctx.request_id, attempts)?;
        match e {
            GatewayError::Overloaded { retry_after }
            | GatewayError::RateLimited { retry_after, .. } => {
                h.insert_header(http::header::RETRY_AFTER, *retry_after)?;
            }
            _ => {}
        }
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(e.to_json()), true).await
    }

    /// A chain-mode request: a chat request, or an Anthropic Messages request (a message or a
    /// token count), translated to one here and its answer back by the `messages` module.
    async fn chat(&self, session: &mut Session, ctx: &mut RequestLog, api: Api) -> Result<()> {
        ctx.mode = "chain";
        // Decremented when this scope ends, whichever way it ends.
        let _in_flight = Counted::enter(&self.metrics().in_flight);
        let result = async {
            // Before the body is read: a caller without a key, or over a limit, sends nothing.
            let mut who = self.admitted(session, ctx, true).await?;
            // The hold counts the body in the total until the request is over.
            let (body, _hold) = self.read_body(session).await?;
            let req = match api {
                Api::Chat => ChatRequest::parse(body)?,
                Api::Messages => messages::to_chat_request(body, false, session.req_header())?,
                Api::CountTokens => messages::to_chat_request(body, true, session.req_header())?,
            };
            if api != Api::Chat {
                messages::activate(session, &req.model);
            }
            ctx.stream = req.stream;
            ctx.model = crate::text::truncate(&req.model, 512).to_string();
            let mut plan = self.plan_for(&req, who.as_ref())?;
            let tab = if api == Api::CountTokens {
                // Counted by Anthropic-family targets only, and free: no credits held.
                messages::count_plan(&mut plan, self.gw());
                if plan.targets.is_empty() {
                    ctx.status = 200;
                    let (body, rid) = (messages::estimate(&req), &ctx.request_id);
                    return Self::write_estimate(session, body, rid).await.map_err(|e| {
                        let _ = e;
                        GatewayError::ClientClosed
                    });
                }
                None
            } else {
                self.tab(&req, who.as_mut(), &ctx.request_id)
            };
            self.engine
                .serve(session, ctx, &req, &plan, tab.as_ref())
                .await
        }
        .await;
        Self::finish(session, ctx, result).await
    }

    /// Write a request's error, if it has one to write.
    async fn finish(
        session: &mut Session,
        ctx: &mut RequestLog,
        result: std::result::Result<(), GatewayError>,
    ) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            // Never a clean end: Pingora drops the connection (see `fail_to_proxy`).
            Err(GatewayError::AnswerCut) => pingora_error::Error::e_explain(
                ANSWER_CUT,
                "a committed answer was cut; the client connection is aborted",
            ),
            Err(e) => Self::write_error(session, ctx, &e).await,
        }
    }

    /// A header-mode request. `Ok(true)`: answered here; `Ok(false)`: a single vetted target
    /// in `ctx.direct`, for Pingora's proxy path.
    async fn header_mode(&self, session: &mut Session, ctx: &mut Ctx, mode: Mode) -> Result<bool> {
        // Counted until Pingora drops the request's context (after `logging`): a single target
        // is still in flight on Pingora's proxy path after this returns.
        ctx.in_flight = Some(Counted::enter(&self.metrics().in_flight));
        match self.admitted(session, &mut ctx.log, false).await {
            Ok(who) => ctx.admitted = who,
            Err(e) => {
                ctx.log.mode = "header";
                Self::write_error(session, &mut ctx.log, &e).await?;
                return Ok(true);
            }
        }
        match mode {
            Mode::Target(url) => {
                ctx.log.mode = "target-url";
                match self.direct(session, url, &ctx.log.key.clone()).await {
                    Ok(d) => {
                        ctx.direct = Some(d);
                        Ok(false)
                    }
                    Err(e) => Self::write_error(session, &mut ctx.log, &e)
                        .await
                        .map(|_| true),
                }
            }
            Mode::Fallbacks(entries) => {
                ctx.log.mode = "fallbacks";
                let r = self.fallback_list(session, ctx, entries).await;
                Self::finish(session, &mut ctx.log, r).await.map(|_| true)
            }
        }
    }
}

/// The API a chain-mode request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

/// A request's state across Pingora's hooks: its log, and a single header-mode target (with
/// its count in the in-flight gauge while Pingora proxies it).
#[derive(Default)]
pub struct Ctx {
    /// What serves this request: the config current when it arrived (a reload does not
    /// change it midway).
    serving: Option<Arc<Serving>>,
    pub log: RequestLog,
    pub direct: Option<Box<Direct>>,
    in_flight: Option<Counted>,
    /// The caller's key and concurrency slot, held as long as the request (gateway keys).
    admitted: Option<keyed::Admitted>,
}

/// A request counted in a gauge for as long as this lives (it owns a handle to the gauge, so
/// it can sit in a `Ctx` as well as in a scope).
struct Counted(prometheus::IntGauge);

impl Counted {
    fn enter(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Counted(g.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Serving {
    /// detour's own routes: the chain endpoint, the model list, health.
    async fn route(&self, session: &mut Session, ctx: &mut RequestLog) -> Result<()> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let route = match path.as_str() {
            "/v1/chat/completions" | "/chat/completions" => "chat",
            "/v1/messages" => "messages",
            "/v1/messages/count_tokens" => "count_tokens",
            "/v1/models" | "/models" => "models",
            "/health" | "/v1/health" => "health",
            _ => "",
        };
        match (route, method.as_str()) {
            ("chat", "POST") => self.chat(session, ctx, Api::Chat).await,
            ("messages", "POST") => {
                messages::activate(session, "");
                self.chat(session, ctx, Api::Messages).await
            }
            ("count_tokens", "POST") => {
                messages::activate(session, "");
                self.chat(session, ctx, Api::CountTokens).await
            }
            ("models", "GET") => {
                ctx.status = 200;
                Self::write_json(session, 200, self.models_json.clone(), &ctx.request_id).await
            }
            ("health", "GET") => {
                ctx.status = 200;
                let b = Bytes::from_static(br#"{"status":"ok"}"#);
                Self::write_json(session, 200, b, &ctx.request_id).await
            }
            ("", _) => {
                let e = GatewayError::NotFound { path };
                Self::write_error(session, ctx, &e).await
            }
            (_, m) => {
                let e = GatewayError::MethodNotAllowed {
                    method: m.to_string(),
                    path,
                };
                Self::write_error(session, ctx, &e).await
            }
        }
    }

    /// A single header-mode target failed before its response: the all-failed error listing
    /// it (504 for a time-out), unless something was already written.
    async fn direct_failed(
        &self,
        session: &mut Session,
        e: &pingora_error::Error,
        ctx: &mut Ctx,
    ) -> pingora_proxy::FailToProxy {
        use pingora_error::ErrorType;
        let written = session
            .response_written()
            .is_some_and(|h| !h.status.is_informational());
        let why = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => "connect timed out",
            ErrorType::ReadTimedout => "no response in time",
            ErrorType::ConnectRefused => "connection refused",
            t => t.as_str(),
        };
        if written {
            ctx.log.post_commit_error = Some(format!("the target failed mid-answer: {why}"));
        } else {
            self.log_direct(ctx, None, Some(why.to_string()));
            let timeout = matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ReadTimedout
                    | ErrorType::TLSHandshakeTimedout
            );
            let err = GatewayError::AllFailed {
                status: if timeout { 504 } else { 502 },
                attempts: ctx.log.reports(),
            };
            let _ = Self::write_error(session, &mut ctx.log, &err).await;
        }
        pingora_proxy::FailToProxy {
            error_code: if written { 0 } else { ctx.log.status },
            can_reuse_downstream: false,
        }
    }
}

/// `GET /v1/models`: the catalog, in OpenAI's list shape, with detour's facts per model.
fn models_list(gw: &Gateway) -> Bytes {
    let price = |p: Option<crate::catalog::Price>| {
        p.map(|p| serde_json::json!({"input_per_mtok": p.input, "output_per_mtok": p.output}))
    };
    let data: Vec<serde_json::Value> = gw
        .catalog
        .names
        .iter()
        .filter_map(|name| gw.catalog.models.get(name).map(|m| (name, m)))
        .map(|(name, m)| {
            let routes: Vec<serde_json::Value> = m
                .routes
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "provider": gw.providers[r.provider].name,
                        "id": r.id,
                        "context_window": r.context_window,
                        "max_output_tokens": r.max_output_tokens,
                        "price": price(r.price),
                        "capabilities": r.capabilities.names(),
                    })
                })
                .collect();
            let owner = m
                .routes
                .first()
                .map(|r| gw.providers[r.provider].name.as_str())
                .unwrap_or("detour");
            serde_json::json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": owner,
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "price": price(m.price),
                "capabilities": m.capabilities.map(|c| c.names()),
                "providers": routes.iter().map(|r| r["provider"].clone()).collect::<Vec<_>>(),
                "routes": routes,
            })
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default(),
    )
}

/// One JSON line per request on stderr. Holds no header or body content from the client:
/// only the request id, the planned sources (catalog or pinned model names) and outcomes.
fn access_log(gw: &Gateway, ctx: &RequestLog, elapsed: Duration) {
    use std::io::Write;
    let attempts: Vec<serde_json::Value> = ctx
        .attempts
        .iter()
        .map(|a| {
            serde_json::json!({
                "provider": match &a.via {
                    Via::Provider(p) => gw.providers[*p].name.as_str(),
                    Via::Url(label) => label.as_str(),
                },
                "source": crate::api::truncate(&a.source, 160),
                "outcome": a.outcome,
                "status": a.status,
                "ms": crate::records::ms(a.duration),
                "error": a.error,
            })
        })
        .collect();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let line = serde_json::json!({
        "ts": (ts * 1e3).round() / 1e3,
        "log": "access",
        "request_id": ctx.request_id,
        "mode": ctx.mode,
        "key": (!ctx.key.is_empty()).then_some(ctx.key.as_str()),
        "status": ctx.status,
        "outcome": ctx.outcome,
        "stream": ctx.stream,
        "ms": crate::records::ms(elapsed),
        "attempts": attempts,
        "post_commit_error": ctx.post_commit_error,
    });
    if let Ok(mut v) = serde_json::to_vec(&line) {
        v.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&v);
    }
}
