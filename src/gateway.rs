//! Everything a running gateway reads, put together once at start-up: the validated config,
//! the providers with their adapters and credentials, and the catalog of what they serve.
//!
//! The one place where the layers below meet: `config` knows nothing of provider kinds or the
//! catalog; `providers` and `catalog` each know `config` only.

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError};
use crate::providers::{Providers, RouteFields};
use crate::secrets::Masker;
use crate::target::Approved;
use std::collections::HashMap;

/// The configuration, providers and catalog. Built once; shared read-only by every request.
#[derive(Debug)]
pub struct Gateway {
    pub cfg: Config,
    pub providers: Providers,
    pub catalog: Catalog,
    /// Header-mode hosts that are not rate limited: built in, the providers', the config's.
    pub approved: Approved,
}

impl Gateway {
    /// Parse and validate YAML text, reading provider credentials from the process environment.
    pub fn from_yaml(text: &str) -> Result<Gateway, ConfigError> {
        Self::from_yaml_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Same as [`Gateway::from_yaml`] with an injectable environment (for tests).
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gateway, ConfigError> {
        Self::new(Config::from_yaml(text)?, env)
    }

    /// Read and validate a config file.
    pub fn load(path: &str) -> Result<Gateway, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read config file {path}: {e}")))?;
        Self::from_yaml(&text)
    }

