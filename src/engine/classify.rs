//! The one decision about an attempt: commit its answer, retry the same target, move on to the
//! next, or stop. Pure: what the attempt came to ([`Seen`]) and what the scheduler knows of it
//! ([`Facts`]) in, a [`Decision`] out; no I/O, no clock. Also what a failure is called (the
//! bounded [`FailClass`]) and what is told of it (the provider's message, credentials masked).

use crate::config::failover::Retry;
use crate::config::FallbackTriggers;
use std::time::Duration;

/// Why an attempt did not serve the request. Bounded: these are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailClass {
    RateLimited,
    AuthError,
    NotFound,
    RequestTimeout,
    ServerError,
    /// A 4xx outside the trigger list: the client's own fault, passed back unchanged.
    ClientError,
    /// Any other status the trigger list names.
    OtherStatus,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    /// A stream sent no content within its first-token deadline (or stalled before it).
    FirstTokenTimeout,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The provider refused on content policy (moves on only when configured to).
    ContentFilter,
    /// The upstream closed or reset the connection before the answer was complete.
    UpstreamClosed,
    /// Nothing usable came back (empty stream, unreadable header, untranslatable answer).
    BadResponse,
    /// Not sent: the target cannot honour a parameter of the request (e.g. `n` > 1 on
    /// Anthropic). Another target may.
    Unsupported,
    /// Not sent: a header-mode target the policy refuses (private address, port).
    TargetRefused,
}

impl FailClass {
    pub fn label(self) -> &'static str {
        match self {
            FailClass::RateLimited => "rate_limited",
            FailClass::AuthError => "auth_error",
            FailClass::NotFound => "not_found",
            FailClass::RequestTimeout => "request_timeout",
            FailClass::ServerError => "server_error",
            FailClass::ClientError => "client_error",
            FailClass::OtherStatus => "other_status",
            FailClass::ConnectError => "connect_error",
            FailClass::ConnectTimeout => "connect_timeout",
            FailClass::FirstByteTimeout => "first_byte_timeout",
            FailClass::FirstTokenTimeout => "first_token_timeout",
            FailClass::ContextLength => "context_length_exceeded",
            FailClass::ContentFilter => "content_filter",
            FailClass::UpstreamClosed => "upstream_closed",
            FailClass::BadResponse => "bad_response",
            FailClass::Unsupported => "unsupported_request",
            FailClass::TargetRefused => "target_refused",
        }
    }

    pub fn of_status(status: u16) -> FailClass {
        match status {
            429 => FailClass::RateLimited,
            401 | 403 => FailClass::AuthError,
            404 => FailClass::NotFound,
            408 => FailClass::RequestTimeout,
            500..=599 => FailClass::ServerError,
            400..=499 => FailClass::ClientError,
            _ => FailClass::OtherStatus,
        }
    }

    /// Whether the trigger list lets this failure move on to the next target.
    pub fn falls_back(self, status: Option<u16>, t: &FallbackTriggers) -> bool {
        match self {
            FailClass::ConnectError | FailClass::UpstreamClosed | FailClass::BadResponse => {
                t.on_connect_error
            }
            FailClass::ConnectTimeout
            | FailClass::FirstByteTimeout
            | FailClass::FirstTokenTimeout => t.on_timeout,
            // The scheduler narrows what may follow a context-length refusal; the content-filter
            // switch is checked before a refusal becomes this failure.
            FailClass::Unsupported
            | FailClass::TargetRefused
            | FailClass::ContextLength
            | FailClass::ContentFilter => true,
            FailClass::RateLimited
            | FailClass::AuthError
            | FailClass::NotFound
            | FailClass::RequestTimeout
            | FailClass::ServerError
            | FailClass::ClientError
            | FailClass::OtherStatus => status.is_some_and(|s| t.on_status(s)),
        }
    }

    /// What this failure says about the target's health.
    pub fn health(self, retry_after: Option<Duration>) -> super::health::Outcome {
        use super::health::Outcome;
        match self {
            FailClass::RateLimited => Outcome::RateLimited { retry_after },
            FailClass::ClientError
            | FailClass::OtherStatus
            | FailClass::Unsupported
            | FailClass::TargetRefused
            | FailClass::ContextLength
            | FailClass::ContentFilter => Outcome::Neutral,
            FailClass::AuthError
            | FailClass::NotFound
            | FailClass::RequestTimeout
            | FailClass::ServerError
            | FailClass::ConnectError
            | FailClass::ConnectTimeout
            | FailClass::FirstByteTimeout
            | FailClass::FirstTokenTimeout
            | FailClass::UpstreamClosed
            | FailClass::BadResponse => Outcome::Failure,
        }
    }
}

