//! The store: gateway keys, their balances, reservations (escrow) and ledger, and the counters
//! that must hold across requests (rate limits, concurrency, the header mode's day counts).
//!
//! One interface, [`Store`], two backends: [`sqlite::SqliteStore`] (embedded, the default: one
//! instance) and [`redis::RedisStore`] (many instances on one Redis). Money is integer
//! micro-dollars ([`Micros`]); a key's balance is always the sum of its ledger. Nothing here
//! knows about requests or providers beyond their names: `auth/` decides, the store counts.
//!
//! Every method may fail with [`StoreError::Unavailable`]; callers decide what that means
//! (PTB refused, limits open, see the README). No method is ever handed or returns a
//! plaintext provider credential: BYOK credentials are sealed by `auth/` before they get here.

mod local;
pub mod redis;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Money: millionths of a US dollar. A price in USD per million tokens is micro-dollars per
/// token.
pub type Micros = i64;

/// What a key may do. Stored as JSON; every field has a default, so older rows stay readable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct KeyPolicy {
    /// Model patterns the key may use (`gpt-4o`, `claude-*`); empty: any.
    pub models: Vec<String>,
    /// Provider patterns the key may use; empty: any.
    pub providers: Vec<String>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion, as reported) per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
    /// How far below zero the balance may go, in micro-dollars.
    pub credit_limit: Micros,
    /// Whether the operator's credentials may serve this key (billed to its credits).
    pub ptb: Option<bool>,
    /// `provider/model` or `provider/*` entries never served on the operator's credentials.
    pub ptb_deny: Vec<String>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
}

impl KeyPolicy {
    pub fn ptb_allowed(&self) -> bool {
        self.ptb.unwrap_or(true)
    }
}

/// A key as the gateway uses it: its policy and its sealed BYOK credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub policy: KeyPolicy,
    pub disabled: bool,
    /// Provider name → credentials sealed by `auth::seal` (never plaintext).
    pub byok: BTreeMap<String, Vec<u8>>,
}

/// A key as the admin API shows it: never its hash, never a credential.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub policy: KeyPolicy,
    pub disabled: bool,
    pub revoked: bool,
    /// Unix seconds.
    pub created: i64,
    pub balance: Micros,
    /// Held by open reservations.
    pub reserved: Micros,
    /// Providers the key holds its own credentials for.
    pub byok_providers: Vec<String>,
}

/// A new key: its id, name, policy and the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub hash: [u8; 32],
    pub policy: KeyPolicy,
    pub created: i64,
}

/// A change to a key; `None` fields stay.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    pub name: Option<String>,
    pub policy: Option<KeyPolicy>,
    pub disabled: Option<bool>,
    /// Revoked keys are refused for good (their rows stay for the ledger).
    pub revoke: bool,
    /// Set (`Some`) or remove (`None`) one provider's sealed credentials.
    pub byok: Option<(String, Option<Vec<u8>>)>,
}

/// One attempt's cost: what it used and what it cost at the catalog's prices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    pub request_id: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// `top-up`, `debit` (PTB, billed) or `byok` (recorded, not billed).
    pub kind: String,
    /// What it changed the balance by (0 for `byok`).
    pub amount: Micros,
    /// What the usage cost at the catalog's prices.
    pub cost: Micros,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub request_id: String,
    pub note: String,
}

/// Usage of one key on one UTC day, provider and model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// At the catalog's prices, BYOK included.
    pub cost: Micros,
    /// Debited from the balance (PTB only).
    pub billed: Micros,
}

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Held: settle or release it by this id.
    Held(u64),
    /// It does not fit: what was available (balance − reserved + credit limit).
    Short { available: Micros },
}

/// The answer to a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The store could not be reached or failed; the message is for the log.
    Unavailable(String),
    /// A write that names a key that does not exist.
    NoSuchKey,
    /// Input the store refuses (a duplicate id, a bad amount).
    Invalid(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "the store is unavailable: {m}"),
            StoreError::NoSuchKey => f.write_str("no such key"),
            StoreError::Invalid(m) => f.write_str(m),
        }
    }
}

