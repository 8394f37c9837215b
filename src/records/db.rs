//! Records on disk: one SQLite file (`detour-records.db` by default), written by the keeper
//! thread one row per batch and pruned to the retention in days and rows.
//!
//! A row of `chunks` is a batch: its records in [`wire`]'s encoding one after another, their
//! first and last `seq` and the earliest and latest `at`. One row per batch is what keeps the
//! keeper's cost per record low: a row and its index entry cost more than encoding a record.
//! Reads decode the batches newest first and filter the records exactly ([`Filter::wants`]);
//! a filter on a key, provider, model or request id first skips the batches whose bytes do not
//! hold the value (a byte search, far cheaper than decoding). Time bounds skip batches by
//! their `at` range and stop at the first batch older than the bound by more than
//! [`SLACK_MS`].

use super::{wire, Filter, Record};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    hi INTEGER PRIMARY KEY,
    lo INTEGER NOT NULL,
    at_min INTEGER NOT NULL,
    at_max INTEGER NOT NULL,
    body BLOB NOT NULL
);
";

/// How far out of order two batches' `at` may be in `seq` order: a batch's linger and, with two
/// processes on one file, the other's write. A read bounded below in time stops at the first
/// batch this much older than its bound.
const SLACK_MS: i64 = 60_000;

/// The page size of a new records file.
const PAGE_SIZE: u32 = 65_536;

/// How many records of an older file's one-row-per-record table go into one batch.
const MIGRATE_BATCH: usize = 1000;

/// Open (or create) the file and its table; a file of an earlier version has its records moved
/// into batches.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A missing directory shows as the open's error just below.
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Before the first table: a new file gets 64 KiB pages (an existing one keeps its own).
    // Records are appended in batches, and large pages cost fewer writes per record.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A checkpoint every 256 pages (16 MiB) keeps the WAL file from growing to 64 MiB.
    conn.pragma_update(None, "wal_autocheckpoint", 256)?;
    conn.execute_batch(SCHEMA)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// An earlier version kept a row per record, its JSON in `body`: re-encode them in batches
/// and drop that table. A row whose JSON does not parse is left out. The records keep their
/// numbers into an empty `chunks`; into one that already holds batches (an older process
/// that went on writing its table) they are numbered after the newest, so no number is
/// taken twice.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Looked for inside the transaction: two connections opening at once move it once.
    let old: Option<String> = tx
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'records'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_none() {
        return Ok(());
    }
    let mut next = last_seq(&tx)?.map(|m| m + 1);
    {
        let mut q = tx.prepare("SELECT body FROM records ORDER BY seq")?;
        let mut rows = q.query([])?;
        let (mut bytes, mut n) = (Vec::new(), 0);
        let mut flush = |bytes: &mut Vec<u8>| -> rusqlite::Result<()> {
            if let Some(first) = next {
                next = Some(wire::number(bytes, first));
            }
            insert(&tx, bytes)?;
            bytes.clear();
            Ok(())
        };
        while let Some(row) = rows.next()? {
            let body: String = row.get(0)?;
            if let Ok(r) = serde_json::from_str::<Record>(&body) {
                wire::encode_record(&mut bytes, &r);
                n += 1;
            }
            if n == MIGRATE_BATCH {
                flush(&mut bytes)?;
                n = 0;
            }
        }
        if n > 0 {
            flush(&mut bytes)?;
        }
    }
    tx.execute_batch("DROP TABLE records;")?;
    tx.commit()
}

/// A batch's row: its `seq` and `at` ranges from its records (numbered).
fn insert(conn: &Connection, bytes: &[u8]) -> rusqlite::Result<()> {
    let mut span: Option<(u64, u64, i64, i64)> = None;
    for r in wire::split(bytes) {
        let (seq, at) = wire::seq_and_at(&bytes[r]);
        span = Some(match span {
            None => (seq, seq, at, at),
            Some((lo, hi, a0, a1)) => (lo.min(seq), hi.max(seq), a0.min(at), a1.max(at)),
        });
    }
    let Some((lo, hi, at_min, at_max)) = span else {
        return Ok(());
    };
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO chunks (hi, lo, at_min, at_max, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![big(hi), big(lo), at_min, at_max, bytes])?;
    Ok(())
}

/// The model an attempt's row is counted under: its source without `/provider`.
pub fn attempt_model<'a>(source: &'a str, provider: &str) -> &'a str {
    source
        .strip_suffix(provider)
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or(source)
}

/// The newest record's number in the file.
fn last_seq(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    let max: Option<i64> = conn.query_row("SELECT max(hi) FROM chunks", [], |r| r.get(0))?;
    Ok(max.map(|m| u64::try_from(m).unwrap_or(0)))
}

