//! Integration tests: the real detour binary, mock providers on 127.0.0.1:0, real sockets.
//! Each test asserts what the client received and how often each upstream was called.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::chains::two;
use common::*;
use std::time::{Duration, Instant};

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
