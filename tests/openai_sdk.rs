//! Client compatibility: the official OpenAI Python SDK (from PyPI, in a venv that
//! `scripts/sdk-venv.sh` creates) talks to detour through a fallback, stream and non-stream,
//! and reads the all-failed error; one chain ends on each translated kind (Anthropic, Gemini,
//! Bedrock, Vertex).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_sdk_through_a_fallback() {
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
    let gem = mock_with(MockConfig {
        name: "gem".into(),
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let bed = mock_with(MockConfig {
        name: "bed".into(),
        chunks: 7,
        ..MockConfig::default()
    })
    .await;
    // Vertex: Claude through rawPredict, with a token from the mock's own OAuth endpoint.
    let vtx = mock_with(MockConfig {
        name: "vtx".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let mut sa: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vertex-test-service-account.json")).unwrap();
    sa["token_uri"] = serde_json::json!(format!("http://{}/token", vtx.addr));
    let key = temp_dir().join("sa.json");
    std::fs::write(&key, serde_json::to_vec(&sa).unwrap()).unwrap();
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{name: vtx, kind: vertex, project: p, region: us-east5, base-url: \"http://{}\", credentials-file: \"{}\"}}\n  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n  - {{name: gem, kind: google-ai-studio, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n  - {{name: bed, kind: bedrock, region: us-west-2, base-url: \"http://{}\"}}\nmodels:\n  gpt-4o: [{{provider: flaky}}, {{provider: steady}}]\n  gpt-4o-mini: [{{provider: flaky}}]\n  claude-sonnet-4: [{{provider: flaky}}, {{provider: anth, id: claude-sonnet-4-20250514}}]\n  gemini-2.0-flash: [{{provider: flaky}}, {{provider: gem}}]\n  claude-3-7-sonnet-20250219: [{{provider: flaky}}, {{provider: bed, id: \"us.anthropic.claude-3-7-sonnet-20250219-v1:0\"}}]\n  claude-3-5-haiku: [{{provider: flaky}}, {{provider: vtx, id: \"claude-3-5-haiku@20241022\"}}]\n",
        provider("flaky", &flaky),
        provider("steady", &steady),
        vtx.addr,
        key.display(),
        anth.addr,
        gem.addr,
        bed.addr
    ))
    .await;
    let base = format!("http://127.0.0.1:{}/v1", gw.port);
    let check = |model: &str, provider: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--base-url".into(),
            base.clone(),
            "--model".into(),
            model.into(),
            "--expect-provider".into(),
            provider.into(),
            "--expect-content-prefix".into(),
            format!("Hello from {provider}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        run_sdk_script("openai_sdk_check.py", args)
    };
    for (model, provider, extra) in [
        // OpenAI format through a fallback, and the all-failed error as the SDK reads it.
        (
            "gpt-4o",
            "steady",
            &[
                "--fail-model",
                "gpt-4o,gpt-4o-mini,!steady",
                "--expect-fail-status",
                "429",
            ][..],
        ),
        // The same SDK through a fallback onto an Anthropic target, translated both ways.
        ("claude-sonnet-4", "anth", &[][..]),
        // ... onto Gemini, and onto Bedrock (SigV4, event-stream), translated both ways.
        ("gemini-2.0-flash", "gem", &[][..]),
        ("claude-3-7-sonnet-20250219", "bed", &[][..]),
        // ... and onto Vertex (Claude via rawPredict, OAuth2 token).
        ("claude-3-5-haiku", "vtx", &[][..]),
    ] {
        let out = check(model, provider, extra).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "SDK check through {provider} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("ok: "), "{stdout}");
    }
    // Each SDK call went through the fallback: flaky first, then the serving target.
    assert!(
        steady.calls() >= 3,
        "steady served {} calls",
        steady.calls()
    );
    assert!(anth.calls() >= 3, "anthropic served {} calls", anth.calls());
    assert!(gem.calls() >= 3, "gemini served {} calls", gem.calls());
    assert!(bed.calls() >= 3, "bedrock served {} calls", bed.calls());
    assert!(vtx.calls() >= 4, "vertex served {} calls", vtx.calls());
    assert_eq!(vtx.tokens(), 1, "one access token for every Vertex call");
    assert!(
        flaky.calls()
            >= steady.calls() + anth.calls() + gem.calls() + bed.calls() + vtx.calls() - 1,
        "flaky was tried first every time"
    );
}
