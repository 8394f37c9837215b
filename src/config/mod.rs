//! Configuration: one YAML file holds Pingora's server settings (`server:`) and detour's own.
//!
//! Runs once at start-up (and for `detour -t`). Loading never panics: every fault is a
//! [`ConfigError`] that names the YAML path, e.g. `models.gpt-4o[1].provider: unknown provider
//! `opnai``. Provider keys are read from the environment here, once, into [`Secret`]s.

pub mod failover;
pub(crate) mod raw;

pub use crate::catalog::{Capabilities, Model, ModelRoute, Price};
pub use crate::durations::parse as parse_duration;
pub use crate::secrets::Secret;
pub use failover::{Failover, HedgeAfter, Order};
use http::header::{HeaderName, HeaderValue};
use pingora_core::server::configuration::ServerConf;
use raw::{RawConfig, RawProvider, RawTimeouts};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The annotated reference config, compiled in and used when no `-c` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../conf/detour.yaml");
/// The demo config `detour demo` runs: two mock providers on loopback, one of them failing.
pub const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

/// A config fault, with the YAML path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a provider's key stands after reading the environment at start-up.
#[derive(Debug, Clone)]
pub enum ApiKey {
    /// The provider takes no key (a local server, the mock).
    None,
    Present(Secret),
    /// The config names an env var that is unset or empty: the provider is skipped.
    Missing {
        env: String,
    },
    /// Credentials found in the environment but unusable (e.g. GOOGLE_APPLICATION_CREDENTIALS
    /// naming a file that is not a service-account key): the provider is skipped.
    Unusable {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible API: `{base}/chat/completions`, bearer auth.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{deployment}/chat/completions?api-version=`.
    Azure,
    /// Anthropic Messages API: `{base}/v1/messages`, `x-api-key`, translated both ways.
    Anthropic,
    /// Gemini on Google AI Studio: `{base}/v1beta/models/{id}:generateContent` (or
    /// `:streamGenerateContent?alt=sse`), `x-goog-api-key`, translated both ways.
    GoogleAiStudio,
    /// AWS Bedrock Converse: `{base}/model/{id}/converse` (or `/converse-stream`), SigV4 with
    /// the standard AWS env credentials (or a Bedrock API key as bearer), translated both ways.
    Bedrock,
    /// Google Vertex AI: Gemini (`…/publishers/google/models/{id}:generateContent`) and Claude
    /// (`…/publishers/anthropic/models/{id}:rawPredict`), OAuth2 tokens from a service account.
    Vertex,
}

/// A Vertex provider's credentials: the service account and its token endpoint.
#[derive(Debug)]
pub struct VertexAuth {
    pub account: crate::providers::vertex::ServiceAccount,
    /// `token_uri` as a provider (host, port, TLS; `base_path` is the token path).
    pub endpoint: Provider,
}

impl ProviderKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(ProviderKind::OpenAi),
            "azure" => Some(ProviderKind::Azure),
            "anthropic" => Some(ProviderKind::Anthropic),
            "google-ai-studio" => Some(ProviderKind::GoogleAiStudio),
            "bedrock" => Some(ProviderKind::Bedrock),
            "vertex" => Some(ProviderKind::Vertex),
            _ => None,
        }
    }
}

/// Per-attempt deadlines. Every attempt also stops at the request's overall deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From the request sent to the response header (and, for JSON, the whole answer).
    pub first_byte: Duration,
    /// Streams: from the attempt's start to the first event with content (the commit point).
    pub first_token: Duration,
    /// Longest gap between two body chunks.
    pub idle: Duration,
    /// The whole attempt, body included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            first_token: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub tls: bool,
    /// Host name or IP literal, for DNS, SNI and the `Host` header.
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` when the port is not the scheme's default.
    pub authority: String,
    /// Path prefix of the base URL without a trailing slash, e.g. `/v1`.
    pub base_path: String,
    pub key: ApiKey,
    pub api_version: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeouts: Timeouts,
    pub http2: bool,
    /// bedrock, vertex: the region.
    pub region: Option<String>,
    /// bedrock with SigV4: credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN.
    pub aws: Option<crate::providers::bedrock::AwsCredentials>,
    /// vertex: the project, and the credentials (absent when skipped for want of a key).
    pub project: String,
    pub vertex: Option<std::sync::Arc<VertexAuth>>,
}

impl Provider {
    /// Every credential this provider holds: its key, its AWS keys, and the values of its
    /// configured headers whose names say they carry one (`…key…`, `…token…`, `…auth…`,
    /// `…secret…`). The [`crate::secrets::Masker`] masks all of them.
    pub fn credentials(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        if let ApiKey::Present(k) = &self.key {
            v.push(k.expose());
        }
        if let Some(aws) = &self.aws {
            v.extend(aws.to_mask());
        }
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

    /// The request path (and query) for a chat completion with this provider-side model.
    pub fn chat_path(&self, route: &ModelRoute, stream: bool) -> String {
        match self.kind {
            ProviderKind::OpenAi => format!("{}/chat/completions", self.base_path),
            ProviderKind::Azure => {
                let version = route
                    .api_version
                    .as_deref()
                    .or(self.api_version.as_deref())
                    .unwrap_or("2024-10-21");
                format!(
                    "{}/openai/deployments/{}/chat/completions?api-version={}",
                    self.base_path,
                    crate::text::path_segment(route.deployment.as_deref().unwrap_or(&route.id)),
                    crate::text::query_value(version)
                )
            }
            ProviderKind::Anthropic => format!("{}/v1/messages", self.base_path),
            ProviderKind::GoogleAiStudio => {
                crate::providers::gemini::path(&self.base_path, &route.id, stream)
            }
            ProviderKind::Bedrock => {
                crate::providers::bedrock::path(&self.base_path, &route.id, stream)
            }
            ProviderKind::Vertex => crate::providers::vertex::path(
                &self.base_path,
                &self.project,
                self.region.as_deref().unwrap_or("global"),
                &route.id,
                stream,
            ),
        }
    }
}

/// Which failures move on to the next target. Everything else goes back to the client.
#[derive(Debug, Clone)]
pub struct FallbackTriggers {
    status: Vec<bool>,
    pub on_connect_error: bool,
    pub on_timeout: bool,
}

impl FallbackTriggers {
    pub fn on_status(&self, status: u16) -> bool {
        self.status.get(status as usize).copied().unwrap_or(false)
    }
}

impl Default for FallbackTriggers {
    fn default() -> Self {
        let mut status = vec![false; 600];
        for s in [401usize, 403, 404, 408, 429] {
            status[s] = true;
        }
        for s in status.iter_mut().skip(500) {
            *s = true;
        }
        FallbackTriggers {
            status,
            on_connect_error: true,
            on_timeout: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_chain_length: usize,
    pub max_buffered_response_bytes: usize,
    /// The largest single stream event an upstream may send.
    pub max_event_bytes: usize,
    /// Request bodies held at once, all requests together.
    pub max_total_body_bytes: usize,
}

/// The validated configuration. Built once; shared read-only by every request.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConf,
    pub listen: Vec<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub fallback: FallbackTriggers,
    pub failover: Failover,
    pub access_log: bool,
    pub providers: Vec<Provider>,
    provider_index: HashMap<String, usize>,
    /// Catalog: model name → the providers that serve it, in preference order, with facts.
    pub models: HashMap<String, Model>,
    /// Model names sorted, for `GET /v1/models`.
    pub model_names: Vec<String>,
}

impl Config {
    /// Parse and validate YAML text, reading provider keys from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Same as [`Config::from_yaml`] with an injectable environment (for tests).
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        validate(raw, env)
    }

