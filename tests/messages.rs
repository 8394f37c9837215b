//! Clients of Anthropic's Messages API (`POST /v1/messages`): the official Anthropic Python
//! SDK through a fallback, plain and streamed, and the all-failed and bad-request errors it
//! parses; an Anthropic 529 falling back to an OpenAI target in one clean Anthropic stream; a
//! cut after commit ending in `event: error` with no `message_stop`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

fn providers(flaky: &MockServer, steady: &MockServer, anth: &MockServer) -> String {
    format!(
        "providers:\n{}{}  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n",
        provider("flaky", flaky),
        provider("steady", steady),
        anth.addr
    )
}

async fn messages(gw: &Gateway, body: &str, headers: &[(&str, &str)]) -> Response {
    gw.post_json("/v1/messages", body, headers).await
}

/// `(event, data)` of an Anthropic event stream.
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let data = data.strip_prefix("data: ").unwrap();
            (
                name.strip_prefix("event: ").unwrap().to_string(),
                serde_json::from_str(data).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_sdk_through_a_fallback() {
    let flaky = mock_with(MockConfig {
        name: "flaky".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let anth = mock("anth").await;
    let gw = Gateway::start(&format!(
        "{}models:\n  gpt-4o: [{{provider: flaky}}, {{provider: steady}}]\n  gpt-4o-mini: [{{provider: flaky}}]\n",
        providers(&flaky, &steady, &anth)
    ))
    .await;
    // The status the chat endpoint gives when every target failed: the Messages one must match.
    let failed = gw.chat(&chat_body("gpt-4o-mini", false)).await;
    assert!(failed.status >= 400, "{}", failed.text());
    let out = run_sdk_script(
        "anthropic_messages.py",
        vec![
            "--base-url".into(),
            format!("http://127.0.0.1:{}", gw.port),
            "--model".into(),
            "gpt-4o".into(),
            "--expect-text".into(),
            "Hello from steady".into(),
            "--fail-model".into(),
            "gpt-4o-mini".into(),
            "--expect-fail-status".into(),
            failed.status.to_string(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    assert_eq!(stdout.matches("ok: ").count(), 13, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_529_falls_back_to_openai_in_one_clean_stream() {
    let flaky = mock("flaky").await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        status: 529,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "{}models:\n  claude-sonnet-4: [{{provider: anth, id: claude-sonnet-4-20250514}}]\n  gpt-4o: [{{provider: steady}}]\n",
        providers(&flaky, &steady, &anth)
    ))
    .await;
    let body = r#"{"model":"claude-sonnet-4/anth,gpt-4o/steady","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = messages(&gw, body, &[("anthropic-version", "2023-06-01")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let ev = events(&r.body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.get(1), Some(&"ping"));
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
    assert!(!names.contains(&"error"), "{names:?}");
    for (n, d) in &ev {
        assert_eq!(d["type"], n.as_str(), "each event's data names it");
    }
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert!(text.starts_with("Hello from steady"), "{text}");
    let delta = &ev[ev.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(r.header("x-detour-attempts"), Some("2"));

    // The same, not streamed: one message.
    let body = body.replace(r#""stream":true"#, r#""stream":false"#);
    let r = messages(&gw, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!(m["type"], "message");
    assert_eq!(m["content"][0]["type"], "text");
    assert!(m["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Hello from steady"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_after_commit_ends_in_an_error_event_and_bad_input_is_a_400() {
    let flaky = mock("flaky").await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 6,
        fault: Fault::ResetMidStream,
        fault_after: 3,
        ..MockConfig::default()
    })
    .await;
    let anth = mock("anth").await;
    let gw = Gateway::start(&format!(
        "{}models:\n  gpt-4o: [{{provider: steady}}]\n",
        providers(&flaky, &steady, &anth)
    ))
    .await;
    let body = r#"{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = messages(&gw, body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = events(&r.body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"error"), "{names:?}");
    assert!(!names.contains(&"message_stop"), "{names:?}");
    assert!(names.contains(&"content_block_delta"), "{names:?}");

    for (bad, names_it) in [
        ("{", "parse the JSON"),
        (r#"{"model":"gpt-4o","messages":[]}"#, "max_tokens"),
        (
            r#"{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document"}]}]}"#,
            "messages[0]",
        ),
        (
            r#"{"model":"no-such-model","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            "no-such-model",
        ),
    ] {
        let r = messages(&gw, bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let e = r.json();
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{bad}: {e}");
        // A block only chat-completions targets cannot take is each target's refusal, listed.
        let message = format!("{} {}", e["error"]["message"], e["error"]["attempts"]);
        assert!(message.contains(names_it), "{bad}: {message}");
    }
    // The chat endpoint is untouched by the module: its errors keep OpenAI's shape.
    let r = gw.chat("{").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["code"].is_string(), "{}", r.text());
}
