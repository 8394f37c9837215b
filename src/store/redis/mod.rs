//! The shared store: one Redis (a standalone server or a primary) behind many detour instances.
//!
//! Layout, every key under `detour:`:
//! - `key:{id}` hash: `name`, `policy` (JSON), `disabled`/`revoked` (`0`/`1`), `created` (Unix
//!   s), `balance` and `reserved` (integer µ$), `hash` (hex of the secret's hash); `byok:{id}`
//!   hash: provider → sealed credentials; `keyhash:{hex}` → id (gone once revoked); `keys`: the
//!   set of every id.
//! - `res:{id}` hash: reservation number (`INCR resseq`) → `{amount}:{lease expiry, Unix ms}`.
//! - `ledger:{id}` stream (fields as [`LedgerEntry`], `seq` from `INCR ledgerseq:{id}`);
//!   `usage:{id}:{YYYY-MM-DD}` hash: `{provider}\x1f{model}\x1f{metric}` → total, kept by the
//!   scripts that write the ledger (metrics: requests, input, output, cost, billed).
//! - `rate:{bucket}` (GCRA arrival time, µs), `tpm:{bucket}:{minute}` (tokens), `conc:{bucket}`
//!   (sorted set: lease → expiry, ms), `day:{day}:{len(caller)}:{caller}:{host}` (a count).
//!
//! Every change to more than one key is one Lua script (EVALSHA, loaded on first use), so two
//! instances never interleave. Scripts derive key names from ids they read, so every key must
//! live on one node: Redis Cluster is not supported. Every call is bounded by [`CALL_TIMEOUT`];
//! any failure is [`StoreError::Unavailable`], never with the URL (it may hold a password).

use super::{
    Charge, Key, KeyChange, KeyPolicy, KeyView, LedgerEntry, Micros, NewKey, Rate, Reserve, Store,
    StoreError, UsageRow,
};
use crate::text::hex;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, RedisError, Script, ScriptInvocation, Value};
use async_trait::async_trait;
use scripts::*;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

mod changes;
mod scripts;

/// The prefix of every key this store writes.
const PREFIX: &str = "detour:";
/// How long one call may take before the store counts as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting (with the client's own retries) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reservation stays held without being settled or released. One whose lease has
/// passed is taken to belong to a crashed instance: the key's next `reserve` and any instance's
/// `recover` release it, so one instance's restart never releases another live instance's
/// reservations. The price: a request running longer than this loses its hold, and settling it
/// then debits nothing (as for any reservation already closed).
pub const RESERVATION_LEASE: Duration = Duration::from_secs(15 * 60);

/// The store on Redis. Clones share one multiplexed, self-reconnecting connection and one
/// listener for key changes.
#[derive(Clone)]
pub struct RedisStore {
    client: ::redis::Client,
    /// The process that made `first`. The connection's driver and the listener are tasks of
    /// the runtime they were made on, whose threads a fork (`-d`, after start-up) does not
    /// take along: a forked child makes its own, at its first use, on its own runtime.
    pid: u32,
    first: Conn,
    forked: std::sync::Arc<tokio::sync::OnceCell<Conn>>,
}

/// A connection and the key-change listener.
#[derive(Clone)]
struct Conn {
    con: ConnectionManager,
    changes: std::sync::Arc<changes::Changes>,
}

impl Conn {
    /// Not reached within [`CONNECT_TIMEOUT`]: `Unavailable`.
    async fn open(client: &::redis::Client) -> Result<Conn, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let con = ConnectionManager::new_with_config(client.clone(), config);
        let con = within(CONNECT_TIMEOUT, con).await?;
        Ok(Conn {
            con,
            changes: changes::Changes::listen(client.clone()).await?,
        })
    }
}

