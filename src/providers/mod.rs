//! Provider adapters: everything that differs between provider kinds lives here, one file (or
//! folder) per kind, behind one trait ([`Adapter`]).
//!
//! An adapter is built once per configured provider (its kind's `build`, listed in [`KINDS`]): it
//! reads its kind's fields of the config, derives the endpoint, and loads the operator's
//! credentials. Per attempt it builds the upstream request — path, body (passed through or
//! translated) and the response [`Wire`] format — and puts the attempt's credentials on it
//! ([`Adapter::authorize`], [`Adapter::sign`]). Credentials are an input of each attempt
//! ([`Auth`]), so the same adapter serves the operator's keys and, later, a caller's own.
//! The response side (JSON answers, error bodies, streams, in-band errors) is per wire format,
//! in `wire.rs`. The engine never matches on a provider kind.
//!
//! Adding a kind: a new file with an `Adapter` and a `build` function, and one line in
//! [`KINDS`].

pub mod anthropic;
mod azure;
pub mod bedrock;
pub(crate) mod common;
pub mod gemini;
mod openai;
pub mod vertex;
pub mod wire;

pub use common::{InBandError, StreamOpts};
pub use wire::{Relay, Wire};

use crate::api::ChatRequest;
use crate::config::{ConfigError, Endpoint, ProviderConfig, Secret, Timeouts};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::sync::Arc;

/// The environment credentials are read from (the process's, or a test's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What a kind's `build` makes of a configured provider.
pub struct Built {
    pub adapter: Box<dyn Adapter>,
    pub endpoint: Endpoint,
    pub credentials: Credentials,
    /// Where service accounts get access tokens for this provider (Vertex), if anywhere.
    pub token_endpoint: Option<TokenEndpoint>,
}

/// A token endpoint (OAuth2, the JWT bearer grant): its URL, which a service account's JWT
/// names as its audience, and where it is.
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    pub url: String,
    pub endpoint: Endpoint,
}

type Build = fn(&ProviderConfig, Env<'_>) -> Result<Built, ConfigError>;

/// Every provider kind: its name in the config, and how to build its adapter.
pub const KINDS: &[(&str, Build)] = &[
    ("openai", openai::build),
    ("azure", azure::build),
    ("anthropic", anthropic::build),
    ("google-ai-studio", gemini::build),
    ("bedrock", bedrock::build),
    ("vertex", vertex::build),
];

/// Which fields of a catalog route, beyond its id, a kind reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFields {
    IdOnly,
    /// `deployment` and `api-version` (Azure).
    Deployment,
}

/// One kind's requests and credentials. Pure: no I/O.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// Which catalog route fields this kind reads.
    fn route_fields(&self) -> RouteFields {
        RouteFields::IdOnly
    }

    /// The upstream request of one attempt: path (and query), body and response format.
    /// `Err` is a refusal: this target cannot honour the request (e.g. `n` > 1); not sent.
    fn prepare(&self, call: &Call<'_>) -> Result<Prepared, String>;

    /// This kind's headers and credentials, before the provider's configured headers.
    fn authorize(&self, h: &mut RequestHeader, auth: &Auth<'_>) -> pingora_core::Result<()>;

    /// Runs last, after the configured headers: a signature over the whole request (SigV4).
    fn sign(&self, _h: &mut RequestHeader, _s: &Signing<'_>) -> Result<(), String> {
        Ok(())
    }
}

/// The catalog route an attempt targets, as an adapter sees it.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The provider-side model id.
    pub id: &'a str,
    pub deployment: Option<&'a str>,
    pub api_version: Option<&'a str>,
    /// Sent as `max_tokens` where the provider requires one and the client gave none.
    pub max_output_tokens: Option<u32>,
}

/// One attempt, as its adapter needs it.
pub struct Call<'a> {
    pub route: Route<'a>,
    pub req: &'a ChatRequest,
    pub stream: bool,
    /// The provider's base path (`/v1`).
    pub base_path: &'a str,
    /// The caller's own cloud project (a BYOK service account's), for a URL that names one.
    pub project: Option<&'a str>,
}

/// The upstream request an adapter prepared.
#[derive(Debug)]
pub struct Prepared {
    /// Path and query, below the host.
    pub path: String,
    pub body: Bytes,
    pub wire: Wire,
}

/// What a signature covers.
pub struct Signing<'a> {
    pub endpoint: &'a Endpoint,
    pub path: &'a str,
    pub body: &'a [u8],
    pub auth: &'a Auth<'a>,
}

/// A provider's credentials as loaded at start-up (the operator's).
#[derive(Debug)]
pub enum Credentials {
    /// The provider takes none (a local server, the mock).
    None,
    Key(Secret),
    /// AWS keys, for SigV4.
    Aws(bedrock::AwsCredentials),
    /// A Google service account: access tokens are minted from it per provider and cached.
    ServiceAccount(Arc<vertex::TokenSource>),
    /// The config names a variable that is unset or empty: the provider is skipped.
    Missing {
        env: String,
    },
    /// Credentials were found but cannot be used: the provider is skipped, with the reason.
    Unusable {
        reason: String,
    },
}