/// An attempt that ended before its commit point, and what is told of it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub class: FailClass,
    pub status: Option<u16>,
    pub message: String,
    /// The upstream's `Retry-After` / `retry-after-ms`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(class: FailClass, status: Option<u16>, message: String) -> Failure {
        Failure {
            class,
            status,
            message,
            retry_after: None,
        }
    }
}

/// What an attempt came to, as far as the decision goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A 2xx answer at its commit point: a stream's first content, or a JSON answer read.
    Answer,
    /// A non-2xx answer, and what its body says beyond its status.
    Refusal {
        status: u16,
        said: Option<BodyError>,
    },
    /// No usable answer: a transport failure, a timeout, an in-band error, a bad answer, or
    /// not sent at all (`status`: the one the failure stands for, if any).
    Failed {
        class: FailClass,
        status: Option<u16>,
    },
}

/// What the scheduler knows of the attempt when it is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts {
    /// Tries of this target so far, this one included; `None`: its turn is over (a hedge that
    /// was started beside it), so it is never tried again.
    pub tries: Option<u32>,
    /// The upstream's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Until the request's deadline.
    pub time_left: Duration,
    /// Another target is queued after this one.
    pub more: bool,
    /// After a context-length refusal: a queued target whose window is not known to be no
    /// larger than the ones refused so far.
    pub larger_may_follow: bool,
    /// A uniform sample in `[0, 1)`: the full jitter of a backoff.
    pub jitter: f64,
}

/// The configured rules the decision follows.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub triggers: &'a FallbackTriggers,
    pub retry: &'a Retry,
    pub on_content_filter: bool,
}

/// Why a target is tried again (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ServerError,
    RetryAfter,
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ServerError => "server_error",
            RetryReason::RetryAfter => "retry_after",
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// This answer goes to the client.
    Commit,
    /// Try the same target again after `after`.
    RetrySame {
        after: Duration,
        reason: RetryReason,
    },
    /// Move on to the next target.
    Next { reason: FailClass },
    /// Stop: this failure is not one the configuration moves on after.
    Bail { reason: FailClass },
}

/// A wait plus this much must fit before the deadline for a retry to be worth it.
const RETRY_MARGIN: Duration = Duration::from_millis(50);

/// The decision.
pub fn classify(seen: &Seen, facts: &Facts, policy: &Policy<'_>) -> Decision {
    match seen {
        Seen::Answer => Decision::Commit,
        Seen::Refusal { status, said } => refusal(*status, said.as_ref(), facts, policy),
        Seen::Failed { class, status } => failure(*class, *status, facts, policy),
    }
}

/// A non-2xx answer: a trigger status is a failure; a context-length or content-policy refusal
/// moves on where the rules allow; anything else is the client's own fault and goes back to it.
fn refusal(status: u16, said: Option<&BodyError>, facts: &Facts, policy: &Policy<'_>) -> Decision {
    if policy.triggers.on_status(status) {
        return failure(FailClass::of_status(status), Some(status), facts, policy);
    }
    match said {
        Some(BodyError::ContextLength(_)) if facts.larger_may_follow => Decision::Next {
            reason: FailClass::ContextLength,
        },
        Some(BodyError::ContentFilter(_)) if policy.on_content_filter && facts.more => {
            Decision::Next {
                reason: FailClass::ContentFilter,
            }
        }
        Some(BodyError::ContextLength(_)) | Some(BodyError::ContentFilter(_)) | None => {
            Decision::Commit
        }
    }
}

fn failure(class: FailClass, status: Option<u16>, facts: &Facts, policy: &Policy<'_>) -> Decision {
    if let Some((after, reason)) = retry(class, status, facts, policy.retry) {
        return Decision::RetrySame { after, reason };
    }
    if class.falls_back(status, policy.triggers) {
        Decision::Next { reason: class }
    } else {
        Decision::Bail { reason: class }
    }
}

