//! Test harness: the real `detour` binary on a free loopback port, mock providers on
//! `127.0.0.1:0`, and a small HTTP/1.1 client that sees the bytes exactly as sent.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use detour::mock::{Fault, MockConfig, MockServer};

pub mod chains;
pub mod header_mode;
pub mod keys;
mod raw;
pub mod records;
pub use raw::*;

static N: AtomicUsize = AtomicUsize::new(0);

/// A port reserved for the test: a socket bound to it (with `SO_REUSEADDR`, not listening)
/// keeps every other process from taking it while connections to it are refused. A detour
/// may still bind and listen on it (it sets `SO_REUSEADDR` too). Keep the socket alive.
pub fn reserved_port() -> (tokio::net::TcpSocket, u16) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = sock.local_addr().unwrap().port();
    (sock, port)
}

/// Listening sockets bound on port 0, for a detour to take over (see [`hand_over`]).
pub fn listeners(n: usize) -> Vec<std::net::TcpListener> {
    (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect()
}

/// Hand `listeners` to a detour started with `-u`, over its upgrade socket: Pingora's graceful
/// upgrade, with the test in the old process's place. No port is picked and bound later, so
/// no other process can take it in between. Blocks until detour has taken them (detour's
/// receiving side polls once a second).
pub async fn hand_over(upgrade_sock: &std::path::Path, listeners: Vec<std::net::TcpListener>) {
    use std::os::fd::AsRawFd;
    let path = upgrade_sock.display().to_string();
    tokio::task::spawn_blocking(move || {
        let mut fds = pingora_core::server::Fds::new();
        for l in &listeners {
            // Pingora's runtime takes the socket as it is: it must not block.
            l.set_nonblocking(true).unwrap();
            fds.add(l.local_addr().unwrap().to_string(), l.as_raw_fd());
        }
        let sent = fds.send_to_sock(path.as_str());
        assert!(sent.is_ok(), "handing the listeners over failed: {sent:?}");
        // The receiver has its own copies now; ours close here.
        drop(listeners);
    })
    .await
    .unwrap();
}

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "detour-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub async fn mock(name: &str) -> MockServer {
    mock_with(MockConfig {
        name: name.into(),
        ..MockConfig::default()
    })
    .await
}

pub async fn mock_with(cfg: MockConfig) -> MockServer {
    MockServer::start("127.0.0.1:0", cfg).await.unwrap()
}

/// A `providers:` entry for a mock.
pub fn provider(name: &str, m: &MockServer) -> String {
    format!(
        "  - {{name: {name}, kind: openai, base-url: \"{}\", api-key-env: DETOUR_TEST_KEY}}\n",
        m.base_url()
    )
}

/// A provider entry of kind `anthropic` for mock `m`, with the test key.
pub fn anthropic_provider(name: &str, m: &MockServer) -> String {
    format!(
        "  - {{name: {name}, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n",
        m.addr
    )
}

/// The secret the gateway's providers get from `DETOUR_TEST_KEY`.
pub const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";
/// A second provider key, from `DETOUR_TEST_KEY2`.
pub const PROVIDER_KEY2: &str = "sk-second-provider-key-abcdefgh";

/// The AWS credentials every test gateway gets from the standard env vars.
pub const AWS_KEY_ID: &str = "AKIDDETOURTEST";
pub const AWS_SECRET: &str = "detour/test/secret/key/0123456789abcdefghij";
pub const AWS_TOKEN: &str = "detour-session-token-IQoJb3JpZ2luX2VjEXAMPLE";

/// The admin token test gateways get from `DETOUR_ADMIN_TOKEN`.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
/// The BYOK master key test gateways get from `DETOUR_MASTER_KEY` (32 bytes, hex).
pub const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub child: Child,
}

impl Gateway {
    /// Start detour with `body` (providers, models, anything but server/listen/admin) appended
    /// to a test header with short timeouts.
    pub async fn start(body: &str) -> Gateway {
        Self::start_full(
            body,
            "timeouts: {connect: 1s, first-byte: 2s, idle: 2s, total: 20s}\n",
        )
        .await
    }

    pub async fn start_full(body: &str, timeouts: &str) -> Gateway {
        Self::start_inner(body, timeouts, "").await
    }

    /// Like [`Gateway::start`], with extra lines for the `server:` section (two-space indented).
    pub async fn start_with_server(body: &str, server_extra: &str) -> Gateway {
        Self::start_inner(
            body,
            "timeouts: {connect: 2s, first-byte: 2s, idle: 2s, total: 20s}\n",
            server_extra,
        )
        .await
    }

