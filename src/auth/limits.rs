//! The header mode's limit for unapproved hosts with gateway keys: the per-second rate in
//! process (as [`MemoryLimiter`]), the per-day count on the store, so that it holds across
//! restarts and, on Redis, across instances. A store that cannot be reached does not count
//! (the request goes on; the store error is logged).

use crate::store::Store;
use crate::target::limit::{Denied, Limiter, Limits, MemoryLimiter};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct StoreLimiter {
    rate: MemoryLimiter,
    per_day: u32,
    store: Arc<dyn Store>,
}

impl StoreLimiter {
    pub fn new(limits: Limits, store: Arc<dyn Store>) -> StoreLimiter {
        StoreLimiter {
            rate: MemoryLimiter::new(Limits {
                per_day: u32::MAX,
                ..limits
            }),
            per_day: limits.per_day,
            store,
        }
    }
}

#[async_trait]
impl Limiter for StoreLimiter {
    async fn admit(&self, caller: &str, host: &str, now: SystemTime) -> Result<(), Denied> {
        self.rate.admit(caller, host, now).await?;
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let day = secs / 86_400;
        match self.store.count_day(caller, host, day, self.per_day).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Denied {
                limit: "per-day",
                retry_after: Duration::from_secs((day + 1) * 86_400 - secs),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the day count could not be kept");
                Ok(())
            }
        }
    }
}
