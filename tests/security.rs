//! What a client sends is untrusted: a model id must not steer the operator's key to another
//! path of a provider, grow detour's memory, or carry a header through; bodies are bounded one
//! by one and all together. Real sockets, the mock provider recording what it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// A provider of `kind` in front of mock `m`, and its base-url's path prefix.
fn kind_provider(kind: &str, m: &MockServer, key_file: &str) -> String {
    let a = m.addr;
    match kind {
        "openai" => format!("  - {{name: p, kind: openai, base-url: \"http://{a}/v1\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "azure" => format!("  - {{name: p, kind: azure, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY, api-version: \"2024-10-21\"}}\n"),
        "anthropic" => format!("  - {{name: p, kind: anthropic, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "google-ai-studio" => format!("  - {{name: p, kind: google-ai-studio, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "bedrock" => format!("  - {{name: p, kind: bedrock, base-url: \"http://{a}\", region: us-east-1}}\n"),
        "vertex" => format!("  - {{name: p, kind: vertex, project: detour-test, region: us-east5, base-url: \"http://{a}\", credentials-file: \"{key_file}\"}}\n"),
        _ => unreachable!(),
    }
}

/// The test service account with its token endpoint on `m`.
fn vertex_key(m: &MockServer) -> String {
    let mut sa: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vertex-test-service-account.json")).unwrap();
    sa["token_uri"] = serde_json::Value::from(format!("http://{}/token", m.addr));
    let path = temp_dir().join("sa.json");
    std::fs::write(&path, serde_json::to_vec(&sa).unwrap()).unwrap();
    path.display().to_string()
}

/// An id with every character that could steer a URL but is allowed in an id.
const ODD_ID: &str = "org/x:y@z%2e~";

/// Send `ODD_ID/p` to a provider of `kind`; return the path (and model in the body) the mock
/// received. Then every id that must be refused is a 400 naming its entry, with nothing sent.
async fn path_for(kind: &str) -> (String, Option<String>) {
    let m = mock("m").await;
    let key = vertex_key(&m);
    let gw = Gateway::start(&format!("providers:\n{}", kind_provider(kind, &m, &key))).await;
    let r = gw.chat(&chat_body(&format!("{ODD_ID}/p"), false)).await;
    assert_eq!(r.status, 200, "{kind}: {}", r.text());
    assert_eq!(r.header("x-detour-model"), Some(ODD_ID));
    let reqs: Vec<_> = m
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/token"))
        .collect();
    assert_eq!(reqs.len(), 1, "{kind}");
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    let model = body["model"].as_str().map(str::to_string);

    let calls = m.calls();
    let long = "x".repeat(257);
    for bad in [
        "../../../admin",
        "x?alt=json&key=evil",
        "x#frag",
        "a\r\nb",
        "a b",
        "..",
        long.as_str(),
    ] {
        let entry = format!("{bad}/p");
        let body =
            serde_json::json!({"model": entry, "messages": [{"role": "user", "content": "hi"}]});
        let r = gw.chat(&body.to_string()).await;
        assert_eq!(r.status, 400, "{kind} {bad:?}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "invalid_model_chain", "{kind} {bad:?}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("invalid model id") && msg.contains(crate_clip(&entry)),
            "{kind} {bad:?}: {msg}"
        );
    }
    assert_eq!(
        m.calls(),
        calls,
        "{kind}: nothing was sent for a refused id"
    );
    (reqs[0].path.clone(), model)
}

/// The entry as the error message quotes it (at most 100 bytes).
fn crate_clip(s: &str) -> &str {
    &s[..s.len().min(100)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_ids_go_in_the_body_only() {
    let (path, model) = path_for("openai").await;
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(model.as_deref(), Some(ODD_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployments_are_one_path_segment() {
    let (path, _) = path_for("azure").await;
    assert_eq!(
        path,
        "/openai/deployments/org%2Fx%3Ay@z%252e~/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_ids_go_in_the_body_only() {
    let (path, model) = path_for("anthropic").await;
    assert_eq!(path, "/v1/messages");
    assert_eq!(model.as_deref(), Some(ODD_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_ids_are_one_path_segment() {
    let (path, _) = path_for("google-ai-studio").await;
    assert_eq!(path, "/v1beta/models/org%2Fx%3Ay@z%252e~:generateContent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_ids_are_one_path_label() {
    let (path, _) = path_for("bedrock").await;
    assert_eq!(path, "/model/org%2Fx%3Ay%40z%252e~/converse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_ids_are_one_path_segment() {
    let (path, _) = path_for("vertex").await;
    assert_eq!(
        path,
        "/v1/projects/detour-test/locations/us-east5/publishers/google/models/org%2Fx%3Ay@z%252e~:generateContent"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ids_cannot_grow_memory_or_headers() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        status: 503,
        record: false,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "limits: {{max-body-bytes: 8000000}}\nproviders:\n{}",
        provider("p", &m)
    ))
    .await;
    let before = rss_kib(gw.child.id());
    // 40 different 5 MB ids: each refused before anything is planned or tracked.
    for i in 0..40 {
        let id = format!("{i}{}", "x".repeat(5_000_000));
        let body = chat_body(&format!("{id}/p"), false);
        let r = gw.chat(&body).await;
        assert_eq!(r.status, 400);
        assert!(r.body.len() < 1000, "the error quotes a bounded part");
    }
    assert_eq!(m.calls(), 0);
    // 600 different valid ids that fail: breaker state stays bounded.
    for i in 0..600 {
        let id = format!("{i:03}-{}", "y".repeat(240));
        let r = gw.chat(&chat_body(&format!("{id}/p"), false)).await;
        assert_eq!(r.status, 503);
        // The id echoed in a header is the id, at most 256 bytes.
        assert!(r.header("x-detour-model").is_none_or(|h| h.len() <= 256));
    }
    let h = request(gw.admin_port, "GET", "/admin/health", &[], b"")
        .await
        .unwrap();
    let targets = h.json()["targets"].as_array().unwrap().len();
    assert!(targets <= 256, "{targets} tracked");
    assert!(h.body.len() < 200_000, "{} bytes", h.body.len());
    let grown = rss_kib(gw.child.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // A 256-byte id is fine, and comes back whole.
    let ok = "z".repeat(256);
    m.set_status(200);
    let r = gw.chat(&chat_body(&format!("{ok}/p"), false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-model"), Some(ok.as_str()));
}
