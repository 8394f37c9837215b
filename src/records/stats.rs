//! `GET /admin/stats?window=5m|1h|24h`: the records of a window, summed per provider and model.
//!
//! Per route (the attempts' provider and model): `requests` that tried it, `attempts`,
//! `success_rate` (the share of those requests it served), `fallback_rate` (the share that went
//! on to another target after it), `failures` by class, `attempts_per_request`, the latency
//! of the attempts it served (p50, p95, p99) and their time to first token (streams; p50, p95).
//! Overall: requests, success and fallback rates, attempts per request, outcomes, latency.

use super::db::{StatAttempt, StatRow};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The windows `/admin/stats` knows.
pub fn window(name: Option<&str>) -> Result<(&'static str, Duration), String> {
    match name.unwrap_or("1h") {
        "5m" => Ok(("5m", Duration::from_secs(300))),
        "1h" => Ok(("1h", Duration::from_secs(3600))),
        "24h" => Ok(("24h", Duration::from_secs(86_400))),
        _ => Err("`window` must be 5m, 1h or 24h".into()),
    }
}

#[derive(Debug, Serialize, Default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Nearest-rank percentiles of `v` (sorted here).
fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let n = v.len();
        (n > 0).then(|| {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            v[rank - 1]
        })
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| ((part as f64 / whole as f64) * 1e4).round() / 1e4)
}

#[derive(Debug, Serialize)]
pub struct RouteStats {
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub attempts: u64,
    pub served: u64,
    pub success_rate: Option<f64>,
    pub fallback_rate: Option<f64>,
    pub attempts_per_request: Option<f64>,
    pub failures: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub ttft_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub success_rate: Option<f64>,
    pub fallback_rate: Option<f64>,
    pub attempts_per_request: Option<f64>,
    pub outcomes: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
}

#[derive(Default)]
struct Acc {
    requests: u64,
    attempts: u64,
    served: u64,
    moved_on: u64,
    failures: BTreeMap<String, u64>,
    latency: Vec<f64>,
    ttft: Vec<f64>,
}

fn tried(a: &StatAttempt) -> bool {
    a.outcome != "skipped"
}

/// Sum `rows` per route and overall.
pub fn summarize(rows: &[StatRow]) -> (Totals, Vec<RouteStats>) {
    let mut routes: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
    let (mut ok, mut fell, mut attempts) = (0u64, 0u64, 0u64);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        *outcomes.entry(r.outcome.clone()).or_default() += 1;
        ok += u64::from(r.outcome == "success");
        fell += u64::from(r.fallback);
        let tried_here: Vec<&StatAttempt> = r.attempts.iter().filter(|a| tried(a)).collect();
        attempts += tried_here.len() as u64;
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (i, a) in tried_here.iter().enumerate() {
            let route = (a.provider.as_str(), a.model.as_str());
            let acc = routes.entry(route).or_default();
            acc.attempts += 1;
            if !seen.contains(&route) {
                seen.push(route);
                acc.requests += 1;
                let later = &tried_here[i + 1..];
                if later
                    .iter()
                    .any(|b| (b.provider.as_str(), b.model.as_str()) != route)
                {
                    acc.moved_on += 1;
                }
            }
            if a.outcome == "success" {
                acc.served += 1;
                acc.latency.push(a.ms);
                acc.ttft.extend(a.first_token_ms);
            } else {
                *acc.failures.entry(a.outcome.clone()).or_default() += 1;
            }
        }
    }
    let total = rows.len() as u64;
    let totals = Totals {
        requests: total,
        success_rate: rate(ok, total),
        fallback_rate: rate(fell, total),
        attempts_per_request: rate(attempts, total),
        outcomes,
        latency_ms: percentiles(rows.iter().map(|r| r.ms).collect()),
    };
    let per = routes
        .into_iter()
        .map(|((provider, model), a)| {
            let ttft = percentiles(a.ttft);
            RouteStats {
                provider: provider.to_string(),
                model: model.to_string(),
                requests: a.requests,
                attempts: a.attempts,
                served: a.served,
                success_rate: rate(a.served, a.requests),
                fallback_rate: rate(a.moved_on, a.requests),
                attempts_per_request: rate(a.attempts, a.requests),
                failures: a.failures,
                latency_ms: percentiles(a.latency),
                ttft_ms: Percentiles { p99: None, ..ttft },
            }
        })
        .collect();
    (totals, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(p: &str, outcome: &str, ms: f64) -> StatAttempt {
        StatAttempt {
            provider: p.into(),
            model: "m".into(),
            outcome: outcome.into(),
            ms,
            first_token_ms: None,
        }
    }

    #[test]
    fn rates_count_requests_per_route_and_retries_as_attempts() {
        let rows = vec![
            StatRow {
                outcome: "success".into(),
                fallback: true,
                ms: 30.0,
                attempts: vec![
                    att("a", "server_error", 5.0),
                    att("a", "server_error", 5.0),
                    att("b", "success", 20.0),
                ],
            },
            StatRow {
                outcome: "success".into(),
                fallback: false,
                ms: 10.0,
                attempts: vec![att("a", "success", 10.0), att("b", "skipped", 0.0)],
            },
        ];
        let (t, routes) = summarize(&rows);
        assert_eq!(
            (t.requests, t.success_rate, t.fallback_rate),
            (2, Some(1.0), Some(0.5))
        );
        assert_eq!(t.attempts_per_request, Some(2.0));
        let a = &routes[0];
        assert_eq!((a.requests, a.attempts, a.served), (2, 3, 1));
        assert_eq!((a.success_rate, a.fallback_rate), (Some(0.5), Some(0.5)));
        assert_eq!(a.failures.get("server_error"), Some(&2));
        assert_eq!(a.latency_ms.p50, Some(10.0));
        let b = &routes[1];
        assert_eq!((b.requests, b.served, b.success_rate), (1, 1, Some(1.0)));
        assert_eq!(percentiles(vec![3.0, 1.0, 2.0, 4.0]).p50, Some(2.0));
        assert!(window(Some("2d")).is_err());
    }
}
