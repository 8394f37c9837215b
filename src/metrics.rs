//! Prometheus metrics, built once at start-up and shared by every request.
//!
//! Labels come only from bounded sets: provider names from the config, outcome and failure
//! classes from enums. Nothing a client sends becomes a label value.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Request records the full queue refused.
    pub records_dropped: prometheus::IntCounter,
    /// Config reloads by `result`: applied, refused.
    pub reloads: IntCounterVec,
    /// 1 for the loaded config's `hash` (the first 16 hex digits of its SHA-256).
    pub config: IntGaugeVec,
    /// Requests by outcome (success, upstream_client_error, all_failed, invalid_request, ...).
    pub requests: IntCounterVec,
    /// Upstream attempts by provider and outcome (success, a failure class, skipped).
    pub attempts: IntCounterVec,
    /// Moves from a failed provider to the next target, by that provider and the reason.
    pub fallbacks: IntCounterVec,
    /// Whole request, by `stream` = "true"/"false".
    pub duration: HistogramVec,
    /// Request sent → upstream response header, by provider.
    pub upstream_ttfb: HistogramVec,
    /// Request sent → first stream chunk relayed to the client, by provider.
    pub stream_ttft: HistogramVec,
    pub in_flight: IntGauge,
    /// Bytes of request bodies held now, all requests together (`limits.max-total-body-bytes`).
    pub body_bytes_held: IntGauge,
    pub attempts_per_request: Histogram,
    /// Same-target retries by provider and the reason (`server_error`, `retry_after`).
    pub retries: IntCounterVec,
    /// Circuit state per provider and catalog model (0 closed, 1 open, 2 half-open); models
    /// outside the catalog share the label `other`.
    pub circuit_state: IntGaugeVec,
    /// Circuits opened, by provider.
    pub circuit_opened: IntCounterVec,
    /// Extra attempts refused by the retry budget.
    pub budget_exhausted: prometheus::IntCounter,
    /// Tokens of served answers by provider, catalog model and kind (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Cost of served answers in USD at catalog prices, by provider and catalog model.
    pub cost_usd: CounterVec,
    /// Gateway keys, credits and the store.
    pub auth: AuthMetrics,
}

/// Gateway keys, credits and the store (never labelled by key).
pub struct AuthMetrics {
    /// Requests or targets refused by detour itself, by reason (`unauthorized`,
    /// `rate_limited`, `insufficient_credits`, `not_allowed`, `ptb_disallowed`,
    /// `store_unavailable`).
    pub rejections: IntCounterVec,
    /// Credits in USD by provider, catalog model and action (`reserved`, `settled`,
    /// `released`).
    pub credits_usd: CounterVec,
    /// Store calls by backend and operation.
    pub store_latency: HistogramVec,
    pub store_errors: IntCounterVec,
}

