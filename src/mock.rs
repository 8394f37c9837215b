//! `detour mock`: a fault-injecting mock provider that speaks OpenAI's chat completions API.
//!
//! It exists so that detour can be tried, tested and benchmarked without keys or internet.
//! A minimal HTTP/1.1 server on tokio (keep-alive, Content-Length request bodies) so that every
//! fault is exact: a status, a delay before the header, a hang, a TCP reset before the header or
//! in the middle of a stream, a stall mid-stream, a JSON body cut short.
//!
//! Behaviour is set per server ([`MockConfig`], CLI flags) and can be overridden per request with
//! headers: `x-mock-status`, `x-mock-delay-ms`, `x-mock-fault`, `x-mock-fault-after`,
//! `x-mock-chunks`, `x-mock-chunk-interval-ms`, `x-mock-first-token-delay-ms`,
//! `x-mock-retry-after`, `x-mock-error-code`. A running in-process mock's status can be changed
//! at any time ([`MockServer::set_status`]), and `healthy_after` turns it healthy after N calls:
//! together they make a flapping provider.

use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fault the mock injects instead of (or in the middle of) a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Read the request, never answer.
    Hang,
    /// TCP reset before any byte of the response.
    Reset,
    /// Streams: send the header and `fault_after` chunks, then reset.
    ResetMidStream,
    /// Streams: send the header and `fault_after` chunks, then go silent.
    StallMidStream,
    /// JSON: announce the full Content-Length, send half the body, close.
    CloseMidBody,
    /// Streams: status 200, `fault_after` events, then an error event (Anthropic:
    /// `event: error` with `overloaded_error`), and a clean end.
    ErrorInStream,
    /// Streams: `fault_after` events, then an event whose data is not JSON, then the rest.
    BadEvent,
    /// Streams: the whole answer with its finish, but no `[DONE]`; a clean end.
    NoDone,
    /// Streams: `fault_after` events, then a clean end (chunked terminator): cut short
    /// without any error at the HTTP level.
    EndEarly,
}

/// Which provider API the mock speaks, chosen by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST …/chat/completions`
    OpenAi,
    /// `POST …/v1/messages` (Anthropic Messages API)
    Anthropic,
    /// `POST …/models/{model}:generateContent` / `:streamGenerateContent` (Gemini)
    Gemini,
    /// `POST …/model/{modelId}/converse` / `/converse-stream` (Bedrock; streams in the binary
    /// AWS event-stream framing)
    Bedrock,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Fault::None,
            "hang" => Fault::Hang,
            "reset" => Fault::Reset,
            "reset-mid-stream" => Fault::ResetMidStream,
            "stall-mid-stream" => Fault::StallMidStream,
            "close-mid-body" => Fault::CloseMidBody,
            "error-in-stream" => Fault::ErrorInStream,
            "bad-event" => Fault::BadEvent,
            "no-done" => Fault::NoDone,
            "end-early" => Fault::EndEarly,
            _ => return Err(format!("unknown fault `{s}` (none, hang, reset, reset-mid-stream, stall-mid-stream, close-mid-body, error-in-stream, bad-event, no-done, end-early)")),
        })
    }
}

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Shown in the answer: "Hello from {name}".
    pub name: String,
    /// Status of every answer; non-2xx answers carry an OpenAI error body.
    pub status: u16,
    /// Wait before the response header.
    pub delay: Duration,
    pub fault: Fault,
    /// Chunks sent before a mid-stream fault.
    pub fault_after: usize,
    /// Content chunks in a stream.
    pub chunks: usize,
    pub chunk_interval: Duration,
    /// Keep the requests (headers and body) for tests to inspect.
    pub record: bool,
    /// `expires_in` of the access tokens the mock's OAuth endpoint (`POST …/token`) issues.
    pub token_lifetime_secs: u64,
    /// Streams: wait this long after the header and role event before the first content.
    pub first_token_delay: Duration,
    /// Sent as `Retry-After` (and, with `ms` appended, as `retry-after-ms`) on error answers.
    pub retry_after: Option<String>,
    /// Error answers carry this `code` and the provider's matching message
    /// (`context_length_exceeded`, `content_policy_violation`).
    pub error_code: Option<String>,
    /// After this many calls the server answers 200 without faults.
    pub healthy_after: Option<usize>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".into(),
            status: 200,
            delay: Duration::ZERO,
            fault: Fault::None,
            fault_after: 2,
            chunks: 5,
            chunk_interval: Duration::ZERO,
            record: true,
            token_lifetime_secs: 3600,
            first_token_delay: Duration::ZERO,
            retry_after: None,
            error_code: None,
            healthy_after: None,
        }
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a running mock has seen.
#[derive(Debug, Default)]
pub struct MockStats {
    /// Requests received (fully read), whatever was answered.
    pub calls: AtomicUsize,
    /// Answers whose client went away first: a stream it could not finish writing, or a
    /// hanging request whose connection the client closed.
    pub aborted: AtomicUsize,
    /// Streams and JSON answers written to the end.
    pub completed: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// Access tokens issued by `POST …/token`.
    pub tokens: AtomicUsize,
    /// A status set at run time (0: none) that overrides the configured one.
    pub status_override: std::sync::atomic::AtomicU16,

