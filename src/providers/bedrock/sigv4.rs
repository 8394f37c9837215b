//! SigV4 for Bedrock: the AWS credentials as the signer's identity, and the signature of one
//! request (the AWS-maintained `aws-sigv4` crate).

use std::time::SystemTime;

/// AWS credentials from the standard environment variables, held as the signer's identity,
/// built once at start-up.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    secret_access_key: crate::config::Secret,
    session_token: Option<crate::config::Secret>,
    identity: aws_smithy_runtime_api::client::identity::Identity,
}

impl AwsCredentials {
    pub fn new(
        access_key_id: String,
        secret_access_key: crate::config::Secret,
        session_token: Option<crate::config::Secret>,
    ) -> Self {
        let identity = aws_credential_types::Credentials::new(
            access_key_id.clone(),
            secret_access_key.expose().to_string(),
            session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "detour-env",
        )
        .into();
        AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
            identity,
        }
    }

    pub fn has_session_token(&self) -> bool {
        self.session_token.is_some()
    }

    /// Everything here that must never reach a client or a log (the key id too: AWS error
    /// texts quote it).
    pub fn to_mask(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.access_key_id.as_str()),
            Some(self.secret_access_key.expose()),
        ]
        .into_iter()
        .chain(std::iter::once(
            self.session_token.as_ref().map(|t| t.expose()),
        ))
        .flatten()
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(***)")
    }
}

/// SigV4 headers for one request (`x-amz-date`, `authorization`, and `x-amz-security-token`
/// with a session token), signed for service `bedrock` in `region`. `headers` are the request's
/// headers to sign (host and content-type); the URL is the full request URL.
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{
        sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings,
    };
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&creds.identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sigv4_sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}
