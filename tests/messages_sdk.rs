//! The official `anthropic` Python SDK against detour's `POST /v1/messages`, one chain per
//! target kind: Anthropic (passed through), Claude on Bedrock (InvokeModel) and on Vertex
//! (rawPredict), OpenAI and Gemini (translated both ways). Each through a fallback from a
//! failing target first. Plain, streamed; where the kind's mock answers tools and
//! `max_tokens` (the Anthropic and OpenAI dialects), a `max_tokens` stop and a tool round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_through_every_target_kind() {
    // One failing provider per chain: a shared one's circuit would open and be skipped.
    let mut flaky = Vec::new();
    for _ in 0..5 {
        flaky.push(
            mock_with(MockConfig {
                name: "flaky".into(),
                status: 503,
                ..MockConfig::default()
            })
            .await,
        );
    }
    let flaky_providers: String = flaky
        .iter()
        .enumerate()
        .map(|(i, m)| provider(&format!("flaky{i}"), m))
        .collect();
    let mut mocks = Vec::new();
    for name in ["anth", "bed", "vtx", "oai", "gem"] {
        mocks.push(
            mock_with(MockConfig {
                name: name.into(),
                chunks: 4,
                ..MockConfig::default()
            })
            .await,
        );
    }
    let [anth, bed, vtx, oai, gem] = &mocks[..] else {
        unreachable!()
    };
    let mut sa: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vertex-test-service-account.json")).unwrap();
    sa["token_uri"] = serde_json::json!(format!("http://{}/token", vtx.addr));
    let key = temp_dir().join("sa.json");
    std::fs::write(&key, serde_json::to_vec(&sa).unwrap()).unwrap();
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{name: anth, kind: anthropic, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\n  - {{name: bed, kind: bedrock, region: us-west-2, base-url: \"http://{}\"}}\n  - {{name: vtx, kind: vertex, project: p, region: us-east5, base-url: \"http://{}\", credentials-file: \"{}\"}}\n  - {{name: gem, kind: google-ai-studio, base-url: \"http://{}\", api-key-env: DETOUR_TEST_KEY}}\nmodels:\n  claude-sonnet-4: [{{provider: anth, id: claude-sonnet-4-20250514}}, {{provider: bed, id: \"us.anthropic.claude-sonnet-4-20250514-v1:0\"}}, {{provider: vtx, id: \"claude-sonnet-4@20250514\"}}]\n  gpt-4o: [{{provider: oai}}]\n  gemini-2.0-flash: [{{provider: gem}}]\n",
        flaky_providers,
        provider("oai", oai),
        anth.addr,
        bed.addr,
        vtx.addr,
        key.display(),
        gem.addr,
    ))
    .await;
    let base = format!("http://127.0.0.1:{}", gw.port);
    for (i, (chain, served_by, full)) in [
        ("gpt-4o/flaky0,claude-sonnet-4/anth", "anth", true),
        ("gpt-4o/flaky1,claude-sonnet-4/bed", "bed", true),
        ("gpt-4o/flaky2,claude-sonnet-4/vtx", "vtx", true),
        ("gpt-4o/flaky3,gpt-4o/oai", "oai", true),
        ("gpt-4o/flaky4,gemini-2.0-flash/gem", "gem", false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = vec![
            "--base-url".to_string(),
            base.clone(),
            "--model".into(),
            chain.into(),
            "--expect-text".into(),
            format!("Hello from {served_by}"),
        ];
        if full {
            args.push("--full".into());
        }
        let out = run_sdk_script("anthropic_targets.py", args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{chain}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let checks = if full { 14 } else { 7 };
        assert_eq!(stdout.matches("ok: ").count(), checks, "{chain}:\n{stdout}");
        assert!(flaky[i].calls() > 0, "{chain}: the fallback was taken");
    }
}