    async fn start_inner(body: &str, timeouts: &str, server_extra: &str) -> Gateway {
        let dir = temp_dir();
        let socks = listeners(2);
        let port = socks[0].local_addr().unwrap().port();
        let admin_port = socks[1].local_addr().unwrap().port();
        let body = body.replace("{dir}", &dir.display().to_string());
        let yaml = format!(
            "server:\n  threads: 2\n  pid_file: {d}/detour.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n{server_extra}listen: [\"127.0.0.1:{port}\"]\nadmin:\n  listen: 127.0.0.1:{admin_port}\n{timeouts}{body}",
            d = dir.display()
        );
        std::fs::write(dir.join("detour.yaml"), &yaml).unwrap();
        // Listeners bound here on port 0, taken over by detour (`-u`).
        let child = Self::spawn(&dir, &["-u"]);
        let gw = Gateway {
            port,
            admin_port,
            dir,
            child,
        };
        hand_over(&gw.dir.join("upgrade.sock"), socks).await;
        gw.wait_ready().await;
        gw
    }

    pub fn spawn(dir: &std::path::Path, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_detour"))
            .current_dir(dir) // the records file (`detour-records.db`) lands beside the config
            .arg("-c")
            .arg(dir.join("detour.yaml"))
            .args(extra)
            .env("DETOUR_TEST_KEY", PROVIDER_KEY)
            .env("DETOUR_TEST_KEY2", PROVIDER_KEY2)
            .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("AWS_SESSION_TOKEN", AWS_TOKEN)
            .env("DETOUR_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("DETOUR_MASTER_KEY", MASTER_KEY)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub async fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = tokio::time::timeout(
                Duration::from_millis(500),
                request(self.port, "GET", "/health", &[], b""),
            )
            .await
            {
                if r.map(|r| r.status == 200).unwrap_or(false) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("detour did not become ready; stderr: {}", self.stderr());
    }

    /// The gateway's stderr once `done` holds for it (at most 5 s): the access log line is
    /// written in Pingora's logging phase, just after the response's last byte.
    pub async fn stderr_when(&self, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.stderr();
            if done(&s) || start.elapsed() > Duration::from_secs(5) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub async fn chat(&self, body: &str) -> Response {
        self.chat_with(body, &[]).await
    }

    pub async fn chat_with(&self, body: &str, headers: &[(&str, &str)]) -> Response {
        self.post_json("/v1/chat/completions", body, headers).await
    }

    /// `POST path` with a JSON body and `headers`.
    pub async fn post_json(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        request(self.port, "POST", path, &h, body.as_bytes())
            .await
            .unwrap()
    }

    /// The metrics text once it contains every line of `lines` (at most 2 s). Request-level
    /// counters are updated in Pingora's `logging()` phase, which runs just after the response's
    /// last byte is written: a client can read /metrics before it has run.
    pub async fn metrics_with(&self, lines: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.lines().any(|x| x == *l))
                || start.elapsed() > Duration::from_secs(2)
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The metrics text, asserted to contain every line of `lines` once [`Gateway::metrics_with`]
    /// has waited for them.
    pub async fn expect_metrics(&self, lines: &[&str]) -> String {
        let m = self.metrics_with(lines).await;
        assert!(lines.iter().all(|l| m.contains(l)), "{m}");
        m
    }

    /// Stop with SIGINT (Pingora's fast stop) and wait until the process has exited.
    pub async fn stop_fast(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10), "did not stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let r = request(self.admin_port, "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        String::from_utf8(r.body).unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When each body chunk arrived (chunked responses), relative to the request being sent.
    pub chunk_times: Vec<Duration>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The venv python with the official SDKs (created by scripts/sdk-venv.sh if missing).
pub fn sdk_python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/sdk-venv.sh"))
        .output()
        .expect("run scripts/sdk-venv.sh");
    assert!(
        out.status.success(),
        "venv setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Run a script from tests/sdk/ with the venv python, off the async runtime's threads.
pub async fn run_sdk_script(script: &str, args: Vec<String>) -> std::process::Output {
    let python = sdk_python();
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    tokio::task::spawn_blocking(move || Command::new(python).arg(path).args(args).output())
        .await
        .unwrap()
        .unwrap()
}

pub fn chat_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":{stream},"x_unknown_field":{{"kept":[1,2,3]}}}}"#
    )
}

/// Write one request and read one response (Content-Length, chunked, or until close).
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await?;
    send_request(&mut sock, method, path, headers, body).await?;
    read_response(&mut sock).await
}

pub async fn send_request(
    sock: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" || !body.is_empty() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    Ok(())
}

/// The longest a test waits for the next bytes of an answer: a hang is a failure that names
/// itself, never a CI run that stops at its time limit.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);

/// One read from the socket, bounded by [`READ_DEADLINE`].
pub async fn read_some(sock: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    match tokio::time::timeout(READ_DEADLINE, sock.read(buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no bytes from the gateway within the test's read deadline",
        )),
    }
}

