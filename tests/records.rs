//! Request records over real sockets: every attempt of a chain and of a header-mode fallback,
//! in order with its class, read back from `/admin/requests`; no secret in them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::records::{admin_get, column, recorded as record};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_429_success_chain_is_recorded_attempt_by_attempt() {
    let p1 = mock_with(MockConfig {
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let p2 = mock_with(MockConfig {
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let p3 = mock("p3").await;
    let gw = Gateway::start(&format!(
        "failover:\n  retry: {{attempts-per-target: 1}}\nproviders:\n{}{}{}models:\n  gpt-4o:\n    - {{provider: p1}}\n    - {{provider: p2}}\n    - {{provider: p3}}\n",
        provider("p1", &p1),
        provider("p2", &p2),
        provider("p3", &p3)
    ))
    .await;
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", false),
            &[
                ("x-request-id", "rec-chain-1"),
                ("authorization", "Bearer sk-client-secret-never-kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = record(&gw, "rec-chain-1").await;
    assert_eq!(
        column(&rec, "provider"),
        [&json!("p1"), &json!("p2"), &json!("p3")]
    );
    assert_eq!(
        column(&rec, "outcome"),
        [
            &json!("server_error"),
            &json!("rate_limited"),
            &json!("success")
        ]
    );
    assert_eq!(
        column(&rec, "status"),
        [&json!(503), &json!(429), &json!(200)]
    );
    assert_eq!(column(&rec, "pay"), [&json!("operator"); 3]);
    assert_eq!(rec["served_by"], "gpt-4o/p3");
    assert_eq!(
        (&rec["mode"], &rec["model"], &rec["outcome"], &rec["status"]),
        (
            &json!("chain"),
            &json!("gpt-4o"),
            &json!("success"),
            &json!(200)
        )
    );
    assert_eq!(rec["fallback"], true);
    assert_eq!(rec["prompt_tokens"], 9);
    assert!(rec["attempts"][0]["error"].is_string(), "{rec}");
    assert!(rec["attempts"][2]["error"].is_null(), "{rec}");
    // The served attempt's milestones, in order, inside the attempt; a JSON answer has no
    // first token of a stream.
    let served = &rec["attempts"][2];
    let at = |f: &str| served[f].as_f64().unwrap_or_else(|| panic!("{f}: {rec}"));
    assert!(at("connect_ms") <= at("first_byte_ms"), "{rec}");
    assert!(at("first_byte_ms") <= at("ms"), "{rec}");
    assert!(served["first_token_ms"].is_null(), "{rec}");
    assert_eq!(column(&rec, "retry"), [&json!(false); 3]);

    // The listing and its filters.
    let list = |q: &str| {
        let gw = &gw;
        let q = q.to_string();
        async move { admin_get(gw, &format!("/admin/requests{q}")).await }
    };
    let ids = |r: &Response| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let r = list("?provider=p2&fallback=true&outcome=success&model=gpt-4o").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&r), ["rec-chain-1"]);
    for q in [
        "?fallback=false",
        "?provider=nobody",
        "?outcome=all_failed",
        "?key=key_x",
    ] {
        let r = list(q).await;
        assert!(ids(&r).is_empty(), "{q}: {}", r.text());
    }
    // Bad input: a 400 in the error shape; no token: 401.
    let r = list("?since=yesterday").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("since"));
    let r = request(gw.admin_port, "GET", "/admin/requests", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = admin_get(&gw, "/admin/requests/nope").await;
    assert_eq!(r.status, 404);
    // Nothing the client or a provider sent as a credential is kept.
    let all = list("?limit=500").await.text();
    assert!(
        !all.contains("sk-client-secret") && !all.contains(PROVIDER_KEY),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_mode_fallback_is_recorded_with_its_classes() {
    let down = mock_with(MockConfig {
        status: 500,
        ..MockConfig::default()
    })
    .await;
    let up = mock("up").await;
    let gw = Gateway::start(
        "providers:\n  - {name: unused, kind: openai, base-url: \"http://192.0.2.1:9/v1\"}\nheader-mode:\n  allow-networks: [127.0.0.0/8]\n  allow-ports: [\"1024-65535\"]\n  unapproved-limit: {per-second: 1000}\n",
    )
    .await;
    let list = json!([
        {"target-url": format!("http://{}", down.addr), "headers": {}, "onCodes": [500]},
        {"target-url": format!("http://{}", up.addr), "headers": {}, "onCodes": []}
    ]);
    let r = request(
        gw.port,
        "POST",
        "/v1/chat/completions",
        &[
            ("helicone-fallbacks", &list.to_string()),
            ("authorization", "Bearer sk-header-mode-secret"),
            ("content-type", "application/json"),
            ("x-request-id", "rec-header-1"),
        ],
        chat_body("gpt-4o", false).as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = record(&gw, "rec-header-1").await;
    assert_eq!(rec["mode"], "fallbacks");
    assert_eq!(
        column(&rec, "outcome"),
        [&json!("server_error"), &json!("success")]
    );
    assert_eq!(column(&rec, "status"), [&json!(500), &json!(200)]);
    assert_eq!(rec["fallback"], true);
    assert!(!rec.to_string().contains("sk-header-mode-secret"), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_is_recorded_by_key_id_never_its_secret() {
    use common::keys::*;
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    let gw = Gateway::start(&keyed(&p1, &p2, SQLITE, "")).await;
    let (id, key) = new_key(&gw, json!({}), 1.0).await;
    let auth = format!("Bearer {key}");
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", false),
            &[
                ("authorization", auth.as_str()),
                ("x-request-id", "rec-key-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = record(&gw, "rec-key-1").await;
    assert_eq!(rec["key"], id.as_str());
    assert_eq!(column(&rec, "pay"), [&json!("ptb")], "billed to the key");
    let r = admin_get(&gw, &format!("/admin/requests?key={id}")).await;
    assert_eq!(r.json()["data"][0]["id"], "rec-key-1", "{}", r.text());
    assert!(!r.text().contains(&key) && !rec.to_string().contains(&key));
    // 9 prompt and 3 completion tokens at gpt-4o's catalog prices ($2.50, $10 per million).
    let cost = rec["cost_usd"].as_f64().unwrap_or_else(|| panic!("{rec}"));
    assert!((cost - 52.5e-6).abs() < 1e-9, "{rec}");
    assert_eq!(rec["attempts"][0]["cost_usd"], rec["cost_usd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recorded_with_its_wait_and_a_stream_with_its_first_token() {
    let p1 = mock_with(MockConfig {
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let p2 = mock("p2").await;
    let gw = Gateway::start(&format!(
        "failover:\n  retry: {{attempts-per-target: 2, backoff-base: 30ms, backoff-max: 30ms}}\nproviders:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1}}\n    - {{provider: p2}}\n",
        provider("p1", &p1),
        provider("p2", &p2)
    ))
    .await;
    let r = gw
        .chat_with(
            &chat_body("gpt-4o", true),
            &[("x-request-id", "rec-retry-1")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = record(&gw, "rec-retry-1").await;
    assert_eq!(
        column(&rec, "source"),
        [
            &json!("gpt-4o/p1"),
            &json!("gpt-4o/p1"),
            &json!("gpt-4o/p2")
        ]
    );
    assert_eq!(
        column(&rec, "retry"),
        [&json!(false), &json!(true), &json!(false)]
    );
    // The retry waited its backoff (jittered, at most the 30 ms cap) and says why.
    let waited = rec["attempts"][1]["waited_ms"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=31.0).contains(&waited), "{rec}");
    assert_eq!(rec["attempts"][1]["wait_reason"], "server_error", "{rec}");
    assert!(rec["attempts"][0]["waited_ms"].is_null(), "{rec}");
    let served = &rec["attempts"][2];
    let ttft = served["first_token_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("{rec}"));
    assert!(
        served["first_byte_ms"]
            .as_f64()
            .is_some_and(|fb| fb <= ttft),
        "{rec}"
    );
    assert_eq!(rec["stream"], true);
}

/// `detour_records_dropped_total` as exported.
fn dropped(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("detour_records_dropped_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_records_never_requests() {
    let p1 = mock("p1").await;
    let cfg = |records: &str| {
        format!(
            "records: {records}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
            provider("p1", &p1)
        )
    };
    // A queue of one: the keeper takes records every 10 ms, so of 64 requests ending together
    // most find it full.
    let gw = Gateway::start(&cfg("{queue: 1}")).await;
    let body = chat_body("gpt-4o", false);
    let st = Box::pin(common::keys::burst(&[gw.port], "unused", &body, 64, 64)).await;
    assert_eq!(
        common::keys::count(&st, 200),
        64,
        "every request served: {st:?}"
    );
    let t0 = Instant::now();
    let (kept, lost) = loop {
        let kept = admin_get(&gw, "/admin/requests?limit=500").await.json()["data"]
            .as_array()
            .unwrap()
            .len() as u64;
        let lost = dropped(&gw.metrics().await);
        if kept + lost == 64 || t0.elapsed() > Duration::from_secs(5) {
            break (kept, lost);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kept + lost, 64, "each record kept or counted as dropped");
    assert!(lost >= 1 && kept >= 1, "kept {kept}, dropped {lost}");
    // Records off: nothing kept, nothing counted.
    let off = Gateway::start(&cfg("{enabled: false}")).await;
    assert_eq!(off.chat(&body).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = admin_get(&off, "/admin/requests").await;
    assert_eq!(r.json()["data"], json!([]), "{}", r.text());
    assert_eq!(dropped(&off.metrics().await), 0);
}
