//! The rest of a key's limits over real sockets: tokens per minute, concurrency, expiry, the
//! `ptb-first` order, and a gateway key in the header mode (where `Authorization` is the
//! provider's key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::chains::*;
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
async fn tokens_per_minute_concurrency_and_expiry() {
    let p1 = mock_with(MockConfig {
        delay: Duration::from_millis(600),
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&keyed(&p1, &p2, SQLITE, "")).await;
    // 20 tokens a minute: the mock reports 12 per answer, so the third request is refused.
    let (_, key) = new_key(&gw, json!({"tpm": 20}), 1.0).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, &key, &body("gpt-4o/p2")).await.status, 200);
    }
    let r = chat_as(&gw, &key, &body("gpt-4o/p2")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens per minute"));
    assert_eq!(p2.calls(), 2);
    // One at a time: of three sent together to a slow target, one is served.
    let (_, key) = new_key(&gw, json!({"concurrency": 1}), 1.0).await;
    let mut st = Box::pin(burst(&[gw.port], &key, &body("gpt-4o/p1"), 3, 3)).await;
    st.sort();
    assert_eq!(st, vec![200, 429, 429]);
    // The slot is given back: the next one is served.
    let r = chat_as(&gw, &key, &body("gpt-4o/p1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An expired key is refused.
    let (_, key) = new_key(&gw, json!({"expires-at": 1_000_000_000}), 1.0).await;
    let r = chat_as(&gw, &key, &body("gpt-4o/p2")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "This gateway key has expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptb_first_puts_the_operators_attempt_before_the_callers_own() {
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    let cfg = keyed(&p1, &p2, SQLITE, "").replacen(
        "auth: {required: true}",
        "auth: {required: true, order: ptb-first}",
        1,
    );
    let gw = gateway(&cfg).await;
    let (id, key) = new_key(&gw, json!({}), 0.0001).await;
    let path = format!("/admin/keys/{id}/providers/p1");
    admin(&gw, "PUT", &path, json!({"api-key": "sk-own-p1-key-000"})).await;
    // PTB first, and the credits do not cover it: detour's own 429 ends the request.
    let r = chat_as(&gw, &key, &body("gpt-4o/p1")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(p1.calls(), 0);
    // With credits, the operator's key serves.
    admin(
        &gw,
        "POST",
        &format!("/admin/keys/{id}/credits"),
        json!({"usd": 1}),
    )
    .await;
    let r = chat_as(&gw, &key, &body("gpt-4o/p1")).await;
    assert_eq!(r.status, 200);
    let auth = &p1.requests()[0].headers;
    assert!(auth
        .iter()
        .any(|(k, v)| k == "authorization" && v == &format!("Bearer {PROVIDER_KEY}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_mode_takes_the_key_from_helicone_auth_and_counts_per_key() {
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    let extra = "header-mode:\n  allow-networks: [127.0.0.0/8]\n  allow-ports: [\"1024-65535\"]\n  unapproved-limit: {per-second: 100, per-day: 2}\n";
    let gw = gateway(&keyed(&p1, &p2, SQLITE, extra)).await;
    let (_, key) = new_key(&gw, json!({}), 0.0).await;
    let target = format!(
        "http://localhost:{}",
        p1.base_url()
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
    );
    let send = |helicone: Option<String>| {
        let (port, target) = (gw.port, target.clone());
        async move {
            let mut h = vec![
                ("content-type".to_string(), "application/json".to_string()),
                (
                    "authorization".to_string(),
                    "Bearer sk-the-callers-provider-key".to_string(),
                ),
                ("helicone-target-url".to_string(), target),
            ];
            if let Some(k) = helicone {
                h.push(("helicone-auth".to_string(), format!("Bearer {k}")));
            }
            let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let b = body("gpt-4o");
            Box::pin(request(
                port,
                "POST",
                "/v1/chat/completions",
                &h,
                b.as_bytes(),
            ))
            .await
            .unwrap()
        }
    };
    // Without a key: 401, and `Authorization` (the provider's key) is not taken for one.
    let r = send(None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(p1.calls(), 0);
    // With one: served, the provider key passed through, and Helicone-Auth not forwarded.
    let r = send(Some(key.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = &p1.requests()[0].headers;
    assert!(sent
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer sk-the-callers-provider-key"));
    assert!(!sent.iter().any(|(k, _)| k == "helicone-auth"), "{sent:?}");
    // Two a day to this unapproved host, counted on the store for this key.
    assert_eq!(send(Some(key.clone())).await.status, 200);
    let r = send(Some(key.clone())).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("per-day"), "{}", r.text());
    let (_, other) = new_key(&gw, json!({}), 0.0).await;
    assert_eq!(
        send(Some(other)).await.status,
        200,
        "another key has its own count"
    );
}

/// `detour keys ARGS` against `gw`'s config and store, `input` on its stdin.
fn keys_cli(gw: &Gateway, args: &[&str], input: &str, master_key: bool) -> std::process::Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_detour"));
    cmd.arg("keys")
        .args(args)
        .arg("-c")
        .arg(gw.dir.join("detour.yaml"))
        .env_remove("DETOUR_MASTER_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if master_key {
        cmd.env("DETOUR_MASTER_KEY", MASTER_KEY);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_keys_given_on_the_command_lines_stdin_sign_the_callers_bedrock_requests() {
    let bed = mock("bed").await;
    let model = "anthropic.claude-3-7-sonnet-20250219-v1:0";
    let gw = gateway(&format!(
        "auth: {{required: true}}\nstore: {SQLITE}\nproviders:\n  - {{name: bed, kind: bedrock, region: us-east-1, base-url: \"http://{}\"}}\nmodels:\n  claude-3-7-sonnet-20250219: [{{provider: bed, id: \"{model}\"}}]\n",
        bed.addr
    ))
    .await;
    let out = keys_cli(&gw, &["create", "own-aws", "--no-ptb"], "", false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, key) = (v["id"].as_str().unwrap(), v["key"].as_str().unwrap());
    let (own_id, own_secret) = (
        "AKIDCALLERSOWNKEY",
        "callers/own/secret/0123456789abcdefghij",
    );
    let creds = json!({"aws-access-key-id": own_id, "aws-secret-access-key": own_secret});
    // Without the master key nothing is stored, and the CLI says why.
    let out = keys_cli(&gw, &["byok", id, "bed"], &creds.to_string(), false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key"));
    // Not JSON on stdin: refused, with nothing of the input echoed.
    let out = keys_cli(&gw, &["byok", id, "bed"], own_secret, true);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains(own_secret), "{said}");
    let out = keys_cli(&gw, &["byok", id, "bed"], &creds.to_string(), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("\"bed\"") && !shown.contains(own_secret),
        "{shown}"
    );

    let body =
        r#"{"model":"claude-3-7-sonnet-20250219","messages":[{"role":"user","content":"hi"}]}"#;
    let r = chat_as(&gw, key, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &bed.requests()[0];
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={own_id}/")),
        "signed with the caller's keys: {auth}"
    );
    // The operator's session token belongs to the operator's keys: never sent with the caller's.
    assert_eq!(seen.header("x-amz-security-token"), None);
    assert!(!gw.stderr().contains(own_secret));
    // --remove drops them: with PTB off, the key has nothing left to be served with.
    let out = keys_cli(&gw, &["byok", id, "bed", "--remove"], "", false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = admin(
        &gw,
        "GET",
        &format!("/admin/keys/{id}"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(r.json()["byok_providers"], json!([]), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_gateway_writes_every_debit_before_it_exits() {
    let (p1, p2) = (mock("p1").await, mock("p2").await);
    let mut gw = Gateway::start(&keyed(&p1, &p2, SQLITE, "")).await;
    let (id, key) = new_key(&gw, json!({}), 5.0).await;
    let store = format!("{{sqlite: \"{}\"}}", gw.dir.join("detour.db").display());
    // Answers that end together, then a stop at once: their debits are still queued to the
    // ledger thread (it commits every 5 ms) when the stop begins. Whether the last ones would
    // have been lost without the flush at exit depends on timing, so three rounds.
    for round in 1..=3 {
        let st = Box::pin(burst(&[gw.port], &key, &body("gpt-4o/p1"), 48, 16)).await;
        assert_eq!(count(&st, 200), 48, "{st:?}");
        gw.stop_fast().await;
        gw = Gateway::start(&keyed(&p1, &p2, &store, "")).await;
        let (rows, balance) = ledger(&gw, &id).await;
        let debits = rows.iter().filter(|r| r["kind"] == "debit").count();
        assert_eq!(debits, 48 * round, "every answered request billed");
        let sum: i64 = rows.iter().map(|r| r["amount"].as_i64().unwrap()).sum();
        assert_eq!(sum, balance);
    }
}

/// The Grafana board's queries with its variables filled in as Grafana would.
fn grafana_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana/detour.json");
    let board: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut out = Vec::new();
    let panels = board["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries nothing", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            out.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$provider", ".*"),
            );
        }
    }
    out
}

/// Every metric name the Grafana board's queries use (`detour_…`, with any `_bucket` suffix).
fn grafana_metric_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for expr in grafana_queries() {
        for (at, _) in expr.match_indices("detour_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_board_queries_is_exported() {
    let p1 = mock_with(MockConfig {
        status: 500,
        ..mock_cfg("p1")
    })
    .await;
    let p2 = mock("p2").await;
    let gw = gateway(&keyed(&p1, &p2, SQLITE, "")).await;
    let (_, key) = new_key(&gw, json!({}), 5.0).await;
    // p1 fails, p2 serves: a fallback, credits held and settled, tokens and cost, JSON and a
    // stream. The rest (breakers, retries, store errors) exist at zero from the start.
    for stream in [false, true] {
        let r = chat_as(&gw, &key, &chat_body("gpt-4o", stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let names = grafana_metric_names();
    assert!(names.len() >= 19, "{names:?}");
    let m = gw.metrics().await;
    let exported: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "queried, not exported: {missing:?}");
}

#[test]
fn the_grafana_boards_queries_are_promql_that_prometheus_accepts() {
    // Prometheus's own parser (promtool, from Debian's prometheus package, which the test
    // command installs): every query as a recording rule.
    let rules: String = grafana_queries()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let expr = serde_json::to_string(q).unwrap();
            format!("      - record: detour:board_query_{i}\n        expr: {expr}\n")
        })
        .collect();
    let file = temp_dir().join("board-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: board\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (apt-get install prometheus; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
