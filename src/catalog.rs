//! The model catalog: model name → the providers that serve it, with each one's model id,
//! context window, output limit, prices and capabilities.
//!
//! Facts are data. The built-in catalog is `conf/catalog/builtin.yaml`, compiled in; a config's
//! `models:` section extends it (new names) and overrides it (a list of routes replaces the
//! model's routes; a map replaces the facts it names). Runs once at start-up, in
//! [`crate::config`]; errors name the YAML path.

pub use crate::api::Capabilities;
use crate::config::raw::{RawModel, RawModelRoute, RawPrice};
use crate::config::ConfigError;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};

/// The built-in catalog.
pub const BUILTIN: &str = include_str!("../conf/catalog/builtin.yaml");

/// Capability names (`tools`, `vision`, …) → a set; errors name the YAML path.
fn parse_capabilities(list: &[String], path: &str) -> Result<Capabilities, ConfigError> {
    let mut caps = Capabilities::NONE;
    for (i, name) in list.iter().enumerate() {
        let c = Capabilities::from_name(name).ok_or_else(|| {
            ConfigError::new(
                format!("{path}[{i}]"),
                format!(
                    "unknown capability `{name}` (known: tools, vision, json-mode, json-schema, prefill)"
                ),
            )
        })?;
        caps = caps.union(c);
    }
    Ok(caps)
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// One provider serving one catalog model, with the facts that hold for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRoute {
    /// Index into [`crate::providers::Providers`].
    pub provider: usize,
    /// The provider-side model id written into the forwarded request.
    pub id: String,
    pub deployment: Option<String>,
    pub api_version: Option<String>,
    /// The answer limit; `max_tokens` sent when the client gives none and the provider
    /// requires one.
    pub max_output_tokens: Option<u32>,
    pub context_window: Option<u32>,
    pub price: Option<Price>,
    /// [`Capabilities::ALL`] where the catalog does not say.
    pub capabilities: Capabilities,
}

impl ModelRoute {
    /// A model the catalog does not list for this provider, passed through as written.
    pub fn pinned(provider: usize, id: &str) -> Self {
        ModelRoute {
            provider,
            id: id.to_string(),
            deployment: None,
            api_version: None,
            max_output_tokens: None,
            context_window: None,
            price: None,
            capabilities: Capabilities::ALL,
        }
    }
}

/// One catalog model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The provider a bare model name tries first, when configured.
    pub native: Option<usize>,
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
    pub price: Option<Price>,
    pub capabilities: Option<Capabilities>,
    /// In the order a bare model name tries them; the native provider first.
    pub routes: Vec<ModelRoute>,
}

/// A model entry before resolution: the merged raw facts and where its parts came from.
#[derive(Default)]
struct Entry {
    model: RawModel,
    /// YAML path of the routes list when the config gave it; `None`: built-in routes, whose
    /// unknown providers are left out instead of being errors.
    user_routes: Option<String>,
    /// Set when the config named this model at all.
    user_path: Option<String>,
    user_native: bool,
}

fn from_value<T: DeserializeOwned>(v: &serde_yaml::Value, path: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(full, e.into_inner().to_string())
    })
}

/// The built-in catalog, parsed.
fn builtin() -> Result<BTreeMap<String, RawModel>, ConfigError> {
    let v: serde_yaml::Value = serde_yaml::from_str(BUILTIN)
        .map_err(|e| ConfigError::new("(built-in catalog)", e.to_string()))?;
    from_value(&v, "(built-in catalog)")
}

fn valid_name(name: &str) -> bool {
    !(name.is_empty() || name.contains(',') || name.starts_with('!') || name.trim() != name)
}

/// The catalog: every model a configured provider serves.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Model name → the providers that serve it, in preference order, with facts.
    pub models: HashMap<String, Model>,
    /// Model names sorted, for `GET /v1/models`.
    pub names: Vec<String>,
}

impl Catalog {
    /// Merge the built-in catalog (when `use_builtin`) with the config's `models:`, resolving
    /// provider names to indexes. `deployments(i)`: provider `i` reads a route's `deployment`
    /// and `api-version` (no other kind may be given them).
    pub fn build(
        use_builtin: bool,
        user: &BTreeMap<String, serde_yaml::Value>,
        index: &HashMap<String, usize>,
        deployments: &dyn Fn(usize) -> bool,
    ) -> Result<Catalog, ConfigError> {
        let models = build(use_builtin, user, index, deployments)?;
        let mut names: Vec<String> = models.keys().cloned().collect();
        names.sort();
        Ok(Catalog { models, names })
    }

