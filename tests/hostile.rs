//! What a hostile or broken upstream sends must not leak a key, kill a request, or grow
//! detour's memory: credentials echoed in error texts, absurd `Retry-After` values, events that
//! never end, answers cut after commit. Each test drives a programmable upstream over real
//! sockets and checks what the client got, what the access log holds, and that the gateway
//! still works afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every credential the test gateways hold.
const KEYS: [&str; 4] = [PROVIDER_KEY, PROVIDER_KEY2, AWS_SECRET, AWS_TOKEN];

/// Providers that hold every test credential but are never called.
const HOLDERS: &str = "  - {name: other, kind: openai, base-url: \"http://127.0.0.1:9/v1\", api-key-env: DETOUR_TEST_KEY2}\n  - {name: br, kind: bedrock, base-url: \"http://127.0.0.1:9\", region: us-east-1}\n";

/// A provider error text that quotes every credential, raw and JSON-escaped.
fn echo() -> String {
    format!(
        "Incorrect API key: Bearer {PROVIDER_KEY}; also {PROVIDER_KEY2}; aws {} and {AWS_TOKEN}; escaped \\u0073{}",
        AWS_SECRET.replace('/', "\\/"),
        &PROVIDER_KEY[1..]
    )
}

fn assert_no_key(what: &str, text: &str) {
    for k in KEYS {
        assert!(!text.contains(k), "{what} leaks {k}: {text}");
    }
    // Decoded, as the client's JSON parser sees it.
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let decoded = v.to_string();
        for k in KEYS {
            assert!(
                !decoded.contains(k),
                "{what} leaks {k} once decoded: {decoded}"
            );
        }
    }
}

fn raw_provider(name: &str, kind: &str, base: &str) -> String {
    format!(
        "  - {{name: {name}, kind: {kind}, base-url: \"{base}\", api-key-env: DETOUR_TEST_KEY}}\n"
    )
}

/// The error body a provider of `kind` sends, quoting every credential.
fn error_body(kind: &str) -> Vec<u8> {
    let e = echo();
    let v = match kind {
        "anthropic" => format!(
            r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"{e}"}}}}"#
        ),
        "google-ai-studio" => {
            format!(r#"{{"error":{{"code":400,"message":"{e}","status":"INVALID_ARGUMENT"}}}}"#)
        }
        _ => format!(
            r#"{{"error":{{"message":"{e}","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
        ),
    };
    v.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_and_translated_4xx_bodies_have_every_key_masked() {
    for (kind, base_suffix) in [
        ("openai", "/v1"),
        ("anthropic", ""),
        ("google-ai-studio", ""),
    ] {
        let up = RawUpstream::start(move |_| {
            vec![Step::Send(http_response(
                400,
                &[("content-type", "application/json")],
                &error_body(kind),
            ))]
        })
        .await;
        let base = format!("http://{}{base_suffix}", up.addr);
        let gw = Gateway::start(&format!(
            "providers:\n{}{HOLDERS}",
            raw_provider("p1", kind, &base)
        ))
        .await;
        let r = gw.chat(&chat_body("m/p1", false)).await;
        assert_eq!(r.status, 400, "{kind}: {}", r.text());
        assert_eq!(up.calls(), 1);
        assert_no_key(kind, &r.text());
        let m = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(m.contains("Incorrect API key: Bearer ***"), "{kind}: {m}");
        assert!(m.contains("aws *** and ***"), "{kind}: {m}");
        drop(gw);
    }
}

