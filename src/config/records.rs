//! `records:` — request records (`crate::records`): on or off, how many are kept in memory,
//! and how many may wait for the keeper thread.

use super::ConfigError;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRecords {
    pub enabled: Option<bool>,
    /// Records kept in memory (the newest).
    pub memory: Option<usize>,
    /// Records waiting for the keeper thread, at most; past it they are dropped and counted.
    pub queue: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsConfig {
    pub enabled: bool,
    pub memory: usize,
    pub queue: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            memory: 1000,
            queue: 4096,
        }
    }
}

/// The most either count may be.
const MAX: usize = 1_000_000;

pub fn validate(raw: &RawRecords) -> Result<RecordsConfig, ConfigError> {
    let d = RecordsConfig::default();
    let count = |v: Option<usize>, dflt: usize, name: &str| match v {
        None => Ok(dflt),
        Some(n) if (1..=MAX).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::new(
            format!("records.{name}"),
            format!("must be between 1 and {MAX}"),
        )),
    };
    Ok(RecordsConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        memory: count(raw.memory, d.memory, "memory")?,
        queue: count(raw.queue, d.queue, "queue")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_named() {
        let ok = validate(&RawRecords::default()).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok, RecordsConfig::default());
        for (memory, queue, path) in [
            (Some(0), None, "records.memory"),
            (None, Some(MAX + 1), "records.queue"),
        ] {
            let e = validate(&RawRecords {
                enabled: None,
                memory,
                queue,
            })
            .err()
            .unwrap_or_else(|| panic!("{path} accepted"));
            assert_eq!(e.path, path);
        }
    }
}
