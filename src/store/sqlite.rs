//! The embedded store: one SQLite file (WAL), for a single detour instance.
//!
//! Keys, balances, reservations and the ledger are rows; every change is one `IMMEDIATE`
//! transaction, so a `kill -9` leaves each change whole or absent, and `synchronous=NORMAL`
//! in WAL mode keeps every committed transaction across a process crash. Calls run on tokio's
//! blocking pool (`spawn_blocking`), never on Pingora's worker threads. Rate limits,
//! token-per-minute counts and concurrency slots are in-process counters ([`super::local`]):
//! this backend serves one instance, and those counters need no durability.

use super::local::Local;
use super::{
    Charge, Key, KeyChange, KeyPolicy, KeyView, LedgerEntry, Micros, NewKey, Rate, Reserve, Store,
    StoreError, UsageRow,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL UNIQUE, policy TEXT NOT NULL,
  disabled INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
  created INTEGER NOT NULL, balance INTEGER NOT NULL DEFAULT 0,
  reserved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS byok(
  key_id TEXT NOT NULL, provider TEXT NOT NULL, sealed BLOB NOT NULL,
  PRIMARY KEY(key_id, provider));
CREATE TABLE IF NOT EXISTS reservations(
  id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger(
  seq INTEGER PRIMARY KEY, key_id TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL,
  amount INTEGER NOT NULL, cost INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
  input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, request_id TEXT NOT NULL,
  note TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_by_key ON ledger(key_id, seq);
CREATE TABLE IF NOT EXISTS day_counts(
  day INTEGER NOT NULL, caller TEXT NOT NULL, host TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY(day, caller, host));
";

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    local: Local,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Open (or create) the database file and its tables.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            local: Local::default(),
        })
    }

    /// Run `f` on the connection, on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        })
        .await
        .map_err(unavailable)?
    }
}

/// `f` inside one `BEGIN IMMEDIATE` transaction, committed if it returns `Ok`.
fn write<T>(
    c: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let out = f(&tx)?;
    tx.commit().map_err(unavailable)?;
    Ok(out)
}

fn policy_of(text: &str) -> KeyPolicy {
    // A row written by a newer version with fields this one does not know: refuse nothing,
    // restrict nothing more than the fields it does know.
    serde_json::from_str(text).unwrap_or_default()
}

fn ledger_row(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    kind: &str,
    amount: Micros,
    charge: Option<&Charge>,
    note: &str,
) -> Result<(), StoreError> {
    let empty = Charge {
        request_id: String::new(),
        provider: String::new(),
        model: String::new(),
        input_tokens: 0,
        output_tokens: 0,
        cost: 0,
    };
    let c = charge.unwrap_or(&empty);
    tx.execute(
        "INSERT INTO ledger(key_id, at, kind, amount, cost, provider, model, input_tokens,
           output_tokens, request_id, note) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
        params![
            id,
            super::now_ms(),
            kind,
            amount,
            c.cost,
            c.provider,
            c.model,
            i64::try_from(c.input_tokens).unwrap_or(i64::MAX),
            i64::try_from(c.output_tokens).unwrap_or(i64::MAX),
            c.request_id,
            note
        ],
    )
    .map_err(unavailable)?;
    Ok(())
}

