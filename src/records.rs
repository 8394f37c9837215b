//! Request records: every request's attempts, for the inspection API (`/admin/requests`).
//!
//! `logging()` encodes the request's [`RequestLog`] ([`encode`], in [`wire`]'s compact form)
//! straight into a bounded queue: when the queue is full the record is dropped and counted
//! (`detour_records_dropped_total`), the request never waits. One thread (`detour-records`,
//! [`keeper`]) takes them in batches, numbers them, writes each batch to a SQLite file as one
//! row ([`db`]) and keeps the newest batches in memory (`records:` in the config). A read
//! decodes them into [`Record`]s and makes their JSON; [`stats`] sums a window of them.
//! [`db`] and [`wire`] are public for `benches/records.rs`.

pub mod db;
mod keeper;
pub mod stats;
pub mod wire;

pub use keeper::Recorder;

use crate::engine::ledger::{AttemptLog, RequestLog, Via};
use crate::gateway::Gateway;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most records one listing returns.
pub const MAX_LIMIT: usize = 500;

/// One attempt of a request. In a record's JSON, what is not known (an `Option` that is
/// `None`) is left out rather than written as `null`: records are written by the million.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The provider, or a header-mode URL's approved-host label (`unapproved` otherwise).
    pub provider: String,
    /// The target as planned: `model/provider`, or the URL's origin in the header mode.
    pub source: String,
    /// `success`, `skipped`, `client_error`, `client_closed`, `stream_error`, or a failure class.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, credentials masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole attempt, from its start to its end (or to the answer's end when it served).
    pub ms: f64,
    /// Connected to the upstream, from the attempt's start (an attempt that got an answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    /// The answer's head arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<f64>,
    /// A stream's first content event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<f64>,
    /// The backoff or `Retry-After` wait before this attempt, and its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<String>,
    /// The same target as the attempt tried before it (a retry, not a fallback).
    pub retry: bool,
    /// What its answer cost at the catalog's price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Whose credentials: `operator`, `byok` (the caller's own) or `ptb` (the operator's,
    /// billed to the key); absent for a target not tried and in the header mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay: Option<String>,
}

/// What one request did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Numbered as kept, from 1; the listing's cursor (`before`).
    pub seq: u64,
    /// `x-request-id`: the client's, or detour's.
    pub id: String,
    /// When it ended, Unix milliseconds.
    pub at: i64,
    /// The gateway key's id (never its secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `chain`, `target-url` or `fallbacks`.
    pub mode: String,
    /// The `model` field as the client sent it (the chain mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub stream: bool,
    pub outcome: String,
    pub status: u16,
    pub ms: f64,
    pub attempts: Vec<AttemptRecord>,
    /// The attempt that answered: its `source`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// More than one target was tried.
    pub fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// What the request cost at the catalog's prices (absent for an unpriced model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The client left before the answer was complete.
    pub client_closed: bool,
    /// An answer that broke after the client had started receiving it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_commit_error: Option<String>,
}

/// A duration in milliseconds, to the microsecond (records and the access log).
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Append the record of a finished request to `b`, in [`wire`]'s encoding: straight from its
/// log, with no allocation (the request thread pays for this one).
pub fn encode(b: &mut Vec<u8>, gw: &Gateway, log: &RequestLog, elapsed: Duration) {
    let tried = || log.attempts.iter().filter(|a| a.outcome != "skipped");
    let first = tried().next().map(source);
    let fallback = tried().any(|a| Some(source(a)) != first);
    let served_by = log
        .attempts
        .iter()
        .rfind(|a| a.outcome == "success")
        .map(source);
    let head = wire::Head {
        id: &log.request_id,
        at: crate::store::now_ms(),
        key: (!log.key.is_empty()).then_some(log.key.as_str()),
        mode: log.mode,
        model: (!log.model.is_empty()).then_some(log.model.as_str()),
        stream: log.stream,
        outcome: if log.outcome.is_empty() {
            "unknown"
        } else {
            log.outcome
        },
        status: log.status,
        ms: ms(elapsed),
        served_by,
        fallback,
        prompt_tokens: log.usage.map(|u| u.prompt_tokens),
        completion_tokens: log.usage.map(|u| u.completion_tokens),
        cost_usd: log.cost_usd,
        client_closed: log.outcome == "client_closed",
        post_commit_error: log.post_commit_error.as_deref(),
    };
    let mut previous: Option<&str> = None;
    let attempts = log.attempts.iter().map(|a| {
        let retry = a.outcome != "skipped" && previous == Some(a.source.as_str());
        if a.outcome != "skipped" {
            previous = Some(a.source.as_str());
        }
        attempt(gw, a, retry)
    });
    wire::encode(b, &head, attempts);
}

