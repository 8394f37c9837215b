//! `records:` — request records (`crate::records`): on or off, how many are kept in memory,
//! how many may wait for the keeper thread, and whether and how long they are kept on disk.

use super::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRecords {
    pub enabled: Option<bool>,
    /// Records kept in memory (the newest).
    pub memory: Option<usize>,
    /// Records waiting for the keeper thread, at most; past it they are dropped and counted.
    pub queue: Option<usize>,
    /// Keep them in a SQLite file too (default true).
    pub persist: Option<bool>,
    /// That file; absent: `detour-records.db` beside the store's SQLite file (in the working
    /// directory with a Redis store).
    pub sqlite: Option<String>,
    /// Records older than this many days are deleted.
    pub retention_days: Option<u32>,
    /// At most this many are kept on disk (the oldest go first).
    pub retention_rows: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsConfig {
    pub enabled: bool,
    pub memory: usize,
    pub queue: usize,
    /// The SQLite file records are kept in; `None`: memory only (`persist: false`).
    pub sqlite: Option<PathBuf>,
    pub retention_days: u32,
    pub retention_rows: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            memory: 1000,
            queue: 16_384,
            sqlite: None,
            retention_days: 7,
            retention_rows: 1_000_000,
        }
    }
}

/// The most either count may be.
const MAX: usize = 1_000_000;

/// `store` is where the store's own SQLite file is (`None` with a Redis store).
pub fn validate(raw: &RawRecords, store: Option<&Path>) -> Result<RecordsConfig, ConfigError> {
    let d = RecordsConfig::default();
    let count = |v: Option<usize>, dflt: usize, name: &str| match v {
        None => Ok(dflt),
        Some(n) if (1..=MAX).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::new(
            format!("records.{name}"),
            format!("must be between 1 and {MAX}"),
        )),
    };
    let sqlite = match (raw.persist.unwrap_or(true), &raw.sqlite) {
        (false, _) => None,
        (true, Some(p)) if p.trim().is_empty() || p.contains('\0') => {
            return Err(ConfigError::new("records.sqlite", "must be a file path"))
        }
        (true, Some(p)) => Some(PathBuf::from(p)),
        (true, None) => {
            // Its own file: its writes never wait for the store's ledger, nor hold it up.
            Some(
                store
                    .and_then(Path::parent)
                    .unwrap_or(Path::new(""))
                    .join("detour-records.db"),
            )
        }
    };
    let retention_days = match raw.retention_days {
        None => d.retention_days,
        Some(n) if (1..=3650).contains(&n) => n,
        Some(_) => {
            return Err(ConfigError::new(
                "records.retention-days",
                "must be between 1 and 3650",
            ))
        }
    };
    Ok(RecordsConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        memory: count(raw.memory, d.memory, "memory")?,
        queue: count(raw.queue, d.queue, "queue")?,
        sqlite,
        retention_days,
        retention_rows: count(raw.retention_rows, d.retention_rows, "retention-rows")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_named() {
        let ok = validate(&RawRecords::default(), None).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.sqlite.as_deref(), Some(Path::new("detour-records.db")));
        let ok = validate(&RawRecords::default(), Some(Path::new("x/detour.db")))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.sqlite.as_deref(), Some(Path::new("x/detour-records.db")));
        let off = RawRecords {
            persist: Some(false),
            ..RawRecords::default()
        };
        assert_eq!(validate(&off, None).map(|c| c.sqlite), Ok(None));
        for (memory, queue, path) in [
            (Some(0), None, "records.memory"),
            (None, Some(MAX + 1), "records.queue"),
        ] {
            let e = validate(
                &RawRecords {
                    memory,
                    queue,
                    ..RawRecords::default()
                },
                None,
            )
            .err()
            .unwrap_or_else(|| panic!("{path} accepted"));
            assert_eq!(e.path, path);
        }
    }
}
