//! Records on disk: one SQLite file (`detour-records.db` by default), written by the keeper thread
//! in one transaction per batch and pruned to the retention in days and rows.
//!
//! `records` holds each record's JSON with the columns a listing filters on, and its attempts
//! in a compact text column for `/admin/stats` (one row per record: each row and index entry
//! written costs CPU on a busy gateway). The columns `providers` and `models` list what a
//! record's attempts touched between unit separators (`\x1f`), so a filter is one `instr`.
//!
//! The only index is the gateway key's (its inserts land at the end of each key's range).
//! There is none on `at` (time bounds become `seq` bounds, [`seq_from`]) nor on `id`: a
//! client's request ids are random, and a random insert into a large index rewrites a page per
//! record. A request looked up by id that is no longer in memory is found by a scan, about
//! 0.1 s per million records.

use super::{Filter, Record};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    at INTEGER NOT NULL,
    key TEXT,
    outcome TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    ms REAL NOT NULL,
    providers TEXT NOT NULL,
    models TEXT NOT NULL,
    attempts TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_key ON records(key, seq) WHERE key IS NOT NULL;
DROP INDEX IF EXISTS records_at;
DROP INDEX IF EXISTS records_id;
";

/// How far out of order two records' `at` may be in `seq` order. Records are numbered as
/// written, so `at` follows `seq` but for a batch's linger and, with two processes on one file,
/// the other's write; a time bound is first turned into a `seq` bound widened by this much
/// ([`seq_from`]), then checked against `at` exactly.
const SLACK_MS: i64 = 60_000;

/// The page size of a new records file.
const PAGE_SIZE: u32 = 65_536;

/// Between values.
const SEP: char = '\u{1f}';
/// Between attempts in the `attempts` column.
const RS: char = '\u{1e}';

/// Open (or create) the file and its tables.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A missing directory shows as the open's error just below.
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Before the first table: a new file gets 64 KiB pages (an existing one keeps its own).
    // Records are appended in batches, and large pages cost fewer writes per record.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A checkpoint every 256 pages (16 MiB) keeps the WAL file from growing to 64 MiB.
    conn.pragma_update(None, "wal_autocheckpoint", 256)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// The number the next record gets.
fn next_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let max: Option<i64> = conn.query_row("SELECT max(seq) FROM records", [], |r| r.get(0))?;
    Ok(max.map_or(1, |m| u64::try_from(m).unwrap_or(0) + 1))
}

/// `\x1f` + each value + `\x1f`: what `instr` looks for.
fn joined<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::new();
    join_into(&mut s, values);
    s
}

/// [`joined`] into `s` (cleared first): a batch reuses its buffers.
fn join_into<'a>(s: &mut String, values: impl Iterator<Item = &'a str>) {
    s.clear();
    s.push(SEP);
    for v in values {
        push_clean(s, v);
        s.push(SEP);
    }
}

/// `v` with the separators replaced.
fn push_clean(s: &mut String, v: &str) {
    s.extend(v.chars().map(|c| if c == SEP || c == RS { '?' } else { c }));
}

/// The attempts as stats read them: `provider SEP model SEP outcome SEP ms SEP ttft` each,
/// `RS` between them.
fn compact_into(s: &mut String, r: &Record) {
    use std::fmt::Write;
    s.clear();
    for (i, a) in r.attempts.iter().enumerate() {
        if i > 0 {
            s.push(RS);
        }
        push_clean(s, &a.provider);
        s.push(SEP);
        push_clean(s, attempt_model(&a.source, &a.provider));
        s.push(SEP);
        s.push_str(a.outcome);
        let _ = write!(s, "{SEP}{}{SEP}", a.ms);
        if let Some(t) = a.first_token_ms {
            let _ = write!(s, "{t}");
        }
    }
}

fn uncompact(s: &str) -> Vec<StatAttempt> {
    s.split(RS)
        .filter(|a| !a.is_empty())
        .filter_map(|a| {
            let mut f = a.split(SEP);
            Some(StatAttempt {
                provider: f.next()?.to_string(),
                model: f.next()?.to_string(),
                outcome: f.next()?.to_string(),
                ms: f.next()?.parse().ok()?,
                first_token_ms: f.next().and_then(|t| t.parse().ok()),
            })
        })
        .collect()
}