/// The gateway's state. Methods are atomic: two instances on one backend (Redis) never see a
/// half-done change, and a crash leaves either all of a change or none of it.
#[async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `redis`, for metrics and logs.
    fn backend(&self) -> &'static str;

    /// A number that changes when a key may have been changed by another instance: a key
    /// cached under an older generation is looked up again. Constant for a store only this
    /// process changes.
    fn generation(&self) -> u64 {
        0
    }

    /// Write whatever is queued; at exit, once no request is left.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// At start-up: release every reservation a crash left open. Returns how many.
    async fn recover(&self) -> Result<u64, StoreError>;

    async fn create_key(&self, key: NewKey) -> Result<(), StoreError>;
    /// The live (not revoked) key whose secret hashes to `hash`.
    async fn key_by_hash(&self, hash: [u8; 32]) -> Result<Option<Key>, StoreError>;
    async fn key(&self, id: &str) -> Result<Option<KeyView>, StoreError>;
    async fn keys(&self) -> Result<Vec<KeyView>, StoreError>;
    async fn change_key(&self, id: &str, change: KeyChange) -> Result<(), StoreError>;

    /// Add credits (or take them back, negative); a `top-up` ledger row. Returns the balance.
    async fn top_up(&self, id: &str, amount: Micros, note: &str) -> Result<Micros, StoreError>;
    /// Hold `amount` if balance − reserved − amount stays ≥ −`credit_limit`.
    async fn reserve(
        &self,
        id: &str,
        amount: Micros,
        credit_limit: Micros,
    ) -> Result<Reserve, StoreError>;
    /// Close a reservation with a `debit` row of `charge.cost` (at most the amount held).
    async fn settle(&self, id: &str, reservation: u64, charge: &Charge) -> Result<(), StoreError>;
    /// Close a reservation without a debit.
    async fn release(&self, id: &str, reservation: u64) -> Result<(), StoreError>;
    /// A `byok` row: usage on the key's own credentials, recorded, not billed.
    async fn record(&self, id: &str, charge: &Charge) -> Result<(), StoreError>;
    /// The newest `limit` ledger rows, newest first.
    async fn ledger(&self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Usage per day, provider and model over the last `days` days.
    async fn usage(&self, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError>;

    /// Count one request against `per_minute` for `bucket` (GCRA: bursts of at most
    /// `per_minute`, then one every 60/`per_minute` s). `now_us`: µs since the epoch.
    async fn rate(&self, bucket: &str, per_minute: u32, now_us: u64) -> Result<Rate, StoreError>;
    /// Tokens `bucket` used in the minute `minute` (minutes since the epoch).
    async fn tokens_in(&self, bucket: &str, minute: u64) -> Result<u64, StoreError>;
    async fn add_tokens(&self, bucket: &str, minute: u64, tokens: u64) -> Result<(), StoreError>;
    /// Take one of `limit` slots for `bucket`; `lease` names it; a slot not given back (a
    /// crash) frees itself after `ttl`.
    async fn acquire(
        &self,
        bucket: &str,
        limit: u32,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    async fn give_back(&self, bucket: &str, lease: &str) -> Result<(), StoreError>;
    /// Give a slot back at once, when that needs no I/O (an in-process count): `true` when
    /// done, `false` when [`Store::give_back`] must be awaited instead.
    fn give_back_now(&self, _bucket: &str, _lease: &str) -> bool {
        false
    }
    /// The header mode's per-day count of `caller` to `host`: one more, unless `per_day`
    /// were already counted on `day` (days since the epoch).
    async fn count_day(
        &self,
        caller: &str,
        host: &str,
        day: u64,
        per_day: u32,
    ) -> Result<bool, StoreError>;
}

/// Where the store lives (config `store:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite(std::path::PathBuf),
    Redis(String),
}

/// Open the configured store.
pub async fn open(cfg: &StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match cfg {
        StoreConfig::Sqlite(path) => std::sync::Arc::new(sqlite::SqliteStore::open(path)?),
        StoreConfig::Redis(url) => std::sync::Arc::new(redis::RedisStore::connect(url).await?),
    })
}

/// The runtime store connections live on (a Redis connection's driver task), for the life of
/// the process: Pingora's services each run their own runtimes.
static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// Open the configured store from outside any runtime (at start-up, the command line); with
/// `recover` (the gateway's start), release the reservations a crash left open.
pub fn open_blocking(
    cfg: &StoreConfig,
    recover: bool,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let rt = match RUNTIME.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("detour-store")
                .enable_all()
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            RUNTIME.get_or_init(|| rt)
        }
    };
    rt.block_on(async {
        let store = open(cfg).await?;
        let n = if recover { store.recover().await? } else { 0 };
        if n > 0 {
            tracing::warn!(released = n, "released reservations a crash left open");
        }
        Ok(store)
    })
}

/// Run `fut` on the store's runtime (the command line).
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, StoreError> {
    RUNTIME
        .get()
        .map(|rt| rt.block_on(fut))
        .ok_or_else(|| StoreError::Unavailable("the store is not open".into()))
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time in seconds.
pub fn day_of(unix_s: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), exact for the proleptic Gregorian calendar.
    let z = unix_s.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(super::day_of(0), "1970-01-01");
        assert_eq!(super::day_of(86_399), "1970-01-01");
        assert_eq!(super::day_of(951_782_400), "2000-02-29");
        assert_eq!(super::day_of(1_795_996_800), "2026-11-30");
        assert_eq!(super::day_of(-1), "1969-12-31");
    }
}
