//! Request records as the admin API gives them.

use super::keys::admin;
use super::Gateway;
use serde_json::Value;
use std::time::{Duration, Instant};

/// `GET path` on the admin port with the admin token.
pub async fn admin_get(gw: &Gateway, path: &str) -> super::Response {
    admin(gw, "GET", path, Value::Null).await
}

/// The record of request `id`, once the records thread has it (at most 5 s).
pub async fn recorded(gw: &Gateway, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let r = admin_get(gw, &format!("/admin/requests/{id}")).await;
        if r.status == 200 {
            return r.json();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no record of {id}: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Field `field` of every attempt in record `rec`, in order.
pub fn column<'a>(rec: &'a Value, field: &str) -> Vec<&'a Value> {
    rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a[field])
        .collect()
}
