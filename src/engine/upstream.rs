//! Attempt → `HttpPeer` and upstream request header.
//!
//! Host names are resolved here, asynchronously and cached (`HttpPeer::new` resolves blocking and
//! panics on a DNS failure, so it is only ever handed an address). IP-literal endpoints never
//! touch DNS.

use crate::config::{Endpoint, Timeouts};
use crate::providers::{Auth, Provider, Signing};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a resolved address is used before it is looked up again.
const DNS_TTL: Duration = Duration::from_secs(30);
/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(90);

/// Where peers go: an endpoint, its connect timeout, and whether to offer HTTP/2.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub endpoint: Endpoint,
    pub timeouts: Timeouts,
    pub http2: bool,
}

impl PeerSpec {
    pub fn of(p: &Provider) -> PeerSpec {
        PeerSpec {
            endpoint: p.endpoint.clone(),
            timeouts: p.timeouts,
            http2: p.http2,
        }
    }
}

/// A resolved peer and when its address expires (`None`: an IP literal, never).
type Slot = RwLock<Option<(HttpPeer, Option<Instant>)>>;

/// Peers per endpoint (by index), rebuilt when their DNS entry expires.
pub struct Peers {
    specs: Vec<Option<PeerSpec>>,
    slots: Vec<Slot>,
}

