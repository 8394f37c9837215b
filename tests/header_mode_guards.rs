//! The header mode's guards over real sockets: malformed and conflicting headers are 400s that
//! say what to fix, unapproved hosts are limited (once per request), private networks are
//! refused without the allow-list, and a target can neither answer with an interim response
//! nor pass for detour in its headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::header_mode::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn malformed_headers_and_conflicts_are_400s_that_say_what_to_fix() {
    let up = ok_upstream(b"{}").await;
    let gw = gateway("").await;
    let o = origin(&up);
    let good = json!([entry(&o, json!([]))]).to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("helicone-fallbacks", "nope".into())],
            "not valid JSON",
        ),
        (vec![("helicone-fallbacks", "[]".into())], "empty"),
        (
            vec![(
                "helicone-fallbacks",
                r#"[{"headers":{},"onCodes":[]}]"#.into(),
            )],
            "Helicone-Fallbacks[0]: lacks `target-url`",
        ),
        (
            vec![(
                "helicone-fallbacks",
                format!(r#"[{{"target-url":"{o}","headers":{{}},"onCodes":[99]}}]"#),
            )],
            "Helicone-Fallbacks[0].onCodes[0]",
        ),
        (
            vec![
                ("helicone-target-url", o.clone()),
                ("helicone-fallbacks", good.clone()),
            ],
            "not both",
        ),
        (vec![("helicone-target-url", "ftp://x".into())], "http://"),
        (
            vec![("helicone-target-url", "http://u:p@example.com".into())],
            "user info",
        ),
    ];
    for (headers, want) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&gw, "/v1/chat/completions", &h, b"{}").await;
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{headers:?}: {msg}");
    }
    // A model chain in the body and a fallback list: which to drop.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[("helicone-fallbacks", &good)],
        chat_body("gpt-4o,claude-sonnet-4", false).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("drop Helicone-Fallbacks"), "{}", r.text());
    // The same with one target: its body's first part is read before anything is sent.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[
            ("helicone-target-url", &o),
            ("content-type", "application/json"),
        ],
        chat_body("gpt-4o,claude-sonnet-4", false).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("drop Helicone-Target-Url"),
        "{}",
        r.text()
    );
    // An override needs a JSON body.
    let list =
        json!([{"target-url": o, "headers": {}, "onCodes": [], "bodyKeyOverride": {"a": 1}}]);
    let r = post(
        &gw,
        "/v1/audio/transcriptions",
        &[("helicone-fallbacks", &list.to_string())],
        b"\x00binary",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("not JSON"), "{}", r.text());
    assert_eq!(up.calls(), 0, "nothing was sent");
}

#[tokio::test]
async fn unapproved_hosts_are_limited_and_approved_ones_are_not() {
    let up = ok_upstream(b"{}").await;
    let gw = Gateway::start(&open_cfg("  approved-hosts: [localhost]\n")).await;
    let port = up.addr.port();
    let unapproved = format!("http://127.0.0.1:{port}");
    let h = [("helicone-target-url", unapproved.as_str())];
    let first = post(&gw, "/v1/x", &h, b"{}").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = post(&gw, "/v1/x", &h, b"{}").await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.json()["error"]["type"], "rate_limited");
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(up.calls(), 1, "the refused request was not sent");
    // Inside a fallback list too: detour's own 429 ends the request, no fallback.
    let list = json!([
        entry(&unapproved, json!([])),
        entry(&format!("http://localhost:{port}"), json!([]))
    ]);
    let r = with_fallbacks(&gw, &list, b"{}").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(up.calls(), 1);
    // An approved host: as many as asked.
    let approved = format!("http://localhost:{port}");
    for _ in 0..5 {
        let r = post(&gw, "/v1/x", &[("helicone-target-url", &approved)], b"{}").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.calls(), 6);
}