    /// The provider-side model ids the catalog lists for provider `i`.
    pub fn ids_of(&self, i: usize) -> Vec<String> {
        self.models
            .values()
            .flat_map(|m| &m.routes)
            .filter(|r| r.provider == i)
            .map(|r| r.id.clone())
            .collect()
    }
}

fn build(
    use_builtin: bool,
    user: &BTreeMap<String, serde_yaml::Value>,
    index: &HashMap<String, usize>,
    deployments: &dyn Fn(usize) -> bool,
) -> Result<HashMap<String, Model>, ConfigError> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    if use_builtin {
        for (name, model) in builtin()? {
            entries.insert(
                name,
                Entry {
                    model,
                    ..Entry::default()
                },
            );
        }
    }
    for (name, value) in user {
        let mpath = format!("models.{name}");
        if !valid_name(name) {
            return Err(ConfigError::new(
                &mpath,
                "a model name must be non-empty, without commas, spaces at its ends or a leading !",
            ));
        }
        if index.contains_key(name.as_str()) {
            return Err(ConfigError::new(
                &mpath,
                format!("model `{name}` has the same name as a provider"),
            ));
        }
        let entry = entries.entry(name.clone()).or_default();
        entry.user_path = Some(mpath.clone());
        match value {
            serde_yaml::Value::Sequence(_) => {
                let routes: Vec<RawModelRoute> = from_value(value, &mpath)?;
                entry.model.routes = Some(routes);
                entry.user_routes = Some(mpath);
            }
            serde_yaml::Value::Mapping(_) => {
                let m: RawModel = from_value(value, &mpath)?;
                let base = &mut entry.model;
                if m.native.is_some() {
                    base.native = m.native;
                    entry.user_native = true;
                }
                base.context_window = m.context_window.or(base.context_window);
                base.max_output_tokens = m.max_output_tokens.or(base.max_output_tokens);
                base.price = m.price.or(base.price);
                if m.capabilities.is_some() {
                    base.capabilities = m.capabilities;
                }
                if m.routes.is_some() {
                    base.routes = m.routes;
                    entry.user_routes = Some(format!("{mpath}.routes"));
                }
            }
            _ => {
                return Err(ConfigError::new(
                    &mpath,
                    "a model is a list of routes, or a map with `routes` and facts",
                ))
            }
        }
    }

    let mut out = HashMap::with_capacity(entries.len());
    for (name, entry) in entries {
        // A built-in model shadowed by a provider of the same name is left out.
        if entry.user_path.is_none() && index.contains_key(name.as_str()) {
            continue;
        }
        if let Some(model) = resolve(&name, &entry, index, deployments)? {
            out.insert(name, model);
        }
    }
    Ok(out)
}

fn price(p: Option<RawPrice>, path: &str) -> Result<Option<Price>, ConfigError> {
    match p {
        None => Ok(None),
        Some(p)
            if p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0 =>
        {
            Ok(Some(Price {
                input: p.input,
                output: p.output,
            }))
        }
        Some(_) => Err(ConfigError::new(
            path,
            "prices are non-negative numbers (USD per million tokens)",
        )),
    }
}

