//! Raw serde structs: the YAML exactly as written. `mod.rs` validates them into [`super::Config`].
//!
//! Every struct denies unknown fields so a typo is an error that names its YAML path, not a
//! silently ignored setting.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file. Pingora's own settings live under `server:`; everything else is detour's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Pingora `ServerConf` keys, passed through as they are (threads, pid_file, upgrade_sock,
    /// grace_period_seconds, ...). Pingora's own names use snake_case.
    #[serde(default)]
    pub server: Option<serde_yaml::Value>,
    /// Addresses the gateway listens on.
    pub listen: Vec<String>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub fallback: RawFallback,
    /// Timeouts every provider inherits unless it sets its own.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Deadline, retries, circuit breakers, retry budget, ordering, hedging (`failover.rs`).
    #[serde(default)]
    pub failover: Option<super::failover::RawFailover>,
    /// Targets named by URL in request headers (`header_mode.rs`).
    #[serde(default)]
    pub header_mode: super::header_mode::RawHeaderMode,
    /// Gateway keys, BYOK and pass-through billing (`auth.rs`).
    #[serde(default)]
    pub auth: super::auth::RawAuth,
    /// Where keys, balances and shared counters live (`auth.rs`).
    #[serde(default)]
    pub store: Option<super::auth::RawStore>,
    #[serde(default)]
    pub access_log: Option<bool>,
    /// Request records (`records.rs`).
    #[serde(default)]
    pub records: super::records::RawRecords,
    pub providers: Vec<RawProvider>,
    /// Start from detour's built-in catalog (`conf/catalog/builtin.yaml`). Default true.
    #[serde(default)]
    pub builtin_catalog: Option<bool>,
    /// Catalog entries: a list of routes, or a [`RawModel`] map. Parsed in `catalog.rs`, which
    /// tells the two shapes apart and keeps YAML paths in its errors.
    #[serde(default)]
    pub models: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAdmin {
    pub listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLimits {
    pub max_body_bytes: Option<usize>,
    pub max_chain_length: Option<usize>,
    /// Largest non-streaming upstream answer buffered before commit; larger ones are relayed.
    pub max_buffered_response_bytes: Option<usize>,
    /// Largest single upstream stream event (a partial event held back past it fails the stream).
    pub max_event_bytes: Option<usize>,
    /// Request bodies buffered at once, all requests together (over it: 503 with Retry-After).
    pub max_total_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFallback {
    /// Status codes (`429`) or classes (`"5xx"`) that move on to the next target.
    pub on_status: Option<Vec<serde_yaml::Value>>,
    pub on_connect_error: Option<bool>,
    pub on_timeout: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub first_token: Option<String>,
    pub idle: Option<String>,
    pub total: Option<String>,
    pub keep_alive: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawProvider {
    pub name: String,
    pub kind: String,
    /// Required except for bedrock and vertex, whose URL follows from `region`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// bedrock: the AWS region (default: AWS_REGION, else AWS_DEFAULT_REGION). vertex: the
    /// Google Cloud location (`us-east5`, `global`, ...).
    #[serde(default)]
    pub region: Option<String>,
    /// vertex: the Google Cloud project id (default: the key file's `project_id`).
    #[serde(default)]
    pub project: Option<String>,
    /// vertex: the service-account JSON key (default: $GOOGLE_APPLICATION_CREDENTIALS).
    #[serde(default)]
    pub credentials_file: Option<String>,

    /// Name of the environment variable that holds the key. No key: no auth header is sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Azure: the default `api-version` query parameter. Anthropic: the `anthropic-version`
    /// header (default 2023-06-01).
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Offer HTTP/2 in ALPN (TLS upstreams only). Default true.
    #[serde(default)]
    pub http2: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawModelRoute {
    pub provider: String,
    /// The provider-side model id; defaults to the catalog name.
    #[serde(default)]
    pub id: Option<String>,
    /// Azure: the deployment name; defaults to the provider-side id.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Azure: overrides the provider's `api-version` for this model.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The model's answer limit; sent as `max_tokens` when the client gives none, where the
    /// provider requires one (Anthropic, Bedrock). Default: the model's, else 4096.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub price: Option<RawPrice>,
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
}

/// A catalog model in map form: facts every route inherits, and the routes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawModel {
    /// The provider a bare model name tries first.
    #[serde(default)]
    pub native: Option<String>,
    #[serde(default)]
    pub context_window: Option<u32>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub price: Option<RawPrice>,
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub routes: Option<Vec<RawModelRoute>>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
}
