//! Google Vertex AI: paths, and OAuth2 access tokens minted from a service-account key.
//!
//! Vertex serves Gemini models (publisher `google`: the Gemini translator applies unchanged) and
//! Claude models (publisher `anthropic`, `rawPredict` / `streamRawPredict`: the Anthropic
//! translator applies, with `anthropic_version: vertex-2023-10-16` in the body in place of
//! `model`). A model id starting with `claude` goes to the anthropic publisher; every other id to
//! google.
//!
//! Auth: the JWT bearer grant (RFC 7523) as Google's libraries do it: an RS256-signed assertion
//! (`iss` = the service account, `aud` = its `token_uri`, scope `cloud-platform`, one hour),
//! exchanged at `token_uri` for an access token. Pure here; the engine does the HTTP exchange
//! and caches the token until shortly before it expires. Keys and tokens are never printed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

/// The OAuth scope Vertex needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The body field that replaces `model` for Claude on Vertex.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Vertex AI: Claude (`rawPredict`) and Gemini (`generateContent`) under one project and
/// region, with access tokens minted from a service account.
#[derive(Debug)]
pub struct Vertex {
    project: String,
    region: String,
}

/// Whether `project` can be a project id in a Vertex URL path (letters, digits, `-`, `.`, `:`;
/// at most 128 bytes): nothing else reaches the path.
pub fn project_ok(project: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':';
    project.len() <= 128 && project.bytes().all(ok)
}

/// Where access tokens come from when no key file names its own `token_uri`.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A service account, the token endpoint its access tokens come from, and its current token.
#[derive(Debug)]
pub struct TokenSource {
    pub account: ServiceAccount,
    /// `token_uri` (its path is the token path).
    pub endpoint: crate::config::Endpoint,
    pub timeouts: crate::config::Timeouts,
    /// What its failures are called (`vertex token: …`).
    pub label: &'static str,
    /// The last access token minted and when it expires; one exchange at a time.
    pub cache: tokio::sync::Mutex<Option<(crate::config::Secret, std::time::Instant)>>,
}

impl TokenSource {
    /// `account`'s tokens from `at` (whose URL becomes the account's `token_uri`: the JWT's
    /// audience must be where it is sent).
    pub fn new(
        mut account: ServiceAccount,
        at: &super::TokenEndpoint,
        timeouts: crate::config::Timeouts,
        label: &'static str,
    ) -> TokenSource {
        account.token_uri.clone_from(&at.url);
        TokenSource {
            account,
            endpoint: at.endpoint.clone(),
            timeouts,
            label,
            cache: tokio::sync::Mutex::new(None),
        }
    }
}

pub(super) fn build(
    p: &crate::config::ProviderConfig,
    env: super::Env<'_>,
) -> Result<super::Built, crate::config::ConfigError> {
    let region = p.region.clone().ok_or_else(|| {
        p.error(
            "region",
            "a vertex provider needs a region (a location such as us-east5, or global)",
        )
    })?;
    if p.api_key_env.is_some() {
        return Err(p.error(
            "api-key-env",
            "vertex authenticates with a service-account key (credentials-file), not an API key",
        ));
    }
    let (account, credentials) = account(p, env)?;
    let project = match (&p.project, &account) {
        (Some(pr), _) => pr.clone(),
        (None, Some(a)) => a.project_id.clone().unwrap_or_default(),
        (None, None) => String::new(),
    };
    if account.is_some() && project.is_empty() {
        return Err(p.error(
            "project",
            "a vertex provider needs a project (or a key file with project_id)",
        ));
    }
    if !project_ok(&project) {
        return Err(p.error("project", format!("`{project}` is not a project id")));
    }
    // The operator's key file names the token endpoint; callers' own accounts use the same
    // one (never a URL of theirs: the gateway would send requests wherever it pointed).
    let url = account
        .as_ref()
        .map_or(GOOGLE_TOKEN_URI, |a| a.token_uri.as_str())
        .to_string();
    let token_endpoint = super::TokenEndpoint {
        endpoint: crate::config::Endpoint::parse(&url, "")
            .map_err(|e| p.error("credentials-file", format!("token_uri: {}", e.message)))?,
        url,
    };
    let credentials =
        match account {
            Some(account) => super::Credentials::ServiceAccount(std::sync::Arc::new(
                TokenSource::new(account, &token_endpoint, p.timeouts, "vertex token"),
            )),
            None => credentials,
        };
    Ok(super::Built {
        endpoint: super::endpoint(p, Some(base_url(&region)))?,
        adapter: Box::new(Vertex { project, region }),
        credentials,
        token_endpoint: Some(token_endpoint),
    })
}

