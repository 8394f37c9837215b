//! Anthropic behind the OpenAI API: requests translated to the Messages API, answers and streams
//! translated back, and Anthropic's failures (529, in-stream `overloaded_error`) falling back
//! across provider kinds. Real sockets; the mock speaks Anthropic on `/v1/messages`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_answers_are_translated_both_ways() {
    let m = mock("anth").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-sonnet-4:\n    - {{provider: anth, id: claude-sonnet-4-20250514, max-output-tokens: 2048}}\n",
        anthropic_provider("anth", &m)
    ))
    .await;
    let body = r#"{"model":"claude-sonnet-4","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0.5,"stop":["END"]}"#;
    let r = gw
        .chat_with(body, &[("authorization", "Bearer sk-client-secret")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("anth"));
    assert_eq!(r.header("x-detour-model"), Some("claude-sonnet-4-20250514"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-sonnet-4-20250514");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from anth");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens":9,"completion_tokens":3,"total_tokens":12})
    );
    // What Anthropic received: its own wire format, its own auth.
    let seen = &m.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        sent,
        json!({"model":"claude-sonnet-4-20250514","system":"Be brief.",
               "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
               "max_tokens":2048,"stop_sequences":["END"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_one_clean_openai_stream() {
    let m = mock_with(MockConfig {
        name: "anth".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-sonnet-4: [{{provider: anth, id: claude-sonnet-4-20250514}}]\n",
        anthropic_provider("anth", &m)
    ))
    .await;
    let body = r#"{"model":"claude-sonnet-4","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.chat(body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = sse_data(&r.body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from anth tok1 tok2 tok3");
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["stop"]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 4);
    assert_eq!(usage["prompt_tokens"], 9);
    assert!(!r.text().contains("event:"), "no Anthropic framing leaks");
    assert!(serde_json::from_slice::<Value>(&m.requests()[0].body).unwrap()["stream"] == true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_anthropic_falls_back_across_kinds() {
    // 529 from the first, an in-stream overloaded_error (after message_start, ping) from the
    // second, OpenAI format from the third: the client sees one clean stream from the third.
    let a529 = mock_with(MockConfig {
        name: "a529".into(),
        status: 529,
        ..MockConfig::default()
    })
    .await;
    let inband = mock_with(MockConfig {
        name: "inband".into(),
        fault: Fault::ErrorInStream,
        fault_after: 3,
        ..MockConfig::default()
    })
    .await;
    let oai = mock("oai").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{}models:\n  claude-sonnet-4: [{{provider: a529}}, {{provider: inband}}]\n  gpt-4o: [{{provider: oai}}]\n",
        anthropic_provider("a529", &a529),
        anthropic_provider("inband", &inband),
        provider("oai", &oai)
    ))
    .await;
    let r = gw.chat(&chat_body("claude-sonnet-4,gpt-4o", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("oai"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("2"));
    assert_eq!(r.header("x-detour-attempts"), Some("3"));
    assert!(r.text().contains("Hello from oai"));
    assert!(
        !r.text().contains("inband") && !r.text().contains("error"),
        "{}",
        r.text()
    );
    assert_eq!((a529.calls(), inband.calls(), oai.calls()), (1, 1, 1));
    // Everything failing: one error with the Anthropic failures in OpenAI's shape.
    let r = gw.chat(&chat_body("claude-sonnet-4", true)).await;
    assert_eq!(r.status, 529, "every attempt stood for a 529: {}", r.text());
    let v = r.json();
    let at = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(at[0]["status"], 529);
    assert_eq!(at[1]["status"], 529);
    assert_eq!(at[1]["error"], "in-stream overloaded_error: Overloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_parameters_and_errors() {
    let anth = mock("anth").await;
    let oai = mock("oai").await;
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        status: 400,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{}models:\n  claude-sonnet-4: [{{provider: anth}}]\n  gpt-4o: [{{provider: oai}}]\n  claude-bad: [{{provider: bad}}]\n",
        anthropic_provider("anth", &anth),
        provider("oai", &oai),
        anthropic_provider("bad", &bad)
    ))
    .await;
    let n2 = r#"{"model":"claude-sonnet-4","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.chat(n2).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "all_attempts_failed");
    assert!(v["error"]["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("n > 1"));
    assert_eq!(anth.calls(), 0, "never sent");
    // The same request in a chain: the next target that can honour it serves.
    let r = gw
        .chat(&n2.replace("claude-sonnet-4", "claude-sonnet-4,gpt-4o"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-provider"), Some("oai"));
    // Anthropic's own 400 comes back unchanged in meaning, in OpenAI's error shape.
    let r = gw.chat(&chat_body("claude-bad", false)).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "Invalid request from mock (bad)");
}

/// What detour sends Anthropic, and what the mock answers with, validated against the official
/// `anthropic` SDK's published types (pydantic, strict) by tests/sdk/anthropic_shapes.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_shapes_match_anthropics_published_types() {
    let m = mock("anth").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-sonnet-4: [{{provider: anth, id: claude-sonnet-4-20250514}}]\n",
        anthropic_provider("anth", &m)
    ))
    .await;
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    let requests = [
        r#"{"model":"claude-sonnet-4","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}]}"#.to_string(),
        format!(
            r#"{{"model":"claude-sonnet-4","max_completion_tokens":512,"temperature":0.3,"top_p":0.9,"stop":["END","STOP"],"user":"user-42",
            "tools":{tools},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}},
            "messages":[{{"role":"developer","content":[{{"type":"text","text":"Use tools."}}]}},
              {{"role":"user","content":[{{"type":"text","text":"Weather here?"}},{{"type":"image_url","image_url":{{"url":"data:image/jpeg;base64,/9j/4AAQ"}}}},{{"type":"image_url","image_url":{{"url":"https://example.com/a.png"}}}}]}},
              {{"role":"assistant","content":"Checking.","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},
              {{"role":"tool","tool_call_id":"call_1","content":"18C and sunny"}},
              {{"role":"user","content":"And tomorrow?"}}]}}"#
        ),
        format!(
            r#"{{"model":"claude-sonnet-4","stream":true,"stream_options":{{"include_usage":true}},"tools":{tools},"tool_choice":"none","messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
        format!(
            r#"{{"model":"claude-sonnet-4","tools":{tools},"tool_choice":"required","messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
        format!(
            r#"{{"model":"claude-sonnet-4","stream":true,"tools":{tools},"tool_choice":"auto","messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
    ];
    for body in &requests {
        let r = gw.chat(body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
    }
    let sent: Vec<Value> = m
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), requests.len());
    // The mock's own answers, fetched directly: the fixtures detour is tested against.
    let direct = |stream: bool| {
        let body = format!(
            r#"{{"model":"claude-sonnet-4-20250514","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        async move {
            request(m.addr.port(), "POST", "/v1/messages", &[], body.as_bytes())
                .await
                .unwrap()
        }
    };
    let message: Value = direct(false).await.json();
    let events: Vec<Value> = sse_data(&direct(true).await.body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(events.len() >= 6);
    let dir = temp_dir();
    let input = dir.join("shapes.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({"requests": sent, "message": message, "stream_events": events}))
            .unwrap(),
    )
    .unwrap();
    let out = run_sdk_script(
        "anthropic_shapes.py",
        vec![input.to_string_lossy().into_owned()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shapes rejected by the anthropic SDK's types:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{} passed, 0 failed",
            2 * requests.len() + 1 + events.len()
        )),
        "{stdout}"
    );
}
