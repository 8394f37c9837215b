//! A record's compact encoding: what the request thread writes, the keeper keeps (in memory and
//! on disk) and a read turns back into a [`Record`] for its JSON.
//!
//! The request thread encodes a finished request's log straight into the queue's buffer: no
//! allocation, nothing freed on another thread, no JSON on the way in. Little-endian:
//!
//! ```text
//! u32 length of what follows · u64 seq (0 until numbered) · i64 at · u16 status ·
//! u8 flags (stream 1, fallback 2, client_closed 4) · f64 ms ·
//! str id · ?str key · str mode · ?str model · str outcome · ?str served_by ·
//! ?str post_commit_error · ?u64 prompt_tokens · ?u64 completion_tokens · ?f64 cost_usd ·
//! u16 attempts, each: str provider · str source · str outcome · ?u16 status · ?str error ·
//!   f64 ms · ?f64 connect · ?f64 first_byte · ?f64 first_token · ?f64 waited ·
//!   ?str wait_reason · u8 retry · ?f64 cost_usd · ?str pay
//! ```
//!
//! `str` is a `u32` length and its bytes; `?x` a byte 0 (absent) or 1 followed by `x`. Reads
//! check every length: a damaged file gives fewer records, never a panic.

use super::{AttemptRecord, Record};

/// Where a record's `seq` is, from its start.
const SEQ_AT: usize = 4;
/// Where its `at` is.
const AT_AT: usize = 12;

/// A record's fields, borrowed from wherever they are.
pub struct Head<'a> {
    pub id: &'a str,
    pub at: i64,
    pub key: Option<&'a str>,
    pub mode: &'a str,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub outcome: &'a str,
    pub status: u16,
    pub ms: f64,
    pub served_by: Option<&'a str>,
    pub fallback: bool,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub client_closed: bool,
    pub post_commit_error: Option<&'a str>,
}

/// An attempt's fields, borrowed.
pub struct Attempt<'a> {
    pub provider: &'a str,
    pub source: &'a str,
    pub outcome: &'a str,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub ms: f64,
    pub connect_ms: Option<f64>,
    pub first_byte_ms: Option<f64>,
    pub first_token_ms: Option<f64>,
    pub waited_ms: Option<f64>,
    pub wait_reason: Option<&'a str>,
    pub retry: bool,
    pub cost_usd: Option<f64>,
    pub pay: Option<&'a str>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Some `x`, put by `put`, behind a byte 1; none as a byte 0.
fn put_opt<T>(b: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => b.push(0),
        Some(x) => {
            b.push(1);
            put(b, x);
        }
    }
}

fn put_f64(b: &mut Vec<u8>, v: f64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// What a string's encoding is, for a search of a kept batch's bytes.
pub fn needle(s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.len() + 4);
    put_str(&mut b, s);
    b
}