/// The service account from `credentials-file` (which must load), else from
/// `$GOOGLE_APPLICATION_CREDENTIALS` (which may be meant for something else, e.g. gcloud user
/// credentials: then the provider is skipped, with the reason).
fn account(
    p: &crate::config::ProviderConfig,
    env: super::Env<'_>,
) -> Result<(Option<ServiceAccount>, super::Credentials), crate::config::ConfigError> {
    let load = |f: &str| -> Result<ServiceAccount, String> {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read the key file {f}: {e}"))?;
        ServiceAccount::from_json(&text).map_err(|e| format!("{f}: {e}"))
    };
    Ok(
        match (&p.credentials_file, env("GOOGLE_APPLICATION_CREDENTIALS")) {
            (Some(f), _) => (
                Some(load(f).map_err(|e| p.error("credentials-file", e))?),
                super::Credentials::None,
            ),
            (None, Some(f)) => match load(&f) {
                Ok(a) => (Some(a), super::Credentials::None),
                Err(e) => (
                    None,
                    super::Credentials::Unusable {
                        reason: format!("GOOGLE_APPLICATION_CREDENTIALS: {e}"),
                    },
                ),
            },
            (None, None) => (
                None,
                super::Credentials::Missing {
                    env: "GOOGLE_APPLICATION_CREDENTIALS".into(),
                },
            ),
        },
    )
}

impl super::Adapter for Vertex {
    fn prepare(&self, call: &super::Call<'_>) -> Result<super::Prepared, String> {
        let id = call.route.id;
        let native = call.req.native.as_deref().filter(|_| is_anthropic(id));
        let (body, wire) = if let Some(n) = native {
            if n.count_tokens {
                // Claude's token count: the body as sent, with Vertex's id for the model.
                let extra = [
                    ("anthropic_version", ANTHROPIC_VERSION.into()),
                    ("model", id.into()),
                ];
                let project = call.project.unwrap_or(&self.project);
                return Ok(super::Prepared {
                    path: count_path(call.base_path, project, &self.region),
                    body: n.enveloped(&[], &extra)?.into(),
                    wire: super::Wire::Native,
                });
            }
            // A Messages client's request, in Vertex's envelope; the answer is Anthropic's.
            let version = ("anthropic_version", ANTHROPIC_VERSION.into());
            (n.enveloped(&["model"], &[version])?, super::Wire::Native)
        } else if is_anthropic(id) {
            let tree = call.req.tree()?;
            let max = call.route.max_output_tokens.unwrap_or(4096);
            let version = ("anthropic_version", ANTHROPIC_VERSION);
            let (b, opts) = super::anthropic::request_with(tree, version, max)?;
            (b, super::Wire::Anthropic(opts))
        } else {
            let (b, opts) = super::gemini::request_for(call.req)?;
            (b, super::Wire::Gemini(opts, id.to_string()))
        };
        Ok(super::Prepared {
            path: path(
                call.base_path,
                call.project.unwrap_or(&self.project),
                &self.region,
                id,
                call.stream,
            ),
            body: body.into(),
            wire,
        })
    }

    fn authorize(
        &self,
        h: &mut pingora_http::RequestHeader,
        auth: &super::Auth<'_>,
    ) -> pingora_core::Result<()> {
        match auth {
            super::Auth::Token(t) | super::Auth::Key(t) => super::bearer(h, t),
            super::Auth::None | super::Auth::Aws(_) => Ok(()),
        }
    }
}

/// Whether Vertex serves `model_id` through the anthropic publisher.
pub fn is_anthropic(model_id: &str) -> bool {
    model_id.starts_with("claude")
}

/// The request path (and query) for `model_id`.
pub fn path(base_path: &str, project: &str, region: &str, model_id: &str, stream: bool) -> String {
    let (publisher, method) = match (is_anthropic(model_id), stream) {
        (true, false) => ("anthropic", "rawPredict"),
        (true, true) => ("anthropic", "streamRawPredict"),
        (false, false) => ("google", "generateContent"),
        (false, true) => ("google", "streamGenerateContent?alt=sse"),
    };
    let seg = crate::text::path_segment;
    format!(
        "{base_path}/v1/projects/{}/locations/{}/publishers/{publisher}/models/{}:{method}",
        seg(project),
        seg(region),
        seg(model_id)
    )
}

/// Claude's token count on Vertex (Anthropic's `count_tokens`, the model named in the body).
pub fn count_path(base_path: &str, project: &str, region: &str) -> String {
    let seg = crate::text::path_segment;
    format!(
        "{base_path}/v1/projects/{}/locations/{}/publishers/anthropic/models/count-tokens:rawPredict",
        seg(project),
        seg(region)
    )
}

