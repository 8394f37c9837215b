//! Prometheus metrics, built once at start-up and shared by every request.
//!
//! Labels come only from bounded sets: provider names from the config, outcome and failure
//! classes from enums. Nothing a client sends becomes a label value.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
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
    pub attempts_per_request: Histogram,
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
        let attempts_per_request = Histogram::with_opts(
            HistogramOpts::new(
                "detour_attempts_per_request",
                "Upstream attempts made per chat completion request",
            )
            .buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 12.0]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_ttfb.clone()))?;
        registry.register(Box::new(stream_ttft.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(attempts_per_request.clone()))?;
        for p in providers {
            attempts.with_label_values(&[p.as_str(), "success"]);
            upstream_ttfb.with_label_values(&[p.as_str()]);
        }
        requests.with_label_values(&["success"]);
        Ok(Metrics {
            registry,
            requests,
            attempts,
            fallbacks,
            duration,
            upstream_ttfb,
            stream_ttft,
            in_flight,
            attempts_per_request,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