    pub requests: Mutex<Vec<RecordedRequest>>,
}

/// A mock bound to a port, serving on the current tokio runtime.
pub struct MockServer {
    pub addr: SocketAddr,
    pub stats: Arc<MockStats>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Bind `addr` (use `127.0.0.1:0` for a free port) and serve in a background task.
    pub async fn start(addr: &str, cfg: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(MockStats::default());
        let task = tokio::spawn(serve(listener, Arc::new(cfg), stats.clone()));
        Ok(MockServer { addr, stats, task })
    }

    /// Access tokens the mock's token endpoint issued.
    pub fn tokens(&self) -> usize {
        self.stats.tokens.load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> usize {
        self.stats.calls.load(Ordering::SeqCst)
    }

    /// Answer every request from now on with `status` (200: healthy, faults off).
    pub fn set_status(&self, status: u16) {
        self.stats.status_override.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.stats
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT/v1`, for a provider's base-url.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accept connections forever.
pub async fn serve(listener: TcpListener, cfg: Arc<MockConfig>, stats: Arc<MockStats>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(sock, cfg.clone(), stats.clone()));
    }
}

struct Parsed {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    header_len: usize,
    content_length: usize,
}

fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, ()> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut content_length = 0;
            let mut headers = Vec::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                let v = String::from_utf8_lossy(h.value).into_owned();
                if h.name.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().map_err(|_| ())?;
                }
                headers.push((h.name.to_ascii_lowercase(), v));
            }
            Ok(Some(Parsed {
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("").to_string(),
                headers,
                header_len: n,
                content_length,
            }))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The effective behaviour of one request: the server's, with header overrides.
struct Plan {
    status: u16,
    delay: Duration,
    fault: Fault,
    fault_after: usize,
    chunks: usize,
    chunk_interval: Duration,
    first_token_delay: Duration,
    retry_after: Option<String>,
    error_code: Option<String>,
    /// The request asked for `stream_options.include_usage` (OpenAI streams end with usage).
    include_usage: bool,
}

fn plan_for(cfg: &MockConfig, headers: &[(String, String)]) -> Plan {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.trim());
    Plan {
        first_token_delay: get("x-mock-first-token-delay-ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(cfg.first_token_delay),
        retry_after: get("x-mock-retry-after")
            .map(str::to_string)
            .or_else(|| cfg.retry_after.clone()),
        error_code: get("x-mock-error-code")
            .map(str::to_string)
            .or_else(|| cfg.error_code.clone()),
        status: get("x-mock-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.status),
        delay: get("x-mock-delay-ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(cfg.delay),
        fault: get("x-mock-fault")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.fault),
        fault_after: get("x-mock-fault-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.fault_after),
        chunks: get("x-mock-chunks")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.chunks),
        chunk_interval: get("x-mock-chunk-interval-ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(cfg.chunk_interval),
        include_usage: false,
    }
}

async fn connection(mut sock: TcpStream, cfg: Arc<MockConfig>, stats: Arc<MockStats>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // Read one request head.
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(()) => {
                    let _ = sock
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let total = head.header_len + head.content_length;
        while buf.len() < total {
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let req = buf.split_to(total).freeze();
        let body = req.slice(head.header_len..);
        let n = stats.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut plan = plan_for(&cfg, &head.headers);
        let forced = stats.status_override.load(Ordering::SeqCst);
        if cfg.healthy_after.is_some_and(|h| n > h) || forced == 200 {
            plan.status = 200;
            plan.fault = Fault::None;
            plan.delay = Duration::ZERO;
        } else if forced != 0 {
            plan.status = forced;
        }
        // Vertex paths want an access token from this mock's own token endpoint.
        if head.path.contains("/publishers/")
            && !head.headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("authorization") && v.starts_with("Bearer ya29.mock-")
            })
        {
            plan.status = 401;
        }
        let model = model_of(&body);
        let (stream, include_usage) = stream_of(&body);
        plan.include_usage = include_usage;
        let (method, path) = (head.method.clone(), head.path.clone());
        let body_for_token = body.clone();
        if cfg.record {
            if let Ok(mut r) = stats.requests.lock() {
                r.push(RecordedRequest {
                    method: head.method,
                    path: head.path,
                    headers: head.headers,
                    body,
                });
            }
        }
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        let keep = match (method.as_str(), path.split('?').next().unwrap_or("")) {
            ("POST", p) if p.ends_with("/chat/completions") => {
                match answer(sock, &cfg, &stats, &plan, &model, stream, Dialect::OpenAi).await {
                    Some(s) => {
                        sock = s;
                        continue;
                    }
                    None => return,
                }
            }
            ("POST", p)
                if p.ends_with(":generateContent") || p.ends_with(":streamGenerateContent") =>
            {
                let model = model_in_path(p, "gemini");
                let stream = p.ends_with(":streamGenerateContent");
                match answer(sock, &cfg, &stats, &plan, &model, stream, Dialect::Gemini).await {
                    Some(s) => {
                        sock = s;
                        continue;
                    }
                    None => return,
                }
            }
            ("POST", p) if p.ends_with("/converse") || p.ends_with("/converse-stream") => {
                let stream = p.ends_with("/converse-stream");
                let model = p
                    .rsplit_once("/model/")
                    .and_then(|(_, rest)| rest.rsplit_once('/'))
                    .map(|(id, _)| percent_decode(id))
                    .unwrap_or_else(|| "bedrock".into());
                match answer(sock, &cfg, &stats, &plan, &model, stream, Dialect::Bedrock).await {
                    Some(s) => {
                        sock = s;
                        continue;
                    }
                    None => return,
                }
            }
            ("POST", p) if p.ends_with(":rawPredict") || p.ends_with(":streamRawPredict") => {
                // Claude on Vertex: Anthropic's API, the model and streaming named by the URL.
                let stream = p.ends_with(":streamRawPredict");
                let model = model_in_path(p, "claude");
                match answer(sock, &cfg, &stats, &plan, &model, stream, Dialect::Anthropic).await {
                    Some(s) => {
                        sock = s;
                        continue;
                    }
                    None => return,
                }
            }
            ("POST", p) if p.ends_with("/token") => {
                // An OAuth2 token endpoint (JWT bearer grant), as Google's.
                let n = stats.tokens.fetch_add(1, Ordering::SeqCst) + 1;
                let form = String::from_utf8_lossy(&body_for_token);
                let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
                let (status, b) = if !form.contains(grant) || !form.contains("assertion=") {
                    (400, "{\"error\":\"unsupported_grant_type\",\"error_description\":\"Invalid grant_type.\"}".to_string())
                } else if plan.status != 200 {
                    (plan.status, "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT Signature.\"}".to_string())
                } else {
                    (200, format!(
                        "{{\"access_token\":\"ya29.mock-{n}\",\"expires_in\":{},\"token_type\":\"Bearer\"}}",
                        cfg.token_lifetime_secs
                    ))
                };
                write_json(&mut sock, status, b.as_bytes()).await
            }
            ("POST", p) if p.ends_with("/messages") => {
                match answer(sock, &cfg, &stats, &plan, &model, stream, Dialect::Anthropic).await {
                    Some(s) => {
                        sock = s;
                        continue;
                    }
                    None => return,
                }
            }
            ("GET", p) if p.ends_with("/models") => {
                let b = format!(
                    "{{\"object\":\"list\",\"data\":[{{\"id\":\"mock-model\",\"object\":\"model\",\"owned_by\":\"{}\"}}]}}",
                    cfg.name
                );
                write_json(&mut sock, 200, b.as_bytes()).await
            }
            _ => {
                write_json(
                    &mut sock,
                    404,
                    br#"{"error":{"message":"Unknown request URL","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#,
                )
                .await
            }
        };
        if !keep {
            return;
        }
    }
}

/// The model of a `…/models/{model}:{method}` path (Gemini, Vertex).
fn model_in_path(path: &str, default: &str) -> String {
    path.rsplit('/')
        .next()
        .and_then(|m| m.split(':').next())
        .unwrap_or(default)
        .to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn model_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        #[serde(default)]
        model: Option<String>,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_else(|| "unknown".into())
}

/// `stream`, and `stream_options.include_usage`.
fn stream_of(body: &[u8]) -> (bool, bool) {
    #[derive(serde::Deserialize)]
    struct Opts {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    #[derive(serde::Deserialize)]
    struct S {
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        stream_options: Option<Opts>,
    }
    serde_json::from_slice::<S>(body).map_or((false, false), |s| {
        (
            s.stream.unwrap_or(false),
            s.stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        )
    })
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

async fn write_json(sock: &mut TcpStream, status: u16, body: &[u8]) -> bool {
    write_json_with(sock, status, "", body).await
}

/// A JSON answer with `extra` header lines (each ending in `\r\n`).
async fn write_json_with(sock: &mut TcpStream, status: u16, extra: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    sock.write_all(&out).await.is_ok()
}

fn reset(sock: TcpStream) {
    // SO_LINGER 0 makes close() send RST instead of FIN.
    #[allow(deprecated)]
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

/// Answer one chat completion; gives the socket back when the connection stays open.
async fn answer(
    mut sock: TcpStream,
    cfg: &MockConfig,
    stats: &MockStats,
    plan: &Plan,
    model: &str,
    stream: bool,
    dialect: Dialect,
) -> Option<TcpStream> {
    match plan.fault {
        Fault::Hang => {
            // Wait until the client gives up (EOF or error), never answering.
            let mut b = [0u8; 1024];
            while let Ok(n) = sock.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
            stats.aborted.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Fault::Reset => {
            reset(sock);
            return None;
        }
        _ => {}
    }
    if !(200..300).contains(&plan.status) {
        let coded = match plan.error_code.as_deref() {
            Some("context_length_exceeded") => Some(match dialect {
                Dialect::Anthropic => "prompt is too long: 215000 tokens > 200000 maximum",
                _ => "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            }),
            Some("content_policy_violation") => {
                Some("Your request was rejected as a result of our safety system.")
            }
            _ => None,
        };
        let (msg, kind) = match plan.status {
            _ if coded.is_some() => (coded.unwrap_or_default(), "invalid_request_error"),
            429 => ("Rate limit exceeded", "rate_limit_error"),
            401 => ("Incorrect API key provided", "invalid_request_error"),
            400 => ("Invalid request from mock", "invalid_request_error"),
            s if s >= 500 => (
                "The server had an error while processing your request",
                "server_error",
            ),
            _ => ("Mock error", "invalid_request_error"),
        };
        let code = plan
            .error_code
            .as_deref()
            .map_or("null".to_string(), |c| format!("\"{c}\""));
        let extra =
            plan.retry_after
                .as_deref()
                .map_or(String::new(), |ra| match ra.strip_suffix("ms") {
                    Some(ms) => format!("retry-after-ms: {ms}\r\n"),
                    None => format!("retry-after: {ra}\r\n"),
                });
        let body = match dialect {
            Dialect::OpenAi => format!(
                "{{\"error\":{{\"message\":\"{msg} ({})\",\"type\":\"{kind}\",\"param\":null,\"code\":{code}}}}}",
                cfg.name
            ),
            Dialect::Gemini => {
                let status = match plan.status {
                    429 => "RESOURCE_EXHAUSTED",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    503 => "UNAVAILABLE",
                    s if s >= 500 => "INTERNAL",
                    _ => "INVALID_ARGUMENT",
                };
                format!(
                    "{{\"error\":{{\"code\":{},\"message\":\"{msg} ({})\",\"status\":\"{status}\"}}}}",
                    plan.status, cfg.name
                )
            }
            Dialect::Anthropic => {
                let kind = match plan.status {
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    401 => "authentication_error",
                    s if s >= 500 => "api_error",
                    _ => "invalid_request_error",
                };
                format!(
                    "{{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"{msg} ({})\"}}}}",
                    cfg.name
                )
            }
            Dialect::Bedrock => {
                let kind = match plan.status {
                    429 => "ThrottlingException",
                    403 => "AccessDeniedException",
                    404 => "ResourceNotFoundException",
                    408 => "ModelTimeoutException",
                    503 => "ServiceUnavailableException",
                    s if s >= 500 => "InternalServerException",
                    _ => "ValidationException",
                };
                let body = format!("{{\"message\":\"{msg} ({})\"}}", cfg.name);
                let extra = format!("{extra}x-amzn-errortype: {kind}:http://internal.amazon.com/coral/com.amazon.bedrock/\r\n");
                return write_json_with(&mut sock, plan.status, &extra, body.as_bytes())
                    .await
                    .then_some(sock);
            }
        };
        return write_json_with(&mut sock, plan.status, &extra, body.as_bytes())
            .await
            .then_some(sock);
    }
    let id = format!("chatcmpl-{}", cfg.name);
    let model_json = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".into());
    if !stream {
        let content = format!("Hello from {}", cfg.name);
        let body = if dialect == Dialect::Gemini {
            format!(
                "{{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{content}\"}}]}},\"finishReason\":\"STOP\",\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":3,\"totalTokenCount\":12}},\"modelVersion\":{model_json},\"responseId\":\"{}\"}}",
                cfg.name
            )
        } else if dialect == Dialect::Bedrock {
            format!(
                "{{\"output\":{{\"message\":{{\"role\":\"assistant\",\"content\":[{{\"text\":\"{content}\"}}]}}}},\"stopReason\":\"end_turn\",\"usage\":{{\"inputTokens\":9,\"outputTokens\":3,\"totalTokens\":12}},\"metrics\":{{\"latencyMs\":1}}}}"
            )
        } else if dialect == Dialect::Anthropic {
            format!(
                "{{\"id\":\"msg_{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{model_json},\"content\":[{{\"type\":\"text\",\"text\":\"{content}\"}}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{{\"input_tokens\":9,\"output_tokens\":3}}}}",
                cfg.name
            )
        } else {
            format!(
            "{{\"id\":\"{id}\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":{model_json},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}}}"
            )
        };
        if plan.fault == Fault::CloseMidBody {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body.as_bytes()[..body.len() / 2]).await;
            let _ = sock.flush().await;
            return None;
        }
        let ok = write_json(&mut sock, 200, body.as_bytes()).await;
        if ok {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        return ok.then_some(sock);
    }
    let head = if dialect == Dialect::Bedrock {
        "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\ntransfer-encoding: chunked\r\n\r\n"
    } else {
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    };
    let chunk_of = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model_json},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let word = |i: usize| {
        if i == 0 {
            format!("Hello from {}", cfg.name)
        } else {
            format!(" tok{i}")
        }
    };
    let mut events: Vec<Vec<u8>> = Vec::with_capacity(plan.chunks + 6);
    let mut text_events: Vec<String> = Vec::with_capacity(plan.chunks + 6);
    match dialect {
        Dialect::Bedrock => {
            use crate::providers::bedrock::frame;
            use serde_json::json;
            // Real streams pad events with a "p" field; the translator must ignore it.
            events.push(frame(
                "messageStart",
                &json!({"role": "assistant", "p": "abcdefgh"}),
            ));
            for i in 0..plan.chunks {
                events.push(frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": word(i)}, "p": "abc"}),
                ));
            }
            events.push(frame("contentBlockStop", &json!({"contentBlockIndex": 0})));
            events.push(frame("messageStop", &json!({"stopReason": "end_turn"})));
            events.push(frame(
                "metadata",
                &json!({"usage": {"inputTokens": 9, "outputTokens": plan.chunks, "totalTokens": 9 + plan.chunks},
                        "metrics": {"latencyMs": 1}}),
            ));
        }
        Dialect::OpenAi => {
            text_events.push(chunk_of(r#"{"role":"assistant","content":""}"#, "null"));
            for i in 0..plan.chunks {
                text_events.push(chunk_of(
                    &format!("{{\"content\":\"{}\"}}", word(i)),
                    "null",
                ));
            }
            text_events.push(chunk_of("{}", "\"stop\""));
            if plan.include_usage {
                text_events.push(format!(
                    "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model_json},\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                    plan.chunks,
                    9 + plan.chunks
                ));
            }
            text_events.push("data: [DONE]\n\n".to_string());
        }
        Dialect::Gemini => {
            for i in 0..plan.chunks {
                let last = i + 1 == plan.chunks;
                let tail = if last {
                    format!(",\"finishReason\":\"STOP\",\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":9,\"candidatesTokenCount\":{},\"totalTokenCount\":{}}}", plan.chunks, 9 + plan.chunks)
                } else {
                    ",\"index\":0}]".to_string()
                };
                text_events.push(format!(
                    "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{}\"}}]}}{tail},\"modelVersion\":{model_json}}}\r\n\r\n",
                    word(i)
                ));
            }
        }
        Dialect::Anthropic => {
            let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
            text_events.push(ev("message_start", format!("{{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_{}\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":{model_json},\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":9,\"output_tokens\":1}}}}}}", cfg.name)));
            text_events.push(ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into()));
            text_events.push(ev("ping", r#"{"type": "ping"}"#.into()));
            for i in 0..plan.chunks {
                text_events.push(ev("content_block_delta", format!("{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}", word(i))));
            }
            text_events.push(ev(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#.into(),
            ));
            text_events.push(ev("message_delta", format!("{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{}}}}}", plan.chunks)));
            text_events.push(ev("message_stop", r#"{"type":"message_stop"}"#.into()));
        }
    }
    events.extend(text_events.into_iter().map(String::into_bytes));
    match plan.fault {
        Fault::BadEvent => {
            let at = plan.fault_after.min(events.len());
            events.insert(
                at,
                b"data: {\"choices\":[{\"delta\":{\"content\n\n".to_vec(),
            );
        }
        Fault::NoDone if dialect == Dialect::OpenAi => {
            events.pop();
        }
        Fault::EndEarly => events.truncate(plan.fault_after.min(events.len())),
        _ => {}
    }
    if plan.fault == Fault::ErrorInStream {
        let at = plan.fault_after.min(events.len());
        events.truncate(at);
        events.push(match dialect {
            Dialect::Anthropic => b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_vec(),
            Dialect::OpenAi => b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\"}}\n\n".to_vec(),
            Dialect::Gemini => b"data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n".to_vec(),
            Dialect::Bedrock => crate::providers::bedrock::exception_frame(
                "serviceUnavailableException",
                "Bedrock is unable to process your request.",
            ),
        });
    }
    let mut first = true;
    if plan.fault_after == 0 && matches!(plan.fault, Fault::ResetMidStream | Fault::StallMidStream)
    {
        // The header alone, so that the fault hits after the status but before any event.
        if sock.write_all(head.as_bytes()).await.is_err() {
            return None;
        }
        first = false;
    }
    // The first event with content: after the role event (OpenAI), the block start and ping
    // (Anthropic), the message start (Bedrock); Gemini's first event has content.
    let first_content = match dialect {
        Dialect::OpenAi | Dialect::Bedrock => 1,
        Dialect::Anthropic => 3,
        Dialect::Gemini => 0,
    };
    for (i, ev) in events.iter().enumerate() {
        if i > 0 && !plan.chunk_interval.is_zero() {
            tokio::time::sleep(plan.chunk_interval).await;
        }
        if i == first_content && !plan.first_token_delay.is_zero() {
            if first {
                // The header goes first, so the delay is the first token's, not the header's.
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return None;
                }
                first = false;
            }
            let _ = sock.flush().await;
            tokio::time::sleep(plan.first_token_delay).await;
        }
        if i == plan.fault_after {
            match plan.fault {
                Fault::ResetMidStream => {
                    reset(sock);
                    return None;
                }
                Fault::StallMidStream => {
                    let mut b = [0u8; 64];
                    while let Ok(n) = sock.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                    }
                    stats.aborted.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                _ => {}
            }
        }
        let mut out = Vec::with_capacity(ev.len() + 140);
        if first {
            out.extend_from_slice(head.as_bytes());
            first = false;
        }
        out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        out.extend_from_slice(ev);
        out.extend_from_slice(b"\r\n");
        if i + 1 == events.len() {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if sock.write_all(&out).await.is_err() {
            stats.aborted.fetch_add(1, Ordering::SeqCst);
            return None;
        }
    }
    stats.completed.fetch_add(1, Ordering::Relaxed);
    Some(sock)
}
