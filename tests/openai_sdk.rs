//! Client compatibility: the official OpenAI Python SDK (from PyPI, in a venv that
//! `scripts/sdk-venv.sh` creates) talks to detour through a fallback, stream and non-stream,
//! and reads the all-failed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_sdk_through_a_fallback() {
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = Command::new("bash")
        .arg(format!("{root}/scripts/sdk-venv.sh"))
        .output()
        .expect("run scripts/sdk-venv.sh");
    assert!(
        venv.status.success(),
        "venv setup failed: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8(venv.stdout).unwrap().trim().to_string();

    let flaky = mock_with(MockConfig {
        name: "flaky".into(),
        status: 429,
        ..MockConfig::default()
    })
    .await;
    let steady = mock_with(MockConfig {
        name: "steady".into(),
        chunks: 8,
        ..MockConfig::default()
    })
    .await;
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        chunks: 6,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\nmodels:\n  gpt-4o: [{{provider: flaky}}, {{provider: steady}}]\n  gpt-4o-mini: [{{provider: flaky}}]\n  claude-sonnet-4: [{{provider: flaky}}, {{provider: anth, id: claude-sonnet-4-20250514}}]\n",
        provider("flaky", &flaky),
        provider("steady", &steady),
        anth.addr
    ))
    .await;
    let base = format!("http://127.0.0.1:{}/v1", gw.port);
    let (python2, base2) = (python.clone(), base.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(format!("{root}/tests/sdk/openai_sdk_check.py"))
            .args(["--base-url", &base, "--model", "gpt-4o"])
            .args(["--expect-provider", "steady"])
            .args(["--expect-content-prefix", "Hello from steady"])
            .args(["--fail-model", "gpt-4o,gpt-4o-mini,!steady"])
            .args(["--expect-fail-status", "429"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: "), "{stdout}");
    // Each SDK call went through the fallback: flaky first, then steady.
    assert!(
        steady.calls() >= 3,
        "steady served {} calls",
        steady.calls()
    );
    assert!(
        flaky.calls() > steady.calls(),
        "flaky was tried first every time"
    );

    // The same SDK through a fallback onto an Anthropic target, translated both ways.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python2)
            .arg(format!("{root}/tests/sdk/openai_sdk_check.py"))
            .args(["--base-url", &base2, "--model", "claude-sonnet-4"])
            .args(["--expect-provider", "anth"])
            .args(["--expect-content-prefix", "Hello from anth"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK check through anthropic failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(anth.calls() >= 3, "anthropic served {} calls", anth.calls());
}
