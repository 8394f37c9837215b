//! The `failover:` section: the request deadline, retrying one target, circuit breakers, the
//! retry budget, the order of bare models, hedging, and what to do after a stream broke.
//! Raw YAML in, validated [`Failover`] out; errors name the YAML path.

use super::{parse_duration, ConfigError};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFailover {
    /// The whole request, every attempt and wait included.
    pub deadline: Option<String>,
    pub retry: Option<RawRetry>,
    pub circuit_breaker: Option<RawBreaker>,
    pub retry_budget: Option<RawBudget>,
    /// `catalog`, `latency` or `price`: how a bare model's providers are ordered.
    pub order: Option<String>,
    pub hedge: Option<RawHedge>,
    /// Move on when a provider refuses on content policy (default: return its refusal).
    pub on_content_filter: Option<bool>,
    /// Continue a stream that broke after commit on the next target that accepts prefill.
    pub continuation: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRetry {
    pub attempts_per_target: Option<u32>,
    pub on_status: Option<Vec<u16>>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub max_retry_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<String>,
    pub cool_down: Option<String>,
    /// The longest an upstream's `Retry-After` may keep a circuit open.
    pub max_cool_down: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBudget {
    pub enabled: Option<bool>,
    pub ratio: Option<f64>,
    pub window: Option<String>,
    pub min_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHedge {
    /// A duration (`1500ms`) or `p95`: the first target's observed 95th percentile time to
    /// first token.
    pub after: String,
    /// Used for `p95` until enough samples exist (default 2s).
    pub fallback_after: Option<String>,
}

/// Retrying the same target on a transient status, or after a `Retry-After`.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Tries per target, the first included (1 = never retry the same target).
    pub attempts_per_target: u32,
    pub on_status: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` waited for; a longer one moves on at once.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub cool_down: Duration,
    /// A `Retry-After` opens the circuit for that long, but never longer than this.
    pub max_cool_down: Duration,
}

#[derive(Debug, Clone)]
pub struct Budget {
    pub enabled: bool,
    pub ratio: f64,
    pub window: Duration,
    pub min_per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Catalog,
    Latency,
    Price,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeAfter {
    Fixed(Duration),
    /// The observed p95 time to first token, or the duration until there are enough samples.
    P95(Duration),
}

#[derive(Debug, Clone)]
pub struct Failover {
    pub deadline: Duration,
    pub retry: Retry,
    pub breaker: Breaker,
    pub budget: Budget,
    pub order: Order,
    pub hedge: Option<HedgeAfter>,
    pub on_content_filter: bool,
    pub continuation: bool,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            deadline: Duration::from_secs(600),
            retry: Retry {
                attempts_per_target: 1,
                on_status: vec![500, 502, 503],
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(2),
                max_retry_after: Duration::from_secs(10),
            },
            breaker: Breaker {
                enabled: true,
                consecutive_failures: 5,
                failure_ratio: 0.5,
                min_requests: 20,
                window: Duration::from_secs(30),
                cool_down: Duration::from_secs(15),
                max_cool_down: Duration::from_secs(300),
            },
            budget: Budget {
                enabled: true,
                ratio: 0.2,
                window: Duration::from_secs(10),
                min_per_second: 5.0,
            },
            order: Order::Catalog,
            hedge: None,
            on_content_filter: false,
            continuation: false,
        }
    }
}

fn dur(v: &Option<String>, path: &str, dflt: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(dflt),
        Some(s) => parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
            ConfigError::new(
                path,
                format!("invalid duration `{s}` (use e.g. 500ms, 5s, 2m; at most 8784h)"),
            )
        }),
    }
}

fn ratio(v: Option<f64>, path: &str, dflt: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(dflt),
        Some(r) if r > 0.0 && r <= 1.0 => Ok(r),
        Some(r) => Err(ConfigError::new(
            path,
            format!("{r} is not a ratio in (0, 1]"),
        )),
    }
}

pub fn validate(raw: &RawFailover) -> Result<Failover, ConfigError> {
    let d = Failover::default();
    let deadline = dur(&raw.deadline, "failover.deadline", d.deadline)?;
    let r = raw.retry.as_ref();
    let rr = RawRetry::default();
    let r = r.unwrap_or(&rr);
    let retry = Retry {
        attempts_per_target: r.attempts_per_target.unwrap_or(d.retry.attempts_per_target),
        on_status: r.on_status.clone().unwrap_or(d.retry.on_status),
        backoff_base: dur(
            &r.backoff_base,
            "failover.retry.backoff-base",
            d.retry.backoff_base,
        )?,
        backoff_max: dur(
            &r.backoff_max,
            "failover.retry.backoff-max",
            d.retry.backoff_max,
        )?,
        max_retry_after: match &r.max_retry_after {
            // `0s` is allowed here: never wait for a Retry-After.
            Some(s) => parse_duration(s).ok_or_else(|| {
                ConfigError::new(
                    "failover.retry.max-retry-after",
                    format!("invalid duration `{s}`"),
                )
            })?,
            None => d.retry.max_retry_after,
        },
    };
    if retry.attempts_per_target == 0 || retry.attempts_per_target > 10 {
        return Err(ConfigError::new(
            "failover.retry.attempts-per-target",
            "must be between 1 and 10",
        ));
    }
    if let Some(s) = retry.on_status.iter().find(|s| !(500..=599).contains(*s)) {
        return Err(ConfigError::new(
            "failover.retry.on-status",
            format!(
                "{s}: only 5xx statuses are retried on the same target (429 follows Retry-After)"
            ),
        ));
    }
    let b = raw.circuit_breaker.as_ref();
    let rb = RawBreaker::default();
    let b = b.unwrap_or(&rb);
    let breaker = Breaker {
        enabled: b.enabled.unwrap_or(true),
        consecutive_failures: b
            .consecutive_failures
            .unwrap_or(d.breaker.consecutive_failures)
            .max(1),
        failure_ratio: ratio(
            b.failure_ratio,
            "failover.circuit-breaker.failure-ratio",
            d.breaker.failure_ratio,
        )?,
        min_requests: b.min_requests.unwrap_or(d.breaker.min_requests).max(1),
        window: dur(
            &b.window,
            "failover.circuit-breaker.window",
            d.breaker.window,
        )?,
        cool_down: dur(
            &b.cool_down,
            "failover.circuit-breaker.cool-down",
            d.breaker.cool_down,
        )?,
        max_cool_down: dur(
            &b.max_cool_down,
            "failover.circuit-breaker.max-cool-down",
            d.breaker.max_cool_down,
        )?,
    };
    let g = raw.retry_budget.as_ref();
    let rg = RawBudget::default();
    let g = g.unwrap_or(&rg);
    let budget = Budget {
        enabled: g.enabled.unwrap_or(true),
        ratio: ratio(g.ratio, "failover.retry-budget.ratio", d.budget.ratio)?,
        window: dur(&g.window, "failover.retry-budget.window", d.budget.window)?,
        min_per_second: match g.min_per_second {
            Some(m) if m >= 0.0 && m.is_finite() => m,
            Some(m) => {
                return Err(ConfigError::new(
                    "failover.retry-budget.min-per-second",
                    format!("{m} must be zero or more"),
                ))
            }
            None => d.budget.min_per_second,
        },
    };
    let order = match raw.order.as_deref() {
        None | Some("catalog") => Order::Catalog,
        Some("latency") => Order::Latency,
        Some("price") => Order::Price,
        Some(o) => {
            return Err(ConfigError::new(
                "failover.order",
                format!("unknown order `{o}` (catalog, latency, price)"),
            ))
        }
    };
    let hedge = match &raw.hedge {
        None => None,
        Some(h) if h.after.trim() == "p95" => Some(HedgeAfter::P95(dur(
            &h.fallback_after,
            "failover.hedge.fallback-after",
            Duration::from_secs(2),
        )?)),
        Some(h) => Some(HedgeAfter::Fixed(dur(
            &Some(h.after.clone()),
            "failover.hedge.after",
            Duration::ZERO,
        )?)),
    };
    Ok(Failover {
        deadline,
        retry,
        breaker,
        budget,
        order,
        hedge,
        on_content_filter: raw.on_content_filter.unwrap_or(false),
        continuation: raw.continuation.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Failover, ConfigError> {
        let raw: RawFailover =
            serde_yaml::from_str(y).map_err(|e| ConfigError::new("", e.to_string()))?;
        validate(&raw)
    }

    #[test]
    fn defaults_and_overrides() {
        let f = parse("{}").expect("empty");
        assert_eq!(f.retry.attempts_per_target, 1);
        assert_eq!(f.order, Order::Catalog);
        assert!(f.hedge.is_none() && !f.continuation && !f.on_content_filter);
        let f = parse("deadline: 30s\norder: price\nhedge: {after: p95}\nretry: {attempts-per-target: 3, max-retry-after: 0s}\n")
            .expect("valid");
        assert_eq!(f.deadline, Duration::from_secs(30));
        assert_eq!(f.order, Order::Price);
        assert_eq!(f.hedge, Some(HedgeAfter::P95(Duration::from_secs(2))));
        assert_eq!(f.retry.max_retry_after, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_path() {
        for (y, path) in [
            ("order: fastest", "failover.order"),
            ("retry: {on-status: [429]}", "failover.retry.on-status"),
            (
                "retry: {attempts-per-target: 0}",
                "failover.retry.attempts-per-target",
            ),
            (
                "circuit-breaker: {failure-ratio: 1.5}",
                "failover.circuit-breaker.failure-ratio",
            ),
            ("hedge: {after: soon}", "failover.hedge.after"),
            ("deadline: 0s", "failover.deadline"),
        ] {
            let e = parse(y).expect_err(y);
            assert_eq!(e.path, path, "{y}");
        }
    }
}
