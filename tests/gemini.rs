//! Gemini (Google AI Studio) behind the OpenAI API, over real sockets: the request path, key
//! header and body Gemini receives, answers and streams translated back, and a chain across
//! three provider kinds. The mock speaks Gemini on `…/models/{model}:generateContent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn gemini_provider(name: &str, m: &MockServer) -> String {
    format!(
        "  - {{name: {name}, kind: google-ai-studio, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n",
        m.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answers_and_streams_are_translated() {
    let m = mock_with(MockConfig {
        name: "gem".into(),
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gemini-2.0-flash: [{{provider: gem}}]\n",
        gemini_provider("gem", &m)
    ))
    .await;
    let body = r#"{"model":"gemini-2.0-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":64,"temperature":0.4}"#;
    let r = gw
        .chat_with(body, &[("authorization", "Bearer sk-client-secret")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("gem"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from gem");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 12);
    let seen = &m.requests()[0];
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(PROVIDER_KEY));
    assert_eq!(seen.header("authorization"), None);
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        sent,
        json!({"contents":[{"role":"user","parts":[{"text":"hi"}]}],
               "systemInstruction":{"parts":[{"text":"Be brief."}]},
               "generationConfig":{"maxOutputTokens":64,"temperature":0.4}})
    );
    // Streaming: Gemini's SSE (no [DONE]) becomes OpenAI chunks ending in [DONE].
    let r = gw
        .chat(r#"{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        m.requests()[1].path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
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
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from gem tok1 tok2");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_across_three_kinds() {
    let g429 = mock_with(MockConfig {
        name: "g429".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let ginband = mock_with(MockConfig {
        name: "ginband".into(),
        fault: Fault::ErrorInStream,
        fault_after: 0,
        ..MockConfig::default()
    })
    .await;
    let anth = mock("anth").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\nmodels:\n  gemini-2.0-flash: [{{provider: g429}}, {{provider: ginband}}]\n  claude-sonnet-4: [{{provider: anth}}]\n",
        gemini_provider("g429", &g429),
        gemini_provider("ginband", &ginband),
        anth.addr
    ))
    .await;
    let r = gw
        .chat(&chat_body("gemini-2.0-flash,claude-sonnet-4", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("anth"));
    assert_eq!(r.header("x-detour-fallback-index"), Some("2"));
    assert!(r.text().contains("Hello from anth"));
    assert!(!r.text().contains("overloaded"), "{}", r.text());
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
    assert_eq!((g429.calls(), ginband.calls(), anth.calls()), (1, 1, 1));
    // The Gemini failures alone: one error, Gemini's statuses mapped.
    let r = gw.chat(&chat_body("gemini-2.0-flash", true)).await;
    let v = r.json();
    let at = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(at[0]["status"], 429);
    assert_eq!(at[1]["status"], 503);
    assert_eq!(
        at[1]["error"],
        "in-stream UNAVAILABLE: The model is overloaded."
    );
    assert_eq!(r.status, 502, "mixed statuses");
}

/// What detour sends Gemini, and what the mock answers with, validated against the official
/// `google-genai` SDK's published types by tests/sdk/gemini_shapes.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_shapes_match_googles_published_types() {
    let m = mock("gem").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  gemini-2.0-flash: [{{provider: gem}}]\n",
        gemini_provider("gem", &m)
    ))
    .await;
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    let requests = [
        r#"{"model":"gemini-2.0-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}]}"#.to_string(),
        format!(
            r#"{{"model":"gemini-2.0-flash","max_completion_tokens":256,"temperature":0.3,"top_p":0.9,"seed":1,"stop":["END"],
            "presence_penalty":0.1,"frequency_penalty":0.2,"tools":{tools},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}},
            "messages":[{{"role":"developer","content":[{{"type":"text","text":"Use tools."}}]}},
              {{"role":"user","content":[{{"type":"text","text":"Weather here?"}},{{"type":"image_url","image_url":{{"url":"data:image/jpeg;base64,/9j/4AAQ"}}}}]}},
              {{"role":"assistant","content":"Checking.","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},
              {{"role":"tool","tool_call_id":"call_1","content":"18C and sunny"}},
              {{"role":"user","content":"And tomorrow?"}}]}}"#
        ),
        format!(
            r#"{{"model":"gemini-2.0-flash","stream":true,"tools":{tools},"tool_choice":"required","response_format":{{"type":"json_object"}},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
        r#"{"model":"gemini-2.0-flash","response_format":{"type":"json_schema","json_schema":{"name":"w","schema":{"type":"object","properties":{"t":{"type":"number"}}}}},"tool_choice":"none","messages":[{"role":"user","content":"hi"}]}"#.to_string(),
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
    let direct = |path: &'static str| async move {
        request(
            m.addr.port(),
            "POST",
            path,
            &[],
            br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        )
        .await
        .unwrap()
    };
    let response = direct("/v1beta/models/gemini-2.0-flash:generateContent")
        .await
        .json();
    let events: Vec<Value> = sse_data(
        &direct("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
            .await
            .body,
    )
    .iter()
    .map(|d| serde_json::from_str(d).unwrap())
    .collect();
    assert!(events.len() >= 3);
    let input = temp_dir().join("gemini-shapes.json");
    std::fs::write(
        &input,
        serde_json::to_vec(
            &json!({"requests": sent, "response": response, "stream_events": events}),
        )
        .unwrap(),
    )
    .unwrap();
    let out = run_sdk_script(
        "gemini_shapes.py",
        vec![input.to_string_lossy().into_owned()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shapes rejected by google-genai's types:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(stdout.matches("ok: ").count() >= 20, "{stdout}");
}
