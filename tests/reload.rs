//! Reload without a restart (SIGHUP): under load, a provider's new URL serves new requests at
//! once with no request failing and an in-flight stream finishing where it began; a file that
//! does not validate, or changes what a running process cannot, is refused with the old config
//! serving; breakers carry over for providers that did not change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hup(gw: &Gateway) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The file the gateway was started with, with `from` replaced by `to`.
fn rewrite(gw: &Gateway, from: &str, to: &str) -> String {
    let path = gw.dir.join("detour.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    let new = text.replace(from, to);
    std::fs::write(&path, &new).unwrap();
    new
}

fn hash(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Wait (at most 5 s) for the reload counter to show `n` of `result`.
async fn reloads(gw: &Gateway, result: &str, n: u32) -> String {
    let line = format!("detour_config_reloads_total{{result=\"{result}\"}} {n}");
    let m = gw.metrics_with(&[&line]).await;
    assert!(
        m.lines().any(|l| l == line),
        "{line} missing: {}",
        gw.stderr()
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_moves_new_requests_to_the_new_url_and_fails_none() {
    let (old, new) = (mock("old").await, mock("new").await);
    let gw = Gateway::start(&format!(
        "access-log: false\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &old)
    ))
    .await;
    let text = std::fs::read_to_string(gw.dir.join("detour.yaml")).unwrap();
    let m = gw.metrics().await;
    assert!(m.contains(&format!("detour_config_info{{hash=\"{}\"}} 1", hash(&text))));

    // A stream that lasts about a second, begun before the reload: it ends on `old`.
    let slow = {
        let port = gw.port;
        tokio::spawn(async move {
            request(
                port,
                "POST",
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    ("x-mock-chunks", "10"),
                    ("x-mock-chunk-interval-ms", "100"),
                ],
                chat_body("gpt-4o", true).as_bytes(),
            )
            .await
            .unwrap()
        })
    };
    // Load: 4 clients, JSON and streams, until told to stop (bounded: 3 s after the reload).
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (port, stop, done, failed) = (gw.port, stop.clone(), done.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = request(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    chat_body("gpt-4o", c % 2 == 1).as_bytes(),
                )
                .await;
                match r {
                    Ok(r) if r.status == 200 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_text = rewrite(&gw, &old.base_url(), &new.base_url());
    hup(&gw);
    let m = reloads(&gw, "applied", 1).await;
    assert!(
        m.contains(&format!(
            "detour_config_info{{hash=\"{}\"}} 1",
            hash(&new_text)
        )),
        "the new hash"
    );
    assert!(
        !m.contains(&format!("hash=\"{}\"", hash(&text))),
        "the old hash is gone"
    );
    let t0 = Instant::now();
    while new.stats.calls.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the new URL is not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(done.load(Ordering::Relaxed) > 40);
    // After it, only the new URL is sent to.
    let before = old.stats.calls.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(gw.chat(&chat_body("gpt-4o", false)).await.status, 200);
    }
    assert_eq!(old.stats.calls.load(Ordering::Relaxed), before);
    // The stream begun before it finished, whole, where it began.
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"), "{}", r.text());
    assert!(old.stats.completed.load(Ordering::Relaxed) >= 1);
    assert!(gw.stderr().contains("detour: config reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_or_a_fixed_section_is_refused_and_the_old_config_serves() {
    let (p1, other) = (mock("p1").await, mock("other").await);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &p1)
    ))
    .await;
    let text = std::fs::read_to_string(gw.dir.join("detour.yaml")).unwrap();
    // A route to a provider that does not exist: invalid.
    rewrite(&gw, "[{provider: p1}]", "[{provider: nobody}]");
    hup(&gw);
    reloads(&gw, "refused", 1).await;
    let log = gw.stderr_when(|s| s.contains("reload refused")).await;
    assert!(log.contains("models.gpt-4o[0].provider"), "{log}");
    let r = gw.chat(&chat_body("gpt-4o", false)).await;
    assert_eq!(r.status, 200, "the old config serves: {}", r.text());
    let m = gw.metrics().await;
    assert!(m.contains(&format!("detour_config_info{{hash=\"{}\"}} 1", hash(&text))));
    // Not YAML at all.
    std::fs::write(gw.dir.join("detour.yaml"), "providers: [: nope").unwrap();
    hup(&gw);
    reloads(&gw, "refused", 2).await;
    // A new listener needs a new process.
    std::fs::write(gw.dir.join("detour.yaml"), &text).unwrap();
    rewrite(&gw, &format!("127.0.0.1:{}", gw.port), "127.0.0.1:1");
    rewrite(&gw, &p1.base_url(), &other.base_url());
    hup(&gw);
    reloads(&gw, "refused", 3).await;
    let log = gw.stderr_when(|s| s.contains("`listen` changed")).await;
    assert!(log.contains("`listen` changed"), "{log}");
    let before = other.stats.calls.load(Ordering::Relaxed);
    assert_eq!(gw.chat(&chat_body("gpt-4o", false)).await.status, 200);
    assert_eq!(
        other.stats.calls.load(Ordering::Relaxed),
        before,
        "nothing of it applied"
    );
}

/// `p1`'s breaker in `/admin/health`: (state, times opened).
async fn breaker(gw: &Gateway, provider: &str) -> (String, u64) {
    let r = request(gw.admin_port, "GET", "/admin/health", &[], b"")
        .await
        .unwrap();
    let h = r.json();
    let t = h["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == provider)
        .cloned()
        .unwrap_or_default();
    (
        t["state"].as_str().unwrap_or("none").to_string(),
        t["times_opened"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_carry_over_for_providers_that_did_not_change() {
    let down = mock_with(MockConfig {
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let (p2, p2b) = (mock("p2").await, mock("p2b").await);
    let gw = Gateway::start(&format!(
        "failover:\n  retry: {{attempts-per-target: 1}}\n  circuit-breaker: {{consecutive-failures: 2, cool-down: 60s}}\nproviders:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1}}\n    - {{provider: p2}}\n",
        provider("p1", &down),
        provider("p2", &p2)
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(gw.chat(&chat_body("gpt-4o", false)).await.status, 200);
    }
    assert_eq!(breaker(&gw, "p1").await, ("open".to_string(), 1));
    // p2 moves; p1 is the same: its open breaker stays open, nothing is sent to it.
    rewrite(&gw, &p2.base_url(), &p2b.base_url());
    hup(&gw);
    reloads(&gw, "applied", 1).await;
    assert_eq!(breaker(&gw, "p1").await, ("open".to_string(), 1));
    let calls = down.stats.calls.load(Ordering::Relaxed);
    assert_eq!(gw.chat(&chat_body("gpt-4o", false)).await.status, 200);
    assert_eq!(
        down.stats.calls.load(Ordering::Relaxed),
        calls,
        "p1 stays skipped"
    );
    assert_eq!(
        p2b.stats.calls.load(Ordering::Relaxed),
        1,
        "the new URL served"
    );
    // p1 itself changes (a new URL): a new target, a fresh breaker.
    rewrite(&gw, &down.base_url(), &p2.base_url());
    hup(&gw);
    reloads(&gw, "applied", 2).await;
    assert_eq!(
        breaker(&gw, "p1").await.1,
        0,
        "p1 changed: its state starts over"
    );
}
