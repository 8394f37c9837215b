//! The `auth:` and `store:` sections: whether callers need a gateway key, how a target is paid
//! for (the caller's own credentials or the operator's, billed), where keys and balances live.

use super::ConfigError;
use crate::store::StoreConfig;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuth {
    pub required: Option<bool>,
    /// `byok-first` (default) or `ptb-first`.
    pub order: Option<String>,
    pub admin_token_env: Option<String>,
    pub master_key_env: Option<String>,
    pub key_cache_ttl: Option<String>,
    /// `provider/model` or `provider/*`: never served on the operator's credentials.
    #[serde(default)]
    pub ptb_deny: Vec<String>,
    /// Output tokens reserved for a request without `max_tokens` on a model whose output limit
    /// the catalog does not know.
    pub default_output_tokens: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStore {
    pub sqlite: Option<String>,
    pub redis: Option<String>,
}

/// Which attempt of a target comes first when a key may use both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayOrder {
    ByokFirst,
    PtbFirst,
}

/// The validated `auth:` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub required: bool,
    pub order: PayOrder,
    pub admin_token_env: String,
    pub master_key_env: String,
    pub key_cache_ttl: Duration,
    pub ptb_deny: Vec<String>,
    pub default_output_tokens: u32,
}

pub(super) fn validate(raw: &RawAuth, providers: &[&str]) -> Result<AuthConfig, ConfigError> {
    const P: &str = "auth";
    let order = match raw.order.as_deref() {
        None | Some("byok-first") => PayOrder::ByokFirst,
        Some("ptb-first") => PayOrder::PtbFirst,
        Some(o) => {
            return Err(ConfigError::new(
                format!("{P}.order"),
                format!("`{o}`: expected byok-first or ptb-first"),
            ))
        }
    };
    let key_cache_ttl = match &raw.key_cache_ttl {
        None => Duration::from_secs(10),
        Some(s) => super::parse_duration(s)
            .filter(|d| *d <= Duration::from_secs(3600))
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{P}.key-cache-ttl"),
                    "expected a duration of at most 1h",
                )
            })?,
    };
    for (i, e) in raw.ptb_deny.iter().enumerate() {
        let ok = e
            .split_once('/')
            .is_some_and(|(p, m)| providers.contains(&p) && !m.is_empty());
        if !ok {
            return Err(ConfigError::new(
                format!("{P}.ptb-deny[{i}]"),
                format!("`{e}`: expected provider/model or provider/* with a configured provider"),
            ));
        }
    }
    Ok(AuthConfig {
        required: raw.required.unwrap_or(false),
        order,
        admin_token_env: raw
            .admin_token_env
            .clone()
            .unwrap_or_else(|| "DETOUR_ADMIN_TOKEN".into()),
        master_key_env: raw
            .master_key_env
            .clone()
            .unwrap_or_else(|| "DETOUR_MASTER_KEY".into()),
        key_cache_ttl,
        ptb_deny: raw.ptb_deny.clone(),
        default_output_tokens: raw.default_output_tokens.unwrap_or(4096).max(1),
    })
}

/// The `store:` section; absent: SQLite at `detour.db` beside the working directory.
pub(super) fn store(raw: &Option<RawStore>) -> Result<StoreConfig, ConfigError> {
    match raw {
        None => Ok(StoreConfig::Sqlite("detour.db".into())),
        Some(RawStore {
            sqlite: Some(p),
            redis: None,
        }) if !p.trim().is_empty() => Ok(StoreConfig::Sqlite(p.trim().into())),
        Some(RawStore {
            sqlite: None,
            redis: Some(u),
        }) if u.starts_with("redis://") || u.starts_with("rediss://") => {
            Ok(StoreConfig::Redis(u.clone()))
        }
        Some(_) => Err(ConfigError::new(
            "store",
            "expected one of `sqlite: PATH` or `redis: redis://HOST:PORT/DB`",
        )),
    }
}
