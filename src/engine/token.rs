//! OAuth2 access tokens for service-account credentials: minted at the account's token
//! endpoint (the JWT bearer grant), cached per account. Runs inside an attempt, before its
//! request is built.

use super::{short_error, Engine, FailClass, Failure};
use crate::config::Secret;
use crate::providers::vertex::{self, TokenSource};
use crate::providers::wire::unix_now;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// A cached access token is renewed when less than this is left of its life.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(300);
/// The longest a minted token is cached, whatever `expires_in` says (Google's last an hour).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Engine {
    /// One token request at provider `i`'s token endpoint: its status and (at most 64 KiB of)
    /// its answer.
    async fn token_exchange(
        &self,
        i: usize,
        auth: &TokenSource,
    ) -> Result<(u16, Vec<u8>), (FailClass, String)> {
        let ep = &auth.endpoint;
        let peer = self
            .token_peers
            .get(i)
            .await
            .map_err(|m| (FailClass::ConnectError, m))?;
        let assertion = auth
            .account
            .assertion(unix_now())
            .map_err(|m| (FailClass::BadResponse, m))?;
        let body = Bytes::from(vertex::token_request_body(&assertion));
        let exchange = async {
            let mut h = pingora_http::RequestHeader::build("POST", ep.base_path.as_bytes(), None)?;
            h.insert_header(http::header::HOST, ep.authority.as_str())?;
            h.insert_header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )?;
            h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            h.insert_header(http::header::ACCEPT, "application/json")?;
            let (mut up, _) = self.connector.get_http_session(&peer).await?;
            up.write_request_header(Box::new(h)).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            let status = up.response_header().map(|r| r.status.as_u16()).unwrap_or(0);
            let mut answer = Vec::new();
            while let Some(c) = up.read_response_body().await? {
                answer.extend_from_slice(&c);
                if answer.len() > 64 * 1024 {
                    break;
                }
            }
            Ok::<_, pingora_error::BError>((status, answer))
        };
        let budget = auth.timeouts.connect + auth.timeouts.first_byte.min(Duration::from_secs(30));
        match tokio::time::timeout(budget, exchange).await {
            Err(_) => Err((FailClass::FirstByteTimeout, "timed out".into())),
            Ok(Err(e)) => Err((
                FailClass::ConnectError,
                format!("token endpoint unreachable: {}", short_error(&e)),
            )),
            Ok(Ok(x)) => Ok(x),
        }
    }

    /// An access token of `auth` (the operator's service account at provider `i`, or a
    /// caller's own there): its cached one while it has more than [`TOKEN_RENEW_BEFORE`] left,
    /// else a new one from provider `i`'s token endpoint (one request at a time per account;
    /// concurrent attempts wait for it). A refused grant counts as a 401.
    pub(super) async fn access_token(
        &self,
        i: usize,
        auth: &TokenSource,
    ) -> Result<Secret, Failure> {
        let mut cached = auth.cache.lock().await;
        if let Some((token, expires)) = &*cached {
            if *expires > crate::durations::later(Instant::now(), TOKEN_RENEW_BEFORE) {
                return Ok(token.clone());
            }
        }
        let fail = |class, status, message: String| {
            Failure::new(class, status, format!("{}: {message}", auth.label))
        };
        let (status, answer) = self
            .token_exchange(i, auth)
            .await
            .map_err(|(c, m)| fail(c, None, m))?;
        if status != 200 {
            let reason = vertex::token_error(&answer);
            // A refused grant is a credentials problem, whatever status carries it.
            let (class, st) = if (400..500).contains(&status) {
                (FailClass::AuthError, 401)
            } else {
                (FailClass::of_status(status), status)
            };
            return Err(fail(
                class,
                Some(st),
                format!("the token endpoint answered {status} ({reason})"),
            ));
        }
        let (token, lifetime) =
            vertex::parse_token(&answer).map_err(|m| fail(FailClass::BadResponse, None, m))?;
        // A token is a credential like any key: masked wherever provider text is shown.
        self.masker.add_minted(&token);
        let token = Secret::new(token);
        // `expires_in` is the token endpoint's word: capped, and never an overflow.
        let lifetime = Duration::from_secs(lifetime).min(MAX_TOKEN_LIFETIME);
        *cached = Some((
            token.clone(),
            crate::durations::later(Instant::now(), lifetime),
        ));
        Ok(token)
    }
}
