use super::*;

fn tree(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("test request is JSON")
}

#[test]
fn path_encodes_the_model_id_as_one_label() {
    assert_eq!(
        path("", "us.anthropic.claude-3-7-sonnet-20250219-v1:0", true),
        "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream"
    );
    assert_eq!(
        path(
            "/x",
            "arn:aws:bedrock:us-east-1:1:inference-profile/p",
            false
        ),
        "/x/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fp/converse"
    );
}

#[test]
fn request_maps_messages_tools_and_config() {
    let body = br#"{"model":"m","messages":[
        {"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}}]},
        {"role":"assistant","content":"","tool_calls":[{"id":"t1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
        {"role":"tool","tool_call_id":"t1","content":"{\"temp\":18}"},
        {"role":"tool","tool_call_id":"t2","content":"sunny"},
        {"role":"user","content":"ok"}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"W","parameters":{"type":"object"}}}],
      "tool_choice":"required","max_tokens":100,"temperature":0.1,"top_p":0.5,"stop":"END",
      "seed":1,"user":"u","stream":true,"stream_options":{"include_usage":true}}"#;
    let (out, opts) = request(&tree(body), Some(4096)).expect("maps");
    assert!(opts.include_usage);
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v,
        json!({
            "messages":[
                {"role":"user","content":[{"text":"Look"},{"image":{"format":"jpeg","source":{"bytes":"AAAA"}}}]},
                {"role":"assistant","content":[{"toolUse":{"toolUseId":"t1","name":"get_weather","input":{"city":"Paris"}}}]},
                {"role":"user","content":[
                    {"toolResult":{"toolUseId":"t1","content":[{"json":{"temp":18}}]}},
                    {"toolResult":{"toolUseId":"t2","content":[{"text":"sunny"}]}},
                    {"text":"ok"}]}],
            "system":[{"text":"Be brief."}],
            "inferenceConfig":{"maxTokens":100,"temperature":0.1,"topP":0.5,"stopSequences":["END"]},
            "toolConfig":{"tools":[{"toolSpec":{"name":"get_weather","description":"W","inputSchema":{"json":{"type":"object"}}}}],
                          "toolChoice":{"any":{}}}
        })
    );
    // No max_tokens from the client: the catalog's; tool_choice none without tool history
    // leaves the tools out.
    let (out, _) = request(
        &tree(br#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#),
        Some(8192),
    )
    .expect("maps");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["inferenceConfig"], json!({"maxTokens": 8192}));
    assert!(v.get("toolConfig").is_none());
    for (b, needle) in [
        (r#"{"messages":[],"n":2}"#, "n > 1"),
        (
            r#"{"messages":[],"response_format":{"type":"json_object"}}"#,
            "JSON mode",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#,
            "data URLs",
        ),
        (
            r#"{"messages":[{"role":"tool","tool_call_id":"a","content":"x"}],"tool_choice":"none"}"#,
            "tool_choice none",
        ),
        (
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            "unknown role",
        ),
    ] {
        let e = request(&tree(b.as_bytes()), None).expect_err(b);
        assert!(e.contains(needle), "{b}: {e}");
    }
}

#[test]
fn response_maps_text_tool_use_and_usage() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Sure."},{"toolUse":{"toolUseId":"tooluse_1","name":"f","input":{"a":1}}}]}},
        "stopReason":"tool_use","usage":{"inputTokens":10,"outputTokens":4,"totalTokens":14,"cacheReadInputTokens":2},"metrics":{"latencyMs":5}}"#;
    let v: Value = serde_json::from_slice(&response(body, "claude", 3).expect("ok")).expect("json");
    assert_eq!(
        v,
        json!({"id":"chatcmpl-bedrock","object":"chat.completion","created":3,"model":"claude",
          "choices":[{"index":0,"message":{"role":"assistant","content":"Sure.",
            "tool_calls":[{"id":"tooluse_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],
          "usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}})
    );
    assert_eq!(finish_reason("max_tokens"), "length");
    assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
    let e: Value = serde_json::from_slice(&error_body(br#"{"message":"Too many tokens"}"#, 400))
        .expect("json");
    assert_eq!(e["error"]["message"], "Too many tokens");
}

fn stream_fixture() -> Vec<u8> {
    let mut s = Vec::new();
    for (t, p) in [
        ("messageStart", json!({"role":"assistant","p":"abc"})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex":0,"delta":{"text":"Hé"}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex":0,"delta":{"text":"llo"}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex":0})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tu_1","name":"f"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\":"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex":1,"delta":{"toolUse":{"input":"1}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex":1})),
        ("messageStop", json!({"stopReason":"tool_use"})),
        (
            "metadata",
            json!({"usage":{"inputTokens":5,"outputTokens":3,"totalTokens":8},"metrics":{"latencyMs":9}}),
        ),
    ] {
        s.extend(frame(t, &p));
    }
    s
}

fn run(stream: &[u8], split: usize) -> String {
    let mut t = StreamTranslator::new(
        StreamOpts {
            include_usage: true,
        },
        "claude",
        1,
    );
    let mut out = t.push(&stream[..split]).expect("ok");
    out.extend(t.push(&stream[split..]).expect("ok"));
    out.extend(t.finish().expect("finished"));
    String::from_utf8(out).expect("utf8")
}

#[test]
fn stream_translates_the_same_at_every_split() {
    let stream = stream_fixture();
    let whole = run(&stream, stream.len());
    let data: Vec<&str> = whole
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role":"assistant","content":""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Héllo");
    assert_eq!(
        chunks[3]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index":0,"id":"tu_1","type":"function","function":{"name":"f","arguments":""}})
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"a\":1}");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8})
    );
    for i in 0..=stream.len() {
        assert_eq!(run(&stream, i), whole, "split at {i}");
    }
}

#[test]
fn exception_frames_and_cut_streams() {
    let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
    let e = t
        .push(&exception_frame("throttlingException", "Too many requests"))
        .expect_err("exception");
    assert_eq!(e.kind, "throttlingException");
    assert_eq!(e.message, "Too many requests");
    let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
    let first = frame(
        "contentBlockDelta",
        &json!({"contentBlockIndex":0,"delta":{"text":"a"}}),
    );
    assert!(!t.push(&first).expect("ok").is_empty());
    assert!(t.finish().is_none(), "no messageStop: the stream is cut");
    let mut t = StreamTranslator::new(StreamOpts::default(), "m", 1);
    let mut bad = first.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff; // CRC mismatch
    assert_eq!(t.push(&bad).expect_err("crc").kind, "invalid_event");
}

#[test]
fn sigv4_matches_botocore_on_fixed_inputs() {
    // Expected value computed by botocore 1.44.5's SigV4Auth for the same inputs
    // (tests/sdk/bedrock_check.py recomputes it on every test run).
    let creds = AwsCredentials::new(
        "AKIDEXAMPLE".into(),
        crate::config::Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        None,
    );
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_700_000);
    let h = sign(
        "POST",
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse",
        &[
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("content-type", "application/json"),
        ],
        br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
        &creds,
        "us-east-1",
        time,
    )
    .expect("signs");
    let get = |n: &str| {
        h.iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    assert_eq!(get("x-amz-date"), "20251121T044000Z");
    assert_eq!(get("authorization"), EXPECTED_AUTHORIZATION);
}

const EXPECTED_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251121/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=93932a68109a83cd624072867994cabc5de4d59609f619c519906dc045194238";
