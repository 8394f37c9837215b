//! A Messages client's stream that breaks after commit, with `failover.continuation`: it goes
//! on in the same message on the next target that takes a prefill, an Anthropic one (sent the
//! client's body as it was, with the partial answer as a trailing assistant turn, its answer
//! spliced in event by event) or a chat-completions one (translated into the open message).
//! The official `anthropic` SDK reads the result: its own accumulator checks every block index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

const CLAUDE: &str = "claude-sonnet-4-20250514";

/// A chain's stream through the SDK: what it made of it.
async fn sdk_stream(gw: &Gateway, chain: &str, request_id: &str) -> Value {
    let out = run_sdk_script(
        "anthropic_stream.py",
        vec![
            "--base-url".into(),
            format!("http://127.0.0.1:{}", gw.port),
            "--model".into(),
            chain.into(),
            "--request-id".into(),
            request_id.into(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn last_body(m: &MockServer) -> Value {
    let r = m.requests();
    serde_json::from_slice(&r.last().expect("a request").body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_native_stream_goes_on_in_the_same_message() {
    let cut = mock_with(MockConfig {
        name: "cut".into(),
        chunks: 6,
        fault: Fault::ResetMidStream,
        fault_after: 5,
        ..MockConfig::default()
    })
    .await;
    let anth2 = mock_with(MockConfig {
        name: "anth2".into(),
        chunks: 3,
        record: true,
        ..MockConfig::default()
    })
    .await;
    let oai = mock_with(MockConfig {
        name: "oai".into(),
        chunks: 3,
        record: true,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "failover:\n  continuation: true\nproviders:\n{}{}{}models:\n  claude-sonnet-4:\n    capabilities: [prefill]\n    routes: [{{provider: cut, id: {CLAUDE}}}, {{provider: anth2, id: {CLAUDE}}}]\n  gpt-4o:\n    capabilities: [prefill]\n    routes: [{{provider: oai}}]\n",
        anthropic_provider("cut", &cut),
        anthropic_provider("anth2", &anth2),
        provider("oai", &oai),
    ))
    .await;

    for (chain, next) in [
        ("claude-sonnet-4/cut,claude-sonnet-4/anth2", "anth2"),
        ("claude-sonnet-4/cut,gpt-4o/oai", "oai"),
    ] {
        let rid = format!("cont-{next}");
        let r = sdk_stream(&gw, chain, &rid).await;
        assert_eq!(r["error"], Value::Null, "{chain}: {r}");
        let text = r["text"].as_str().unwrap();
        let at = text
            .find(&format!("Hello from {next}"))
            .unwrap_or_else(|| panic!("{chain}: {text}"));
        let partial = &text[..at];
        assert!(partial.starts_with("Hello from cut"), "{chain}: {text}");
        assert_eq!(r["stop_reason"], "end_turn", "{chain}: {r}");
        assert_eq!(
            r["blocks"],
            serde_json::json!(["text"]),
            "one text block: {r}"
        );
        let events: Vec<&str> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        let count = |n: &str| events.iter().filter(|e| **e == n).count();
        assert_eq!(
            (count("message_start"), count("message_stop")),
            (1, 1),
            "{chain}: {events:?}"
        );
        // The partial answer went as a trailing assistant turn (without trailing whitespace).
        let sent = if next == "anth2" {
            last_body(&anth2)
        } else {
            last_body(&oai)
        };
        let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["role"], "assistant", "{chain}: {sent}");
        assert_eq!(last["content"], partial.trim_end(), "{chain}: {sent}");
        if next == "anth2" {
            // The client's body as sent: a field only the Messages API has is still there.
            assert_eq!(sent["top_k"], 5, "{sent}");
            assert_eq!(sent["model"], CLAUDE);
        } else {
            assert!(sent.get("top_k").is_none(), "{sent}");
        }
        // On record: the broken attempt, then the one that finished the answer.
        let rec = common::records::recorded(&gw, &rid).await;
        assert_eq!(rec["outcome"], "success_continued", "{rec}");
        assert_eq!(
            common::records::column(&rec, "provider"),
            [&Value::from("cut"), &Value::from(next)],
            "{rec}"
        );
    }
    assert_eq!(cut.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_stream_with_a_tool_use_is_not_continued() {
    let cut = mock_with(MockConfig {
        name: "cut".into(),
        chunks: 6,
        fault: Fault::ResetMidStream,
        fault_after: 4,
        ..MockConfig::default()
    })
    .await;
    let anth2 = mock("anth2").await;
    let gw = Gateway::start(&format!(
        "failover:\n  continuation: true\nproviders:\n{}{}models:\n  claude-sonnet-4:\n    capabilities: [prefill, tools]\n    routes: [{{provider: cut, id: {CLAUDE}}}, {{provider: anth2, id: {CLAUDE}}}]\n",
        anthropic_provider("cut", &cut),
        anthropic_provider("anth2", &anth2),
    ))
    .await;
    // Tools offered and unanswered: the mock calls one; a prefill cannot carry a tool call.
    let body = r#"{"model":"claude-sonnet-4/cut,claude-sonnet-4/anth2","max_tokens":64,"stream":true,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"weather?"}]}"#;
    let r = gw.post_json("/v1/messages", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains("\"tool_use\""), "{text}");
    assert!(
        text.trim_end().ends_with('}') && text.contains("event: error"),
        "{text}"
    );
    assert!(!text.contains("message_stop"), "{text}");
    assert_eq!(anth2.calls(), 0, "no continuation of a tool call");
}
