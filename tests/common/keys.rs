//! What the gateway-key tests share: a keyed gateway over two mocks, the admin API, and a
//! real `redis-server` on a loopback port.

use super::*;
use serde_json::{json, Value};

/// `gpt-4o` on p1 then p2 and `gpt-4o-mini` on p2 (catalog prices: gpt-4o $2.50/$10 per
/// million tokens), keys required, the store given as `store`.
pub fn keyed(a: &MockServer, b: &MockServer, store: &str, extra: &str) -> String {
    format!(
        "auth: {{required: true}}\nstore: {store}\n{extra}providers:\n{}{}models:\n  gpt-4o:\n    - {{provider: p1, id: gpt-4o-p1}}\n    - {{provider: p2, id: gpt-4o-p2}}\n  gpt-4o-mini:\n    - {{provider: p2, id: mini-p2}}\n",
        provider("p1", a),
        provider("p2", b)
    )
}

pub const SQLITE: &str = "{sqlite: \"{dir}/detour.db\"}";

/// An admin API call with the admin token.
pub async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let b = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    // Boxed: the tests await many of these, and debug builds lay futures out inline.
    Box::pin(request(gw.admin_port, method, path, &h, &b))
        .await
        .unwrap()
}

/// A new key with `policy` and `credits` USD: (id, secret).
pub async fn new_key(gw: &Gateway, policy: Value, credits: f64) -> (String, String) {
    let r = Box::pin(admin(
        gw,
        "POST",
        "/admin/keys",
        json!({"name": "test", "policy": policy, "credits-usd": credits}),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// A chat completion with a gateway key.
pub async fn chat_as(gw: &Gateway, key: &str, body: &str) -> Response {
    let auth = format!("Bearer {key}");
    Box::pin(gw.chat_with(body, &[("authorization", auth.as_str())])).await
}

/// A key's ledger rows, oldest first, and its balance.
pub async fn ledger(gw: &Gateway, id: &str) -> (Vec<Value>, i64) {
    let v = admin(
        gw,
        "GET",
        &format!("/admin/keys/{id}/ledger?limit=10000"),
        Value::Null,
    )
    .await
    .json();
    let mut rows = v["data"].as_array().unwrap().clone();
    rows.reverse();
    (rows, v["balance"].as_i64().unwrap())
}

/// A key as the admin API shows it.
pub async fn key_view(gw: &Gateway, id: &str) -> Value {
    admin(gw, "GET", &format!("/admin/keys/{id}"), Value::Null)
        .await
        .json()
}

/// The ledger once `done` holds for it (at most 5 s): settlement follows the answer's end.
pub async fn ledger_when(
    gw: &Gateway,
    id: &str,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, i64) {
    let start = Instant::now();
    loop {
        let (rows, balance) = ledger(gw, id).await;
        if done(&rows) || start.elapsed() > Duration::from_secs(5) {
            return (rows, balance);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` on a loopback port, stopped when dropped.
pub struct Redis {
    pub url: String,
    child: Child,
}

impl Redis {
    pub async fn start() -> Redis {
        let (sock, port) = reserved_port();
        drop(sock);
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis {
            url: format!("redis://127.0.0.1:{port}/0"),
            child,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `n` chat requests with `body` as `key`, spread over `ports`, `parallel` at a time; the
/// statuses in the order sent (0: no answer, e.g. the gateway was killed).
pub async fn burst(ports: &[u16], key: &str, body: &str, n: usize, parallel: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for round in 0..n.div_ceil(parallel) {
        let tasks: Vec<_> = (0..parallel.min(n - round * parallel))
            .map(|i| {
                let port = ports[(round * parallel + i) % ports.len()];
                let (auth, b) = (format!("Bearer {key}"), body.to_string());
                tokio::spawn(async move {
                    let h = [
                        ("content-type", "application/json"),
                        ("authorization", auth.as_str()),
                    ];
                    let r = request(port, "POST", "/v1/chat/completions", &h, b.as_bytes());
                    Box::pin(r).await.map_or(0, |r| r.status)
                })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap_or(0));
        }
    }
    out
}

/// How many of `statuses` are `s`.
pub fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|x| **x == s).count()
}
