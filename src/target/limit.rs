//! Rate limits for unapproved targets: per caller and target host, a per-second rate (GCRA: N
//! a second, in bursts of at most N, so with N = 1 a second request within a second is always
//! refused) and a per-day count (the current UTC day). One caller may count at most
//! [`MAX_HOSTS_PER_CALLER`] hosts a day, all callers together [`MAX_TRACKED`] pairs.
//!
//! [`Limiter`] is the one interface the header mode uses; [`MemoryLimiter`] keeps counts in
//! this process. A shared store can back the same interface so counts survive restarts and
//! hold across instances.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The limits for one caller and target host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_second: u32,
    pub per_day: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_second: 1,
            per_day: 10_000,
        }
    }
}

/// A request over a limit: which, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `per-second` or `per-day`.
    pub limit: &'static str,
    pub retry_after: Duration,
}

/// Counts requests and says whether one more is allowed.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Count one request of `caller` to `host` at `now`, unless it is over a limit.
    async fn admit(&self, caller: &str, host: &str, now: SystemTime) -> Result<(), Denied>;
}

/// One caller and host: when its rate allows the next request, and its count today.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// GCRA's theoretical arrival time, in µs since the epoch.
    tat: u64,
    day: u64,
    in_day: u32,
}

/// The most (caller, host) pairs counted at once. Past it, after stale pairs are dropped, new
/// pairs are refused: a caller who names ever new hosts cannot grow memory or reset others.
pub const MAX_TRACKED: usize = 100_000;

/// The most unapproved hosts one caller may have counted in a day: past it, that caller's new
/// hosts are refused until midnight UTC, so one caller cannot fill the table for everyone.
pub const MAX_HOSTS_PER_CALLER: u32 = 1_000;

/// The counts, and how many pairs each caller has.
#[derive(Default)]
struct Table {
    counts: HashMap<(String, String), Counts>,
    per_caller: HashMap<String, u32>,
    /// The day stale pairs were last dropped.
    purged: u64,
}

impl Table {
    /// Drop the pairs of past days whose rate no longer holds anything back; once a day.
    fn purge(&mut self, day: u64, now_us: u64) {
        if self.purged == day {
            return;
        }
        self.purged = day;
        self.counts.retain(|_, c| c.day == day || c.tat > now_us);
        self.per_caller.clear();
        for (caller, _) in self.counts.keys() {
            *self.per_caller.entry(caller.clone()).or_insert(0) += 1;
        }
    }
}

/// In-process counts.
pub struct MemoryLimiter {
    limits: Limits,
    table: Mutex<Table>,
}

