//! Planning: the `model` field → the ordered list of targets to try. Pure, no I/O.
//!
//! Syntax (comma-separated, tried in order, spaces trimmed):
//! - `model/provider` pins a provider; a model the catalog does not list for that provider is
//!   passed to it as written;
//! - `model` (a catalog name) expands to every provider that serves it, native provider first;
//! - `!provider` excludes that provider from the whole chain, wherever it stands.
//!
//! Duplicates are dropped (first place wins). Providers whose key is missing are not tried but
//! reported as skipped.

use crate::catalog::ModelRoute;
use crate::gateway::Gateway;

/// One upstream attempt to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The model name as the client wrote it (catalog name or pass-through id).
    pub model: String,
    pub route: ModelRoute,
    /// The chain entry this target came from, when that entry was a bare model (its targets
    /// may be reordered by the ordering policy); `None` for a pinned `model/provider`.
    pub bare_entry: Option<usize>,
    /// Whose credentials serve it, and who pays.
    pub pay: Pay,
}

/// Whose credentials an attempt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pay {
    /// The operator's, nothing billed (no gateway keys).
    #[default]
    Operator,
    /// The caller's own (bring your own key): the cost is recorded, not billed.
    Byok,
    /// The operator's, billed to the caller's credits (pass-through billing).
    Ptb,
}

impl Pay {
    pub fn label(self) -> &'static str {
        match self {
            Pay::Operator => "operator",
            Pay::Byok => "byok",
            Pay::Ptb => "ptb",
        }
    }
}

/// Decides, per target, which attempts a caller gets (gateway keys: `auth/`).
pub trait Payer {
    /// The attempts for `route` in order, or why it is skipped (`.0`: a metric label,
    /// `.1`: for the attempts list).
    fn attempts(&self, model: &str, route: &ModelRoute)
        -> Result<Vec<Pay>, (&'static str, String)>;
}

impl Target {
    /// `model/provider`, as reported to the client and in logs.
    pub fn source(&self, gw: &Gateway) -> String {
        format!("{}/{}", self.model, gw.providers[self.route.provider].name)
    }
}

/// A target not tried because its provider has no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub source: String,
    pub provider: usize,
    pub reason: String,
    /// `credentials`, `not_allowed` or `ptb_disallowed`.
    pub why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub skipped: Vec<Skipped>,
}

