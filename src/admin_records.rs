//! `/admin/requests…` and `/admin/stats` on the admin port, behind the admin token:
//!
//! | method and path | does |
//! |---|---|
//! | `GET /admin/requests?key=&provider=&model=&outcome=&fallback=&failed=&since=&until=&before=&limit=` | the newest records that match, newest first; `next` is the `before` of the next page |
//! | `GET /admin/requests/{id}` | one request with all its attempts |
//! | `GET /admin/stats?window=5m\|1h\|24h` | per provider and model: requests, rates, failure classes, attempts per request, latency and TTFT percentiles, the circuit (`records::stats`) |
//!
//! Reads of the records file run on tokio's blocking pool.

use crate::admin::respond;
use crate::admin_keys::{authorized, error};
use crate::engine::health::Health;
use crate::records::{stats, Filter, Recorder};
use http::Response;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

/// Run a blocking read of the records on the blocking pool; its failure is a 503.
async fn blocking<T: Send + 'static>(
    recorder: &Arc<Recorder>,
    f: impl FnOnce(&Recorder) -> Result<T, String> + Send + 'static,
) -> Result<T, Response<Vec<u8>>> {
    let r = recorder.clone();
    match tokio::task::spawn_blocking(move || f(&r)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the request records could not be read");
            Err(error(503, "the request records could not be read"))
        }
        Err(_) => Err(error(503, "the request records could not be read")),
    }
}

fn json(body: String) -> Response<Vec<u8>> {
    respond(200, "application/json", body.into_bytes())
}

pub async fn serve(
    recorder: &Arc<Recorder>,
    health: &Health,
    token_env: &str,
    session: &ServerSession,
) -> Response<Vec<u8>> {
    if let Err(e) = authorized(token_env, session) {
        return error(e.status, &e.message);
    }
    let h = session.req_header();
    if h.method != http::Method::GET {
        return error(405, "records are read with GET");
    }
    let path = h.uri.path().trim_end_matches('/');
    let query = h.uri.query().map(str::to_string);
    if path == "/admin/stats" {
        return serve_stats(recorder, health, query.as_deref()).await;
    }
    match path.strip_prefix("/admin/requests") {
        Some("") => match Filter::parse(query.as_deref()) {
            Ok(f) => list(recorder, f).await,
            Err(m) => error(400, &m),
        },
        Some(rest) => {
            let Some(id) = crate::text::percent_decode(rest.trim_start_matches('/')) else {
                return error(400, "the request id is not URL-encoded");
            };
            match blocking(recorder, move |r| r.get(&id)).await {
                Ok(Some(body)) => json(body),
                Ok(None) => error(404, "no record of that request (past the retention?)"),
                Err(resp) => resp,
            }
        }
        None => error(404, "unknown admin URL"),
    }
}

async fn list(recorder: &Arc<Recorder>, f: Filter) -> Response<Vec<u8>> {
    let limit = f.limit;
    let found = match blocking(recorder, move |r| r.list(&f)).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let next = (found.len() == limit && limit > 0)
        .then(|| found.last().map(|(seq, _)| *seq))
        .flatten();
    let mut body = String::from(r#"{"object":"list","data":["#);
    for (i, (_, rec)) in found.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(rec);
    }
    body.push_str(r#"],"next":"#);
    body.push_str(&next.map_or_else(|| "null".to_string(), |n| n.to_string()));
    body.push('}');
    json(body)
}

async fn serve_stats(
    recorder: &Arc<Recorder>,
    health: &Health,
    query: Option<&str>,
) -> Response<Vec<u8>> {
    let mut window = None;
    for (k, v) in crate::records::query_pairs(query) {
        match k {
            "window" => window = Some(v),
            _ => {
                let k = crate::text::truncate(k, 40);
                return error(400, &format!("unknown parameter `{k}`"));
            }
        }
    }
    let (name, span) = match stats::window(window) {
        Ok(w) => w,
        Err(m) => return error(400, &m),
    };
    let since = crate::store::now_ms() - i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    let rows = match blocking(recorder, move |r| r.window(since)).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let (totals, routes) = stats::summarize(&rows);
    let (breakers, budget) = health.snapshot(std::time::Instant::now());
    let routes: Vec<serde_json::Value> = routes
        .into_iter()
        .map(|r| {
            let circuit = breakers
                .iter()
                .find(|b| b.provider == r.provider && b.model == r.model)
                .map(|b| b.state);
            let mut v = serde_json::json!(r);
            v["circuit"] = serde_json::json!(circuit);
            v
        })
        .collect();
    let body = serde_json::json!({
        "window": name,
        "since": since,
        "totals": totals,
        "routes": routes,
        "breakers": breakers,
        "retry_budget": budget,
    });
    json(body.to_string())
}
