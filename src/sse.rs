//! Incremental SSE handling for the relay: bytes in, bytes out, no I/O.
//!
//! [`EventAligner`] forwards only whole events (up to the last blank line in what it has seen)
//! and holds a partial event back until its end arrives. Chunks that end on an event boundary —
//! nearly all of them — pass through as the very same `Bytes`, no copy. Because the client has
//! only ever seen whole events, an error event detour appends after a failure is always parsed
//! on its own, never glued onto half an event.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct EventAligner {
    carry: BytesMut,
    saw_done: bool,
}

/// Index just past the last event terminator (`\n\n`, `\r\n\r\n`, `\n\r\n`) in `b`.
fn last_boundary(b: &[u8]) -> Option<usize> {
    let mut end = b.len();
    while let Some(i) = memchr::memrchr(b'\n', &b[..end]) {
        if i >= 1 && b[i - 1] == b'\n' {
            return Some(i + 1);
        }
        if i >= 2 && b[i - 1] == b'\r' && b[i - 2] == b'\n' {
            return Some(i + 1);
        }
        end = i;
    }
    None
}

fn ends_with_done(seg: &[u8]) -> bool {
    let mut s = seg;
    while let [rest @ .., b'\n' | b'\r' | b' '] = s {
        s = rest;
    }
    s.ends_with(b"data: [DONE]") || s.ends_with(b"data:[DONE]")
}

impl EventAligner {
    /// Feed one upstream chunk; returns the whole events to forward now, if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.carry.is_empty() {
            return match last_boundary(&chunk) {
                Some(n) if n == chunk.len() => self.emit(chunk),
                Some(n) => {
                    self.carry.extend_from_slice(&chunk[n..]);
                    self.emit(chunk.slice(..n))
                }
                None => {
                    self.carry.extend_from_slice(&chunk);
                    None
                }
            };
        }
        // Only the new bytes (and the 3 before them, for a terminator split across reads)
        // can hold a new boundary: a long partial event is scanned once, not once per read.
        let from = self.carry.len().saturating_sub(3);
        self.carry.extend_from_slice(&chunk);
        let n = from + last_boundary(&self.carry[from..])?;
        let out = self.carry.split_to(n).freeze();
        self.emit(out)
    }

    fn emit(&mut self, seg: Bytes) -> Option<Bytes> {
        self.saw_done = ends_with_done(&seg);
        Some(seg)
    }

    /// Whether the last event forwarded was `data: [DONE]`.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// Bytes of a partial event still held back.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// At the end of the stream: the held-back tail, if the upstream ended mid-event.
    pub fn take_rest(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| self.carry.split().freeze())
    }
}

/// The keep-alive detour writes into a quiet committed stream: an SSE comment, which clients
/// ignore (the Messages module turns it into Anthropic's `ping` event).
pub const KEEP_ALIVE: &[u8] = b": ping\n\n";

/// The value of a `data:` line (one leading space and a trailing `\r` removed); `None` for any
/// other line.
pub fn data_line(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let v = line.strip_prefix(b"data:")?;
    Some(v.strip_prefix(b" ").unwrap_or(v))
}

/// An SSE error event (no `[DONE]` follows it), in OpenAI's error shape.
pub fn error_event(message: &str, code: &str) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&error_json(message, code));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `{"error":{"message":…,"type":"upstream_error","param":null,"code":…}}`: an upstream
/// failure in OpenAI's error shape.
pub fn error_json(message: &str, code: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct E<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        param: Option<()>,
        code: &'a str,
    }
    #[derive(serde::Serialize)]
    struct W<'a> {
        error: E<'a>,
    }
    serde_json::to_vec(&W {
        error: E {
            message,
            kind: "upstream_error",
            param: None,
            code,
        },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\\nlo\"}}]}\r\n\r\ndata: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n";

    /// Every split of the fixture at every byte boundary (and in three pieces) forwards exactly
    /// the fixture, only ever in whole events, and sees `[DONE]` at the end.
    #[test]
    fn every_split_forwards_whole_events_only() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let mut a = EventAligner::default();
                let mut out = Vec::new();
                for piece in [&STREAM[..i], &STREAM[i..j], &STREAM[j..]] {
                    if let Some(seg) = a.push(Bytes::copy_from_slice(piece)) {
                        assert!(last_boundary(&seg) == Some(seg.len()), "split {i},{j}");
                        out.extend_from_slice(&seg);
                    }
                }
                assert_eq!(out, STREAM, "split {i},{j}");
                assert!(a.saw_done(), "split {i},{j}");
                assert_eq!(a.pending(), 0);
            }
        }
    }

    #[test]
    fn aligned_chunk_passes_through_without_copy() {
        let mut a = EventAligner::default();
        let chunk = Bytes::from_static(b"data: {}\n\n");
        let out = a.push(chunk.clone()).expect("whole event");
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert!(!a.saw_done());
    }

    #[test]
    fn cut_stream_keeps_partial_event_back() {
        let mut a = EventAligner::default();
        let out = a.push(Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""));
        assert_eq!(out.as_deref(), Some(&b"data: {\"a\":1}\n\n"[..]));
        assert_eq!(a.pending(), 10);
        assert_eq!(a.take_rest().as_deref(), Some(&b"data: {\"b\""[..]));
    }

    #[test]
    fn error_event_is_one_json_event() {
        let e = error_event("upstream \"closed\"", "stream_interrupted");
        let s = std::str::from_utf8(&e).expect("utf8");
        let json = s
            .strip_prefix("data: ")
            .and_then(|s| s.strip_suffix("\n\n"))
            .expect("framed");
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(v["error"]["code"], "stream_interrupted");
        assert_eq!(v["error"]["message"], "upstream \"closed\"");
    }
}

/// One decoded SSE event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE decoder for translated streams: bytes in (split anywhere), whole events out.
/// Comment lines (`:`) and events without data are skipped.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(bytes);
        let Some(end) = last_boundary(&self.buf[from..]).map(|n| from + n) else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&whole);
        let mut out = Vec::new();
        let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
        for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
            if line.is_empty() {
                if let Some(d) = data.take() {
                    out.push(SseEvent {
                        event: event.take(),
                        data: d,
                    });
                }
                event = None;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event = Some(value.to_string()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        out
    }

    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
