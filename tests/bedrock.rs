//! Bedrock behind the OpenAI API: Converse requests SigV4-signed and translated, answers and
//! event-stream streams translated back, exception frames falling back across provider kinds,
//! and everything detour sends checked against botocore. Real sockets; the mock speaks Bedrock
//! on `/model/{id}/converse(-stream)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const MODEL_ID: &str = "us.anthropic.claude-3-7-sonnet-20250219-v1:0";
const PATH: &str = "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse";

fn bedrock_provider(name: &str, m: &MockServer) -> String {
    format!(
        "  - {{name: {name}, kind: bedrock, region: us-east-1, base-url: \"http://{}\"}}\n",
        m.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_signed_and_translated_both_ways() {
    let m = mock("bed").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-3-7-sonnet-20250219: [{{provider: bed, id: \"{MODEL_ID}\"}}]\n",
        bedrock_provider("bed", &m)
    ))
    .await;
    let body = r#"{"model":"claude-3-7-sonnet-20250219","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0.5,"stop":["END"]}"#;
    let r = gw
        .chat_with(body, &[("authorization", "Bearer sk-client-secret")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("bed"));
    assert_eq!(r.header("x-detour-model"), Some(MODEL_ID));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_ID);
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from bed");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens":9,"completion_tokens":3,"total_tokens":12})
    );
    let seen = &m.requests()[0];
    assert_eq!(seen.path, PATH);
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/"))
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{auth}"
    );
    assert!(!auth.contains("sk-client-secret"));
    assert_eq!(seen.header("x-amz-security-token"), Some(AWS_TOKEN));
    assert!(seen.header("x-amz-date").is_some());
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    // The catalog's output limit for the model is sent when the client gives none.
    assert_eq!(
        sent,
        json!({"messages":[{"role":"user","content":[{"text":"hi"}]}],
               "system":[{"text":"Be brief."}],
               "inferenceConfig":{"maxTokens":64000,"temperature":0.5,"stopSequences":["END"]}})
    );
    // The secret never reaches the log.
    assert!(!gw.stderr().contains(AWS_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_becomes_one_clean_openai_stream() {
    let m = mock_with(MockConfig {
        name: "bed".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-3-7-sonnet-20250219: [{{provider: bed, id: \"{MODEL_ID}\"}}]\n",
        bedrock_provider("bed", &m)
    ))
    .await;
    let body = r#"{"model":"claude-3-7-sonnet-20250219","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.chat(body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        m.requests()[0].path,
        PATH.replace("/converse", "/converse-stream")
    );
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], MODEL_ID);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from bed tok1 tok2 tok3");
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        chunks[n - 1]["usage"],
        json!({"prompt_tokens":9,"completion_tokens":4,"total_tokens":13})
    );
}

/// The issue's chain: Anthropic overloaded (529) → Bedrock, whose stream opens with an
/// exception frame → OpenAI, streaming, and the client sees one clean OpenAI stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_529_then_bedrock_exception_then_openai() {
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        status: 529,
        ..MockConfig::default()
    })
    .await;
    let bed = mock_with(MockConfig {
        name: "bed".into(),
        fault: Fault::ErrorInStream,
        fault_after: 1,
        ..MockConfig::default()
    })
    .await;
    let oai = mock("oai").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{}models:\n  claude-3-7-sonnet-20250219:\n    - {{provider: anth}}\n    - {{provider: bed, id: \"{MODEL_ID}\"}}\n  gpt-4o: [{{provider: oai}}]\n",
        anthropic_provider("anth", &anth),
        bedrock_provider("bed", &bed),
        provider("oai", &oai)
    ))
    .await;
    let r = gw
        .chat(&chat_body("claude-3-7-sonnet-20250219,gpt-4o", true))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("oai"));
    assert_eq!(r.header("x-detour-attempts"), Some("3"));
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(!r.text().contains("error"), "{}", r.text());
    assert_eq!((anth.calls(), bed.calls(), oai.calls()), (1, 1, 1));
    // The mock's fault is in-stream only: without a stream Bedrock serves, second in the chain.
    let r = gw
        .chat(&chat_body("claude-3-7-sonnet-20250219,gpt-4o", false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("bed"));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from bed"
    );
    assert_eq!((anth.calls(), bed.calls(), oai.calls()), (2, 2, 1));
    // Everything fails: one error listing each attempt, Bedrock's in-stream exception included.
    let r = gw
        .chat(&chat_body("claude-3-7-sonnet-20250219", true))
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    let attempts = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1]["error"]
            .as_str()
            .unwrap()
            .contains("serviceUnavailableException"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_errors_fall_back_or_come_back_translated() {
    let throttled = mock_with(MockConfig {
        name: "thr".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let bad = mock_with(MockConfig {
        name: "bad".into(),
        status: 400,
        ..MockConfig::default()
    })
    .await;
    let good = mock("good").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}{}models:\n  claude-3-7-sonnet-20250219: [{{provider: thr, id: \"{MODEL_ID}\"}}, {{provider: good, id: \"{MODEL_ID}\"}}]\n  claude-bad: [{{provider: bad}}]\n",
        bedrock_provider("thr", &throttled),
        bedrock_provider("bad", &bad),
        bedrock_provider("good", &good)
    ))
    .await;
    let r = gw
        .chat(&chat_body("claude-3-7-sonnet-20250219", false))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-detour-provider"), Some("good"));
    // A ValidationException is the client's fault: back unchanged in meaning, OpenAI's shape.
    let r = gw.chat(&chat_body("claude-bad", false)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "Invalid request from mock (bad)");
    // JSON mode cannot be honoured: not sent, a 400-class attempt.
    let r = gw
        .chat(r#"{"model":"claude-bad","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"hi"}]}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(bad.calls(), 1);
}

/// Everything detour sent Bedrock, and the mock's answers, checked against botocore 1.44.5:
/// the bedrock-runtime service model (paths, bodies), its SigV4 signer and its event-stream
/// decoder (tests/sdk/bedrock_check.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_and_signatures_match_botocore() {
    let m = mock("bed").await;
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  claude-3-7-sonnet-20250219: [{{provider: bed, id: \"{MODEL_ID}\"}}]\n",
        bedrock_provider("bed", &m)
    ))
    .await;
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    let requests = [
        r#"{"model":"claude-3-7-sonnet-20250219","messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        format!(
            r#"{{"model":"claude-3-7-sonnet-20250219","stream":true,"tools":{tools},"tool_choice":"auto","max_tokens":300,"top_p":0.9,"messages":[{{"role":"developer","content":"Use tools."}},{{"role":"user","content":[{{"type":"text","text":"What is this?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,iVBORw0KGgo="}}}}]}}]}}"#
        ),
        format!(
            r#"{{"model":"claude-3-7-sonnet-20250219","tools":{tools},"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}},"messages":[{{"role":"user","content":"Weather in Paris?"}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"tooluse_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},{{"role":"tool","tool_call_id":"tooluse_1","content":"{{\"temp\":18}}"}},{{"role":"tool","tool_call_id":"tooluse_1","content":"sunny"}}]}}"#
        ),
        r#"{"model":"claude-3-7-sonnet-20250219","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required","stop":"END","messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"},{"role":"user","content":"z"}]}"#.to_string(),
    ];
    for body in &requests {
        let r = gw.chat(body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
    }
    let recorded: Vec<Value> = m
        .requests()
        .iter()
        .map(|r| {
            json!({"method": r.method, "path": r.path, "headers": r.headers,
                   "body": String::from_utf8(r.body.to_vec()).unwrap()})
        })
        .collect();
    assert_eq!(recorded.len(), requests.len());
    let direct = |path: &'static str| async move {
        request(m.addr.port(), "POST", path, &[], b"{\"messages\":[]}")
            .await
            .unwrap()
    };
    let response: Value = direct("/model/x/converse").await.json();
    let stream = direct("/model/x/converse-stream").await.body;
    use base64::Engine as _;
    let input = json!({
        "credentials": {"access_key": AWS_KEY_ID, "secret_key": AWS_SECRET, "token": AWS_TOKEN},
        "region": "us-east-1",
        "requests": recorded,
        "response": response,
        "stream_b64": base64::engine::general_purpose::STANDARD.encode(&stream),
    });
    let dir = temp_dir();
    let path = dir.join("bedrock.json");
    std::fs::write(&path, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = run_sdk_script("bedrock_check.py", vec![path.display().to_string()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(
        stdout.contains("SigV4 signature equals botocore's"),
        "{stdout}"
    );
}
