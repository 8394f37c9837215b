//! What an OpenAI-format SSE stream says, event by event: whether content has started (the
//! commit point), whether the answer finished, its usage, and whether an event is an error or
//! not JSON at all. Pure: whole events in (as [`crate::sse::EventAligner`] and the translators
//! produce them), facts out. Runs on every relayed event, so it borrows and allocates nothing
//! for the common chunk.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

mod anthropic;
use anthropic::WireUsage;

/// An error the stream itself reported, or an event that cannot be part of a valid stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    /// Byte offset in the inspected segment where the bad event starts: what comes before it
    /// is whole, valid events that may still be sent.
    pub at: usize,
    /// The provider's error type (`server_error`, `overloaded_error`, ...) or `invalid_event`.
    pub kind: String,
    pub message: String,
}

/// Token counts of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Counted by detour ([`estimated_usage`]), not reported by the provider.
    #[serde(skip)]
    pub estimated: bool,
}

#[derive(Debug, Default)]
pub struct Watch {
    content: bool,
    finished: bool,
    done: bool,
    usage: Option<Usage>,
    /// With `keep_text`: the answer's text so far (for a continuation's prefill).
    text: Option<String>,
    /// The answer holds more than text (a tool call, audio, thinking): no prefill can carry it.
    not_text: bool,
    /// Bytes of generated output so far (text, refusal, reasoning, tool calls as JSON): the
    /// basis of an estimated usage when the upstream never reports one.
    output_bytes: usize,
    /// The events are Anthropic's (a Messages client's pass-through), not OpenAI's chunks.
    anthropic: bool,
    /// Anthropic's content blocks so far.
    blocks: Blocks,
}

/// An Anthropic answer's content blocks so far: the index the next one takes, and the text
/// block still open, if any (a continuation's text goes on in it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    pub next: usize,
    pub open_text: Option<usize>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
    #[serde(default)]
    audio: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody<'a> {
    Object {
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        code: Option<Cow<'a, str>>,
    },
    Text(Cow<'a, str>),
}

fn nonempty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

impl Watch {
    /// `keep_text`: also accumulate the answer's text (continuation needs it).
    pub fn new(keep_text: bool) -> Watch {
        Watch {
            text: keep_text.then(String::new),
            ..Watch::default()
        }
    }

    /// The dialect of the events this watch reads.
    pub fn dialect(&self) -> crate::api::Dialect {
        if self.anthropic {
            crate::api::Dialect::Anthropic
        } else {
            crate::api::Dialect::OpenAi
        }
    }

    /// This watch reads Anthropic's events (`message_start` … `message_stop`) instead.
    pub fn for_dialect(mut self, d: crate::api::Dialect) -> Watch {
        self.anthropic = d == crate::api::Dialect::Anthropic;
        self
    }

    /// Inspect a segment of whole events. `Err` names the first event that is an error or not
    /// JSON; the events before it were inspected.
    pub fn inspect(&mut self, seg: &[u8]) -> Result<(), BadEvent> {
        let mut pos = 0;
        while pos < seg.len() {
            let (end, next) = match event_end(&seg[pos..]) {
                Some((e, n)) => (pos + e, pos + n),
                None => (seg.len(), seg.len()),
            };
            self.event(&seg[pos..end])
                .map_err(|(kind, message)| BadEvent {
                    at: pos,
                    kind,
                    message,
                })?;
            pos = next;
        }
        Ok(())
    }

