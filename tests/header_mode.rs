//! The header mode over real sockets: `Helicone-Target-Url` on Pingora's proxy path and
//! `Helicone-Fallbacks` through the engine, against programmable upstreams on loopback (which
//! the test config's allow-lists open), and the private-network refusals without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::header_mode::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn target_url_forwards_path_query_headers_and_body() {
    let up = ok_upstream(br#"{"ok":true}"#).await;
    let gw = gateway("").await;
    let target = format!("{}/prefix/", origin(&up));
    let body = br#"{"model":"gpt-4o","input":"hello"}"#;
    let r = post(
        &gw,
        "/v1/embeddings?dims=3&x=%2F",
        &[
            ("helicone-target-url", &target),
            ("authorization", "Bearer client-own-key"),
            ("helicone-auth", "Bearer helicone-key"),
            ("x-detour-timeout", "5s"),
            ("x-custom", "kept"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, br#"{"ok":true}"#);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("x-detour-provider"), Some("127.0.0.1"));
    assert_eq!(r.header("x-detour-attempts"), Some("1"));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let q = &reqs[0];
    assert_eq!(q.method, "POST");
    assert_eq!(q.path, "/prefix/v1/embeddings?dims=3&x=%2F");
    assert_eq!(q.body, body);
    assert_eq!(q.header("authorization"), Some("Bearer client-own-key"));
    assert_eq!(q.header("x-custom"), Some("kept"));
    assert_eq!(q.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(q.header("helicone-auth"), None);
    assert_eq!(q.header("helicone-target-url"), None);
    assert_eq!(q.header("x-detour-timeout"), None);
    gw.expect_metrics(&["detour_attempts_total{outcome=\"success\",provider=\"unapproved\"} 1"])
        .await;
}

#[tokio::test]
async fn target_url_relays_a_stream_chunk_by_chunk() {
    let up = RawUpstream::start(|_| {
        let mut steps = vec![Step::Send(chunked_head(200, "text/event-stream"))];
        for i in 0..3 {
            steps.push(Step::Send(chunk(&content_event(&format!("part{i}")))));
            steps.push(Step::Sleep(Duration::from_millis(300)));
        }
        steps.push(Step::Send(chunk(b"data: [DONE]\n\n")));
        steps.push(Step::Send(b"0\r\n\r\n".to_vec()));
        steps
    })
    .await;
    let gw = gateway("").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[("helicone-target-url", &origin(&up))],
        chat_body("gpt-4o", true).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(streamed_text(&r.body), "part0part1part2");
    // Relayed as they came: the last chunk arrives ~600 ms after the first, not all at once.
    let (first, last) = (r.chunk_times[0], *r.chunk_times.last().unwrap());
    assert!(
        last - first >= Duration::from_millis(500),
        "{:?}",
        r.chunk_times
    );
}

#[tokio::test]
async fn target_url_carries_a_multipart_upload_and_a_large_body_byte_exact() {
    let up = ok_upstream(b"{}").await;
    let gw = gateway("").await;
    let boundary = "----detourboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend((0..=255u8).cycle().take(300_000));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = post(
        &gw,
        "/v1/audio/transcriptions",
        &[("helicone-target-url", &origin(&up)), ("content-type", &ct)],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let r = post(
        &gw,
        "/v1/files",
        &[("helicone-target-url", &origin(&up))],
        &big,
    )
    .await;
    assert_eq!(r.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs[0].body, body);
    assert_eq!(reqs[0].header("content-type"), Some(ct.as_str()));
    assert_eq!(reqs[1].body.len(), big.len());
    assert!(reqs[1].body == big);
    // A large JSON body: its first part is read (for the model check) and then sent on first.
    let text = "x".repeat(1 << 20);
    let json_body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{text}"}}]}}"#);
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[
            ("helicone-target-url", &origin(&up)),
            ("content-type", "application/json"),
        ],
        json_body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(up.requests()[2].body == json_body.as_bytes());
}

#[tokio::test]
async fn a_redirect_goes_back_to_the_client_unfollowed() {
    let up = RawUpstream::start(|_| {
        vec![Step::Send(http_response(
            302,
            &[("location", "http://169.254.169.254/latest/meta-data")],
            b"",
        ))]
    })
    .await;
    let gw = gateway("").await;
    let r = request(
        gw.port,
        "GET",
        "/v1/models",
        &[("helicone-target-url", &origin(&up))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://169.254.169.254/latest/meta-data")
    );
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn an_unreachable_target_is_an_all_failed_error_naming_it() {
    let (_hold, port) = reserved_port();
    let gw = gateway("").await;
    let target = format!("http://127.0.0.1:{port}");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[("helicone-target-url", &target)],
        chat_body("gpt-4o", false).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "all_attempts_failed");
    assert_eq!(v["error"]["attempts"][0]["source"], target);
}

#[tokio::test]
async fn fallbacks_move_on_by_code_and_range_and_mark_the_index() {
    let a = status_upstream(429, br#"{"error":"slow down"}"#).await;
    let b = status_upstream(503, br#"{"error":"down"}"#).await;
    let c = ok_upstream(br#"{"served":"c"}"#).await;
    let gw = gateway("").await;
    let list = json!([
        entry(&origin(&a), json!([429])),
        entry(&origin(&b), json!([{"from": 500, "to": 599}])),
        entry(&origin(&c), json!([])),
    ]);
    let body = chat_body("gpt-4o", false);
    let r = with_fallbacks(&gw, &list, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, br#"{"served":"c"}"#);
    assert_eq!(r.header("helicone-fallback-index"), Some("2"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("2"));
    assert_eq!(r.header("x-detour-provider"), Some("127.0.0.1"));
    assert_eq!(r.header("x-detour-attempts"), Some("3"));
    for u in [&a, &b, &c] {
        assert_eq!(u.calls(), 1);
        assert_eq!(u.requests()[0].body, body.as_bytes());
        assert_eq!(u.requests()[0].path, "/v1/chat/completions");
    }
    // A status not in the entry's onCodes is the answer, whatever it is.
    let list = json!([
        entry(&origin(&b), json!([429])),
        entry(&origin(&c), json!([]))
    ]);
    let r = with_fallbacks(&gw, &list, body.as_bytes()).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, br#"{"error":"down"}"#);
    assert_eq!(r.header("helicone-fallback-index"), Some("0"));
    assert_eq!(c.calls(), 1, "not called again");
}

#[tokio::test]
async fn the_last_entry_answers_as_it_is() {
    let a = status_upstream(500, br#"{"error":"first"}"#).await;
    let b = status_upstream(500, br#"{"error":"last"}"#).await;
    let gw = gateway("").await;
    let list = json!([
        entry(&origin(&a), json!([500])),
        entry(&origin(&b), json!([500]))
    ]);
    let r = with_fallbacks(&gw, &list, chat_body("m", false).as_bytes()).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, br#"{"error":"last"}"#);
    assert_eq!(r.header("helicone-fallback-index"), Some("1"));
}

#[tokio::test]
async fn entry_headers_replace_the_clients_and_overrides_merge_deep() {
    let a = status_upstream(429, b"{}").await;
    let b = ok_upstream(b"{}").await;
    let gw = gateway("").await;
    let list = json!([
        entry(&origin(&a), json!([429])),
        {"target-url": format!("{}/openai", origin(&b)),
         "headers": {"authorization": "Bearer second-key", "x-extra": "1"},
         "onCodes": [],
         "bodyKeyOverride": {"model": "llama-3", "opts": {"deep": {"y": 3}}}}
    ]);
    let body = br#"{"model":"gpt-4o","opts":{"t":1,"deep":{"x":1,"y":2}},"messages":[]}"#;
    let r = with_fallbacks(&gw, &list, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = &a.requests()[0];
    assert_eq!(first.header("authorization"), Some("Bearer client-key"));
    assert_eq!(first.body, body);
    let second = &b.requests()[0];
    assert_eq!(second.path, "/openai/v1/chat/completions");
    assert_eq!(second.header("authorization"), Some("Bearer second-key"));
    assert_eq!(second.header("x-extra"), Some("1"));
    assert_eq!(second.header("helicone-fallbacks"), None);
    let sent: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(
        sent,
        json!({"model":"llama-3","opts":{"t":1,"deep":{"x":1,"y":3}},"messages":[]})
    );
}

#[tokio::test]
async fn connect_failures_and_time_outs_move_on() {
    let (_hold, port) = reserved_port();
    let hang = RawUpstream::start(|_| vec![Step::Hang]).await;
    let ok = ok_upstream(br#"{"ok":1}"#).await;
    let gw = gateway("  timeouts: {first-byte: 300ms}\n").await;
    let list = json!([
        entry(&format!("http://127.0.0.1:{port}"), json!([])),
        entry(&origin(&hang), json!([])),
        entry(&origin(&ok), json!([])),
    ]);
    let r = with_fallbacks(&gw, &list, chat_body("m", false).as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("helicone-fallback-index"), Some("2"));
    assert_eq!(hang.calls(), 1);
    // Nothing answers at all: every attempt listed.
    let list = json!([
        entry(&format!("http://127.0.0.1:{port}"), json!([])),
        entry(&origin(&hang), json!([])),
    ]);
    let r = with_fallbacks(&gw, &list, chat_body("m", false).as_bytes()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "all_attempts_failed");
    let attempts = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0]["error"].as_str().unwrap().contains("connect"));
    assert!(attempts[1]["error"]
        .as_str()
        .unwrap()
        .contains("no response"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_sdk_with_a_fallback_list_in_default_headers() {
    let flaky = mock_with(MockConfig {
        name: "flaky".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let gw = gateway("").await;
    let out = run_sdk_script(
        "openai_header_mode.py",
        vec![
            "--base-url".into(),
            format!("http://127.0.0.1:{}/v1", gw.port),
            "--primary".into(),
            format!("http://{}", flaky.addr),
            "--fallback".into(),
            format!("http://{}", steady.addr),
            "--override-model".into(),
            "llama-3.3-70b".into(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(flaky.calls(), 2, "the primary was tried for each call");
    assert_eq!(steady.calls(), 2);
    // The client's own key went to both targets.
    let seen = steady.requests();
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer sk-client-own-key")));
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_the_connection_goes_on() {
    let up = RawUpstream::start(|_| {
        vec![Step::Send(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\n".to_vec(),
        )]
    })
    .await;
    let gw = gateway("").await;
    let list = json!([entry(&origin(&up), json!([]))]).to_string();
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    send_request(
        &mut sock,
        "HEAD",
        "/v1/files/x",
        &[("helicone-fallbacks", &list)],
        b"",
    )
    .await
    .unwrap();
    let (status, headers, rest) = read_head(&mut sock).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-length" && v == "5"),
        "{headers:?}"
    );
    assert!(rest.is_empty(), "a body after a HEAD answer: {rest:?}");
    // The same connection serves the next request: nothing was left unread on it.
    send_request(&mut sock, "GET", "/health", &[], b"")
        .await
        .unwrap();
    let r = read_response(&mut sock).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, br#"{"status":"ok"}"#);
}

#[tokio::test]
async fn a_single_target_request_is_in_flight_until_it_ends() {
    let up = RawUpstream::start(|_| {
        vec![
            Step::Sleep(Duration::from_millis(800)),
            Step::Send(http_response(200, &[], b"{}")),
        ]
    })
    .await;
    let gw = gateway("").await;
    let target = origin(&up);
    let port = gw.port;
    let call = tokio::spawn(async move {
        request(
            port,
            "POST",
            "/v1/x",
            &[("helicone-target-url", &target)],
            b"{}",
        )
        .await
        .unwrap()
    });
    let m = gw.metrics_with(&["detour_requests_in_flight 1"]).await;
    assert!(m.lines().any(|l| l == "detour_requests_in_flight 1"), "{m}");
    assert_eq!(call.await.unwrap().status, 200);
    let m = gw.metrics_with(&["detour_requests_in_flight 0"]).await;
    assert!(m.lines().any(|l| l == "detour_requests_in_flight 0"), "{m}");
}
