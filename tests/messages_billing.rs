//! A Messages client with a gateway key (in `x-api-key`, as its SDKs send it) is billed and
//! recorded for answers detour passes through untranslated as for any other: Anthropic's usage
//! (`message_start`, `message_delta`, the JSON answer's) settles the hold, the ledger and the
//! record name the target that served and every attempt before it; a token count costs
//! nothing. A real SQLite file, mock providers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::keys::*;
use common::records::{column, recorded};
use common::*;
use serde_json::json;

const CLAUDE: &str = "claude-sonnet-4-20250514";
const BEDROCK_CLAUDE: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

/// claude-sonnet-4's catalog prices: $3 and $15 per million input and output tokens. The
/// mock's JSON message reports 9 and 3: 27 + 45 micro-dollars.
const JSON_COST: i64 = 72;
/// Its 4-chunk stream: 9 input tokens in `message_start`, 4 output in `message_delta`.
const STREAM_COST: i64 = 27 + 60;
/// gpt-4o ($2.50, $10): 9 prompt and 3 completion tokens, rounded up.
const GPT_JSON_COST: i64 = 53;

async fn messages_as(gw: &Gateway, key: &str, id: &str, body: &str) -> Response {
    gw.post_json(
        "/v1/messages",
        body,
        &[("x-api-key", key), ("x-request-id", id)],
    )
    .await
}

fn body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_answers_are_billed_at_anthropics_usage_and_recorded() {
    let overloaded = mock_with(MockConfig {
        name: "over".into(),
        status: 529,
        ..MockConfig::default()
    })
    .await;
    let anth = mock_with(MockConfig {
        name: "anth".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let bed = mock_with(MockConfig {
        name: "bed".into(),
        chunks: 4,
        ..MockConfig::default()
    })
    .await;
    let oai = mock("oai").await;
    let gw = Gateway::start(&format!(
        "auth: {{required: true}}\nstore: {SQLITE}\nproviders:\n{}{}  - {{name: bed, kind: bedrock, region: us-east-1, base-url: \"http://{}\"}}\n{}models:\n  claude-sonnet-4: [{{provider: over, id: {CLAUDE}}}, {{provider: anth, id: {CLAUDE}}}, {{provider: bed, id: \"{BEDROCK_CLAUDE}\"}}]\n  gpt-4o: [{{provider: oai}}]\n",
        anthropic_provider("over", &overloaded),
        anthropic_provider("anth", &anth),
        bed.addr,
        provider("oai", &oai),
    ))
    .await;
    let (id, key) = new_key(&gw, json!({}), 1.0).await;

    // JSON, after an overloaded Anthropic target: one debit, at the served answer's usage.
    let chain = "claude-sonnet-4/over,claude-sonnet-4/anth";
    let r = messages_as(&gw, &key, "msg-bill-json", &body(chain, false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["usage"]["input_tokens"],
        9,
        "byte for byte: Anthropic's own usage"
    );
    let (rows, balance) = ledger_when(&gw, &id, |r| r.len() == 2).await;
    let d = &rows[1];
    assert_eq!(
        (
            d["kind"].as_str(),
            d["amount"].as_i64(),
            d["provider"].as_str(),
            d["input_tokens"].as_u64(),
            d["output_tokens"].as_u64(),
            d["request_id"].as_str()
        ),
        (
            Some("debit"),
            Some(-JSON_COST),
            Some("anth"),
            Some(9),
            Some(3),
            Some("msg-bill-json")
        ),
        "{rows:?}"
    );
    assert_eq!(balance, 1_000_000 - JSON_COST);
    let rec = recorded(&gw, "msg-bill-json").await;
    assert_eq!(rec["key"], id.as_str());
    assert_eq!(column(&rec, "provider"), [&json!("over"), &json!("anth")]);
    assert_eq!(column(&rec, "status"), [&json!(529), &json!(200)]);
    assert_eq!(column(&rec, "pay"), [&json!("ptb"); 2]);
    assert_eq!(
        (
            &rec["prompt_tokens"],
            &rec["completion_tokens"],
            &rec["fallback"]
        ),
        (&json!(9), &json!(3), &json!(true)),
        "{rec}"
    );
    let cost = rec["cost_usd"].as_f64().unwrap_or_else(|| panic!("{rec}"));
    assert!((cost - 72e-6).abs() < 1e-9, "{rec}");

    // Streams, passed through from Anthropic and unwrapped from Bedrock's frames: the usage of
    // `message_start` and `message_delta`.
    for (i, (chain, served)) in [
        ("claude-sonnet-4/anth", "anth"),
        ("claude-sonnet-4/bed", "bed"),
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("msg-bill-stream-{i}");
        let r = messages_as(&gw, &key, &rid, &body(chain, true)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("event: message_stop"), "{}", r.text());
        let (rows, _) = ledger_when(&gw, &id, |r| r.len() == 3 + i).await;
        let d = rows.last().unwrap();
        assert_eq!(
            (
                d["amount"].as_i64(),
                d["provider"].as_str(),
                d["input_tokens"].as_u64(),
                d["output_tokens"].as_u64()
            ),
            (Some(-STREAM_COST), Some(served), Some(9), Some(4)),
            "{chain}: {rows:?}"
        );
        let rec = recorded(&gw, &rid).await;
        assert_eq!(
            (&rec["stream"], &rec["outcome"], &rec["completion_tokens"]),
            (&json!(true), &json!("success"), &json!(4)),
            "{rec}"
        );
        assert!(rec["attempts"][0]["first_token_ms"].is_number(), "{rec}");
    }

    // Translated for an OpenAI target: billed at the chat answer's usage.
    let r = messages_as(&gw, &key, "msg-bill-oai", &body("gpt-4o/oai", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (rows, balance) = ledger_when(&gw, &id, |r| r.len() == 5).await;
    assert_eq!(rows[4]["amount"], -GPT_JSON_COST, "{rows:?}");
    assert_eq!(
        balance,
        1_000_000 - JSON_COST - 2 * STREAM_COST - GPT_JSON_COST
    );

    // A token count is free, and still needs the key (in either header).
    let count = r#"{"model":"claude-sonnet-4/anth","messages":[{"role":"user","content":"hi"}]}"#;
    let bearer = format!("Bearer {key}");
    for h in [
        ("x-api-key", key.as_str()),
        ("authorization", bearer.as_str()),
    ] {
        let r = gw.post_json("/v1/messages/count_tokens", count, &[h]).await;
        assert_eq!(r.status, 200, "{}: {}", h.0, r.text());
    }
    let r = gw
        .post_json(
            "/v1/messages/count_tokens",
            count,
            &[("x-api-key", "dtr_not-a-key")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["type"], "error", "Anthropic's error shape");
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert!(!r.text().contains("dtr_not-a-key"), "{}", r.text());
    let (rows, _) = ledger(&gw, &id).await;
    assert_eq!(rows.len(), 5, "no debit for a token count: {rows:?}");
    assert_eq!(
        key_view(&gw, &id).await["reserved"],
        0,
        "every hold settled"
    );
}
