use super::*;
use serde_json::json;

/// `(event name or "", data)` of each event in `b`.
fn events(b: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(b)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or(Value::String(d.into()));
                }
            }
            (name, data)
        })
        .collect()
}

fn anthropic(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// An Anthropic continuation: a message with a text block, then a tool use.
fn continuation() -> String {
    [
        anthropic(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_2","content":[],"usage":{"input_tokens":5,"output_tokens":1}}}),
        ),
        anthropic(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        ),
        anthropic("ping", json!({"type":"ping"})),
        anthropic(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}}),
        ),
        anthropic(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        anthropic(
            "content_block_start",
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
        ),
        anthropic(
            "content_block_stop",
            json!({"type":"content_block_stop","index":1}),
        ),
        anthropic(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}),
        ),
        anthropic("message_stop", json!({"type":"message_stop"})),
    ]
    .concat()
}

fn indices(ev: &[(String, Value)]) -> Vec<(String, Option<u64>)> {
    ev.iter()
        .map(|(n, d)| (n.clone(), d["index"].as_u64()))
        .collect()
}

#[test]
fn anthropic_events_go_on_in_the_open_text_block() {
    let head = Head::Events(Blocks {
        next: 3,
        open_text: Some(2),
    });
    let mut sp = Splice::new(&head, Dialect::Anthropic).expect("a splice");
    assert_eq!(sp.client_dialect(), Dialect::Anthropic);
    let ev = events(&sp.apply(continuation().as_bytes()));
    let named = |n: &str| (n.to_string(), None::<u64>);
    let at = |n: &str, i: u64| (n.to_string(), Some(i));
    assert_eq!(
        indices(&ev),
        vec![
            at("content_block_delta", 2),
            at("content_block_stop", 2),
            at("content_block_start", 3),
            at("content_block_stop", 3),
            named("message_delta"),
            named("message_stop"),
        ]
    );
    assert_eq!(ev[0].1["delta"]["text"], " world");
    assert_eq!(ev[4].1["delta"]["stop_reason"], "tool_use");
}

#[test]
fn anthropic_events_after_a_closed_block_take_the_next_indices() {
    let head = Head::Events(Blocks {
        next: 2,
        open_text: None,
    });
    let mut sp = Splice::new(&head, Dialect::Anthropic).expect("a splice");
    let ev = events(&sp.apply(continuation().as_bytes()));
    let starts: Vec<_> = indices(&ev)
        .into_iter()
        .filter(|(n, _)| n == "content_block_start")
        .collect();
    assert_eq!(
        starts,
        vec![
            ("content_block_start".to_string(), Some(2)),
            ("content_block_start".to_string(), Some(3))
        ]
    );
    assert!(!ev.iter().any(|(n, _)| n == "message_start" || n == "ping"));
}

#[test]
fn a_first_block_of_another_kind_closes_the_open_text_block() {
    let head = Head::Events(Blocks {
        next: 1,
        open_text: Some(0),
    });
    let mut sp = Splice::new(&head, Dialect::Anthropic).expect("a splice");
    let tool_first = [
        anthropic(
            "content_block_start",
            json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}),
        ),
        anthropic(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}),
        ),
        anthropic(
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        anthropic(
            "content_block_start",
            json!({"type":"content_block_start","index":1,"content_block":{"type":"text","text":"x"}}),
        ),
    ]
    .concat();
    let ev = events(&sp.apply(tool_first.as_bytes()));
    let at = |n: &str, i: u64| (n.to_string(), Some(i));
    assert_eq!(
        indices(&ev),
        vec![
            at("content_block_stop", 0),
            at("content_block_start", 1),
            at("content_block_delta", 1),
            at("content_block_stop", 1),
            at("content_block_start", 2),
        ]
    );
}

#[test]
fn a_text_block_opened_with_text_keeps_it_as_a_delta() {
    let head = Head::Events(Blocks {
        next: 1,
        open_text: Some(0),
    });
    let mut sp = Splice::new(&head, Dialect::Anthropic).expect("a splice");
    let start = anthropic(
        "content_block_start",
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":"lo"}}),
    );
    let ev = events(&sp.apply(start.as_bytes()));
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].0, "content_block_delta");
    assert_eq!(
        (ev[0].1["index"].as_u64(), &ev[0].1["delta"]["text"]),
        (Some(0), &json!("lo"))
    );
}

#[test]
fn chat_chunks_are_translated_into_the_open_message() {
    let head = Head::Events(Blocks {
        next: 1,
        open_text: Some(0),
    });
    let mut sp = Splice::new(&head, Dialect::OpenAi).expect("a splice");
    assert_eq!(sp.client_dialect(), Dialect::Anthropic);
    let chunks = concat!(
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" more\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n",
    );
    // The events come in pieces: the translator keeps its state between them.
    let (a, b) = chunks.split_at(chunks.find(": keep").unwrap());
    let mut out = sp.apply(a.as_bytes()).to_vec();
    out.extend_from_slice(&sp.apply(b.as_bytes()));
    out.extend_from_slice(&sp.apply(b"data: [DONE]\n\n"));
    let ev = events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        (ev[0].1["index"].as_u64(), ev[1].1["index"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(ev[0].1["delta"]["text"], " more");
    assert_eq!(ev[2].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(ev[2].1["usage"]["output_tokens"], 2);
    // Nothing after the end.
    assert!(sp.apply(b"data: {\"choices\":[]}\n\n").is_empty());
}

#[test]
fn chat_chunks_go_on_as_the_original_answer() {
    let head = Head::Chunks(ChunkHead {
        id: "chatcmpl-1".into(),
        created: 7,
        model: "gpt-4o".into(),
    });
    let mut sp = Splice::new(&head, Dialect::OpenAi).expect("a splice");
    assert_eq!(sp.client_dialect(), Dialect::OpenAi);
    assert_eq!(sp.chunk_head().map(|h| h.id.as_str()), Some("chatcmpl-1"));
    let out = sp.apply(b"data: {\"id\":\"x\",\"created\":1,\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"id\":\"x\",\"created\":1,\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"go\"}}]}\n\ndata: [DONE]\n\n");
    let ev = events(&out);
    assert_eq!(ev.len(), 2, "the role-only opening is dropped");
    assert_eq!(
        (&ev[0].1["id"], &ev[0].1["created"], &ev[0].1["model"]),
        (&json!("chatcmpl-1"), &json!(7), &json!("gpt-4o"))
    );
    assert_eq!(ev[1].1, json!("[DONE]"));
    // An Anthropic stream cannot go on in a chat stream.
    assert!(Splice::new(&head, Dialect::Anthropic).is_none());
}
