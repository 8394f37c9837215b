//! Vertex AI behind the OpenAI API: Claude (`rawPredict` / `streamRawPredict`) and Gemini
//! (`generateContent` / `streamGenerateContent`) on Vertex paths, with OAuth2 access tokens
//! minted from a service-account key (JWT bearer grant), cached and renewed. The mock serves the
//! token endpoint too, and refuses Vertex paths without one of its tokens. Real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const KEY_FILE: &str = include_str!("fixtures/vertex-test-service-account.json");

/// The test service account with its token_uri pointing at `m`; returns the key file's path.
fn key_file(m: &MockServer) -> String {
    let mut sa: Value = serde_json::from_str(KEY_FILE).unwrap();
    sa["token_uri"] = json!(format!("http://{}/token", m.addr));
    let path = temp_dir().join("sa.json");
    std::fs::write(&path, serde_json::to_vec(&sa).unwrap()).unwrap();
    path.display().to_string()
}

fn vertex_provider(name: &str, m: &MockServer, key: &str) -> String {
    format!(
        "  - {{name: {name}, kind: vertex, project: detour-test, region: us-east5, base-url: \"http://{}\", credentials-file: \"{key}\"}}\n",
        m.addr
    )
}

const CLAUDE: &str = "claude-3-7-sonnet@20250219";
const PREFIX: &str = "/v1/projects/detour-test/locations/us-east5/publishers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_and_gemini_on_vertex_with_a_cached_token() {
    let m = mock_with(MockConfig {
        name: "vtx".into(),
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let key = key_file(&m);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-3-7-sonnet-20250219: [{{provider: vertex, id: \"{CLAUDE}\"}}]\n  gemini-2.0-flash: [{{provider: vertex, id: gemini-2.0-flash-001}}]\n",
        vertex_provider("vertex", &m, &key)
    ))
    .await;
    // Claude, JSON.
    let r = gw
        .chat(r#"{"model":"claude-3-7-sonnet-20250219","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("vertex"));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from vtx"
    );
    // Claude, stream.
    let r = gw
        .chat(&chat_body("claude-3-7-sonnet-20250219", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // Gemini, JSON and stream.
    for stream in [false, true] {
        let r = gw.chat(&chat_body("gemini-2.0-flash", stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(text.contains("Hello from vtx"), "{text}");
    }
    let reqs = m.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/token".to_string(),
            format!("{PREFIX}/anthropic/models/{CLAUDE}:rawPredict"),
            format!("{PREFIX}/anthropic/models/{CLAUDE}:streamRawPredict"),
            format!("{PREFIX}/google/models/gemini-2.0-flash-001:generateContent"),
            format!("{PREFIX}/google/models/gemini-2.0-flash-001:streamGenerateContent?alt=sse"),
        ]
    );
    // One token for all four requests, sent as a bearer.
    assert_eq!(m.tokens(), 1);
    for r in &reqs[1..] {
        assert_eq!(r.header("authorization"), Some("Bearer ya29.mock-1"));
    }
    // Claude on Vertex: the model is in the URL; the body names the Vertex API version.
    let sent: Value = serde_json::from_slice(&reqs[1].body).unwrap();
    assert_eq!(
        sent,
        json!({"anthropic_version":"vertex-2023-10-16","max_tokens":50,
               "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]})
    );
    let streamed: Value = serde_json::from_slice(&reqs[2].body).unwrap();
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["max_tokens"], 64000, "the catalog's output limit");
    // The token request: a JWT bearer grant, checked by google-auth (tests/sdk/vertex_check.py).
    let form = String::from_utf8(reqs[0].body.to_vec()).unwrap();
    let assertion = form.split("assertion=").nth(1).unwrap().to_string();
    let dir = temp_dir();
    let input = dir.join("vertex.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({"form": form, "assertion": assertion, "key_file": std::fs::read_to_string(&key).unwrap()})).unwrap(),
    )
    .unwrap();
    let out = run_sdk_script("vertex_check.py", vec![input.display().to_string()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // Neither key nor token reaches the log.
    let log = gw.stderr();
    assert!(!log.contains("ya29.mock"), "{log}");
    assert!(!log.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_before_they_expire() {
    // Tokens that live 100 s are inside the 300 s renewal margin: every request renews.
    let m = mock_with(MockConfig {
        name: "vtx".into(),
        token_lifetime_secs: 100,
        ..MockConfig::default()
    })
    .await;
    let key = key_file(&m);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gemini-2.0-flash: [{{provider: vertex}}]\n",
        vertex_provider("vertex", &m, &key)
    ))
    .await;
    for _ in 0..3 {
        let r = gw.chat(&chat_body("gemini-2.0-flash", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(m.tokens(), 3);
    let auth: Vec<String> = m
        .requests()
        .iter()
        .filter(|r| r.path.contains("/publishers/"))
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(
        auth,
        [
            "Bearer ya29.mock-1",
            "Bearer ya29.mock-2",
            "Bearer ya29.mock-3"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_falls_back_like_a_401() {
    let refusing = mock_with(MockConfig {
        name: "refusing".into(),
        status: 401,
        ..MockConfig::default()
    })
    .await;
    let oai = mock("oai").await;
    let key = key_file(&refusing);
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  gemini-2.0-flash: [{{provider: vertex}}, {{provider: oai}}]\n",
        vertex_provider("vertex", &refusing, &key),
        provider("oai", &oai)
    ))
    .await;
    let r = gw.chat(&chat_body("gemini-2.0-flash", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("oai"));
    assert_eq!(refusing.calls(), 1, "only the token request, no model call");
    // Alone, the refusal is the client's answer: the provider's status, every attempt listed.
    let r = gw.chat(&chat_body("gemini-2.0-flash/vertex", false)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let v = r.json();
    let e = v["error"]["attempts"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("vertex token") && e.contains("invalid_grant"),
        "{e}"
    );
    assert_eq!(v["error"]["attempts"][0]["status"], 401);
    assert!(!r.text().contains("PRIVATE"));
}

/// The payload of the JWT in a token request's form.
fn assertion_claims(form: &[u8]) -> Value {
    use base64::Engine as _;
    let form = String::from_utf8_lossy(form);
    let jwt = form.split("assertion=").nth(1).unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_service_account_gets_its_own_tokens_for_its_own_project() {
    let m = mock_with(MockConfig {
        name: "vtx".into(),
        ..MockConfig::default()
    })
    .await;
    let key = key_file(&m);
    let gw = common::chains::gateway(&format!(
        "auth: {{required: true}}\nstore: {}\nproviders:\n{}models:\n  gemini-2.0-flash: [{{provider: vertex}}]\n",
        common::keys::SQLITE,
        vertex_provider("vertex", &m, &key)
    ))
    .await;
    let body = chat_body("gemini-2.0-flash", false);
    // A key on the operator's account (PTB).
    let (_, ptb) = common::keys::new_key(&gw, json!({}), 1.0).await;
    let r = common::keys::chat_as(&gw, &ptb, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A key with its own service account: another project, and a token_uri of its own that
    // detour must never call.
    let (id, own) = common::keys::new_key(&gw, json!({"ptb": false}), 0.0).await;
    let mut sa: Value = serde_json::from_str(KEY_FILE).unwrap();
    sa["client_email"] = json!("caller@caller-project.iam.gserviceaccount.com");
    sa["project_id"] = json!("caller-project");
    sa["token_uri"] = json!("http://169.254.169.254/token");
    let path = format!("/admin/keys/{id}/providers/vertex");
    let r = common::keys::admin(&gw, "PUT", &path, json!({"service-account": sa})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("PRIVATE"), "{}", r.text());
    for _ in 0..2 {
        let r = common::keys::chat_as(&gw, &own, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The operator's key file again: its token was not replaced by the caller's.
    let r = common::keys::chat_as(&gw, &ptb, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let reqs = m.requests();
    let tokens: Vec<Value> = reqs
        .iter()
        .filter(|r| r.path == "/token")
        .map(|r| assertion_claims(&r.body))
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "one token per account, each cached: {tokens:?}"
    );
    let audience = format!("http://{}/token", m.addr);
    assert_eq!(
        tokens[1]["iss"],
        "caller@caller-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        tokens[1]["aud"],
        audience.as_str(),
        "the provider's token endpoint"
    );
    assert_ne!(tokens[0]["iss"], tokens[1]["iss"]);
    let calls: Vec<(String, String)> = reqs
        .iter()
        .filter(|r| r.path.contains("/publishers/"))
        .map(|r| {
            (
                r.path.clone(),
                r.header("authorization").unwrap().to_string(),
            )
        })
        .collect();
    let at = |project: &str| {
        format!("/v1/projects/{project}/locations/us-east5/publishers/google/models/gemini-2.0-flash:generateContent")
    };
    let (operator, caller) = (at("detour-test"), at("caller-project"));
    assert_eq!(
        calls,
        [
            (operator.clone(), "Bearer ya29.mock-1".to_string()),
            (caller.clone(), "Bearer ya29.mock-2".to_string()),
            (caller, "Bearer ya29.mock-2".to_string()),
            (operator, "Bearer ya29.mock-1".to_string()),
        ]
    );
    let log = gw.stderr();
    assert!(
        !log.contains("ya29.mock") && !log.contains("PRIVATE KEY"),
        "{log}"
    );
}
