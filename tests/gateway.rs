//! Integration tests: the real detour binary, mock providers on 127.0.0.1:0, real sockets.
//! Each test asserts what the client received and how often each upstream was called.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::{Duration, Instant};

fn two(a: &MockServer, b: &MockServer) -> String {
    format!(
        "providers:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1, id: gpt-4o-p1}}\n    - {{provider: p2, id: gpt-4o-p2}}\n",
        provider("p1", a),
        provider("p2", b)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_pass_through_is_byte_exact() {
    let m = mock("solo").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o:\n    - {{provider: p1}}\n",
        provider("p1", &m)
    ))
    .await;
    // The model id does not change, so the provider must get the client's bytes exactly.
    let body = r#"{ "model" : "gpt-4o", "messages":[{"role":"user","content":"h\u00e9llo \"q\""}],"temperature":0.25,"x_vendor":{"nested":[true,null,1e3]} }"#;
    let r = gw.chat(body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.calls(), 1);
    let seen = &m.requests()[0];
    assert_eq!(seen.body.as_ref(), body.as_bytes());
    assert_eq!(seen.path, "/v1/chat/completions");
    // And the client gets the provider's bytes exactly: compare with asking the mock directly.
    let direct = request(
        m.addr.port(),
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.body, direct.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!(r.header("x-detour-model"), Some("gpt-4o"));
    assert_eq!(r.header("x-detour-attempts"), Some("1"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("0"));
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_pass_through_is_byte_exact() {
    let m = mock("solo").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o:\n    - {{provider: p1}}\n",
        provider("p1", &m)
    ))
    .await;
    let body = chat_body("gpt-4o", true);
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let direct = request(
        m.addr.port(),
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.text(), direct.text());
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fallback_status_moves_on() {
    for status in [401u16, 403, 404, 408, 429, 500, 502, 503, 504] {
        let bad = mock_with(MockConfig {
            name: "bad".into(),
            status,
            ..MockConfig::default()
        })
        .await;
        let good = mock("good").await;
        let gw = Gateway::start(&two(&bad, &good)).await;
        for stream in [false, true] {
            let r = gw.chat(&chat_body("gpt-4o", stream)).await;
            assert_eq!(
                r.status,
                200,
                "status {status} stream {stream}: {}",
                r.text()
            );
            assert_eq!(r.header("x-detour-provider"), Some("p2"), "{status}");
            assert_eq!(r.header("x-detour-model"), Some("gpt-4o-p2"));
            assert_eq!(r.header("x-detour-attempts"), Some("2"));
            assert_eq!(r.header("x-detour-fallback-index"), Some("1"));
            assert!(r.text().contains("Hello from good"));
        }
        assert_eq!(bad.calls(), 2, "status {status}");
        assert_eq!(good.calls(), 2, "status {status}");
        // The provider-side id was written into each forwarded body.
        assert!(bad.requests()[0]
            .body
            .starts_with(br#"{"model":"gpt-4o-p1""#));
        assert!(good.requests()[0]
            .body
            .starts_with(br#"{"model":"gpt-4o-p2""#));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_4xx_go_back_to_the_client_unchanged() {
    for status in [400u16, 409, 413, 422] {
        let bad = mock_with(MockConfig {
            name: "bad".into(),
            status,
            ..MockConfig::default()
        })
        .await;
        let good = mock("good").await;
        let gw = Gateway::start(&two(&bad, &good)).await;
        let r = gw.chat(&chat_body("gpt-4o", false)).await;
        assert_eq!(r.status, status);
        let direct = request(
            bad.addr.port(),
            "POST",
            "/v1/chat/completions",
            &[],
            chat_body("gpt-4o", false).as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(
            r.body, direct.body,
            "{status}: the provider's error, unchanged"
        );
        assert_eq!(r.header("x-detour-provider"), Some("p1"));
        assert_eq!(bad.calls(), 2); // ours and the direct one
        assert_eq!(good.calls(), 0, "{status} must not fall back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_falls_back() {
    let good = mock("good").await;
    let (_reserved, dead_port) = reserved_port();
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: dead, kind: openai, base-url: \"http://127.0.0.1:{dead_port}/v1\"}}\n{}models:\n  gpt-4o: [{{provider: dead}}, {{provider: p2}}]\n",
        provider("p2", &good)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(good.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_headers_falls_back() {
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        fault: Fault::Reset,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start(&two(&bad, &good)).await;
    for stream in [false, true] {
        let r = gw.chat(&chat_body("gpt-4o", stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-detour-provider"), Some("p2"));
    }
    assert_eq!(bad.calls(), 2);
    assert_eq!(good.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_falls_back_after_one_timeout() {
    let silent = mock_with(MockConfig {
        name: "silent".into(),
        fault: Fault::Hang,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start_full(
        &two(&silent, &good),
        "timeouts: {connect: 1s, first-byte: 400ms, idle: 2s, total: 20s}\n",
    )
    .await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    // One first-byte timeout (400 ms), then the fallback: less than another connect timeout.
    let (first_byte, connect) = (Duration::from_millis(400), Duration::from_secs(1));
    assert!(took >= first_byte - Duration::from_millis(50), "{took:?}");
    assert!(took < first_byte + connect, "{took:?}");
    assert_eq!(silent.calls(), 1, "a silent target is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_json_body_falls_back() {
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        fault: Fault::CloseMidBody,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start(&two(&bad, &good)).await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert!(r.json()["choices"][0]["message"]["content"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_failed_error_has_the_exact_shape() {
    let a = mock_with(MockConfig {
        name: "a".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let b = mock_with(MockConfig {
        name: "b".into(),
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let (_reserved, dead) = reserved_port();
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{name: dead, kind: openai, base-url: \"http://127.0.0.1:{dead}/v1\"}}\nmodels:\n  gpt-4o: [{{provider: p1}}, {{provider: p2}}, {{provider: dead}}]\n",
        provider("p1", &a),
        provider("p2", &b)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 502, "mixed statuses → 502");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-detour-attempts"), Some("3"));
    let v = r.json();
    assert_eq!(v["error"]["message"], "All fallback attempts failed", "{v}");
    assert_eq!(v["error"]["type"], "all_attempts_failed");
    let at = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(at.len(), 3);
    assert_eq!(
        at[0],
        serde_json::json!({"source":"gpt-4o/p1","error":"Rate limit exceeded (a)","status":429})
    );
    assert_eq!(
        at[1],
        serde_json::json!({"source":"gpt-4o/p2","error":"The server had an error while processing your request (b)","status":503})
    );
    assert_eq!(at[2]["source"], "gpt-4o/dead");
    assert!(
        at[2].get("status").is_none(),
        "no upstream status: {}",
        at[2]
    );
    assert!(at[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("connect failed"));
    // Every attempt with the same status → that status.
    let r = gw.chat(&chat_body("gpt-4o/p1,gpt-4o-mini/p1", false)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(a.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_and_bare_model_expansion_order() {
    let m1 = mock_with(MockConfig {
        name: "m1".into(),
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let m2 = mock_with(MockConfig {
        name: "m2".into(),
        status: 500,
        ..MockConfig::default()
    })
    .await;
    let m3 = mock("m3").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{}models:\n  gpt-4o: [{{provider: p1}}, {{provider: p2}}, {{provider: p3}}]\n",
        provider("p1", &m1),
        provider("p2", &m2),
        provider("p3", &m3)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p3"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("2"));
    assert_eq!((m1.calls(), m2.calls(), m3.calls()), (1, 1, 1));
    // The order tried is the catalog's: visible in the all-failed list with p3 excluded.
    let r = gw.chat(&chat_body("gpt-4o,!p3", false)).await;
    let v = r.json();
    let sources: Vec<&str> = v["error"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["gpt-4o/p1", "gpt-4o/p2"]);
    // `!p1` anywhere in the chain removes p1 everywhere.
    let r = gw.chat(&chat_body("gpt-4o/p1,gpt-4o,!p1", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p3"));
    assert_eq!(r.header("x-detour-attempts"), Some("2"));
    assert_eq!((m1.calls(), m2.calls(), m3.calls()), (2, 3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_body_falls_back_intact() {
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    // Same provider-side id on both, so both must receive the client's bytes exactly.
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  gpt-4o: [{{provider: p1}}, {{provider: p2}}]\n",
        provider("p1", &bad),
        provider("p2", &good)
    ))
    .await;
    let filler: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{filler}"}}]}}"#);
    assert!(body.len() > 1 << 20);
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(bad.requests()[0].body.as_ref(), body.as_bytes());
    assert_eq!(good.requests()[0].body.as_ref(), body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_stream_chunk_arrives_before_the_upstream_finishes() {
    let slow = mock_with(MockConfig {
        name: "slow".into(),
        chunks: 5,
        chunk_interval: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &slow)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200);
    // 8 events, 300 ms apart: the first must arrive long before the last. The role-only
    // event is held back until the first content, 300 ms later, and goes with it.
    let first = *r.chunk_times.first().unwrap();
    let last = *r.chunk_times.last().unwrap();
    let interval = Duration::from_millis(300);
    assert!(first < 2 * interval, "first chunk at {first:?}");
    assert!(
        last >= 6 * interval - Duration::from_millis(50),
        "last chunk at {last:?}"
    );
    assert!(r.chunk_times.len() >= 6, "{} chunks", r.chunk_times.len());
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_falls_back_before_the_first_byte() {
    // Header sent, then a reset before any event: the client must never see p1.
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        fault: Fault::ResetMidStream,
        fault_after: 0,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start(&two(&bad, &good)).await;
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    let data = sse_data(&r.body);
    assert!(data.iter().all(|d| !d.contains("\"error\"")), "{data:?}");
    assert!(r.text().contains("Hello from good"));
    assert!(!r.text().contains("bad"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!((bad.calls(), good.calls()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_stream_ends_with_an_error_event_and_no_done() {
    for fault in [Fault::ResetMidStream, Fault::StallMidStream] {
        let bad = mock_with(MockConfig {
            name: "bad".into(),
            fault,
            fault_after: 3,
            ..MockConfig::default()
        })
        .await;
        let good = mock("good").await;
        let gw = Gateway::start_full(
            &two(&bad, &good),
            "timeouts: {connect: 1s, first-byte: 2s, idle: 500ms, total: 20s}\n",
        )
        .await;
        let r = gw.chat(&chat_body("gpt-4o", true)).await;
        assert_eq!(r.status, 200, "committed before the failure");
        assert_eq!(r.header("x-detour-provider"), Some("p1"));
        let data = sse_data(&r.body);
        assert_eq!(
            data.len(),
            4,
            "{fault:?}: 3 events then the error: {data:?}"
        );
        assert!(data[..3]
            .iter()
            .all(|d| d.contains("chat.completion.chunk")));
        let err: serde_json::Value = serde_json::from_str(&data[3]).unwrap();
        assert_eq!(err["error"]["code"], "stream_interrupted", "{err}");
        assert!(!r.text().contains("[DONE]"));
        assert_eq!(good.calls(), 0, "no fallback after commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_the_upstream_stream() {
    let slow = mock_with(MockConfig {
        name: "slow".into(),
        chunks: 40,
        chunk_interval: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &slow)
    ))
    .await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let body = chat_body("gpt-4o", true);
    send_request(
        &mut sock,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, rest) = read_head(&mut sock).await.unwrap();
    assert_eq!(status, 200);
    let mut dec = ChunkDecoder::new(rest);
    assert!(dec.next_chunk(&mut sock).await.unwrap().is_some());
    drop(sock); // the client goes away 1 of 42 events in
    let t = Instant::now();
    while slow.stats.aborted.load(std::sync::atomic::Ordering::SeqCst) == 0
        && t.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.stats.aborted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upstream stream was not aborted"
    );
    // Sooner than any timeout (the default test gateway's idle timeout is 2 s).
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        slow.stats
            .completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

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
async fn client_disconnect_aborts_a_silent_upstream_at_once() {
    // The upstream never answers and the first-byte timeout is long: only watching the client
    // connection can end the upstream request early.
    let silent = mock_with(MockConfig {
        name: "silent".into(),
        fault: Fault::Hang,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start_full(
        &format!(
            "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
            provider("p1", &silent)
        ),
        "timeouts: {connect: 1s, first-byte: 30s, idle: 30s, total: 60s}\n",
    )
    .await;
    for stream in [false, true] {
        let before = silent
            .stats
            .aborted
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let body = chat_body("gpt-4o", stream);
        send_request(
            &mut sock,
            "POST",
            "/v1/chat/completions",
            &[],
            body.as_bytes(),
        )
        .await
        .unwrap();
        let t = Instant::now();
        while silent.calls() == usize::from(stream) && t.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            silent.calls(),
            1 + usize::from(stream),
            "the request reached the upstream"
        );
        drop(sock);
        let t = Instant::now();
        while silent
            .stats
            .aborted
            .load(std::sync::atomic::Ordering::SeqCst)
            == before
            && t.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Far sooner than the 30 s first-byte timeout: only the client's leaving ends it.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stream={stream}: upstream still open {:?} after the client left",
            t.elapsed()
        );
    }
    let m = gw
        .metrics_with(&["detour_requests_total{outcome=\"client_closed\"} 2"])
        .await;
    assert!(
        m.lines()
            .any(|l| l == "detour_requests_total{outcome=\"client_closed\"} 2"),
        "{m}"
    );
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
async fn dns_failure_falls_back() {
    // `.invalid` never resolves (RFC 6761): the lookup fails and the next target serves.
    let good = mock("good").await;
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: nowhere, kind: openai, base-url: \"http://detour-test.invalid:9/v1\"}}\n{}models:\n  gpt-4o: [{{provider: nowhere}}, {{provider: p2}}]\n",
        provider("p2", &good)
    ))
    .await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(r.header("x-detour-attempts"), Some("2"));
    let r = gw.chat(&chat_body("gpt-4o/nowhere", false)).await;
    assert_eq!(r.status, 502);
    let err = r.json()["error"]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("DNS lookup of detour-test.invalid failed"),
        "{err}"
    );
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
