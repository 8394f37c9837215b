//! Gateway keys: who is calling, what they may do, and how each target is paid for.
//!
//! Runs in `request_filter` before anything is planned (`auth.required: true`): [`Keys::caller`]
//! finds the presented key (cached for `auth.key-cache-ttl`, or until the store announces a
//! change made by another instance), [`Keys::admit`] applies its rate, token and concurrency
//! limits. Both refusals end the request (no fallback). Planning then asks
//! the caller's [`pay::CallerPayer`] which attempts each target gets (BYOK, PTB, or a skip with
//! its reason), and the engine holds credits for each PTB attempt through an
//! [`escrow::Tab`]. All state is in the [`crate::store::Store`].

pub mod escrow;
pub mod limits;
pub mod manage;
pub mod pay;
pub mod seal;
pub mod secret;

use crate::api::GatewayError;
use crate::config::AuthConfig;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::providers::Credentials;
use crate::secrets::Masker;
use crate::store::{Key, KeyPolicy, Rate, Store, StoreError};
use seal::Sealer;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A caller with a live key, as one request sees it.
#[derive(Debug)]
pub struct Caller {
    pub id: String,
    pub name: String,
    pub policy: KeyPolicy,
    pub disabled: bool,
    /// The key's own credentials, by provider index (opened from the store's sealed copies).
    pub byok: Vec<Option<Credentials>>,
}

/// The most keys (live or unknown) remembered at once; past it the cache starts over.
const CACHE_MAX: usize = 100_000;
/// The store calls [`Keys::timed`] counts (`op` of the store metrics), each series present
/// from the start.
pub const STORE_OPS: [&str; 8] = [
    "key", "rate", "tokens", "acquire", "reserve", "settle", "release", "record",
];
/// How long a concurrency slot outlives a crash that did not give it back.
const SLOT_TTL: Duration = Duration::from_secs(600);

/// A looked-up key (or `None`: no such key), when, and the store's generation then.
type Cached = (Option<Arc<Caller>>, Instant, u64);

