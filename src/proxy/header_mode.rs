//! The header mode on the request side: which mode a request is in (`Helicone-Target-Url`,
//! `Helicone-Fallbacks`, or neither), its checks, and the single target's native proxy path.
//!
//! One target needs no retry, so it runs on Pingora's own proxy path: `request_filter` vets the
//! URL and stores a [`Direct`]; `upstream_peer` hands Pingora its pinned peer;
//! `upstream_request_filter` rewrites path, host and headers; bodies of any size stream through
//! unbuffered. A fallback list needs its body replayed, so it is read (within the body limits)
//! and served by the engine (`engine/urls.rs`).

use super::{Ctx, Serving};
use crate::api::GatewayError;
use crate::engine::ledger::{AttemptLog, Via};
use crate::engine::urls::{target_path, url_peer, UNAPPROVED};
use crate::headers::{connection_named, steering};
use crate::target::fallbacks::reserved_header;
use crate::target::fallbacks::{self, Entry};
use crate::target::{vet, TargetUrl};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::Instant;

pub const TARGET_URL: &str = "helicone-target-url";

/// How a header-mode request names its targets.
pub enum Mode {
    Target(TargetUrl),
    Fallbacks(Vec<Entry>),
}

/// A single header-mode target, vetted: where Pingora's proxy path sends the request.
pub struct Direct {
    pub peer: HttpPeer,
    pub url: TargetUrl,
    pub via: Via,
    pub started: Instant,
}

fn invalid(header: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidHeader {
        header,
        message: message.into(),
    }
}

/// The request's header mode, from its headers (`None`: neither header, a detour route). Both
/// header-mode headers at once is a 400.
pub fn mode(req: &RequestHeader, max_entries: usize) -> Result<Option<Mode>, GatewayError> {
    let url = req.headers.get(TARGET_URL);
    let list = req.headers.get(fallbacks::HEADER);
    if req.headers.get_all(TARGET_URL).iter().count() > 1
        || req.headers.get_all(fallbacks::HEADER).iter().count() > 1
    {
        return Err(invalid(
            "Helicone-Target-Url",
            "Helicone-Target-Url and Helicone-Fallbacks may each be sent once",
        ));
    }
    match (url, list) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(
            "Helicone-Target-Url",
            "Send either Helicone-Target-Url or Helicone-Fallbacks, not both: drop \
             Helicone-Target-Url to use the fallback list, or drop Helicone-Fallbacks",
        )),
        (Some(v), None) => {
            let s = v
                .to_str()
                .map_err(|_| invalid("Helicone-Target-Url", "Helicone-Target-Url must be ASCII"))?;
            TargetUrl::parse(s.trim())
                .map(|u| Some(Mode::Target(u)))
                .map_err(|m| invalid("Helicone-Target-Url", format!("Helicone-Target-Url {m}")))
        }
        (None, Some(v)) => fallbacks::parse(v.as_bytes(), max_entries)
            .map(|e| Some(Mode::Fallbacks(e)))
            .map_err(|m| invalid("Helicone-Fallbacks", m)),
    }
}

/// Whether a body's `model` is a detour chain (a list, an exclusion, or a `model/provider`
/// pin to a configured provider) rather than a model id for the target.
pub fn names_a_chain(body: &[u8], providers: &crate::providers::Providers) -> bool {
    first_model(body).is_some_and(|m| is_chain(&m, providers))
}

fn is_chain(model: &str, providers: &crate::providers::Providers) -> bool {
    model.contains(',')
        || model.trim_start().starts_with('!')
        || model
            .rsplit_once('/')
            .is_some_and(|(_, p)| providers.iter().any(|x| x.name == p.trim()))
}

/// The first `"model": "..."` string in a JSON body, which may be cut anywhere (the first part
/// of a streamed body). Escapes other than `\"` and `\\` are kept as written.
pub fn first_model(body: &[u8]) -> Option<String> {
    let key = b"\"model\"";
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&body[from..], key).map(|i| from + i) {
        from = i + key.len();
        // A key, not text inside a string (where its quotes would be escaped).
        if i > 0 && body[i - 1] == b'\\' {
            continue;
        }
        let rest = &body[from..];
        let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
        let Some(rest) = rest.strip_prefix(b"\"") else {
            continue;
        };
        let mut out = Vec::new();
        let mut it = rest.iter();
        while let Some(&b) = it.next() {
            match b {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => out.push(*it.next()?),
                _ => out.push(b),
            }
        }
        return None;
    }
    None
}

