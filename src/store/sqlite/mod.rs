//! The embedded store: one SQLite file (WAL), for a single detour instance.
//!
//! Keys, balances and the ledger are rows; every change is one `IMMEDIATE` transaction, so a
//! `kill -9` leaves each change whole or absent, and `synchronous=NORMAL` in WAL mode keeps
//! every committed transaction across a process crash. Reads and key changes run on tokio's
//! blocking pool (`spawn_blocking`), never on Pingora's worker threads.
//!
//! The request path does no I/O here: holds and the balances they are checked against are
//! in process ([`purse`]), debits are committed by one ledger thread in batches, and rate
//! limits, token-per-minute counts and concurrency slots are in-process counters
//! ([`super::local`]). This backend serves one instance; those need no durability, and a
//! crash releases every hold by forgetting it.

mod purse;
mod rows;

use super::local::Local;
use super::{
    Charge, Key, KeyChange, KeyView, LedgerEntry, Micros, NewKey, Rate, Reserve, Store, StoreError,
    UsageRow,
};
use async_trait::async_trait;
use purse::{Op, Purse};
use rows::{unavailable, write};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct SqliteStore {
    conn: Arc<Lazy>,
    /// The file, for work done before the fork on a connection of its own (`recover`).
    path: std::path::PathBuf,
    local: Local,
    purse: Purse,
}

/// The store's connection, opened at its first use: `-d` forks after start-up, and a SQLite
/// connection must not cross a fork (its locks stay with the parent; another process can then
/// take the file's WAL from under it). A connection given ready-made (tests) is used as it is.
pub struct Lazy {
    path: Option<std::path::PathBuf>,
    conn: std::sync::OnceLock<Result<Mutex<Connection>, String>>,
}

impl Lazy {
    pub fn at(path: &Path) -> Lazy {
        Lazy {
            path: Some(path.to_path_buf()),
            conn: std::sync::OnceLock::new(),
        }
    }

    pub fn ready(c: Connection) -> Lazy {
        let l = Lazy {
            path: None,
            conn: std::sync::OnceLock::new(),
        };
        let _ = l.conn.set(Ok(Mutex::new(c)));
        l
    }

    pub fn get(&self) -> Result<&Mutex<Connection>, StoreError> {
        let c = self.conn.get_or_init(|| match &self.path {
            Some(p) => connect(p).map(Mutex::new).map_err(|e| e.to_string()),
            None => Err("no database".into()),
        });
        c.as_ref().map_err(|e| StoreError::Unavailable(e.clone()))
    }
}