#[tokio::test]
async fn private_targets_are_refused_without_the_allow_list() {
    let up = ok_upstream(b"{}").await;
    let port = up.addr.port();
    let cfg = format!(
        "{PROVIDERS}header-mode:\n  allow-ports: [\"1024-65535\"]\n  unapproved-limit: {{per-second: 1000}}\n"
    );
    let gw = Gateway::start(&cfg).await;
    for target in [
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        format!("http://2130706433:{port}"),
        format!("http://0x7f.1:{port}"),
        format!("http://0177.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[fd00:ec2::254]/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://100.64.0.1/".to_string(),
        "http://0.0.0.0/".to_string(),
    ] {
        let r = post(
            &gw,
            "/v1/chat/completions",
            &[("helicone-target-url", &target)],
            b"{}",
        )
        .await;
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert_eq!(error_code(&r), "target_refused", "{target}");
        // Inside a fallback list: a failed attempt with its reason, nothing sent.
        let list = json!([entry(&target, json!([]))]);
        let r = with_fallbacks(&gw, &list, b"{}").await;
        assert_eq!(r.status, 502, "{target}: {}", r.text());
        let why = r.json()["error"]["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(why.starts_with("refused:"), "{target}: {why}");
    }
    // A port outside the list.
    let cfg = format!("{PROVIDERS}header-mode:\n  allow-networks: [127.0.0.0/8]\n");
    let gw2 = Gateway::start(&cfg).await;
    let r = post(
        &gw2,
        "/v1/x",
        &[("helicone-target-url", &format!("http://127.0.0.1:{port}"))],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains(&format!("port {port}")), "{}", r.text());
    assert_eq!(up.calls(), 0, "no connection was made");
}

#[tokio::test]
async fn an_unapproved_host_counts_once_per_request() {
    let first = status_upstream(429, b"{}").await;
    let second = ok_upstream(b"{}").await;
    let gw = Gateway::start(&open_cfg("")).await;
    // Both entries are on 127.0.0.1 (unapproved): one request, one count.
    let list = json!([
        entry(&origin(&first), json!([429])),
        entry(&origin(&second), json!([]))
    ]);
    let r = with_fallbacks(&gw, &list, b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("helicone-fallback-index"), Some("1"));
}

/// An upstream that sends `103 Early Hints` before its answer, and headers only detour may set.
async fn hinting_upstream() -> RawUpstream {
    RawUpstream::start(|_| {
        vec![
            Step::Send(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n".to_vec()),
            Step::Send(http_response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("x-detour-provider", "spoofed"),
                    ("helicone-fallback-index", "9"),
                ],
                br#"{"final":true}"#,
            )),
        ]
    })
    .await
}

#[tokio::test]
async fn interim_responses_are_not_the_answer_and_targets_cannot_spoof_detours_headers() {
    let up = hinting_upstream().await;
    let gw = gateway("").await;
    // A fallback list: the 103 is read past; the final answer goes to the client.
    let list = json!([entry(&origin(&up), json!([]))]);
    let r = with_fallbacks(&gw, &list, b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, br#"{"final":true}"#);
    assert_eq!(r.header("helicone-fallback-index"), Some("0"));
    assert_eq!(r.header("x-detour-provider"), Some("127.0.0.1"));
    // One target: Pingora relays the 103, then the answer.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let target = origin(&up);
    send_request(
        &mut sock,
        "POST",
        "/v1/x",
        &[("helicone-target-url", &target)],
        b"{}",
    )
    .await
    .unwrap();
    let (status, _, rest) = read_head(&mut sock).await.unwrap();
    assert_eq!(status, 103);
    // The final head may have come in the same read as the interim one.
    let r = read_response_after(&mut sock, rest).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, br#"{"final":true}"#);
    assert_eq!(r.header("x-detour-provider"), Some("127.0.0.1"));
    assert_eq!(r.header("helicone-fallback-index"), None);
    // The access log records the final status, not the interim one.
    let log = gw
        .stderr_when(|l| l.contains("\"mode\":\"target-url\""))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("\"mode\":\"target-url\""))
        .unwrap();
    assert!(line.contains("\"status\":200"), "{line}");
}
