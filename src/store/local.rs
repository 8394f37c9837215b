//! In-process counters for a store that serves one instance (SQLite): per-minute rates (GCRA),
//! tokens per minute and concurrency slots. Buckets are gateway key ids, a set the operator
//! bounds; stale entries are dropped as they are passed over.

use super::Rate;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Local {
    /// GCRA's theoretical arrival time per bucket, µs since the epoch.
    tat: Mutex<HashMap<String, u64>>,
    /// Tokens per bucket in its current minute.
    tokens: Mutex<HashMap<String, (u64, u64)>>,
    slots: Mutex<HashMap<String, HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// GCRA over a minute: one request every `60 s / per_minute`, in bursts of at most
/// `per_minute`. Returns the new arrival time, or how long to wait.
pub fn gcra(tat: u64, now_us: u64, per_minute: u32) -> Result<u64, Duration> {
    let per_minute = u64::from(per_minute.max(1));
    let interval = 60_000_000 / per_minute;
    let burst = interval * (per_minute - 1);
    let tat = tat.max(now_us);
    let ahead = tat - now_us;
    if ahead > burst {
        return Err(Duration::from_micros(ahead - burst));
    }
    Ok(tat + interval)
}

impl Local {
    pub fn rate(&self, bucket: &str, per_minute: u32, now_us: u64) -> Rate {
        let mut g = lock(&self.tat);
        let tat = g.get(bucket).copied().unwrap_or(0);
        match gcra(tat, now_us, per_minute) {
            Ok(next) => {
                g.insert(bucket.to_string(), next);
                Rate::Allowed
            }
            Err(retry_after) => Rate::Limited { retry_after },
        }
    }

    pub fn tokens_in(&self, bucket: &str, minute: u64) -> u64 {
        lock(&self.tokens)
            .get(bucket)
            .filter(|(m, _)| *m == minute)
            .map_or(0, |(_, n)| *n)
    }

    pub fn add_tokens(&self, bucket: &str, minute: u64, tokens: u64) {
        let mut g = lock(&self.tokens);
        let e = g.entry(bucket.to_string()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 = e.1.saturating_add(tokens);
    }

    pub fn acquire(&self, bucket: &str, limit: u32, lease: &str) -> bool {
        let mut g = lock(&self.slots);
        let held = g.entry(bucket.to_string()).or_default();
        if held.len() >= limit as usize {
            return false;
        }
        held.insert(lease.to_string());
        true
    }

    pub fn give_back(&self, bucket: &str, lease: &str) {
        let mut g = lock(&self.slots);
        if let Some(held) = g.get_mut(bucket) {
            held.remove(lease);
            if held.is_empty() {
                g.remove(bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_allows_its_count_in_a_burst_then_one_per_interval() {
        let l = Local::default();
        let t0 = 1_000_000_000_000;
        for _ in 0..3 {
            assert_eq!(l.rate("k", 3, t0), Rate::Allowed);
        }
        match l.rate("k", 3, t0) {
            Rate::Limited { retry_after } => assert_eq!(retry_after, Duration::from_secs(20)),
            Rate::Allowed => panic!("a fourth in the same instant"),
        }
        assert_eq!(l.rate("k", 3, t0 + 20_000_000), Rate::Allowed);
        assert_ne!(l.rate("k", 3, t0 + 20_000_000), Rate::Allowed);
        assert_eq!(l.rate("other", 3, t0), Rate::Allowed);
    }

    #[test]
    fn slots_and_tokens_count_per_bucket() {
        let l = Local::default();
        assert!(l.acquire("k", 2, "a"));
        assert!(l.acquire("k", 2, "b"));
        assert!(!l.acquire("k", 2, "c"));
        l.give_back("k", "a");
        assert!(l.acquire("k", 2, "c"));
        l.add_tokens("k", 5, 10);
        l.add_tokens("k", 5, 7);
        assert_eq!(l.tokens_in("k", 5), 17);
        assert_eq!(l.tokens_in("k", 6), 0);
        l.add_tokens("k", 6, 1);
        assert_eq!(l.tokens_in("k", 6), 1);
    }
}
