//! The admin service on its own port: the dashboard page at `/` (`src/dashboard/`, reading the
//! API below with the admin token the user gives it), `GET /metrics` (Prometheus text), `GET /health`,
//! `GET /admin/health`: every tracked target's circuit and latency, and the retry budget (JSON);
//! behind the admin token, request records under `/admin/requests…` and their sums at
//! `/admin/stats` (`admin_records.rs`) and,
//! with gateway keys, `/admin/keys…` (`admin_keys.rs`).

use crate::metrics::Metrics;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    /// The config serving new requests: its breakers and retry budget.
    pub current: Arc<crate::proxy::Current>,
    /// Gateway keys (`auth.required`), managed under `/admin/keys`.
    pub keys: Option<Arc<crate::auth::Keys>>,
    /// Request records, under `/admin/requests`.
    pub recorder: Arc<crate::records::Recorder>,
    /// The variable holding the admin token (`auth.admin-token-env`).
    pub token_env: String,
}

pub(crate) fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

/// The dashboard's files, built into the binary (`src/dashboard/`): no CDN, works offline.
fn dashboard(path: &str) -> Option<Response<Vec<u8>>> {
    let (kind, body) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_str!("dashboard/index.html"),
        ),
        "/dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_str!("dashboard/dashboard.js"),
        ),
        "/dashboard.css" => (
            "text/css; charset=utf-8",
            include_str!("dashboard/dashboard.css"),
        ),
        _ => return None,
    };
    let mut r = respond(200, kind, body.as_bytes().to_vec());
    // Its own files only; the API's data goes into the page as text (never markup).
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-cache"),
    ] {
        r.headers_mut()
            .insert(k, http::HeaderValue::from_static(v));
    }
    Some(r)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let h = session.req_header();
        if h.uri.path() == "/admin/keys" || h.uri.path().starts_with("/admin/keys/") {
            return crate::admin_keys::serve(self.keys.as_deref(), session).await;
        }
        let path = h.uri.path();
        if path == "/admin/requests"
            || path.starts_with("/admin/requests/")
            || path == "/admin/stats"
        {
            return crate::admin_records::serve(
                &self.recorder,
                &self.current.load().health(),
                &self.token_env,
                session,
            )
            .await;
        }
        if h.method == http::Method::GET {
            if let Some(page) = dashboard(path) {
                return page;
            }
        }
        match (h.method.as_str(), h.uri.path()) {
            ("GET", "/metrics") => respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            ("GET", "/health") => respond(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            ("GET", "/admin/health") => {
                let health = self.current.load().health();
                let (targets, budget) = health.snapshot(std::time::Instant::now());
                let body = serde_json::json!({"targets": targets, "retry_budget": budget});
                respond(200, "application/json", body.to_string().into_bytes())
            }
            _ => respond(
                404,
                "application/json",
                br#"{"error":{"message":"Unknown admin URL (try /metrics, /health or /admin/health)","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#.to_vec(),
            ),
        }
    }
}
