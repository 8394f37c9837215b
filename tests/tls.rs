//! TLS upstreams as real providers use them: DNS name, SNI, certificate verification against
//! the configured CA, ALPN offering h2 and falling back to HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_by_name_and_a_bad_certificate_falls_back() {
    let m = mock("tls").await;
    let dir = temp_dir();
    let front = tls_front(m.addr, &dir).await;
    // `wrongname` reaches the same server by IP: its certificate is for `localhost` only, so
    // verification must fail there and the request fall back to `good`.
    let body = format!(
        "providers:\n  - {{name: wrongname, kind: openai, base-url: \"https://127.0.0.1:{p}/v1\", api-key-env: DETOUR_TEST_KEY}}\n  - {{name: good, kind: openai, base-url: \"https://localhost:{p}/v1\", api-key-env: DETOUR_TEST_KEY}}\nmodels:\n  gpt-4o: [{{provider: wrongname}}, {{provider: good}}]\n",
        p = front.port
    );
    // Pingora's connector trusts only the test CA (`server.ca_file`).
    let gw =
        Gateway::start_with_server(&body, &format!("  ca_file: {}\n", front.ca_file.display()))
            .await;
    for stream in [false, true] {
        let r = gw.chat(&chat_body("gpt-4o", stream)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-detour-provider"), Some("good"));
        assert_eq!(r.header("x-detour-fallback-index"), Some("1"));
        assert!(r.text().contains("Hello from tls"));
    }
    assert_eq!(
        m.calls(),
        2,
        "only the verified connection reached the provider"
    );
    assert!(
        front
            .handshakes_failed
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    let sni = front.sni.lock().unwrap().clone();
    assert!(!sni.is_empty());
    assert!(sni.iter().all(|s| s == "localhost"), "{sni:?}");
    // The provider got its key over TLS, with the Host it expects.
    let seen = &m.requests()[0];
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{}", front.port).as_str())
    );
}