/// Read a response head; returns the parsed head and any body bytes already read.
pub async fn read_head(
    sock: &mut TcpStream,
) -> std::io::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    read_head_after(sock, Vec::with_capacity(4096)).await
}

/// [`read_head`] when some of its bytes were already read (e.g. after an interim `1xx` head).
pub async fn read_head_after(
    sock: &mut TcpStream,
    mut buf: Vec<u8>,
) -> std::io::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = resp
            .parse(&buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = resp.code.unwrap_or(0);
            return Ok((status, headers, buf[n..].to_vec()));
        }
        let mut tmp = vec![0u8; 4096];
        let n = read_some(sock, &mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

pub async fn read_response(sock: &mut TcpStream) -> std::io::Result<Response> {
    // Boxed: debug builds lay nested futures out inline, and tests await many of these.
    Box::pin(read_response_after(sock, Vec::new())).await
}

/// [`read_response`] when its first bytes were already read.
pub async fn read_response_after(
    sock: &mut TcpStream,
    already: Vec<u8>,
) -> std::io::Result<Response> {
    let start = Instant::now();
    let (status, headers, mut rest) = read_head_after(sock, already).await?;
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let mut chunk_times = Vec::new();
    if let Some(cl) = get("content-length") {
        let n: usize = cl.trim().parse().unwrap();
        while rest.len() < n {
            let mut tmp = vec![0u8; 65536];
            let k = read_some(sock, &mut tmp).await?;
            if k == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body shorter than content-length",
                ));
            }
            rest.extend_from_slice(&tmp[..k]);
        }
        body = rest[..n].to_vec();
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut dec = ChunkDecoder::new(rest);
        while let Some(c) = dec.next_chunk(sock).await? {
            chunk_times.push(start.elapsed());
            body.extend_from_slice(&c);
        }
    } else {
        let mut tmp = vec![0u8; 65536];
        loop {
            let k = read_some(sock, &mut tmp).await?;
            if k == 0 {
                break;
            }
            rest.extend_from_slice(&tmp[..k]);
        }
        body = rest;
    }
    Ok(Response {
        status,
        headers,
        body,
        chunk_times,
    })
}

/// Incremental chunked-transfer decoding over a socket.
pub struct ChunkDecoder {
    buf: Vec<u8>,
    done: bool,
}

impl ChunkDecoder {
    pub fn new(initial: Vec<u8>) -> Self {
        ChunkDecoder {
            buf: initial,
            done: false,
        }
    }

    async fn fill(&mut self, sock: &mut TcpStream) -> std::io::Result<()> {
        let mut tmp = vec![0u8; 65536];
        let n = read_some(sock, &mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside a chunked body",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// The next chunk's data; `None` after the terminating zero-length chunk.
    pub async fn next_chunk(&mut self, sock: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = std::str::from_utf8(&self.buf[..pos]).unwrap().to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .map_err(|e| std::io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
                let need = pos + 2 + size + 2;
                while self.buf.len() < need {
                    self.fill(sock).await?;
                }
                let data = self.buf[pos + 2..pos + 2 + size].to_vec();
                self.buf.drain(..need);
                if size == 0 {
                    self.done = true;
                    return Ok(None);
                }
                return Ok(Some(data));
            }
            self.fill(sock).await?;
        }
    }
}

/// The text of a streamed OpenAI answer: its content deltas, joined.
pub fn streamed_text(body: &[u8]) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// SSE `data:` payloads in a body, in order.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|s| s.trim().to_string())
        })
        .collect()
}

/// A TLS front for a plain mock: a certificate for `localhost` signed by a fresh test CA,
/// ALPN `http/1.1` only, each connection forwarded to `target`. Records the SNI it was sent.
pub struct TlsFront {
    pub port: u16,
    pub ca_file: PathBuf,
    pub sni: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub handshakes_failed: std::sync::Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn tls_front(target: std::net::SocketAddr, dir: &std::path::Path) -> TlsFront {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = std::sync::Arc::new(AtomicUsize::new(0));
    let (sni2, failed2) = (sni.clone(), failed.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, sni, failed) = (acceptor.clone(), sni2.clone(), failed2.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let name = tls.get_ref().1.server_name().unwrap_or("").to_string();
                sni.lock().unwrap().push(name);
                if let Ok(mut up) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    TlsFront {
        port,
        ca_file,
        sni,
        handshakes_failed: failed,
        task,
    }
}
