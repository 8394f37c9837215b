//! Configuration: one YAML file holds Pingora's server settings (`server:`) and detour's own.
//!
//! Runs once at start-up (and for `detour -t`). Loading never panics: every fault is a
//! [`ConfigError`] that names the YAML path, e.g. `providers[1].kind: unknown provider kind`.
//! This module validates what is kind-independent: listeners, limits, fallback triggers,
//! timeouts, the `failover:` section, and each provider's shared fields ([`ProviderConfig`]).
//! Provider kinds, their credentials and the catalog are built above it (`providers/`,
//! `catalog.rs`), and put together in [`crate::gateway`].

pub mod auth;
pub mod failover;
pub mod header_mode;
mod provider;
pub(crate) mod raw;
pub mod records;

pub use crate::durations::parse as parse_duration;
pub use crate::secrets::Secret;
pub use auth::{AuthConfig, PayOrder};
pub use failover::{Failover, HedgeAfter, Order};
pub use header_mode::HeaderMode;
use pingora_core::server::configuration::ServerConf;
pub use provider::{Endpoint, ProviderConfig};
use raw::{RawConfig, RawTimeouts};
use std::collections::{BTreeMap, HashSet};
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
    /// A committed stream quiet this long gets a keep-alive (a `: ping` comment; for Messages
    /// clients `event: ping`), so the client and the proxies between do not give up on it.
    pub keep_alive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            first_token: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
            keep_alive: Duration::from_secs(15),
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
    /// Requests that name their targets by URL (`Helicone-Target-Url`, `Helicone-Fallbacks`).
    pub header_mode: HeaderMode,
    /// Gateway keys, BYOK and pass-through billing.
    pub auth: AuthConfig,
    pub store: crate::store::StoreConfig,
    pub access_log: bool,
    /// Request records (`records:`).
    pub records: records::RecordsConfig,
    pub providers: Vec<ProviderConfig>,
    /// Start from the built-in catalog.
    pub builtin_catalog: bool,
    /// The config's `models:` entries as written; the catalog reads them.
    pub models: BTreeMap<String, serde_yaml::Value>,
}

impl Config {
    /// Parse and validate YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(path, e.into_inner().to_string())
        })?;
        validate(raw)
    }
}

