//! What one answer does: the server's config with the request's `x-mock-*` overrides, and the
//! answer written with its fault — an error status, a hang, a reset, a body cut short, or a
//! stream with an event inserted, cut, stalled or ended early.

use super::server::{head, reset, write_json, write_json_with};
use super::{anthropic, bedrock, gemini, openai};
use super::{Dialect, Fault, MockConfig, MockStats};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The effective behaviour of one request: the server's, with header overrides.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub status: u16,
    pub delay: Duration,
    pub fault: Fault,
    pub fault_after: usize,
    pub chunks: usize,
    pub chunk_interval: Duration,
    pub first_token_delay: Duration,
    pub retry_after: Option<String>,
    pub error_code: Option<String>,
    /// The request body asked for a stream (`"stream": true`).
    pub stream: bool,
    /// The request asked for `stream_options.include_usage` (OpenAI streams end with usage).
    pub include_usage: bool,
    /// What the answer says: text, a cut at `max_tokens: 1`, or a call to the request's tool.
    pub reply: Reply,
}

/// What an answer says, read from an OpenAI or Anthropic request body (other dialects: text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// `Hello from {name}` and more words, ended by the model.
    Text,
    /// The request's `max_tokens` is 1: one word, stopped by the limit.
    Length,
    /// The request offers tools and its last message is not a tool's result: a call to its
    /// first tool, with `{"city":"Paris"}`.
    Tool(String),
}

impl Reply {
    fn of(body: &[u8]) -> Reply {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Reply::Text;
        };
        let tool = v["tools"][0]["name"]
            .as_str()
            .or_else(|| v["tools"][0]["function"]["name"].as_str());
        let last = v["messages"].as_array().and_then(|m| m.last());
        let answered = last.is_some_and(|m| {
            m["role"] == "tool"
                || m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
        });
        match tool {
            Some(t) if !answered => return Reply::Tool(t.to_string()),
            _ => {}
        }
        let max = v["max_tokens"]
            .as_u64()
            .or(v["max_completion_tokens"].as_u64());
        if max == Some(1) {
            Reply::Length
        } else {
            Reply::Text
        }
    }
}

/// The plan for the `n`-th request.
pub(super) fn plan_for(
    cfg: &MockConfig,
    stats: &MockStats,
    n: usize,
    headers: &[(String, String)],
    path: &str,
    body: &[u8],
) -> Plan {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let num = |name: &str| get(name).and_then(|v| v.parse::<usize>().ok());
    let ms = |name: &str| {
        get(name)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    let (stream, include_usage) = stream_of(body);
    let mut plan = Plan {
        status: get("x-mock-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.status),
        delay: ms("x-mock-delay-ms").unwrap_or(cfg.delay),
        fault: get("x-mock-fault")
            .and_then(|v| v.parse().ok())
            .unwrap_or(cfg.fault),
        fault_after: num("x-mock-fault-after").unwrap_or(cfg.fault_after),
        chunks: num("x-mock-chunks").unwrap_or(cfg.chunks),
        chunk_interval: ms("x-mock-chunk-interval-ms").unwrap_or(cfg.chunk_interval),
        first_token_delay: ms("x-mock-first-token-delay-ms").unwrap_or(cfg.first_token_delay),
        retry_after: get("x-mock-retry-after")
            .map(str::to_string)
            .or_else(|| cfg.retry_after.clone()),
        error_code: get("x-mock-error-code")
            .map(str::to_string)
            .or_else(|| cfg.error_code.clone()),
        stream,
        include_usage,
        reply: Reply::of(body),
    };
    if plan.reply != Reply::Text {
        plan.chunks = 1;
    }
    let forced = stats.status_override.load(Ordering::SeqCst);
    if cfg.healthy_after.is_some_and(|h| n > h) || forced == 200 {
        plan.status = 200;
        plan.fault = Fault::None;
        plan.delay = Duration::ZERO;
    } else if forced != 0 {
        plan.status = forced;
    }
    // Vertex paths want an access token from this mock's own token endpoint.
    let vertex_token = headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("Bearer ya29.mock-"));
    if path.contains("/publishers/") && !vertex_token {
        plan.status = 401;
    }
    // A key that says it is bad is refused, as a provider refuses a revoked key.
    let bad_key = headers.iter().any(|(k, v)| {
        matches!(
            k.as_str(),
            "authorization" | "x-api-key" | "api-key" | "x-goog-api-key"
        ) && v.contains("rejected")
    });
    if bad_key {
        plan.status = 401;
    }
    plan
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
        let usage = s.stream_options.and_then(|o| o.include_usage);
        (s.stream.unwrap_or(false), usage.unwrap_or(false))
    })
}