fn exists(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<bool, StoreError> {
    tx.query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(unavailable)
}

fn view(c: &Connection, id: &str) -> Result<Option<KeyView>, StoreError> {
    let row = c
        .query_row(
            "SELECT id, name, policy, disabled, revoked, created, balance, reserved
             FROM keys WHERE id = ?1",
            [id],
            |r| {
                Ok(KeyView {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    policy: policy_of(&r.get::<_, String>(2)?),
                    disabled: r.get(3)?,
                    revoked: r.get(4)?,
                    created: r.get(5)?,
                    balance: r.get(6)?,
                    reserved: r.get(7)?,
                    byok_providers: Vec::new(),
                })
            },
        )
        .optional()
        .map_err(unavailable)?;
    let Some(mut v) = row else { return Ok(None) };
    let mut st = c
        .prepare("SELECT provider FROM byok WHERE key_id = ?1 ORDER BY provider")
        .map_err(unavailable)?;
    v.byok_providers = st
        .query_map([id], |r| r.get(0))
        .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
        .map_err(unavailable)?;
    Ok(Some(v))
}

fn key_by_hash(c: &Connection, hash: [u8; 32]) -> Result<Option<Key>, StoreError> {
    let row = c
        .query_row(
            "SELECT id, name, policy, disabled FROM keys WHERE hash = ?1 AND revoked = 0",
            [&hash[..]],
            |r| {
                Ok(Key {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    policy: policy_of(&r.get::<_, String>(2)?),
                    disabled: r.get(3)?,
                    byok: Default::default(),
                })
            },
        )
        .optional()
        .map_err(unavailable)?;
    let Some(mut k) = row else { return Ok(None) };
    let mut st = c
        .prepare("SELECT provider, sealed FROM byok WHERE key_id = ?1")
        .map_err(unavailable)?;
    k.byok = st
        .query_map([&k.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect::<Result<_, _>>())
        .map_err(unavailable)?;
    Ok(Some(k))
}

fn change(tx: &rusqlite::Transaction<'_>, id: &str, ch: KeyChange) -> Result<(), StoreError> {
    if !exists(tx, id)? {
        return Err(StoreError::NoSuchKey);
    }
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| tx.execute(sql, p).map_err(unavailable);
    if let Some(name) = &ch.name {
        run("UPDATE keys SET name = ?2 WHERE id = ?1", &[&id, name])?;
    }
    if let Some(policy) = &ch.policy {
        let text = serde_json::to_string(policy).map_err(unavailable)?;
        run("UPDATE keys SET policy = ?2 WHERE id = ?1", &[&id, &text])?;
    }
    if let Some(d) = ch.disabled {
        run("UPDATE keys SET disabled = ?2 WHERE id = ?1", &[&id, &d])?;
    }
    if ch.revoke {
        run("UPDATE keys SET revoked = 1 WHERE id = ?1", &[&id])?;
    }
    match &ch.byok {
        Some((p, Some(sealed))) => run(
            "INSERT INTO byok(key_id, provider, sealed) VALUES (?1, ?2, ?3)
             ON CONFLICT(key_id, provider) DO UPDATE SET sealed = excluded.sealed",
            &[&id, p, sealed],
        )?,
        Some((p, None)) => run(
            "DELETE FROM byok WHERE key_id = ?1 AND provider = ?2",
            &[&id, p],
        )?,
        None => 0,
    };
    Ok(())
}

fn reserve(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    amount: Micros,
    credit_limit: Micros,
) -> Result<Reserve, StoreError> {
    let row: Option<(Micros, Micros)> = tx
        .query_row(
            "SELECT balance, reserved FROM keys WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let (balance, reserved) = row.ok_or(StoreError::NoSuchKey)?;
    let available = balance
        .saturating_sub(reserved)
        .saturating_add(credit_limit.max(0));
    if amount > available {
        return Ok(Reserve::Short { available });
    }
    tx.execute(
        "UPDATE keys SET reserved = reserved + ?2 WHERE id = ?1",
        params![id, amount],
    )
    .map_err(unavailable)?;
    tx.execute(
        "INSERT INTO reservations(key_id, amount) VALUES (?1, ?2)",
        params![id, amount],
    )
    .map_err(unavailable)?;
    Ok(Reserve::Held(
        u64::try_from(tx.last_insert_rowid()).unwrap_or(0),
    ))
}

/// Close a reservation: its amount back out of `reserved`, and `debit` off the balance with
/// its ledger row. A reservation already closed changes nothing.
fn close(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    reservation: u64,
    charge: Option<&Charge>,
) -> Result<(), StoreError> {
    let n = i64::try_from(reservation).unwrap_or(-1);
    let held: Option<Micros> = tx
        .query_row(
            "DELETE FROM reservations WHERE id = ?1 AND key_id = ?2 RETURNING amount",
            params![n, id],
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    let Some(held) = held else { return Ok(()) };
    let debit = charge.map_or(0, |c| c.cost.clamp(0, held));
    tx.execute(
        "UPDATE keys SET reserved = reserved - ?2, balance = balance - ?3 WHERE id = ?1",
        params![id, held, debit],
    )
    .map_err(unavailable)?;
    if let Some(c) = charge {
        ledger_row(tx, id, "debit", -debit, Some(c), "")?;
    }
    Ok(())
}

fn ledger(c: &Connection, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut st = c
        .prepare(
            "SELECT seq, at, kind, amount, cost, provider, model, input_tokens, output_tokens,
               request_id, note FROM ledger WHERE key_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )
        .map_err(unavailable)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    st.query_map(params![id, limit], |r| {
        Ok(LedgerEntry {
            seq: r.get(0)?,
            at: r.get(1)?,
            kind: r.get(2)?,
            amount: r.get(3)?,
            cost: r.get(4)?,
            provider: r.get(5)?,
            model: r.get(6)?,
            input_tokens: r.get::<_, i64>(7)?.max(0).unsigned_abs(),
            output_tokens: r.get::<_, i64>(8)?.max(0).unsigned_abs(),
            request_id: r.get(9)?,
            note: r.get(10)?,
        })
    })
    .and_then(|rows| rows.collect())
    .map_err(unavailable)
}

fn usage(c: &Connection, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError> {
    let today = super::now_ms().div_euclid(86_400_000);
    let since = (today - i64::from(days.saturating_sub(1))) * 86_400_000;
    let mut st = c
        .prepare(
            "SELECT strftime('%Y-%m-%d', at / 1000, 'unixepoch') AS day, provider, model,
               COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost), SUM(-amount)
             FROM ledger WHERE key_id = ?1 AND at >= ?2 AND kind IN ('debit', 'byok')
             GROUP BY day, provider, model ORDER BY day, provider, model",
        )
        .map_err(unavailable)?;
    st.query_map(params![id, since], |r| {
        Ok(UsageRow {
            day: r.get(0)?,
            provider: r.get(1)?,
            model: r.get(2)?,
            requests: r.get::<_, i64>(3)?.max(0).unsigned_abs(),
            input_tokens: r.get::<_, i64>(4)?.max(0).unsigned_abs(),
            output_tokens: r.get::<_, i64>(5)?.max(0).unsigned_abs(),
            cost: r.get(6)?,
            billed: r.get(7)?,
        })
    })
    .and_then(|rows| rows.collect())
    .map_err(unavailable)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn recover(&self) -> Result<u64, StoreError> {
        self.call(|c| {
            write(c, |tx| {
                let n = tx
                    .execute("DELETE FROM reservations", [])
                    .map_err(unavailable)?;
                tx.execute("UPDATE keys SET reserved = 0 WHERE reserved <> 0", [])
                    .map_err(unavailable)?;
                Ok(n as u64)
            })
        })
        .await
    }

    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        let policy = serde_json::to_string(&key.policy).map_err(unavailable)?;
        self.call(move |c| {
            write(c, |tx| {
                tx.execute(
                    "INSERT INTO keys(id, name, hash, policy, created) VALUES (?1,?2,?3,?4,?5)",
                    params![key.id, key.name, &key.hash[..], policy, key.created],
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::Invalid("a key with this id or secret exists".into())
                    }
                    e => unavailable(e),
                })?;
                Ok(())
            })
        })
        .await
    }

    async fn key_by_hash(&self, hash: [u8; 32]) -> Result<Option<Key>, StoreError> {
        self.call(move |c| key_by_hash(c, hash)).await
    }

    async fn key(&self, id: &str) -> Result<Option<KeyView>, StoreError> {
        let id = id.to_string();
        self.call(move |c| view(c, &id)).await
    }

    async fn keys(&self) -> Result<Vec<KeyView>, StoreError> {
        self.call(|c| {
            let mut st = c
                .prepare("SELECT id FROM keys ORDER BY created, id")
                .map_err(unavailable)?;
            let ids: Vec<String> = st
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(unavailable)?;
            ids.iter()
                .filter_map(|id| view(c, id).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    async fn change_key(&self, id: &str, ch: KeyChange) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| write(c, |tx| change(tx, &id, ch))).await
    }

    async fn top_up(&self, id: &str, amount: Micros, note: &str) -> Result<Micros, StoreError> {
        let (id, note) = (id.to_string(), note.to_string());
        self.call(move |c| {
            write(c, |tx| {
                let balance: Option<Micros> = tx
                    .query_row(
                        "UPDATE keys SET balance = balance + ?2 WHERE id = ?1 RETURNING balance",
                        params![id, amount],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(unavailable)?;
                let balance = balance.ok_or(StoreError::NoSuchKey)?;
                ledger_row(tx, &id, "top-up", amount, None, &note)?;
                Ok(balance)
            })
        })
        .await
    }

    async fn reserve(
        &self,
        id: &str,
        amount: Micros,
        credit_limit: Micros,
    ) -> Result<Reserve, StoreError> {
        if amount < 0 {
            return Err(StoreError::Invalid("a reservation is not negative".into()));
        }
        let id = id.to_string();
        self.call(move |c| write(c, |tx| reserve(tx, &id, amount, credit_limit)))
            .await
    }

    async fn settle(&self, id: &str, reservation: u64, charge: &Charge) -> Result<(), StoreError> {
        let (id, charge) = (id.to_string(), charge.clone());
        self.call(move |c| write(c, |tx| close(tx, &id, reservation, Some(&charge))))
            .await
    }

    async fn release(&self, id: &str, reservation: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| write(c, |tx| close(tx, &id, reservation, None)))
            .await
    }

    async fn record(&self, id: &str, charge: &Charge) -> Result<(), StoreError> {
        let (id, charge) = (id.to_string(), charge.clone());
        self.call(move |c| write(c, |tx| ledger_row(tx, &id, "byok", 0, Some(&charge), "")))
            .await
    }

    async fn ledger(&self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let id = id.to_string();
        self.call(move |c| ledger(c, &id, limit)).await
    }

    async fn usage(&self, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError> {
        let id = id.to_string();
        self.call(move |c| usage(c, &id, days)).await
    }

    async fn rate(&self, bucket: &str, per_minute: u32, now_us: u64) -> Result<Rate, StoreError> {
        Ok(self.local.rate(bucket, per_minute, now_us))
    }

    async fn tokens_in(&self, bucket: &str, minute: u64) -> Result<u64, StoreError> {
        Ok(self.local.tokens_in(bucket, minute))
    }

    async fn add_tokens(&self, bucket: &str, minute: u64, tokens: u64) -> Result<(), StoreError> {
        self.local.add_tokens(bucket, minute, tokens);
        Ok(())
    }

    async fn acquire(
        &self,
        bucket: &str,
        limit: u32,
        lease: &str,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.local.acquire(bucket, limit, lease))
    }

    async fn give_back(&self, bucket: &str, lease: &str) -> Result<(), StoreError> {
        self.local.give_back(bucket, lease);
        Ok(())
    }

    fn give_back_now(&self, bucket: &str, lease: &str) -> bool {
        self.local.give_back(bucket, lease);
        true
    }

    async fn count_day(
        &self,
        caller: &str,
        host: &str,
        day: u64,
        per_day: u32,
    ) -> Result<bool, StoreError> {
        let (caller, host) = (caller.to_string(), host.to_string());
        let day = i64::try_from(day).unwrap_or(i64::MAX);
        self.call(move |c| {
            write(c, |tx| {
                // Yesterday's counts are no longer needed.
                tx.execute("DELETE FROM day_counts WHERE day < ?1", [day])
                    .map_err(unavailable)?;
                let n = tx
                    .execute(
                        "INSERT INTO day_counts(day, caller, host, n) VALUES (?1, ?2, ?3, 1)
                         ON CONFLICT(day, caller, host) DO UPDATE SET n = n + 1 WHERE n < ?4",
                        params![day, caller, host, per_day],
                    )
                    .map_err(unavailable)?;
                Ok(n == 1 && per_day > 0)
            })
        })
        .await
    }
}
