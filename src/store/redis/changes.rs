//! Key changes across instances. Every change to a key (made, changed, disabled, revoked, its
//! credentials) is published on [`CHANNEL`]; every instance listens and bumps a generation
//! number its key cache compares against, so a change is seen everywhere within moments rather
//! than after `auth.key-cache-ttl`. A message may be missed while the subscription is down: the
//! generation is bumped again each time it is made, and the cache's TTL bounds the rest.

use super::{within, CONNECT_TIMEOUT};
use crate::store::StoreError;
use ::redis::aio::PubSub;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Where key changes are announced (the payload is the key id, for logs; any message counts).
pub const CHANNEL: &str = "detour:keys:changed";
/// How long the listener waits before subscribing again after losing the subscription.
const RETRY: Duration = Duration::from_secs(1);

/// The generation the key cache compares against; the listener task stops when it is dropped.
pub struct Changes {
    generation: AtomicU64,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Changes {
    fn drop(&mut self) {
        if let Some(t) = self.task.get() {
            t.abort();
        }
    }
}

impl Changes {
    /// Subscribe (within the connect timeout, so a change made once this returns is seen),
    /// then listen on a task of the current runtime.
    pub async fn listen(client: ::redis::Client) -> Result<Arc<Changes>, StoreError> {
        let first = subscribe(&client).await?;
        let changes = Arc::new(Changes {
            generation: AtomicU64::new(0),
            task: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(run(client, first, Arc::downgrade(&changes)));
        let _ = changes.task.set(task.abort_handle());
        Ok(changes)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

async fn subscribe(client: &::redis::Client) -> Result<PubSub, StoreError> {
    within(CONNECT_TIMEOUT, async {
        let mut p = client.get_async_pubsub().await?;
        p.subscribe(CHANNEL).await?;
        Ok(p)
    })
    .await
}

/// Bump the generation; `false` once the store is gone.
fn bump(changes: &Weak<Changes>) -> bool {
    match changes.upgrade() {
        Some(c) => {
            c.generation.fetch_add(1, Ordering::AcqRel);
            true
        }
        None => false,
    }
}

async fn run(client: ::redis::Client, mut pubsub: PubSub, changes: Weak<Changes>) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while messages.next().await.is_some() {
                if !bump(&changes) {
                    return;
                }
            }
        }
        tracing::warn!("lost the Redis key-change subscription; cached keys live out their TTL");
        pubsub = loop {
            tokio::time::sleep(RETRY).await;
            if changes.strong_count() == 0 {
                return;
            }
            if let Ok(p) = subscribe(&client).await {
                break p;
            }
        };
        tracing::info!("subscribed to Redis key changes again");
        // Whatever changed while the subscription was down.
        if !bump(&changes) {
            return;
        }
    }
}