fn needle(v: &str) -> String {
    joined(std::iter::once(v))
}

/// What a `model` filter matches: the client's `model` field, and every attempt's source and
/// each of its prefixes ending before a `/` (so `gpt-4o` matches `gpt-4o/p1`).
fn models_into(s: &mut String, r: &Record) {
    let prefixes = r.attempts.iter().flat_map(|a| {
        let cuts = a.source.match_indices('/').map(|(i, _)| &a.source[..i]);
        std::iter::once(a.source.as_str()).chain(cuts)
    });
    join_into(s, r.model.iter().map(String::as_str).chain(prefixes));
}

/// The model an attempt's row is counted under: its source without `/provider`.
pub fn attempt_model<'a>(source: &'a str, provider: &str) -> &'a str {
    source
        .strip_suffix(provider)
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or(source)
}

/// Number a batch after the newest record in the file and write it, in one `IMMEDIATE`
/// transaction: two processes on one file (a graceful upgrade's overlap) never share a number.
pub fn write(conn: &mut Connection, batch: &mut [Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (seq, r) in (next_seq(&tx)?..).zip(batch.iter_mut()) {
        r.seq = seq;
    }
    {
        let mut rec = tx.prepare_cached(
            "INSERT INTO records (seq, id, at, key, outcome, fallback, ms, providers, models, attempts, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        // Reused for every record of the batch: no allocation per record once they have grown.
        let (mut body, mut providers) = (Vec::with_capacity(1024), String::new());
        let (mut models, mut attempts) = (String::new(), String::new());
        for r in batch.iter() {
            let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
            body.clear();
            if serde_json::to_writer(&mut body, r).is_err() {
                continue;
            }
            let body = std::str::from_utf8(&body).unwrap_or_default();
            join_into(
                &mut providers,
                r.attempts.iter().map(|a| a.provider.as_str()),
            );
            models_into(&mut models, r);
            compact_into(&mut attempts, r);
            rec.execute(params![
                seq, r.id, r.at, r.key, r.outcome, r.fallback, r.ms, providers, models, attempts,
                body
            ])?;
        }
    }
    tx.commit()
}

/// Delete what is older than `days` or past the newest `rows`.
pub fn prune(conn: &Connection, days: u32, rows: usize, now_ms: i64) -> rusqlite::Result<()> {
    let oldest = now_ms.saturating_sub(i64::from(days) * 86_400_000);
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let end = seq_from(conn, oldest.saturating_add(SLACK_MS))?;
    conn.execute(
        "DELETE FROM records WHERE seq < ?1 AND at < ?2",
        [end, oldest],
    )?;
    conn.execute(
        "DELETE FROM records WHERE seq <= (SELECT max(seq) FROM records) - ?1",
        [rows],
    )?;
    Ok(())
}

/// The records `f` wants, newest first: `(seq, JSON)`.
pub fn list(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<(u64, String)>> {
    let mut q = conn.prepare_cached(
        "SELECT seq, body FROM records
         WHERE (?1 IS NULL OR key = ?1)
           AND (?2 IS NULL OR outcome = ?2)
           AND (?3 IS NULL OR fallback = ?3)
           AND (?4 IS NULL OR at >= ?4)
           AND (?5 IS NULL OR at <= ?5)
           AND (?6 IS NULL OR seq < ?6)
           AND (?7 IS NULL OR instr(providers, ?7) > 0)
           AND (?8 IS NULL OR instr(models, ?8) > 0)
           AND (?10 IS NULL OR (substr(outcome, 1, 7) != 'success') = ?10)
           AND (?11 IS NULL OR seq >= ?11)
         ORDER BY seq DESC LIMIT ?9",
    )?;
    let from = f
        .since
        .map(|t| seq_from(conn, t.saturating_sub(SLACK_MS)))
        .transpose()?;
    let to = f
        .until
        .map(|t| seq_from(conn, t.saturating_add(SLACK_MS + 1)))
        .transpose()?;
    let before = f.before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    let before = match (before, to) {
        (Some(b), Some(t)) => Some(b.min(t)),
        (b, t) => b.or(t),
    };
    let rows = q.query_map(
        params![
            f.key,
            f.outcome,
            f.fallback,
            f.since,
            f.until,
            before,
            f.provider.as_deref().map(needle),
            f.model.as_deref().map(needle),
            i64::try_from(f.limit).unwrap_or(0),
            f.failed,
            from
        ],
        |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?)),
    )?;
    rows.collect()
}

/// The first `seq` from which every record ended at or after `at` (Unix ms), as far as `at`
/// follows `seq`: a binary search over `seq`, each probe one primary-key lookup.
fn seq_from(conn: &Connection, at: i64) -> rusqlite::Result<i64> {
    let (mut lo, mut hi): (i64, i64) = conn.query_row(
        "SELECT coalesce(min(seq), 1), coalesce(max(seq), 0) + 1 FROM records",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut probe =
        conn.prepare_cached("SELECT seq, at FROM records WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let first = probe
            .query_row([mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        match first {
            Some((seq, ended)) if ended < at => lo = seq + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The newest record of request `id`, as JSON.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT body FROM records WHERE id = ?1 ORDER BY seq DESC LIMIT 1",
        [id],
        |r| r.get(0),
    )
    .optional()
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

/// Every request that ended at or after `since` (Unix ms), with its attempts.
pub fn window(conn: &Connection, since: i64) -> rusqlite::Result<Vec<StatRow>> {
    let from = seq_from(conn, since.saturating_sub(SLACK_MS))?;
    let mut q = conn.prepare_cached(
        "SELECT outcome, fallback, ms, attempts FROM records WHERE seq >= ?1 AND at >= ?2",
    )?;
    let rows = q.query_map([from, since], |r| {
        Ok(StatRow {
            outcome: r.get(0)?,
            fallback: r.get(1)?,
            ms: r.get(2)?,
            attempts: uncompact(&r.get::<_, String>(3)?),
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_become_seq_bounds() {
        // seq 1..=40 with gaps (every third missing), `at` = 100 × seq; then two out of order.
        for disorder in [0, 150] {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            assert_eq!(seq_from(&conn, 5).unwrap(), 1, "an empty file");
            let mut rows: Vec<(i64, i64)> = (1..=40)
                .filter(|s| s % 3 != 0)
                .map(|s| (s, 100 * s))
                .collect();
            rows[10].1 += disorder;
            rows[20].1 -= disorder;
            for (seq, at) in &rows {
                conn.execute(
                    "INSERT INTO records (seq, id, at, outcome, fallback, ms, providers, models,
                     attempts, body) VALUES (?1, 'r', ?2, 'success', 0, 1, '', '', '', '{}')",
                    [seq, at],
                )
                .unwrap();
            }
            for at in [
                i64::MIN,
                0,
                100,
                101,
                950,
                1_600,
                1_700,
                3_000,
                4_000,
                4_001,
                i64::MAX,
            ] {
                let got = seq_from(&conn, at).unwrap();
                let (below, from): (Vec<&(i64, i64)>, Vec<_>) =
                    rows.iter().partition(|r| r.0 < got);
                assert!(
                    below.iter().all(|r| r.1 < at.saturating_add(disorder)),
                    "{at}: {got}"
                );
                assert!(
                    from.iter().all(|r| r.1 >= at.saturating_sub(disorder)),
                    "{at}: {got}"
                );
                if disorder == 0 {
                    let want = rows.iter().find(|r| r.1 >= at).map_or(41, |r| r.0);
                    let first = from.first().map_or(41, |r| r.0);
                    assert_eq!(first, want, "at {at}");
                }
            }
        }
    }

    #[test]
    fn model_filters_match_prefixes_at_slashes_only() {
        assert_eq!(attempt_model("gpt-4o/p1", "p1"), "gpt-4o");
        assert_eq!(attempt_model("http://h:1", "h"), "http://h:1");
        let m = joined(["a/b/c", "x\u{1f}y"].into_iter());
        assert!(m.contains(&needle("a/b/c")));
        assert!(m.contains(&needle("x?y")));
        assert!(!m.contains(&needle("a/b")));
        let back = uncompact(
            "p\u{1f}m\u{1f}success\u{1f}1.5\u{1f}0.7\u{1e}q\u{1f}m\u{1f}server_error\u{1f}2\u{1f}",
        );
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].ms, back[0].first_token_ms), (1.5, Some(0.7)));
        assert_eq!(
            (back[1].outcome.as_str(), back[1].first_token_ms),
            ("server_error", None)
        );
    }
}