/// Whether (and after how long) to try the same target again: a transient 5xx backs off
/// exponentially with full jitter; a 429 waits exactly its `Retry-After` if that is within
/// `max-retry-after`. Only within `attempts-per-target`, and only if the wait fits the deadline.
fn retry(
    class: FailClass,
    status: Option<u16>,
    facts: &Facts,
    r: &Retry,
) -> Option<(Duration, RetryReason)> {
    let tries = facts.tries?;
    if tries >= r.attempts_per_target {
        return None;
    }
    let (wait, reason) = match class {
        FailClass::RateLimited => {
            let ra = facts.retry_after?;
            if ra > r.max_retry_after {
                return None;
            }
            (ra, RetryReason::RetryAfter)
        }
        FailClass::ServerError if status.is_some_and(|s| r.on_status.contains(&s)) => {
            let cap = r
                .backoff_base
                .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
                .min(r.backoff_max);
            (
                cap.mul_f64(facts.jitter.clamp(0.0, 1.0)),
                RetryReason::ServerError,
            )
        }
        FailClass::ServerError
        | FailClass::AuthError
        | FailClass::NotFound
        | FailClass::RequestTimeout
        | FailClass::ClientError
        | FailClass::OtherStatus
        | FailClass::ConnectError
        | FailClass::ConnectTimeout
        | FailClass::FirstByteTimeout
        | FailClass::FirstTokenTimeout
        | FailClass::ContextLength
        | FailClass::ContentFilter
        | FailClass::UpstreamClosed
        | FailClass::BadResponse
        | FailClass::Unsupported
        | FailClass::TargetRefused => return None,
    };
    (wait.saturating_add(RETRY_MARGIN) < facts.time_left).then_some((wait, reason))
}

/// The one-line reason reported in the `attempts` list for a failed status.
///
/// Auth failures never echo the provider's text: providers quote part of the key they were
/// given, and that key is detour's, not the client's. Any other text has every credential
/// detour holds masked.
pub fn error_message(status: u16, body: &[u8], masker: &crate::secrets::Masker) -> String {
    if status == 401 || status == 403 {
        return format!("provider rejected detour's credentials ({status})");
    }
    let text = extract_message(body).unwrap_or_else(|| {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_string()
    });
    // Masked before it is cut, so that a cut cannot leave part of a credential behind.
    let text = masker.text(text.trim());
    crate::api::truncate(&text, 300).to_string()
}

/// A 4xx whose body says more than its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    ContextLength(String),
    ContentFilter(String),
}

impl BodyError {
    pub fn message(&self) -> &str {
        match self {
            BodyError::ContextLength(m) | BodyError::ContentFilter(m) => m,
        }
    }
}

/// Read an (OpenAI-shaped, or translated to it) error body for the two 400s that need their
/// own handling. OpenAI and Azure name them by `code`; Anthropic, Gemini and Bedrock only in
/// their messages, which are matched on the phrases they use.
pub fn body_error(body: &[u8]) -> Option<BodyError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").unwrap_or(&v);
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let m = message.to_ascii_lowercase();
    let context = code == "context_length_exceeded"
        || code == "string_above_max_length"
        || m.contains("maximum context length")
        || m.contains("prompt is too long")
        || m.contains("input is too long")
        || m.contains("too many input tokens")
        || m.contains("exceeds the maximum number of tokens")
        || m.contains("context window");
    if context {
        return Some(BodyError::ContextLength(message));
    }
    let filter = code == "content_policy_violation"
        || code == "content_filter"
        || code == "responsible_ai_policy_violation"
        || m.contains("content management policy")
        || m.contains("content filtering policy")
        || m.contains("safety system");
    filter.then_some(BodyError::ContentFilter(message))
}

/// `{"error":{"message":..}}`, `{"error":".."}`, `{"message":..}`, or a short plain-text body.
fn extract_message(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let m = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"));
        return m.and_then(|m| m.as_str()).map(str::to_string);
    }
    let s = std::str::from_utf8(body).ok()?.trim();
    if s.is_empty() || s.starts_with('<') {
        return None;
    }
    Some(s.chars().take(200).collect())
}

#[cfg(test)]
mod tests;
