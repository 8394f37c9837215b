//! Request records on disk (a real SQLite file) and their sums: kept across a restart, listed
//! past what memory holds, pruned to the retention, summed by `/admin/stats`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::records::{admin_get, recorded};
use common::*;
use serde_json::{json, Value};

async fn chat_as(gw: &Gateway, model: &str, id: &str) {
    let r = gw
        .chat_with(&chat_body(model, false), &[("x-request-id", id)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn ids(r: &Response) -> Vec<String> {
    r.json()["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text()))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outlive_a_restart_and_memory_and_are_pruned_to_the_retention() {
    let p1 = mock("p1").await;
    let dir = temp_dir();
    let file = dir.join("records.db");
    let cfg = |extra: &str| {
        format!(
            "records: {{memory: 2, sqlite: \"{}\"{extra}}}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
            file.display(),
            provider("p1", &p1)
        )
    };
    let gw = Gateway::start(&cfg("")).await;
    // A request is numbered when its logging runs, after its answer was sent: under load the
    // next request can be logged first, so each is on record before the next is sent.
    let mut first = Value::Null;
    for i in 0..5 {
        chat_as(&gw, "gpt-4o", &format!("disk-{i}")).await;
        let r = recorded(&gw, &format!("disk-{i}")).await;
        if i == 0 {
            first = r;
        }
    }
    // Memory holds 2; the listing and the lookup of an old one come from the file.
    let all = admin_get(&gw, "/admin/requests?limit=10").await;
    assert_eq!(
        ids(&all),
        ["disk-4", "disk-3", "disk-2", "disk-1", "disk-0"]
    );
    let page = admin_get(&gw, "/admin/requests?limit=2").await.json();
    let next = page["next"].as_u64().unwrap();
    let rest = admin_get(&gw, &format!("/admin/requests?limit=10&before={next}")).await;
    assert_eq!(ids(&rest), ["disk-2", "disk-1", "disk-0"]);
    let r = admin_get(&gw, "/admin/requests?model=gpt-4o&provider=p1&limit=10").await;
    assert_eq!(ids(&r).len(), 5, "{}", r.text());
    let r = admin_get(&gw, "/admin/requests?model=gpt-4&provider=p&limit=10").await;
    assert!(
        ids(&r).is_empty(),
        "a filter matches whole names: {}",
        r.text()
    );
    time_ranges_match_every_record_s_time(&gw, &all).await;
    drop(gw); // SIGKILL: what was on record was on disk

    // A new process on the same file: the old records are there, numbering goes on, and
    // `retention-rows: 3` prunes at its first write.
    let gw = Gateway::start(&cfg(", retention-rows: 3")).await;
    assert_eq!(
        recorded(&gw, "disk-0").await,
        first,
        "the same record, from the file"
    );
    chat_as(&gw, "gpt-4o", "disk-5").await;
    let newest = recorded(&gw, "disk-5").await;
    assert!(newest["seq"].as_u64() > first["seq"].as_u64().map(|s| s + 4));
    let all = admin_get(&gw, "/admin/requests?limit=10").await;
    assert_eq!(ids(&all), ["disk-5", "disk-4", "disk-3"]);
    let r = admin_get(&gw, "/admin/requests/disk-0").await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// The records of a process's last answers are on disk when it has stopped, even at once on
/// SIGINT: the keeper lets a batch gather for 50 ms, and the stop waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_gateway_writes_the_records_of_its_last_answers() {
    let p1 = mock("p1").await;
    let file = temp_dir().join("records.db");
    let cfg = format!(
        "records: {{sqlite: \"{}\"}}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        file.display(),
        provider("p1", &p1)
    );
    let mut gw = Gateway::start(&cfg).await;
    // Whether the last records would have been lost depends on timing, so three rounds.
    for round in 0..3 {
        for i in 0..10 {
            chat_as(&gw, "gpt-4o", &format!("last-{round}-{i}")).await;
        }
        // A record is queued before its request is counted: once all ten are counted, all ten
        // are queued.
        gw.expect_metrics(&["detour_requests_total{outcome=\"success\"} 10"])
            .await;
        gw.stop_fast().await;
        gw = Gateway::start(&cfg).await;
        let all = admin_get(&gw, "/admin/requests?limit=100").await;
        // Every one, in any order: each round's requests are numbered as their logging ran.
        let mut got = ids(&all);
        got.sort();
        let mut want: Vec<String> = (0..=round)
            .flat_map(|r| (0..10).map(move |i| format!("last-{r}-{i}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "round {round}");
    }
}

/// `since` and `until` (bounds on `seq` inside, found by a search) give exactly the records
/// whose `at` is in range, at the extremes too.
async fn time_ranges_match_every_record_s_time(gw: &Gateway, all: &Response) {
    let records = all.json()["data"].as_array().cloned().unwrap_or_default();
    let at = |r: &Value| r["at"].as_i64().unwrap();
    let (min, max) = (i64::MIN, i64::MAX);
    let middle = at(&records[2]);
    for (since, until) in [
        (middle, max),
        (min, middle),
        (middle, middle),
        (min, max),
        (max, max),
        (min, min),
        (max, min),
    ] {
        let r = admin_get(
            gw,
            &format!("/admin/requests?limit=10&since={since}&until={until}"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let want: Vec<&str> = records
            .iter()
            .filter(|x| (since..=until).contains(&at(x)))
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids(&r), want, "since {since} until {until}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_sum_a_known_mix_per_provider_and_model() {
    let down = mock_with(MockConfig {
        status: 503,
        ..MockConfig::default()
    })
    .await;
    let (p2, p3) = (mock("p2").await, mock("p3").await);
    let gw = Gateway::start(&format!(
        "failover:\n  retry: {{attempts-per-target: 1}}\nproviders:\n{}{}{}models:\n  gpt-4o:\n    - {{provider: p1}}\n    - {{provider: p2}}\n  gpt-4o-mini: [{{provider: p3}}]\n",
        provider("p1", &down),
        provider("p2", &p2),
        provider("p3", &p3)
    ))
    .await;
    // 3 requests that fall back from p1 to p2, 2 streamed to p3 alone.
    for i in 0..3 {
        chat_as(&gw, "gpt-4o", &format!("mix-fb-{i}")).await;
    }
    for i in 0..2 {
        let r = gw
            .chat_with(
                &chat_body("gpt-4o-mini", true),
                &[("x-request-id", &format!("mix-st-{i}"))],
            )
            .await;
        assert_eq!(r.status, 200);
        recorded(&gw, &format!("mix-st-{i}")).await;
    }
    recorded(&gw, "mix-fb-2").await;
    let r = admin_get(&gw, "/admin/stats?window=5m").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(s["window"], "5m");
    let t = &s["totals"];
    assert_eq!(
        (&t["requests"], &t["success_rate"]),
        (&json!(5), &json!(1.0))
    );
    assert_eq!(t["fallback_rate"], 0.6);
    assert_eq!(t["attempts_per_request"], 1.6);
    let route = |p: &str| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["provider"] == p)
            .unwrap_or_else(|| panic!("no {p}: {s}"))
            .clone()
    };
    let (r1, r2, r3) = (route("p1"), route("p2"), route("p3"));
    assert_eq!(
        (&r1["model"], &r1["requests"]),
        (&json!("gpt-4o"), &json!(3))
    );
    assert_eq!(
        (&r1["success_rate"], &r1["fallback_rate"]),
        (&json!(0.0), &json!(1.0))
    );
    assert_eq!(r1["failures"], json!({"server_error": 3}));
    assert!(r1["latency_ms"]["p50"].is_null(), "p1 served nothing");
    assert_eq!(r1["circuit"], "closed", "{s}");
    assert_eq!(
        (&r2["served"], &r2["success_rate"]),
        (&json!(3), &json!(1.0))
    );
    assert!(r2["latency_ms"]["p95"].as_f64().is_some(), "{s}");
    assert!(
        r2["ttft_ms"]["p50"].is_null(),
        "JSON answers have no first token"
    );
    assert_eq!(
        (&r3["model"], &r3["served"]),
        (&json!("gpt-4o-mini"), &json!(2))
    );
    assert!(r3["ttft_ms"]["p50"].as_f64().is_some(), "{s}");

    // Bad input is a 400 in the error shape; no token a 401.
    for q in ["?window=2d", "?window=", "?span=5m"] {
        let r = admin_get(&gw, &format!("/admin/stats{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["error"]["message"].is_string());
    }
    let r = request(gw.admin_port, "GET", "/admin/stats", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// `persist: false`: the newest batches in memory and no file. Listing, filters, paging, lookup
/// and stats come from memory, and what memory let go is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_records_keep_the_newest_and_write_no_file() {
    let p1 = mock("p1").await;
    let gw = Gateway::start(&format!(
        "records: {{persist: false, memory: 3}}\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &p1)
    ))
    .await;
    for i in 0..5 {
        chat_as(&gw, "gpt-4o", &format!("mem-{i}")).await;
        // On record before the next is sent: a batch each, so memory holds exactly 3.
        recorded(&gw, &format!("mem-{i}")).await;
    }
    let all = admin_get(&gw, "/admin/requests?limit=10").await;
    assert_eq!(ids(&all), ["mem-4", "mem-3", "mem-2"]);
    let page = admin_get(&gw, "/admin/requests?limit=2&provider=p1&model=gpt-4o").await;
    assert_eq!(ids(&page), ["mem-4", "mem-3"]);
    let next = page.json()["next"].as_u64().unwrap();
    let rest = admin_get(&gw, &format!("/admin/requests?limit=10&before={next}")).await;
    assert_eq!(ids(&rest), ["mem-2"]);
    let none = admin_get(&gw, "/admin/requests?limit=10&provider=p").await;
    assert!(ids(&none).is_empty(), "{}", none.text());
    assert_eq!(admin_get(&gw, "/admin/requests/mem-0").await.status, 404);
    let stats = admin_get(&gw, "/admin/stats?window=5m").await.json();
    assert_eq!(stats["totals"]["requests"], 3, "{stats}");
    assert!(!gw.dir.join("detour-records.db").exists());
}
