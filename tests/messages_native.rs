//! Messages clients and Anthropic-family targets: the request goes as the client sent it (only
//! `model` replaced; Claude on Vertex in its envelope), its `anthropic-*` headers with it, and
//! the answer comes back byte for byte, JSON and streamed; a cut after commit ends in
//! `event: error`; an error event before content falls back; a block only Anthropic takes
//! skips the chat-completions targets of the chain. Real sockets, mock providers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use detour::mock::RecordedRequest;
use serde_json::{json, Value};

const CLAUDE: &str = "claude-sonnet-4-20250514";

fn config(anth: &MockServer, steady: &MockServer) -> String {
    format!(
        "providers:\n{}  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\nmodels:\n  claude-sonnet-4: [{{provider: anth, id: {CLAUDE}}}]\n  gpt-4o: [{{provider: steady}}]\n",
        provider("steady", steady),
        anth.addr
    )
}

/// A Messages body with what only Anthropic understands (a document block, `top_k`,
/// `thinking`, `cache_control`), odd spacing and key order: nothing of it may change.
fn odd_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{ "max_tokens" : 64,"stream":{stream}, "model" : "{model}",  "top_k": 5, "thinking": {{"type":"enabled","budget_tokens":1024}},
  "system":[{{"type":"text","text":"Be brief.","cache_control":{{"type":"ephemeral"}}}}],
  "messages":[{{"role":"user","content":[{{"type":"document","source":{{"type":"text","media_type":"text/plain","data":"a doc"}}}},{{"type":"text","text":"hi \u00e9 é"}}]}}] }}"#
    )
}

/// What the mock itself answers to `body`.
async fn direct(m: &MockServer, body: &str) -> Response {
    let h = [
        ("content-type", "application/json"),
        ("x-api-key", PROVIDER_KEY),
    ];
    request(m.addr.port(), "POST", "/v1/messages", &h, body.as_bytes())
        .await
        .unwrap()
}

