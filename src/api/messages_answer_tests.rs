use super::*;

/// `event: X\ndata: {…}\n\n` blocks as `(X, data)`, checking each is well framed.
fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                data["type"],
                name.as_str(),
                "the data's type is the event's name"
            );
            (name, data)
        })
        .collect()
}

/// The events but the one `ping`, which must follow `message_start`.
fn without_ping(ev: Vec<(String, Value)>) -> Vec<(String, Value)> {
    assert_eq!(ev[1].0, "ping", "a ping follows message_start");
    assert_eq!(ev.iter().filter(|(n, _)| n == "ping").count(), 1);
    ev.into_iter().filter(|(n, _)| n != "ping").collect()
}

#[test]
fn a_completion_with_text_and_a_tool_call() {
    let chat = json!({
        "id": "chatcmpl-42", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    });
    assert_eq!(
        to_message(&chat, "gpt-4o").unwrap(),
        json!({
            "id": "msg_chatcmpl-42", "type": "message", "role": "assistant", "model": "gpt-4o",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 7}
        })
    );
    for (finish, want) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
    ] {
        let c = json!({"choices": [{"finish_reason": finish, "message": {"content": "x"}}]});
        assert_eq!(to_message(&c, "m").unwrap()["stop_reason"], want);
    }
    let bad = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]}}]});
    assert!(to_message(&bad, "m").is_err());
    assert!(to_message(&json!({"choices": []}), "m").is_err());
    let odd_id = json!({"id": "a\"b<c>\n", "choices": [{"message": {"content": "x"}}]});
    assert_eq!(to_message(&odd_id, "m").unwrap()["id"], "msg_abc");
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string()
}

#[test]
fn a_stream_of_text_then_two_tool_calls() {
    let mut t = StreamToMessages::new("gpt-4o");
    let mut out = Vec::new();
    let chunks = [
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo"}), None),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        json!({"id": "chatcmpl-7", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}).to_string(),
        "[DONE]".to_string(),
    ];
    for c in &chunks {
        t.push(c, &mut out).unwrap();
    }
    let ev = without_ping(events(&out));
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[0].1["message"]["id"], "msg_chatcmpl-7");
    assert_eq!(ev[0].1["message"]["model"], "gpt-4o");
    assert_eq!(
        ev[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        ev[3].1["delta"],
        json!({"type": "text_delta", "text": "lo"})
    );
    assert_eq!(ev[5].1["index"], 1);
    assert_eq!(
        ev[5].1["content_block"],
        json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {}})
    );
    let json_parts: String = ev[6..8]
        .iter()
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(json_parts, "{\"x\":1}");
    assert_eq!(ev[9].1["content_block"]["id"], "call_b");
    assert_eq!(ev[9].1["index"], 2);
    assert_eq!(ev[12].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        ev[12].1["usage"],
        json!({"input_tokens": 9, "output_tokens": 4})
    );
}

#[test]
fn a_failure_after_commit_ends_with_an_error_event_and_no_message_stop() {
    let mut t = StreamToMessages::new("m");
    let mut out = Vec::new();
    t.push(&chunk(json!({"content": "par"}), None), &mut out)
        .unwrap();
    t.fail("overloaded_error", "the provider's stream broke", &mut out);
    let ev = without_ping(events(&out));
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(ev[3].1["error"]["type"], "overloaded_error");
    assert!(t.push("{not json", &mut Vec::new()).is_err());
    // Nothing after the end; detour's own end of a broken stream is an error event too.
    t.finish(&mut out);
    assert_eq!(events(&out).len(), 5);
    let mut t = StreamToMessages::new("m");
    let mut out = Vec::new();
    t.push(&chunk(json!({"content": "x"}), None), &mut out)
        .unwrap();
    let broken = r#"{"error":{"message":"cut; the answer is incomplete","type":"upstream_error","param":null,"code":"stream_interrupted"}}"#;
    t.push(broken, &mut out).unwrap();
    assert!(t.ended());
    assert_eq!(events(&out).last().unwrap().1["error"]["type"], "api_error");
}

#[test]
fn an_empty_stream_still_makes_a_whole_message() {
    let mut t = StreamToMessages::new("m");
    let mut out = Vec::new();
    t.push("[DONE]", &mut out).unwrap();
    let names: Vec<String> = events(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["message_start", "ping", "message_delta", "message_stop"]
    );
}
