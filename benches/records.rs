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
                    let _ = db::prune(&mut conn, 7, 100_000, detour::store::now_ms());
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
    reads(c, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads of a file of 100 batches of 1,000 (what `/admin/requests…` and `/admin/stats` do on
/// disk): the oldest request by id (every batch searched), the newest page, a page for a key
/// only the oldest batch holds, and every record for the stats' window.
fn reads(c: &mut Criterion, dir: &std::path::Path) {
    let mut conn = db::open(&dir.join("reads.db")).unwrap_or_else(|e| {
        eprintln!("records file: {e}");
        std::process::exit(1)
    });
    for n in 0..100 {
        let mut records: Vec<Record> = (0..BATCH).map(|i| record(n * BATCH + i)).collect();
        if n == 0 {
            records[0].key = Some("k-rare".into());
        }
        let mut bytes = encoded(&records);
        if let Err(e) = db::write(&mut conn, &mut bytes) {
            eprintln!("write: {e}");
            std::process::exit(1)
        }
    }
    let oldest = record(0).id;
    let filter = |q: &str| detour::records::Filter::parse(Some(q)).unwrap_or_default();
    let (newest, rare) = (filter("limit=50"), filter("key=k-rare&limit=50"));
    let found = (
        db::get(&conn, &oldest).ok().flatten().is_some(),
        db::list(&conn, &rare).map(|v| v.len()).ok(),
        db::window(&conn, 0).map(|v| v.len()).ok(),
    );
    if found != (true, Some(1), Some(100_000)) {
        eprintln!("the reads do not find what was written: {found:?}");
        std::process::exit(1)
    }
    let mut g = c.benchmark_group("records reads of 100,000");
    g.sample_size(10);
    g.bench_function("the oldest by id", |b| {
        b.iter(|| db::get(&conn, &oldest).ok().flatten().map(|j| j.len()))
    });
    g.bench_function("the newest 50", |b| {
        b.iter(|| db::list(&conn, &newest).map(|v| v.len()).ok())
    });
    g.bench_function("a key only the oldest batch holds", |b| {
        b.iter(|| db::list(&conn, &rare).map(|v| v.len()).ok())
    });
    g.bench_function("the stats window (all of them)", |b| {
        b.iter(|| db::window(&conn, 0).map(|v| v.len()).ok())
    });
    g.finish();
}

criterion_group!(records, benches);
criterion_main!(records);
