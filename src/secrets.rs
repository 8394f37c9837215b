//! Credentials, and keeping them out of everything a client or a log sees.
//!
//! A leaf module: it depends on nothing else of detour's. [`Secret`] holds one credential and
//! never prints it. [`Masker`] knows every credential detour holds (every provider's key, AWS
//! keys, provider headers that carry credentials, and the OAuth tokens detour mints at run time)
//! and replaces each occurrence with `***` in provider text before that text reaches a client or
//! a log line: one provider may quote another's key, so every credential is masked everywhere.

use memchr::memmem;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::RwLock;

/// What a masked credential becomes.
pub const MASK: &str = "***";
/// Credentials shorter than this are not masked (they would mask ordinary words; no provider
/// issues keys this short).
const MIN_MASKED: usize = 4;
/// Minted tokens remembered for masking (a few per provider that mints them).
const MINTED_KEPT: usize = 32;
/// Callers' credentials remembered (the keys in the key cache hold far fewer in practice).
const HELD_KEPT: usize = 4096;

/// Add `secret`'s forms to a bounded list, dropping the oldest past `kept`.
fn remember(list: &RwLock<VecDeque<Box<[u8]>>>, secret: &str, kept: usize) {
    let mut g = match list.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    for f in forms(secret) {
        if !g.contains(&f) {
            if g.len() >= kept {
                g.pop_front();
            }
            g.push_back(f);
        }
    }
}

/// A credential. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The raw credential, for building an auth header. Do not log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

/// Every credential detour holds, to be masked out of provider-originated text.
///
/// Built once at start-up from the configuration; tokens minted later are added with
/// [`Masker::add_minted`]. Masking runs only on error paths and on the few response headers
/// passed through, never on a served answer's body.
#[derive(Default)]
pub struct Masker {
    /// Start-up credentials (and their JSON-escaped forms), longest first so that a credential
    /// that contains another is masked whole.
    fixed: Vec<Box<[u8]>>,
    minted: RwLock<VecDeque<Box<[u8]>>>,
    /// Callers' own credentials (BYOK), as their keys are loaded; the oldest forgotten first.
    held: RwLock<VecDeque<Box<[u8]>>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Masker({} credentials)", self.fixed.len())
    }
}

/// The forms a credential can take in provider text: as it is, and JSON-escaped (`/` → `\/`).
fn forms(s: &str) -> Vec<Box<[u8]>> {
    let mut v = Vec::new();
    if s.len() < MIN_MASKED {
        return v;
    }
    v.push(s.as_bytes().into());
    if s.contains('/') {
        v.push(s.replace('/', "\\/").into_bytes().into());
    }
    v
}

impl Masker {
    pub fn new<'a>(credentials: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut fixed: Vec<Box<[u8]>> = credentials.into_iter().flat_map(forms).collect();
        fixed.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        fixed.dedup();
        Masker {
            fixed,
            minted: RwLock::new(VecDeque::new()),
            held: RwLock::new(VecDeque::new()),
        }
    }

    /// Remember a credential obtained at run time (an OAuth access token).
    pub fn add_minted(&self, token: &str) {
        remember(&self.minted, token, MINTED_KEPT);
    }

    /// Remember a caller's own credential (BYOK), loaded with its gateway key.
    pub fn add_held(&self, secret: &str) {
        remember(&self.held, secret, HELD_KEPT);
    }

    /// `text` with every credential replaced by `***`; borrowed when there was none.
    pub fn bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(text);
        for needle in &self.fixed {
            replace_all(&mut out, needle);
        }
        let g = match self.minted.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for needle in g.iter() {
            replace_all(&mut out, needle);
        }
        drop(g);
        let g = match self.held.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for needle in g.iter() {
            replace_all(&mut out, needle);
        }
        out
    }

    /// [`Masker::bytes`] for text.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Replacing whole UTF-8 sequences with ASCII keeps the text valid UTF-8.
            Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
        }
    }

    /// [`Masker::text`], owned.
    pub fn string(&self, text: String) -> String {
        match self.text(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        }
    }

    /// Whether `text` holds any credential.
    pub fn finds(&self, text: &[u8]) -> bool {
        matches!(self.bytes(text), Cow::Owned(_))
    }
}

fn replace_all(text: &mut Cow<'_, [u8]>, needle: &[u8]) {
    if memmem::find(text, needle).is_none() {
        return;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest: &[u8] = text;
    while let Some(i) = memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(MASK.as_bytes());
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    *text = Cow::Owned(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn masks_every_credential_in_every_form() {
        let m = Masker::new(["sk-alpha-123", "sk-alpha-1234567", "aws/secret+key", "abc"]);
        let t = r#"{"error":"bad key sk-alpha-1234567, also sk-alpha-123 and aws\/secret+key, aws/secret+key; abc"}"#;
        assert_eq!(
            m.text(t),
            r#"{"error":"bad key ***, also *** and ***, ***; abc"}"#,
            "longest first; JSON-escaped slashes; a 3-byte credential is not masked"
        );
        assert!(matches!(m.text("nothing here"), Cow::Borrowed(_)));
        assert!(m.finds(b"x sk-alpha-123 y"));
        assert!(!m.finds(b"sk-alpha-12"));
    }

    #[test]
    fn minted_tokens_are_masked_and_bounded() {
        let m = Masker::new([]);
        m.add_minted("ya29.token-one");
        assert_eq!(m.text("Bearer ya29.token-one"), "Bearer ***");
        for i in 0..100 {
            m.add_minted(&format!("ya29.token-{i:03}-xx"));
        }
        assert_eq!(m.text("ya29.token-099-xx"), "***");
        assert_eq!(
            m.text("ya29.token-one"),
            "ya29.token-one",
            "only the newest are kept"
        );
    }

    #[test]
    fn masking_keeps_utf8_valid() {
        let m = Masker::new(["clé-secrète"]);
        assert_eq!(m.text("é clé-secrète é"), "é *** é");
    }
}