fn last_request(m: &MockServer) -> RecordedRequest {
    m.stats.requests.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_target_gets_the_request_as_sent_and_answers_byte_for_byte() {
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        chunks: 4,
        record: true,
        ..MockConfig::default()
    })
    .await;
    let steady = mock("steady").await;
    let gw = Gateway::start(&config(&anth, &steady)).await;
    let headers = [
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("x-api-key", "sk-ant-client-own-key-not-for-upstream"),
    ];
    for stream in [false, true] {
        let body = odd_body("claude-sonnet-4/anth", stream);
        let r = gw.post_json("/v1/messages", &body, &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = last_request(&anth);
        let want = body.replace("\"claude-sonnet-4/anth\"", &format!("\"{CLAUDE}\""));
        assert_eq!(
            String::from_utf8_lossy(&sent.body),
            want,
            "only model replaced"
        );
        assert_eq!(sent.path, "/v1/messages");
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(
            sent.header("anthropic-beta"),
            Some("prompt-caching-2024-07-31")
        );
        assert_eq!(sent.header("x-api-key"), Some(PROVIDER_KEY), "detour's key");
        let d = direct(&anth, &want).await;
        assert_eq!(d.status, 200);
        assert_eq!(r.text(), d.text(), "stream {stream}: byte for byte");
        assert_eq!(r.header("content-type"), d.header("content-type"));
        assert_eq!(r.header("x-detour-provider"), Some("anth"));
    }
    // Without the client's version, the provider's is sent.
    let body = odd_body("claude-sonnet-4/anth", false);
    let r = gw.post_json("/v1/messages", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_request(&anth).header("anthropic-version"),
        Some("2023-06-01")
    );
    // The chat endpoint still translates for the same target.
    let r = gw.chat(&chat_body("claude-sonnet-4/anth", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_only_anthropic_takes_skips_the_chat_targets() {
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        record: true,
        ..MockConfig::default()
    })
    .await;
    let steady = mock("steady").await;
    let gw = Gateway::start(&config(&anth, &steady)).await;
    let body = odd_body("gpt-4o/steady,claude-sonnet-4/anth", false);
    let r = gw.post_json("/v1/messages", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("anth"));
    assert_eq!(r.json()["type"], "message");
    assert_eq!(steady.calls(), 0, "the chat target was never sent it");
    // The same request to chat targets only: a 400 whose attempts say why.
    let body = odd_body("gpt-4o", false);
    let r = gw.post_json("/v1/messages", &body, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(e["type"], "error");
    assert!(
        e["error"]["attempts"].to_string().contains("document"),
        "{e}"
    );
    // A request no target could take is still a 400 before any attempt.
    let r = gw
        .post_json(
            "/v1/messages",
            r#"{"model":"claude-sonnet-4/anth","messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("max_tokens"), "{}", r.text());
}

/// `(event, data)` of an Anthropic event stream.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            (
                name.strip_prefix("event: ").unwrap().to_string(),
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_stream_cut_after_commit_ends_in_an_error_event() {
    for fault in [Fault::ResetMidStream, Fault::ErrorInStream] {
        let anth = mock_with(MockConfig {
            name: "anth".into(),
            chunks: 6,
            fault,
            fault_after: 5,
            ..MockConfig::default()
        })
        .await;
        let steady = mock("steady").await;
        let gw = Gateway::start(&config(&anth, &steady)).await;
        let body = r#"{"model":"claude-sonnet-4/anth,gpt-4o/steady","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let r = gw.post_json("/v1/messages", body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let ev = events(&r.body);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "message_start", "{fault:?}: {names:?}");
        assert!(
            names.contains(&"content_block_delta"),
            "{fault:?}: {names:?}"
        );
        assert_eq!(names.last(), Some(&"error"), "{fault:?}: {names:?}");
        assert!(!names.contains(&"message_stop"), "{fault:?}: {names:?}");
        assert_eq!(names.iter().filter(|n| **n == "error").count(), 1);
        let e = &ev.last().unwrap().1;
        assert_eq!(e["type"], "error");
        let want = if fault == Fault::ErrorInStream {
            "overloaded_error"
        } else {
            "api_error"
        };
        assert_eq!(e["error"]["type"], want, "{fault:?}: {e}");
        assert_eq!(steady.calls(), 0, "no fallback after commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_before_content_falls_back_to_a_translated_stream() {
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        fault: Fault::ErrorInStream,
        fault_after: 1,
        ..MockConfig::default()
    })
    .await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&config(&anth, &steady)).await;
    let body = r#"{"model":"claude-sonnet-4/anth,gpt-4o/steady","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.post_json("/v1/messages", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = events(&r.body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    assert!(!names.contains(&"error"), "{names:?}");
    assert_eq!(r.header("x-detour-provider"), Some("steady"));
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("Hello from steady"), "{text}");
}

const VERTEX_KEY: &str = include_str!("fixtures/vertex-test-service-account.json");
const VERTEX_CLAUDE: &str = "claude-3-7-sonnet@20250219";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_on_vertex_gets_the_body_in_its_envelope_and_answers_byte_for_byte() {
    let m = mock_with(MockConfig {
        name: "vtx".into(),
        chunks: 3,
        record: true,
        ..MockConfig::default()
    })
    .await;
    let mut sa: Value = serde_json::from_str(VERTEX_KEY).unwrap();
    sa["token_uri"] = json!(format!("http://{}/token", m.addr));
    let key = temp_dir().join("sa.json");
    std::fs::write(&key, serde_json::to_vec(&sa).unwrap()).unwrap();
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: vertex, kind: vertex, project: p1, region: us-east5, base-url: \"http://{}\", credentials-file: \"{}\"}}\nmodels:\n  claude-3-7: [{{provider: vertex, id: \"{VERTEX_CLAUDE}\"}}]\n",
        m.addr,
        key.display()
    ))
    .await;
    for stream in [false, true] {
        let body = odd_body("claude-3-7", stream);
        let r = gw
            .post_json(
                "/v1/messages",
                &body,
                &[("anthropic-version", "2023-06-01")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = last_request(&m);
        let method = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        assert!(
            sent.path.ends_with(&format!("/{VERTEX_CLAUDE}:{method}")),
            "{}",
            sent.path
        );
        let mut want: Value = serde_json::from_str(&body).unwrap();
        want.as_object_mut().unwrap().remove("model");
        want["anthropic_version"] = json!("vertex-2023-10-16");
        let got: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(got, want, "the body, model out and the version in");
        // What the mock answers on that path is what the client got.
        let token = sent.header("authorization").unwrap().to_string();
        let h = [
            ("content-type", "application/json"),
            ("authorization", token.as_str()),
        ];
        let d = request(m.addr.port(), "POST", &sent.path, &h, &sent.body)
            .await
            .unwrap();
        assert_eq!(d.status, 200, "{}", d.text());
        assert_eq!(r.text(), d.text(), "stream {stream}: byte for byte");
    }
    // A token count: Vertex's count-tokens endpoint, the model in the body as Vertex names it.
    let body = r#"{"model":"claude-3-7","messages":[{"role":"user","content":"hello"}]}"#;
    let r = gw.post_json("/v1/messages/count_tokens", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_request(&m);
    assert_eq!(
        sent.path,
        "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    );
    let got: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        got,
        json!({"model": VERTEX_CLAUDE, "messages": [{"role": "user", "content": "hello"}],
               "anthropic_version": "vertex-2023-10-16"})
    );
    assert_eq!(
        r.text(),
        format!("{{\"input_tokens\":{}}}", sent.body.len())
    );
    assert_eq!(r.header("x-detour-estimated"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_goes_to_the_first_anthropic_target_else_is_an_estimate() {
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        record: true,
        ..MockConfig::default()
    })
    .await;
    let steady = mock("steady").await;
    let gw = Gateway::start(&config(&anth, &steady)).await;
    let body = r#"{"model":"gpt-4o/steady,claude-sonnet-4/anth","system":"Be brief.","messages":[{"role":"user","content":"hello there"}]}"#;
    let r = gw
        .post_json(
            "/v1/messages/count_tokens",
            body,
            &[("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_request(&anth);
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    let want = body.replace(
        "\"gpt-4o/steady,claude-sonnet-4/anth\"",
        &format!("\"{CLAUDE}\""),
    );
    assert_eq!(String::from_utf8_lossy(&sent.body), want);
    // The mock counts the body's bytes: the answer is its own, byte for byte.
    assert_eq!(r.text(), format!("{{\"input_tokens\":{}}}", want.len()));
    assert_eq!(r.header("x-detour-estimated"), None);
    assert_eq!(steady.calls(), 0, "chat targets do not count");

    // No Anthropic target: detour's estimate, marked.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello there, how are you today?"}]}"#;
    let r = gw.post_json("/v1/messages/count_tokens", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["detour_estimated"], true, "{v}");
    assert_eq!(r.header("x-detour-estimated"), Some("true"));
    let n = v["input_tokens"].as_u64().unwrap();
    assert!((8..40).contains(&n), "{v}");
    assert_eq!(steady.calls(), 0);

    // Bad input: Anthropic's 400.
    for bad in [
        "[]",
        r#"{"model":7,"messages":[]}"#,
        r#"{"model":"gpt-4o"}"#,
    ] {
        let r = gw.post_json("/v1/messages/count_tokens", bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{bad}");
    }
    let r = request(gw.port, "GET", "/v1/messages/count_tokens", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
}

const BEDROCK_CLAUDE: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_on_bedrock_gets_the_body_through_invoke_model() {
    let m = mock_with(MockConfig {
        name: "bed".into(),
        chunks: 3,
        record: true,
        ..MockConfig::default()
    })
    .await;
    let anth = mock_with(MockConfig {
        name: "bed".into(),
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n  - {{name: bed, kind: bedrock, region: us-east-1, base-url: \"http://{}\"}}\nmodels:\n  claude-sonnet-4: [{{provider: bed, id: \"{BEDROCK_CLAUDE}\"}}]\n",
        m.addr
    ))
    .await;
    for stream in [false, true] {
        let body = odd_body("claude-sonnet-4", stream);
        // Betas in two headers, one a list with spaces and an empty item.
        let betas = [
            ("anthropic-beta", "context-1m-2025-08-07, ,x\"y"),
            ("anthropic-beta", "token-efficient-tools-2025-02-19"),
        ];
        let r = gw.post_json("/v1/messages", &body, &betas).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sent = last_request(&m);
        let method = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        assert_eq!(
            sent.path,
            format!("/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/{method}")
        );
        assert!(sent
            .header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256"));
        let mut want: Value = serde_json::from_str(&body).unwrap();
        want.as_object_mut().unwrap().remove("model");
        want.as_object_mut().unwrap().remove("stream");
        want["anthropic_version"] = json!("bedrock-2023-05-31");
        want["anthropic_beta"] = json!([
            "context-1m-2025-08-07",
            "x\"y",
            "token-efficient-tools-2025-02-19"
        ]);
        let got: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(
            got, want,
            "the body, model and stream out, the version and betas in"
        );
        // Anthropic's own answer to the same model: what the client got, out of its frames.
        let direct_body = body.replace("\"claude-sonnet-4\"", &format!("\"{BEDROCK_CLAUDE}\""));
        let d = direct(&anth, &direct_body).await;
        assert_eq!(r.text(), d.text(), "stream {stream}");
        let ct = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        assert_eq!(r.header("content-type"), Some(ct));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_committed_stream_gets_pings_in_its_clients_dialect() {
    let slow = |name: &str, fault| {
        mock_with(MockConfig {
            name: name.into(),
            chunks: 3,
            chunk_interval: std::time::Duration::from_millis(400),
            fault,
            fault_after: 4,
            ..MockConfig::default()
        })
    };
    let anth = slow("anth", Fault::None).await;
    let steady = slow("steady", Fault::None).await;
    let gw = Gateway::start_full(
        &config(&anth, &steady),
        "timeouts: {connect: 1s, first-byte: 2s, idle: 1s, total: 20s, keep-alive: 150ms}\n",
    )
    .await;
    let stream = |model: &str| {
        format!(
            r#"{{"model":"{model}","max_tokens":64,"stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    // OpenAI clients: SSE comments between the chunks, which the SDKs skip.
    let r = gw.chat(&chat_body("gpt-4o", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\n: ping\n\n"), "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    // Messages clients, translated and passed through: Anthropic's ping events.
    for model in ["gpt-4o", "claude-sonnet-4/anth"] {
        let r = gw.post_json("/v1/messages", &stream(model), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let ev = events(&r.body);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        let pings = names.iter().filter(|n| **n == "ping").count();
        assert!(pings >= 3, "{model}: {names:?}");
        assert_eq!(names.last(), Some(&"message_stop"), "{model}: {names:?}");
        assert!(
            !r.text().contains("\n: ping\n"),
            "{model}: no comment leaks: {}",
            r.text()
        );
    }
    // Pings do not keep a stalled upstream alive: the idle timeout still ends it.
    let stalled = slow("stalled", Fault::StallMidStream).await;
    let gw = Gateway::start_full(
        &config(&stalled, &steady),
        "timeouts: {connect: 1s, first-byte: 2s, idle: 1s, total: 20s, keep-alive: 150ms}\n",
    )
    .await;
    let started = std::time::Instant::now();
    let r = gw
        .post_json("/v1/messages", &stream("claude-sonnet-4/anth"), &[])
        .await;
    let names: Vec<String> = events(&r.body).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.last().map(String::as_str), Some("error"), "{names:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
