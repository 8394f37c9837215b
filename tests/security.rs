//! What a client sends is untrusted: a model id must not steer the operator's key to another
//! path of a provider, grow detour's memory, or carry a header through; bodies are bounded one
//! by one and all together. Real sockets, the mock provider recording what it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::time::Duration;

/// A provider of `kind` in front of mock `m`, and its base-url's path prefix.
fn kind_provider(kind: &str, m: &MockServer, key_file: &str) -> String {
    let a = m.addr;
    match kind {
        "openai" => format!("  - {{name: p, kind: openai, base-url: \"http://{a}/v1\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "azure" => format!("  - {{name: p, kind: azure, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY, api-version: \"2024-10-21\"}}\n"),
        "anthropic" => format!("  - {{name: p, kind: anthropic, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "google-ai-studio" => format!("  - {{name: p, kind: google-ai-studio, base-url: \"http://{a}\", api-key-env: DETOUR_TEST_KEY}}\n"),
        "bedrock" => format!("  - {{name: p, kind: bedrock, base-url: \"http://{a}\", region: us-east-1}}\n"),
        "vertex" => format!("  - {{name: p, kind: vertex, project: detour-test, region: us-east5, base-url: \"http://{a}\", credentials-file: \"{key_file}\"}}\n"),
        _ => unreachable!(),
    }
}

/// The test service account with its token endpoint on `m`.
fn vertex_key(m: &MockServer) -> String {
    let mut sa: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vertex-test-service-account.json")).unwrap();
    sa["token_uri"] = serde_json::Value::from(format!("http://{}/token", m.addr));
    let path = temp_dir().join("sa.json");
    std::fs::write(&path, serde_json::to_vec(&sa).unwrap()).unwrap();
    path.display().to_string()
}

/// Credentials a client might send for each cloud.
const CLIENT_CREDENTIALS: &[(&str, &str)] = &[
    ("authorization", "Bearer client-openai-key"),
    ("api-key", "client-azure-key"),
    ("x-api-key", "client-anthropic-key"),
    ("x-goog-api-key", "client-google-key"),
    ("x-amz-security-token", "client-aws-token"),
    ("x-amz-date", "20990101T000000Z"),
    ("ocp-apim-subscription-key", "client-apim-key"),
];

/// An id with every character that could steer a URL but is allowed in an id.
const ODD_ID: &str = "org/x:y@z%2e~";

/// Send `ODD_ID/p` to a provider of `kind`; return the path (and model in the body) the mock
/// received. Then every id that must be refused is a 400 naming its entry, with nothing sent.
async fn path_for(kind: &str) -> (String, Option<String>) {
    let m = mock("m").await;
    let key = vertex_key(&m);
    let gw = Gateway::start(&format!("providers:\n{}", kind_provider(kind, &m, &key))).await;
    // Credentials a client sends for any cloud never reach a provider.
    let mut headers = CLIENT_CREDENTIALS.to_vec();
    headers.push(("x-client-note", "kept"));
    let r = gw
        .chat_with(&chat_body(&format!("{ODD_ID}/p"), false), &headers)
        .await;
    assert_eq!(r.status, 200, "{kind}: {}", r.text());
    assert_eq!(r.header("x-detour-model"), Some(ODD_ID));
    let reqs: Vec<_> = m
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with("/token"))
        .collect();
    assert_eq!(reqs.len(), 1, "{kind}");
    for (name, value) in &reqs[0].headers {
        assert!(
            !CLIENT_CREDENTIALS.iter().any(|(_, v)| value.contains(v)),
            "{kind}: the client's {name} reached the provider"
        );
    }
    assert!(
        reqs[0].header("x-client-note").is_some(),
        "{kind}: others pass"
    );
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    let model = body["model"].as_str().map(str::to_string);

    let calls = m.calls();
    let long = "x".repeat(257);
    for bad in [
        "../../../admin",
        "x?alt=json&key=evil",
        "x#frag",
        "a\r\nb",
        "a b",
        "..",
        long.as_str(),
    ] {
        let entry = format!("{bad}/p");
        let body =
            serde_json::json!({"model": entry, "messages": [{"role": "user", "content": "hi"}]});
        let r = gw.chat(&body.to_string()).await;
        assert_eq!(r.status, 400, "{kind} {bad:?}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "invalid_model_chain", "{kind} {bad:?}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("invalid model id") && msg.contains(crate_clip(&entry)),
            "{kind} {bad:?}: {msg}"
        );
    }
    assert_eq!(
        m.calls(),
        calls,
        "{kind}: nothing was sent for a refused id"
    );
    (reqs[0].path.clone(), model)
}

/// The entry as the error message quotes it (at most 100 bytes).
fn crate_clip(s: &str) -> &str {
    &s[..s.len().min(100)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_ids_go_in_the_body_only() {
    let (path, model) = path_for("openai").await;
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(model.as_deref(), Some(ODD_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployments_are_one_path_segment() {
    let (path, _) = path_for("azure").await;
    assert_eq!(
        path,
        "/openai/deployments/org%2Fx%3Ay@z%252e~/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_ids_go_in_the_body_only() {
    let (path, model) = path_for("anthropic").await;
    assert_eq!(path, "/v1/messages");
    assert_eq!(model.as_deref(), Some(ODD_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_ids_are_one_path_segment() {
    let (path, _) = path_for("google-ai-studio").await;
    assert_eq!(path, "/v1beta/models/org%2Fx%3Ay@z%252e~:generateContent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_ids_are_one_path_label() {
    let (path, _) = path_for("bedrock").await;
    assert_eq!(path, "/model/org%2Fx%3Ay%40z%252e~/converse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_ids_are_one_path_segment() {
    let (path, _) = path_for("vertex").await;
    assert_eq!(
        path,
        "/v1/projects/detour-test/locations/us-east5/publishers/google/models/org%2Fx%3Ay@z%252e~:generateContent"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ids_cannot_grow_memory_or_headers() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        status: 503,
        record: false,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "limits: {{max-body-bytes: 8000000}}\nproviders:\n{}",
        provider("p", &m)
    ))
    .await;
    let before = rss_kib(gw.child.id());
    // 40 different 5 MB ids: each refused before anything is planned or tracked.
    for i in 0..40 {
        let id = format!("{i}{}", "x".repeat(5_000_000));
        let body = chat_body(&format!("{id}/p"), false);
        let r = gw.chat(&body).await;
        assert_eq!(r.status, 400);
        assert!(r.body.len() < 1000, "the error quotes a bounded part");
    }
    assert_eq!(m.calls(), 0);
    // 600 different valid ids that fail: breaker state stays bounded.
    for i in 0..600 {
        let id = format!("{i:03}-{}", "y".repeat(240));
        let r = gw.chat(&chat_body(&format!("{id}/p"), false)).await;
        assert_eq!(r.status, 503);
        // The id echoed in a header is the id, at most 256 bytes.
        assert!(r.header("x-detour-model").is_none_or(|h| h.len() <= 256));
    }
    let h = request(gw.admin_port, "GET", "/admin/health", &[], b"")
        .await
        .unwrap();
    let targets = h.json()["targets"].as_array().unwrap().len();
    assert!(targets <= 256, "{targets} tracked");
    assert!(h.body.len() < 200_000, "{} bytes", h.body.len());
    let grown = rss_kib(gw.child.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // A 256-byte id is fine, and comes back whole.
    let ok = "z".repeat(256);
    m.set_status(200);
    let r = gw.chat(&chat_body(&format!("{ok}/p"), false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-detour-model"), Some(ok.as_str()));
}

/// Send a request head (and part of a body) on a new connection; the caller finishes it.
async fn start_request(port: u16, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    sock
}

fn post_head(len: Option<usize>) -> String {
    let framing = match len {
        Some(n) => format!("content-length: {n}"),
        None => "transfer-encoding: chunked".into(),
    };
    format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}\r\n\r\n")
}

/// A chat body padded to exactly `n` bytes.
fn padded_body(n: usize) -> Vec<u8> {
    let base = chat_body("m/p", false);
    let pad = n - base.len() - r#","pad":"""#.len();
    let mut b = base[..base.len() - 1].to_string();
    b.push_str(&format!(r#","pad":"{}"}}"#, "p".repeat(pad)));
    assert_eq!(b.len(), n);
    b.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_all_together() {
    use tokio::io::AsyncWriteExt;
    let m = mock("m").await;
    let gw = Gateway::start(&format!(
        "limits: {{max-body-bytes: 600000, max-total-body-bytes: 1000000}}\nproviders:\n{}",
        provider("p", &m)
    ))
    .await;
    let n = 500_000;
    let body = padded_body(n);
    // One body is being read (half sent): it holds 500 kB of the 1 MB.
    let mut first = start_request(gw.port, &post_head(Some(n)), &body[..n / 2]).await;
    let held = "detour_request_body_bytes_held 500000";
    assert!(gw.metrics_with(&[held]).await.contains(held));
    // A second one of 600 kB does not fit: 503 with Retry-After, before its body is read.
    let mut second = start_request(gw.port, &post_head(Some(600_000)), b"").await;
    let r = read_response(&mut second).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "overloaded");
    // A chunked one is counted as it arrives: it fits until it passes what is left.
    let mut third = start_request(gw.port, &post_head(None), b"").await;
    let piece = vec![b' '; 300_000];
    third
        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
        .await
        .unwrap();
    third.write_all(&piece).await.unwrap();
    third.write_all(b"\r\n").await.unwrap();
    let more = async {
        third
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await?;
        third.write_all(&piece).await?;
        third.write_all(b"\r\n0\r\n\r\n").await
    };
    let _ = more.await;
    let r = read_response(&mut third).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    // The first one finishes and is served; after it, the budget is free again.
    first.write_all(&body[n / 2..]).await.unwrap();
    let r = read_response(&mut first).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut fourth = start_request(gw.port, &post_head(Some(600_000)), &padded_body(600_000)).await;
    let r = read_response(&mut fourth).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(m.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_close_delimited_bodies() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "limits: {{max-buffered-response-bytes: 64}}\nproviders:\n{}",
        provider("p", &m)
    ))
    .await;
    for stream in [true, false] {
        let body = chat_body("m/p", stream);
        let head = format!(
            "POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut sock = start_request(gw.port, &head, body.as_bytes()).await;
        let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut sock))
            .await
            .expect("the body ends when the connection closes")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("transfer-encoding"), None, "stream: {stream}");
        if stream {
            assert_eq!(r.header("content-length"), None);
            assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
            assert_eq!(streamed_text(&r.body), "Hello from m tok1 tok2");
        } else {
            // Over the buffer limit: relayed with the upstream's own length.
            assert!(r.header("content-length").is_some());
            assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello from m");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_drops_is_logged_with_the_attempt_that_served_it() {
    use tokio::io::AsyncReadExt;
    let m = mock_with(MockConfig {
        name: "m".into(),
        chunks: 50,
        chunk_interval: Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!("providers:\n{}", provider("p", &m))).await;
    let body = chat_body("m/p", true);
    let mut sock = start_request(gw.port, &post_head(Some(body.len())), body.as_bytes()).await;
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(sock);
    let log = gw
        .stderr_when(|l| l.contains("\"outcome\":\"client_closed\""))
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("\"log\":\"access\""))
        .unwrap_or_else(|| panic!("{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["outcome"], "client_closed", "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(attempts[0]["provider"], "p");
    assert_eq!(attempts[0]["outcome"], "client_closed");
    assert_eq!(attempts[0]["status"], 200);
}

#[test]
fn the_mock_makes_stream_events_as_the_reader_takes_them() {
    use std::io::{BufRead, Read, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_detour"))
        .args(["mock", "--listen", "127.0.0.1:0", "--name", "big"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.strip_suffix("/v1\n"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let rss = |pid: u32| rss_kib(pid);
    let before = rss(child.id());
    // A stream of ten million events, read slowly: the mock must not build it in memory.
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    let body = chat_body("m", true);
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-chunks: 10000000\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < 1_000_000 {
        got += sock.read(&mut buf).unwrap();
    }
    // A mock that built the stream first would hold it all before its first byte went out.
    let grown = rss(child.id()).saturating_sub(before);
    let _ = child.kill();
    let _ = child.wait();
    assert!(grown < 32 * 1024, "the mock grew by {grown} KiB");
}