/// Open (or create) the database file and its tables.
fn connect(path: &Path) -> Result<Connection, StoreError> {
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
    conn.execute_batch(rows::SCHEMA).map_err(unavailable)?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (or create) the database file and its tables; the connection that serves is
    /// opened at first use ([`Lazy`]).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        drop(connect(path)?);
        let conn = Arc::new(Lazy::at(path));
        Ok(SqliteStore {
            purse: Purse::start(conn.clone())?,
            path: path.to_path_buf(),
            conn,
            local: Local::default(),
        })
    }

    /// A key's view with its holds, which are in process.
    fn with_holds(&self, mut v: KeyView) -> KeyView {
        v.reserved = self.purse.reserved(&v.id);
        v
    }

    /// Run `f` on the connection, on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = conn.get()?.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        })
        .await
        .map_err(unavailable)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Every debit, top-up and record queued to the ledger thread, committed.
    async fn flush(&self) -> Result<(), StoreError> {
        self.purse.barrier().await
    }

    /// Holds are not rows: none outlive the process. A file written by an older version may
    /// still have reservations; they are released.
    /// At start-up, before `-d`'s fork: on a connection of its own, closed before it returns.
    async fn recover(&self) -> Result<u64, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = connect(&path)?;
            write(&mut c, |tx| {
                let n = tx
                    .execute("DELETE FROM reservations", [])
                    .map_err(unavailable)?;
                tx.execute("UPDATE keys SET reserved = 0 WHERE reserved <> 0", [])
                    .map_err(unavailable)?;
                Ok(n as u64)
            })
        })
        .await
        .map_err(unavailable)?
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
        self.call(move |c| rows::key_by_hash(c, hash)).await
    }

    async fn key(&self, id: &str) -> Result<Option<KeyView>, StoreError> {
        self.purse.barrier().await?;
        let key = id.to_string();
        let view = self.call(move |c| rows::view(c, &key)).await?;
        Ok(view.map(|v| self.with_holds(v)))
    }

    async fn keys(&self) -> Result<Vec<KeyView>, StoreError> {
        self.purse.barrier().await?;
        self.call(|c| {
            let mut st = c
                .prepare("SELECT id FROM keys ORDER BY created, id")
                .map_err(unavailable)?;
            let ids: Vec<String> = st
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(unavailable)?;
            ids.iter()
                .filter_map(|id| rows::view(c, id).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map(|vs| vs.into_iter().map(|v| self.with_holds(v)).collect())
    }

    async fn change_key(&self, id: &str, ch: KeyChange) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| write(c, |tx| rows::change(tx, &id, ch)))
            .await
    }

    async fn top_up(&self, id: &str, amount: Micros, note: &str) -> Result<Micros, StoreError> {
        let op = Op::TopUp {
            amount,
            note: note.to_string(),
        };
        self.purse.write(id, op).await
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
        if !self.purse.knows(id) {
            let key = id.to_string();
            let balance = self.call(move |c| rows::balance(c, &key)).await?;
            self.purse.load(id, balance.ok_or(StoreError::NoSuchKey)?);
        }
        match self.purse.hold(id, amount, credit_limit) {
            // Another process (the CLI) may have topped the key up: read it again, once.
            Some(Reserve::Short { .. }) => {
                self.purse.write(id, Op::Refresh).await?;
                self.purse.hold(id, amount, credit_limit)
            }
            r => r,
        }
        .ok_or(StoreError::NoSuchKey)
    }

    async fn settle(&self, id: &str, reservation: u64, charge: &Charge) -> Result<(), StoreError> {
        let Some(amount) = self.purse.close(id, reservation, Some(charge.cost)) else {
            return Ok(());
        };
        let charge = charge.clone();
        self.purse.queue(id, Op::Debit { amount, charge })
    }

    async fn release(&self, id: &str, reservation: u64) -> Result<(), StoreError> {
        self.purse.close(id, reservation, None);
        Ok(())
    }

    async fn record(&self, id: &str, charge: &Charge) -> Result<(), StoreError> {
        self.purse.queue(id, Op::Record(charge.clone()))
    }

    async fn ledger(&self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.purse.barrier().await?;
        let id = id.to_string();
        self.call(move |c| rows::ledger(c, &id, limit)).await
    }

    async fn usage(&self, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError> {
        self.purse.barrier().await?;
        let id = id.to_string();
        self.call(move |c| rows::usage(c, &id, days)).await
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("detour-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("detour.db")
    }

    async fn key(s: &SqliteStore, id: &str) {
        let k = NewKey {
            id: id.into(),
            name: id.into(),
            hash: {
                let mut h = [0u8; 32];
                h[..id.len()].copy_from_slice(id.as_bytes());
                h
            },
            policy: Default::default(),
            created: 0,
        };
        s.create_key(k).await.unwrap();
    }

    fn charge(cost: Micros) -> Charge {
        Charge {
            request_id: "r".into(),
            provider: "p".into(),
            model: "m".into(),
            input_tokens: 1,
            output_tokens: 1,
            cost,
        }
    }

    #[tokio::test]
    async fn a_policy_that_does_not_parse_refuses_the_key_rather_than_lift_its_limits() {
        let path = file("policy");
        let s = SqliteStore::open(&path).unwrap();
        key(&s, "k").await;
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            r#"UPDATE keys SET policy = '{"rpm": 5, "from-a-newer-version": 1}'"#,
            [],
        )
        .unwrap();
        let mut hash = [0u8; 32];
        hash[0] = b'k';
        assert!(matches!(
            s.key_by_hash(hash).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(s.key("k").await, Err(StoreError::Unavailable(_))));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_top_up_by_another_process_is_seen_before_a_hold_is_refused() {
        let path = file("topup");
        let gw = SqliteStore::open(&path).unwrap();
        key(&gw, "k").await;
        assert!(matches!(
            gw.reserve("k", 10, 0).await,
            Ok(Reserve::Short { available: 0 })
        ));
        // The CLI: another store on the same file.
        let cli = SqliteStore::open(&path).unwrap();
        assert_eq!(cli.top_up("k", 100, "cli").await, Ok(100));
        let Ok(Reserve::Held(h)) = gw.reserve("k", 60, 0).await else {
            panic!("the top-up is seen")
        };
        gw.settle("k", h, &charge(25)).await.unwrap();
        // A settle does not wait for its write; the gateway's own reads do.
        assert_eq!(gw.key("k").await.unwrap().unwrap().balance, 75);
        assert_eq!(
            cli.key("k").await.unwrap().unwrap().balance,
            75,
            "in the file"
        );
        assert!(matches!(
            gw.reserve("k", 80, 0).await,
            Ok(Reserve::Short { available: 75 })
        ));
        assert_eq!(gw.reserve("nobody", 1, 0).await, Err(StoreError::NoSuchKey));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn debits_settled_at_once_are_all_written_and_never_overspend() {
        let path = file("burst");
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        key(&s, "k").await;
        s.top_up("k", 1000, "").await.unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(Reserve::Held(h)) = s.reserve("k", 10, 0).await else {
                        return 0;
                    };
                    s.settle("k", h, &charge(7 + i % 5)).await.unwrap();
                    1
                })
            })
            .collect();
        let mut served = 0;
        for t in tasks {
            served += t.await.unwrap();
        }
        assert!(
            served >= 100,
            "{served} holds of 10 from 1000, settled at 7 to 10 each"
        );
        let v = s.key("k").await.unwrap().unwrap();
        let ledger = s.ledger("k", 1000).await.unwrap();
        assert_eq!(ledger.iter().filter(|e| e.kind == "debit").count(), served);
        assert_eq!(ledger.iter().map(|e| e.amount).sum::<Micros>(), v.balance);
        assert!(v.balance >= 0, "{}", v.balance);
        assert_eq!(v.reserved, 0);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