fn resolve(
    name: &str,
    entry: &Entry,
    index: &HashMap<String, usize>,
    deployments: &dyn Fn(usize) -> bool,
) -> Result<Option<Model>, ConfigError> {
    let m = &entry.model;
    let fpath = entry
        .user_path
        .clone()
        .unwrap_or_else(|| format!("(built-in catalog).{name}"));
    let capabilities = m
        .capabilities
        .as_deref()
        .map(|c| parse_capabilities(c, &format!("{fpath}.capabilities")))
        .transpose()?;
    let model_price = price(m.price, &format!("{fpath}.price"))?;
    let Some(raw_routes) = &m.routes else {
        return match &entry.user_path {
            Some(p) => Err(ConfigError::new(
                p,
                format!("model `{name}` is not in the built-in catalog, so it needs `routes`"),
            )),
            None => Ok(None),
        };
    };
    let rbase = entry
        .user_routes
        .clone()
        .unwrap_or_else(|| format!("(built-in catalog).{name}.routes"));
    let mut routes: Vec<ModelRoute> = Vec::with_capacity(raw_routes.len());
    for (j, r) in raw_routes.iter().enumerate() {
        let rpath = format!("{rbase}[{j}]");
        let Some(&provider) = index.get(&r.provider) else {
            if entry.user_routes.is_some() {
                return Err(ConfigError::new(
                    format!("{rpath}.provider"),
                    format!("unknown provider `{}`", r.provider),
                ));
            }
            continue;
        };
        if routes.iter().any(|x| x.provider == provider) {
            return Err(ConfigError::new(
                format!("{rpath}.provider"),
                format!("provider `{}` is listed twice for this model", r.provider),
            ));
        }
        if !deployments(provider) && (r.deployment.is_some() || r.api_version.is_some()) {
            return Err(ConfigError::new(
                &rpath,
                "deployment and api-version apply to azure providers only",
            ));
        }
        let id = r.id.clone().unwrap_or_else(|| name.to_string());
        for (field, value) in [("id", Some(&id)), ("deployment", r.deployment.as_ref())] {
            if let Some(why) = value.and_then(|v| crate::text::model_id_fault(v)) {
                return Err(ConfigError::new(
                    format!("{rpath}.{field}"),
                    format!("not usable as a model id: {why}"),
                ));
            }
        }
        let caps = match &r.capabilities {
            Some(c) => parse_capabilities(c, &format!("{rpath}.capabilities"))?,
            None => capabilities.unwrap_or(Capabilities::ALL),
        };
        routes.push(ModelRoute {
            provider,
            id,
            deployment: r.deployment.clone(),
            api_version: r.api_version.clone(),
            max_output_tokens: r.max_output_tokens.or(m.max_output_tokens),
            context_window: r.context_window.or(m.context_window),
            price: price(r.price, &format!("{rpath}.price"))?.or(model_price),
            capabilities: caps,
        });
    }
    if routes.is_empty() {
        return match &entry.user_routes {
            Some(p) => Err(ConfigError::new(p, "a model needs at least one provider")),
            None => Ok(None),
        };
    }
    let mut native = None;
    if let Some(n) = &m.native {
        let found = index
            .get(n)
            .and_then(|i| routes.iter().position(|r| r.provider == *i));
        match found {
            Some(pos) => {
                let r = routes.remove(pos);
                native = Some(r.provider);
                routes.insert(0, r);
            }
            None if entry.user_native => {
                return Err(ConfigError::new(
                    format!("{fpath}.native"),
                    format!("native provider `{n}` is not among this model's routes"),
                ))
            }
            None => {}
        }
    }
    Ok(Some(Model {
        native,
        context_window: m.context_window,
        max_output_tokens: m.max_output_tokens,
        price: model_price,
        capabilities,
        routes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Gateway;

    fn env(_: &str) -> Option<String> {
        Some("k".into())
    }

    #[test]
    fn builtin_catalog_parses_and_every_model_has_facts() {
        let b = builtin().expect("built-in catalog parses");
        for name in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "o3-mini",
            "o4-mini",
            "claude-sonnet-4",
            "claude-3-7-sonnet-20250219",
            "claude-3-5-haiku",
            "gemini-2.0-flash",
            "gemini-2.5-pro",
            "llama-3.3-70b",
        ] {
            let m = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(m.native.is_some(), "{name}: native");
            assert!(m.context_window.is_some(), "{name}: context window");
            assert!(m.capabilities.is_some(), "{name}: capabilities");
            for (j, r) in m.routes.iter().flatten().enumerate() {
                assert!(
                    r.price.is_some() || m.price.is_some(),
                    "{name} route {j}: price"
                );
                assert!(
                    r.max_output_tokens.is_some()
                        || m.max_output_tokens.is_some()
                        || r.provider != "anthropic",
                    "{name}: anthropic needs max-output-tokens"
                );
            }
        }
    }

    const PROVIDERS: &str = r#"
listen: ["127.0.0.1:8080"]
providers:
  - {name: azure, kind: azure, base-url: "http://127.0.0.1:1", api-version: "2024-10-21"}
  - {name: openai, kind: openai, base-url: "http://127.0.0.1:1/v1"}
  - {name: anthropic, kind: anthropic, base-url: "http://127.0.0.1:1"}
  - {name: local, kind: openai, base-url: "http://127.0.0.1:1/v1"}
"#;

    #[test]
    fn builtin_routes_keep_configured_providers_with_native_first() {
        let c = Gateway::from_yaml_with_env(PROVIDERS, &env).expect("loads");
        let m = &c.catalog.models["gpt-4o"];
        let names: Vec<&str> = m
            .routes
            .iter()
            .map(|r| c.providers[r.provider].name.as_str())
            .collect();
        // azure is listed first among providers, but openai is gpt-4o's native provider.
        assert_eq!(names, ["openai", "azure"]);
        assert_eq!(m.native, c.providers.index_of("openai"));
        let r = &m.routes[0];
        assert_eq!(r.context_window, Some(128000));
        assert_eq!(
            r.price,
            Some(Price {
                input: 2.5,
                output: 10.0
            })
        );
        assert!(r.capabilities.contains(Capabilities::VISION));
        // Claude: bedrock and vertex are not configured here, so only anthropic is left.
        let claude = &c.catalog.models["claude-sonnet-4"];
        assert_eq!(claude.routes.len(), 1);
        assert_eq!(claude.routes[0].id, "claude-sonnet-4-20250514");
        assert_eq!(claude.routes[0].max_output_tokens, Some(64000));
        assert!(!claude.routes[0]
            .capabilities
            .contains(Capabilities::JSON_MODE));
        // No configured provider serves llama-3.3-70b: the model is left out.
        assert!(!c.catalog.models.contains_key("llama-3.3-70b"));
    }

    #[test]
    fn config_overrides_facts_replaces_routes_and_adds_models() {
        let yaml = format!(
            "{PROVIDERS}models:\n  gpt-4o:\n    price: {{input: 1.0, output: 2.0}}\n    capabilities: [tools]\n  gpt-4o-mini: [{{provider: local, id: mini-local}}]\n  my-model:\n    native: local\n    context-window: 8192\n    routes: [{{provider: openai, id: m1}}, {{provider: local, id: m2, price: {{input: 0, output: 0}}}}]\n"
        );
        let c = Gateway::from_yaml_with_env(&yaml, &env).expect("loads");
        let g = &c.catalog.models["gpt-4o"];
        assert_eq!(g.routes.len(), 2, "routes kept");
        assert_eq!(
            g.routes[1].price,
            Some(Price {
                input: 1.0,
                output: 2.0
            })
        );
        assert_eq!(g.routes[1].capabilities, Capabilities::TOOLS);
        assert_eq!(g.routes[1].context_window, Some(128000), "other facts kept");
        let mini = &c.catalog.models["gpt-4o-mini"];
        assert_eq!(mini.routes.len(), 1);
        assert_eq!(mini.routes[0].id, "mini-local");
        assert_eq!(mini.routes[0].context_window, Some(128000));
        let my = &c.catalog.models["my-model"];
        assert_eq!(my.routes[0].id, "m2", "native first");
        assert_eq!(
            my.routes[0].price,
            Some(Price {
                input: 0.0,
                output: 0.0
            })
        );
        assert_eq!(my.routes[1].price, None);
        assert_eq!(my.routes[1].context_window, Some(8192));
        assert_eq!(my.routes[1].capabilities, Capabilities::ALL);
    }

    #[test]
    fn builtin_catalog_can_be_turned_off() {
        let yaml = format!("builtin-catalog: false\n{PROVIDERS}");
        let c = Gateway::from_yaml_with_env(&yaml, &env).expect("loads");
        assert!(c.catalog.models.is_empty());
    }

    #[test]
    fn catalog_errors_name_their_path() {
        for (models, path, needle) in [
            ("  x:\n    native: local\n", "models.x", "needs `routes`"),
            (
                "  gpt-4o:\n    native: local\n",
                "models.gpt-4o.native",
                "not among",
            ),
            (
                "  gpt-4o:\n    capabilities: [telepathy]\n",
                "models.gpt-4o.capabilities[0]",
                "unknown capability",
            ),
            (
                "  gpt-4o:\n    price: {input: -1, output: 1}\n",
                "models.gpt-4o.price",
                "non-negative",
            ),
            (
                "  gpt-4o:\n    routes: [{provider: nope}]\n",
                "models.gpt-4o.routes[0].provider",
                "unknown provider",
            ),
            (
                "  gpt-4o:\n    contxt-window: 5\n",
                "models.gpt-4o.contxt-window",
                "unknown field",
            ),
            (
                "  gpt-4o: [{provider: local, priec: 1}]\n",
                "models.gpt-4o[0].priec",
                "unknown field",
            ),
            ("  gpt-4o: 5\n", "models.gpt-4o", "list of routes"),
            (
                "  gpt-4o:\n    routes: [{provider: openai, deployment: d}]\n",
                "models.gpt-4o.routes[0]",
                "apply to azure providers only",
            ),
            (
                "  gpt-4o:\n    routes: [{provider: openai, id: \"a/../b\"}]\n",
                "models.gpt-4o.routes[0].id",
                "not usable as a model id",
            ),
        ] {
            let yaml = format!("{PROVIDERS}models:\n{models}");
            let e = Gateway::from_yaml_with_env(&yaml, &env).expect_err(models);
            assert_eq!(e.path, path, "{models}: {e}");
            assert!(e.message.contains(needle), "{models}: {e}");
        }
    }
}