    /// Read and validate a config file.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read config file {path}: {e}")))?;
        Self::from_yaml(&text)
    }

    /// A masker for every credential of every provider.
    pub fn masker(&self) -> crate::secrets::Masker {
        crate::secrets::Masker::new(self.providers.iter().flat_map(Provider::credentials))
    }

    /// The provider-side model ids the catalog lists for provider `i`.
    pub fn catalog_ids(&self, i: usize) -> Vec<String> {
        self.models
            .values()
            .flat_map(|m| &m.routes)
            .filter(|r| r.provider == i)
            .map(|r| r.id.clone())
            .collect()
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.provider_index.get(name).copied()
    }
}

fn timeouts(raw: &RawTimeouts, base: Timeouts, path: &str) -> Result<Timeouts, ConfigError> {
    let one = |v: &Option<String>, name: &str, dflt: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(dflt),
            Some(s) => match parse_duration(s) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(ConfigError::new(
                    format!("{path}.{name}"),
                    format!("invalid duration `{s}` (use e.g. 500ms, 5s, 2m; at most 8784h)"),
                )),
            },
        }
    };
    Ok(Timeouts {
        connect: one(&raw.connect, "connect", base.connect)?,
        first_byte: one(&raw.first_byte, "first-byte", base.first_byte)?,
        first_token: one(&raw.first_token, "first-token", base.first_token)?,
        idle: one(&raw.idle, "idle", base.idle)?,
        total: one(&raw.total, "total", base.total)?,
    })
}

