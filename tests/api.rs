//! The client-facing API: bad input, credentials and request ids, the routes, keep-alive,
//! `Expect: 100-continue`, the catalog in `/v1/models`, and the mock's per-request faults.
//! Real binary, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::chains::two;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_in_openai_shape_and_harms_nothing() {
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "limits: {{max-body-bytes: 2000, max-chain-length: 3}}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(3000)
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/chat/completions",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            "".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            "[]".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"messages":[]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":7,"messages":[]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt-4o,,x","messages":[]}"#.into(),
            400,
            "invalid_model_chain",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[]}"#.into(),
            400,
            "invalid_model_chain",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"gpt-4o/nope","messages":[]}"#.into(),
            400,
            "invalid_model_chain",
        ),
        (
            "POST",
            "/v1/chat/completions",
            r#"{"model":"a/p1,b/p1,c/p1,d/p1","messages":[]}"#.into(),
            400,
            "invalid_model_chain",
        ),
        (
            "POST",
            "/v1/chat/completions",
            big,
            413,
            "request_too_large",
        ),
        (
            "GET",
            "/v1/chat/completions",
            "".into(),
            405,
            "method_not_allowed",
        ),
        ("POST", "/v1/completions", "{}".into(), 404, "unknown_url"),
        ("GET", "/admin", "".into(), 404, "unknown_url"),
    ];
    for (method, path, body, status, code) in cases {
        let r = request(
            gw.port,
            method,
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{method} {path} {body:.60}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert!(v["error"]["type"].is_string());
        assert!(r.header("x-request-id").is_some());
    }
    // A body over the limit with no Content-Length (chunked) is cut off too.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    sock.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        sock.write_all(format!("400\r\n{}\r\n", "y".repeat(1024)).as_bytes())
            .await
            .unwrap();
    }
    let (status, _, _) = read_head(&mut sock).await.unwrap();
    assert_eq!(status, 413);
    // A client that sends half a body and stalls does not hang anything else.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    slow.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"model\"",
    )
    .await
    .unwrap();
    assert_eq!(m.calls(), 0, "nothing invalid reached a provider");
    // The process is unharmed: it still serves.
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(m.calls(), 1);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_request_ids() {
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{name: nokey, kind: openai, base-url: \"http://127.0.0.1:1/v1\", api-key-env: DETOUR_UNSET_KEY_VAR}}\nmodels:\n  gpt-4o: [{{provider: nokey}}, {{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", false),
            &[
                ("authorization", "Bearer sk-client-secret-999"),
                ("x-request-id", "req-abc-123"),
                ("connection", "keep-alive"),
                ("openai-beta", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    // The provider with no key was skipped, not tried: one attempt made.
    assert_eq!(r.header("x-detour-attempts"), Some("1"));
    let seen = &m.requests()[0];
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(seen.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(seen.header("openai-beta"), Some("kept"));
    assert!(!seen
        .headers
        .iter()
        .any(|(_, v)| v.contains("sk-client-secret")));
    // Only skipped targets: one error that says why.
    let r = gw.chat(&chat_body("gpt-4o/nokey", false)).await;
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["error"]["attempts"][0]["skipped"], true);
    assert!(v["error"]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("DETOUR_UNSET_KEY_VAR"));
    // No key of either side reaches the log.
    let log = gw
        .stderr_when(|l| l.matches("\"log\":\"access\"").count() >= 2)
        .await;
    assert!(log.contains("\"log\":\"access\""), "{log}");
    assert!(!log.contains(PROVIDER_KEY));
    assert!(!log.contains("sk-client-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_auth_error_text_never_reaches_the_client() {
    // A provider 401 quoting the key it was given: the client must not see that text.
    let m = mock_with(MockConfig {
        name: format!("key {PROVIDER_KEY}"),
        status: 401,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 401);
    assert!(!r.text().contains(PROVIDER_KEY), "{}", r.text());
    assert!(!r.text().contains("sk-provider"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start(&two(&bad, &good)).await;
    let r = request(gw.port, "GET", "/v1/models", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "gpt-4o");
    assert_eq!(v["data"][0]["providers"], serde_json::json!(["p1", "p2"]));
    for stream in [false, true] {
        assert_eq!(gw.chat(&chat_body("gpt-4o", stream)).await.status, 200);
    }
    let expected = [
        "detour_requests_total{outcome=\"success\"} 2",
        "detour_attempts_total{outcome=\"rate_limited\",provider=\"p1\"} 2",
        "detour_attempts_total{outcome=\"success\",provider=\"p2\"} 2",
        "detour_fallbacks_total{provider=\"p1\",reason=\"rate_limited\"} 2",
        "detour_requests_in_flight 0",
        "detour_attempts_per_request_count 2",
        "detour_upstream_ttfb_seconds_count{provider=\"p2\"} 2",
        "detour_stream_ttft_seconds_count{provider=\"p2\"} 1",
        "detour_request_duration_seconds_count{stream=\"true\"} 1",
    ];
    let m = gw.metrics_with(&expected).await;
    for line in expected {
        assert!(m.lines().any(|l| l == line), "missing `{line}` in:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connection_serves_many_requests() {
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    for i in 0..20 {
        let body = chat_body("gpt-4o", i % 2 == 1);
        send_request(
            &mut sock,
            "POST",
            "/v1/chat/completions",
            &[],
            body.as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut sock).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(m.calls(), 20);
    // Upstream connections are pooled, not opened per request.
    let conns = m
        .stats
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns <= 2, "{conns} upstream connections for 20 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_a_go_ahead() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "limits: {{max-body-bytes: 100000}}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let body = chat_body("gpt-4o", false);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // The go-ahead must come before any body byte is sent (curl would wait a second).
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), sock.read(&mut buf))
        .await
        .expect("no 100 Continue within 500 ms")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    sock.write_all(body.as_bytes()).await.unwrap();
    let r = read_response(&mut sock).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Too large: refused at once, without a go-ahead.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    sock.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5000000\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, _, _) = read_head(&mut sock).await.unwrap();
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_url_and_key_header() {
    let az = mock("azure").await;
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: az, kind: azure, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY, api-version: \"2024-10-21\"}}\nmodels:\n  gpt-4o:\n    - {{provider: az, id: gpt-4o-2024-08-06, deployment: prod-4o}}\n",
        az.addr
    ))
    .await;
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", true),
            &[("authorization", "Bearer sk-client-secret")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("az"));
    assert_eq!(r.header("x-detour-model"), Some("gpt-4o-2024-08-06"));
    let seen = &az.requests()[0];
    assert_eq!(
        seen.path,
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen.header("api-key"), Some(PROVIDER_KEY));
    assert_eq!(
        seen.header("authorization"),
        None,
        "no bearer token to Azure"
    );
    assert!(seen.body.starts_with(br#"{"model":"gpt-4o-2024-08-06""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_faults_can_be_chosen_per_request() {
    // The x-mock-* headers reach the mock through detour (they are ordinary client headers),
    // so one healthy mock can be made to fail per request.
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &m)
    ))
    .await;
    let body = chat_body("gpt-4o", false);
    let r = gw.chat_with(&body, &[("x-mock-status", "503")]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = gw.chat_with(&body, &[("x-mock-fault", "reset")]).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("closed the connection"), "{}", r.text());
    let t = Instant::now();
    let r = gw.chat_with(&body, &[("x-mock-delay-ms", "300")]).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let r = gw
        .chat_with(&chat_body("gpt-4o", true), &[("x-mock-chunks", "2")])
        .await;
    assert_eq!(
        sse_data(&r.body).len(),
        5,
        "role + 2 chunks + finish + [DONE]"
    );
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "without headers the mock is healthy");
    assert_eq!(m.calls(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_capabilities_skip_routes_and_show_in_models() {
    let a = mock("a").await;
    let b = mock("b").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  textonly:\n    capabilities: [tools]\n    price: {{input: 1.5, output: 2}}\n    context-window: 8192\n    routes:\n      - {{provider: p1, id: t1}}\n      - {{provider: p2, id: t2, capabilities: [tools, vision]}}\n",
        provider("p1", &a),
        provider("p2", &b)
    ))
    .await;
    let image = r#"{"model":"textonly","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
    let r = gw.chat(image).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("1"));
    assert_eq!(
        a.calls(),
        0,
        "a route without vision is never sent an image"
    );
    assert_eq!(b.calls(), 1);
    // Text only: the first route serves.
    let r = gw.chat(&chat_body("textonly", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!(a.calls(), 1);
    // Pinned to the route that cannot: a 400 naming the reason, nothing sent.
    let r = gw
        .chat(&image.replace("\"textonly\"", "\"textonly/p1\""))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("vision"), "{}", r.text());
    assert_eq!(a.calls(), 1);
    // The facts are in /v1/models.
    let r = request(gw.port, "GET", "/v1/models", &[], b"")
        .await
        .unwrap();
    let v = r.json();
    let m = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "textonly")
        .unwrap()
        .clone();
    assert_eq!(m["context_window"], 8192);
    assert_eq!(m["price"]["input_per_mtok"], 1.5);
    assert_eq!(m["capabilities"], serde_json::json!(["tools"]));
    assert_eq!(
        m["routes"][1]["capabilities"],
        serde_json::json!(["tools", "vision"])
    );
    assert_eq!(m["routes"][1]["id"], "t2");
}