impl AuthMetrics {
    fn register(registry: &Registry) -> Result<AuthMetrics, prometheus::Error> {
        let rejections = IntCounterVec::new(
            Opts::new(
                "detour_auth_rejections_total",
                "Requests or targets detour refused itself, by reason",
            ),
            &["reason"],
        )?;
        let credits_usd = CounterVec::new(
            Opts::new(
                "detour_credits_usd_total",
                "Credits reserved, settled (debited) and released, in USD",
            ),
            &["provider", "model", "action"],
        )?;
        let store_latency = HistogramVec::new(
            HistogramOpts::new("detour_store_seconds", "Store call latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["backend", "op"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new("detour_store_errors_total", "Store calls that failed"),
            &["backend", "op"],
        )?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(credits_usd.clone()))?;
        registry.register(Box::new(store_latency.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        for r in [
            "unauthorized",
            "rate_limited",
            "insufficient_credits",
            "not_allowed",
            "ptb_disallowed",
            "store_unavailable",
        ] {
            rejections.with_label_values(&[r]);
        }
        Ok(AuthMetrics {
            rejections,
            credits_usd,
            store_latency,
            store_errors,
        })
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

impl Metrics {
    /// Build and register every metric; `providers` pre-creates their label children so that
    /// each series exists (at zero) from the start.
    pub fn new(providers: &[String]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "detour_requests_total",
                "Chat completion requests by outcome",
            ),
            &["outcome"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "detour_attempts_total",
                "Upstream attempts by provider and outcome",
            ),
            &["provider", "outcome"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "detour_fallbacks_total",
                "Fallbacks away from a provider, by the reason it failed",
            ),
            &["provider", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "detour_request_duration_seconds",
                "Whole request duration as seen by detour",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["stream"],
        )?;
        let upstream_ttfb = HistogramVec::new(
            HistogramOpts::new(
                "detour_upstream_ttfb_seconds",
                "Request sent upstream → response header received",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let stream_ttft = HistogramVec::new(
            HistogramOpts::new(
                "detour_stream_ttft_seconds",
                "Request sent upstream → first stream chunk relayed to the client",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let in_flight = IntGauge::new("detour_requests_in_flight", "Requests being served now")?;
        let body_bytes_held = IntGauge::new(
            "detour_request_body_bytes_held",
            "Bytes of request bodies held now, all requests together",
        )?;
        let attempts_per_request = Histogram::with_opts(
            HistogramOpts::new(
                "detour_attempts_per_request",
                "Upstream attempts made per chat completion request",
            )
            .buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 12.0]),
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "detour_retries_total",
                "Retries of the same target, by provider and reason",
            ),
            &["provider", "reason"],
        )?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "detour_circuit_state",
                "Circuit breaker state per target: 0 closed, 1 open, 2 half-open",
            ),
            &["provider", "model"],
        )?;
        let circuit_opened = IntCounterVec::new(
            Opts::new(
                "detour_circuit_opened_total",
                "Circuits opened, by provider",
            ),
            &["provider"],
        )?;
        let budget_exhausted = prometheus::IntCounter::new(
            "detour_retry_budget_exhausted_total",
            "Retries and fallbacks not made because the retry budget was spent",
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "detour_tokens_total",
                "Tokens of served answers, by provider, model and kind",
            ),
            &["provider", "model", "kind"],
        )?;
        let cost_usd = CounterVec::new(
            Opts::new(
                "detour_cost_usd_total",
                "Cost of served answers at catalog prices (USD), by provider and model",
            ),
            &["provider", "model"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(circuit_opened.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost_usd.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_ttfb.clone()))?;
        registry.register(Box::new(stream_ttft.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(body_bytes_held.clone()))?;
        registry.register(Box::new(attempts_per_request.clone()))?;
        for p in providers {
            attempts.with_label_values(&[p.as_str(), "success"]);
            upstream_ttfb.with_label_values(&[p.as_str()]);
            stream_ttft.with_label_values(&[p.as_str()]);
            circuit_opened.with_label_values(&[p.as_str()]);
            for reason in ["server_error", "retry_after"] {
                retries.with_label_values(&[p.as_str(), reason]);
            }
        }
        requests.with_label_values(&["success"]);
        let auth = AuthMetrics::register(&registry)?;
        let records_dropped = prometheus::IntCounter::new(
            "detour_records_dropped_total",
            "Request records dropped because their queue was full (the requests were served)",
        )?;
        registry.register(Box::new(records_dropped.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "detour_config_reloads_total",
                "Config reloads (SIGHUP) by result: applied, refused (the old config kept serving)",
            ),
            &["result"],
        )?;
        let config = IntGaugeVec::new(
            Opts::new(
                "detour_config_info",
                "1 for the config being served, labelled with the SHA-256 of its text (16 hex digits)",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config.clone()))?;
        for result in ["applied", "refused"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Metrics {
            reloads,
            config,
            auth,
            registry,
            records_dropped,
            requests,
            attempts,
            fallbacks,
            duration,
            upstream_ttfb,
            stream_ttft,
            in_flight,
            body_bytes_held,
            attempts_per_request,
            retries,
            circuit_state,
            circuit_opened,
            budget_exhausted,
            tokens,
            cost_usd,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