fn parse_addr(s: &str, path: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::new(
            path,
            format!("`{s}` is not an ip:port address (e.g. 127.0.0.1:8080)"),
        )
    })
}

fn fallback_triggers(raw: &raw::RawFallback) -> Result<FallbackTriggers, ConfigError> {
    let mut t = FallbackTriggers::default();
    if let Some(list) = &raw.on_status {
        t.status = vec![false; 600];
        for (i, v) in list.iter().enumerate() {
            let path = format!("fallback.on-status[{i}]");
            let range = match v {
                serde_yaml::Value::Number(n) => match n.as_u64() {
                    Some(c @ 100..=599) => c..=c,
                    _ => return Err(ConfigError::new(path, "status must be 100..=599")),
                },
                serde_yaml::Value::String(s) if s.len() == 3 && s.ends_with("xx") => {
                    match s.as_bytes()[0] {
                        d @ b'1'..=b'5' => {
                            let base = u64::from(d - b'0') * 100;
                            base..=base + 99
                        }
                        _ => return Err(ConfigError::new(path, format!("unknown class `{s}`"))),
                    }
                }
                _ => {
                    return Err(ConfigError::new(
                        path,
                        "expected a status code (429) or a class (\"5xx\")",
                    ))
                }
            };
            for c in range {
                t.status[c as usize] = true;
            }
        }
    }
    if let Some(b) = raw.on_connect_error {
        t.on_connect_error = b;
    }
    if let Some(b) = raw.on_timeout {
        t.on_timeout = b;
    }
    Ok(t)
}

