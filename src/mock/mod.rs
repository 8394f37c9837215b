//! `detour mock`: a fault-injecting mock provider that speaks OpenAI's chat completions API,
//! Anthropic's Messages API, Gemini's and Bedrock's (Vertex paths too).
//!
//! It exists so that detour can be tried, tested and benchmarked without keys or internet.
//! A minimal HTTP/1.1 server on tokio (keep-alive, Content-Length request bodies) so that every
//! fault is exact: a status, a delay before the header, a hang, a TCP reset before the header or
//! in the middle of a stream, a stall mid-stream, a JSON body cut short.
//!
//! `server.rs` reads requests (bounded: a head of at most 64 KiB, a body of at most 64 MiB) and
//! routes them; `faults.rs` turns the config and the request's `x-mock-*` headers into what this
//! answer does; `openai.rs`, `anthropic.rs`, `gemini.rs` and `bedrock.rs` write each dialect's
//! errors, answers and stream events with `serde_json`. Stream events are made one at a time as
//! the socket takes them, so a slow reader holds the mock back instead of growing its memory.
//!
//! Behaviour is set per server ([`MockConfig`], CLI flags) and can be overridden per request with
//! headers: `x-mock-status`, `x-mock-delay-ms`, `x-mock-fault`, `x-mock-fault-after`,
//! `x-mock-chunks`, `x-mock-chunk-interval-ms`, `x-mock-first-token-delay-ms`,
//! `x-mock-retry-after`, `x-mock-error-code`. A running in-process mock's status can be changed
//! at any time ([`MockServer::set_status`]), and `healthy_after` turns it healthy after N calls:
//! together they make a flapping provider.

mod anthropic;
mod bedrock;
mod faults;
mod gemini;
mod openai;
mod server;

pub use server::serve;

use bytes::Bytes;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

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
    /// `POST …/model/{modelId}/invoke` / `/invoke-with-response-stream`: Claude on Bedrock,
    /// Anthropic's answers (streams: its events in `chunk` frames)
    BedrockInvoke,
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