impl RedisStore {
    /// Connect to the Redis at `url` (`redis://[:password@]host[:port][/db]` or
    /// `redis+unix:///path`); not reached within [`CONNECT_TIMEOUT`]: `Unavailable`.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = ::redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("the Redis URL is not usable: {e}")))?;
        Ok(RedisStore {
            first: Conn::open(&client).await?,
            client,
            pid: std::process::id(),
            forked: Default::default(),
        })
    }

    /// This process's connection if it has one: the first, or a forked child's own once made.
    fn current(&self) -> Option<&Conn> {
        if std::process::id() == self.pid {
            Some(&self.first)
        } else {
            self.forked.get()
        }
    }

    /// This process's connection, made now in a forked child that has none yet.
    async fn conn(&self) -> Result<&Conn, StoreError> {
        match self.current() {
            Some(c) => Ok(c),
            None => {
                let open = || Conn::open(&self.client);
                self.forked.get_or_try_init(open).await
            }
        }
    }

    /// Tell every instance (this one too) that key `id` changed. The change itself is made;
    /// when the announcement fails, other instances see it after their cache's TTL.
    async fn announce(&self, id: &str) {
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(changes::CHANNEL).arg(id);
        if let Err(e) = self.query(&cmd).await {
            tracing::warn!(error = %e, "a key change was not announced to other instances");
        }
    }

    /// Run a prepared script.
    async fn run(&self, inv: &ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut con = self.conn().await?.con.clone();
        within(CALL_TIMEOUT, inv.invoke_async::<Value>(&mut con)).await
    }

    /// Run one command.
    async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        let mut con = self.conn().await?.con.clone();
        within(CALL_TIMEOUT, cmd.query_async::<Value>(&mut con)).await
    }

    /// Key views for `ids`, or for every key when `ids` is empty.
    async fn views(&self, ids: &[&str]) -> Result<Vec<KeyView>, StoreError> {
        let mut inv = READ.prepare_invoke();
        inv.key(k(&["keys"])).arg(PREFIX).arg(ids);
        items(self.run(&inv).await?).into_iter().map(view).collect()
    }
}

/// `fut`, or `Unavailable` if it fails or takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
        Err(_) => Err(StoreError::Unavailable(format!(
            "Redis did not answer within {limit:?}"
        ))),
    }
}

/// A key name: the prefix, then `parts` joined by `:`.
fn k(parts: &[&str]) -> String {
    format!("{PREFIX}{}", parts.join(":"))
}

/// An invocation of `script` whose keys are `names` of the key `id` (`key:{id}`, ...).
fn of_key<'a>(script: &'a Script, id: &str, names: &[&str]) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for &name in names {
        inv.key(k(&[name, id]));
    }
    inv
}

/// The error for a reply no script here gives.
fn odd(what: &str) -> StoreError {
    StoreError::Unavailable(format!("Redis gave an unexpected answer to {what}"))
}

/// The elements of an array (a map's keys and values, flattened); nothing for anything else.
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A string reply's bytes (an integer's digits); empty for anything else.
fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// A string reply as text.
fn text(v: Value) -> String {
    String::from_utf8_lossy(&bytes(v)).into_owned()
}

/// Decimal digits as an integer; 0 if they are not one.
fn parse(b: &[u8]) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An integer reply (or a string of digits); 0 for anything else.
fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => parse(b),
        Value::SimpleString(s) => parse(s.as_bytes()),
        _ => 0,
    }
}

/// An array reply's integers.
fn ints(v: Value) -> Vec<i64> {
    items(v).iter().map(int).collect()
}

/// A hash's fields (HGETALL's flat list, or a RESP3 map).
fn fields(v: Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let mut it = items(v).into_iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        out.insert(text(f), bytes(v));
    }
    out
}

