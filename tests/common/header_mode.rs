//! What the header-mode tests share: a gateway with loopback opened to them, upstreams that
//! answer one status, and the request helpers.

use super::*;
use serde_json::{json, Value};

/// A provider the config needs (never called here; its host is approved, so it is not
/// loopback's).
pub const PROVIDERS: &str =
    "providers:\n  - {name: unused, kind: openai, base-url: \"http://192.0.2.1:9/v1\"}\n";

/// Loopback and high ports opened, as for a self-hosted model server.
pub fn open_cfg(extra: &str) -> String {
    format!(
        "{PROVIDERS}header-mode:\n  allow-networks: [127.0.0.0/8]\n  allow-ports: [\"1024-65535\"]\n{extra}"
    )
}

/// Loopback opened, and (every upstream here being 127.0.0.1, unapproved) the limit raised out
/// of the way; the limit's own tests use the default.
pub async fn gateway(extra: &str) -> Gateway {
    let raised = format!("  unapproved-limit: {{per-second: 1000}}\n{extra}");
    Gateway::start(&open_cfg(&raised)).await
}

pub async fn ok_upstream(body: &'static [u8]) -> RawUpstream {
    RawUpstream::start(move |_| {
        vec![Step::Send(http_response(
            200,
            &[("content-type", "application/json")],
            body,
        ))]
    })
    .await
}

pub fn origin(u: &RawUpstream) -> String {
    format!("http://{}", u.addr)
}

pub async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(gw.port, "POST", path, headers, body).await.unwrap()
}

pub fn error_code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

pub fn entry(url: &str, codes: Value) -> Value {
    json!({"target-url": url, "headers": {}, "onCodes": codes})
}

pub async fn status_upstream(status: u16, body: &'static [u8]) -> RawUpstream {
    RawUpstream::start(move |_| {
        vec![Step::Send(http_response(
            status,
            &[("content-type", "application/json")],
            body,
        ))]
    })
    .await
}

pub async fn with_fallbacks(gw: &Gateway, list: &Value, body: &[u8]) -> Response {
    post(
        gw,
        "/v1/chat/completions",
        &[
            ("helicone-fallbacks", &list.to_string()),
            ("authorization", "Bearer client-key"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}