impl Credentials {
    /// Why a provider with these credentials is not tried, if it is not.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Credentials::Missing { env } => {
                Some(format!("skipped: the key variable {env} is not set"))
            }
            Credentials::Unusable { reason } => Some(format!("skipped: {reason}")),
            Credentials::None
            | Credentials::Key(_)
            | Credentials::Aws(_)
            | Credentials::ServiceAccount(_) => None,
        }
    }

    /// Every secret in here, for the masker.
    pub fn to_mask(&self) -> Vec<&str> {
        match self {
            Credentials::Key(k) => vec![k.expose()],
            Credentials::Aws(a) => a.to_mask().collect(),
            Credentials::ServiceAccount(_)
            | Credentials::None
            | Credentials::Missing { .. }
            | Credentials::Unusable { .. } => Vec::new(),
        }
    }

    /// The key from the variable `api-key-env` names; no variable: no key.
    pub fn from_env(p: &ProviderConfig, env: Env<'_>) -> Credentials {
        match &p.api_key_env {
            None => Credentials::None,
            Some(name) => match env(name) {
                Some(v) if !v.trim().is_empty() => Credentials::Key(Secret::new(v.trim().into())),
                _ => Credentials::Missing { env: name.clone() },
            },
        }
    }
}

/// The credentials of one attempt, resolved (a minted token, the key to send).
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    None,
    Key(&'a str),
    Aws(&'a bedrock::AwsCredentials),
    /// An OAuth2 access token, sent as a bearer token.
    Token(&'a str),
}

/// A configured provider, ready for attempts.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Its kind's name in the config.
    pub kind: &'static str,
    pub endpoint: Endpoint,
    pub timeouts: Timeouts,
    pub http2: bool,
    /// The provider's configured extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The operator's credentials.
    pub credentials: Credentials,
    /// Where service accounts (the operator's, a caller's own) get access tokens, if anywhere.
    pub token_endpoint: Option<TokenEndpoint>,
    pub adapter: Box<dyn Adapter>,
}

impl Provider {
    /// Every credential this provider holds: its credentials, and the values of its configured
    /// headers whose names say they carry one (`…key…`, `…token…`, `…auth…`, `…secret…`).
    pub fn credentials_to_mask(&self) -> Vec<&str> {
        let mut v = self.credentials.to_mask();
        for (name, value) in &self.headers {
            let n = name.as_str();
            if ["key", "token", "auth", "secret"]
                .iter()
                .any(|w| n.contains(w))
            {
                v.extend(value.to_str().ok());
            }
        }
        v
    }
}

/// The configured providers, by index (the index is how routes and metrics name them).
#[derive(Debug, Default)]
pub struct Providers {
    list: Vec<Provider>,
    index: HashMap<String, usize>,
}

impl std::ops::Deref for Providers {
    type Target = [Provider];
    fn deref(&self) -> &[Provider] {
        &self.list
    }
}

impl Providers {
    /// Build every configured provider with its kind's adapter.
    pub fn build(configs: &[ProviderConfig], env: Env<'_>) -> Result<Providers, ConfigError> {
        let mut out = Providers::default();
        for p in configs {
            let (kind, build) = KINDS
                .iter()
                .find(|(k, _)| *k == p.kind)
                .ok_or_else(|| p.error("kind", unknown_kind(&p.kind)))?;
            let b = build(p, env)?;
            out.index.insert(p.name.clone(), out.list.len());
            out.list.push(Provider {
                name: p.name.clone(),
                kind,
                endpoint: b.endpoint,
                timeouts: p.timeouts,
                http2: p.http2,
                headers: p.headers.clone(),
                credentials: b.credentials,
                token_endpoint: b.token_endpoint,
                adapter: b.adapter,
            });
        }
        Ok(out)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

fn unknown_kind(kind: &str) -> String {
    let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    format!(
        "unknown provider kind `{kind}` (expected {})",
        known.join(", ")
    )
}

/// The provider's base URL as an endpoint: the configured one, else `default` (a kind that
/// derives one), else an error naming `base-url`.
pub(crate) fn endpoint(
    p: &ProviderConfig,
    default: Option<String>,
) -> Result<Endpoint, ConfigError> {
    let url = p
        .base_url
        .clone()
        .or(default)
        .ok_or_else(|| p.error("base-url", "a base-url is needed for this kind"))?;
    Endpoint::parse(&url, &format!("{}.base-url", p.path))
}

/// Bearer authorization.
pub(crate) fn bearer(h: &mut RequestHeader, token: &str) -> pingora_core::Result<()> {
    h.insert_header(http::header::AUTHORIZATION, format!("Bearer {token}"))
}
