//! Small text helpers for untrusted strings: cutting them for messages, checking model ids,
//! encoding a value as one URL path segment or query value, and bytes as lowercase hex. A leaf
//! module.

use std::borrow::Cow;

/// The longest model id (or deployment name) detour accepts.
pub const MAX_MODEL_ID: usize = 256;

/// A URL query value decoded (`%XX`, `+` as a space); `None` when it is not valid encoding or
/// not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Bytes as lowercase hex (ids, hashes, leases).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Cut a string for an error message or a log, on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why `id` cannot be a provider-side model id (or deployment name), if it cannot: empty, longer
/// than [`MAX_MODEL_ID`], `.` or containing `..`, `?`, `#`, a control character or whitespace.
/// Ids may contain `/` (`meta-llama/Llama-3.3-70B-Instruct`); where an id goes into a URL path it
/// is encoded as one segment ([`path_segment`]).
pub fn model_id_fault(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_MODEL_ID {
        Some("it is longer than 256 bytes")
    } else if id == "." || id.contains("..") {
        Some("it contains `..`")
    } else if id.contains(['?', '#']) {
        Some("it contains `?` or `#`")
    } else if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains whitespace or a control character")
    } else {
        None
    }
}

/// `s` as one URL path segment: every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) and
/// `@` percent-encoded, so `/`, `?`, `#`, `%` and `:` cannot change which resource is addressed.
pub fn path_segment(s: &str) -> Cow<'_, str> {
    encode(s, |b| b == b'@')
}

/// `s` as a URL query value (unreserved bytes kept, everything else percent-encoded).
pub fn query_value(s: &str) -> Cow<'_, str> {
    encode(s, |_| false)
}

fn encode(s: &str, also: impl Fn(u8) -> bool) -> Cow<'_, str> {
    let keep =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || also(b);
    if s.bytes().all(keep) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_or_are_refused() {
        assert_eq!(
            percent_decode("gpt-4o%2Fp1+x").as_deref(),
            Some("gpt-4o/p1 x")
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        for bad in ["%", "%2", "%zz", "%FF", "%+1"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn model_ids() {
        for ok in [
            "gpt-4o",
            "meta-llama/Llama-3.3-70B-Instruct",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "claude-3-7-sonnet@20250219",
            "a.b",
        ] {
            assert_eq!(model_id_fault(ok), None, "{ok}");
        }
        let long = "x".repeat(257);
        for bad in [
            "",
            ".",
            "..",
            "../../../admin",
            "x?alt=json",
            "x#frag",
            "a b",
            "a\r\nb",
            "a\tb",
            "a\u{7f}",
            "a\u{2028}b",
            long.as_str(),
        ] {
            assert!(model_id_fault(bad).is_some(), "{bad:?}");
        }
        assert_eq!(model_id_fault(&"x".repeat(256)), None);
    }

    #[test]
    fn one_path_segment() {
        assert_eq!(path_segment("gemini-2.0-flash"), "gemini-2.0-flash");
        assert_eq!(
            path_segment("claude-3-7-sonnet@20250219"),
            "claude-3-7-sonnet@20250219"
        );
        assert_eq!(path_segment("a/b:c?d#e%f"), "a%2Fb%3Ac%3Fd%23e%25f");
        assert_eq!(path_segment("é"), "%C3%A9");
        assert_eq!(query_value("2024-10-21"), "2024-10-21");
        assert_eq!(query_value("x&key=evil"), "x%26key%3Devil");
    }
}