impl MemoryLimiter {
    pub fn new(limits: Limits) -> MemoryLimiter {
        MemoryLimiter {
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    /// Admit one request at `now_us` (µs since the epoch).
    fn admit_at(&self, caller: &str, host: &str, now_us: u64) -> Result<(), Denied> {
        const DAY_US: u64 = 86_400_000_000;
        let day = now_us / DAY_US;
        let interval = 1_000_000 / u64::from(self.limits.per_second.max(1));
        let burst = interval * u64::from(self.limits.per_second.max(1) - 1);
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let table = &mut *guard;
        table.purge(day, now_us);
        let key = (caller.to_string(), host.to_string());
        if !table.counts.contains_key(&key) {
            let mine = table.per_caller.get(caller).copied().unwrap_or(0);
            if mine >= MAX_HOSTS_PER_CALLER || table.counts.len() >= MAX_TRACKED {
                return Err(Denied {
                    limit: "per-day",
                    retry_after: Duration::from_micros((day + 1) * DAY_US - now_us),
                });
            }
            *table.per_caller.entry(caller.to_string()).or_insert(0) += 1;
        }
        let map = &mut table.counts;
        let c = map.entry(key).or_insert(Counts {
            tat: now_us,
            day,
            in_day: 0,
        });
        if c.day != day {
            (c.day, c.in_day) = (day, 0);
        }
        if self.limits.per_second == 0 || c.in_day >= self.limits.per_day {
            let next_day = (day + 1) * DAY_US;
            return Err(Denied {
                limit: "per-day",
                retry_after: Duration::from_micros(next_day - now_us),
            });
        }
        let tat = c.tat.max(now_us);
        if tat > now_us + burst {
            return Err(Denied {
                limit: "per-second",
                retry_after: Duration::from_micros(tat - burst - now_us),
            });
        }
        c.tat = tat + interval;
        c.in_day += 1;
        Ok(())
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn admit(&self, caller: &str, host: &str, now: SystemTime) -> Result<(), Denied> {
        let us = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        self.admit_at(caller, host, u64::try_from(us).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn one_a_second_per_caller_and_host() {
        let l = MemoryLimiter::new(Limits::default());
        let t = 100 * S + 999_000;
        assert!(l.admit_at("1.2.3.4", "x.com", t).is_ok());
        // 2 ms later, across a second boundary: still within a second of the first.
        let d = l
            .admit_at("1.2.3.4", "x.com", t + 2_000)
            .expect_err("second in 1 s");
        assert_eq!(d.limit, "per-second");
        assert_eq!(d.retry_after, Duration::from_micros(998_000));
        // Another host, another caller: their own counts.
        assert!(l.admit_at("1.2.3.4", "y.com", t).is_ok());
        assert!(l.admit_at("5.6.7.8", "x.com", t).is_ok());
        // A second after the first.
        assert!(l.admit_at("1.2.3.4", "x.com", t + S).is_ok());
    }

    #[test]
    fn a_rate_of_n_allows_bursts_of_n() {
        let l = MemoryLimiter::new(Limits {
            per_second: 5,
            per_day: 1000,
        });
        for _ in 0..5 {
            assert!(l.admit_at("c", "h", 10 * S).is_ok());
        }
        assert!(l.admit_at("c", "h", 10 * S).is_err());
        // One more every 200 ms.
        assert!(l.admit_at("c", "h", 10 * S + 200_000).is_ok());
        assert!(l.admit_at("c", "h", 10 * S + 200_000).is_err());
    }

    #[test]
    fn the_day_limit_lasts_until_utc_midnight() {
        let l = MemoryLimiter::new(Limits {
            per_second: 100,
            per_day: 3,
        });
        let t = (86_400 * 10 + 3600) * S;
        for s in 0..3 {
            assert!(l.admit_at("c", "h", t + s * S).is_ok());
        }
        let d = l.admit_at("c", "h", t + 5 * S).expect_err("4th of the day");
        assert_eq!(d.limit, "per-day");
        assert_eq!(d.retry_after, Duration::from_secs(86_400 - 3600 - 5));
        assert!(l.admit_at("c", "h", 86_400 * 11 * S).is_ok());
    }

    #[test]
    fn refused_requests_are_not_counted() {
        let l = MemoryLimiter::new(Limits {
            per_second: 1,
            per_day: 2,
        });
        assert!(l.admit_at("c", "h", S).is_ok());
        for _ in 0..5 {
            assert!(l.admit_at("c", "h", S + 1).is_err());
        }
        assert!(l.admit_at("c", "h", 2 * S).is_ok());
    }

    #[test]
    fn one_caller_cannot_fill_the_table() {
        let l = MemoryLimiter::new(Limits::default());
        for i in 0..MAX_HOSTS_PER_CALLER {
            assert!(l.admit_at("greedy", &format!("h{i}"), 5 * S).is_ok());
        }
        let d = l
            .admit_at("greedy", "one-more", 5 * S)
            .expect_err("over its hosts");
        assert_eq!(d.limit, "per-day");
        // Others are not affected; the greedy caller's known hosts still count as before.
        assert!(l.admit_at("other", "one-more", 5 * S).is_ok());
        assert!(l.admit_at("greedy", "h0", 7 * S).is_ok());
        // A new day drops yesterday's pairs.
        assert!(l.admit_at("greedy", "one-more", (86_400 + 5) * S).is_ok());
        let n = l.table.lock().map(|t| t.counts.len()).unwrap_or(0);
        assert_eq!(n, 1);
    }

    #[test]
    fn memory_is_bounded() {
        let l = MemoryLimiter::new(Limits::default());
        let per = MAX_HOSTS_PER_CALLER as usize;
        for i in 0..MAX_TRACKED {
            let caller = format!("c{}", i / per);
            assert!(l.admit_at(&caller, &format!("h{i}"), 5 * S).is_ok());
        }
        assert!(l.admit_at("new-caller", "h", 5 * S).is_err());
        assert!(l.admit_at("new-caller", "h", (86_400 + 5) * S).is_ok());
    }
}