    fn event(&mut self, ev: &[u8]) -> Result<(), (String, String)> {
        // The data lines, joined (OpenAI sends one per event; the spec allows several).
        let mut data: Option<Cow<'_, [u8]>> = None;
        for v in ev.split(|&b| b == b'\n').filter_map(crate::sse::data_line) {
            data = Some(match data {
                None => Cow::Borrowed(v),
                Some(d) => {
                    let mut o = d.into_owned();
                    o.push(b'\n');
                    o.extend_from_slice(v);
                    Cow::Owned(o)
                }
            });
        }
        let Some(data) = data else {
            return Ok(()); // a comment (keep-alive) or an empty event
        };
        if self.anthropic {
            return self.anthropic_event(&data);
        }
        if data.as_ref() == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_slice(&data).map_err(|_| {
            (
                "invalid_event".to_string(),
                "the provider sent an event that is not valid JSON".to_string(),
            )
        })?;
        if let Some(e) = chunk.error {
            return Err(error_of(Some(e)));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for c in chunk.choices {
            if c.finish_reason.is_some() {
                self.finished = true;
                self.content = true;
            }
            let Some(d) = c.delta else { continue };
            if d.tool_calls.is_some() || d.function_call.is_some() || d.audio.is_some() {
                self.not_text = true;
                self.content = true;
            }
            let len = |s: &Option<Cow<'_, str>>| s.as_deref().map_or(0, str::len);
            let raw = |r: Option<&RawValue>| r.map_or(0, |r| r.get().len());
            self.output_bytes += len(&d.content)
                + len(&d.refusal)
                + len(&d.reasoning_content)
                + len(&d.reasoning)
                + raw(d.tool_calls)
                + raw(d.function_call);
            if nonempty(&d.content)
                || nonempty(&d.refusal)
                || nonempty(&d.reasoning_content)
                || nonempty(&d.reasoning)
            {
                self.content = true;
            }
            if let (Some(t), Some(c)) = (&mut self.text, &d.content) {
                t.push_str(c);
            }
        }
        Ok(())
    }

    /// An event with content (text, a tool call, a refusal, reasoning, or a finish) was seen:
    /// the commit point. Role-only and empty deltas, comments and usage do not count.
    pub fn has_content(&self) -> bool {
        self.content
    }

    /// A choice reported its `finish_reason`: the answer itself is complete.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// `data: [DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Bytes of generated output seen so far.
    pub fn output_bytes(&self) -> usize {
        self.output_bytes
    }

    /// The answer's text so far, if kept and the answer is plain text (no tool calls, no
    /// thinking).
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref().filter(|_| !self.not_text)
    }

    /// Anthropic's content blocks so far (for an OpenAI stream, none).
    pub fn blocks(&self) -> Blocks {
        self.blocks
    }
}

/// An error event's `(kind, message)`.
fn error_of(e: Option<ErrorBody<'_>>) -> (String, String) {
    match e {
        Some(ErrorBody::Object {
            message,
            kind,
            code,
        }) => (
            kind.or(code)
                .map(Cow::into_owned)
                .unwrap_or_else(|| "server_error".into()),
            message
                .map(Cow::into_owned)
                .unwrap_or_else(|| "the provider reported an error mid-stream".into()),
        ),
        Some(ErrorBody::Text(t)) => ("server_error".into(), t.into_owned()),
        None => (
            "server_error".into(),
            "the provider reported an error mid-stream".into(),
        ),
    }
}

/// The end of the first event in `b`: (end of its content, start of the next event).
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &b[from..]).map(|i| from + i) {
        match b.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if b.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
            _ => from = i + 1,
        }
    }
    None
}

/// The usage of a whole (non-stream) answer, OpenAI's chat completion or Anthropic's
/// message, if it reports one.
///
/// Runs on every JSON answer, so it parses only the `usage` object: the last `"usage"` key in
/// the body (OpenAI puts it after `choices`). A `"usage"` inside a string is escaped
/// (`\"usage\"`) and cannot match; a string value `"usage"` is not followed by `:`.
pub fn json_usage(body: &[u8]) -> Option<Usage> {
    let mut end = body.len();
    while let Some(at) = memchr::memmem::rfind(&body[..end], b"\"usage\"") {
        let rest = &body[at + b"\"usage\"".len()..];
        let ws = |b: &u8| b.is_ascii_whitespace();
        let rest = &rest[rest.iter().take_while(|b| ws(b)).count()..];
        if let Some(value) = rest.strip_prefix(b":") {
            let mut de = serde_json::Deserializer::from_slice(value);
            let u = Option::<WireUsage>::deserialize(&mut de).ok().flatten()?;
            let (prompt, completion) = u.counts();
            return Some(Usage {
                prompt_tokens: prompt.unwrap_or(0),
                completion_tokens: completion.unwrap_or(0),
                estimated: false,
            });
        }
        end = at;
    }
    None
}