    /// Build the providers and the catalog of a validated config.
    pub fn new(cfg: Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Gateway, ConfigError> {
        let providers = Providers::build(&cfg.providers, env)?;
        let index: HashMap<String, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let deployments = |i: usize| {
            providers
                .get(i)
                .is_some_and(|p| p.adapter.route_fields() == RouteFields::Deployment)
        };
        let catalog = Catalog::build(cfg.builtin_catalog, &cfg.models, &index, &deployments)?;
        let hosts: Vec<String> = providers.iter().map(|p| p.endpoint.host.clone()).collect();
        let approved = Approved::new(&hosts, &cfg.header_mode.approved_hosts)
            .map_err(|(i, m)| ConfigError::new(format!("header-mode.approved-hosts[{i}]"), m))?;
        Ok(Gateway {
            cfg,
            providers,
            catalog,
            approved,
        })
    }

    /// A masker for every credential of every provider.
    pub fn masker(&self) -> Masker {
        Masker::new(self.providers.iter().flat_map(|p| p.credentials_to_mask()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_CONFIG, DEMO_CONFIG};
    use crate::providers::Credentials;

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
        let c = Gateway::from_yaml_with_env(MIN, &env).expect("valid");
        assert_eq!(c.providers.len(), 2);
        assert!(matches!(c.providers[0].credentials, Credentials::Key(_)));
        assert!(
            matches!(&c.providers[1].credentials, Credentials::Missing { env } if env == "AZURE_KEY")
        );
        assert_eq!(c.providers[0].endpoint.base_path, "/v1");
        assert_eq!(c.providers[0].endpoint.authority, "api.openai.com");
        assert_eq!(c.providers[0].endpoint.port, 443);
        assert_eq!(
            c.catalog.models["gpt-4o"].routes[1].deployment.as_deref(),
            Some("my-4o")
        );
    }

    #[test]
    fn every_shipped_config_loads() {
        Gateway::from_yaml_with_env(DEFAULT_CONFIG, &no_env).expect("default config");
        Gateway::from_yaml_with_env(DEMO_CONFIG, &no_env).expect("demo config");
    }

    #[test]
    fn unknown_provider_and_kind_are_named_with_their_path() {
        let bad = MIN.replace("- provider: azure", "- provider: opnai");
        let e = Gateway::from_yaml_with_env(&bad, &no_env).expect_err("must fail");
        assert_eq!(e.path, "models.gpt-4o[1].provider");
        assert_eq!(
            e.to_string(),
            "models.gpt-4o[1].provider: unknown provider `opnai`"
        );
        let bad = MIN.replace("kind: azure", "kind: azur");
        let e = Gateway::from_yaml_with_env(&bad, &no_env).expect_err("kind");
        assert_eq!(e.path, "providers[1].kind");
        assert!(e.message.contains("expected openai, azure,"), "{e}");
        let bad = MIN.replace("    api-version: \"2024-10-21\"\n", "");
        let e = Gateway::from_yaml_with_env(&bad, &no_env).expect_err("api-version");
        assert_eq!(e.path, "providers[1].api-version");
    }

    #[test]
    fn secrets_never_print() {
        let env = |_: &str| Some("sk-very-secret".to_string());
        let c = Gateway::from_yaml_with_env(MIN, &env).expect("valid");
        assert!(!format!("{c:?}").contains("sk-very-secret"));
        assert_eq!(c.masker().text("x sk-very-secret y"), "x *** y");
    }

    #[test]
    fn bedrock_region_url_and_credentials() {
        let yaml = "listen: [\"127.0.0.1:8080\"]\nproviders:\n  - {name: bedrock, kind: bedrock}\n";
        // No region anywhere: an error that says where to put one.
        let e = Gateway::from_yaml_with_env(yaml, &no_env).expect_err("region");
        assert_eq!(e.path, "providers[0].region");
        let env = |n: &str| match n {
            "AWS_REGION" => Some("eu-west-1".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let c = Gateway::from_yaml_with_env(yaml, &env).expect("valid");
        let p = &c.providers[0];
        assert_eq!(p.endpoint.host, "bedrock-runtime.eu-west-1.amazonaws.com");
        assert!(p.endpoint.tls);
        let Credentials::Aws(aws) = &p.credentials else {
            panic!("{:?}", p.credentials)
        };
        assert_eq!(aws.access_key_id, "AKID");
        assert!(!aws.has_session_token());
        assert!(!format!("{p:?}").contains("s3cr3t"), "never printed");
        // The built-in catalog's bedrock routes apply.
        assert_eq!(
            c.catalog.models["claude-3-7-sonnet-20250219"].routes[0].id,
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
        );
        // Without credentials the provider is skipped, naming the variable.
        let region_only = |n: &str| (n == "AWS_REGION").then(|| "us-east-1".to_string());
        let c = Gateway::from_yaml_with_env(yaml, &region_only).expect("valid");
        assert!(matches!(
            &c.providers[0].credentials,
            Credentials::Missing { env } if env == "AWS_ACCESS_KEY_ID"
        ));
        let bad = yaml.replace("kind: bedrock}", "kind: bedrock, region: \"us east\"}");
        assert_eq!(
            Gateway::from_yaml_with_env(&bad, &env)
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
        let c = Gateway::from_yaml_with_env(DEFAULT_CONFIG, &env).expect("loads");
        let i = c.providers.index_of("vertex").expect("vertex");
        assert!(
            matches!(&c.providers[i].credentials, Credentials::Unusable { reason } if reason.contains("/nonexistent/adc.json")),
            "{:?}",
            c.providers[i].credentials
        );
        let plan = crate::plan::plan("claude-sonnet-4/vertex", &c).expect("plan");
        assert!(plan.skipped[0]
            .reason
            .contains("GOOGLE_APPLICATION_CREDENTIALS"));
        let yaml = "listen: [\"127.0.0.1:8080\"]\nproviders:\n  - {name: v, kind: vertex, region: us-east5, credentials-file: /nonexistent/sa.json}\n";
        let e = Gateway::from_yaml_with_env(yaml, &no_env).expect_err("explicit file");
        assert_eq!(e.path, "providers[0].credentials-file");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/vertex-test-service-account.json"
        );
        let ok = yaml.replace("/nonexistent/sa.json", fixture);
        let c = Gateway::from_yaml_with_env(&ok, &no_env).expect("loads");
        assert_eq!(
            c.providers[0].endpoint.host,
            "us-east5-aiplatform.googleapis.com"
        );
        assert!(matches!(
            c.providers[0].credentials,
            Credentials::ServiceAccount(_)
        ));
        let adapter = format!("{:?}", c.providers[0].adapter);
        assert!(
            adapter.contains("\"detour-test\""),
            "project from the key file: {adapter}"
        );
        assert!(!format!("{:?}", c.providers[0]).contains("PRIVATE KEY"));
    }
}