pub(crate) fn timeouts(
    raw: &RawTimeouts,
    base: Timeouts,
    path: &str,
) -> Result<Timeouts, ConfigError> {
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
        keep_alive: one(&raw.keep_alive, "keep-alive", base.keep_alive)?,
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

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
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
    let header_mode = header_mode::validate(&raw.header_mode, base_timeouts)?;
    if raw.providers.is_empty() {
        return Err(ConfigError::new(
            "providers",
            "at least one provider is needed",
        ));
    }
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut names = HashSet::new();
    for (i, p) in raw.providers.iter().enumerate() {
        let prov = provider::provider(i, p, base_timeouts)?;
        if !names.insert(prov.name.clone()) {
            return Err(ConfigError::new(
                format!("providers[{i}].name"),
                format!("duplicate provider name `{}`", prov.name),
            ));
        }
        providers.push(prov);
    }
    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    let auth = auth::validate(&raw.auth, &names)?;
    let store = auth::store(&raw.store)?;
    let records = records::validate(
        &raw.records,
        match &store {
            crate::store::StoreConfig::Sqlite(p) => Some(p.as_path()),
            crate::store::StoreConfig::Redis(_) => None,
        },
    )?;
    Ok(Config {
        server,
        listen,
        admin_listen,
        limits,
        fallback,
        failover,
        header_mode,
        auth,
        store,
        access_log: raw.access_log.unwrap_or(true),
        records,
        providers,
        builtin_catalog: raw.builtin_catalog.unwrap_or(true),
        models: raw.models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = Config::from_yaml(MIN).expect("valid");
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[1].kind, "azure");
        assert_eq!(c.providers[1].api_key_env.as_deref(), Some("AZURE_KEY"));
        assert_eq!(c.providers[1].path, "providers[1]");
        assert!(c.models.contains_key("gpt-4o"));
    }

    #[test]
    fn every_shipped_config_loads() {
        Config::from_yaml(DEFAULT_CONFIG).expect("default config");
        Config::from_yaml(DEMO_CONFIG).expect("demo config");
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let bad = MIN.replace("    kind: azure", "    kind: azure\n    colour: blue");
        let e = Config::from_yaml(&bad).expect_err("must fail");
        assert_eq!(e.path, "providers[1].colour");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn bad_duration_status_name_and_region() {
        let bad = format!("{MIN}timeouts:\n  connect: 5 parsecs\n");
        let e = Config::from_yaml(&bad).expect_err("duration");
        assert_eq!(e.path, "timeouts.connect");
        let bad = format!("{MIN}fallback:\n  on-status: [429, \"7xx\"]\n");
        let e = Config::from_yaml(&bad).expect_err("status");
        assert_eq!(e.path, "fallback.on-status[1]");
        let bad = MIN.replace("name: azure", "name: openai");
        assert_eq!(
            Config::from_yaml(&bad).expect_err("dup").path,
            "providers[1].name"
        );
        let bad = MIN.replace("name: azure", "name: \"a z\"");
        assert_eq!(
            Config::from_yaml(&bad).expect_err("name").path,
            "providers[1].name"
        );
        let bad = MIN.replace("kind: azure", "kind: azure\n    region: \"us east\"");
        assert_eq!(
            Config::from_yaml(&bad).expect_err("region").path,
            "providers[1].region"
        );
    }

    #[test]
    fn status_triggers_from_config() {
        let c = format!("{MIN}fallback:\n  on-status: [429, \"5xx\"]\n");
        let c = Config::from_yaml(&c).expect("valid");
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
    fn header_mode_section() {
        let c = Config::from_yaml(MIN).expect("valid");
        assert!(c.header_mode.enabled);
        assert_eq!(c.header_mode.limits.per_second, 1);
        assert_eq!(c.header_mode.limits.per_day, 10_000);
        let ok = format!(
            "{MIN}header-mode:\n  allow-networks: [127.0.0.0/8, \"::1/128\"]\n  allow-ports: [8080, \"9000-9100\"]\n  approved-hosts: [\"*.corp.example\"]\n  unapproved-limit: {{per-second: 5}}\n"
        );
        let c = Config::from_yaml(&ok).expect("valid");
        assert_eq!(c.header_mode.policy.allow_networks.len(), 2);
        assert_eq!(
            c.header_mode.policy.allow_ports,
            vec![8080..=8080, 9000..=9100]
        );
        assert_eq!(c.header_mode.limits.per_second, 5);
        for (bad, path) in [
            (
                "allow-networks: [10.0.0.0/40]",
                "header-mode.allow-networks[0]",
            ),
            ("allow-ports: [80, 70000]", "header-mode.allow-ports[1]"),
            ("allow-ports: [\"9-1\"]", "header-mode.allow-ports[0]"),
            (
                "approved-hosts: [\"a.*.com\"]",
                "header-mode.approved-hosts[0]",
            ),
            (
                "timeouts: {connect: forever}",
                "header-mode.timeouts.connect",
            ),
            ("colour: red", "header-mode.colour"),
        ] {
            let e = Config::from_yaml(&format!("{MIN}header-mode:\n  {bad}\n")).expect_err(bad);
            assert_eq!(e.path, path, "{bad}: {e}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let bad = format!("{MIN}limits:\n  max-body-bytes: 100\n  max-total-body-bytes: 50\n");
        let e = Config::from_yaml(&bad).expect_err("total below one body");
        assert_eq!(e.path, "limits.max-total-body-bytes");
        let c = Config::from_yaml(&format!("{MIN}limits:\n  max-body-bytes: 1073741824\n"))
            .expect("valid");
        assert_eq!(c.limits.max_total_body_bytes, 1 << 30, "at least one body");
    }
}
