//! The dashboard page in a real browser: Debian's Chromium, headless, loads the admin port's `/`
//! against a detour that served a known mix of requests. The numbers on the page equal the
//! API's, the console stays empty, markup from a client stays text, and screenshots are saved
//! (`target/screenshots/`; the README shows copies).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::records::admin_get;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn chromium() -> PathBuf {
    let p = PathBuf::from(std::env::var("DETOUR_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        p.exists(),
        "{} is missing: install Debian's chromium (scripts/test.sh does)",
        p.display()
    );
    p
}

/// What one headless load gave: the DOM after the page's scripts ran, and the console.
struct Load {
    dom: String,
    console: Vec<String>,
}

/// Load `url` in headless Chromium with `extra` flags (a screenshot, say), letting the page run
/// for 3 s of virtual time (its refresh comes at 5 s).
async fn load(url: &str, extra: &[String]) -> Load {
    let url = url.to_string();
    let extra = extra.to_vec();
    tokio::task::spawn_blocking(move || {
        let profile = temp_dir();
        let out = Command::new("timeout")
            .arg("90")
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=3000",
                "--window-size=1440,1300",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(&extra)
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium: {out:?}");
        let _ = std::fs::remove_dir_all(profile);
        Load {
            dom: String::from_utf8_lossy(&out.stdout).into_owned(),
            console: String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| l.contains(":CONSOLE"))
                .map(str::to_string)
                .collect(),
        }
    })
    .await
    .unwrap()
}

/// The attribute `attr` of the element carrying `marker`, and that element's first text.
fn element(dom: &str, marker: &str) -> (String, String) {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    let tag = dom[start..end].to_string();
    let text = dom[end + 1..].split('<').next().unwrap_or("").to_string();
    (tag, text)
}

fn attr(tag: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let i = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"));
    tag[i + key.len()..].split('"').next().unwrap().to_string()
}