/// Number a batch (records in [`wire`]'s encoding) after the newest in the file and write it
/// as one row, in one `IMMEDIATE` transaction: two processes on one file (a graceful upgrade's
/// overlap) never share a number. The number after the batch's last.
pub fn write(conn: &mut Connection, batch: &mut [u8]) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let next = wire::number(batch, last_seq(&tx)?.map_or(1, |m| m + 1));
    insert(&tx, batch)?;
    tx.commit()?;
    Ok(next)
}

/// Delete what is older than `days` or past the newest `rows`: whole batches, and the records
/// of the batch the row bound cuts through.
///
/// In one `IMMEDIATE` transaction: a read never sees the cut batch missing, and another
/// process on the file never numbers a batch in between.
pub fn prune(conn: &mut Connection, days: u32, rows: usize, now_ms: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    prune_in(&tx, days, rows, now_ms)?;
    tx.commit()
}

fn prune_in(conn: &Connection, days: u32, rows: usize, now_ms: i64) -> rusqlite::Result<()> {
    let oldest = now_ms.saturating_sub(i64::from(days) * 86_400_000);
    // From the oldest batch on, up to the first with a record inside the retention.
    let mut expired = None;
    {
        let mut q = conn.prepare_cached("SELECT hi, at_max FROM chunks ORDER BY hi")?;
        let mut it = q.query([])?;
        while let Some(row) = it.next()? {
            if row.get::<_, i64>(1)? >= oldest {
                break;
            }
            expired = Some(row.get::<_, i64>(0)?);
        }
    }
    if let Some(hi) = expired {
        conn.execute("DELETE FROM chunks WHERE hi <= ?1", [hi])?;
    }
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let Some(cut) =
        last_seq(conn)?.map(|m| i64::try_from(m).unwrap_or(i64::MAX).saturating_sub(rows))
    else {
        return Ok(());
    };
    conn.execute("DELETE FROM chunks WHERE hi <= ?1", [cut])?;
    let across: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT hi, body FROM chunks WHERE lo <= ?1")?
        .query_map([cut], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (hi, body) in across {
        let mut kept = Vec::with_capacity(body.len());
        for r in wire::split(&body) {
            let (seq, _) = wire::seq_and_at(&body[r.clone()]);
            if i64::try_from(seq).unwrap_or(i64::MAX) > cut {
                kept.extend_from_slice(&body[r]);
            }
        }
        conn.execute("DELETE FROM chunks WHERE hi = ?1", [hi])?;
        insert(conn, &kept)?;
    }
    Ok(())
}

/// What a batch is to a read of the records that ended at or after `since`, newest batch first.
enum Bound {
    /// It may hold some.
    Read,
    /// It holds none.
    Skip,
    /// Neither it nor any older batch holds any (as far as `at` follows `seq`).
    Stop,
}

/// [`Bound`] of the batch whose newest record ended at `at_max`.
fn bound(at_max: i64, since: i64) -> Bound {
    if at_max < since.saturating_sub(SLACK_MS) {
        Bound::Stop
    } else if at_max < since {
        Bound::Skip
    } else {
        Bound::Read
    }
}

/// Whether a batch's bytes hold `needle` anywhere.
pub fn holds(body: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(body, needle).is_some()
}

/// What a batch's bytes must hold for `f` to want one of its records.
fn needles(f: &Filter) -> [Option<Vec<u8>>; 3] {
    [
        f.key.as_deref().map(wire::needle),
        f.provider.as_deref().map(wire::needle),
        f.model.as_deref().map(|m| m.as_bytes().to_vec()),
    ]
}

/// The records `f` wants, newest first: `(seq, JSON)`.
pub fn list(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    if f.limit == 0 {
        return Ok(out);
    }
    let mut q = conn.prepare_cached(
        "SELECT at_max, body FROM chunks
         WHERE (?1 IS NULL OR lo < ?1)
           AND (?2 IS NULL OR at_min <= ?2)
         ORDER BY hi DESC",
    )?;
    let before = f.before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let needles = needles(f);
    let mut rows = q.query(params![before, f.until])?;
    while let Some(row) = rows.next()? {
        if let Some(since) = f.since {
            match bound(row.get(0)?, since) {
                Bound::Stop => break,
                Bound::Skip => continue,
                Bound::Read => {}
            }
        }
        let body = row.get_ref(1)?.as_blob()?;
        if !needles.iter().flatten().all(|n| holds(body, n)) {
            continue;
        }
        for r in wire::newest_first(body).filter(|r| f.wants(r)) {
            out.push((r.seq, serde_json::to_string(&r).unwrap_or_default()));
            if out.len() >= f.limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The newest record of request `id`, as JSON.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    let needle = wire::needle(id);
    let mut q = conn.prepare_cached("SELECT body FROM chunks ORDER BY hi DESC")?;
    let mut rows = q.query([])?;
    while let Some(row) = rows.next()? {
        let body = row.get_ref(0)?.as_blob()?;
        if !holds(body, &needle) {
            continue;
        }
        if let Some(r) = wire::newest_first(body).find(|r| r.id == id) {
            return Ok(serde_json::to_string(&r).ok());
        }
    }
    Ok(None)
}

/// One request in a stats window, with its attempts.
#[derive(Debug, Default)]
pub struct StatRow {
    pub outcome: String,
    pub fallback: bool,
    pub ms: f64,
    pub attempts: Vec<StatAttempt>,
}

#[derive(Debug)]
pub struct StatAttempt {
    pub provider: String,
    pub model: String,
    pub outcome: String,
    pub ms: f64,
    pub first_token_ms: Option<f64>,
}

impl From<Record> for StatRow {
    fn from(r: Record) -> StatRow {
        StatRow {
            outcome: r.outcome,
            fallback: r.fallback,
            ms: r.ms,
            attempts: r
                .attempts
                .into_iter()
                .map(|a| StatAttempt {
                    model: attempt_model(&a.source, &a.provider).to_string(),
                    provider: a.provider,
                    outcome: a.outcome,
                    ms: a.ms,
                    first_token_ms: a.first_token_ms,
                })
                .collect(),
        }
    }
}

/// Every request that ended at or after `since` (Unix ms), with its attempts.
pub fn window(conn: &Connection, since: i64) -> rusqlite::Result<Vec<StatRow>> {
    let mut q = conn.prepare_cached("SELECT at_max, body FROM chunks ORDER BY hi DESC")?;
    let mut rows = q.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match bound(row.get(0)?, since) {
            Bound::Stop => break,
            Bound::Skip => continue,
            Bound::Read => {}
        }
        let body = row.get_ref(1)?.as_blob()?;
        out.extend(
            wire::newest_first(body)
                .filter(|r| r.at >= since)
                .map(StatRow::from),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::AttemptRecord;

    fn record(seq: u64, at: i64, key: Option<&str>, source: &str) -> Record {
        let provider = source.rsplit('/').next().unwrap_or(source);
        Record {
            seq,
            id: format!("r{seq}"),
            at,
            key: key.map(str::to_string),
            mode: "chain".into(),
            model: None,
            stream: false,
            outcome: "success".into(),
            status: 200,
            ms: 1.0,
            attempts: vec![AttemptRecord {
                provider: provider.into(),
                source: source.into(),
                outcome: "success".into(),
                status: Some(200),
                error: None,
                ms: 1.0,
                connect_ms: None,
                first_byte_ms: None,
                first_token_ms: None,
                waited_ms: None,
                wait_reason: None,
                retry: false,
                cost_usd: None,
                pay: None,
            }],
            served_by: Some(source.into()),
            fallback: false,
            prompt_tokens: None,
            completion_tokens: None,
            cost_usd: None,
            client_closed: false,
            post_commit_error: None,
        }
    }

    /// Batches of 3 written to a fresh file: records 1..=`n`, `at` = 100 × seq.
    fn file(n: u64) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for first in (1..=n).step_by(3) {
            let mut b = Vec::new();
            for s in first..(first + 3).min(n + 1) {
                let key = (s % 2 == 0).then_some("even");
                let source = if s % 5 == 0 {
                    "gpt-4o/p5"
                } else {
                    "gpt-4o-mini/p1"
                };
                wire::encode_record(&mut b, &record(s, 100 * s as i64, key, source));
            }
            write(&mut conn, &mut b).unwrap();
        }
        conn
    }

    fn seqs(conn: &Connection, f: &Filter) -> Vec<u64> {
        list(conn, f).unwrap().into_iter().map(|(s, _)| s).collect()
    }

    /// The newest `limit`, unfiltered.
    fn newest(conn: &Connection, limit: usize) -> Vec<u64> {
        seqs(
            conn,
            &Filter {
                limit,
                ..Filter::default()
            },
        )
    }

    /// Write `r` as a batch of its own.
    fn append(conn: &mut Connection, r: &Record) {
        let mut b = Vec::new();
        wire::encode_record(&mut b, r);
        write(conn, &mut b).unwrap();
    }

    #[test]
    fn listings_filter_exactly_and_page_newest_first() {
        let conn = file(20);
        let all = |f: Filter| seqs(&conn, &Filter { limit: 100, ..f });
        assert_eq!(all(Filter::default()), (1..=20).rev().collect::<Vec<_>>());
        let evens: Vec<u64> = (1..=20).rev().filter(|s| s % 2 == 0).collect();
        assert_eq!(
            all(Filter {
                key: Some("even".into()),
                ..Filter::default()
            }),
            evens
        );
        let p5 = all(Filter {
            provider: Some("p5".into()),
            ..Filter::default()
        });
        assert_eq!(p5, [20, 15, 10, 5]);
        // Whole names and prefixes at a slash only: `gpt-4o` is not `gpt-4o-mini`.
        let m = all(Filter {
            model: Some("gpt-4o".into()),
            ..Filter::default()
        });
        assert_eq!(m, p5);
        assert!(all(Filter {
            provider: Some("p".into()),
            ..Filter::default()
        })
        .is_empty());
        let page = seqs(
            &conn,
            &Filter {
                before: Some(8),
                limit: 2,
                ..Filter::default()
            },
        );
        assert_eq!(page, [7, 6]);
        let timed = all(Filter {
            since: Some(450),
            until: Some(1000),
            ..Filter::default()
        });
        assert_eq!(timed, (5..=10).rev().collect::<Vec<_>>());
        assert!(all(Filter {
            since: Some(i64::MAX),
            ..Filter::default()
        })
        .is_empty());
        assert!(all(Filter {
            until: Some(i64::MIN),
            ..Filter::default()
        })
        .is_empty());
        assert_eq!(newest(&conn, 4), [20, 19, 18, 17]);
        let r7: Value = serde_json::from_str(&get(&conn, "r7").unwrap().unwrap()).unwrap();
        assert_eq!(
            (r7["seq"].as_u64(), r7["at"].as_i64()),
            (Some(7), Some(700))
        );
        assert_eq!(get(&conn, "r").unwrap(), None, "a whole id, not a part");
        assert_eq!(window(&conn, 1_501).unwrap().len(), 5);
    }

    use serde_json::Value;

    #[test]
    fn pruning_cuts_through_a_batch_and_drops_old_ones_whole() {
        let mut conn = file(20);
        // The newest 4: the batch of 16-18 keeps 17 and 18.
        prune(&mut conn, 7, 4, 0).unwrap();
        assert_eq!(newest(&conn, 100), [20, 19, 18, 17]);
        // Seven days after 1,850: the batch of 17-18 (`at` 1,700 … 1,800) is past it.
        let now = 1_850 + 7 * 86_400_000;
        prune(&mut conn, 7, 100, now).unwrap();
        assert_eq!(newest(&conn, 100), [20, 19]);
        append(&mut conn, &record(0, 5, None, "m/p"));
        assert_eq!(newest(&conn, 1), [21], "numbering goes on");
    }

    #[test]
    fn a_file_of_one_row_per_record_is_moved_into_batches() {
        let dir = std::env::temp_dir().join(format!("detour-db-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("records.db");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, body TEXT NOT NULL);",
            )
            .unwrap();
            for s in [3u64, 4, 9] {
                let body = serde_json::to_string(&record(s, 10 * s as i64, None, "m/p")).unwrap();
                conn.execute(
                    "INSERT INTO records (seq, id, body) VALUES (?1, 'x', ?2)",
                    params![s as i64, body],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO records (seq, id, body) VALUES (10, 'x', 'not json')",
                [],
            )
            .unwrap();
        }
        let mut conn = open(&path).unwrap();
        assert_eq!(newest(&conn, 100), [9, 4, 3]);
        append(&mut conn, &record(0, 5, None, "m/p"));
        assert_eq!(newest(&conn, 1), [10]);
        drop(conn);
        // An older process that went on writing its own table (a graceful upgrade's overlap):
        // its records are moved at the next open, numbered after the newest.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, body TEXT NOT NULL);",
            )
            .unwrap();
            let body = serde_json::to_string(&record(1, 7, None, "m/p")).unwrap();
            conn.execute(
                "INSERT INTO records (seq, id, body) VALUES (1, 'x', ?1)",
                [body],
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let late: Value = serde_json::from_str(&get(&conn, "r1").unwrap().unwrap()).unwrap();
        assert_eq!(
            (late["seq"].as_u64(), late["at"].as_i64()),
            (Some(11), Some(7))
        );
        drop(conn);
        assert_eq!(newest(&open(&path).unwrap(), 100), [11, 10, 9, 4, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
