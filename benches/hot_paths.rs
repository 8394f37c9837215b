//! Criterion benches for the pure hot paths: request probe + model splice, chain planning, and
//! the SSE relay (event alignment) over a realistic 20-chunk stream.
//!
//! Run: `cargo bench --bench hot_paths`. Results go in the README's performance table.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use detour::api::ChatRequest;
use detour::config::Config;
use detour::sse::EventAligner;

fn config() -> Config {
    let env = |_: &str| Some("key".to_string());
    Config::from_yaml_with_env(detour::config::DEFAULT_CONFIG, &env).unwrap_or_else(|e| {
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
                let req =
                    ChatRequest::parse(black_box(&body)).unwrap_or_else(|_| std::process::exit(1));
                let plan = detour::plan::plan(&req.model, &cfg).unwrap_or_default();
                let t = &plan.targets[0];
                black_box(req.body_for_model(&body, &t.route.id))
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
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