/// The default base URL for a region (`global` has no regional host).
pub fn base_url(region: &str) -> String {
    if region == "global" {
        "https://aiplatform.googleapis.com".into()
    } else {
        format!("https://{region}-aiplatform.googleapis.com")
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

/// A service account's signing key, from its JSON key file.
pub struct ServiceAccount {
    pub client_email: String,
    pub project_id: Option<String>,
    pub token_uri: String,
    key_id: Option<String>,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccount({}, key ***)", self.client_email)
    }
}

impl ServiceAccount {
    /// Parse a service-account JSON key. Errors never quote the key.
    pub fn from_json(text: &str) -> Result<ServiceAccount, String> {
        // serde's messages can quote values; only a missing field is named.
        let k: KeyFile = serde_json::from_str(text).map_err(|e| {
            let m = e.to_string();
            match m.strip_prefix("missing field ") {
                Some(rest) => format!(
                    "not a service-account JSON key: missing field {}",
                    rest.split(' ').next().unwrap_or("")
                ),
                None => format!(
                    "not a service-account JSON key (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            }
        })?;
        if k.kind.as_deref().is_some_and(|t| t != "service_account") {
            return Err("the key file is not of type service_account".into());
        }
        let der = pem_pkcs8(&k.private_key).ok_or("private_key is not a PEM PKCS#8 key")?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| "private_key is not an RSA key")?;
        Ok(ServiceAccount {
            client_email: k.client_email,
            project_id: k.project_id,
            token_uri: k
                .token_uri
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
            key_id: k.private_key_id,
            key,
        })
    }

    /// The signed JWT assertion for a token request at `now` (Unix seconds).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "signing the token request failed")?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

/// The form body of the token request (a JWT is URL-safe as it is).
pub fn token_request_body(assertion: &str) -> String {
    format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    )
}

/// The token endpoint's answer → (access token, lifetime in seconds).
pub fn parse_token(body: &[u8]) -> Result<(String, u64), String> {
    #[derive(Deserialize)]
    struct Token {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let t: Token = serde_json::from_slice(body)
        .map_err(|_| "the token endpoint's answer has no access_token")?;
    if t.access_token.is_empty() {
        return Err("the token endpoint returned an empty access_token".into());
    }
    Ok((t.access_token, t.expires_in.unwrap_or(3600)))
}

/// The reason in a token endpoint's error (`{"error": …, "error_description": …}`).
pub fn token_error(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_description: Option<String>,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(E {
            error: Some(e),
            error_description: Some(d),
        }) => format!("{e}: {}", crate::api::truncate(&d, 200)),
        Ok(E { error: Some(e), .. }) => e,
        _ => "no reason given".into(),
    }
}

fn pem_pkcs8(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")? + "-----BEGIN PRIVATE KEY-----".len();
    let end = pem[start..].find("-----END PRIVATE KEY-----")? + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    const KEY_FILE: &str = include_str!("../../tests/fixtures/vertex-test-service-account.json");

    #[test]
    fn paths_pick_the_publisher_from_the_model() {
        assert_eq!(
            path("", "p1", "us-east5", "claude-3-7-sonnet@20250219", true),
            "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-3-7-sonnet@20250219:streamRawPredict"
        );
        assert_eq!(
            path("", "p1", "us-central1", "gemini-2.0-flash-001", false),
            "/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:generateContent"
        );
        assert_eq!(
            base_url("us-east5"),
            "https://us-east5-aiplatform.googleapis.com"
        );
        assert_eq!(base_url("global"), "https://aiplatform.googleapis.com");
    }

    #[test]
    fn assertion_is_an_rs256_jwt_the_public_key_verifies() {
        let sa = ServiceAccount::from_json(KEY_FILE).expect("key file");
        let jwt = sa.assertion(1_763_700_000).expect("signs");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let json = |s: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).expect("b64")).expect("json")
        };
        let h = json(parts[0]);
        assert_eq!(h["alg"], "RS256");
        assert_eq!(h["kid"], "0123456789abcdef0123456789abcdef01234567");
        let c = json(parts[1]);
        assert_eq!(c["iss"], "detour-test@detour-test.iam.gserviceaccount.com");
        assert_eq!(c["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(c["scope"], SCOPE);
        assert_eq!(c["exp"].as_u64(), Some(1_763_703_600));
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, sa.key.public().as_ref());
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("the signature verifies");
        assert!(!format!("{sa:?}").contains("PRIVATE"));
    }

    #[test]
    fn key_file_and_token_errors() {
        for (text, needle) in [
            ("{}", "service-account"),
            (
                r#"{"type":"authorized_user","client_email":"a","private_key":"x"}"#,
                "service_account",
            ),
            (
                r#"{"client_email":"a","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
                "RSA",
            ),
        ] {
            let e = ServiceAccount::from_json(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert_eq!(
            parse_token(br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#),
            Ok(("ya29.x".to_string(), 3599))
        );
        assert!(parse_token(b"{}").is_err());
        assert_eq!(
            token_error(
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            "invalid_grant: Invalid JWT Signature."
        );
    }
}
