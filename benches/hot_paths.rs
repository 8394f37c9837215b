//! Criterion benches for the pure hot paths: request probe + model splice, chain planning, and
//! the SSE relay (event alignment) over a realistic 20-chunk stream.
//!
//! Run: `cargo bench --bench hot_paths`. Results go in the README's performance table.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use detour::api::ChatRequest;
use detour::gateway::Gateway;
use detour::sse::EventAligner;

fn config() -> Gateway {
    // Every key variable set, except the path of a Vertex key file.
    let env = |n: &str| (n != "GOOGLE_APPLICATION_CREDENTIALS").then(|| "key".to_string());
    Gateway::from_yaml_with_env(detour::config::DEFAULT_CONFIG, &env).unwrap_or_else(|e| {
        eprintln!("default config: {e}");
        std::process::exit(1)
    })
}

fn request(prompt_bytes: usize) -> Bytes {
    let content = "x".repeat(prompt_bytes);
    Bytes::from(format!(
        r#"{{"model":"gpt-4o/openai,gpt-4o/azure,llama-3.3-70b,!deepinfra","messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{content}"}}],"temperature":0.2,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    ))
}

fn stream_fixture() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n")];
    for i in 0..20 {
        v.push(Bytes::from(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n")));
    }
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

fn benches(c: &mut Criterion) {
    let cfg = config();
    for (name, size) in [("1KiB", 1024), ("100KiB", 100 * 1024)] {
        let body = request(size);
        let mut g = c.benchmark_group("request");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("parse+plan+splice/{name}"), |b| {
            b.iter(|| {
                let req = ChatRequest::parse(black_box(body.clone()))
                    .unwrap_or_else(|_| std::process::exit(1));
                let plan = detour::plan::plan(&req.model, &cfg).unwrap_or_default();
                let t = &plan.targets[0];
                black_box(req.body_for_model(&t.route.id))
            })
        });
        g.finish();
    }
    c.bench_function("plan/chain-of-4", |b| {
        b.iter(|| {
            detour::plan::plan(
                black_box("gpt-4o/openai,gpt-4o/azure,llama-3.3-70b,!deepinfra"),
                &cfg,
            )
        })
    });
    let chunks = stream_fixture();
    let mut g = c.benchmark_group("sse-relay");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("aligned-22-events", |b| {
        b.iter(|| {
            let mut a = EventAligner::default();
            for ch in &chunks {
                black_box(a.push(ch.clone()));
            }
            a.saw_done()
        })
    });
    // The same stream cut at odd places (every 37 bytes): the carry path.
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let odd: Vec<Bytes> = joined.chunks(37).map(Bytes::copy_from_slice).collect();
    g.bench_function("split-every-37-bytes", |b| {
        b.iter(|| {
            let mut a = EventAligner::default();
            for ch in &odd {
                black_box(a.push(ch.clone()));
            }
            a.saw_done()
        })
    });
    // What the relay does per event since the failover work: align, then inspect (commit
    // point, finish, usage, error events, JSON validity).
    g.bench_function("aligned+inspected-22-events", |b| {
        b.iter(|| {
            let mut a = EventAligner::default();
            let mut w = detour::engine::watch::Watch::new(false);
            for ch in &chunks {
                if let Some(seg) = a.push(ch.clone()) {
                    let _ = black_box(w.inspect(&seg));
                }
            }
            w.done()
        })
    });
    g.finish();
    let h = detour::engine::health::Health::new(
        cfg.cfg.failover.breaker.clone(),
        cfg.cfg.failover.budget.clone(),
        cfg.providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), cfg.catalog.ids_of(i)))
            .collect(),
    );
    let now = std::time::Instant::now();
    c.bench_function("health/admit+withdraw+record", |b| {
        b.iter(|| {
            let a = h.admit(0, black_box("gpt-4o"), now);
            let w = h.withdraw(now);
            h.deposit(now);
            let ok = detour::engine::health::Outcome::Success { ttft: None };
            black_box((a, w, h.record(0, "gpt-4o", ok, now)))
        })
    });
}