fn build_peer(p: &PeerSpec, addr: SocketAddr) -> HttpPeer {
    let e = &p.endpoint;
    let mut peer = HttpPeer::new(addr, e.tls, e.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(p.timeouts.connect);
    o.total_connection_timeout = Some(p.timeouts.connect);
    o.idle_timeout = Some(POOL_IDLE);
    if e.tls && p.http2 {
        o.set_http_version(2, 1);
        o.max_h2_streams = 100;
    }
    peer
}

impl Peers {
    /// Peers for `specs` (`None`: index `i` has no endpoint here).
    pub fn new(specs: Vec<Option<PeerSpec>>) -> Peers {
        let slots = specs
            .iter()
            .map(|s| {
                let fixed = s.as_ref().and_then(|p| {
                    let ip = p.endpoint.host.parse::<IpAddr>().ok()?;
                    Some((build_peer(p, SocketAddr::new(ip, p.endpoint.port)), None))
                });
                RwLock::new(fixed)
            })
            .collect();
        Peers { specs, slots }
    }

    /// The peer of endpoint `i`, resolving its host if the cached address expired. A failed
    /// lookup falls back to the last known address, if any.
    pub async fn get(&self, i: usize) -> Result<HttpPeer, String> {
        let (Some(slot), Some(Some(p))) = (self.slots.get(i), self.specs.get(i)) else {
            return Err("no such endpoint".into());
        };
        let stale = match slot.read() {
            Ok(g) => match &*g {
                Some((peer, None)) => return Ok(peer.clone()),
                Some((peer, Some(exp))) if *exp > Instant::now() => return Ok(peer.clone()),
                Some((peer, _)) => Some(peer.clone()),
                None => None,
            },
            Err(_) => None,
        };
        let e = &p.endpoint;
        let looked_up = tokio::time::timeout(
            p.timeouts.connect,
            tokio::net::lookup_host((e.host.as_str(), e.port)),
        )
        .await;
        // Prefer IPv4: hosts commonly publish AAAA records that a container cannot route.
        let addr = match looked_up {
            Ok(Ok(addrs)) => {
                let all: Vec<SocketAddr> = addrs.collect();
                all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
            }
            _ => None,
        };
        match addr {
            Some(addr) => {
                let peer = build_peer(p, addr);
                if let Ok(mut g) = slot.write() {
                    *g = Some((peer.clone(), Some(Instant::now() + DNS_TTL)));
                }
                Ok(peer)
            }
            None => stale.ok_or_else(|| format!("DNS lookup of {} failed", e.host)),
        }
    }
}

/// Client headers never forwarded: hop-by-hop, framing, detour's own controls, and every
/// header that carries a credential for some provider (OpenAI's, Azure's, Anthropic's,
/// Google's, AWS's, Azure API Management's): each provider gets detour's credentials for it,
/// never a client's, and never one meant for another cloud.
fn forwardable(name: &str) -> bool {
    !crate::headers::hop_by_hop(name)
        && !matches!(
            name,
            "host"
                | "content-length"
                | "expect"
                | "authorization"
                | "api-key"
                | "x-api-key"
                | "x-goog-api-key"
                | "ocp-apim-subscription-key"
                | "cookie"
                | "accept-encoding"
                | "content-type"
                | "x-request-id"
        )
        && !name.starts_with("x-detour-")
        && !name.starts_with("x-amz-")
}

/// The client's headers that every attempt forwards, copied once per request (usually none:
/// a copy of the whole header per request cost throughput and memory).
pub type Forwarded = Vec<(http::HeaderName, http::HeaderValue)>;

/// The client's forwardable headers, in order.
pub fn forwarded(client: &RequestHeader) -> Forwarded {
    client
        .headers
        .iter()
        .filter(|(name, _)| forwardable(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The upstream request header for one attempt: the forwarded client headers and the framing,
/// then the adapter's credentials and kind headers, the provider's configured headers, and last
/// the adapter's signature (which covers all of them).
pub fn request_header(
    p: &Provider,
    path: &str,
    client: &[(http::HeaderName, http::HeaderValue)],
    body: &[u8],
    request_id: &str,
    auth: &Auth<'_>,
) -> pingora_core::Result<RequestHeader> {
    let mut h = RequestHeader::build("POST", path.as_bytes(), Some(8 + client.len()))?;
    for (name, value) in client {
        h.append_header(name.clone(), value.clone())?;
    }
    h.insert_header(http::header::HOST, p.endpoint.authority.as_str())?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header("x-request-id", request_id)?;
    p.adapter.authorize(&mut h, auth)?;
    for (name, value) in &p.headers {
        h.insert_header(name.clone(), value.clone())?;
    }
    let signing = Signing {
        endpoint: &p.endpoint,
        path,
        body,
        auth,
    };
    p.adapter
        .sign(&mut h, &signing)
        .map_err(|e| pingora_error::Error::explain(pingora_error::ErrorType::InternalError, e))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Gateway;
    use crate::providers::{Call, Route};

    #[test]
    fn header_rewrites_auth_and_drops_hop_by_hop() {
        let yaml = r#"
listen: ["127.0.0.1:8080"]
providers:
  - {name: az, kind: azure, base-url: "https://res.example.com:8443", api-key-env: K, api-version: "2024-10-21", headers: {x-extra: "1"}}
models:
  gpt-4o: [{provider: az, deployment: dep}]
"#;
        let env = |_: &str| Some("provider-key".to_string());
        let c = Gateway::from_yaml_with_env(yaml, &env).expect("valid");
        let plan = crate::plan::plan("gpt-4o", &c).expect("plan");
        let mut client = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("h");
        for (k, v) in [
            ("authorization", "Bearer client-key"),
            ("connection", "keep-alive"),
            ("host", "gateway"),
            ("accept-encoding", "gzip"),
            ("x-detour-timeout", "5"),
            ("openai-beta", "assistants=v2"),
            ("x-goog-api-key", "client-google-key"),
            ("x-amz-security-token", "client-aws-token"),
            ("x-api-key", "client-anthropic-key"),
            ("api-key", "client-azure-key"),
            ("ocp-apim-subscription-key", "client-apim-key"),
        ] {
            client.append_header(k, v).expect("h");
        }
        let p = &c.providers[0];
        let req = crate::api::ChatRequest::parse(bytes::Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[]}"#,
        ))
        .expect("request");
        let t = &plan.targets[0];
        let call = Call {
            route: Route {
                id: &t.route.id,
                deployment: t.route.deployment.as_deref(),
                api_version: t.route.api_version.as_deref(),
                max_output_tokens: None,
            },
            req: &req,
            stream: false,
            base_path: &p.endpoint.base_path,
            project: None,
        };
        let prepared = p.adapter.prepare(&call).expect("prepared");
        let h = request_header(
            p,
            &prepared.path,
            &forwarded(&client),
            &[b' '; 42],
            "rid",
            &Auth::Key("provider-key"),
        )
        .expect("header");
        assert_eq!(
            h.uri.to_string(),
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
        );
        let get = |n: &str| h.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("api-key"), Some("provider-key"));
        assert_eq!(get("authorization"), None);
        assert_eq!(get("connection"), None);
        assert_eq!(get("accept-encoding"), None);
        assert_eq!(get("x-detour-timeout"), None);
        assert_eq!(get("host"), Some("res.example.com:8443"));
        assert_eq!(get("content-length"), Some("42"));
        assert_eq!(get("openai-beta"), Some("assistants=v2"));
        for n in [
            "x-goog-api-key",
            "x-amz-security-token",
            "x-api-key",
            "ocp-apim-subscription-key",
        ] {
            assert_eq!(get(n), None, "{n}");
        }
        assert_eq!(get("x-extra"), Some("1"));
    }
}