/// The page's `data-value` of the element `marker` equals the API's `want`.
fn same_number(dom: &str, marker: &str, want: &Value) {
    let (tag, text) = element(dom, marker);
    let shown: Value = serde_json::from_str(&attr(&tag, "data-value")).unwrap();
    match (shown.as_f64(), want.as_f64()) {
        (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{marker}: page {a}, API {b}"),
        _ => assert_eq!(&shown, want, "{marker}"),
    }
    if want.is_null() {
        assert_eq!(text, "—", "{marker}");
    }
}

/// `GET path` on the admin port: its JSON, which must be a 200.
async fn admin_json(gw: &Gateway, path: &str) -> Value {
    let r = admin_get(gw, path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// A known mix: 3 requests fall back from p1 (503) to p2, 2 streams go to p3, one request
/// fails on p1 alone, one names a model made of markup.
async fn serve_a_mix(gw: &Gateway) {
    for i in 0..3 {
        let id = format!("dash-fb-{i}");
        let r = gw
            .chat_with(&chat_body("gpt-4o", false), &[("x-request-id", &id)])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..2 {
        let id = format!("dash-st-{i}");
        let r = gw
            .chat_with(&chat_body("gpt-4o-mini", true), &[("x-request-id", &id)])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = gw
        .chat_with(
            &chat_body("gpt-4o/p1", false),
            &[("x-request-id", "dash-fail")],
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = gw
        .chat_with(
            &chat_body("<img src=x onerror=alert(1)>/p2", false),
            &[("x-request-id", "dash-markup")],
        )
        .await;
    assert!((400..500).contains(&r.status), "{}", r.text());
    // All seven on record before the page reads them.
    let t0 = Instant::now();
    while admin_json(gw, "/admin/stats?window=1h").await["totals"]["requests"] != 7 {
        assert!(t0.elapsed() < Duration::from_secs(5), "records missing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_says_in_a_real_browser() {
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
    serve_a_mix(&gw).await;
    let stats = admin_json(&gw, "/admin/stats?window=1h").await;
    let failed = admin_json(&gw, "/admin/requests?failed=true&limit=25").await;
    let fell = admin_json(&gw, "/admin/requests?fallback=true&limit=25").await;
    let story = admin_json(&gw, "/admin/requests/dash-fb-1").await;

    let base = format!("http://127.0.0.1:{}/", gw.admin_port);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = |name: &str| vec![format!("--screenshot={}", shots.join(name).display())];
    let page = load(
        &format!("{base}#token={ADMIN_TOKEN}&request=dash-fb-1"),
        &[],
    )
    .await;
    let dom = &page.dom;
    assert!(page.console.is_empty(), "console: {:?}", page.console);
    assert!(dom.contains(r#"data-state="ready""#), "{dom}");

    // The totals and every route's numbers are the API's.
    let t = &stats["totals"];
    for (id, v) in [
        ("requests", &t["requests"]),
        ("success_rate", &t["success_rate"]),
        ("fallback_rate", &t["fallback_rate"]),
        ("attempts_per_request", &t["attempts_per_request"]),
        ("p50", &t["latency_ms"]["p50"]),
        ("p95", &t["latency_ms"]["p95"]),
        ("p99", &t["latency_ms"]["p99"]),
    ] {
        same_number(dom, &format!(r#"id="total-{id}""#), v);
    }
    assert_eq!(element(dom, r#"id="total-requests""#).1, "7");
    let routes = stats["routes"].as_array().unwrap();
    assert_eq!(
        routes.len(),
        3,
        "p1, p2, p3 (the markup model was refused before any attempt): {stats}"
    );
    for r in routes {
        let k = format!(
            "{}|{}|",
            r["provider"].as_str().unwrap(),
            r["model"].as_str().unwrap()
        );
        // Attribute values are HTML-escaped in the DOM.
        let k = k
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        for (f, v) in [
            ("requests", &r["requests"]),
            ("attempts", &r["attempts"]),
            ("success_rate", &r["success_rate"]),
            ("fallback_rate", &r["fallback_rate"]),
            ("attempts_per_request", &r["attempts_per_request"]),
            ("p50", &r["latency_ms"]["p50"]),
            ("p95", &r["latency_ms"]["p95"]),
            ("p99", &r["latency_ms"]["p99"]),
            ("ttft_p50", &r["ttft_ms"]["p50"]),
            ("ttft_p95", &r["ttft_ms"]["p95"]),
        ] {
            same_number(dom, &format!(r#"data-cell="{k}{f}""#), v);
        }
    }
    let (_, p1_rate) = element(dom, r#"data-cell="p1|gpt-4o|fallback_rate""#);
    assert_eq!(p1_rate, "75.0%", "3 of its 4 requests went on to p2");
    let (_, p1_failures) = element(dom, r#"data-cell="p1|gpt-4o|failures""#);
    assert_eq!(p1_failures, "server_error 4");

    // The recent failures and fallbacks are the API's, newest first.
    let mut want: Vec<(u64, String)> = [&failed, &fell]
        .iter()
        .flat_map(|l| l["data"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    want.sort();
    want.dedup();
    want.reverse();
    let shown: Vec<String> = dom
        .split(r#"<tr data-request=""#)
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    assert_eq!(shown, want);
    assert_eq!(shown.len(), 5, "3 fallbacks and 2 failures");

    // One request's whole story, opened from the URL as a click opens it.
    assert!(
        !element(dom, r#"id="detail""#).0.contains("hidden"),
        "{dom}"
    );
    let rows = dom.matches("<tr data-attempt=").count();
    assert_eq!(rows, story["attempts"].as_array().unwrap().len());
    assert!(dom.contains(story["attempts"][0]["error"].as_str().unwrap()));
    // A client's markup stays text.
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(
        !dom.contains("<img"),
        "markup from a client became an element"
    );

    // Screenshots (the README's copies come from these).
    let main = load(
        &format!("{base}#token={ADMIN_TOKEN}"),
        &shot("dashboard.png"),
    )
    .await;
    assert!(main.console.is_empty(), "console: {:?}", main.console);
    let detail = load(
        &format!("{base}#token={ADMIN_TOKEN}&request=dash-fb-1"),
        &shot("dashboard-request.png"),
    )
    .await;
    assert!(detail.console.is_empty(), "console: {:?}", detail.console);
    for name in ["dashboard.png", "dashboard-request.png"] {
        let png = std::fs::read(shots.join(name)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_good_token_the_page_asks_for_one_and_shows_nothing() {
    let p1 = mock("p1").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", &p1)
    ))
    .await;
    let base = format!("http://127.0.0.1:{}/", gw.admin_port);
    let none = load(&base, &[]).await;
    assert!(none.dom.contains(r#"data-state="login""#), "{}", none.dom);
    assert!(none.console.is_empty(), "console: {:?}", none.console);
    let wrong = load(&format!("{base}#token=not-the-token"), &[]).await;
    assert!(wrong.dom.contains(r#"data-state="login""#), "{}", wrong.dom);
    assert!(wrong.dom.contains("the admin token was refused"));
    // The page's own files carry a policy that runs only them.
    let r = request(gw.admin_port, "GET", "/", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    let csp = r
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    // The console check can fail: a page that logs an error is seen.
    let probe = load(
        "data:text/html,<script>console.error('probe-7')</script>",
        &[],
    )
    .await;
    assert!(
        probe.console.iter().any(|l| l.contains("probe-7")),
        "{:?}",
        probe.console
    );
}
