//! Gateway keys on Redis (a real `redis-server` on a loopback port): two detour instances on
//! one Redis enforce one rate limit exactly and never overspend one balance together; with
//! Redis gone, the operator's credentials are not served unbilled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::keys::*;
use common::*;
use serde_json::json;
use std::time::Duration;

fn body(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":100}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_rate_limit_and_one_balance() {
    let redis = Redis::start().await;
    let store = format!("{{redis: \"{}\"}}", redis.url);
    let p1 = mock("p1").await;
    let p2 = mock_with(MockConfig {
        delay: Duration::from_millis(1500),
        ..MockConfig::default()
    })
    .await;
    let a = Gateway::start(&keyed(&p1, &p2, &store, "")).await;
    let b = Gateway::start(&keyed(&p1, &p2, &store, "")).await;
    let ports = [a.port, b.port];

    // 60 a minute, 80 sent across both instances: exactly 60 served.
    let (_, key) = new_key(&a, json!({"rpm": 60}), 10.0).await;
    let st = Box::pin(burst(&ports, &key, &body("gpt-4o/p1"), 80, 8)).await;
    assert_eq!((count(&st, 200), count(&st, 429)), (60, 20), "{st:?}");
    assert_eq!(p1.calls(), 60);

    // A balance that holds 20 worst cases, 60 requests in flight at once on both: 20 served.
    let hold = (body("gpt-4o/p2").len() as f64 * 2.5 + 1000.0).ceil() as i64;
    let (id, key) = new_key(&b, json!({}), (20 * hold) as f64 / 1e6).await;
    let st = Box::pin(burst(&ports, &key, &body("gpt-4o/p2"), 60, 60)).await;
    assert_eq!((count(&st, 200), count(&st, 429)), (20, 40), "{st:?}");
    assert_eq!(p2.calls(), 20);
    let (rows, balance) = ledger_when(&a, &id, |r| r.len() == 21).await;
    assert_eq!(rows.len(), 21);
    let sum: i64 = rows.iter().map(|r| r["amount"].as_i64().unwrap()).sum();
    assert_eq!((balance, sum), (20 * hold - 20 * 53, 20 * hold - 20 * 53));
    assert_eq!(key_view(&b, &id).await["reserved"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_ptb_is_refused_and_byok_still_serves() {
    let redis = Redis::start().await;
    let store = format!("{{redis: \"{}\"}}", redis.url);
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    let gw = Gateway::start(&keyed(&p1, &p2, &store, "")).await;
    let (id, key) = new_key(&gw, json!({"rpm": 1000}), 1.0).await;
    let path = format!("/admin/keys/{id}/providers/p2");
    admin(&gw, "PUT", &path, json!({"api-key": "sk-own-p2-key"})).await;
    // Served once while Redis is up (the key is now cached).
    assert_eq!(chat_as(&gw, &key, &body("gpt-4o/p1")).await.status, 200);
    drop(redis);
    let r = chat_as(&gw, &key, &body("gpt-4o/p1")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "store_unavailable");
    assert_eq!(p1.calls(), 1, "not served unbilled");
    // The caller's own key needs no billing: served (limits are not applied without a store).
    let r = chat_as(&gw, &key, &body("gpt-4o/p2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("p2"));
    let m = gw
        .metrics_with(&["detour_store_errors_total{backend=\"redis\",op=\"reserve\"} 1"])
        .await;
    assert!(m.contains("op=\"reserve\"} 1"), "{m}");
}

/// Poll `gw` as `key` until the answer's status is `want`; how long that took.
async fn status_within(gw: &Gateway, key: &str, want: u16, limit: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    loop {
        let r = chat_as(gw, key, &body("gpt-4o/p1")).await;
        if r.status == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "still {} after {limit:?}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_on_one_instance_is_seen_by_the_other_at_once() {
    let redis = Redis::start().await;
    let store = format!("{{redis: \"{}\"}}", redis.url);
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    // Keys stay cached for ten minutes: only the announcement can make B look again.
    let cfg = keyed(&p1, &p2, &store, "").replace(
        "auth: {required: true}",
        "auth: {required: true, key-cache-ttl: 600s}",
    );
    let (a, b) = (Gateway::start(&cfg).await, Gateway::start(&cfg).await);
    let (id, key) = new_key(&a, json!({}), 1.0).await;
    assert_eq!(chat_as(&b, &key, &body("gpt-4o/p1")).await.status, 200);
    let path = format!("/admin/keys/{id}");
    let limit = Duration::from_secs(3);

    let r = admin(&a, "PATCH", &path, json!({"disabled": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    status_within(&b, &key, 401, limit).await;
    let r = admin(&a, "PATCH", &path, json!({"disabled": false})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    status_within(&b, &key, 200, limit).await;
    // A model the key may no longer use is skipped, and with nothing left, not served.
    let r = admin(
        &a,
        "PATCH",
        &path,
        json!({"policy": {"models": ["gpt-4o-mini"]}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = p1.calls();
    let t = status_within(&b, &key, 502, limit).await;
    assert!(
        p1.calls() <= calls + 1,
        "at most one request raced the announcement"
    );
    let r = admin(&a, "DELETE", &path, serde_json::Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = chat_as(&b, &key, &body("gpt-4o-mini/p2")).await;
    let revoked = if r.status == 401 {
        Duration::ZERO
    } else {
        status_within(&b, &key, 401, limit).await
    };
    eprintln!("policy change seen by B after {t:?}, revocation after {revoked:?}");
}