/// Append one record to `b`.
pub fn encode<'a>(
    b: &mut Vec<u8>,
    h: &Head<'_>,
    attempts: impl ExactSizeIterator<Item = Attempt<'a>>,
) {
    let start = b.len();
    b.extend_from_slice(&[0; 12]); // length and seq, filled in below and when numbered
    b.extend_from_slice(&h.at.to_le_bytes());
    b.extend_from_slice(&h.status.to_le_bytes());
    b.push(u8::from(h.stream) | u8::from(h.fallback) << 1 | u8::from(h.client_closed) << 2);
    put_f64(b, h.ms);
    put_str(b, h.id);
    put_opt(b, h.key, put_str);
    put_str(b, h.mode);
    put_opt(b, h.model, put_str);
    put_str(b, h.outcome);
    put_opt(b, h.served_by, put_str);
    put_opt(b, h.post_commit_error, put_str);
    put_opt(b, h.prompt_tokens, |b, v| {
        b.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(b, h.completion_tokens, |b, v| {
        b.extend_from_slice(&v.to_le_bytes())
    });
    put_opt(b, h.cost_usd, put_f64);
    let n = u16::try_from(attempts.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&n.to_le_bytes());
    for a in attempts.take(usize::from(n)) {
        put_attempt(b, &a);
    }
    let len = u32::try_from(b.len() - start - 4).unwrap_or(u32::MAX);
    b[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_attempt(b: &mut Vec<u8>, a: &Attempt<'_>) {
    put_str(b, a.provider);
    put_str(b, a.source);
    put_str(b, a.outcome);
    put_opt(b, a.status, |b, v| b.extend_from_slice(&v.to_le_bytes()));
    put_opt(b, a.error, put_str);
    put_f64(b, a.ms);
    for t in [a.connect_ms, a.first_byte_ms, a.first_token_ms, a.waited_ms] {
        put_opt(b, t, put_f64);
    }
    put_opt(b, a.wait_reason, put_str);
    b.push(u8::from(a.retry));
    put_opt(b, a.cost_usd, put_f64);
    put_opt(b, a.pay, put_str);
}

/// Append a decoded record (a migration's, a bench's) to `b`, its `seq` with it.
pub fn encode_record(b: &mut Vec<u8>, r: &Record) {
    let start = b.len();
    let h = Head {
        id: &r.id,
        at: r.at,
        key: r.key.as_deref(),
        mode: &r.mode,
        model: r.model.as_deref(),
        stream: r.stream,
        outcome: &r.outcome,
        status: r.status,
        ms: r.ms,
        served_by: r.served_by.as_deref(),
        fallback: r.fallback,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cost_usd: r.cost_usd,
        client_closed: r.client_closed,
        post_commit_error: r.post_commit_error.as_deref(),
    };
    encode(b, &h, r.attempts.iter().map(borrow_attempt));
    set_seq(&mut b[start..], r.seq);
}

fn borrow_attempt(a: &AttemptRecord) -> Attempt<'_> {
    Attempt {
        provider: &a.provider,
        source: &a.source,
        outcome: &a.outcome,
        status: a.status,
        error: a.error.as_deref(),
        ms: a.ms,
        connect_ms: a.connect_ms,
        first_byte_ms: a.first_byte_ms,
        first_token_ms: a.first_token_ms,
        waited_ms: a.waited_ms,
        wait_reason: a.wait_reason.as_deref(),
        retry: a.retry,
        cost_usd: a.cost_usd,
        pay: a.pay.as_deref(),
    }
}

/// Number the record that starts `rec`.
fn set_seq(rec: &mut [u8], seq: u64) {
    if let Some(slot) = rec.get_mut(SEQ_AT..SEQ_AT + 8) {
        slot.copy_from_slice(&seq.to_le_bytes());
    }
}

/// The records one after another in `bytes`: each one's range, whole (the length with it).
/// Stops at the first that does not fit.
pub fn split(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = bytes.get(at..at + 4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let end = at.checked_add(4)?.checked_add(len)?;
        if len < AT_AT + 8 - 4 || end > bytes.len() {
            return None;
        }
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// Number the records in `bytes` from `first` on; the number after the last.
pub fn number(bytes: &mut [u8], first: u64) -> u64 {
    let ranges: Vec<_> = split(bytes).collect();
    let mut n = first;
    for r in ranges {
        set_seq(&mut bytes[r], n);
        n += 1;
    }
    n
}

/// The records in `bytes`, newest (last) first, those that decode.
pub fn newest_first(bytes: &[u8]) -> impl Iterator<Item = Record> + '_ {
    let ranges: Vec<_> = split(bytes).collect();
    ranges.into_iter().rev().filter_map(|r| decode(&bytes[r]))
}

/// A whole record's `seq` and `at` (from [`split`]).
pub fn seq_and_at(rec: &[u8]) -> (u64, i64) {
    let word = |i: usize| rec.get(i..i + 8).and_then(|w| w.try_into().ok());
    (
        word(SEQ_AT).map_or(0, u64::from_le_bytes),
        word(AT_AT).map_or(0, i64::from_le_bytes),
    )
}

/// Reads what [`encode`] wrote; `None` past the end.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.b.get(..n)?, self.b.get(n..)?);
        self.b = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// Byte 0: `None` (`Some(None)`); byte 1: the value.
    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
}

/// The record in `rec` (a whole one, from [`split`]).
pub fn decode(rec: &[u8]) -> Option<Record> {
    let mut r = Reader { b: rec.get(4..)? };
    let seq = r.u64()?;
    let at = r.u64()? as i64;
    let status = r.u16()?;
    let flags = r.u8()?;
    let ms = r.f64()?;
    let id = r.str()?;
    let key = r.opt(Reader::str)?;
    let mode = r.str()?;
    let model = r.opt(Reader::str)?;
    let outcome = r.str()?;
    let served_by = r.opt(Reader::str)?;
    let post_commit_error = r.opt(Reader::str)?;
    let prompt_tokens = r.opt(Reader::u64)?;
    let completion_tokens = r.opt(Reader::u64)?;
    let cost_usd = r.opt(Reader::f64)?;
    let n = r.u16()?;
    let attempts = (0..n)
        .map(|_| attempt(&mut r))
        .collect::<Option<Vec<_>>>()?;
    Some(Record {
        seq,
        id,
        at,
        key,
        mode,
        model,
        stream: flags & 1 != 0,
        outcome,
        status,
        ms,
        attempts,
        served_by,
        fallback: flags & 2 != 0,
        prompt_tokens,
        completion_tokens,
        cost_usd,
        client_closed: flags & 4 != 0,
        post_commit_error,
    })
}

fn attempt(r: &mut Reader<'_>) -> Option<AttemptRecord> {
    Some(AttemptRecord {
        provider: r.str()?,
        source: r.str()?,
        outcome: r.str()?,
        status: r.opt(Reader::u16)?,
        error: r.opt(Reader::str)?,
        ms: r.f64()?,
        connect_ms: r.opt(Reader::f64)?,
        first_byte_ms: r.opt(Reader::f64)?,
        first_token_ms: r.opt(Reader::f64)?,
        waited_ms: r.opt(Reader::f64)?,
        wait_reason: r.opt(Reader::str)?,
        retry: r.u8()? != 0,
        cost_usd: r.opt(Reader::f64)?,
        pay: r.opt(Reader::str)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, id: &str) -> Record {
        Record {
            seq,
            id: id.into(),
            at: -5,
            key: Some("k1".into()),
            mode: "chain".into(),
            model: None,
            stream: true,
            outcome: "success".into(),
            status: 200,
            ms: 1.25,
            attempts: vec![AttemptRecord {
                provider: "p1".into(),
                source: "gpt-4o/p1".into(),
                outcome: "server_error".into(),
                status: Some(503),
                error: Some("down ✗".into()),
                ms: 0.5,
                connect_ms: None,
                first_byte_ms: Some(0.25),
                first_token_ms: None,
                waited_ms: Some(100.0),
                wait_reason: Some("backoff".into()),
                retry: true,
                cost_usd: None,
                pay: Some("ptb".into()),
            }],
            served_by: None,
            fallback: true,
            prompt_tokens: Some(u64::MAX),
            completion_tokens: None,
            cost_usd: Some(0.125),
            client_closed: true,
            post_commit_error: Some("cut".into()),
        }
    }

    #[test]
    fn a_record_comes_back_as_it_went_in_and_damage_never_panics() {
        let mut b = Vec::new();
        encode_record(&mut b, &sample(7, "a"));
        encode_record(&mut b, &sample(8, "b"));
        let ranges: Vec<_> = split(&b).collect();
        assert_eq!(ranges.len(), 2);
        for (r, (seq, id)) in ranges.iter().zip([(7, "a"), (8, "b")]) {
            let back = decode(&b[r.clone()]).expect("decodes");
            let want = sample(seq, id);
            assert_eq!(
                serde_json::to_value(&back).ok(),
                serde_json::to_value(&want).ok()
            );
            assert_eq!(seq_and_at(&b[r.clone()]), (seq, -5));
        }
        let one = &b[ranges[0].clone()];
        // Every truncation and every single-byte change: an answer or `None`, never a panic.
        for cut in 0..one.len() {
            assert!(decode(&one[..cut]).is_none(), "cut at {cut}");
            let _ = split(&one[..cut]).count();
        }
        for i in 0..one.len() {
            for v in [0u8, 1, 2, 0x7f, 0xff] {
                let mut bad = one.to_vec();
                bad[i] = v;
                let _ = decode(&bad);
                for r in split(&bad) {
                    let _ = decode(&bad[r]);
                }
            }
        }
        assert!(b
            .windows(needle("gpt-4o/p1").len())
            .any(|w| w == needle("gpt-4o/p1")));
    }
}