/// What an answer is about: who answers, with which model, how many chunks.
pub(super) struct Answer<'a> {
    pub name: &'a str,
    pub model: &'a str,
    pub chunks: usize,
    pub include_usage: bool,
    pub reply: &'a Reply,
}

impl Answer<'_> {
    /// The text of content chunk `i`.
    pub fn word(&self, i: usize) -> String {
        if i == 0 {
            format!("Hello from {}", self.name)
        } else {
            format!(" tok{i}")
        }
    }

    /// The tool the answer calls, if it calls one.
    pub fn tool(&self) -> Option<&str> {
        match self.reply {
            Reply::Tool(t) => Some(t),
            Reply::Text | Reply::Length => None,
        }
    }

    /// The whole answer's text (JSON answers).
    pub fn content(&self) -> String {
        format!("Hello from {}", self.name)
    }
}

/// The provider's message for an error status (or the configured error code).
fn error_message(plan: &Plan, dialect: Dialect) -> (&'static str, &'static str) {
    match plan.error_code.as_deref() {
        Some("context_length_exceeded") => {
            let m = match dialect {
                Dialect::Anthropic => "prompt is too long: 215000 tokens > 200000 maximum",
                _ => "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            };
            return (m, "invalid_request_error");
        }
        Some("content_policy_violation") => {
            return (
                "Your request was rejected as a result of our safety system.",
                "invalid_request_error",
            )
        }
        _ => {}
    }
    match plan.status {
        429 => ("Rate limit exceeded", "rate_limit_error"),
        401 => ("Incorrect API key provided", "invalid_request_error"),
        400 => ("Invalid request from mock", "invalid_request_error"),
        s if s >= 500 => (
            "The server had an error while processing your request",
            "server_error",
        ),
        _ => ("Mock error", "invalid_request_error"),
    }
}

/// Answer one request; gives the socket back when the connection stays open.
pub(super) async fn answer(
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
            drain(&mut sock).await;
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
        let (msg, kind) = error_message(plan, dialect);
        let msg = format!("{msg} ({})", cfg.name);
        let mut extra = Vec::new();
        if let Some(ra) = plan.retry_after.as_deref() {
            extra.push(match ra.strip_suffix("ms") {
                Some(ms) => ("retry-after-ms".to_string(), ms.to_string()),
                None => ("retry-after".to_string(), ra.to_string()),
            });
        }
        let code = plan.error_code.as_deref();
        let body = match dialect {
            Dialect::OpenAi => openai::error(&msg, kind, code),
            Dialect::Gemini => gemini::error(plan.status, &msg),
            Dialect::Anthropic => anthropic::error(plan.status, &msg),
            Dialect::Bedrock | Dialect::BedrockInvoke => {
                extra.push(bedrock::error_type_header(plan.status));
                bedrock::error(&msg)
            }
        };
        return write_json_with(&mut sock, plan.status, &extra, &body)
            .await
            .then_some(sock);
    }
    let a = Answer {
        name: &cfg.name,
        model,
        chunks: plan.chunks,
        include_usage: plan.include_usage,
        reply: &plan.reply,
    };
    if !stream {
        return json_answer(sock, stats, plan, &a, dialect).await;
    }
    stream_answer(sock, stats, plan, &a, dialect).await
}

async fn json_answer(
    mut sock: TcpStream,
    stats: &MockStats,
    plan: &Plan,
    a: &Answer<'_>,
    dialect: Dialect,
) -> Option<TcpStream> {
    let body = match dialect {
        Dialect::OpenAi => openai::answer(a),
        Dialect::Gemini => gemini::answer(a),
        Dialect::Anthropic | Dialect::BedrockInvoke => anthropic::answer(a),
        Dialect::Bedrock => bedrock::answer(a),
    };
    if plan.fault == Fault::CloseMidBody {
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut out = head(200, "application/json", &[], Some(body.len()));
        out.extend_from_slice(&body[..body.len() / 2]);
        let _ = sock.write_all(&out).await;
        let _ = sock.flush().await;
        return None;
    }
    let ok = write_json(&mut sock, 200, &body).await;
    if ok {
        stats.completed.fetch_add(1, Ordering::Relaxed);
    }
    ok.then_some(sock)
}