fn provider(
    i: usize,
    p: &RawProvider,
    base: Timeouts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Provider, ConfigError> {
    let path = format!("providers[{i}]");
    if p.name.is_empty()
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::new(
            format!("{path}.name"),
            format!(
                "`{}` is not a valid provider name (letters, digits, - _ . only)",
                p.name
            ),
        ));
    }
    let kind = ProviderKind::parse(&p.kind).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.kind"),
            format!(
                "unknown provider kind `{}` (expected openai, azure, anthropic, google-ai-studio, bedrock or vertex)",
                p.kind
            ),
        )
    })?;
    let region = match kind {
        ProviderKind::Bedrock => Some(
            p.region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.region"),
                        "a bedrock provider needs a region (or AWS_REGION in the environment)",
                    )
                })?,
        ),
        ProviderKind::Vertex => Some(p.region.clone().ok_or_else(|| {
            ConfigError::new(
                format!("{path}.region"),
                "a vertex provider needs a region (a location such as us-east5, or global)",
            )
        })?),
        _ => p.region.clone(),
    };
    if let Some(r) = &region {
        if !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::new(
                format!("{path}.region"),
                format!("`{r}` is not a region name"),
            ));
        }
    }
    let base_url = match (&p.base_url, kind, &region) {
        (Some(u), _, _) => u.clone(),
        (None, ProviderKind::Bedrock, Some(r)) => {
            format!("https://bedrock-runtime.{r}.amazonaws.com")
        }
        (None, ProviderKind::Vertex, Some(r)) => crate::providers::vertex::base_url(r),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.base-url"),
                "a base-url is needed for this kind",
            ))
        }
    };
    let uri: http::Uri = base_url.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.base-url"),
            format!("`{base_url}` is not a URL"),
        )
    })?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.base-url"),
                "the URL must start with http:// or https://",
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| ConfigError::new(format!("{path}.base-url"), "the URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let default_port = if tls { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = match uri.port_u16() {
        Some(p) if p != default_port => format!("{}:{p}", uri.host().unwrap_or_default()),
        _ => uri.host().unwrap_or_default().to_string(),
    };
    if uri.query().is_some() {
        return Err(ConfigError::new(
            format!("{path}.base-url"),
            "the base URL must not have a query",
        ));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    let mut aws = None;
    let mut vertex: Option<crate::providers::vertex::ServiceAccount> = None;
    if kind == ProviderKind::Vertex && p.api_key_env.is_some() {
        return Err(ConfigError::new(
            format!("{path}.api-key-env"),
            "vertex authenticates with a service-account key (credentials-file), not an API key",
        ));
    }
    let key = match &p.api_key_env {
        // Bedrock without an API key signs with the standard AWS credentials.
        None if kind == ProviderKind::Bedrock => {
            let var = |n: &str| env(n).filter(|v| !v.trim().is_empty());
            match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => {
                    aws = Some(crate::providers::bedrock::AwsCredentials::new(
                        id.trim().to_string(),
                        Secret::new(secret.trim().to_string()),
                        var("AWS_SESSION_TOKEN").map(|t| Secret::new(t.trim().to_string())),
                    ));
                    ApiKey::None
                }
                (None, _) => ApiKey::Missing {
                    env: "AWS_ACCESS_KEY_ID".into(),
                },
                (_, None) => ApiKey::Missing {
                    env: "AWS_SECRET_ACCESS_KEY".into(),
                },
            }
        }
        // Vertex signs token requests with a service-account key.
        None if kind == ProviderKind::Vertex => {
            let load = |f: &str| -> Result<crate::providers::vertex::ServiceAccount, String> {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read the key file {f}: {e}"))?;
                crate::providers::vertex::ServiceAccount::from_json(&text)
                    .map_err(|e| format!("{f}: {e}"))
            };
            match (&p.credentials_file, env("GOOGLE_APPLICATION_CREDENTIALS")) {
                // A file the config names must be usable.
                (Some(f), _) => {
                    vertex =
                        Some(load(f).map_err(|e| {
                            ConfigError::new(format!("{path}.credentials-file"), e)
                        })?);
                    ApiKey::None
                }
                // The environment's may be meant for something else (e.g. gcloud user
                // credentials): the provider is skipped, with the reason.
                (None, Some(f)) => match load(&f) {
                    Ok(a) => {
                        vertex = Some(a);
                        ApiKey::None
                    }
                    Err(e) => ApiKey::Unusable {
                        reason: format!("GOOGLE_APPLICATION_CREDENTIALS: {e}"),
                    },
                },
                (None, None) => ApiKey::Missing {
                    env: "GOOGLE_APPLICATION_CREDENTIALS".into(),
                },
            }
        }
        None => ApiKey::None,
        Some(name) => match env(name) {
            Some(v) if !v.trim().is_empty() => ApiKey::Present(Secret::new(v.trim().to_string())),
            _ => ApiKey::Missing { env: name.clone() },
        },
    };
    if kind == ProviderKind::Azure && p.api_version.is_none() {
        return Err(ConfigError::new(
            format!("{path}.api-version"),
            "an azure provider needs an api-version (e.g. 2024-10-21)",
        ));
    }
    let project = match (&p.project, &vertex) {
        (Some(pr), _) => pr.clone(),
        (None, Some(a)) => a.project_id.clone().unwrap_or_default(),
        (None, None) => String::new(),
    };
    if vertex.is_some() && project.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.project"),
            "a vertex provider needs a project (or a key file with project_id)",
        ));
    }
    if !project
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
    {
        return Err(ConfigError::new(
            format!("{path}.project"),
            format!("`{project}` is not a project id"),
        ));
    }
    let mut headers = Vec::new();
    for (k, v) in &p.headers {
        let hp = format!("{path}.headers.{k}");
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ConfigError::new(&hp, "invalid header name"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| ConfigError::new(&hp, "invalid header value"))?;
        headers.push((name, value));
    }
    Ok(Provider {
        name: p.name.clone(),
        kind,
        tls,
        host,
        port,
        authority,
        base_path,
        key,
        api_version: p.api_version.clone(),
        headers,
        timeouts: timeouts(&p.timeouts, base, &format!("{path}.timeouts"))?,
        http2: p.http2.unwrap_or(true),
        project,
        vertex: match vertex {
            None => None,
            Some(account) => {
                let endpoint = provider(
                    i,
                    &RawProvider {
                        name: format!("{}.token", p.name),
                        kind: "openai".into(),
                        base_url: Some(account.token_uri.clone()),
                        region: None,
                        project: None,
                        credentials_file: None,
                        api_key_env: None,
                        api_version: None,
                        headers: Default::default(),
                        timeouts: p.timeouts.clone(),
                        http2: Some(false),
                    },
                    base,
                    env,
                )
                .map_err(|e| {
                    ConfigError::new(
                        format!("{path}.credentials-file"),
                        format!("token_uri: {}", e.message),
                    )
                })?;
                Some(std::sync::Arc::new(VertexAuth { account, endpoint }))
            }
        },
        region,
        aws,
    })
}

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let server: ServerConf = match raw.server {
        None => ServerConf::default(),
        Some(v) => {
            serde_yaml::from_value(v).map_err(|e| ConfigError::new("server", e.to_string()))?
        }
    };
    if server.threads == 0 {
        return Err(ConfigError::new("server.threads", "must be at least 1"));
    }
    if raw.listen.is_empty() {
        return Err(ConfigError::new("listen", "at least one address is needed"));
    }
    let listen = raw
        .listen
        .iter()
        .enumerate()
        .map(|(i, s)| parse_addr(s, &format!("listen[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let admin_listen = raw
        .admin
        .as_ref()
        .map(|a| parse_addr(&a.listen, "admin.listen"))
        .transpose()?;
    let base_timeouts = timeouts(&raw.timeouts, Timeouts::default(), "timeouts")?;
    let max_body_bytes = raw.limits.max_body_bytes.unwrap_or(32 * 1024 * 1024);
    let limits = Limits {
        max_body_bytes,
        max_chain_length: raw.limits.max_chain_length.unwrap_or(10),
        max_buffered_response_bytes: raw
            .limits
            .max_buffered_response_bytes
            .unwrap_or(4 * 1024 * 1024),
        max_event_bytes: raw.limits.max_event_bytes.unwrap_or(4 * 1024 * 1024),
        max_total_body_bytes: raw
            .limits
            .max_total_body_bytes
            .unwrap_or((512 * 1024 * 1024).max(max_body_bytes)),
    };
    for (v, name) in [
        (limits.max_event_bytes, "max-event-bytes"),
        (limits.max_total_body_bytes, "max-total-body-bytes"),
    ] {
        if v == 0 {
            return Err(ConfigError::new(
                format!("limits.{name}"),
                "must be at least 1",
            ));
        }
    }
    if limits.max_total_body_bytes < limits.max_body_bytes {
        return Err(ConfigError::new(
            "limits.max-total-body-bytes",
            "must be at least limits.max-body-bytes",
        ));
    }
    if limits.max_chain_length == 0 {
        return Err(ConfigError::new(
            "limits.max-chain-length",
            "must be at least 1",
        ));
    }
    if limits.max_body_bytes == 0 {
        return Err(ConfigError::new(
            "limits.max-body-bytes",
            "must be at least 1",
        ));
    }
    let fallback = fallback_triggers(&raw.fallback)?;
    let failover = failover::validate(
        raw.failover
            .as_ref()
            .unwrap_or(&failover::RawFailover::default()),
    )?;
    if raw.providers.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "at least one provider is needed",
        ));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut provider_index = HashMap::new();
    for (i, p) in raw.providers.iter().enumerate() {
        let prov = provider(i, p, base_timeouts, env)?;
        if provider_index.insert(prov.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                format!("duplicate provider name `{}`", prov.name),
            ));
        }
        providers.push(prov);
    }
    let models = crate::catalog::build(
        raw.builtin_catalog.unwrap_or(true),
        &raw.models,
        &providers,
        &provider_index,
    )?;
    let mut model_names: Vec<String> = models.keys().cloned().collect();
    model_names.sort();
    Ok(Config {
        server,
        listen,
        admin_listen,
        limits,
        fallback,
        failover,
        access_log: raw.access_log.unwrap_or(true),
        providers,
        provider_index,
        models,
        model_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MIN: &str = r#"
listen: ["127.0.0.1:8080"]
providers:
  - name: openai
    kind: openai
    base-url: https://api.openai.com/v1
    api-key-env: OPENAI_API_KEY
  - name: azure
    kind: azure
    base-url: https://res.openai.azure.com
    api-key-env: AZURE_KEY
    api-version: "2024-10-21"
models:
  gpt-4o:
    - provider: openai
    - provider: azure
      deployment: my-4o
"#;

    #[test]
    fn minimal_config_loads() {
        let env = |n: &str| (n == "OPENAI_API_KEY").then(|| "sk-test".to_string());
        let c = Config::from_yaml_with_env(MIN, &env).expect("valid");
        assert_eq!(c.providers.len(), 2);
        assert!(matches!(c.providers[0].key, ApiKey::Present(_)));
        assert!(matches!(&c.providers[1].key, ApiKey::Missing { env } if env == "AZURE_KEY"));
        assert_eq!(c.providers[0].base_path, "/v1");
        assert_eq!(c.providers[0].authority, "api.openai.com");
        assert_eq!(c.providers[0].port, 443);
        let routes = &c.models["gpt-4o"].routes;
        assert_eq!(
            c.providers[1].chat_path(&routes[1], false),
            "/openai/deployments/my-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            c.providers[0].chat_path(&routes[0], true),
            "/v1/chat/completions"
        );
    }

    #[test]
    fn every_shipped_config_loads() {
        Config::from_yaml_with_env(DEFAULT_CONFIG, &no_env).expect("default config");
        Config::from_yaml_with_env(DEMO_CONFIG, &no_env).expect("demo config");
    }

    #[test]
    fn unknown_provider_is_named_with_its_path() {
        let bad = MIN.replace("- provider: azure", "- provider: opnai");
        let e = Config::from_yaml_with_env(&bad, &no_env).expect_err("must fail");
        assert_eq!(e.path, "models.gpt-4o[1].provider");
        assert_eq!(
            e.to_string(),
            "models.gpt-4o[1].provider: unknown provider `opnai`"
        );
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let bad = MIN.replace("    kind: azure", "    kind: azure\n    colour: blue");
        let e = Config::from_yaml_with_env(&bad, &no_env).expect_err("must fail");
        assert_eq!(e.path, "providers[1].colour");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn bad_kind_and_duration_and_status() {
        let bad = MIN.replace("kind: azure", "kind: azur");
        let e = Config::from_yaml_with_env(&bad, &no_env).expect_err("kind");
        assert_eq!(e.path, "providers[1].kind");
        let bad = format!("{MIN}timeouts:\n  connect: 5 parsecs\n");
        let e = Config::from_yaml_with_env(&bad, &no_env).expect_err("duration");
        assert_eq!(e.path, "timeouts.connect");
        let bad = format!("{MIN}fallback:\n  on-status: [429, \"7xx\"]\n");
        let e = Config::from_yaml_with_env(&bad, &no_env).expect_err("status");
        assert_eq!(e.path, "fallback.on-status[1]");
    }

    #[test]
    fn status_triggers_from_config() {
        let c = format!("{MIN}fallback:\n  on-status: [429, \"5xx\"]\n");
        let c = Config::from_yaml_with_env(&c, &no_env).expect("valid");
        assert!(c.fallback.on_status(429));
        assert!(c.fallback.on_status(503));
        assert!(!c.fallback.on_status(401));
        assert!(!c.fallback.on_status(400));
        let d = FallbackTriggers::default();
        for s in [401, 403, 404, 408, 429, 500, 502, 503, 504, 529] {
            assert!(d.on_status(s), "{s}");
        }
        for s in [200, 400, 409, 413, 422] {
            assert!(!d.on_status(s), "{s}");
        }
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let env = |_: &str| Some("sk-very-secret".to_string());
        let c = Config::from_yaml_with_env(MIN, &env).expect("valid");
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    #[test]
    fn bedrock_region_url_and_credentials() {
        let yaml = "listen: [\"127.0.0.1:8080\"]\nproviders:\n  - {name: bedrock, kind: bedrock}\n";
        // No region anywhere: an error that says where to put one.
        let e = Config::from_yaml_with_env(yaml, &no_env).expect_err("region");
        assert_eq!(e.path, "providers[0].region");
        let env = |n: &str| match n {
            "AWS_REGION" => Some("eu-west-1".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let c = Config::from_yaml_with_env(yaml, &env).expect("valid");
        let p = &c.providers[0];
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(p.host, "bedrock-runtime.eu-west-1.amazonaws.com");
        assert!(p.tls);
        let aws = p.aws.as_ref().expect("credentials");
        assert_eq!(aws.access_key_id, "AKID");
        assert!(!aws.has_session_token());
        assert!(!format!("{p:?}").contains("s3cr3t"), "never printed");
        // The built-in catalog's bedrock routes apply.
        assert_eq!(
            c.models["claude-3-7-sonnet-20250219"].routes[0].id,
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
        );
        // Without credentials the provider is skipped, naming the variable.
        let region_only = |n: &str| (n == "AWS_REGION").then(|| "us-east-1".to_string());
        let c = Config::from_yaml_with_env(yaml, &region_only).expect("valid");
        assert!(
            matches!(&c.providers[0].key, ApiKey::Missing { env } if env == "AWS_ACCESS_KEY_ID")
        );
        let bad = yaml.replace("kind: bedrock}", "kind: bedrock, region: \"us east\"}");
        assert_eq!(
            Config::from_yaml_with_env(&bad, &env)
                .expect_err("bad")
                .path,
            "providers[0].region"
        );
    }

    #[test]
    fn vertex_key_from_env_is_skipped_when_unusable_but_an_explicit_one_must_load() {
        // gcloud user credentials in GOOGLE_APPLICATION_CREDENTIALS must not stop start-up.
        let env = |n: &str| {
            (n == "GOOGLE_APPLICATION_CREDENTIALS").then(|| "/nonexistent/adc.json".to_string())
        };
        let c = Config::from_yaml_with_env(DEFAULT_CONFIG, &env).expect("loads");
        let i = c.provider_index("vertex").expect("vertex");
        assert!(
            matches!(&c.providers[i].key, ApiKey::Unusable { reason } if reason.contains("/nonexistent/adc.json")),
            "{:?}",
            c.providers[i].key
        );
        let plan = crate::plan::plan("claude-sonnet-4/vertex", &c).expect("plan");
        assert!(plan.skipped[0]
            .reason
            .contains("GOOGLE_APPLICATION_CREDENTIALS"));
        let yaml = "listen: [\"127.0.0.1:8080\"]\nproviders:\n  - {name: v, kind: vertex, region: us-east5, credentials-file: /nonexistent/sa.json}\n";
        let e = Config::from_yaml_with_env(yaml, &no_env).expect_err("explicit file");
        assert_eq!(e.path, "providers[0].credentials-file");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vertex-test-service-account.json"
        );
        let ok = yaml.replace("/nonexistent/sa.json", fixture);
        let c = Config::from_yaml_with_env(&ok, &no_env).expect("loads");
        assert_eq!(c.providers[0].project, "detour-test", "from the key file");
        assert_eq!(c.providers[0].host, "us-east5-aiplatform.googleapis.com");
        assert!(!format!("{:?}", c.providers[0]).contains("PRIVATE KEY"));
    }
}
