//! A continuation's stream as part of the client's open one. The client's stream is OpenAI
//! chunks or (a Messages client's pass-through) Anthropic events; the continuation's is either
//! too. Its events are rewritten to go on where the broken answer stopped: the same identity,
//! no second opening, text continuing the open block. Pure; runs for a continuation only.

use super::relay::ChunkHead;
use super::watch::Blocks;
use crate::api::messages_answer::{event as write, StreamToMessages};
use crate::api::Dialect;
use bytes::Bytes;
use serde_json::Value;

/// Where a broken stream stood, for a continuation to go on from it.
#[derive(Debug, Clone)]
pub enum Head {
    /// An OpenAI chunk stream: its chunks' identity.
    Chunks(ChunkHead),
    /// An Anthropic event stream: its content blocks so far.
    Events(Blocks),
}

/// How a continuation's events are rewritten into the client's stream.
pub(super) enum Splice<'a> {
    /// OpenAI chunks into OpenAI chunks: re-identified, the role-only opening dropped.
    Chunks(&'a ChunkHead),
    /// Anthropic events into Anthropic events: no second `message_start`, block indices
    /// shifted, the first text block merged into the open one.
    Events(Renumber),
    /// OpenAI chunks into Anthropic events: translated as the open message's next blocks.
    Translated(Box<StreamToMessages>),
}

impl<'a> Splice<'a> {
    /// The splice of a continuation whose stream is in `dialect` into the stream at `head`;
    /// `None` where there is none (an Anthropic stream cannot go on in an OpenAI one).
    pub fn new(head: &'a Head, dialect: Dialect) -> Option<Splice<'a>> {
        Some(match (head, dialect) {
            (Head::Chunks(h), Dialect::OpenAi) => Splice::Chunks(h),
            (Head::Chunks(_), Dialect::Anthropic) => return None,
            (Head::Events(b), Dialect::Anthropic) => Splice::Events(Renumber::new(*b)),
            (Head::Events(b), Dialect::OpenAi) => {
                Splice::Translated(Box::new(StreamToMessages::continuing(b.open_text, b.next)))
            }
        })
    }

    /// The dialect the client reads.
    pub fn client_dialect(&self) -> Dialect {
        match self {
            Splice::Chunks(_) => Dialect::OpenAi,
            Splice::Events(_) | Splice::Translated(_) => Dialect::Anthropic,
        }
    }

    /// The identity an estimated usage chunk takes.
    pub fn chunk_head(&self) -> Option<&ChunkHead> {
        match self {
            Splice::Chunks(h) => Some(h),
            _ => None,
        }
    }

    /// `seg`, whole events of the continuation, as the client's stream goes on.
    pub fn apply(&mut self, seg: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(seg.len() + 64);
        // Comments and event names carry nothing the client needs here.
        for data in seg.split(|&b| b == b'\n').filter_map(crate::sse::data_line) {
            match self {
                Splice::Chunks(to) => chunk(data, to, &mut out),
                Splice::Events(r) => r.event(data, &mut out),
                Splice::Translated(t) => {
                    if t.ended() {
                        break;
                    }
                    let data = String::from_utf8_lossy(data);
                    if let Err(e) = t.push(&data, &mut out) {
                        t.fail("api_error", &e, &mut out);
                    }
                }
            }
        }
        Bytes::from(out)
    }
}

/// One OpenAI chunk of a continuation with the original answer's `id`, `created` and `model`;
/// the role-only chunk that opens every stream is dropped.
fn chunk(data: &[u8], to: &ChunkHead, out: &mut Vec<u8>) {
    if data == b"[DONE]" {
        out.extend_from_slice(b"data: [DONE]\n\n");
        return;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let role_only = v
        .pointer("/choices/0/delta")
        .and_then(|d| d.as_object())
        .is_some_and(|d| {
            d.keys().all(|k| k == "role" || k == "content")
                && d.get("content")
                    .is_none_or(|c| c.as_str().is_none_or(str::is_empty))
        })
        && v.pointer("/choices/0/finish_reason")
            .is_none_or(Value::is_null);
    if role_only {
        return;
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), to.id.clone().into());
        o.insert("created".into(), to.created.into());
        o.insert("model".into(), to.model.clone().into());
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// An Anthropic continuation's block indices in the client's message: its first block goes on
/// in the open text block if it is text too, and every other block follows the original's.
pub(super) struct Renumber {
    /// The original's text block still open (closed once a block of another kind comes).
    open: Option<usize>,
    /// The client's index of the continuation's block 0, and of its block 1 (then 2, ...).
    first: usize,
    rest: usize,
}

impl Renumber {
    fn new(b: Blocks) -> Renumber {
        Renumber {
            open: b.open_text,
            first: b.open_text.unwrap_or(b.next),
            rest: if b.open_text.is_some() {
                b.next
            } else {
                b.next + 1
            },
        }
    }

    fn index(&self, k: usize) -> usize {
        match k {
            0 => self.first,
            k => self.rest + k - 1,
        }
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        let k = v["index"].as_u64().map(|k| k as usize);
        match kind.as_str() {
            "message_start" | "ping" => return,
            "content_block_start" if k == Some(0) => {
                if let Some(open) = self.open {
                    if v.pointer("/content_block/type") == Some(&Value::from("text")) {
                        // It goes on in the open block: only its initial text, if any.
                        let text = v.pointer("/content_block/text").and_then(Value::as_str);
                        if let Some(t) = text.filter(|t| !t.is_empty()) {
                            let d = serde_json::json!({"type": "content_block_delta", "index": open, "delta": {"type": "text_delta", "text": t}});
                            write(out, "content_block_delta", &d);
                        }
                        return;
                    }
                    // Another kind: the open block ends, and this one takes the next index.
                    let stop = serde_json::json!({"type": "content_block_stop", "index": open});
                    write(out, "content_block_stop", &stop);
                    self.open = None;
                    self.first = self.rest;
                    self.rest += 1;
                }
            }
            _ => {}
        }
        if let (Some(k), Some(o)) = (k, v.as_object_mut()) {
            o.insert("index".into(), self.index(k).into());
        }
        write(out, &kind, &v);
    }
}

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