/// The caller a limit counts against: its gateway key when it has one, else its address.
pub fn caller(s: &Session, key: &str) -> String {
    if !key.is_empty() {
        return format!("key:{key}");
    }
    s.client_addr()
        .and_then(|a| a.as_inet())
        .map_or_else(|| "unknown".into(), |a| a.ip().to_string())
}

impl Serving {
    /// `Helicone-Target-Url`: vet the target and count it; `Ok(Some)` goes to Pingora's proxy
    /// path, an `Err` is written to the client and nothing is sent.
    pub(super) async fn direct(
        &self,
        s: &mut Session,
        url: TargetUrl,
        key: &str,
    ) -> Result<Box<Direct>, GatewayError> {
        let gw = self.gw();
        let hm = &gw.cfg.header_mode;
        if peek_first_chunk(s)
            .await?
            .is_some_and(|c| names_a_chain(&c, &gw.providers))
        {
            return Err(invalid(
                "Helicone-Target-Url",
                "The body's `model` is a detour model chain and Helicone-Target-Url names a \
                 target too: drop Helicone-Target-Url to use the chain, or give a plain model id",
            ));
        }
        let label = gw.approved.label(&url.host).map(str::to_string);
        if label.is_none() {
            // Counted before any DNS lookup: a caller over its limit resolves nothing.
            self.engine.admit(&caller(s, key), &url.limit_key()).await?;
        }
        let addr = vet(&url, &hm.policy, hm.timeouts.connect)
            .await
            .map_err(GatewayError::TargetRefused)?;
        Ok(Box::new(Direct {
            peer: url_peer(&url, addr, &hm.timeouts),
            via: Via::Url(label.unwrap_or_else(|| UNAPPROVED.into())),
            url,
            started: Instant::now(),
        }))
    }

    /// `Helicone-Fallbacks`: read the body (it is replayed to each entry) and serve the list.
    pub(super) async fn fallback_list(
        &self,
        s: &mut Session,
        ctx: &mut Ctx,
        entries: Vec<Entry>,
    ) -> Result<(), GatewayError> {
        let (body, _hold) = self.read_body(s).await?;
        if names_a_chain(&body, &self.gw().providers) {
            return Err(invalid(
                "Helicone-Fallbacks",
                "The body's `model` is a detour model chain and Helicone-Fallbacks names \
                 targets too: drop Helicone-Fallbacks to use the chain, or give a plain model id",
            ));
        }
        let caller = caller(s, &ctx.log.key);
        self.engine
            .serve_urls(s, &mut ctx.log, &entries, body, &caller)
            .await
    }
}

/// The first chunk of a JSON request body, read before anything is sent so its `model` can be
/// checked. It stays in Pingora's retry buffer (64 KiB, one read's most), which the proxy path
/// sends first before streaming the rest, so the body still goes through whole and unbuffered.
/// Skipped (`None`) for a body that is not JSON, and when the client waits for
/// `100 Continue` (the target gives that).
async fn peek_first_chunk(s: &mut Session) -> Result<Option<bytes::Bytes>, GatewayError> {
    let h = &s.req_header().headers;
    let json = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !json || h.contains_key(http::header::EXPECT) || s.is_body_empty() {
        return Ok(None);
    }
    s.as_mut().enable_retry_buffering();
    let read = tokio::time::timeout(PEEK_TIMEOUT, s.read_request_body()).await;
    let chunk = match read {
        Err(_) => {
            return Err(GatewayError::ClientRead(
                "timed out reading the body".into(),
            ))
        }
        Ok(Err(e)) => return Err(GatewayError::ClientRead(e.etype().as_str().to_string())),
        Ok(Ok(c)) => c,
    };
    if s.as_ref().retry_buffer_truncated() {
        // Cannot happen with Pingora's 64 KiB reads; sending now would lose the chunk.
        return Err(GatewayError::ClientRead(
            "the body's first part was too large".into(),
        ));
    }
    Ok(chunk)
}

