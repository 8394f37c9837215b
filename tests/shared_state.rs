//! What requests share: circuit breakers opening and closing, the request deadline, the retry
//! budget, hedging, and accounting and ordering across targets. Each test asserts what the
//! client saw and how often each upstream was called.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::chains::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_provider_is_skipped_while_down_and_back_soon_after() {
    let p1 = mock("p1").await;
    let p2 = mock("p2").await;
    let fo = "  circuit-breaker: {consecutive-failures: 3, cool-down: 500ms}\n";
    let gw = gateway(&chain(&p1, &p2, fo)).await;
    let served = |r: &Response| r.header("x-detour-provider").unwrap_or("none").to_string();
    assert_eq!(served(&gw.chat(&chat_body("gpt-4o", false)).await), "p1");
    p1.set_status(503);
    let down = Instant::now();
    let mut during = Vec::new();
    while down.elapsed() < Duration::from_secs(2) {
        let r = gw.chat(&chat_body("gpt-4o", true)).await;
        assert_eq!(r.status, 200);
        assert!(ends_with_done(&r.body));
        during.push(served(&r));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage_calls = p1.calls() - 1;
    assert!(during.iter().all(|s| s == "p2"), "{during:?}");
    // 3 failures open it; then about one probe per 500 ms cool-down.
    assert!(during.len() > 20, "{} requests", during.len());
    assert!(
        outage_calls <= 3 + 5,
        "{outage_calls} calls to p1 during the outage"
    );
    p1.set_status(200);
    let up = Instant::now();
    let mut back_after = None;
    while up.elapsed() < Duration::from_secs(3) {
        let r = gw.chat(&chat_body("gpt-4o", false)).await;
        if served(&r) == "p1" {
            back_after = Some(up.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back_after = back_after.expect("back on p1 after recovery");
    // Back once the cool-down (500 ms) has passed and one probe succeeded.
    let cool_down = Duration::from_millis(500);
    assert!(back_after < cool_down + T, "{back_after:?}");
    for _ in 0..5 {
        assert_eq!(served(&gw.chat(&chat_body("gpt-4o", false)).await), "p1");
    }
    let t1 = admin_target(&gw, "p1").await;
    assert_eq!(t1["state"], "closed", "{t1}");
    assert!(t1["times_opened"].as_u64().unwrap() >= 1, "{t1}");
    let m = gw.metrics().await;
    assert!(
        m.contains("detour_circuit_opened_total{provider=\"p1\"}"),
        "{m}"
    );
    assert!(
        m.contains("detour_circuit_state{model=\"gpt-4o\",provider=\"p1\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fail_ends_inside_the_deadline() {
    let h1 = mock_with(MockConfig {
        fault: Fault::Hang,
        ..mock_cfg("h1")
    })
    .await;
    let h2 = mock_with(MockConfig {
        fault: Fault::Hang,
        ..mock_cfg("h2")
    })
    .await;
    let body = format!(
        "failover:\n  deadline: 1500ms\nproviders:\n{}{}",
        provider("h1", &h1),
        provider("h2", &h2)
    );
    // First-byte 5 s per attempt; the request's deadline is what ends it.
    let gw = Gateway::start_full(
        &body,
        "timeouts: {connect: 1s, first-byte: 5s, idle: 5s, total: 20s}\n",
    )
    .await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("m/h1,m/h2", false)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    let deadline = Duration::from_millis(1500);
    assert!(took >= deadline - EARLY && took < deadline + T, "{took:?}");
    let a = r.json()["error"]["attempts"].clone();
    assert_eq!(a[0]["source"], "m/h1");
    assert_eq!(a[1]["source"], "m/h2");
    assert_eq!(a[1]["skipped"], true, "{a}");
    assert!(a[1]["error"].as_str().unwrap().contains("deadline"), "{a}");
    // A client may lower it for one request.
    let t = Instant::now();
    let r = gw
        .chat_with(
            &chat_body("m/h1,m/h2", true),
            &[("x-detour-timeout", "400ms")],
        )
        .await;
    assert_eq!(r.status, 504);
    let lowered = Duration::from_millis(400);
    assert!(t.elapsed() < lowered + T, "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_fallbacks() {
    let p1 = mock_with(MockConfig {
        status: 503,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    // Floor: 0.2/s over 10 s = 2 extra attempts; 20% of a handful of requests is less.
    let fo = "  circuit-breaker: {enabled: false}\n  retry-budget: {ratio: 0.2, window: 10s, min-per-second: 0.2}\n";
    let gw = gateway(&chain(&p1, &p2, fo)).await;
    let mut providers = Vec::new();
    for _ in 0..5 {
        let r = gw.chat(&chat_body("gpt-4o", false)).await;
        providers.push((r.status, r.header("x-detour-provider").map(str::to_string)));
    }
    assert_eq!(p2.calls(), 2, "{providers:?}");
    assert_eq!(p1.calls(), 5);
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 503);
    let a = r.json()["error"]["attempts"].clone();
    assert!(
        a[1]["error"].as_str().unwrap().contains("retry budget"),
        "{a}"
    );
    gw.expect_metrics(&["detour_retry_budget_exhausted_total 4"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_starts_the_next_target_and_takes_the_first_content() {
    let slow = mock_with(MockConfig {
        first_token_delay: Duration::from_millis(1500),
        ..mock_cfg("p1")
    })
    .await;
    let fast = mock("p2").await;
    let gw = Gateway::start_full(
        &chain(&slow, &fast, "  hedge: {after: 300ms}\n"),
        "timeouts: {connect: 1s, first-byte: 5s, first-token: 5s, idle: 5s, total: 20s}\n",
    )
    .await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    let took = t.elapsed();
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(streamed_text(&r.body), "Hello from p2 tok1 tok2 tok3 tok4");
    // After the hedge delay (300 ms), before the slow target's first token (1500 ms).
    let (hedge, slow_first_token) = (Duration::from_millis(300), Duration::from_millis(1500));
    assert!(took >= hedge - EARLY && took < slow_first_token, "{took:?}");
    assert_eq!((slow.calls(), fast.calls()), (1, 1));
    // The loser was cancelled: its connection closed, so its answer could not be finished.
    use std::sync::atomic::Ordering::SeqCst;
    let t = Instant::now();
    while slow.stats.aborted.load(SeqCst) == 0 && t.elapsed() < slow_first_token + T {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.stats.aborted.load(SeqCst), 1);
    assert_eq!(slow.stats.completed.load(SeqCst), 0);
    // JSON is never hedged.
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_is_the_serving_targets_and_ordering_by_price() {
    let p1 = mock_with(MockConfig {
        status: 500,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let p3 = mock("p3").await;
    let body = format!(
        "failover:\n  order: price\nproviders:\n{}{}{}models:\n  gpt-4o:\n    - {{provider: p3, price: {{input: 10, output: 40}}}}\n    - {{provider: p2, price: {{input: 2, output: 8}}}}\n    - {{provider: p1, price: {{input: 1, output: 2}}}}\n",
        provider("p1", &p1),
        provider("p2", &p2),
        provider("p3", &p3)
    );
    let gw = gateway(&body).await;
    // Listed p3, p2, p1; cheapest first: p1 fails, p2 (cheaper than p3) serves.
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o", "the serving target's model id");
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert!(ends_with_done(&r.body));
    let want = [
        "detour_tokens_total{kind=\"prompt\",model=\"gpt-4o\",provider=\"p2\"} 9",
        "detour_tokens_total{kind=\"completion\",model=\"gpt-4o\",provider=\"p2\"} 3",
    ];
    let m = gw.metrics_with(&want).await;
    for w in want {
        assert!(m.contains(w), "{w}\n{m}");
    }
    // The JSON answer's usage only (the mock's stream reports none); none for p1's failures.
    assert!(!m.contains("detour_tokens_total{kind=\"prompt\",model=\"gpt-4o\",provider=\"p1\""));
    // 9 × $2/M + 3 × $8/M
    let cost: f64 = m
        .lines()
        .find(|l| l.starts_with("detour_cost_usd_total{model=\"gpt-4o\",provider=\"p2\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((cost - 0.000042).abs() < 1e-9, "{cost}");
    assert_eq!((p1.calls(), p2.calls(), p3.calls()), (2, 2, 0));
}

/// A hedge partner that fails at once does not win the race: the slow first target still
/// serves, and the partner's failure is listed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_fails_fast_does_not_cancel_the_first_target() {
    let slow = mock_with(MockConfig {
        first_token_delay: Duration::from_millis(600),
        ..mock_cfg("p1")
    })
    .await;
    let failing = mock_with(MockConfig {
        status: 503,
        ..mock_cfg("p2")
    })
    .await;
    let gw = Gateway::start_full(
        &chain(&slow, &failing, "  hedge: {after: 100ms}\n"),
        "timeouts: {connect: 1s, first-byte: 5s, first-token: 5s, idle: 5s, total: 20s}\n",
    )
    .await;
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1 tok2 tok3 tok4");
    assert_eq!((slow.calls(), failing.calls()), (1, 1));
    assert_eq!(
        r.header("x-detour-attempts"),
        Some("2"),
        "the hedge is counted"
    );
    let log = gw.stderr_when(|l| l.contains("\"log\":\"access\"")).await;
    assert!(log.contains("\"outcome\":\"server_error\""), "{log}");
}
