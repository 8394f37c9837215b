//! OpenAI wire shapes detour accepts and emits: the chat request ([`ChatRequest`], read once),
//! the capabilities a request needs ([`Capabilities`]), and the error JSON ([`GatewayError`]).

pub mod anthropic;
mod caps;
pub mod messages;
pub mod messages_answer;
mod request;

pub use caps::Capabilities;
pub use messages::Native;
pub use request::{ChatRequest, BYTES_PER_TOKEN};

use bytes::Bytes;

/// The API an answer is written in. A client gets its own: an Anthropic-family target's answer
/// to a Messages client is `Anthropic` (passed through, marked so on the client's response
/// header as an extension); every other answer the engine writes is `OpenAi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    OpenAi,
    Anthropic,
}

/// Every error detour itself returns. The client always gets OpenAI-shaped JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// The body is not JSON, or not a JSON object.
    InvalidJson(String),
    /// Well-formed JSON with a missing or wrongly typed field.
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The `model` chain could not be planned (unknown entry, too long, ...).
    InvalidChain(String),
    BodyTooLarge {
        limit: usize,
    },
    NotFound {
        path: String,
    },
    MethodNotAllowed {
        method: String,
        path: String,
    },
    /// Every target failed or was skipped.
    AllFailed {
        status: u16,
        attempts: Vec<AttemptReport>,
    },
    /// The client went away before the answer was complete (never sent: for logs and metrics).
    ClientClosed,
    /// Reading the request from the client failed or timed out.
    ClientRead(String),
    /// Too many request bodies are held at once (`limits.max-total-body-bytes`): try again in
    /// `retry_after` seconds.
    Overloaded {
        retry_after: u64,
    },
    /// A committed non-stream answer was cut: never written, the connection is aborted so
    /// that the client cannot take the partial body for a whole one.
    AnswerCut,
    /// A header-mode header (`Helicone-Target-Url`, `Helicone-Fallbacks`) is malformed or
    /// conflicts with another way of naming targets.
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    /// A header-mode target may not be reached (private address, port, scheme): nothing sent.
    TargetRefused(String),
    /// detour's own rate limit: no fallback, try again in `retry_after` seconds.
    RateLimited {
        message: String,
        retry_after: u64,
    },
    /// No gateway key, or one detour does not accept (unknown, disabled, revoked, expired).
    Unauthorized(String),
    /// The key's balance (with its credit limit) cannot cover a pass-through attempt.
    InsufficientCredits(String),
    /// The store (keys, balances) cannot be reached, and the request needs it.
    StoreUnavailable(String),
}

