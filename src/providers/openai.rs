//! OpenAI and every OpenAI-compatible API: `{base}/chat/completions`, `Authorization: Bearer`,
//! the body passed through byte for byte with only `model` replaced.

use super::{bearer, endpoint, Adapter, Auth, Built, Call, Credentials, Env, Prepared, Wire};
use crate::config::{ConfigError, ProviderConfig};
use pingora_http::RequestHeader;

#[derive(Debug)]
pub struct OpenAi;

pub(super) fn build(p: &ProviderConfig, env: Env<'_>) -> Result<Built, ConfigError> {
    Ok(Built {
        adapter: Box::new(OpenAi),
        endpoint: endpoint(p, None)?,
        credentials: Credentials::from_env(p, env),
        token_endpoint: None,
    })
}

impl Adapter for OpenAi {
    fn prepare(&self, call: &Call<'_>) -> Result<Prepared, String> {
        call.req.chat()?;
        Ok(Prepared {
            path: format!("{}/chat/completions", call.base_path),
            body: call.req.body_for_model(call.route.id),
            wire: Wire::OpenAi,
        })
    }

    fn authorize(&self, h: &mut RequestHeader, auth: &Auth<'_>) -> pingora_core::Result<()> {
        match auth {
            Auth::Key(k) | Auth::Token(k) => bearer(h, k),
            Auth::None | Auth::Aws(_) => Ok(()),
        }
    }
}