enum Entry<'a> {
    Bare(&'a str),
    Pinned(&'a str, usize),
}

/// Turn a `model` field into a plan. The error text is the client's 400 message.
pub fn plan(model_field: &str, gw: &Gateway) -> Result<Plan, String> {
    plan_for(model_field, gw, None)
}

/// [`plan`], with each target's attempts decided by `payer` (a caller with a gateway key).
pub fn plan_for(
    model_field: &str,
    gw: &Gateway,
    payer: Option<&dyn Payer>,
) -> Result<Plan, String> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut excluded: Vec<usize> = Vec::new();
    let max = gw.cfg.limits.max_chain_length;
    for (n, raw) in model_field.split(',').enumerate() {
        if n >= max {
            let count = model_field.split(',').count();
            return Err(format!(
                "the model chain has {count} entries; the maximum is {max}"
            ));
        }
        let e = raw.trim();
        if e.is_empty() {
            return Err(format!(
                "the model chain has an empty entry at position {}",
                n + 1
            ));
        }
        if let Some(p) = e.strip_prefix('!') {
            let p = p.trim();
            match gw.providers.index_of(p) {
                Some(i) => excluded.push(i),
                None => return Err(format!("unknown provider `{}` in `{}`", clip(p), clip(e))),
            }
            continue;
        }
        if gw.catalog.models.contains_key(e) {
            entries.push(Entry::Bare(e));
            continue;
        }
        match e.rsplit_once('/') {
            Some((m, p)) => {
                let (m, p) = (m.trim(), p.trim());
                let i = gw.providers.index_of(p).ok_or_else(|| {
                    format!(
                        "unknown provider `{}` in `{}` (a model outside the catalog needs a known /provider)",
                        clip(p),
                        clip(e)
                    )
                })?;
                if m.is_empty() {
                    return Err(format!("missing model name in `{}`", clip(e)));
                }
                // A pinned id goes to the provider as written (into its URL path, for some
                // kinds): nothing that could change which resource it addresses.
                if let Some(why) = crate::text::model_id_fault(m) {
                    return Err(format!("invalid model id in `{}`: {why}", clip(e)));
                }
                entries.push(Entry::Pinned(m, i));
            }
            None => {
                return Err(format!(
                    "unknown model `{}` (not in the catalog; pin a provider as `model/provider`)",
                    clip(e)
                ))
            }
        }
    }

    let mut out = Plan::default();
    let mut push = |model: &str, route: ModelRoute, bare_entry: Option<usize>| {
        if excluded.contains(&route.provider) {
            return;
        }
        let provider = &gw.providers[route.provider];
        let pays = match payer {
            Some(p) => p.attempts(model, &route),
            None => match provider.credentials.unavailable() {
                Some(reason) => Err(("credentials", reason)),
                None => Ok(vec![Pay::Operator]),
            },
        };
        let pays = match pays {
            Ok(p) => p,
            Err((why, reason)) => {
                if !out
                    .skipped
                    .iter()
                    .any(|s| s.provider == route.provider && s.reason == reason)
                {
                    out.skipped.push(Skipped {
                        source: format!("{model}/{}", provider.name),
                        provider: route.provider,
                        reason,
                        why,
                    });
                }
                return;
            }
        };
        for pay in pays {
            if out.targets.iter().any(|t| {
                t.route.provider == route.provider && t.route.id == route.id && t.pay == pay
            }) {
                continue;
            }
            out.targets.push(Target {
                model: model.to_string(),
                route: route.clone(),
                bare_entry,
                pay,
            });
        }
    };
    for (n, entry) in entries.into_iter().enumerate() {
        match entry {
            Entry::Bare(m) => {
                for r in gw.catalog.models.get(m).into_iter().flat_map(|m| &m.routes) {
                    push(m, r.clone(), Some(n));
                }
            }
            Entry::Pinned(m, i) => {
                let route = gw
                    .catalog
                    .models
                    .get(m)
                    .and_then(|model| model.routes.iter().find(|r| r.provider == i))
                    .cloned()
                    .unwrap_or_else(|| ModelRoute::pinned(i, m));
                push(m, route, None);
            }
        }
    }
    if out.targets.is_empty() && out.skipped.is_empty() {
        return Err("no target is left in the model chain after exclusions".into());
    }
    Ok(out)
}

