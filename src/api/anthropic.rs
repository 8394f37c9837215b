//! Anthropic's Messages wire, as detour answers its clients (`POST /v1/messages`): detour's own
//! errors in Anthropic's shape, `{"type":"error","error":{"type":…,"message":…}}`.

use super::{AttemptReport, GatewayError};
use bytes::Bytes;

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

impl GatewayError {
    /// The error in Anthropic's shape, with the same status and message as the OpenAI shape;
    /// the all-failed error keeps its `attempts` list beside `type` and `message`.
    pub fn to_anthropic_json(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Envelope<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            attempts: Option<&'a [AttemptReport]>,
        }
        let (message, _, _) = self.plain_parts();
        let attempts = match self {
            GatewayError::AllFailed { attempts, .. } => Some(attempts.as_slice()),
            _ => None,
        };
        let kind = match self {
            // Not by status: detour's own overload is 503, its store's fault too, a cut answer 502.
            GatewayError::Overloaded { .. } => "overloaded_error",
            GatewayError::StoreUnavailable(_) | GatewayError::AnswerCut => "api_error",
            other => error_type(other.status()),
        };
        let body = Envelope {
            kind: "error",
            error: Inner {
                kind,
                message: &message,
                attempts,
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn shape(e: &GatewayError) -> (String, String) {
        let v: Value = serde_json::from_slice(&e.to_anthropic_json()).unwrap_or_default();
        assert_eq!(v["type"], "error", "{v}");
        let kind = v["error"]["type"].as_str().unwrap_or_default().to_string();
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (kind, message)
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
            (GatewayError::StoreUnavailable("down".into()), "api_error"),
        ];
        for (e, want) in cases {
            let (kind, message) = shape(&e);
            assert_eq!(kind, want, "{e:?}");
            assert_eq!(message, e.plain_parts().0, "{e:?}");
        }
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
            let v: Value = serde_json::from_slice(&e.to_anthropic_json()).unwrap_or_default();
            assert_eq!(v["error"]["type"], want);
            assert_eq!(v["error"]["attempts"][0]["status"], 529);
            assert_eq!(
                v["error"]["attempts"][0]["source"],
                "claude-sonnet-4/anthropic"
            );
        }
    }
}