/// Anthropic translation on realistic payloads: a request with a system prompt, tools and a
/// tool round trip; a JSON answer with text and a tool call; a 22-event stream per chunk.
fn anthropic(c: &mut Criterion) {
    use detour::providers::anthropic;
    let request = br#"{"model":"claude-sonnet-4","max_tokens":1024,"temperature":0.2,"stream":true,
      "stream_options":{"include_usage":true},
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}}],
      "messages":[{"role":"system","content":"You are a concise assistant. Answer in one sentence unless asked otherwise."},
        {"role":"user","content":"What is the weather in Paris and should I take an umbrella?"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
        {"role":"tool","tool_call_id":"call_1","content":"{\"temp\":18,\"rain_probability\":0.7}"},
        {"role":"user","content":"Thanks. And tomorrow?"}]}"#;
    let answer = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
      "content":[{"type":"text","text":"It is 18C with a 70% chance of rain: take an umbrella. Let me check tomorrow."},
        {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris","unit":"c","day":"tomorrow"}}],
      "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":412,"output_tokens":58}}"#;
    let mut stream = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"usage\":{\"input_tokens\":412,\"output_tokens\":1}}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for i in 0..20 {
        stream.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"));
    }
    stream.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":20}}\n\n".to_string());
    stream.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    let mut g = c.benchmark_group("anthropic");
    g.bench_function("request", |b| {
        // The request's JSON tree is parsed in the bench too, as before translation took a tree.
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(request)).unwrap_or_default();
            anthropic::request(&v, "claude-sonnet-4-20250514", 4096)
        })
    });
    g.bench_function("response", |b| {
        b.iter(|| anthropic::response(black_box(answer), 1))
    });
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("stream-24-events", |b| {
        b.iter(|| {
            let mut t = anthropic::StreamTranslator::new(
                detour::providers::StreamOpts {
                    include_usage: true,
                },
                1,
            );
            for ev in &stream {
                let _ = black_box(t.push(ev.as_bytes()));
            }
            t.done()
        })
    });
    g.finish();
}

/// Gemini translation: the same request, a JSON answer with text and a function call, and a
/// 21-event stream per chunk.
fn gemini(c: &mut Criterion) {
    use detour::providers::{gemini, StreamOpts};
    let request = br#"{"model":"gemini-2.0-flash","max_tokens":1024,"temperature":0.2,"stream":true,
      "stream_options":{"include_usage":true},
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}}],
      "messages":[{"role":"system","content":"You are a concise assistant. Answer in one sentence unless asked otherwise."},
        {"role":"user","content":"What is the weather in Paris and should I take an umbrella?"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
        {"role":"tool","tool_call_id":"call_1","content":"{\"temp\":18,\"rain_probability\":0.7}"},
        {"role":"user","content":"Thanks. And tomorrow?"}]}"#;
    let answer = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"It is 18C with a 70% chance of rain: take an umbrella. Let me check tomorrow."},
        {"functionCall":{"name":"get_weather","args":{"city":"Paris","unit":"c","day":"tomorrow"}}}]},"finishReason":"STOP","index":0}],
      "usageMetadata":{"promptTokenCount":412,"candidatesTokenCount":58,"totalTokenCount":470},"modelVersion":"gemini-2.0-flash","responseId":"r1"}"#;
    let mut stream: Vec<String> = (0..20)
        .map(|i| format!("data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\" word{i}\"}}]}},\"index\":0}}],\"modelVersion\":\"gemini-2.0-flash\"}}\r\n\r\n"))
        .collect();
    stream.push("data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\".\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":412,\"candidatesTokenCount\":21,\"totalTokenCount\":433},\"modelVersion\":\"gemini-2.0-flash\"}\r\n\r\n".to_string());
    let mut g = c.benchmark_group("gemini");
    g.bench_function("request", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(request)).unwrap_or_default();
            gemini::request(&v)
        })
    });
    g.bench_function("response", |b| {
        b.iter(|| gemini::response(black_box(answer), "gemini-2.0-flash", 1))
    });
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("stream-21-events", |b| {
        b.iter(|| {
            let mut t = gemini::StreamTranslator::new(
                StreamOpts {
                    include_usage: true,
                },
                "gemini-2.0-flash",
                1,
            );
            for ev in &stream {
                let _ = black_box(t.push(ev.as_bytes()));
            }
            t.finish()
        })
    });
    g.finish();
}

