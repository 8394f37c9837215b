//! The binary as an operator runs it: `-t`, `-d`, SIGTERM draining, SIGQUIT + `-u` upgrade.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn detour() -> Command {
    Command::new(env!("CARGO_BIN_EXE_detour"))
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn wait_gone(pid: u32, limit: Duration) -> Duration {
    let t = Instant::now();
    while alive(pid) && t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    t.elapsed()
}

#[test]
fn dash_t_validates_every_shipped_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{root}/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = detour().arg("-t").arg("-c").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // No -c: the built-in default.
    assert!(detour().arg("-t").status().unwrap().success());
}

#[test]
fn dash_t_names_the_yaml_path_of_a_fault() {
    let dir = temp_dir();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "listen: [\"127.0.0.1:1\"]\nproviders:\n  - {name: openai, kind: openai, base-url: \"https://api.openai.com/v1\"}\nmodels:\n  gpt-4o:\n    - {provider: openai}\n    - {provider: opnai}\n",
    )
    .unwrap();
    let out = detour().arg("-t").arg("-c").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models.gpt-4o[1].provider: unknown provider `opnai`"),
        "{err}"
    );
    std::fs::write(&file, "listen: [\"127.0.0.1:1\"]\nprovders: []\n").unwrap();
    let out = detour().arg("-t").arg("-c").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provders"));
    let out = detour()
        .args(["-t", "-c", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn dash_t_warns_of_a_listener_beyond_loopback_without_keys() {
    let dir = temp_dir();
    let file = dir.join("open.yaml");
    let models = "providers:\n  - {name: openai, kind: openai, base-url: \"https://api.openai.com/v1\"}\nmodels:\n  gpt-4o: [{provider: openai}]\n";
    let warned = |head: &str| {
        std::fs::write(&file, format!("{head}{models}")).unwrap();
        let out = detour().arg("-t").arg("-c").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr)
            .contains("listens beyond loopback without auth.required")
    };
    assert!(warned("listen: [\"127.0.0.1:8080\", \"0.0.0.0:8081\"]\n"));
    assert!(!warned("listen: [\"127.0.0.1:8080\", \"[::1]:8081\"]\n"));
    let store = format!("store: {{sqlite: \"{}/k.db\"}}\n", dir.display());
    assert!(!warned(&format!(
        "listen: [\"0.0.0.0:8081\"]\nauth: {{required: true}}\n{store}"
    )));
}

fn config(dir: &std::path::Path, port: u16, m: &MockServer, grace: u32) -> String {
    format!(
        "server:\n  threads: 2\n  pid_file: {d}/detour.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: {grace}\n  graceful_shutdown_timeout_seconds: 1\nlisten: [\"127.0.0.1:{port}\"]\naccess-log: false\nproviders:\n{}models:\n  gpt-4o: [{{provider: p1}}]\n",
        provider("p1", m),
        d = dir.display()
    )
}

/// `detour keys ARGS -c FILE`: its JSON answer.
fn keys_cli(cfg: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = detour()
        .arg("keys")
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A daemon (`-d` forks after start-up: no thread started before survives it) writes its pid
/// file, debits its keys' credits, keeps its request records, and stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_writes_its_pid_file_debits_keys_and_keeps_records() {
    let m = mock("m").await;
    let dir = temp_dir();
    // The ports stay reserved for this test until detour listens on them.
    let (reserved, port) = reserved_port();
    let (reserved_admin, admin) = reserved_port();
    let cfg = dir.join("detour.yaml");
    let keyed = format!(
        "{}admin: {{listen: \"127.0.0.1:{admin}\"}}\nauth: {{required: true}}\nstore: {{sqlite: {d}/detour.db}}\n",
        config(&dir, port, &m, 1),
        d = dir.display()
    );
    std::fs::write(&cfg, keyed).unwrap();
    let key = keys_cli(&cfg, &["create", "daemon", "--credits", "5"]);
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let pid = start_daemon(&dir, &cfg, port).await;
    drop((reserved, reserved_admin));
    keyed_request(pid, port, secret, "daemon-1").await;
    // The debit reaches the file (the ledger writer runs in the daemon).
    wait_debited(&cfg, id).await;
    // And its record is kept (the records thread runs in the daemon).
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let t = Instant::now();
    loop {
        let r = request(
            admin,
            "GET",
            "/admin/requests/daemon-1",
            &[("authorization", &admin_auth)],
            b"",
        )
        .await
        .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no record: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dir.join("detour-records.db").exists());
    signal(pid, "-TERM");
    assert!(wait_gone(pid, Duration::from_secs(10)).await < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream() {
    let slow = mock_with(MockConfig {
        name: "slow".into(),
        chunks: 10,
        chunk_interval: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let dir = temp_dir();
    let socks = listeners(1);
    let port = socks[0].local_addr().unwrap().port();
    std::fs::write(dir.join("detour.yaml"), config(&dir, port, &slow, 3)).unwrap();
    let mut child = Gateway::spawn(&dir, &["-u"]);
    hand_over(&dir.join("upgrade.sock"), socks).await;
    let gw_pid = child.id();
    let t = Instant::now();
    while request(port, "GET", "/health", &[], b"").await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = chat_body("gpt-4o", true);
    let stream = tokio::spawn(async move {
        request(port, "POST", "/v1/chat/completions", &[], body.as_bytes()).await
    });
    // The stream is in flight once it has reached the upstream.
    let t = Instant::now();
    while slow.calls() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(gw_pid, "-TERM");
    let r = stream.await.unwrap().expect("the stream completes");
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    assert_eq!(data.len(), 13, "every event of the stream arrived");
    let gone = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    assert!(gone.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_loses_no_request() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        delay: Duration::from_millis(20),
        chunks: 5,
        chunk_interval: Duration::from_millis(40),
        record: false,
        ..MockConfig::default()
    })
    .await;
    let dir = temp_dir();
    let socks = listeners(1);
    let port = socks[0].local_addr().unwrap().port();
    std::fs::write(dir.join("detour.yaml"), config(&dir, port, &m, 2)).unwrap();
    let mut old = Gateway::spawn(&dir, &["-u"]);
    hand_over(&dir.join("upgrade.sock"), socks).await;
    let old_pid = old.id();
    let t = Instant::now();
    while request(port, "GET", "/health", &[], b"").await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Load: 8 clients, a new connection per request, half of them 200 ms streams.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut ids = std::collections::HashSet::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let stream = (c + i).is_multiple_of(2);
                i += 1;
                let body = chat_body("gpt-4o", stream);
                match request(port, "POST", "/v1/chat/completions", &[], body.as_bytes()).await {
                    Ok(r) if r.status == 200 => {
                        let complete = if stream {
                            sse_data(&r.body).last().map(String::as_str) == Some("[DONE]")
                        } else {
                            r.json()["choices"][0]["message"]["content"].is_string()
                        };
                        if complete {
                            ok.fetch_add(1, Ordering::SeqCst);
                            let id = r.header("x-request-id").unwrap_or("").to_string();
                            ids.insert(id.get(..16).unwrap_or("").to_string());
                        } else {
                            failures.push(format!("incomplete: {}", r.text()));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}: {}", r.status, r.text())),
                    Err(e) => failures.push(format!("error: {e}")),
                }
            }
            (failures, ids)
        }));
    }
    let served_at_least = |n: usize| {
        let ok = ok.clone();
        async move {
            let t = Instant::now();
            while ok.load(Ordering::SeqCst) < n {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "load stalled below {n}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    served_at_least(20).await;
    let before = ok.load(Ordering::SeqCst);
    // The new process waits for the listeners on the upgrade socket; SIGQUIT makes the old
    // one hand them over.
    let mut new = Gateway::spawn(&dir, &["-u"]);
    let t = Instant::now();
    while !dir.join("upgrade.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no upgrade socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(old_pid, "-QUIT");
    let old_exit = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let _ = old.wait();
        t.elapsed()
    });
    let old_took = old_exit.await.unwrap();
    // The new process alone serves more.
    let after_old = ok.load(Ordering::SeqCst);
    served_at_least(after_old + 20).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let mut prefixes = std::collections::HashSet::new();
    for c in clients {
        let (f, ids) = c.await.unwrap();
        failures.extend(f);
        prefixes.extend(ids);
    }
    let total = ok.load(Ordering::SeqCst);
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        before > 10,
        "load was running before the upgrade ({before})"
    );
    assert!(
        total > before + 10,
        "requests kept succeeding: {before} → {total}"
    );
    assert_eq!(
        prefixes.len(),
        2,
        "both the old and the new process served: {prefixes:?}"
    );
    assert!(
        old_took < Duration::from_secs(8),
        "old process exited after {old_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_a_clean_start_up_error() {
    let m = mock("m").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir();
    std::fs::write(dir.join("detour.yaml"), config(&dir, port, &m, 1)).unwrap();
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        detour()
            .arg("-c")
            .arg(dir.join("detour.yaml"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);
}

/// Start `detour -d -c cfg` in `dir`; its pid once it answers on `port`.
async fn start_daemon(dir: &std::path::Path, cfg: &std::path::Path, port: u16) -> u32 {
    let status = detour()
        .current_dir(dir)
        .arg("-d")
        .arg("-c")
        .arg(cfg)
        .env("DETOUR_TEST_KEY", PROVIDER_KEY)
        .env("DETOUR_ADMIN_TOKEN", ADMIN_TOKEN)
        // Not the test's own pipes: a daemon left behind must not hold them open.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the foreground process returns once daemonized"
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(s) = std::fs::read_to_string(dir.join("detour.pid")) {
            if let Ok(p) = s.trim().parse::<u32>() {
                if request(port, "GET", "/health", &[], b"").await.is_ok() {
                    return p;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon not up with a pid file")
}

/// A chat request with gateway key `secret` that must be answered 200, bounded: a daemon
/// without its store's connection or its ledger writer would leave it waiting. On failure the
/// daemon is killed, not left behind.
async fn keyed_request(pid: u32, port: u16, secret: &str, id: &str) {
    let auth = format!("Bearer {secret}");
    let body = chat_body("gpt-4o", false);
    let headers = [("authorization", auth.as_str()), ("x-request-id", id)];
    let keyed = request(
        port,
        "POST",
        "/v1/chat/completions",
        &headers,
        body.as_bytes(),
    );
    let r = tokio::time::timeout(Duration::from_secs(10), keyed)
        .await
        .unwrap_or_else(|_| {
            signal(pid, "-KILL");
            panic!("the keyed request was never answered")
        })
        .unwrap();
    if r.status != 200 {
        signal(pid, "-KILL");
        panic!("{}: {}", r.status, r.text());
    }
}

/// Wait (at most 5 s) until key `id`'s balance is below its 5 USD.
async fn wait_debited(cfg: &std::path::Path, id: &str) {
    let t = Instant::now();
    while keys_cli(cfg, &["show", id])["balance"] == 5_000_000 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the answer was never debited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same on the Redis store: the daemon connects to Redis after it forks (a connection made
/// before, as the start-up's check and recovery make one, does not survive the fork).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_the_redis_store_serves_and_debits_keys() {
    let redis = common::keys::Redis::start().await;
    let m = mock("m").await;
    let dir = temp_dir();
    let (reserved, port) = reserved_port();
    let cfg = dir.join("detour.yaml");
    let keyed = format!(
        "{}auth: {{required: true}}\nstore: {{redis: \"{}\"}}\n",
        config(&dir, port, &m, 1),
        redis.url
    );
    std::fs::write(&cfg, keyed).unwrap();
    let key = keys_cli(&cfg, &["create", "daemon", "--credits", "5"]);
    let (id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());
    let pid = start_daemon(&dir, &cfg, port).await;
    drop(reserved);
    for i in 0..2 {
        keyed_request(pid, port, secret, &format!("daemon-redis-{i}")).await;
    }
    wait_debited(&cfg, id).await;
    signal(pid, "-TERM");
    assert!(wait_gone(pid, Duration::from_secs(10)).await < Duration::from_secs(10));
}
