//! Azure OpenAI: `{base}/openai/deployments/{deployment}/chat/completions?api-version=…`, the
//! key in `api-key`, the body passed through with only `model` replaced. Routes may name a
//! deployment (default: the model id) and an api-version (default: the provider's).

use super::{endpoint, Adapter, Auth, Built, Call, Credentials, Env, Prepared, RouteFields, Wire};
use crate::config::{ConfigError, ProviderConfig};
use crate::text::{path_segment, query_value};
use pingora_http::RequestHeader;

#[derive(Debug)]
pub struct Azure {
    api_version: String,
}

pub(super) fn build(p: &ProviderConfig, env: Env<'_>) -> Result<Built, ConfigError> {
    let api_version = p.api_version.clone().ok_or_else(|| {
        p.error(
            "api-version",
            "an azure provider needs an api-version (e.g. 2024-10-21)",
        )
    })?;
    Ok(Built {
        adapter: Box::new(Azure { api_version }),
        endpoint: endpoint(p, None)?,
        credentials: Credentials::from_env(p, env),
        token_endpoint: None,
    })
}

impl Adapter for Azure {
    fn route_fields(&self) -> RouteFields {
        RouteFields::Deployment
    }

    fn prepare(&self, call: &Call<'_>) -> Result<Prepared, String> {
        call.req.chat()?;
        let r = &call.route;
        let version = r.api_version.unwrap_or(&self.api_version);
        Ok(Prepared {
            path: format!(
                "{}/openai/deployments/{}/chat/completions?api-version={}",
                call.base_path,
                path_segment(r.deployment.unwrap_or(r.id)),
                query_value(version)
            ),
            body: call.req.body_for_model(r.id),
            wire: Wire::OpenAi,
        })
    }

    fn authorize(&self, h: &mut RequestHeader, auth: &Auth<'_>) -> pingora_core::Result<()> {
        match auth {
            Auth::Key(k) => h.insert_header("api-key", *k),
            Auth::Token(t) => super::bearer(h, t),
            Auth::None | Auth::Aws(_) => Ok(()),
        }
    }
}