/// How long the client may take to send the first part of its body.
const PEEK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The request Pingora sends to a [`Direct`] target: the target's path prefix before the
/// client's path, its host, and the client's headers minus hop-by-hop and steering headers.
pub fn rewrite(up: &mut RequestHeader, d: &Direct, request_id: &str) -> pingora_core::Result<()> {
    let path = target_path(&d.url, &up.uri);
    let uri: http::Uri = path.parse().map_err(|_| {
        pingora_error::Error::explain(pingora_error::ErrorType::InternalError, "bad target path")
    })?;
    up.set_uri(uri);
    let drop: Vec<http::HeaderName> = up
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            // Pingora frames the body itself: its length headers stay as the client sent them,
            // and so does `Expect: 100-continue`, which the target answers through Pingora.
            reserved_header(n) && !matches!(n, "content-length" | "transfer-encoding" | "expect")
        })
        .cloned()
        .collect();
    for n in drop {
        up.remove_header(&n);
    }
    up.insert_header(http::header::HOST, d.url.authority.as_str())?;
    if !up.headers.contains_key("x-request-id") {
        up.insert_header("x-request-id", request_id)?;
    }
    Ok(())
}

/// The client's response from a [`Direct`] target: as it came (minus headers only detour
/// sets), plus detour's: the request id, the target's host, one attempt.
pub fn mark(resp: &mut ResponseHeader, host: &str, request_id: &str) -> pingora_core::Result<()> {
    let hop = connection_named(&resp.headers);
    let drop: Vec<http::HeaderName> = resp
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            steering(n) || n == "proxy-authenticate" || hop.iter().any(|h| h == n)
        })
        .cloned()
        .collect();
    for n in drop {
        resp.remove_header(&n);
    }
    resp.insert_header("x-request-id", request_id)?;
    resp.insert_header("x-detour-provider", host)?;
    resp.insert_header("x-detour-attempts", 1)?;
    Ok(())
}

impl Serving {
    /// Log the direct attempt once its outcome is known (`status`: the response's, or `None`
    /// when none came: `error` says why).
    pub(super) fn log_direct(&self, ctx: &mut Ctx, status: Option<u16>, error: Option<String>) {
        let Some(d) = ctx.direct.as_ref() else { return };
        if !ctx.log.attempts.is_empty() {
            return;
        }
        let outcome = match (status, &error) {
            (Some(s), None) if s < 400 => "success",
            (Some(_), None) => "client_error",
            _ => "connect_error",
        };
        let a = AttemptLog {
            via: d.via.clone(),
            source: d.url.origin(),
            outcome,
            status,
            error,
            duration: d.started.elapsed(),
            pay: None,
            ..AttemptLog::default()
        };
        self.engine.log(&mut ctx.log, a);
        if let Some(s) = status {
            ctx.log.status = s;
        }
        ctx.log.outcome = outcome;
    }
}

#[cfg(test)]
mod tests {
    use super::first_model;

    #[test]
    fn the_first_model_of_a_whole_or_cut_body() {
        let m = |b: &str| first_model(b.as_bytes());
        assert_eq!(
            m(r#"{"model":"gpt-4o,claude"}"#).as_deref(),
            Some("gpt-4o,claude")
        );
        assert_eq!(
            m(r#"{ "model" :  "a\"b" , "x": 1"#).as_deref(),
            Some("a\"b")
        );
        // Text that mentions "model" inside a string is not the key.
        let quoted = r#"{"messages":[{"content":"the \"model\": \"x,y\""}],"model":"gpt-4o"}"#;
        assert_eq!(m(quoted).as_deref(), Some("gpt-4o"));
        assert_eq!(m(r#"{"model": "gpt-4o"#), None, "cut inside the value");
        assert_eq!(m(r#"{"model": 5, "x": "y"}"#), None);
        assert_eq!(m(r#"{"messages": []}"#), None);
        assert_eq!(m(r#"{"model""#), None);
    }
}
