use super::*;

fn tree(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("test request is JSON")
}

#[test]
fn request_maps_roles_tools_and_parameters() {
    let body = br#"{"model":"claude","messages":[
        {"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0"}}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
        {"role":"tool","tool_call_id":"call_1","content":"18C"},
        {"role":"user","content":"thanks"}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
      "tool_choice":"required","max_tokens":300,"temperature":0.2,"stop":"END","user":"u-1","stream":true,
      "stream_options":{"include_usage":true},"presence_penalty":1}"#;
    let (out, opts) = request(&tree(body), "claude-sonnet-4-20250514", 4096).expect("maps");
    assert!(opts.include_usage);
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v,
        json!({
            "model":"claude-sonnet-4-20250514",
            "system":"Be brief.",
            "messages":[
                {"role":"user","content":[{"type":"text","text":"What is in this image?"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0"}}]},
                {"role":"assistant","content":[{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"call_1","content":"18C"},
                    {"type":"text","text":"thanks"}]}],
            "max_tokens":300,"stop_sequences":["END"],"metadata":{"user_id":"u-1"},
            "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
            "tool_choice":{"type":"any"},"stream":true
        })
    );
}

#[test]
fn request_defaults_and_refusals() {
    let (out, _) = request(
        &tree(br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#),
        "c",
        8192,
    )
    .expect("maps");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["max_tokens"], 8192);
    assert!(v.get("stream").is_none());
    for (body, needle) in [
        (r#"{"messages":[],"n":2}"#, "n > 1"),
        (
            r#"{"messages":[],"response_format":{"type":"json_schema"}}"#,
            "json_schema",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
            "input_audio",
        ),
        (
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            "unknown role",
        ),
    ] {
        let e = request(&tree(body.as_bytes()), "c", 1).expect_err(body);
        assert!(e.contains(needle), "{body}: {e}");
    }
}

#[test]
fn response_maps_text_tools_finish_and_usage() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
      "content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}],
      "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":7}}"#;
    let v: Value = serde_json::from_slice(&response(body, 1700000000).expect("ok")).expect("json");
    assert_eq!(
        v,
        json!({"id":"msg_1","object":"chat.completion","created":1700000000,"model":"claude-sonnet-4-20250514",
          "choices":[{"index":0,"message":{"role":"assistant","content":"Let me check.",
            "tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            "finish_reason":"tool_calls"}],
          "usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}})
    );
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
    ] {
        assert_eq!(finish_reason(stop), finish);
    }
}

const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"f\",\"input\":{}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn translate_split(split: &[usize], opts: StreamOpts) -> (String, bool) {
    let mut t = StreamTranslator::new(opts, 5);
    let bytes = STREAM.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in split.iter().chain(std::iter::once(&bytes.len())) {
        out.extend(t.push(&bytes[start..cut]).expect("no error"));
        start = cut;
    }
    (String::from_utf8(out).expect("utf8"), t.done())
}

#[test]
fn stream_translates_the_same_at_every_split() {
    let opts = StreamOpts {
        include_usage: true,
    };
    let (whole, done) = translate_split(&[], opts);
    assert!(done);
    let data: Vec<Value> = whole
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert!(whole.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        data[0]["choices"][0]["delta"],
        json!({"role":"assistant","content":""})
    );
    assert_eq!(data[0]["id"], "msg_9");
    assert_eq!(data[0]["model"], "claude-x");
    assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hé");
    assert_eq!(data[2]["choices"][0]["delta"]["content"], "llo");
    assert_eq!(
        data[3]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index":0,"id":"toolu_2","type":"function","function":{"name":"f","arguments":""}})
    );
    assert_eq!(
        data[4]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":"
    );
    assert_eq!(
        data[5]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "1}"
    );
    assert_eq!(data[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        data[7]["usage"],
        json!({"prompt_tokens":11,"completion_tokens":9,"total_tokens":20})
    );
    assert_eq!(data[7]["choices"], json!([]));
    assert_eq!(data.len(), 8);
    // Every byte boundary gives the same output (multi-byte `é` included).
    for i in 0..=STREAM.len() {
        assert_eq!(
            translate_split(&[i], opts),
            (whole.clone(), true),
            "split at {i}"
        );
    }
    let (no_usage, _) = translate_split(&[], StreamOpts::default());
    assert!(!no_usage.contains("\"usage\""));
}

#[test]
fn nothing_is_emitted_before_content() {
    let mut t = StreamTranslator::new(StreamOpts::default(), 0);
    let head = STREAM
        .split("event: content_block_delta")
        .next()
        .unwrap_or("");
    assert!(head.contains("message_start") && head.contains("ping"));
    assert!(t.push(head.as_bytes()).expect("ok").is_empty());
    let e = t
        .push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
        .expect_err("error event");
    assert_eq!(e.kind, "overloaded_error");
}

#[test]
fn in_band_error_is_reported() {
    let mut t = StreamTranslator::new(StreamOpts::default(), 0);
    let e = t
        .push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
        .expect_err("error event");
    assert_eq!(e.kind, "overloaded_error");
    assert_eq!(e.message, "Overloaded");
}

#[test]
fn error_body_in_openai_shape() {
    let b = error_body(br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#);
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["error"]["message"], "max_tokens: too large");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[test]
fn a_final_assistant_turn_loses_its_trailing_whitespace() {
    let ask = |last: &str| {
        let body = format!(
            r#"{{"model":"c","messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","content":{last}}}]}}"#
        );
        let (out, _) = request(&tree(body.as_bytes()), "c", 100).expect("maps");
        serde_json::from_slice::<Value>(&out).expect("json")["messages"].clone()
    };
    assert_eq!(
        ask(r#""Hello, \n""#)[1]["content"],
        json!([{"type": "text", "text": "Hello,"}])
    );
    assert_eq!(ask(r#""Hello""#)[1]["content"][0]["text"], "Hello");
    // Only whitespace: the block goes, and with it the turn.
    assert_eq!(ask(r#"" \n ""#).as_array().map(Vec::len), Some(1));
    // Not the last turn: left alone.
    let body = br#"{"model":"c","messages":[{"role":"assistant","content":"a "},{"role":"user","content":"b "}]}"#;
    let (out, _) = request(&tree(body), "c", 100).expect("maps");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["messages"][0]["content"][0]["text"], "a ");
    assert_eq!(v["messages"][1]["content"][0]["text"], "b ");
}
