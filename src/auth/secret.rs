//! Gateway key secrets: made from 256 random bits, shown once, stored only as a SHA-256 hash;
//! and where a request carries one.

use crate::text::hex;
use ring::rand::SecureRandom;

/// Every secret starts with this, so a leaked one is recognisable (and scanners can find it).
pub const PREFIX: &str = "dtr_";

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random source failed".to_string())?;
    Ok(b)
}

/// A new key: its id (public, names it in the admin API and the ledger) and its secret.
pub fn new_key() -> Result<(String, String), String> {
    use base64::Engine as _;
    let id = format!("key_{}", hex(&random::<8>()?));
    let secret = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?)
    );
    Ok((id, secret))
}

/// What the store keeps of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The gateway key a request presents: `x-detour-key: KEY`, `Helicone-Auth: Bearer KEY`, or in
/// the chain mode (where `Authorization` is not a provider's key) `Authorization: Bearer KEY`
/// or `x-api-key: KEY`.
/// `None` when there is none; a value that is not visible ASCII counts as none.
pub fn presented(h: &http::HeaderMap, chain_mode: bool) -> Option<&str> {
    let bearer = |name: &str| {
        let v = h.get(name)?.to_str().ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    };
    let key = h
        .get("x-detour-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| bearer("helicone-auth"))
        .or_else(|| {
            if chain_mode {
                // `x-api-key`: what clients of Anthropic's Messages API send.
                bearer("authorization").or_else(|| h.get("x-api-key")?.to_str().ok().map(str::trim))
            } else {
                None
            }
        })?;
    (!key.is_empty() && key.len() <= 256).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed() {
        let (id1, s1) = new_key().expect("rng");
        let (id2, s2) = new_key().expect("rng");
        assert_ne!(s1, s2);
        assert_ne!(id1, id2);
        assert!(
            s1.starts_with(PREFIX) && s1.len() == PREFIX.len() + 43,
            "{s1}"
        );
        assert_eq!(hash(&s1), hash(&s1));
        assert_ne!(hash(&s1), hash(&s2));
    }

    #[test]
    fn where_a_request_carries_its_key() {
        let mut h = http::HeaderMap::new();
        assert_eq!(presented(&h, true), None);
        h.insert("authorization", "Bearer  dtr_a ".parse().expect("v"));
        assert_eq!(presented(&h, true), Some("dtr_a"));
        assert_eq!(presented(&h, false), None, "header mode: a provider's key");
        h.insert("helicone-auth", "bearer dtr_b".parse().expect("v"));
        assert_eq!(presented(&h, false), Some("dtr_b"));
        h.insert("x-detour-key", "dtr_c".parse().expect("v"));
        assert_eq!(presented(&h, true), Some("dtr_c"));
        h.insert("x-detour-key", "".parse().expect("v"));
        assert_eq!(presented(&h, true), None);
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().expect("v"));
        assert_eq!(presented(&h, true), None);
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", " dtr_d ".parse().expect("v"));
        assert_eq!(
            presented(&h, true),
            Some("dtr_d"),
            "a Messages client's header"
        );
        assert_eq!(presented(&h, false), None, "header mode: a provider's key");
        h.insert("authorization", "Bearer dtr_e".parse().expect("v"));
        assert_eq!(presented(&h, true), Some("dtr_e"));
    }
}
