//! Property tests: arbitrary bytes into every parser a client or an upstream can reach — the
//! header-mode headers, target URLs, the model chain, the request body, the SSE decoders and
//! each stream translator. Nothing panics; bad input is an `Err` (a clean 4xx upstream of
//! here), never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use detour::providers::{anthropic, bedrock, gemini, StreamOpts};
use detour::target::{fallbacks, TargetUrl};
use proptest::prelude::*;

fn gateway() -> detour::gateway::Gateway {
    let yaml = "listen: [\"127.0.0.1:1\"]\nproviders:\n  - {name: openai, kind: openai, base-url: \"https://api.openai.com/v1\"}\n  - {name: azure, kind: azure, base-url: \"https://r.openai.azure.com\", api-version: \"2024-10-21\"}\n";
    detour::gateway::Gateway::from_yaml_with_env(yaml, &|_| Some("k".into())).unwrap()
}

/// Bytes that look a little like the input they are fed to, and sometimes are garbage.
fn near(seed: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (
            proptest::sample::select(seed),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<prop::sample::Index>()
        )
            .prop_map(|(s, junk, at)| {
                let mut v = s.as_bytes().to_vec();
                let i = at.index(v.len() + 1);
                v.splice(i..i, junk);
                v
            }),
    ]
}

const FALLBACKS: &[&str] = &[
    r#"[{"target-url":"https://api.openai.com","headers":{"a":"b"},"onCodes":[429,{"from":500,"to":599}],"bodyKeyOverride":{"model":"x"}}]"#,
    r#"[{"target-url":"http://[::1]:8080/p","headers":{},"onCodes":[]}]"#,
];
const URLS: &[&str] = &[
    "https://api.openai.com/v1",
    "http://[fd00::1]:80",
    "http://0x7f.1:8080/",
];
const CHAINS: &[&str] = &["gpt-4o/openai,gpt-4o/azure,!openai", "gpt-4o", "a/b/c,,!x"];
const ANTHROPIC: &[&str] = &[
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
];
const GEMINI: &[&str] = &[
    "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":1}}\r\n\r\n",
];
const BODIES: &[&str] = &[
    r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_fallbacks_header(b in near(FALLBACKS)) {
        if let Ok(entries) = fallbacks::parse(&b, 10) {
            prop_assert!(!entries.is_empty() && entries.len() <= 10);
        }
    }

    #[test]
    fn target_urls(b in near(URLS)) {
        let s = String::from_utf8_lossy(&b);
        if let Ok(u) = TargetUrl::parse(&s) {
            prop_assert!(!u.host.is_empty());
            prop_assert!(!u.authority.contains('@'));
        }
    }

    #[test]
    fn model_chains(b in near(CHAINS)) {
        let gw = gateway();
        let _ = detour::plan::plan(&String::from_utf8_lossy(&b), &gw);
    }

    #[test]
    fn request_bodies(b in near(BODIES)) {
        let _ = detour::api::ChatRequest::parse(Bytes::from(b));
    }

    #[test]
    fn sse_decoders(b in near(ANTHROPIC), cut in 0usize..64) {
        let mut d = detour::sse::SseDecoder::default();
        let mut a = detour::sse::EventAligner::default();
        for piece in b.chunks(cut.max(1)) {
            let _ = d.push(piece);
            let _ = a.push(Bytes::copy_from_slice(piece));
        }
    }

    #[test]
    fn anthropic_streams(b in near(ANTHROPIC), cut in 1usize..64) {
        let mut t = anthropic::StreamTranslator::new(StreamOpts { include_usage: true }, 1);
        for piece in b.chunks(cut) {
            if t.push(piece).is_err() {
                break;
            }
        }
    }

    #[test]
    fn gemini_streams(b in near(GEMINI), cut in 1usize..64) {
        let mut t = gemini::StreamTranslator::new(StreamOpts { include_usage: true }, "g", 1);
        for piece in b.chunks(cut) {
            if t.push(piece).is_err() {
                break;
            }
        }
        let _ = t.finish();
    }

    #[test]
    fn bedrock_streams(b in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..64) {
        let mut t = bedrock::StreamTranslator::new(StreamOpts { include_usage: true }, "b", 1);
        let mut input = bedrock::frame("contentBlockDelta", &serde_json::json!({"delta": {"text": "hi"}, "contentBlockIndex": 0}));
        input.extend_from_slice(&b);
        for piece in input.chunks(cut) {
            if t.push(piece).is_err() {
                break;
            }
        }
        let _ = t.finish();
    }
}