/// A field as text (empty if absent).
fn field(f: &HashMap<String, Vec<u8>>, name: &str) -> String {
    f.get(name)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// A field as an integer (0 if absent or not one).
fn num(f: &HashMap<String, Vec<u8>>, name: &str) -> i64 {
    f.get(name).map_or(0, |b| parse(b))
}

/// A field as a count (0 if absent, negative or not a number).
fn count(f: &HashMap<String, Vec<u8>>, name: &str) -> u64 {
    u64::try_from(num(f, name)).unwrap_or(0)
}

/// A `0`/`1` field.
fn flag(f: &HashMap<String, Vec<u8>>, name: &str) -> bool {
    f.get(name).is_some_and(|b| b.as_slice() == b"1")
}

/// A key record's policy. One that does not parse fails the call (closed) rather than serve the
/// key with no limits.
fn policy_of(rec: &HashMap<String, Vec<u8>>) -> Result<KeyPolicy, StoreError> {
    let raw = rec.get("policy").map_or(&b"{}"[..], Vec::as_slice);
    serde_json::from_slice(raw)
        .map_err(|e| StoreError::Unavailable(format!("a key's stored policy does not parse: {e}")))
}

/// A policy as stored.
fn policy_json(p: &KeyPolicy) -> Result<String, StoreError> {
    serde_json::to_string(p)
        .map_err(|e| StoreError::Invalid(format!("the policy does not serialize: {e}")))
}

/// One `{id, record, byok providers}` from `READ`.
fn view(entry: Value) -> Result<KeyView, StoreError> {
    let mut it = items(entry).into_iter();
    let id = text(it.next().unwrap_or_default());
    let rec = fields(it.next().unwrap_or_default());
    let mut byok_providers: Vec<String> = items(it.next().unwrap_or_default())
        .into_iter()
        .map(text)
        .collect();
    byok_providers.sort();
    Ok(KeyView {
        id,
        name: field(&rec, "name"),
        policy: policy_of(&rec)?,
        disabled: flag(&rec, "disabled"),
        revoked: flag(&rec, "revoked"),
        created: num(&rec, "created"),
        balance: num(&rec, "balance"),
        reserved: num(&rec, "reserved"),
        byok_providers,
    })
}

/// One stream entry (`[stream id, [field, value, ...]]`) as a ledger row.
fn ledger_entry(entry: Value) -> LedgerEntry {
    let f = fields(items(entry).into_iter().nth(1).unwrap_or_default());
    LedgerEntry {
        seq: num(&f, "seq"),
        at: num(&f, "at"),
        kind: field(&f, "kind"),
        amount: num(&f, "amount"),
        cost: num(&f, "cost"),
        provider: field(&f, "provider"),
        model: field(&f, "model"),
        input_tokens: count(&f, "input_tokens"),
        output_tokens: count(&f, "output_tokens"),
        request_id: field(&f, "request_id"),
        note: field(&f, "note"),
    }
}

/// One day's usage rows, by provider and model, from its `{provider}\x1f{model}\x1f{metric}`
/// totals.
fn usage_rows(day: &str, totals: HashMap<String, Vec<u8>>) -> impl Iterator<Item = UsageRow> {
    let mut rows: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
    for (name, n) in totals {
        let Some((pm, metric)) = name.rsplit_once('\x1f') else {
            continue;
        };
        let (provider, model) = pm.split_once('\x1f').unwrap_or((pm, ""));
        let key = (provider.to_string(), model.to_string());
        let row = rows.entry(key).or_insert_with(|| UsageRow {
            day: day.to_string(),
            provider: provider.to_string(),
            model: model.to_string(),
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost: 0,
            billed: 0,
        });
        let value = parse(&n);
        let total = u64::try_from(value).unwrap_or(0);
        match metric {
            "requests" => row.requests = total,
            "input" => row.input_tokens = total,
            "output" => row.output_tokens = total,
            "cost" => row.cost = value,
            "billed" => row.billed = value,
            _ => {}
        }
    }
    rows.into_values()
}

/// A charge's provider, model, tokens and request id, as script arguments.
fn charge_args(c: &Charge) -> (&str, &str, u64, u64, &str) {
    let tokens = |t: u64| t.min(i64::MAX.unsigned_abs());
    let (input, output) = (tokens(c.input_tokens), tokens(c.output_tokens));
    (&c.provider, &c.model, input, output, &c.request_id)
}

#[async_trait]
impl Store for RedisStore {
    fn generation(&self) -> u64 {
        // A forked child without its own connection yet has seen no change announced.
        self.current().unwrap_or(&self.first).changes.generation()
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    /// Release the reservations whose lease ([`RESERVATION_LEASE`]) has passed: a crashed
    /// instance's. Live instances' reservations stay. Returns how many were released.
    async fn recover(&self) -> Result<u64, StoreError> {
        let mut inv = RECOVER.prepare_invoke();
        inv.key(k(&["keys"])).arg((PREFIX, super::now_ms()));
        Ok(u64::try_from(int(&self.run(&inv).await?)).unwrap_or(0))
    }

    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        let hash = hex(&key.hash);
        let mut inv = CREATE.prepare_invoke();
        inv.key((k(&["key", &key.id]), k(&["keyhash", &hash]), k(&["keys"])));
        let policy = policy_json(&key.policy)?;
        inv.arg((&key.id, &key.name, policy, key.created, &hash));
        let taken = || StoreError::Invalid("a key with this id or secret exists".into());
        match int(&self.run(&inv).await?) {
            0 => {
                // An instance may have cached this secret as unknown.
                self.announce(&key.id).await;
                Ok(())
            }
            1 | 2 => Err(taken()),
            _ => Err(odd("create_key")),
        }
    }

    async fn key_by_hash(&self, hash: [u8; 32]) -> Result<Option<Key>, StoreError> {
        let mut inv = BY_HASH.prepare_invoke();
        inv.key(k(&["keyhash", &hex(&hash)])).arg(PREFIX);
        let mut it = items(self.run(&inv).await?).into_iter();
        let (Some(id), Some(rec), Some(byok)) = (it.next(), it.next(), it.next()) else {
            return Ok(None);
        };
        let rec = fields(rec);
        if flag(&rec, "revoked") {
            return Ok(None);
        }
        Ok(Some(Key {
            id: text(id),
            name: field(&rec, "name"),
            policy: policy_of(&rec)?,
            disabled: flag(&rec, "disabled"),
            byok: fields(byok).into_iter().collect(),
        }))
    }

    async fn key(&self, id: &str) -> Result<Option<KeyView>, StoreError> {
        Ok(self.views(&[id]).await?.into_iter().next())
    }

    async fn keys(&self) -> Result<Vec<KeyView>, StoreError> {
        let mut all = self.views(&[]).await?;
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(all)
    }

    async fn change_key(&self, id: &str, change: KeyChange) -> Result<(), StoreError> {
        let policy = change.policy.as_ref().map(policy_json).transpose()?;
        let disabled = change.disabled.map_or("", |d| if d { "1" } else { "0" });
        let (op, provider, sealed) = match change.byok {
            Some((p, Some(sealed))) => ("set", p, sealed),
            Some((p, None)) => ("del", p, Vec::new()),
            None => ("", String::new(), Vec::new()),
        };
        let name = (change.name.is_some(), change.name.unwrap_or_default());
        let policy = (policy.is_some(), policy.unwrap_or_default());
        let mut inv = of_key(&CHANGE, id, &["key", "byok"]);
        inv.arg((PREFIX, id, name, policy, disabled))
            .arg((change.revoke, op, provider, sealed));
        match int(&self.run(&inv).await?) {
            0 => {
                self.announce(id).await;
                Ok(())
            }
            1 => Err(StoreError::NoSuchKey),
            _ => Err(odd("change_key")),
        }
    }

    async fn top_up(&self, id: &str, amount: Micros, note: &str) -> Result<Micros, StoreError> {
        let mut inv = of_key(&TOP_UP, id, &["key", "ledger", "ledgerseq"]);
        inv.arg((amount, super::now_ms(), note));
        match ints(self.run(&inv).await?).as_slice() {
            [1, balance] => Ok(*balance),
            [0] => Err(StoreError::NoSuchKey),
            _ => Err(odd("top_up")),
        }
    }

    /// Hold `amount` under a lease of [`RESERVATION_LEASE`], after releasing the key's
    /// reservations whose lease has passed. A negative credit limit counts as 0.
    async fn reserve(
        &self,
        id: &str,
        amount: Micros,
        credit_limit: Micros,
    ) -> Result<Reserve, StoreError> {
        if amount < 0 {
            return Err(StoreError::Invalid("a reservation is not negative".into()));
        }
        let now = super::now_ms();
        let lease = i64::try_from(RESERVATION_LEASE.as_millis()).unwrap_or(i64::MAX);
        let mut inv = of_key(&RESERVE, id, &["key", "res"]);
        inv.key(k(&["resseq"]));
        inv.arg((amount, credit_limit.max(0), now, now.saturating_add(lease)));
        match ints(self.run(&inv).await?).as_slice() {
            [1, n] => Ok(Reserve::Held(u64::try_from(*n).unwrap_or(0))),
            [2, available] => Ok(Reserve::Short {
                available: *available,
            }),
            [0] => Err(StoreError::NoSuchKey),
            _ => Err(odd("reserve")),
        }
    }

    /// Debit `charge.cost` (clamped to 0..=held) and close the reservation, with a `debit`
    /// ledger row and the day's usage. A reservation no longer open (already settled or
    /// released, its lease passed, or its key gone) changes nothing: `Ok` without a debit, so
    /// a retried settle never debits twice.
    async fn settle(&self, id: &str, reservation: u64, charge: &Charge) -> Result<(), StoreError> {
        let now = super::now_ms();
        let day = super::day_of(now.div_euclid(1000));
        let mut inv = of_key(&SETTLE, id, &["key", "res", "ledger", "ledgerseq"]);
        inv.key(k(&["usage", id, &day]))
            .arg((reservation, now, charge.cost))
            .arg(charge_args(charge));
        self.run(&inv).await.map(drop)
    }

    /// Close a reservation without a debit; one no longer open changes nothing.
    async fn release(&self, id: &str, reservation: u64) -> Result<(), StoreError> {
        let mut inv = of_key(&RELEASE, id, &["key", "res"]);
        inv.arg(reservation);
        self.run(&inv).await.map(drop)
    }

    async fn record(&self, id: &str, charge: &Charge) -> Result<(), StoreError> {
        let now = super::now_ms();
        let day = super::day_of(now.div_euclid(1000));
        let mut inv = of_key(&RECORD, id, &["key", "ledger", "ledgerseq"]);
        inv.key(k(&["usage", id, &day]))
            .arg((now, charge.cost))
            .arg(charge_args(charge));
        match int(&self.run(&inv).await?) {
            1 => Ok(()),
            0 => Err(StoreError::NoSuchKey),
            _ => Err(odd("record")),
        }
    }

    async fn ledger(&self, id: &str, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = ::redis::cmd("XREVRANGE");
        cmd.arg((k(&["ledger", id]), "+", "-", "COUNT", limit));
        let entries = items(self.query(&cmd).await?);
        Ok(entries.into_iter().map(ledger_entry).collect())
    }

    /// From the per-day totals the ledger-writing scripts keep, for today and the `days - 1`
    /// UTC days before it (at most ten years).
    async fn usage(&self, id: &str, days: u32) -> Result<Vec<UsageRow>, StoreError> {
        let today = super::now_ms().div_euclid(86_400_000);
        let dates: Vec<String> = (0..i64::from(days.min(3660)))
            .rev()
            .map(|back| super::day_of((today - back) * 86_400))
            .collect();
        if dates.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = HGETALLS.prepare_invoke();
        for date in &dates {
            inv.key(k(&["usage", id, date]));
        }
        let totals = items(self.run(&inv).await?);
        let by_day = dates.iter().zip(totals);
        Ok(by_day.flat_map(|(d, t)| usage_rows(d, fields(t))).collect())
    }

    async fn rate(&self, bucket: &str, per_minute: u32, now_us: u64) -> Result<Rate, StoreError> {
        let per_minute = u64::from(per_minute.max(1));
        let interval = 60_000_000 / per_minute;
        let mut inv = RATE.prepare_invoke();
        inv.key(k(&["rate", bucket]))
            .arg((now_us, interval, interval * (per_minute - 1)));
        match ints(self.run(&inv).await?).as_slice() {
            [1, _] => Ok(Rate::Allowed),
            [0, wait] => Ok(Rate::Limited {
                retry_after: Duration::from_micros(u64::try_from(*wait).unwrap_or(0)),
            }),
            _ => Err(odd("rate")),
        }
    }

    async fn tokens_in(&self, bucket: &str, minute: u64) -> Result<u64, StoreError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(k(&["tpm", bucket, &minute.to_string()]));
        Ok(u64::try_from(int(&self.query(&cmd).await?)).unwrap_or(0))
    }

    async fn add_tokens(&self, bucket: &str, minute: u64, tokens: u64) -> Result<(), StoreError> {
        let mut inv = ADD_TOKENS.prepare_invoke();
        inv.key(k(&["tpm", bucket, &minute.to_string()]))
            .arg(tokens.min(i64::MAX.unsigned_abs()));
        self.run(&inv).await.map(drop)
    }

    /// A slot is a member of a sorted set scored by its expiry; expired ones are dropped
    /// first. Acquiring a lease already held renews it.
    async fn acquire(
        &self,
        bucket: &str,
        limit: u32,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut inv = ACQUIRE.prepare_invoke();
        inv.key(k(&["conc", bucket]))
            .arg((super::now_ms(), ttl_ms, limit, lease));
        Ok(int(&self.run(&inv).await?) == 1)
    }

    async fn give_back(&self, bucket: &str, lease: &str) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg((k(&["conc", bucket]), lease));
        self.query(&cmd).await.map(drop)
    }

    /// The count lives two days under `day:{day}:{len(caller)}:{caller}:{host}` (the length
    /// keeps a `:` in a caller from making two caller–host pairs one).
    async fn count_day(
        &self,
        caller: &str,
        host: &str,
        day: u64,
        per_day: u32,
    ) -> Result<bool, StoreError> {
        let (day, len) = (day.to_string(), caller.len().to_string());
        let mut inv = COUNT_DAY.prepare_invoke();
        inv.key(k(&["day", &day, &len, caller, host])).arg(per_day);
        Ok(int(&self.run(&inv).await?) == 1)
    }
}
