//! Anthropic's stream events, as the watch reads them for a Messages client's pass-through:
//! content, usage in either dialect, the finish and the end, the open block (for a
//! continuation).

use super::{error_of, nonempty, ErrorBody, Watch};
use serde::Deserialize;
use std::borrow::Cow;

/// One Anthropic stream event: only what the watch reads, borrowed.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    message: Option<EventMessage>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct EventMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

/// A usage object in either dialect: OpenAI's `prompt_tokens`/`completion_tokens`, or
/// Anthropic's `input_tokens`/`output_tokens` with the cache's reads and writes (input tokens
/// too, as OpenAI's `prompt_tokens` counts them).
#[derive(Deserialize, Default)]
pub(super) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    /// `(prompt, completion)`, each `None` where this object does not say.
    pub(super) fn counts(&self) -> (Option<u64>, Option<u64>) {
        let prompt = self.prompt_tokens.or_else(|| {
            self.input_tokens.map(|i| {
                i + self.cache_read_input_tokens.unwrap_or(0)
                    + self.cache_creation_input_tokens.unwrap_or(0)
            })
        });
        (prompt, self.completion_tokens.or(self.output_tokens))
    }
}

impl Watch {
    /// One Anthropic event: content starts with a non-empty text or thinking delta, a tool
    /// use or a stop reason; usage comes in `message_start` and `message_delta`; the answer is
    /// finished at its stop reason and done at `message_stop`.
    pub(super) fn anthropic_event(&mut self, data: &[u8]) -> Result<(), (String, String)> {
        let ev: Event<'_> = serde_json::from_slice(data).map_err(|_| {
            (
                "invalid_event".to_string(),
                "the provider sent an event that is not valid JSON".to_string(),
            )
        })?;
        let len = |s: &Option<Cow<'_, str>>| s.as_deref().map_or(0, str::len);
        match ev.kind.as_ref() {
            "message_start" => self.add_usage(ev.message.and_then(|m| m.usage)),
            "content_block_start" => {
                let Some(b) = ev.content_block else {
                    return Ok(());
                };
                let text = b.kind == "text";
                // Thinking is content at its first delta; any other block (a tool use, a
                // server tool's result) at its start.
                self.content |= !text && b.kind != "thinking";
                self.not_text |= !text;
                let index = ev.index.unwrap_or(self.blocks.next);
                self.blocks.next = self.blocks.next.max(index.saturating_add(1));
                self.blocks.open_text = text.then_some(index);
                self.output_bytes += len(&b.text);
                self.content |= nonempty(&b.text);
                if let (Some(t), Some(c)) = (&mut self.text, &b.text) {
                    t.push_str(c);
                }
            }
            "content_block_stop" if ev.index.is_none() || ev.index == self.blocks.open_text => {
                self.blocks.open_text = None;
            }
            "content_block_delta" => {
                let Some(d) = ev.delta else { return Ok(()) };
                let n = len(&d.text) + len(&d.partial_json) + len(&d.thinking);
                self.output_bytes += n;
                self.content |= n > 0;
                if let (Some(t), Some(c)) = (&mut self.text, &d.text) {
                    t.push_str(c);
                }
            }
            "message_delta" => {
                self.add_usage(ev.usage);
                if ev.delta.is_some_and(|d| d.stop_reason.is_some()) {
                    self.finished = true;
                    self.content = true;
                }
            }
            "message_stop" => self.done = true,
            "error" => return Err(error_of(ev.error)),
            _ => {} // ping, and types added later
        }
        Ok(())
    }

    fn add_usage(&mut self, u: Option<WireUsage>) {
        let Some(u) = u else { return };
        let (prompt, completion) = u.counts();
        let mut now = self.usage.unwrap_or_default();
        now.prompt_tokens = prompt.unwrap_or(now.prompt_tokens);
        now.completion_tokens = completion.unwrap_or(now.completion_tokens);
        self.usage = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    const ANTHROPIC: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":9,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n";

    #[test]
    fn anthropic_events_commit_at_content_and_end_at_message_stop() {
        let mut w = Watch::new(true).for_dialect(crate::api::Dialect::Anthropic);
        w.inspect(ANTHROPIC).expect("valid");
        assert!(
            !w.has_content(),
            "start, an empty text block and a ping are not content"
        );
        assert_eq!(w.usage().map(|u| u.prompt_tokens), Some(109));
        w.inspect(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n")
            .expect("valid");
        assert!(w.has_content() && !w.finished() && !w.done());
        w.inspect(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n")
            .expect("valid");
        assert!(w.finished() && !w.done());
        assert_eq!(
            w.usage(),
            Some(Usage {
                prompt_tokens: 109,
                completion_tokens: 7,
                estimated: false
            })
        );
        w.inspect(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
            .expect("valid");
        assert!(w.done());
        assert_eq!(w.output_bytes(), 2);
        // A tool use or thinking counts as content; an error event is an error; so is junk.
        let mut t = Watch::new(false).for_dialect(crate::api::Dialect::Anthropic);
        t.inspect(b"data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n")
            .expect("valid");
        assert!(t.has_content());
        let e = t
            .inspect(b"event: ping\ndata: {\"type\":\"ping\"}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
            .expect_err("error event");
        assert_eq!((e.kind.as_str(), e.at), ("overloaded_error", 35));
        let e = t.inspect(b"data: {not json\n\n").expect_err("junk");
        assert_eq!(e.kind, "invalid_event");
        // The OpenAI watch does not read Anthropic's events as content.
        let mut o = Watch::new(false);
        o.inspect(ANTHROPIC).expect("valid JSON");
        assert!(!o.has_content() && o.dialect() == crate::api::Dialect::OpenAi);
    }

    #[test]
    fn anthropic_blocks_and_text_are_followed_for_a_continuation() {
        let ev = |d: &str| format!("event: x\ndata: {d}\n\n");
        let mut w = Watch::new(true).for_dialect(crate::api::Dialect::Anthropic);
        w.inspect(ev(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"He"}}"#).as_bytes())
            .expect("valid");
        w.inspect(ev(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"llo"}}"#).as_bytes())
            .expect("valid");
        assert_eq!(w.text(), Some("Hello"), "a block's initial text counts");
        assert_eq!(
            w.blocks(),
            Blocks {
                next: 1,
                open_text: Some(0)
            }
        );
        w.inspect(ev(r#"{"type":"content_block_stop","index":0}"#).as_bytes())
            .expect("valid");
        assert_eq!(
            w.blocks(),
            Blocks {
                next: 1,
                open_text: None
            }
        );
        w.inspect(ev(r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#).as_bytes())
            .expect("valid");
        assert_eq!(
            w.blocks(),
            Blocks {
                next: 2,
                open_text: Some(1)
            }
        );
        // Thinking or a tool use: no prefill can carry the answer.
        for kind in [
            r#"{"type":"thinking","thinking":""}"#,
            r#"{"type":"tool_use","id":"t","name":"f","input":{}}"#,
        ] {
            let mut t = Watch::new(true).for_dialect(crate::api::Dialect::Anthropic);
            t.inspect(
                ev(&format!(
                    r#"{{"type":"content_block_start","index":0,"content_block":{kind}}}"#
                ))
                .as_bytes(),
            )
            .expect("valid");
            assert_eq!(t.text(), None, "{kind}");
            assert_eq!(t.blocks().open_text, None, "{kind}");
        }
        // An index out of any sane range does not overflow.
        w.inspect(
            ev(&format!(
                r#"{{"type":"content_block_start","index":{},"content_block":{{"type":"text"}}}}"#,
                usize::MAX
            ))
            .as_bytes(),
        )
        .expect("valid");
        assert_eq!(w.blocks().next, usize::MAX);
    }
}
