use super::*;
use crate::config::failover::Retry;
use FailClass::*;

fn retry(attempts: u32) -> Retry {
    Retry {
        attempts_per_target: attempts,
        on_status: vec![500, 502, 503],
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        max_retry_after: Duration::from_secs(2),
    }
}

fn facts() -> Facts {
    Facts {
        tries: Some(1),
        retry_after: None,
        time_left: Duration::from_secs(600),
        more: true,
        larger_may_follow: true,
        jitter: 0.5,
    }
}

fn failed(class: FailClass, status: Option<u16>) -> Seen {
    Seen::Failed { class, status }
}

fn refused(status: u16) -> Seen {
    Seen::Refusal { status, said: None }
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Every fault `tests/failover.rs` injects (and the gateway tests' statuses), as the decision
/// sees it: (what happened, facts, attempts per target, on-content-filter, on-connect-error,
/// the decision).
#[test]
fn every_injected_fault_is_decided_as_the_failover_tests_expect() {
    let next = |reason| Decision::Next { reason };
    let after = |after, reason| Decision::RetrySame { after, reason };
    let f = facts();
    #[rustfmt::skip]
    let table: Vec<(&str, Seen, Facts, u32, bool, bool, Decision)> = vec![
        ("2xx answer", Seen::Answer, f, 1, false, true, Decision::Commit),
        ("429 without Retry-After, 3 tries allowed", refused(429), f, 3, false, true, next(RateLimited)),
        ("429 with Retry-After 1 s (max 2 s)", refused(429), Facts { retry_after: Some(S(1)), ..f }, 2, false, true,
            after(S(1), RetryReason::RetryAfter)),
        ("429 with Retry-After 30 s: over the max", refused(429), Facts { retry_after: Some(S(30)), ..f }, 2, false, true, next(RateLimited)),
        ("429 Retry-After that does not fit the deadline", refused(429), Facts { retry_after: Some(S(1)), time_left: MS(900), ..f }, 2, false, true, next(RateLimited)),
        ("429 Retry-After, retries used up", refused(429), Facts { retry_after: Some(S(1)), tries: Some(2), ..f }, 2, false, true, next(RateLimited)),
        ("503, first of 3 tries: backoff 200 ms, half jitter", refused(503), f, 3, false, true, after(MS(100), RetryReason::ServerError)),
        ("503, second of 3 tries: backoff 400 ms, half jitter", refused(503), Facts { tries: Some(2), ..f }, 3, false, true, after(MS(200), RetryReason::ServerError)),
        ("503, last of 3 tries", refused(503), Facts { tries: Some(3), ..f }, 3, false, true, next(ServerError)),
        ("503, the backoff is capped", refused(503), Facts { tries: Some(9), jitter: 0.75, ..f }, 10, false, true, after(MS(1500), RetryReason::ServerError)),
        ("504 is not retried on the same target", refused(504), f, 3, false, true, next(ServerError)),
        ("503 on a hedge whose turn is over", refused(503), Facts { tries: None, ..f }, 3, false, true, next(ServerError)),
        ("500 once then healthy: retried", refused(500), f, 2, false, true, after(MS(100), RetryReason::ServerError)),
        ("401", refused(401), f, 3, false, true, next(AuthError)),
        ("403", refused(403), f, 1, false, true, next(AuthError)),
        ("404", refused(404), f, 1, false, true, next(NotFound)),
        ("408", refused(408), f, 1, false, true, next(RequestTimeout)),
        ("400 of the client's own", refused(400), f, 3, false, true, Decision::Commit),
        ("422 of the client's own", refused(422), f, 1, false, true, Decision::Commit),
        ("connection refused", failed(ConnectError, None), f, 3, false, true, next(ConnectError)),
        ("connection refused, on-connect-error off", failed(ConnectError, None), f, 3, false, false, Decision::Bail { reason: ConnectError }),
        ("reset before the header", failed(UpstreamClosed, None), f, 3, false, true, next(UpstreamClosed)),
        ("hang: no header within first-byte", failed(FirstByteTimeout, None), f, 3, false, true, next(FirstByteTimeout)),
        ("connect timeout", failed(ConnectTimeout, None), f, 3, false, true, next(ConnectTimeout)),
        ("stream stalled before content", failed(FirstTokenTimeout, None), f, 3, false, true, next(FirstTokenTimeout)),
        ("JSON cut short", failed(UpstreamClosed, None), f, 1, false, true, next(UpstreamClosed)),
        ("event that is not JSON before content", failed(BadResponse, None), f, 3, false, true, next(BadResponse)),
        ("in-stream overloaded_error (529) before content", failed(ServerError, Some(529)), f, 3, false, true, next(ServerError)),
        ("in-stream server_error (500) before content: retried", failed(ServerError, Some(500)), f, 3, false, true, after(MS(100), RetryReason::ServerError)),
        ("in-stream rate limit with Retry-After", failed(RateLimited, Some(429)), Facts { retry_after: Some(MS(500)), ..f }, 2, false, true, after(MS(500), RetryReason::RetryAfter)),
        ("in-stream validationException (400)", failed(ClientError, Some(400)), f, 3, false, true, Decision::Bail { reason: ClientError }),
        ("a parameter the target cannot honour", failed(Unsupported, Some(400)), f, 1, false, true, next(Unsupported)),
        ("context length, a larger window may follow",
            Seen::Refusal { status: 400, said: Some(BodyError::ContextLength("too long".into())) }, f, 3, false, true, next(ContextLength)),
        ("context length, nothing larger follows",
            Seen::Refusal { status: 400, said: Some(BodyError::ContextLength("too long".into())) }, Facts { larger_may_follow: false, ..f }, 3, false, true, Decision::Commit),
        ("content policy, switch off",
            Seen::Refusal { status: 400, said: Some(BodyError::ContentFilter("no".into())) }, f, 1, false, true, Decision::Commit),
        ("content policy, switch on",
            Seen::Refusal { status: 400, said: Some(BodyError::ContentFilter("no".into())) }, f, 1, true, true, next(ContentFilter)),
        ("content policy, switch on, nothing follows",
            Seen::Refusal { status: 400, said: Some(BodyError::ContentFilter("no".into())) }, Facts { more: false, ..f }, 1, true, true, Decision::Commit),
    ];
    for (name, seen, facts, attempts, on_filter, on_connect, want) in table {
        let mut triggers = FallbackTriggers::default();
        triggers.on_connect_error = on_connect;
        let r = retry(attempts);
        let policy = Policy {
            triggers: &triggers,
            retry: &r,
            on_content_filter: on_filter,
        };
        assert_eq!(classify(&seen, &facts, &policy), want, "{name}");
    }
}

#[test]
fn a_trigger_status_is_a_failure_whatever_its_body_says() {
    let triggers = FallbackTriggers::default();
    let r = retry(1);
    let p = Policy {
        triggers: &triggers,
        retry: &r,
        on_content_filter: false,
    };
    let s = Seen::Refusal {
        status: 429,
        said: Some(BodyError::ContentFilter("x".into())),
    };
    assert_eq!(
        classify(&s, &facts(), &p),
        Decision::Next {
            reason: FailClass::RateLimited
        }
    );
}

#[test]
fn failure_classes_fall_back_by_trigger_and_map_to_health() {
    let t = FallbackTriggers::default();
    assert!(FailClass::ServerError.falls_back(Some(503), &t));
    assert!(!FailClass::ClientError.falls_back(Some(400), &t));
    assert!(FailClass::ContextLength.falls_back(Some(400), &t));
    use super::super::health::Outcome;
    assert_eq!(
        FailClass::RateLimited.health(Some(S(2))),
        Outcome::RateLimited {
            retry_after: Some(S(2))
        }
    );
    assert_eq!(FailClass::ContentFilter.health(None), Outcome::Neutral);
    assert_eq!(FailClass::UpstreamClosed.health(None), Outcome::Failure);
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
