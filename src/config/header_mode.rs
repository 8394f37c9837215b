//! The `header-mode:` section: requests that name their targets by URL (`Helicone-Target-Url`,
//! `Helicone-Fallbacks`). Which private ranges and ports they may reach, which extra hosts are
//! approved, and the limits for hosts that are not.

use super::raw::RawTimeouts;
use super::{timeouts, ConfigError, Timeouts};
use crate::target::limit::Limits;
use crate::target::{Approved, Cidr, Policy};
use serde::Deserialize;
use std::ops::RangeInclusive;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHeaderMode {
    /// Serve `Helicone-Target-Url` / `Helicone-Fallbacks` at all. Default true.
    pub enabled: Option<bool>,
    /// Hosts (`models.example.org`) or domains (`*.example.org`) approved besides the built-in
    /// list and the config's providers.
    #[serde(default)]
    pub approved_hosts: Vec<String>,
    /// CIDRs header-mode targets may reach although private (`10.0.0.0/8`, `::1/128`).
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Ports besides 80 and 443: `8080` or a range `"8000-8100"`.
    #[serde(default)]
    pub allow_ports: Vec<serde_yaml::Value>,
    /// Per caller and unapproved host.
    #[serde(default)]
    pub unapproved_limit: Option<RawLimit>,
    /// Per attempt; default: the top-level `timeouts:`.
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLimit {
    pub per_second: Option<u32>,
    pub per_day: Option<u32>,
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct HeaderMode {
    pub enabled: bool,
    /// The config's own approved entries (the gateway adds the providers' hosts).
    pub approved_hosts: Vec<String>,
    pub policy: Policy,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

pub(super) fn validate(raw: &RawHeaderMode, base: Timeouts) -> Result<HeaderMode, ConfigError> {
    const P: &str = "header-mode";
    Approved::new(&[], &raw.approved_hosts)
        .map_err(|(i, m)| ConfigError::new(format!("{P}.approved-hosts[{i}]"), m))?;
    let allow_networks = raw
        .allow_networks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s.trim()).ok_or_else(|| {
                ConfigError::new(
                    format!("{P}.allow-networks[{i}]"),
                    format!("`{s}` is not a CIDR (e.g. 10.0.0.0/8, fd00::/8)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allow_ports = raw
        .allow_ports
        .iter()
        .enumerate()
        .map(|(i, v)| {
            port_range(v).ok_or_else(|| {
                ConfigError::new(
                    format!("{P}.allow-ports[{i}]"),
                    "expected a port (8080) or a range (\"8000-8100\") within 1..=65535",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut limits = Limits::default();
    if let Some(l) = &raw.unapproved_limit {
        limits.per_second = l.per_second.unwrap_or(limits.per_second);
        limits.per_day = l.per_day.unwrap_or(limits.per_day);
    }
    Ok(HeaderMode {
        enabled: raw.enabled.unwrap_or(true),
        approved_hosts: raw.approved_hosts.clone(),
        policy: Policy {
            allow_networks,
            allow_ports,
        },
        limits,
        timeouts: timeouts(&raw.timeouts, base, &format!("{P}.timeouts"))?,
    })
}

fn port_range(v: &serde_yaml::Value) -> Option<RangeInclusive<u16>> {
    let one = |n: u64| u16::try_from(n).ok().filter(|p| *p > 0);
    match v {
        serde_yaml::Value::Number(n) => one(n.as_u64()?).map(|p| p..=p),
        serde_yaml::Value::String(s) => {
            let (a, b) = s.split_once('-')?;
            let (a, b) = (one(a.trim().parse().ok()?)?, one(b.trim().parse().ok()?)?);
            (a <= b).then_some(a..=b)
        }
        _ => None,
    }
}