fn bedrock(c: &mut Criterion) {
    use detour::providers::{bedrock, StreamOpts};
    use serde_json::json;
    // The same conversation as the Gemini bench, with a data-URL image.
    let request = br#"{"model":"claude-3-7-sonnet-20250219","max_tokens":1024,"temperature":0.2,"stream":true,
      "stream_options":{"include_usage":true},
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}}],
      "messages":[{"role":"system","content":"You are a concise assistant. Answer in one sentence unless asked otherwise."},
        {"role":"user","content":"What is the weather in Paris and should I take an umbrella?"},
        {"role":"assistant","content":null,"tool_calls":[{"id":"tooluse_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
        {"role":"tool","tool_call_id":"tooluse_1","content":"{\"temp\":18,\"rain_probability\":0.7}"},
        {"role":"user","content":"Thanks. And tomorrow?"}]}"#;
    let answer = br#"{"output":{"message":{"role":"assistant","content":[{"text":"It is 18C with a 70% chance of rain: take an umbrella. Let me check tomorrow."},
        {"toolUse":{"toolUseId":"tooluse_2","name":"get_weather","input":{"city":"Paris","unit":"c","day":"tomorrow"}}}]}},
      "stopReason":"tool_use","usage":{"inputTokens":412,"outputTokens":58,"totalTokens":470},"metrics":{"latencyMs":812}}"#;
    // Real ConverseStream frames: messageStart, 20 text deltas (padded with "p" as Bedrock
    // does), block stop, messageStop, metadata.
    let mut stream: Vec<Vec<u8>> = vec![bedrock::frame(
        "messageStart",
        &json!({"role": "assistant", "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"}),
    )];
    stream.extend((0..20).map(|i| {
        bedrock::frame(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": format!(" word{i}")}, "p": "abcdefghijklmnopqrstuvwxyzABCD"}),
        )
    }));
    stream.push(bedrock::frame(
        "contentBlockStop",
        &json!({"contentBlockIndex": 0}),
    ));
    stream.push(bedrock::frame(
        "messageStop",
        &json!({"stopReason": "end_turn"}),
    ));
    stream.push(bedrock::frame(
        "metadata",
        &json!({"usage": {"inputTokens": 412, "outputTokens": 21, "totalTokens": 433}, "metrics": {"latencyMs": 640}}),
    ));
    let mut g = c.benchmark_group("bedrock");
    g.bench_function("request", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(request)).unwrap_or_default();
            bedrock::request(&v, Some(64000))
        })
    });
    g.bench_function("response", |b| {
        b.iter(|| bedrock::response(black_box(answer), "claude", 1))
    });
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("stream-24-frames", |b| {
        b.iter(|| {
            let mut t = bedrock::StreamTranslator::new(
                StreamOpts {
                    include_usage: true,
                },
                "claude",
                1,
            );
            for ev in &stream {
                let _ = black_box(t.push(ev));
            }
            t.finish()
        })
    });
    let creds = bedrock::AwsCredentials::new(
        "AKIDEXAMPLE".into(),
        detour::config::Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        None,
    );
    g.throughput(Throughput::Elements(1));
    g.bench_function("sigv4-sign", |b| {
        b.iter(|| {
            bedrock::sign(
                "POST",
                "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream",
                &[("host", "bedrock-runtime.us-east-1.amazonaws.com"), ("content-type", "application/json")],
                black_box(request),
                &creds,
                "us-east-1",
                std::time::SystemTime::now(),
            )
        })
    });
    g.finish();
}