/// The usage to report for a stream the upstream ended (after its finish) without the usage
/// chunk: `None` unless the client asked for one (`stream_options.include_usage`). Estimated,
/// and marked so: the prompt from the size of its messages and tools, plus OpenAI's 3 tokens a
/// message and 3 for the reply; the answer from `output_bytes`.
pub fn estimated_usage(request: &crate::api::ChatRequest, output_bytes: usize) -> Option<Usage> {
    if !request.include_usage {
        return None;
    }
    Some(Usage {
        prompt_tokens: request.estimated_prompt_tokens(),
        completion_tokens: output_bytes.div_ceil(crate::api::BYTES_PER_TOKEN) as u64,
        estimated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\\nlo\"},\"finish_reason\":null}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n";

    /// Where content starts in [`STREAM`]: the second data event.
    fn content_at() -> usize {
        let s = std::str::from_utf8(STREAM).expect("utf8");
        s.find("data: {\"choices\":[{\"delta\":{\"content\"")
            .expect("content event")
    }

    #[test]
    fn role_only_and_comments_are_not_content() {
        let mut w = Watch::new(true);
        w.inspect(&STREAM[..content_at()]).expect("valid");
        assert!(!w.has_content());
        assert!(!w.finished() && !w.done());
    }

    /// Split the fixture at every event boundary: the facts are the same however it arrives.
    #[test]
    fn facts_are_the_same_at_every_event_split() {
        let bounds: Vec<usize> = (0..=STREAM.len())
            .filter(|&i| i == 0 || i == STREAM.len() || STREAM[..i].ends_with(b"\n\n"))
            .collect();
        for &i in &bounds {
            let mut w = Watch::new(true);
            w.inspect(&STREAM[..i]).expect("valid");
            assert_eq!(w.has_content(), i > content_at(), "split {i}");
            w.inspect(&STREAM[i..]).expect("valid");
            assert!(w.has_content() && w.finished() && w.done(), "split {i}");
            assert_eq!(
                w.usage(),
                Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 2,
                    estimated: false
                })
            );
            assert_eq!(w.text(), Some("Hel\nlo"));
        }
    }

    #[test]
    fn tool_calls_and_finish_count_as_content() {
        let mut w = Watch::new(true);
        w.inspect(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n")
            .expect("valid");
        assert!(w.has_content());
        assert_eq!(w.text(), None, "no prefill text for a tool call");
        let mut w = Watch::new(false);
        w.inspect(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n")
            .expect("valid");
        assert!(w.has_content() && w.finished());
    }

    #[test]
    fn bad_events_name_their_offset() {
        let good = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        let mut seg = good.to_vec();
        seg.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\n\n");
        let mut w = Watch::new(false);
        let e = w.inspect(&seg).expect_err("not JSON");
        assert_eq!(e.at, good.len());
        assert_eq!(e.kind, "invalid_event");
        assert!(w.has_content(), "the good event before it counted");

        let mut seg = good.to_vec();
        seg.extend_from_slice(
            b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\"}}\n\n",
        );
        let e = Watch::new(false).inspect(&seg).expect_err("error event");
        assert_eq!((e.at, e.kind.as_str()), (good.len(), "server_error"));
        assert_eq!(e.message, "Overloaded");
    }

    #[test]
    fn json_answers_report_usage() {
        let b = br#"{"id":"x","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        assert_eq!(
            json_usage(b),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                estimated: false
            })
        );
        assert_eq!(json_usage(b"{}"), None);
        assert_eq!(json_usage(br#"{"usage":null}"#), None);
        // "usage" as a string value, and inside the answer's text, is not the key.
        let b = br#"{"usage" : {"prompt_tokens":5,"completion_tokens":2}, "choices":[{"message":{"content":"the \"usage\": {1}","kind":"usage"}}]}"#;
        assert_eq!(
            json_usage(b),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                estimated: false
            })
        );
    }

    #[test]
    fn output_bytes_count_every_kind_of_output() {
        let mut w = Watch::new(false);
        w.inspect(STREAM).expect("valid");
        assert_eq!(w.output_bytes(), "Hel\nlo".len());
        w.inspect(b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"abcd\",\"tool_calls\":[1]}}]}\n\n")
            .expect("valid");
        assert_eq!(w.output_bytes(), "Hel\nlo".len() + 4 + "[1]".len());
    }

    #[test]
    fn usage_is_estimated_only_when_asked_for() {
        let req = |b: &'static [u8]| {
            crate::api::ChatRequest::parse(bytes::Bytes::from_static(b)).expect("valid request")
        };
        let asked = req(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"12345678"},{"role":"user","content":"1234"}]}"#,
        );
        // Contents as JSON: 10 + 6 bytes → 4 tokens, plus 3 per message and 3 for the reply.
        assert_eq!(
            estimated_usage(&asked, 9),
            Some(Usage {
                prompt_tokens: 4 + 2 * 3 + 3,
                completion_tokens: 3,
                estimated: true
            })
        );
        let not_asked =
            req(br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(estimated_usage(&not_asked, 9), None);
        let off = req(br#"{"model":"m","stream_options":{"include_usage":false},"messages":[]}"#);
        assert_eq!(estimated_usage(&off, 9), None);
    }

    #[test]
    fn json_usage_reads_either_dialect() {
        let anthropic = br#"{"id":"m","content":[{"type":"text","text":"\"usage\": no"}],"usage":{"input_tokens":9,"cache_creation_input_tokens":5,"output_tokens":3}}"#;
        assert_eq!(
            json_usage(anthropic),
            Some(Usage {
                prompt_tokens: 14,
                completion_tokens: 3,
                estimated: false
            })
        );
        let openai =
            br#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;
        assert_eq!(
            json_usage(openai).map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((4, 2))
        );
        assert_eq!(json_usage(br#"{"usage":null}"#), None);
    }
}
