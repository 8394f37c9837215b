//! One test per provider fault: each injects the fault through the mock and asserts what the
//! client saw, how often each upstream was called, and how long it took (bounds derived from
//! the configured timeouts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::chains::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_without_retry_after_moves_on_at_once() {
    let p1 = mock_with(MockConfig {
        status: 429,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "  retry: {attempts-per-target: 3}\n")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(
        (p1.calls(), p2.calls()),
        (1, 1),
        "a 429 without Retry-After is not retried"
    );
    assert!(took < T, "moved on without waiting: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_retry_after_waits_or_moves_on_and_cools_the_target() {
    // Retry-After 1 s fits the 2 s maximum: wait, retry p1, and p1 serves.
    let p1 = mock_with(MockConfig {
        status: 429,
        retry_after: Some("1".into()),
        healthy_after: Some(1),
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let fo = "  retry: {attempts-per-target: 2, max-retry-after: 2s}\n";
    let gw = gateway(&chain(&p1, &p2, fo)).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!((p1.calls(), p2.calls()), (2, 0));
    let ra = Duration::from_secs(1);
    assert!(
        took >= ra - EARLY && took < ra + T,
        "waited the Retry-After: {took:?}"
    );
    drop(gw);

    // Retry-After 30 s is over the maximum: move on at once; the target is cooled for 30 s,
    // so the next request does not touch it.
    let q1 = mock_with(MockConfig {
        status: 429,
        retry_after: Some("30".into()),
        ..mock_cfg("q1")
    })
    .await;
    let q2 = mock("q2").await;
    let gw = gateway(&chain(&q1, &q2, fo)).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"), "{}", r.text());
    assert!(t.elapsed() < T, "moved on at once: {:?}", t.elapsed());
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(
        (q1.calls(), q2.calls()),
        (1, 2),
        "the cooled target was skipped"
    );
    let t1 = admin_target(&gw, "p1").await;
    assert_eq!(t1["state"], "open", "{t1}");
    assert!(t1["open_for_ms"].as_u64().unwrap() > 25_000, "{t1}");
    // Everything else being healthy, an all-failed error would list it as circuit_open.
    let r = gw.chat(&chat_body("gpt-4o/p1,!p2", false)).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        q1.calls(),
        2,
        "nothing else left: the open target is still tried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_once_then_healthy_is_retried_on_the_same_target() {
    let p1 = mock_with(MockConfig {
        status: 500,
        healthy_after: Some(1),
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let fo = "  retry: {attempts-per-target: 2, backoff-base: 100ms, backoff-max: 400ms}\n";
    let gw = gateway(&chain(&p1, &p2, fo)).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!(r.header("x-detour-attempts"), Some("2"));
    assert!(ends_with_done(&r.body));
    assert_eq!((p1.calls(), p2.calls()), (2, 0));
    // One backoff (at most backoff-max, 400 ms), no timeout.
    let backoff_max = Duration::from_millis(400);
    assert!(t.elapsed() < backoff_max + T, "{:?}", t.elapsed());
    gw.expect_metrics(&["detour_retries_total{provider=\"p1\",reason=\"server_error\"} 1"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_forever_uses_every_try_then_moves_on() {
    let p1 = mock_with(MockConfig {
        status: 503,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let fo = "  retry: {attempts-per-target: 3, backoff-base: 50ms, backoff-max: 200ms}\n";
    let gw = gateway(&chain(&p1, &p2, fo)).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"), "{}", r.text());
    assert_eq!(
        (p1.calls(), p2.calls()),
        (3, 1),
        "never more than 3 tries per target"
    );
    // Two backoffs (at most backoff-max, 200 ms, each), no timeout.
    let backoffs = 2 * Duration::from_millis(200);
    assert!(t.elapsed() < backoffs + T, "{:?}", t.elapsed());
    // Alone, it fails with every try listed. Its fifth consecutive failure (the second try here)
    // opens its circuit (consecutive-failures: 5), so the third try is not made but reported.
    let r = gw.chat(&chat_body("gpt-4o/p1", false)).await;
    assert_eq!(r.status, 503);
    let v = r.json();
    let tries = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(tries.len(), 3, "{}", r.text());
    assert_eq!(tries[1]["status"], 503, "{}", r.text());
    assert_eq!(tries[2]["skipped"], true, "{}", r.text());
    assert!(
        tries[2]["error"].as_str().unwrap().contains("circuit_open"),
        "{}",
        r.text()
    );
    assert_eq!(p1.calls(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_headers_moves_on() {
    let p1 = mock_with(MockConfig {
        fault: Fault::Reset,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "  retry: {attempts-per-target: 3}\n")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"), "{}", r.text());
    assert_eq!(streamed_text(&r.body), "Hello from p2 tok1 tok2 tok3 tok4");
    assert_eq!(
        (p1.calls(), p2.calls()),
        (1, 1),
        "a fresh connection's reset is not retried"
    );
    assert!(
        t.elapsed() < T,
        "no timeout was waited for: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_provider_costs_one_first_byte_timeout() {
    let p1 = mock_with(MockConfig {
        fault: Fault::Hang,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "  retry: {attempts-per-target: 3}\n")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    let took = t.elapsed();
    assert_eq!(r.header("x-detour-provider"), Some("p2"), "{}", r.text());
    assert_eq!(
        (p1.calls(), p2.calls()),
        (1, 1),
        "a silent target is not retried"
    );
    assert!(took >= T - EARLY && took < 2 * T, "one timeout: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_first_token_falls_back_invisibly() {
    // p1 sends its header and role event at once, then nothing for 3 s.
    let p1 = mock_with(MockConfig {
        first_token_delay: Duration::from_secs(3),
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert!(
        !r.text().contains("p1"),
        "nothing of p1 reached the client: {}",
        r.text()
    );
    assert_eq!(streamed_text(&r.body), "Hello from p2 tok1 tok2 tok3 tok4");
    assert!(ends_with_done(&r.body));
    assert!(took >= T - EARLY && took < 2 * T, "one timeout: {took:?}");
    assert_eq!((p1.calls(), p2.calls()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_mid_answer_ends_with_an_error_event() {
    let p1 = mock_with(MockConfig {
        fault: Fault::ResetMidStream,
        fault_after: 3,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1");
    assert_cut(&r.body, "stream_interrupted");
    assert_eq!((p1.calls(), p2.calls()), (1, 0), "no fallback after commit");
    assert!(
        t.elapsed() < T,
        "no timeout was waited for: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_mid_stream_ends_at_the_idle_deadline() {
    let p1 = mock_with(MockConfig {
        fault: Fault::StallMidStream,
        fault_after: 3,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    let took = t.elapsed();
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1");
    assert_cut(&r.body, "stream_interrupted");
    assert!(r.text().contains("idle timeout"), "{}", r.text());
    assert!(took >= T - EARLY && took < 2 * T, "one timeout: {took:?}");
    assert_eq!((p1.calls(), p2.calls()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_event_falls_back_before_commit_and_is_cut_after() {
    let p1 = mock_with(MockConfig {
        fault: Fault::BadEvent,
        fault_after: 1, // right after the role event: before any content
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "")).await;
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!(streamed_text(&r.body), "Hello from p2 tok1 tok2 tok3 tok4");
    assert!(ends_with_done(&r.body));
    assert_eq!((p1.calls(), p2.calls()), (1, 1));

    // After content: the client gets what came before it, an error event, no [DONE], and
    // never the broken bytes.
    let r = gw
        .chat_with(&chat_body("gpt-4o", true), &[("x-mock-fault-after", "3")])
        .await;
    assert_eq!(r.header("x-detour-provider"), Some("p1"));
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1");
    assert_cut(&r.body, "stream_interrupted");
    assert!(!r.text().contains("{\"content\n"), "{}", r.text());
    assert!(r.text().contains("not valid JSON"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_done_is_finalised_at_once_or_cut() {
    let p1 = mock_with(MockConfig {
        fault: Fault::NoDone,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "")).await;
    let t = Instant::now();
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    // The answer finished (finish_reason came) and the connection ended cleanly: detour
    // closes the stream properly, without waiting for the idle timeout.
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1 tok2 tok3 tok4");
    assert!(ends_with_done(&r.body), "{}", r.text());
    assert!(t.elapsed() < T, "not the idle timeout: {:?}", t.elapsed());
    // Ended cleanly but before the answer finished: never passed off as complete.
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", true),
            &[("x-mock-fault", "end-early"), ("x-mock-fault-after", "3")],
        )
        .await;
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1");
    assert_cut(&r.body, "stream_interrupted");
    assert_eq!((p1.calls(), p2.calls()), (2, 0));

    // "With usage if asked for". The upstream sent its usage chunk, then ended without [DONE]:
    // its usage is passed on as it is, and [DONE] follows.
    let asked = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.chat(asked).await;
    assert!(ends_with_done(&r.body), "{}", r.text());
    let u = usage_of(&r.body);
    assert_eq!(u["prompt_tokens"], 9, "{}", r.text());
    assert_eq!(
        u["completion_tokens"],
        5,
        "the mock's own count: {}",
        r.text()
    );
    assert!(u.get("detour_estimated").is_none(), "{u}");
    // The upstream ended after its finish but before the usage it was asked for: detour adds
    // a usage chunk, estimated and marked so, in the stream's own id and model.
    let r = gw
        .chat_with(
            asked,
            &[("x-mock-fault", "end-early"), ("x-mock-fault-after", "7")],
        )
        .await;
    assert_eq!(streamed_text(&r.body), "Hello from p1 tok1 tok2 tok3 tok4");
    assert!(ends_with_done(&r.body), "{}", r.text());
    let u = usage_of(&r.body);
    assert_eq!(u["detour_estimated"], true, "{u}");
    // 33 bytes of text at about 4 a token; the prompt's "hi" (4 bytes as JSON) + 3 + 3.
    assert_eq!(u["completion_tokens"], 9, "{u}");
    assert_eq!(u["prompt_tokens"], 7, "{u}");
    assert_eq!(u["total_tokens"], 16, "{u}");
    let chunks: Vec<serde_json::Value> = sse_data(&r.body)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let last = chunks.last().unwrap();
    assert_eq!(last["id"], chunks[0]["id"]);
    assert_eq!(last["model"], chunks[0]["model"]);
    assert_eq!(last["choices"], serde_json::json!([]));
    // Not asked for: no usage chunk is made up.
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", true),
            &[("x-mock-fault", "end-early"), ("x-mock-fault-after", "7")],
        )
        .await;
    assert!(ends_with_done(&r.body), "{}", r.text());
    assert!(!r.text().contains("\"usage\":{"), "{}", r.text());
}

/// The `usage` object of a stream's usage chunk (panics if there is none).
fn usage_of(body: &[u8]) -> serde_json::Value {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .unwrap_or_else(|| panic!("no usage chunk in {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_moves_only_to_a_larger_window() {
    let small = mock_with(MockConfig {
        status: 400,
        error_code: Some("context_length_exceeded".into()),
        ..mock_cfg("small")
    })
    .await;
    let same = mock("same").await;
    let big = mock("big").await;
    let body = format!(
        "providers:\n{}{}{}models:\n  m:\n    - {{provider: small, context-window: 8192}}\n    - {{provider: same, context-window: 8192}}\n    - {{provider: big, context-window: 128000}}\n",
        provider("small", &small),
        provider("same", &same),
        provider("big", &big)
    );
    let gw = gateway(&body).await;
    let r = gw.chat(&chat_body("m", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("big"));
    assert_eq!((small.calls(), same.calls(), big.calls()), (1, 0, 1));
    // Nothing larger left: the provider's own error, message and code.
    let r = gw.chat(&chat_body("m/small,m/same", false)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length"));
    assert_eq!((small.calls(), same.calls()), (2, 0));
}

/// After a context-length refusal a target whose window the catalog does not know may still
/// take the prompt: it is tried; one known to be no larger is skipped, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_tries_a_target_of_unknown_window() {
    let small = mock_with(MockConfig {
        status: 400,
        error_code: Some("context_length_exceeded".into()),
        ..mock_cfg("small")
    })
    .await;
    let same = mock("same").await;
    let unknown = mock("unknown").await;
    let body = format!(
        "providers:\n{}{}{}models:\n  m:\n    - {{provider: small, context-window: 8192}}\n    - {{provider: same, context-window: 8192}}\n    - {{provider: unknown}}\n",
        provider("small", &small),
        provider("same", &same),
        provider("unknown", &unknown)
    );
    let gw = gateway(&body).await;
    let r = gw.chat(&chat_body("m", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("unknown"));
    assert_eq!((small.calls(), same.calls(), unknown.calls()), (1, 0, 1));
    let log = gw
        .stderr_when(|l| l.contains("not larger than m/small's (8192 tokens)"))
        .await;
    assert!(
        log.contains("skipped: its context window is not larger than m/small's (8192 tokens)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_filter_returns_the_refusal_unless_configured() {
    let p1 = mock_with(MockConfig {
        status: 400,
        error_code: Some("content_policy_violation".into()),
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&chain(&p1, &p2, "  retry: {attempts-per-target: 3}\n")).await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "content_policy_violation");
    assert!(r.text().contains("safety system"), "{}", r.text());
    assert_eq!(
        (p1.calls(), p2.calls()),
        (1, 0),
        "not retried, not moved on"
    );
    drop(gw);
    let gw = gateway(&chain(&p1, &p2, "  on-content-filter: true\n")).await;
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    assert_eq!((p1.calls(), p2.calls()), (2, 1));
}

/// Continuation: the partial answer goes to the next target that accepts prefill, spliced
/// into the same stream. A target the catalog says has no prefill is never asked; one that
/// refuses leaves the client with the original failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_only_to_prefill_targets_and_original_failure_otherwise() {
    let cut = mock_with(MockConfig {
        fault: Fault::ResetMidStream,
        fault_after: 3,
        ..mock_cfg("cut")
    })
    .await;
    let noprefill = mock("noprefill").await;
    let refuses = mock_with(MockConfig {
        status: 400,
        ..mock_cfg("refuses")
    })
    .await;
    let cont = mock("cont").await;
    let providers = format!(
        "providers:\n{}{}{}{}",
        provider("cut", &cut),
        provider("noprefill", &noprefill),
        provider("refuses", &refuses),
        provider("cont", &cont)
    );
    let models = "models:\n  m:\n    native: cut\n    capabilities: [prefill]\n    routes:\n      - {provider: cut}\n      - {provider: noprefill, capabilities: [tools]}\n      - {provider: refuses}\n      - {provider: cont}\n";
    let gw = gateway(&format!(
        "failover:\n  continuation: true\n{providers}{models}"
    ))
    .await;
    // cut → (noprefill skipped) → refuses: 400 → the client sees cut's failure.
    let r = gw
        .chat(&chat_body("m/cut,m/noprefill,m/refuses", true))
        .await;
    assert_eq!(streamed_text(&r.body), "Hello from cut tok1");
    assert_cut(&r.body, "stream_interrupted");
    assert!(r.text().contains("connection failed"), "{}", r.text());
    assert!(
        !r.text().contains("Invalid request from mock"),
        "{}",
        r.text()
    );
    assert_eq!((noprefill.calls(), refuses.calls()), (0, 1));
    // With a target that continues: one stream, one id, the prefill sent, [DONE] at the end.
    let r = gw.chat(&chat_body("m/cut,m/noprefill,m/cont", true)).await;
    assert!(ends_with_done(&r.body), "{}", r.text());
    assert_eq!(
        streamed_text(&r.body),
        "Hello from cut tok1Hello from cont tok1 tok2 tok3 tok4"
    );
    let ids: std::collections::BTreeSet<String> = sse_data(&r.body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let sent: serde_json::Value = serde_json::from_slice(&cont.requests()[0].body).unwrap();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "assistant");
    assert_eq!(last["content"], "Hello from cut tok1");
    assert_eq!(
        (noprefill.calls(), refuses.calls(), cont.calls()),
        (0, 1, 1)
    );
}
