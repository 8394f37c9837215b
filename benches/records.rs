//! Criterion bench for what recording costs outside the load: 1,000 records of the chain
//! mode's one-attempt request encoded (`records::wire`, what the request thread does), and
//! written to a SQLite file as one batch (`records::db::write`, what the `detour-records`
//! thread does; `benches/load/ab.sh` reads that thread's CPU time from `/proc` with
//! `THREAD=detour-records`), and, for comparison, their JSON (what a read makes).
//!
//! Run: `cargo bench --bench records`. The file is written in a scratch directory, pruned to
//! 100,000 records between batches (untimed), and removed at the end.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use detour::records::{db, wire, AttemptRecord, Record};
use std::time::{Duration, Instant};

const BATCH: u64 = 1000;

fn record(i: u64) -> Record {
    Record {
        seq: 0,
        id: format!("9f1c6a8e-3d2b-4c5f-8a7e-{i:012x}"),
        at: detour::store::now_ms(),
        key: None,
        mode: "chain".into(),
        model: Some("gpt-4o".into()),
        stream: false,
        outcome: "success".into(),
        status: 200,
        ms: 1.234,
        attempts: vec![AttemptRecord {
            provider: "openai".into(),
            source: "gpt-4o/openai".into(),
            outcome: "success".into(),
            status: Some(200),
            error: None,
            ms: 1.102,
            connect_ms: Some(0.081),
            first_byte_ms: Some(0.957),
            first_token_ms: None,
            waited_ms: None,
            wait_reason: None,
            retry: false,
            cost_usd: Some(0.000_125),
            pay: Some("operator".into()),
        }],
        served_by: Some("gpt-4o/openai".into()),
        fallback: false,
        prompt_tokens: Some(12),
        completion_tokens: Some(9),
        cost_usd: Some(0.000_125),
        client_closed: false,
        post_commit_error: None,
    }
}

fn batch() -> Vec<Record> {
    (0..BATCH).map(record).collect()
}

/// The batch encoded, as the keeper takes it from the queue.
fn encoded(records: &[Record]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 << 20);
    for r in records {
        wire::encode_record(&mut b, r);
    }
    b
}

fn benches(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("detour-bench-records-{}", std::process::id()));
    let mut conn = db::open(&dir.join("records.db")).unwrap_or_else(|e| {
        eprintln!("records file: {e}");
        std::process::exit(1)
    });
    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Elements(BATCH));
    let mut batches = 0u64;
    g.bench_function("write 1000 to SQLite", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let records = batch();
            for _ in 0..iters {
                let mut records = encoded(&records);
                let t = Instant::now();
                if let Err(e) = db::write(&mut conn, &mut records) {
                    eprintln!("write: {e}");
                    std::process::exit(1)
                }
                spent += t.elapsed();
                batches += 1;
                if batches.is_multiple_of(50) {
                    let _ = db::prune(&conn, 7, 100_000, detour::store::now_ms());
                }
            }
            spent
        })
    });
    g.bench_function("encode 1000", |b| {
        let records = batch();
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for r in &records {
                wire::encode_record(&mut buf, r);
            }
            buf.len()
        })
    });
    g.bench_function("JSON of 1000", |b| {
        let records = batch();
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for r in &records {
                let _ = serde_json::to_writer(&mut buf, r);
            }
            buf.len()
        })
    });
    g.finish();
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(records, benches);
criterion_main!(records);