/// An attempt's target as recorded: cut to 256 bytes.
fn source(a: &AttemptLog) -> &str {
    crate::text::truncate(&a.source, 256)
}

fn attempt<'a>(gw: &'a Gateway, a: &'a AttemptLog, retry: bool) -> wire::Attempt<'a> {
    wire::Attempt {
        provider: match &a.via {
            // Encoded under the queue's lock: nothing here may panic.
            Via::Provider(p) => gw.providers.get(*p).map_or("unknown", |p| p.name.as_str()),
            Via::Url(label) => label,
        },
        source: source(a),
        outcome: a.outcome,
        status: a.status,
        error: a.error.as_deref(),
        ms: ms(a.duration),
        connect_ms: a.timing.connect.map(ms),
        first_byte_ms: a.timing.first_byte.map(ms),
        first_token_ms: a.timing.first_token.map(ms),
        waited_ms: a.waited.map(|(d, _)| ms(d)),
        wait_reason: a.waited.map(|(_, why)| why),
        retry,
        cost_usd: a.cost_usd,
        pay: a.pay,
    }
}

/// Which records a listing wants (`GET /admin/requests?…`).
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    pub key: Option<String>,
    pub provider: Option<String>,
    /// A model name: the client's `model` field names it, or an attempt's source is it.
    pub model: Option<String>,
    pub outcome: Option<String>,
    pub fallback: Option<bool>,
    /// Whether the request failed: an outcome other than `success…`.
    pub failed: Option<bool>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only records numbered below this (the next page).
    pub before: Option<u64>,
    pub limit: usize,
}

/// A query string's `key=value` pairs, as they are (not decoded).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('='))
}

fn boolean(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{name}` must be true or false")),
    }
}

impl Filter {
    /// From a query string; a parameter that does not parse is a 400 that names it.
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter {
            limit: 50,
            ..Filter::default()
        };
        for (k, v) in query_pairs(query) {
            let v = crate::text::percent_decode(v).ok_or(format!("`{k}` is not URL-encoded"))?;
            let num = |what: &str| -> Result<i64, String> {
                v.parse::<i64>()
                    .map_err(|_| format!("`{what}` must be a whole number"))
            };
            match k {
                "key" => f.key = Some(v.clone()),
                "provider" => f.provider = Some(v.clone()),
                "model" => f.model = Some(v.clone()),
                "outcome" => f.outcome = Some(v.clone()),
                "fallback" => f.fallback = Some(boolean("fallback", &v)?),
                "failed" => f.failed = Some(boolean("failed", &v)?),
                "since" => f.since = Some(num("since")?),
                "until" => f.until = Some(num("until")?),
                "before" => f.before = Some(u64::try_from(num("before")?).unwrap_or(0)),
                "limit" => f.limit = usize::try_from(num("limit")?).unwrap_or(0).min(MAX_LIMIT),
                _ => {
                    return Err(format!(
                        "unknown parameter `{}`",
                        crate::text::truncate(k, 40)
                    ))
                }
            }
        }
        Ok(f)
    }

    pub(crate) fn wants(&self, r: &Record) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let model_ok = self.model.as_deref().is_none_or(|m| {
            r.model.as_deref() == Some(m)
                || r.attempts.iter().any(|a| {
                    a.source == m
                        || a.source
                            .strip_prefix(m)
                            .is_some_and(|rest| rest.starts_with('/'))
                })
        });
        is(&self.key, r.key.as_deref())
            && is(&self.outcome, Some(&r.outcome))
            && self
                .provider
                .as_deref()
                .is_none_or(|p| r.attempts.iter().any(|a| a.provider == p))
            && model_ok
            && self.fallback.is_none_or(|f| r.fallback == f)
            && self
                .failed
                .is_none_or(|f| f != r.outcome.starts_with("success"))
            && self.since.is_none_or(|t| r.at >= t)
            && self.until.is_none_or(|t| r.at <= t)
            && self.before.is_none_or(|b| r.seq < b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_does_not() {
        let f = Filter::parse(Some(
            "provider=p1&model=gpt-4o%2Fp1&fallback=true&limit=9999",
        ))
        .unwrap_or_default();
        assert_eq!(f.provider.as_deref(), Some("p1"));
        assert_eq!(f.model.as_deref(), Some("gpt-4o/p1"));
        assert_eq!(f.fallback, Some(true));
        assert_eq!(f.limit, MAX_LIMIT);
        for bad in [
            "fallback=yes",
            "failed=1",
            "since=soon",
            "limit=-1x",
            "nope=1",
            "model=%zz",
        ] {
            assert!(Filter::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(Filter::parse(None).map(|f| f.limit), Ok(50));
    }
}
