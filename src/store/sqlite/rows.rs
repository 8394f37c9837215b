//! The embedded store's rows: the schema and the statements, each inside the caller's
//! transaction or on its connection.

use crate::store::{
    Charge, Key, KeyChange, KeyPolicy, KeyView, LedgerEntry, Micros, StoreError, UsageRow,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub const SCHEMA: &str = "
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

pub fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `f` inside one `BEGIN IMMEDIATE` transaction, committed if it returns `Ok`.
pub fn write<T>(
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

/// A key row's policy. One that does not parse (a newer version's field, a hand edit) fails
/// the call, closed, as on Redis: read as the default it would lift every limit.
pub fn policy_of(text: &str) -> rusqlite::Result<KeyPolicy> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub fn ledger_row(
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
    tx.prepare_cached(
        "INSERT INTO ledger(key_id, at, kind, amount, cost, provider, model, input_tokens,
           output_tokens, request_id, note) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)",
    )
    .and_then(|mut st| {
        st.execute(params![
            id,
            crate::store::now_ms(),
            kind,
            amount,
            c.cost,
            c.provider,
            c.model,
            i64::try_from(c.input_tokens).unwrap_or(i64::MAX),
            i64::try_from(c.output_tokens).unwrap_or(i64::MAX),
            c.request_id,
            note
        ])
    })
    .map_err(unavailable)?;
    Ok(())
}

pub fn exists(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT 1 FROM keys WHERE id = ?1")
        .and_then(|mut st| st.query_row([id], |_| Ok(())).optional())
        .map(|r| r.is_some())
        .map_err(unavailable)
}

pub fn view(c: &Connection, id: &str) -> Result<Option<KeyView>, StoreError> {
    let row = c
        .query_row(
            "SELECT id, name, policy, disabled, revoked, created, balance, reserved
             FROM keys WHERE id = ?1",
            [id],
            |r| {
                Ok(KeyView {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    policy: policy_of(&r.get::<_, String>(2)?)?,
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

pub fn key_by_hash(c: &Connection, hash: [u8; 32]) -> Result<Option<Key>, StoreError> {
    let row = c
        .query_row(
            "SELECT id, name, policy, disabled FROM keys WHERE hash = ?1 AND revoked = 0",
            [&hash[..]],
            |r| {
                Ok(Key {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    policy: policy_of(&r.get::<_, String>(2)?)?,
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

pub fn change(tx: &rusqlite::Transaction<'_>, id: &str, ch: KeyChange) -> Result<(), StoreError> {
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

pub fn ledger(c: &Connection, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
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

pub fn usage(c: &Connection, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError> {
    let today = crate::store::now_ms().div_euclid(86_400_000);
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

/// Add `amount` (negative: take it) to a key's balance; the new balance, `None` when there is
/// no such key.
pub fn add_to_balance(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    amount: Micros,
) -> Result<Option<Micros>, StoreError> {
    tx.prepare_cached("UPDATE keys SET balance = balance + ?2 WHERE id = ?1 RETURNING balance")
        .and_then(|mut st| st.query_row(params![id, amount], |r| r.get(0)).optional())
        .map_err(unavailable)
}

pub fn balance(c: &Connection, id: &str) -> Result<Option<Micros>, StoreError> {
    c.prepare_cached("SELECT balance FROM keys WHERE id = ?1")
        .and_then(|mut st| st.query_row([id], |r| r.get(0)).optional())
        .map_err(unavailable)
}