/// Clients of Anthropic's Messages API served by a chat-completions target: their request to a
/// chat request (tree parsed in the bench), the chat answer to a message, and a 24-event chunk
/// stream to Anthropic's events (decoded from SSE, as the output module does).
fn messages(c: &mut Criterion) {
    use detour::api::{messages, messages_answer};
    let request = br#"{"model":"claude-sonnet-4/anthropic,gpt-4o/openai","max_tokens":1024,"temperature":0.2,"stream":true,
      "system":"You are a concise assistant. Answer in one sentence unless asked otherwise.",
      "tools":[{"name":"get_weather","description":"Current weather for a city","input_schema":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}],
      "messages":[{"role":"user","content":"What is the weather in Paris and should I take an umbrella?"},
        {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris","unit":"c"}}]},
        {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"{\"temp\":18,\"rain_probability\":0.7}"}]},
        {"role":"assistant","content":"Take an umbrella."},
        {"role":"user","content":"Thanks. And tomorrow?"}]}"#;
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",
      "choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":"It is 18C with a 70% chance of rain: take an umbrella. Let me check tomorrow.",
        "tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\",\"day\":\"tomorrow\"}"}}]}}],
      "usage":{"prompt_tokens":412,"completion_tokens":58,"total_tokens":470}}"#;
    let mut stream = vec![
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n".to_string(),
    ];
    for i in 0..21 {
        stream.push(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n"));
    }
    stream.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":21}}\n\n".to_string());
    stream.push("data: [DONE]\n\n".to_string());
    // The fixtures must take the translating path, not an early error.
    let tree = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_default();
    let ok = messages::to_chat(&tree(request)).is_ok()
        && messages_answer::to_message(&tree(answer), "gpt-4o").is_ok();
    if !ok {
        eprintln!("messages: a bench fixture does not translate; not measured");
        return;
    }
    let mut g = c.benchmark_group("messages");
    g.bench_function("request", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(request)).unwrap_or_default();
            messages::to_chat(&v).map(|c| serde_json::to_vec(&c))
        })
    });
    g.bench_function("response", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(answer)).unwrap_or_default();
            messages_answer::to_message(&v, "gpt-4o").map(|m| m.to_string())
        })
    });
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("stream-24-events", |b| {
        b.iter(|| {
            let mut dec = detour::sse::SseDecoder::default();
            let mut t = messages_answer::StreamToMessages::new("gpt-4o");
            let mut out = Vec::new();
            for chunk in &stream {
                for ev in dec.push(black_box(chunk.as_bytes())) {
                    let _ = t.push(&ev.data, &mut out);
                }
            }
            out
        })
    });
    g.finish();
    messages_native(c, request);
}

/// A Messages client to an Anthropic-family target: the body found and its model replaced;
/// Anthropic's events passed through and inspected (commit point, usage, end), and unwrapped
/// from Bedrock's frames first.
fn messages_native(c: &mut Criterion, request: &[u8]) {
    let mut events = vec![
        serde_json::json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":412,"output_tokens":1}}}),
        serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        serde_json::json!({"type":"ping"}),
    ];
    for i in 0..17 {
        events.push(serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":format!(" word{i}")}}));
    }
    events.push(serde_json::json!({"type":"content_block_stop","index":0}));
    events.push(serde_json::json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":17}}));
    events.push(serde_json::json!({"type":"message_stop"}));
    let sse: Vec<bytes::Bytes> = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")).into())
        .collect();
    let frames: Vec<Vec<u8>> = events
        .iter()
        .map(detour::providers::bedrock::invoke::chunk_frame)
        .collect();
    let body = bytes::Bytes::copy_from_slice(request);
    let mut g = c.benchmark_group("messages-native");
    g.bench_function("request", |b| {
        b.iter(|| {
            let n = detour::api::Native::new(black_box(body.clone()), false, None);
            n.map(|n| n.body_for_model("claude-sonnet-4-20250514"))
        })
    });
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("stream-inspected-23-events", |b| {
        b.iter(|| {
            let mut a = EventAligner::default();
            let mut w = detour::engine::watch::Watch::new(false)
                .for_dialect(detour::api::Dialect::Anthropic);
            for ev in &sse {
                if let Some(seg) = a.push(black_box(ev.clone())) {
                    let _ = w.inspect(&seg);
                }
            }
            w.done()
        })
    });
    g.bench_function("bedrock-unwrapped-inspected-23-events", |b| {
        b.iter(|| {
            let mut t = detour::providers::bedrock::invoke::InvokeStream::default();
            let mut w = detour::engine::watch::Watch::new(false)
                .for_dialect(detour::api::Dialect::Anthropic);
            for f in &frames {
                if let Ok(seg) = t.push(black_box(f)) {
                    let _ = w.inspect(&seg);
                }
            }
            w.done()
        })
    });
    g.finish();
}

criterion_group!(hot, benches, anthropic, gemini, bedrock, messages);
criterion_main!(hot);
