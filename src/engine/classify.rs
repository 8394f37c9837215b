//! Pure classification of one attempt's result: what went wrong, whether to move on, and what
//! to tell the client about it. No I/O.

use crate::config::FallbackTriggers;

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
            // The engine narrows what may follow (a larger window; the content-filter switch).
            FailClass::Unsupported | FailClass::ContextLength | FailClass::ContentFilter => true,
            _ => status.is_some_and(|s| t.on_status(s)),
        }
    }
}

/// What to do with a response header from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: this is the answer.
    Serve,
    /// A trigger status: read the error, move on.
    Next(FailClass),
    /// Any other status: give it to the client unchanged (the next provider would refuse too).
    PassThrough,
}

pub fn decide(status: u16, t: &FallbackTriggers) -> Decision {
    if (200..300).contains(&status) {
        Decision::Serve
    } else if t.on_status(status) {
        Decision::Next(FailClass::of_status(status))
    } else {
        Decision::PassThrough
    }
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
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_trigger_list() {
        let t = FallbackTriggers::default();
        assert_eq!(decide(200, &t), Decision::Serve);
        assert_eq!(decide(429, &t), Decision::Next(FailClass::RateLimited));
        assert_eq!(decide(401, &t), Decision::Next(FailClass::AuthError));
        assert_eq!(decide(403, &t), Decision::Next(FailClass::AuthError));
        assert_eq!(decide(404, &t), Decision::Next(FailClass::NotFound));
        assert_eq!(decide(408, &t), Decision::Next(FailClass::RequestTimeout));
        assert_eq!(decide(503, &t), Decision::Next(FailClass::ServerError));
        for s in [400, 409, 413, 422] {
            assert_eq!(decide(s, &t), Decision::PassThrough, "{s}");
        }
    }

    #[test]
    fn context_length_and_content_filter_are_read_from_the_body() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#, Some("ctx")),
            // Anthropic, after translation to OpenAI's shape
            (br#"{"error":{"message":"prompt is too long: 215000 tokens > 200000 maximum","type":"invalid_request_error"}}"#, Some("ctx")),
            (br#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#, Some("ctx")),
            (br#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","code":"content_policy_violation"}}"#, Some("filter")),
            (br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","code":"content_filter","status":400}}"#, Some("filter")),
            (br#"{"error":{"message":"Invalid value for 'temperature'","code":"invalid_value"}}"#, None),
        ];
        for (b, want) in cases {
            let got = match body_error(b) {
                Some(BodyError::ContextLength(_)) => Some("ctx"),
                Some(BodyError::ContentFilter(_)) => Some("filter"),
                None => None,
            };
            assert_eq!(got, want, "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn messages_are_extracted_and_keys_masked() {
        let none = crate::secrets::Masker::new([]);
        let keys = crate::secrets::Masker::new(["sk-abcdef", "other-provider-key"]);
        let b = br#"{"error":{"message":"Rate limit exceeded","type":"x"}}"#;
        assert_eq!(error_message(429, b, &none), "Rate limit exceeded");
        assert_eq!(
            error_message(
                500,
                br#"{"error":"boom sk-abcdef other-provider-key"}"#,
                &keys
            ),
            "boom *** ***"
        );
        assert_eq!(error_message(503, b"", &none), "Service Unavailable");
        assert_eq!(
            error_message(502, b"<html>bad gateway</html>", &none),
            "Bad Gateway"
        );
        let leak = br#"{"error":{"message":"Incorrect API key provided: sk-ab***xyz"}}"#;
        let m = error_message(401, leak, &keys);
        assert!(!m.contains("sk-"), "{m}");
        // A key straddling the 300-byte cut is masked, not cut in half.
        let long = format!(r#"{{"error":"{}sk-abcdef"}}"#, "x".repeat(295));
        assert!(!error_message(400, long.as_bytes(), &keys).contains("sk-ab"));
    }
}