/// One line of the `attempts` list in the all-failed error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptReport {
    pub source: String,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidJson(_) => 400,
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::InvalidChain(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::AllFailed { status, .. } => *status,
            GatewayError::ClientClosed => 499,
            GatewayError::ClientRead(_) => 400,
            GatewayError::Overloaded { .. } => 503,
            GatewayError::AnswerCut => 502,
            GatewayError::InvalidHeader { .. } => 400,
            GatewayError::TargetRefused(_) => 400,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::InsufficientCredits(_) => 429,
            GatewayError::StoreUnavailable(_) => 503,
        }
    }

    /// The bounded label used for the `outcome` of a request in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_request",
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::InvalidChain(_) => "invalid_request",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NotFound { .. } => "not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::AllFailed { .. } => "all_failed",
            GatewayError::ClientClosed => "client_closed",
            GatewayError::ClientRead(_) => "client_read_error",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::AnswerCut => "stream_error",
            GatewayError::InvalidHeader { .. } => "invalid_request",
            GatewayError::TargetRefused(_) => "target_refused",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::InsufficientCredits(_) => "insufficient_credits",
            GatewayError::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// The JSON body `{"error":{...}}`.
    pub fn to_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Envelope<'a, T: serde::Serialize> {
            error: &'a T,
        }
        #[derive(serde::Serialize)]
        struct AllFailedBody<'a> {
            message: &'static str,
            #[serde(rename = "type")]
            kind: &'static str,
            attempts: &'a [AttemptReport],
        }
        #[derive(serde::Serialize)]
        struct Plain<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            param: Option<&'static str>,
            code: &'static str,
        }
        let out = match self {
            GatewayError::AllFailed { attempts, .. } => serde_json::to_vec(&Envelope {
                error: &AllFailedBody {
                    message: "All fallback attempts failed",
                    kind: "all_attempts_failed",
                    attempts,
                },
            }),
            other => {
                let (message, param, code) = other.plain_parts();
                let kind = match other {
                    GatewayError::ClientClosed => "client_closed",
                    GatewayError::Overloaded { .. } | GatewayError::AnswerCut => "server_error",
                    GatewayError::RateLimited { .. } => "rate_limited",
                    GatewayError::InsufficientCredits(_) => "insufficient_credits",
                    GatewayError::StoreUnavailable(_) => "store_unavailable",
                    GatewayError::Unauthorized(_) => "authentication_error",
                    _ => "invalid_request_error",
                };
                serde_json::to_vec(&Envelope {
                    error: &Plain {
                        message: &message,
                        kind,
                        param,
                        code,
                    },
                })
            }
        };
        Bytes::from(out.unwrap_or_default())
    }

    fn plain_parts(&self) -> (String, Option<&'static str>, &'static str) {
        match self {
            GatewayError::InvalidJson(m) => (
                format!("We could not parse the JSON body of your request: {m}"),
                None,
                "invalid_json",
            ),
            GatewayError::InvalidRequest { message, param } => {
                (message.clone(), *param, "invalid_request")
            }
            GatewayError::InvalidChain(m) => (m.clone(), Some("model"), "invalid_model_chain"),
            GatewayError::BodyTooLarge { limit } => (
                format!("The request body exceeds the limit of {limit} bytes"),
                None,
                "request_too_large",
            ),
            GatewayError::NotFound { path } => (
                format!("Unknown request URL: {}", truncate(path, 200)),
                None,
                "unknown_url",
            ),
            GatewayError::MethodNotAllowed { method, path } => (
                format!(
                    "Method {} is not allowed for {}",
                    truncate(method, 20),
                    truncate(path, 200)
                ),
                None,
                "method_not_allowed",
            ),
            GatewayError::ClientRead(m) => (
                format!("Could not read the request: {m}"),
                None,
                "bad_request",
            ),
            GatewayError::ClientClosed => (
                "The client closed the connection".into(),
                None,
                "client_closed",
            ),
            GatewayError::AllFailed { .. } => (
                "All fallback attempts failed".into(),
                None,
                "all_attempts_failed",
            ),
            GatewayError::Overloaded { retry_after } => (
                format!(
                    "detour is holding as many request bodies as it may; retry in {retry_after} s"
                ),
                None,
                "overloaded",
            ),
            GatewayError::AnswerCut => (
                "The answer was cut after it had started".into(),
                None,
                "answer_cut",
            ),
            GatewayError::InvalidHeader { message, .. } => {
                (message.clone(), None, "invalid_header")
            }
            GatewayError::TargetRefused(m) => (
                format!("The target may not be reached, nothing was sent: {m}"),
                None,
                "target_refused",
            ),
            GatewayError::RateLimited { message, .. } => (message.clone(), None, "rate_limited"),
            GatewayError::Unauthorized(m) => (m.clone(), None, "invalid_api_key"),
            GatewayError::InsufficientCredits(m) => (m.clone(), None, "insufficient_credits"),
            GatewayError::StoreUnavailable(m) => (m.clone(), None, "store_unavailable"),
        }
    }
}

pub use crate::text::truncate;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_failed_shape() {
        let e = GatewayError::AllFailed {
            status: 502,
            attempts: vec![
                AttemptReport {
                    source: "gpt-4o/openai".into(),
                    error: "Rate limit exceeded".into(),
                    status: Some(429),
                    skipped: false,
                },
                AttemptReport {
                    source: "gpt-4o/azure".into(),
                    error: "connection refused".into(),
                    status: None,
                    skipped: false,
                },
            ],
        };
        assert_eq!(
            std::str::from_utf8(&e.to_json()).expect("utf8"),
            r#"{"error":{"message":"All fallback attempts failed","type":"all_attempts_failed","attempts":[{"source":"gpt-4o/openai","error":"Rate limit exceeded","status":429},{"source":"gpt-4o/azure","error":"connection refused"}]}}"#
        );
    }
}
