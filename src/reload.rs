//! Reload without a restart: `SIGHUP` (the systemd unit's `ExecReload`) re-reads the config
//! file. A file that does not validate is refused, its error logged, and the old config keeps
//! serving. A valid one serves new requests at once (`proxy::Current`); in-flight requests
//! finish on the config they started with; the breakers and latency of providers whose
//! settings did not change carry over.
//!
//! What a running process cannot change is refused too, naming the section: `server`,
//! `listen`, `admin`, `store`, `auth`, `records` and `limits.max-total-body-bytes` (a restart,
//! or `-u` with a new process, changes those), and with gateway keys the providers' names and
//! order (keys hold their credentials by provider).

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::proxy::Current;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_yaml::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Sections a reload may not change.
const FIXED: [&str; 6] = ["server", "listen", "admin", "store", "auth", "records"];

/// The first 16 hex digits of the SHA-256 of a config's text.
pub fn hash(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct Loaded {
    raw: Value,
    hash: String,
}

pub struct Reloader {
    /// The config file; `None`: a built-in config, which a reload reads again (`builtin`).
    path: Option<String>,
    builtin: String,
    current: Arc<Current>,
    metrics: Arc<Metrics>,
    loaded: Mutex<Loaded>,
}

fn section<'a>(raw: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(raw, |v, k| v.get(*k))
}

/// A provider's entry in the YAML, by name.
fn provider<'a>(raw: &'a Value, name: &str) -> Option<&'a Value> {
    raw.get("providers")?
        .as_sequence()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

impl Reloader {
    /// `text` is the config now serving: `path`'s, or a built-in one.
    pub fn new(
        path: Option<String>,
        text: &str,
        current: Arc<Current>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let loaded = Loaded {
            raw: serde_yaml::from_str(text).unwrap_or(Value::Null),
            hash: hash(text),
        };
        metrics.config.with_label_values(&[&loaded.hash]).set(1);
        Reloader {
            builtin: if path.is_none() {
                text.to_string()
            } else {
                String::new()
            },
            path,
            current,
            metrics,
            loaded: Mutex::new(loaded),
        }
    }

    /// Read the config again and serve it, or say why not (the old one keeps serving).
    pub fn reload(&self) -> Result<String, String> {
        let text = match &self.path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?,
            None => self.builtin.clone(),
        };
        let gw = Gateway::from_yaml(&text).map_err(|e| e.to_string())?;
        let raw: Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        for s in FIXED {
            if loaded.raw.get(s) != raw.get(s) {
                return Err(format!(
                    "`{s}` changed: restart (or start a new process with -u) for that"
                ));
            }
        }
        let total = ["limits", "max-total-body-bytes"];
        if section(&loaded.raw, &total) != section(&raw, &total) {
            return Err("`limits.max-total-body-bytes` changed: restart for that".into());
        }
        let old = self.current.load();
        let names =
            |g: &Gateway| -> Vec<String> { g.providers.iter().map(|p| p.name.clone()).collect() };
        if old.has_keys() && names(old.gateway()) != names(&gw) {
            return Err("with gateway keys, a reload keeps the providers' names and order: restart for that".into());
        }
        let before = loaded.raw.clone();
        let unchanged = |name: &str| provider(&before, name) == provider(&raw, name);
        self.current.store(old.reloaded(Arc::new(gw), &unchanged));
        let h = hash(&text);
        self.metrics.config.reset();
        self.metrics.config.with_label_values(&[&h]).set(1);
        *loaded = Loaded {
            raw,
            hash: h.clone(),
        };
        Ok(h)
    }

    /// Reload, logging and counting the result.
    pub fn on_signal(&self) {
        let result = self.reload();
        let label = if result.is_ok() { "applied" } else { "refused" };
        self.metrics.reloads.with_label_values(&[label]).inc();
        match result {
            Ok(h) => eprintln!("detour: config reloaded (hash {h})"),
            Err(e) => {
                let was = self
                    .loaded
                    .lock()
                    .map(|l| l.hash.clone())
                    .unwrap_or_default();
                eprintln!(
                    "detour: config reload refused, the old config (hash {was}) keeps serving: {e}"
                );
            }
        }
    }
}

/// Set by every `SIGHUP` from [`catch_sighup_early`] on, and taken by the reload service: a
/// signal that arrives before the service listens (a reload right after the start) is
/// applied when it starts, not lost.
static HUP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Until the reload service listens, a `SIGHUP` is caught and noted ([`HUP`]) rather than
/// ending the process (its default); the handler stays for the process's life.
pub fn catch_sighup_early() {
    let flag = HUP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, flag.clone()) {
        eprintln!("detour: cannot catch SIGHUP: {e}");
    }
}

/// Whether a `SIGHUP` came since the last call (always, where [`catch_sighup_early`] was not
/// called: every wake-up of the signal stream is then one).
fn hup_pending() -> bool {
    HUP.get().is_none_or(|f| f.swap(false, Ordering::AcqRel))
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("detour: cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        // One that came before this listened.
        if HUP.get().is_some() && hup_pending() {
            self.on_signal();
        }
        loop {
            tokio::select! {
                got = hup.recv() => match got {
                    // Signals that came together are one reload.
                    Some(()) => if hup_pending() {
                        self.on_signal()
                    },
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sighup_before_the_reload_service_listens_is_kept_for_it() {
        catch_sighup_early();
        let _ = hup_pending(); // whatever came before
        assert!(signal_hook::low_level::raise(signal_hook::consts::SIGHUP).is_ok());
        assert!(hup_pending(), "caught and noted, the process still here");
        assert!(!hup_pending(), "taken once");
    }

    #[test]
    fn a_hash_is_16_hex_digits_of_the_text() {
        let h = hash("a: 1\n");
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, hash("a: 2\n"));
    }
}
