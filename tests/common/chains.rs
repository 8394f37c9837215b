//! What the failover tests share: two-target chains, gateways with short per-attempt
//! timeouts, and checks of what a stream ended with.

use super::*;
use std::time::Duration;

pub const TIMEOUTS: &str =
    "timeouts: {connect: 1s, first-byte: 1s, first-token: 1s, idle: 1s, total: 20s}\n";
/// Each per-attempt timeout of [`TIMEOUTS`] (connect, first-byte, first-token, idle). Time
/// bounds here are derived from it: "at once" is sooner than any timeout could fire, "one
/// timeout" is at least one and less than two.
pub const T: Duration = Duration::from_secs(1);
/// How much sooner than configured a timer may fire, measured from the client.
pub const EARLY: Duration = Duration::from_millis(50);

/// `gpt-4o` on p1 then p2, with a `failover:` section.
pub fn chain(a: &MockServer, b: &MockServer, failover: &str) -> String {
    format!(
        "failover:\n{failover}providers:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1, id: gpt-4o-p1}}\n    - {{provider: p2, id: gpt-4o-p2}}\n",
        provider("p1", a),
        provider("p2", b)
    )
}

pub async fn gateway(body: &str) -> Gateway {
    Gateway::start_full(body, TIMEOUTS).await
}

pub fn mock_cfg(name: &str) -> MockConfig {
    MockConfig {
        name: name.into(),
        ..MockConfig::default()
    }
}

/// One target's entry in `GET /admin/health`.
pub async fn admin_target(gw: &Gateway, provider: &str) -> serde_json::Value {
    let h = request(gw.admin_port, "GET", "/admin/health", &[], b"")
        .await
        .unwrap()
        .json();
    h["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["provider"] == provider)
        .unwrap_or_else(|| panic!("no {provider} in {h}"))
        .clone()
}

pub fn ends_with_done(body: &[u8]) -> bool {
    sse_data(body).last().map(String::as_str) == Some("[DONE]")
}

/// The stream was cut and says so: an error event last, and no `[DONE]` anywhere.
pub fn assert_cut(body: &[u8], code: &str) {
    let data = sse_data(body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], code, "{data:?}");
}

/// `gpt-4o` on p1 then p2, no `failover:` section.
pub fn two(a: &MockServer, b: &MockServer) -> String {
    format!(
        "providers:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1, id: gpt-4o-p1}}\n    - {{provider: p2, id: gpt-4o-p2}}\n",
        provider("p1", a),
        provider("p2", b)
    )
}
