//! Anthropic's Messages wire, as detour answers its clients (`POST /v1/messages`): an error in
//! Anthropic's shape, `{"type":"error","error":{"type":…,"message":…}}`, made from the OpenAI-
//! shaped error detour (or a translated provider answer) wrote.

use serde_json::{json, Value};

/// Anthropic's error `type` for an HTTP status, as its API documents them.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error body as Anthropic's: the message kept (and `attempts`, the
/// all-failed error's list), the type from the status; a body that is not one keeps its
/// first 500 bytes as the message.
pub fn error_from_openai(status: u16, raw: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let e = &v["error"];
    let fallback = String::from_utf8_lossy(&raw[..raw.len().min(500)]).into_owned();
    let message = e["message"].as_str().map_or(fallback, str::to_string);
    let mut inner = json!({"type": error_type(status), "message": message});
    if let Some(a) = e.get("attempts") {
        inner["attempts"] = a.clone();
    }
    json!({"type": "error", "error": inner})
        .to_string()
        .into_bytes()
}

/// The end of a broken Messages stream: Anthropic's `event: error` (no `message_stop`
/// follows), `overloaded_error` when the reason says the provider was, else `api_error`.
pub fn broken_stream_event(reason: &str) -> Vec<u8> {
    let kind = if reason.contains("overloaded") {
        "overloaded_error"
    } else {
        "api_error"
    };
    let e = json!({"type": "error", "error": {"type": kind, "message": reason}});
    format!("event: error\ndata: {e}\n\n").into_bytes()
}

/// Anthropic's keep-alive event.
pub const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

/// The event that ends a Messages stream whose upstream finished its answer (its stop reason
/// and usage sent) but closed before `message_stop`.
pub const MESSAGE_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AttemptReport, GatewayError};

    fn shape(status: u16, raw: &[u8]) -> Value {
        let v: Value = serde_json::from_slice(&error_from_openai(status, raw)).unwrap_or_default();
        assert_eq!(v["type"], "error", "{v}");
        v
    }

    #[test]
    fn detours_own_errors_in_anthropic_shape() {
        let cases = [
            (
                GatewayError::InvalidJson("eof".into()),
                "invalid_request_error",
            ),
            (
                GatewayError::Unauthorized("no key".into()),
                "authentication_error",
            ),
            (
                GatewayError::NotFound {
                    path: "/v1/x".into(),
                },
                "not_found_error",
            ),
            (GatewayError::BodyTooLarge { limit: 9 }, "request_too_large"),
            (
                GatewayError::RateLimited {
                    message: "slow down".into(),
                    retry_after: 1,
                },
                "rate_limit_error",
            ),
            (
                GatewayError::InsufficientCredits("0 left".into()),
                "rate_limit_error",
            ),
            (
                GatewayError::Overloaded { retry_after: 1 },
                "overloaded_error",
            ),
            (
                GatewayError::StoreUnavailable("down".into()),
                "overloaded_error",
            ),
        ];
        for (e, want) in cases {
            let v = shape(e.status(), &e.to_json());
            assert_eq!(v["error"]["type"], want, "{e:?}");
            assert_eq!(v["error"]["message"], e.plain_parts().0, "{e:?}");
        }
        let v = shape(400, b"not json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "not json");
    }

    #[test]
    fn all_failed_keeps_its_status_class_and_attempts() {
        let attempts = vec![AttemptReport {
            source: "claude-sonnet-4/anthropic".into(),
            error: "Overloaded".into(),
            status: Some(529),
            skipped: false,
        }];
        for (status, want) in [
            (529, "overloaded_error"),
            (502, "api_error"),
            (429, "rate_limit_error"),
        ] {
            let e = GatewayError::AllFailed {
                status,
                attempts: attempts.clone(),
            };
            let v = shape(e.status(), &e.to_json());
            assert_eq!(v["error"]["type"], want);
            assert_eq!(v["error"]["message"], "All fallback attempts failed");
            assert_eq!(v["error"]["attempts"][0]["status"], 529);
            assert_eq!(
                v["error"]["attempts"][0]["source"],
                "claude-sonnet-4/anthropic"
            );
        }
    }
}