/// Reorder the targets of each bare-model entry by `key` (lower first; `None`, unmeasured,
/// after the measured ones, in catalog order). Pinned targets and the order of the entries
/// themselves never move. Stable: equal keys keep catalog order.
pub fn order_bare<F: Fn(&Target) -> Option<f64>>(targets: &mut [Target], key: F) {
    let mut start = 0;
    while start < targets.len() {
        let group = targets[start].bare_entry;
        let mut end = start + 1;
        while end < targets.len() && group.is_some() && targets[end].bare_entry == group {
            end += 1;
        }
        if group.is_some() && end - start > 1 {
            let run = &mut targets[start..end];
            let mut keyed: Vec<(Option<f64>, usize)> =
                run.iter().enumerate().map(|(i, t)| (key(t), i)).collect();
            keyed.sort_by(|a, b| match (a.0, b.0) {
                (Some(x), Some(y)) => x.total_cmp(&y).then(a.1.cmp(&b.1)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.1.cmp(&b.1),
            });
            let sorted: Vec<Target> = keyed.iter().map(|&(_, i)| run[i].clone()).collect();
            run.clone_from_slice(&sorted);
        }
        start = end;
    }
}

fn clip(s: &str) -> &str {
    crate::api::truncate(s, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
listen: ["127.0.0.1:8080"]
limits:
  max-chain-length: 4
providers:
  - {name: openai, kind: openai, base-url: "http://127.0.0.1:1/v1", api-key-env: K1}
  - {name: azure, kind: azure, base-url: "http://127.0.0.1:2", api-version: "2024-10-21"}
  - {name: groq, kind: openai, base-url: "http://127.0.0.1:3/v1"}
  - {name: nokey, kind: openai, base-url: "http://127.0.0.1:4/v1", api-key-env: UNSET}
models:
  gpt-4o:
    - {provider: openai, id: gpt-4o-2024-08-06}
    - {provider: azure, deployment: dep-4o}
  llama:
    - {provider: groq, id: llama-3.3-70b-versatile}
    - {provider: nokey}
    - {provider: openai, id: llama-oai}
"#;

    fn cfg() -> Gateway {
        let env = |n: &str| (n == "K1").then(|| "k".to_string());
        Gateway::from_yaml_with_env(CFG, &env).expect("valid")
    }

    fn sources(p: &Plan, c: &Gateway) -> Vec<String> {
        p.targets
            .iter()
            .map(|t| format!("{}={}", t.source(c), t.route.id))
            .collect()
    }

    #[test]
    fn ordering_moves_only_targets_of_one_bare_entry() {
        let c = cfg();
        let mut p = plan("gpt-4o/azure,llama,gpt-4o", &c).expect("plan");
        let before = sources(&p, &c);
        // Lower key first; the pinned target and the entry order stay.
        order_bare(&mut p.targets, |t| {
            match c.providers[t.route.provider].name.as_str() {
                "openai" => Some(2.0),
                "groq" => Some(5.0),
                _ => None,
            }
        });
        let after = sources(&p, &c);
        assert_eq!(after[0], before[0], "pinned stays first");
        assert_eq!(
            after[1..3],
            [
                "llama/openai=llama-oai".to_string(),
                "llama/groq=llama-3.3-70b-versatile".to_string()
            ]
        );
        assert_eq!(
            after[3..],
            before[3..],
            "gpt-4o: openai measured, azure deduplicated"
        );
    }

    #[test]
    fn bare_model_expands_in_catalog_order() {
        let c = cfg();
        let p = plan("gpt-4o", &c).expect("ok");
        assert_eq!(
            sources(&p, &c),
            ["gpt-4o/openai=gpt-4o-2024-08-06", "gpt-4o/azure=gpt-4o"]
        );
        assert_eq!(p.targets[1].route.deployment.as_deref(), Some("dep-4o"));
    }

    #[test]
    fn pinned_unknown_model_passes_through_and_exclusion_applies_everywhere() {
        let c = cfg();
        let p = plan(" my-model/groq , gpt-4o , !openai", &c).expect("ok");
        assert_eq!(
            sources(&p, &c),
            ["my-model/groq=my-model", "gpt-4o/azure=gpt-4o"]
        );
        let p = plan("!azure,gpt-4o", &c).expect("ok");
        assert_eq!(sources(&p, &c), ["gpt-4o/openai=gpt-4o-2024-08-06"]);
    }

    #[test]
    fn slash_in_model_ids() {
        let c = cfg();
        let p = plan("meta-llama/Llama-3/groq", &c).expect("ok");
        assert_eq!(
            sources(&p, &c),
            ["meta-llama/Llama-3/groq=meta-llama/Llama-3"]
        );
        let e = plan("meta-llama/Llama-3", &c).expect_err("unknown provider");
        assert!(e.contains("unknown provider `Llama-3`"), "{e}");
    }

    #[test]
    fn duplicates_removed_first_wins() {
        let c = cfg();
        let p = plan("gpt-4o/azure,gpt-4o,gpt-4o/azure", &c).expect("ok");
        assert_eq!(
            sources(&p, &c),
            ["gpt-4o/azure=gpt-4o", "gpt-4o/openai=gpt-4o-2024-08-06"]
        );
    }

    #[test]
    fn missing_key_is_skipped_and_reported() {
        let c = cfg();
        let p = plan("llama", &c).expect("ok");
        assert_eq!(
            sources(&p, &c),
            [
                "llama/groq=llama-3.3-70b-versatile",
                "llama/openai=llama-oai"
            ]
        );
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].source, "llama/nokey");
        assert!(p.skipped[0].reason.contains("UNSET"));
        let p = plan("x/nokey", &c).expect("ok: only skipped");
        assert!(p.targets.is_empty());
        assert_eq!(p.skipped.len(), 1);
    }

    #[test]
    fn errors_name_the_entry() {
        let c = cfg();
        for (chain, needle) in [
            ("gpt-4o,,llama", "empty entry at position 2"),
            ("gpt-4o,", "empty entry at position 2"),
            ("gpt-5", "unknown model `gpt-5`"),
            ("gpt-4o/opnai", "unknown provider `opnai`"),
            ("!opnai,gpt-4o", "unknown provider `opnai`"),
            ("/openai", "missing model name"),
            (
                "a/openai,b/openai,c/openai,d/openai,e/openai",
                "5 entries; the maximum is 4",
            ),
            ("gpt-4o,!openai,!azure", "no target is left"),
        ] {
            let e = plan(chain, &c).expect_err(chain);
            assert!(e.contains(needle), "{chain}: {e}");
        }
    }
}
