//! BYOK credentials at rest: sealed with ChaCha20-Poly1305 (ring) under a master key from an
//! environment variable, bound to the key id and provider they belong to (associated data), so
//! a sealed blob copied to another key or provider does not open.

use crate::config::Secret;
use crate::providers::bedrock::AwsCredentials;
use crate::providers::Credentials;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};

/// A caller's own credentials for one provider, as the admin API takes them.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Byok {
    /// An API key (OpenAI-family, Azure, Anthropic, Gemini) or a bearer token (Vertex,
    /// Bedrock API keys).
    pub api_key: Option<String>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
}

impl std::fmt::Debug for Byok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Byok(***)")
    }
}

impl Byok {
    /// Whether it is one complete kind of credential.
    pub fn check(&self) -> Result<(), String> {
        let aws = (&self.aws_access_key_id, &self.aws_secret_access_key);
        match (&self.api_key, aws) {
            (Some(k), (None, None)) if !k.trim().is_empty() => Ok(()),
            (None, (Some(i), Some(s))) if !i.trim().is_empty() && !s.trim().is_empty() => Ok(()),
            _ => Err(
                "expected either `api-key`, or `aws-access-key-id` with `aws-secret-access-key`"
                    .into(),
            ),
        }
    }

    /// As the credentials of an attempt.
    pub fn credentials(&self) -> Credentials {
        if let (Some(id), Some(secret)) = (&self.aws_access_key_id, &self.aws_secret_access_key) {
            return Credentials::Aws(AwsCredentials::new(
                id.trim().to_string(),
                Secret::new(secret.trim().to_string()),
                self.aws_session_token
                    .as_ref()
                    .map(|t| Secret::new(t.trim().to_string())),
            ));
        }
        match &self.api_key {
            Some(k) => Credentials::Key(Secret::new(k.trim().to_string())),
            None => Credentials::None,
        }
    }

    /// Every secret in it, for the masker.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        [
            &self.api_key,
            &self.aws_secret_access_key,
            &self.aws_session_token,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
    }
}

/// The master key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// From the variable's value: 32 bytes as 64 hex digits or base64.
    pub fn from_text(text: &str) -> Result<Sealer, String> {
        use base64::Engine as _;
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_string())?
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_string())?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
        })
    }

    fn aad(key_id: &str, provider: &str) -> Vec<u8> {
        format!("detour-byok\0{key_id}\0{provider}").into_bytes()
    }

    /// Seal `creds` for `key_id` and `provider`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, key_id: &str, provider: &str, creds: &Byok) -> Result<Vec<u8>, String> {
        let nonce = super::secret::random::<NONCE_LEN>()?;
        let mut data = serde_json::to_vec(creds).map_err(|e| e.to_string())?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(key_id, provider)),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Open what [`Sealer::seal`] made for the same key id and provider.
    pub fn open(&self, key_id: &str, provider: &str, sealed: &[u8]) -> Result<Byok, String> {
        if sealed.len() < NONCE_LEN {
            return Err("sealed credentials are too short".into());
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(Self::aad(key_id, provider)), &mut data)
            .map_err(|_| "the credentials do not open under this master key".to_string())?;
        serde_json::from_slice(plain).map_err(|_| "the credentials are not readable".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_text(&"ab".repeat(32)).expect("key")
    }

    #[test]
    fn sealed_credentials_open_only_for_their_key_and_provider() {
        let s = sealer();
        let b = Byok {
            api_key: Some("sk-caller-own".into()),
            ..Byok::default()
        };
        let sealed = s.seal("key_1", "openai", &b).expect("seal");
        assert!(!sealed.windows(13).any(|w| w == b"sk-caller-own"));
        assert_eq!(s.open("key_1", "openai", &sealed).expect("open"), b);
        assert!(s.open("key_2", "openai", &sealed).is_err());
        assert!(s.open("key_1", "azure", &sealed).is_err());
        let other = Sealer::from_text(&"cd".repeat(32)).expect("key");
        assert!(other.open("key_1", "openai", &sealed).is_err());
        assert!(s.open("key_1", "openai", &sealed[..5]).is_err());
        assert!(format!("{b:?}").contains("***"));
    }

    #[test]
    fn master_keys_are_32_bytes() {
        assert!(Sealer::from_text("short").is_err());
        assert!(Sealer::from_text(&"zz".repeat(32)).is_err());
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Sealer::from_text(&b64).is_ok());
    }

    #[test]
    fn a_credential_is_one_complete_kind() {
        let key = |k: &str| Byok {
            api_key: Some(k.into()),
            ..Byok::default()
        };
        assert!(key("sk").check().is_ok());
        assert!(key(" ").check().is_err());
        assert!(Byok::default().check().is_err());
        let aws = Byok {
            aws_access_key_id: Some("AKIA".into()),
            aws_secret_access_key: Some("s".into()),
            ..Byok::default()
        };
        assert!(aws.check().is_ok());
        assert!(matches!(aws.credentials(), Credentials::Aws(_)));
        let both = Byok {
            api_key: Some("k".into()),
            ..aws
        };
        assert!(both.check().is_err());
    }
}
