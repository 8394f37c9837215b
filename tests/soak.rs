//! A bounded soak (about 20 s): 200 concurrent streaming clients against a provider that
//! flaps between 503 and healthy every 400 ms, with a healthy fallback. No request may hang,
//! no answer may be cut yet look complete, and the gateway's memory must stay flat. An honest
//! failure (an error listing why, or a stream that ends with an error event) is allowed — the
//! retry budget refuses some fallbacks when half of the primary's answers fail — but must
//! stay rare and be explained. No throughput is asserted (that is benches/'s job).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 200;
const RUN: Duration = Duration::from_secs(18);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_against_a_flapping_provider() {
    let flaky = Arc::new(
        mock_with(MockConfig {
            name: "flaky".into(),
            chunks: 8,
            chunk_interval: Duration::from_millis(10),
            record: false,
            ..MockConfig::default()
        })
        .await,
    );
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 8,
        chunk_interval: Duration::from_millis(10),
        record: false,
        ..MockConfig::default()
    })
    .await;
    let body = format!(
        "failover:\n  circuit-breaker: {{consecutive-failures: 5, cool-down: 300ms}}\nproviders:\n{}{}models:\n  gpt-4o:\n    - {{provider: flaky}}\n    - {{provider: steady}}\n",
        provider("flaky", &flaky),
        provider("steady", &steady)
    );
    let gw = Gateway::start_full(
        &body,
        "timeouts: {connect: 1s, first-byte: 2s, first-token: 2s, idle: 2s, total: 10s}\n",
    )
    .await;
    let pid = gw.child.id();
    let start = Instant::now();
    // The flapping: 503 for 400 ms, healthy for 400 ms.
    let flapper = {
        let flaky = flaky.clone();
        tokio::spawn(async move {
            let mut down = false;
            while start.elapsed() < RUN {
                down = !down;
                flaky.set_status(if down { 503 } else { 200 });
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            flaky.set_status(200);
        })
    };
    let ok = Arc::new(AtomicUsize::new(0));
    let honest = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reasons = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut rss = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (ok, honest, bad, port) = (ok.clone(), honest.clone(), bad.clone(), gw.port);
        let reasons = reasons.clone();
        tasks.push(tokio::spawn(async move {
            let body = chat_body("gpt-4o", true);
            while start.elapsed() < RUN {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    request(
                        port,
                        "POST",
                        "/v1/chat/completions",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    ),
                )
                .await;
                let verdict = match r {
                    Err(_) => Some("hung for 10 s".to_string()),
                    Ok(Err(e)) => Some(format!("client error: {e}")),
                    Ok(Ok(r)) if r.status != 200 => {
                        // An honest failure: an OpenAI-shaped error listing the attempts.
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.body).unwrap_or_default();
                        if let Some(a) = v["error"]["attempts"].as_array() {
                            honest.fetch_add(1, Ordering::Relaxed);
                            let why: Vec<String> = a
                                .iter()
                                .map(|x| x["error"].as_str().unwrap_or("").to_string())
                                .collect();
                            reasons.lock().unwrap().push(why.join(" | "));
                            continue;
                        }
                        Some(format!("status {} body {}", r.status, r.text()))
                    }
                    Ok(Ok(r)) => {
                        let data = sse_data(&r.body);
                        let done = data.last().map(String::as_str) == Some("[DONE]");
                        let text = streamed_text(&r.body);
                        let whole = text.ends_with(" tok1 tok2 tok3 tok4 tok5 tok6 tok7");
                        let cut = data
                            .last()
                            .is_some_and(|d| d.contains("stream_interrupted"))
                            && !data.iter().any(|d| d == "[DONE]");
                        if done && whole {
                            None
                        } else if cut {
                            honest.fetch_add(1, Ordering::Relaxed);
                            continue;
                        } else {
                            Some(format!("status {} done {done} text {text:?}", r.status))
                        }
                    }
                };
                match verdict {
                    None => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(v) => bad.lock().unwrap().push(v),
                }
            }
        }));
    }
    while start.elapsed() < RUN {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(rss_kib(pid));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flapper.await.unwrap();
    let bad = bad.lock().unwrap().clone();
    let reasons = reasons.lock().unwrap().clone();
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for r in &reasons {
        *tally.entry(r.clone()).or_default() += 1;
    }
    eprintln!("soak: honest failure reasons {tally:#?}");
    let served = ok.load(Ordering::Relaxed);
    let failed = honest.load(Ordering::Relaxed);
    eprintln!(
        "soak: {served} complete streams, {failed} honest failures, {} bad, flaky calls {}, steady calls {}, RSS KiB {rss:?}",
        bad.len(),
        flaky.calls(),
        steady.calls()
    );
    assert!(
        bad.is_empty(),
        "{} bad: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // Honest failures are the retry budget doing its job: every one is a request whose
    // primary failed and whose fallback the budget refused (or cut after commit), never
    // anything else. How many there are depends on how loaded the machine is (fewer requests
    // per second means a smaller budget for the same bursts of failures), so the bound is a
    // loose one: well under a tenth.
    for why in tally.keys() {
        assert!(
            why.contains("retry budget") || why.contains("circuit_open"),
            "not an honest failure: {why}"
        );
    }
    assert!(
        failed <= flaky.calls(),
        "every failure started at the flapping provider"
    );
    assert!(
        failed * 10 < served + failed,
        "{failed} failures of {}",
        served + failed
    );
    assert!(flaky.calls() > 0 && steady.calls() > 0);
    // Memory flat: the second half of the run does not grow past the first half's peak by
    // more than a little (allocator noise), after the warm-up sample.
    let half = rss.len() / 2;
    let first_peak = *rss[1..half].iter().max().unwrap();
    let second_peak = *rss[half..].iter().max().unwrap();
    assert!(
        second_peak <= first_peak + first_peak / 5 + 4096,
        "RSS grew: {rss:?}"
    );
}
