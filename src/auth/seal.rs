//! BYOK credentials at rest: sealed with ChaCha20-Poly1305 (ring) under a master key from an
//! environment variable, bound to the key id and provider they belong to (associated data), so
//! a sealed blob copied to another key or provider does not open.

use crate::config::Secret;
use crate::providers::bedrock::AwsCredentials;
use crate::providers::vertex::{self, ServiceAccount, TokenSource};
use crate::providers::{Credentials, Provider};
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
    /// A Google service account's JSON key (the object, or the file's text as a string), for
    /// Vertex: its tokens come from the provider's token endpoint, its requests name its
    /// `project_id` (else the provider's project).
    pub service_account: Option<serde_json::Value>,
}

impl std::fmt::Debug for Byok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Byok(***)")
    }
}

const KINDS_OF_CREDENTIAL: &str = "expected one of: `api-key`; `aws-access-key-id` with \
                                   `aws-secret-access-key` (bedrock); `service-account` (vertex)";

impl Byok {
    /// Whether it is one complete kind of credential, usable by a provider of `kind`.
    pub fn check(&self, kind: &str) -> Result<(), String> {
        let aws = (&self.aws_access_key_id, &self.aws_secret_access_key);
        let filled = |s: &String| !s.trim().is_empty();
        match (&self.api_key, aws, &self.service_account) {
            (Some(k), (None, None), None) if filled(k) => Ok(()),
            (None, (Some(i), Some(s)), None) if filled(i) && filled(s) => match kind {
                "bedrock" => Ok(()),
                _ => Err(format!("AWS keys are for bedrock providers, not {kind}")),
            },
            (None, (None, None), Some(_)) if self.aws_session_token.is_none() => match kind {
                "vertex" => self.account().map(|_| ()),
                _ => Err(format!(
                    "a service account is for vertex providers, not {kind}"
                )),
            },
            _ => Err(KINDS_OF_CREDENTIAL.into()),
        }
    }

    /// The service account, parsed; its errors never quote the key.
    fn account(&self) -> Result<ServiceAccount, String> {
        let text = match &self.service_account {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => return Err("no service account".into()),
        };
        let a = ServiceAccount::from_json(&text)?;
        match &a.project_id {
            Some(p) if !vertex::project_ok(p) => Err("project_id is not a project id".into()),
            _ => Ok(a),
        }
    }

    /// As the credentials of an attempt at `provider`.
    pub fn credentials(&self, provider: &Provider) -> Credentials {
        if let (Some(id), Some(secret)) = (&self.aws_access_key_id, &self.aws_secret_access_key) {
            return Credentials::Aws(AwsCredentials::new(
                id.trim().to_string(),
                Secret::new(secret.trim().to_string()),
                self.aws_session_token
                    .as_ref()
                    .map(|t| Secret::new(t.trim().to_string())),
            ));
        }
        if self.service_account.is_some() {
            let unusable = |reason: String| Credentials::Unusable { reason };
            let Some(at) = &provider.token_endpoint else {
                return unusable("the provider takes no service account".into());
            };
            return match self.account() {
                Ok(a) => Credentials::ServiceAccount(std::sync::Arc::new(TokenSource::new(
                    a,
                    at,
                    provider.timeouts,
                    "vertex token (the caller's service account)",
                ))),
                Err(e) => unusable(format!("the caller's service account: {e}")),
            };
        }
        match &self.api_key {
            Some(k) => Credentials::Key(Secret::new(k.trim().to_string())),
            None => Credentials::None,
        }
    }

    /// Every secret in it, for the masker.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        let private_key = self
            .service_account
            .as_ref()
            .and_then(|v| v.get("private_key"))
            .and_then(serde_json::Value::as_str);
        [
            self.api_key.as_deref(),
            self.aws_secret_access_key.as_deref(),
            self.aws_session_token.as_deref(),
            private_key,
        ]
        .into_iter()
        .flatten()
        .map(str::trim)
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
        assert!(key("sk").check("openai").is_ok());
        assert!(key(" ").check("openai").is_err());
        assert!(Byok::default().check("openai").is_err());
        let aws = Byok {
            aws_access_key_id: Some("AKIA".into()),
            aws_secret_access_key: Some("s".into()),
            ..Byok::default()
        };
        assert!(aws.check("bedrock").is_ok());
        assert!(aws.check("openai").is_err(), "AWS keys only for bedrock");
        let both = Byok {
            api_key: Some("k".into()),
            ..aws
        };
        assert!(both.check("bedrock").is_err());
    }

    const KEY_FILE: &str = include_str!("../../tests/fixtures/vertex-test-service-account.json");

    #[test]
    fn a_service_account_is_checked_for_vertex_and_never_quoted() {
        let sa = |v: serde_json::Value| Byok {
            service_account: Some(v),
            ..Byok::default()
        };
        let file: serde_json::Value = serde_json::from_str(KEY_FILE).expect("fixture");
        assert!(sa(file.clone()).check("vertex").is_ok());
        assert!(
            sa(serde_json::Value::String(KEY_FILE.into()))
                .check("vertex")
                .is_ok(),
            "as text"
        );
        assert!(sa(file.clone()).check("openai").is_err(), "only for vertex");
        let mut bad = file.clone();
        bad["private_key"] = "-----BEGIN PRIVATE KEY-----\nnot-a-key-secret-xyz\n".into();
        let e = sa(bad).check("vertex").expect_err("not a key");
        assert!(!e.contains("not-a-key-secret-xyz"), "{e}");
        let mut odd = file.clone();
        odd["project_id"] = "p/../../admin?x=".into();
        assert!(
            sa(odd).check("vertex").is_err(),
            "a project id reaches a URL path"
        );
        let with_key = Byok {
            api_key: Some("k".into()),
            ..sa(file.clone())
        };
        assert!(with_key.check("vertex").is_err(), "one kind at a time");
        let pem = file["private_key"].as_str().expect("pem").trim();
        assert!(sa(file.clone()).secrets().any(|s| s == pem));
    }
}