/// Gateway keys and their limits, over the store.
pub struct Keys {
    pub store: Arc<dyn Store>,
    pub cfg: AuthConfig,
    pub sealer: Option<Sealer>,
    gw: Arc<Gateway>,
    /// The engine's masker: callers' own credentials are added as their keys load.
    pub masker: Arc<Masker>,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Keys {
    pub fn new(
        store: Arc<dyn Store>,
        gw: Arc<Gateway>,
        masker: Arc<Masker>,
        metrics: Arc<Metrics>,
        sealer: Option<Sealer>,
    ) -> Keys {
        for op in STORE_OPS {
            let labels = [store.backend(), op];
            metrics.auth.store_latency.with_label_values(&labels);
            metrics.auth.store_errors.with_label_values(&labels);
        }
        Keys {
            store,
            cfg: gw.cfg.auth.clone(),
            sealer,
            gw,
            masker,
            metrics,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Run one store call, timed and counted by `op`.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t0 = Instant::now();
        let r = call.await;
        let labels = [self.store.backend(), op];
        let m = &self.metrics.auth;
        m.store_latency
            .with_label_values(&labels)
            .observe(t0.elapsed().as_secs_f64());
        if r.is_err() {
            m.store_errors.with_label_values(&labels).inc();
        }
        r
    }

    /// Count a refusal.
    pub fn reject(&self, reason: &'static str) {
        self.metrics
            .auth
            .rejections
            .with_label_values(&[reason])
            .inc();
    }

    /// Forget every cached key (a key changed).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The caller whose key the request presents; a 401 when there is none or it is not live.
    pub async fn caller(
        &self,
        h: &http::HeaderMap,
        chain_mode: bool,
    ) -> Result<Arc<Caller>, GatewayError> {
        let r = self.find(h, chain_mode).await;
        if let Err(e) = &r {
            self.reject(e.metric_label());
        }
        r
    }

    async fn find(
        &self,
        h: &http::HeaderMap,
        chain_mode: bool,
    ) -> Result<Arc<Caller>, GatewayError> {
        let where_ = if chain_mode {
            "`Authorization: Bearer KEY`, `x-api-key: KEY` or `x-detour-key: KEY`"
        } else {
            "`Helicone-Auth: Bearer KEY` or `x-detour-key: KEY`"
        };
        let Some(presented) = secret::presented(h, chain_mode) else {
            return Err(GatewayError::Unauthorized(format!(
                "This gateway needs a key: send it as {where_}"
            )));
        };
        let hash = secret::hash(presented);
        let generation = self.store.generation();
        let caller = match self.cached(&hash, generation) {
            Some(c) => c,
            None => {
                let key = self
                    .timed("key", self.store.key_by_hash(hash))
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "key lookup failed");
                        GatewayError::StoreUnavailable(
                            "The key store cannot be reached; retry shortly".into(),
                        )
                    })?;
                let caller = key.map(|k| Arc::new(self.open(k)));
                self.remember(hash, caller.clone(), generation);
                caller
            }
        };
        let unknown = || GatewayError::Unauthorized("Invalid gateway key".into());
        let caller = caller.ok_or_else(unknown)?;
        let now = i64::try_from(unix_us() / 1_000_000).unwrap_or(i64::MAX);
        if caller.disabled {
            return Err(GatewayError::Unauthorized(
                "This gateway key is disabled".into(),
            ));
        }
        if caller.policy.expires_at.is_some_and(|e| e <= now) {
            return Err(GatewayError::Unauthorized(
                "This gateway key has expired".into(),
            ));
        }
        Ok(caller)
    }

    /// The cached lookup of `hash`, unless it is older than the TTL or than a key change
    /// another instance announced (`generation`).
    fn cached(&self, hash: &[u8; 32], generation: u64) -> Option<Option<Arc<Caller>>> {
        let g = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (c, at, seen) = g.get(hash)?;
        (*seen == generation && at.elapsed() < self.cfg.key_cache_ttl).then(|| c.clone())
    }

    /// Remember a lookup made under the store's `generation` (read before the lookup, so a
    /// change announced during it makes the entry stale at once).
    fn remember(&self, hash: [u8; 32], c: Option<Arc<Caller>>, generation: u64) {
        let mut g = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= CACHE_MAX {
            g.clear();
        }
        g.insert(hash, (c, Instant::now(), generation));
    }

    /// A stored key as a caller, its BYOK credentials opened and added to the masker.
    fn open(&self, k: Key) -> Caller {
        let mut byok: Vec<Option<Credentials>> =
            (0..self.gw.providers.len()).map(|_| None).collect();
        for (provider, sealed) in &k.byok {
            let (Some(i), Some(sealer)) = (self.gw.providers.index_of(provider), &self.sealer)
            else {
                continue;
            };
            match sealer.open(&k.id, provider, sealed) {
                Ok(b) => {
                    for s in b.secrets() {
                        self.masker.add_held(s);
                    }
                    byok[i] = Some(b.credentials(&self.gw.providers[i]));
                }
                Err(e) => tracing::warn!(key = %k.id, provider, error = %e, "BYOK unusable"),
            }
        }
        Caller {
            id: k.id,
            name: k.name,
            policy: k.policy,
            byok,
            disabled: k.disabled,
        }
    }

    /// The key's rate, token and concurrency limits: a 429 (no fallback) over any of them,
    /// else a [`Pass`] that holds its concurrency slot until dropped. When the store fails,
    /// limits are not applied (the request is served; the failure is counted and logged).
    pub async fn admit(&self, caller: &Arc<Caller>) -> Result<Pass, GatewayError> {
        let r = self.limits(caller).await;
        if let Err(e) = &r {
            self.reject(e.metric_label());
        }
        r
    }

    async fn limits(&self, caller: &Arc<Caller>) -> Result<Pass, GatewayError> {
        let p = &caller.policy;
        let now = unix_us();
        if let Some(rpm) = p.rpm {
            if let Ok(Rate::Limited { retry_after }) = self
                .timed("rate", self.store.rate(&caller.id, rpm, now))
                .await
            {
                return Err(limited(format!("{rpm} requests per minute"), retry_after));
            }
        }
        if let Some(tpm) = p.tpm {
            let minute = now / 60_000_000;
            let used = self.timed("tokens", self.store.tokens_in(&caller.id, minute));
            if used.await.is_ok_and(|n| n >= tpm) {
                let left = Duration::from_micros(60_000_000 - now % 60_000_000);
                return Err(limited(format!("{tpm} tokens per minute"), left));
            }
        }
        let mut pass = Pass {
            slot: None,
            store: self.store.clone(),
        };
        if let Some(n) = p.concurrency {
            let lease = crate::text::hex(&secret::random::<8>().unwrap_or_default());
            let got = self.timed(
                "acquire",
                self.store.acquire(&caller.id, n, &lease, SLOT_TTL),
            );
            match got.await {
                Ok(false) => {
                    return Err(limited(
                        format!("{n} concurrent requests"),
                        Duration::from_secs(1),
                    ))
                }
                Ok(true) => pass.slot = Some((caller.id.clone(), lease)),
                Err(_) => {}
            }
        }
        Ok(pass)
    }

    /// Tokens a caller used, for its tokens-per-minute limit.
    pub async fn count_tokens(&self, caller: &Caller, tokens: u64) {
        if caller.policy.tpm.is_some() && tokens > 0 {
            let minute = unix_us() / 60_000_000;
            let add = self.store.add_tokens(&caller.id, minute, tokens);
            let _ = self.timed("tokens", add).await;
        }
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn limited(what: String, retry_after: Duration) -> GatewayError {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    GatewayError::RateLimited {
        message: format!("Rate limit reached for this gateway key: {what}; retry in {secs} s"),
        retry_after: secs.max(1),
    }
}

/// An admitted request: holds its concurrency slot until dropped.
pub struct Pass {
    slot: Option<(String, String)>,
    store: Arc<dyn Store>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let Some((bucket, lease)) = self.slot.take() else {
            return;
        };
        // In-process slots are free before the request's task moves on: a client that sends
        // its next request as soon as it has the answer finds the slot free.
        if self.store.give_back_now(&bucket, &lease) {
            return;
        }
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.give_back(&bucket, &lease).await;
            });
        }
    }
}