/// One raw upstream whose answer is chosen by the client's `x-case` header (detour forwards it).
async fn case_upstream() -> RawUpstream {
    RawUpstream::start(|req| {
        let sse = |events: Vec<Vec<u8>>| {
            let mut v = vec![Step::Send(chunked_head(200, "text/event-stream"))];
            v.extend(events.into_iter().map(|e| Step::Send(chunk(&e))));
            v.push(Step::Send(b"0\r\n\r\n".to_vec()));
            v
        };
        let error_event = format!(
            "data: {{\"error\":{{\"message\":\"{}\",\"type\":\"server_error\"}}}}\n\n",
            echo()
        )
        .into_bytes();
        match req.header("x-case").unwrap_or("") {
            "error-before-content" => sse(vec![error_event]),
            "error-after-content" => sse(vec![content_event("Hello"), error_event]),
            "header" => vec![Step::Send(http_response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("x-ratelimit-note", &format!("key {PROVIDER_KEY}")),
                    ("x-ratelimit-remaining-requests", "99"),
                ],
                &completion_json("hi"),
            ))],
            _ => vec![Step::Send(http_response(
                500,
                &[("content-type", "application/json")],
                &error_body("openai"),
            ))],
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_errors_the_all_failed_list_headers_and_the_log_have_every_key_masked() {
    let up = case_upstream().await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{HOLDERS}",
        raw_provider("p1", "openai", &up.base_url()),
        raw_provider("p2", "openai", &up.base_url())
    ))
    .await;
    // An error event before any content: an invisible failure, listed in the all-failed error.
    let r = gw
        .chat_with(
            &chat_body("m/p1", true),
            &[("x-case", "error-before-content")],
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_no_key("in-band error before commit", &r.text());
    let listed = r.json()["error"]["attempts"][0]["error"].to_string();
    assert!(listed.contains("Bearer ***"), "{listed}");

    // An error event after content: the client's error event is masked.
    let r = gw
        .chat_with(
            &chat_body("m/p1", true),
            &[("x-case", "error-after-content")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_no_key("in-band error after commit", &r.text());
    let last: Value = serde_json::from_str(sse_data(&r.body).last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer ***"),
        "{last}"
    );

    // Every target fails quoting keys: the all-failed list.
    let r = gw.chat(&chat_body("m/p1,m/p2", false)).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["attempts"].as_array().unwrap().len(), 2);
    assert_no_key("all-failed list", &r.text());

    // A passed-through header that quotes a key is not passed on; the others are.
    let r = gw
        .chat_with(&chat_body("m/p1", false), &[("x-case", "header")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-note"), None);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("99"));

    // The access log saw every one of these answers.
    gw.metrics_with(&["detour_requests_in_flight 0"]).await;
    let log = gw.stderr();
    assert!(log.matches("\"log\":\"access\"").count() >= 4, "{log}");
    assert_no_key("the access log", &log);
}

/// `gpt-4o` pinned as `{id}/p1` then `{id}/p2`: p1 a raw upstream, p2 a healthy mock.
async fn rate_limited_gateway(up: &RawUpstream, p2: &MockServer, failover: &str) -> Gateway {
    Gateway::start(&format!(
        "failover:\n{failover}providers:\n{}{}",
        raw_provider("p1", "openai", &up.base_url()),
        provider("p2", p2)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_move_on_at_once_and_cool_for_the_cap() {
    let up = RawUpstream::start(|req| {
        let (name, value) = match req.header("x-case").unwrap_or("") {
            "ms-1e25" => ("retry-after-ms", "1e25".to_string()),
            "date" => ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
            v => ("retry-after", v.to_string()),
        };
        vec![Step::Send(http_response(
            429,
            &[("content-type", "application/json"), (name, &value)],
            br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
        ))]
    })
    .await;
    let p2 = mock("p2").await;
    let fo = "  retry: {attempts-per-target: 3, max-retry-after: 2s}\n  circuit-breaker: {max-cool-down: 30s}\n";
    let gw = rate_limited_gateway(&up, &p2, fo).await;
    let cases = [
        "1e20",
        "1e19",
        "99999999999",
        "ms-1e25",
        "date",
        "-5",
        "NaN",
    ];
    for (i, case) in cases.iter().enumerate() {
        let t = Instant::now();
        let body = chat_body(&format!("m{i}/p1,m/p2"), false);
        let r = gw.chat_with(&body, &[("x-case", case)]).await;
        assert_eq!(r.status, 200, "{case}: {}", r.text());
        assert_eq!(r.header("x-detour-provider"), Some("p2"), "{case}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{case}: moved on at once"
        );
    }
    assert_eq!(up.calls(), cases.len());
    // Each absurd value cooled its target, for the 30 s cap at most; the bad ones not at all.
    let h = request(gw.admin_port, "GET", "/admin/health", &[], b"")
        .await
        .unwrap()
        .json();
    for (i, case) in cases.iter().enumerate() {
        let t = h["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["provider"] == "p1" && t["model"] == format!("m{i}"))
            .unwrap_or_else(|| panic!("{case}: m{i} missing from {h}"));
        if matches!(*case, "-5" | "NaN") {
            assert_eq!(t["state"], "closed", "{case}: {t}");
            continue;
        }
        assert_eq!(t["state"], "open", "{case}: {t}");
        let left = t["open_for_ms"].as_u64().unwrap();
        assert!(left > 25_000 && left <= 30_000, "{case}: {left} ms");
    }
    // The requests all ended (the gauge is back to zero) and the breaker still works: the
    // next request skips the cooled target.
    gw.metrics_with(&["detour_requests_in_flight 0"]).await;
    assert!(gw
        .metrics()
        .await
        .lines()
        .any(|l| l == "detour_requests_in_flight 0"));
    let r = gw
        .chat_with(&chat_body("m0/p1,m/p2", false), &[("x-case", "1e20")])
        .await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(up.calls(), cases.len(), "the cooled target was skipped");
    assert!(
        !gw.stderr().contains("panicked"),
        "no task panicked: {}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_oauth_expires_in_is_capped() {
    let up = RawUpstream::start(|req| {
        if req.path.ends_with("/token") {
            let b = br#"{"access_token":"ya29.raw-token-0123456789","expires_in":18446744073709551615,"token_type":"Bearer"}"#;
            return vec![Step::Send(http_response(
                200,
                &[("content-type", "application/json")],
                b,
            ))];
        }
        let b = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"hi"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":1,"totalTokenCount":2}}"#;
        vec![Step::Send(http_response(
            200,
            &[("content-type", "application/json")],
            b,
        ))]
    })
    .await;
    let mut sa: Value =
        serde_json::from_str(include_str!("fixtures/vertex-test-service-account.json")).unwrap();
    sa["token_uri"] = Value::from(format!("http://{}/token", up.addr));
    let key = temp_dir().join("sa.json");
    std::fs::write(&key, serde_json::to_vec(&sa).unwrap()).unwrap();
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: vx, kind: vertex, project: detour-test, region: us-east5, base-url: \"http://{}\", credentials-file: \"{}\"}}\n",
        up.addr,
        key.display()
    ))
    .await;
    for _ in 0..2 {
        let r = gw.chat(&chat_body("gemini-x/vx", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let tokens = up
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/token"))
        .count();
    assert_eq!(tokens, 1, "the token was cached");
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

/// A close-delimited SSE answer that starts an event and never ends it, after `before`.
fn endless_event(before: Vec<u8>) -> Vec<Step> {
    let mut head =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_vec();
    head.extend_from_slice(&before);
    head.extend_from_slice(br#"data: {"choices":[{"delta":{"content":""#);
    vec![Step::Send(head), Step::Endless(b'x')]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_never_ends_fails_the_stream_at_the_cap() {
    let up = RawUpstream::start(|req| match req.header("x-case") {
        Some("after") => endless_event(content_event("Hello")),
        _ => endless_event(Vec::new()),
    })
    .await;
    let p2 = mock("p2").await;
    let gw = Gateway::start(&format!(
        "limits: {{max-event-bytes: 65536}}\nproviders:\n{}{}",
        raw_provider("p1", "openai", &up.base_url()),
        provider("p2", &p2)
    ))
    .await;
    // Before commit: an invisible failure, the next target serves.
    let r = gw.chat(&chat_body("m/p1,m/p2", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert!(streamed_text(&r.body).starts_with("Hello from p2"));
    // After commit: the client gets what came before and an error event, no [DONE].
    let r = gw
        .chat_with(&chat_body("m/p1", true), &[("x-case", "after")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(streamed_text(&r.body), "Hello");
    let data = sse_data(&r.body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("an event over 65536 bytes"),
        "{last}"
    );
    // detour stopped reading both times: far less than the 200 MB an unbounded reader takes.
    let sent = up.endless_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 16 * 1024 * 1024, "{sent} bytes were taken");
    let log = gw.stderr();
    assert!(log.contains("an event over 65536 bytes"), "{log}");
}

/// Read a response whose body must end abnormally; returns the head and the body bytes that
/// came, and fails the test if the body ended cleanly.
async fn read_cut(port: u16, body: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let h = [("content-type", "application/json")];
    send_request(
        &mut sock,
        "POST",
        "/v1/chat/completions",
        &h,
        body.as_bytes(),
    )
    .await
    .unwrap();
    let read = async {
        let (status, headers, rest) = read_head(&mut sock).await.unwrap();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let mut got = Vec::new();
        let outcome = if chunked {
            let mut dec = ChunkDecoder::new(rest);
            loop {
                match dec.next_chunk(&mut sock).await {
                    Ok(Some(c)) => got.extend_from_slice(&c),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        } else {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .expect("a length");
            got = rest;
            use tokio::io::AsyncReadExt;
            let _ = sock.read_to_end(&mut got).await;
            if got.len() < len {
                Err(std::io::Error::other("short"))
            } else {
                Ok(())
            }
        };
        assert!(outcome.is_err(), "the cut body ended cleanly");
        (status, headers, got)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the client saw the end of the connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_cut_after_commit_aborts_the_connection() {
    let big = completion_json(&"y".repeat(20_000));
    let half = big[..big.len() / 2].to_vec();
    let len = big.len();
    let up = RawUpstream::start(move |req| match req.header("x-case") {
        Some("length") => vec![
            Step::Send(
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n")
                    .into_bytes(),
            ),
            Step::Send(half.clone()),
            Step::Sleep(Duration::from_millis(50)),
            Step::Reset,
        ],
        _ => vec![
            Step::Send(chunked_head(200, "application/json")),
            Step::Send(chunk(&half)),
            Step::Sleep(Duration::from_millis(50)),
            Step::Reset,
        ],
    })
    .await;
    let gw = Gateway::start(&format!(
        "limits: {{max-buffered-response-bytes: 1024}}\nproviders:\n{}",
        raw_provider("p1", "openai", &up.base_url())
    ))
    .await;
    // Chunked: the client gets the first half and then no terminating chunk.
    let (status, headers, got) = read_cut(gw.port, &chat_body("m/p1", false)).await;
    assert_eq!(status, 200);
    assert!(headers.iter().all(|(k, _)| k != "content-length"));
    assert_eq!(got, big[..big.len() / 2]);
    // With the upstream's Content-Length: the client gets it too, and a short body.
    let body = chat_body("m/p1", false);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let h = [("content-type", "application/json"), ("x-case", "length")];
    send_request(
        &mut sock,
        "POST",
        "/v1/chat/completions",
        &h,
        body.as_bytes(),
    )
    .await
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut sock))
        .await
        .unwrap();
    let e = r.expect_err("a short body");
    assert!(e.to_string().contains("shorter than content-length"), "{e}");
    // Both are in the access log as broken after commit (the request and its attempt); the
    // gateway serves on.
    let log = gw
        .stderr_when(|l| l.matches("\"outcome\":\"stream_error\"").count() >= 4)
        .await;
    assert_eq!(
        log.matches("\"outcome\":\"stream_error\"").count(),
        4,
        "{log}"
    );
    assert!(!log.contains("Fail to filter request"), "{log}");
    let r = request(gw.port, "GET", "/health", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
}