/// A stream's events with the plan's fault applied, made one at a time.
struct Events<'a> {
    a: &'a Answer<'a>,
    dialect: Dialect,
    fault: Fault,
    at: usize,
    /// Events of the answer without faults.
    base: usize,
}

impl Events<'_> {
    fn base_event(&self, i: usize) -> Vec<u8> {
        match self.dialect {
            Dialect::OpenAi => openai::event(self.a, i),
            Dialect::Gemini => gemini::event(self.a, i),
            Dialect::Anthropic => anthropic::event(self.a, i),
            Dialect::Bedrock => bedrock::event(self.a, i),
            Dialect::BedrockInvoke => anthropic::invoke_event(self.a, i),
        }
    }

    fn len(&self) -> usize {
        let at = self.at.min(self.base);
        match self.fault {
            Fault::BadEvent => self.base + 1,
            Fault::ErrorInStream => at + 1,
            Fault::EndEarly => at,
            Fault::NoDone if self.dialect == Dialect::OpenAi => self.base - 1,
            _ => self.base,
        }
    }

    fn get(&self, i: usize) -> Vec<u8> {
        let at = self.at.min(self.base);
        match self.fault {
            Fault::BadEvent if i == at => b"data: {\"choices\":[{\"delta\":{\"content\n\n".to_vec(),
            Fault::BadEvent if i > at => self.base_event(i - 1),
            Fault::ErrorInStream if i == at => match self.dialect {
                Dialect::OpenAi => openai::stream_error(),
                Dialect::Gemini => gemini::stream_error(),
                Dialect::Anthropic => anthropic::stream_error(),
                Dialect::Bedrock | Dialect::BedrockInvoke => bedrock::stream_error(),
            },
            _ => self.base_event(i),
        }
    }
}

async fn stream_answer(
    mut sock: TcpStream,
    stats: &MockStats,
    plan: &Plan,
    a: &Answer<'_>,
    dialect: Dialect,
) -> Option<TcpStream> {
    let (content_type, base, first_content) = match dialect {
        Dialect::OpenAi => ("text/event-stream", openai::events(a), 1),
        Dialect::Gemini => ("text/event-stream", gemini::events(a), 0),
        Dialect::Anthropic => ("text/event-stream", anthropic::events(a), 3),
        Dialect::Bedrock => ("application/vnd.amazon.eventstream", bedrock::events(a), 1),
        Dialect::BedrockInvoke => (
            "application/vnd.amazon.eventstream",
            anthropic::events(a),
            3,
        ),
    };
    let extra = [("cache-control".to_string(), "no-cache".to_string())];
    let head = head(200, content_type, &extra, None);
    let events = Events {
        a,
        dialect,
        fault: plan.fault,
        at: plan.fault_after,
        base,
    };
    let n = events.len();
    let mut first = true;
    if plan.fault_after == 0 && matches!(plan.fault, Fault::ResetMidStream | Fault::StallMidStream)
    {
        // The header alone, so that the fault hits after the status but before any event.
        sock.write_all(&head).await.ok()?;
        first = false;
    }
    for i in 0..n {
        if i > 0 && !plan.chunk_interval.is_zero() {
            tokio::time::sleep(plan.chunk_interval).await;
        }
        if i == first_content && !plan.first_token_delay.is_zero() {
            if first {
                // The header goes first, so the delay is the first token's, not the header's.
                sock.write_all(&head).await.ok()?;
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
                    drain(&mut sock).await;
                    stats.aborted.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                _ => {}
            }
        }
        let ev = events.get(i);
        let mut out = Vec::with_capacity(ev.len() + head.len() + 16);
        if first {
            out.extend_from_slice(&head);
            first = false;
        }
        out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        out.extend_from_slice(&ev);
        out.extend_from_slice(b"\r\n");
        if i + 1 == n {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        // One event at a time: a reader that does not keep up holds the mock back here.
        if sock.write_all(&out).await.is_err() {
            stats.aborted.fetch_add(1, Ordering::SeqCst);
            return None;
        }
    }
    if n == 0 {
        let mut out = if first { head } else { Vec::new() };
        out.extend_from_slice(b"0\r\n\r\n");
        sock.write_all(&out).await.ok()?;
    }
    stats.completed.fetch_add(1, Ordering::Relaxed);
    Some(sock)
}

/// Read until the peer closes (or fails).
async fn drain(sock: &mut TcpStream) {
    let mut b = [0u8; 1024];
    while let Ok(n) = sock.read(&mut b).await {
        if n == 0 {
            break;
        }
    }
}
