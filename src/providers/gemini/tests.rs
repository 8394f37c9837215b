use super::*;

fn tree(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("test request is JSON")
}

#[test]
fn request_maps_contents_tools_and_config() {
    let body = br#"{"model":"g","messages":[
        {"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
        {"role":"tool","tool_call_id":"call_9","content":"{\"temp\":18}"},
        {"role":"user","content":"ok"}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"W","parameters":{"type":"object"}}}],
      "tool_choice":{"type":"function","function":{"name":"get_weather"}},
      "max_tokens":100,"temperature":0.1,"top_p":0.5,"stop":"END","seed":7,
      "response_format":{"type":"json_object"},"stream_options":{"include_usage":true}}"#;
    let (out, opts) = request(&tree(body)).expect("maps");
    assert!(opts.include_usage);
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v,
        json!({
            "contents":[
                {"role":"user","parts":[{"text":"Look"},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]},
                {"role":"model","parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},
                {"role":"user","parts":[{"functionResponse":{"name":"get_weather","response":{"temp":18}}},{"text":"ok"}]}],
            "systemInstruction":{"parts":[{"text":"Be brief."}]},
            "generationConfig":{"maxOutputTokens":100,"temperature":0.1,"topP":0.5,"seed":7,
                "stopSequences":["END"],"responseMimeType":"application/json"},
            "tools":[{"functionDeclarations":[{"name":"get_weather","description":"W","parameters":{"type":"object"}}]}],
            "toolConfig":{"functionCallingConfig":{"mode":"ANY","allowedFunctionNames":["get_weather"]}}
        })
    );
    for (b, needle) in [
        (r#"{"messages":[],"n":3}"#, "n > 1"),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]}]}"#,
            "data URLs",
        ),
        (
            r#"{"messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#,
            "answers no earlier",
        ),
    ] {
        let e = request(&tree(b.as_bytes())).expect_err(b);
        assert!(e.contains(needle), "{b}: {e}");
    }
    assert_eq!(
        path("", "gemini-2.0-flash", true),
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
}

#[test]
fn response_maps_text_calls_and_usage() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Sure."},{"functionCall":{"name":"f","args":{"a":1}}}]},"finishReason":"STOP","index":0}],
        "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":4,"totalTokenCount":14},"modelVersion":"gemini-2.0-flash","responseId":"r1"}"#;
    let v: Value = serde_json::from_slice(&response(body, "x", 3).expect("ok")).expect("json");
    assert_eq!(
        v,
        json!({"id":"chatcmpl-r1","object":"chat.completion","created":3,"model":"gemini-2.0-flash",
          "choices":[{"index":0,"message":{"role":"assistant","content":"Sure.",
            "tool_calls":[{"id":"call_0","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],
          "usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}})
    );
    assert_eq!(finish_reason("MAX_TOKENS", false), "length");
    assert_eq!(finish_reason("SAFETY", false), "content_filter");
}

const STREAM: &str = "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hé\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"llo\"}]},\"index\":0}],\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"!\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":3,\"totalTokenCount\":8},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n";

fn run(split: usize) -> String {
    let mut t = StreamTranslator::new(
        StreamOpts {
            include_usage: true,
        },
        "g",
        1,
    );
    let mut out = t.push(&STREAM.as_bytes()[..split]).expect("ok");
    out.extend(t.push(&STREAM.as_bytes()[split..]).expect("ok"));
    out.extend(t.finish().expect("finished"));
    String::from_utf8(out).expect("utf8")
}

#[test]
fn stream_translates_the_same_at_every_split() {
    let whole = run(STREAM.len());
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
    assert_eq!(text, "Héllo!");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8})
    );
    assert_eq!(chunks[1]["model"], "gemini-2.0-flash");
    for i in 0..=STREAM.len() {
        assert_eq!(run(i), whole, "split at {i}");
    }
}

#[test]
fn unfinished_stream_and_in_band_error() {
    let mut t = StreamTranslator::new(StreamOpts::default(), "g", 1);
    let first = STREAM.split("\r\n\r\n").next().unwrap_or("");
    assert!(!t
        .push(format!("{first}\r\n\r\n").as_bytes())
        .expect("ok")
        .is_empty());
    assert!(t.finish().is_none(), "no finishReason: the stream is cut");
    let e = t
        .push(b"data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\n\n")
        .expect_err("error");
    assert_eq!(e.kind, "UNAVAILABLE");
}

#[test]
fn a_messages_clients_top_k_becomes_top_k() {
    let chat = br#"{"model":"g","messages":[{"role":"user","content":"hi"}],"top_p":0.5}"#;
    for (messages, want) in [
        (
            r#"{"model":"g","top_k":5,"max_tokens":9,"messages":[]}"#,
            Some(5),
        ),
        (
            r#"{"model":"g","top_k":-1,"max_tokens":9,"messages":[]}"#,
            None,
        ),
        (
            r#"{"model":"g","top_k":"5","max_tokens":9,"messages":[]}"#,
            None,
        ),
        (r#"{"model":"g","max_tokens":9,"messages":[]}"#, None),
    ] {
        let mut req =
            crate::api::ChatRequest::parse(bytes::Bytes::from_static(chat)).expect("valid");
        let native = crate::api::Native::new(messages.as_bytes().to_vec().into(), false, None);
        req.native = Some(std::sync::Arc::new(native.expect("a model")));
        let (out, _) = request_for(&req).expect("maps");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["generationConfig"]["topK"].as_u64(), want, "{messages}");
        assert_eq!(v["generationConfig"]["topP"], 0.5);
    }
    // A chat client's request has no top_k to carry.
    let req = crate::api::ChatRequest::parse(bytes::Bytes::from_static(chat)).expect("valid");
    let (out, _) = request_for(&req).expect("maps");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert!(v["generationConfig"].get("topK").is_none());
}
