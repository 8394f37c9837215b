//! The header mode's fallback list (`Helicone-Fallbacks`): the same engine, with targets that
//! are vetted URLs instead of catalog routes. Each entry gets the client's request (its method,
//! path, headers and body, with the entry's headers and `bodyKeyOverride` applied) in order; a
//! status in the entry's `onCodes` moves on, and so (by default) does a connect failure or a
//! time-out before the response header. The first response that does not move on — or the
//! last entry's, whatever it is — goes to the client as it comes, with
//! `Helicone-Fallback-Index`.

use super::classify::{FailClass, Failure};
use super::ledger::{AttemptLog, Via};
use super::relay::{commit, Delivered, Upstream};
use super::{Engine, RequestLog};
use crate::api::GatewayError;
use crate::headers::{connection_named, hop_by_hop, steering};
use crate::target::fallbacks::{merge, reserved_header, Entry};
use crate::target::{vet, TargetUrl};
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

/// The response header naming the entry that answered (0-based).
pub const INDEX_HEADER: &str = "helicone-fallback-index";

/// The label for an unapproved host in metrics and logs.
pub const UNAPPROVED: &str = "unapproved";

/// Upstream response headers not passed on: hop-by-hop and framing (set at commit), and the
/// headers detour itself sets (a target may not pass for detour).
fn strip_from_upstream(name: &str) -> bool {
    hop_by_hop(name) || name == "content-length" || steering(name)
}

/// A peer for a vetted address: TLS with the URL's host as SNI, the header mode's timeouts.
pub fn url_peer(url: &TargetUrl, addr: SocketAddr, t: &crate::config::Timeouts) -> HttpPeer {
    // An IP target's certificate is checked against that IP (rustls: no SNI is sent for it);
    // an empty SNI would mean "verify nothing" to Pingora's connector.
    let sni = match url.ip {
        Some(ip) => ip.to_string(),
        None => url.host.clone(),
    };
    let mut peer = HttpPeer::new(addr, url.tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(t.connect);
    o.total_connection_timeout = Some(t.connect);
    o.read_timeout = Some(t.first_byte.max(t.idle));
    o.idle_timeout = Some(super::upstream::POOL_IDLE);
    peer
}

/// The path the target gets: its own prefix, then the client's path and query.
pub fn target_path(url: &TargetUrl, client: &http::Uri) -> String {
    let pq = client.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{}{pq}", url.base_path)
}

impl Engine {
    /// Serve a request through its fallback list. `Ok`: a response was written. `Err`: an
    /// error for the caller to write (all entries failed, a rate limit) or not (client gone).
    pub async fn serve_urls(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        entries: &[Entry],
        body: Bytes,
        caller: &str,
    ) -> Result<(), GatewayError> {
        let begun = Instant::now();
        let deadline = crate::durations::later(begun, self.request_deadline(s.req_header()));
        let tree = self.override_base(entries, &body)?;
        let hm = &self.gw.cfg.header_mode;
        // An unapproved host counts once per request, however many entries name it.
        let mut counted: Vec<String> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let last = i + 1 == entries.len();
            let started = Instant::now();
            if started >= deadline {
                return Err(self.all_failed(log, true));
            }
            let label = self.gw.approved.label(&e.url.host).map(str::to_string);
            let via = Via::Url(label.clone().unwrap_or_else(|| UNAPPROVED.into()));
            let source = format!("[{i}] {}", e.url.origin());
            let key = e.url.limit_key();
            if label.is_none() && !counted.contains(&key) {
                // Counted before any DNS lookup: a caller over its limit resolves nothing.
                self.admit(caller, &key).await?;
                counted.push(key);
            }
            let addr = match vet(&e.url, &hm.policy, hm.timeouts.connect).await {
                Ok(a) => a,
                Err(why) => {
                    let f = Failure::new(FailClass::TargetRefused, None, format!("refused: {why}"));
                    self.failed_at(log, via, source, f, started, !last);
                    continue;
                }
            };
            let body_i = entry_body(tree.as_ref(), e, &body);
            let header = self.url_header(s.req_header(), e, &body_i, &log.request_id)?;
            let peer = url_peer(&e.url, addr, &hm.timeouts);
            let sent = self
                .send(&peer, &hm.timeouts, &header, &body_i, deadline)
                .await;
            let (up, peer) = match sent {
                Ok((up, peer, _connected)) => (up, peer),
                Err(f) => {
                    let on = self.moves_on_after(f.class);
                    self.failed_at(log, via, source, f, started, on && !last);
                    if on {
                        continue;
                    }
                    break;
                }
            };
            let status = up.response_header().map_or(0, |h| h.status.as_u16());
            if !last && e.moves_on(status) {
                let m = format!("status {status} is in this entry's onCodes");
                let f = Failure::new(FailClass::of_status(status), Some(status), m);
                self.failed_at(log, via, source, f, started, true);
                continue;
            }
            let target = Served {
                i,
                host: e.url.host.clone(),
                via,
                source,
                started,
                deadline,
            };
            return self.relay_url(s, log, up, peer, target).await;
        }
        Err(self.all_failed(log, false))
    }

    /// Whether a failure before the response header moves on (`fallback.on-connect-error`,
    /// `fallback.on-timeout`).
    fn moves_on_after(&self, class: FailClass) -> bool {
        match class {
            FailClass::ConnectError | FailClass::ConnectTimeout | FailClass::UpstreamClosed => {
                self.gw.cfg.fallback.on_connect_error
            }
            _ => self.gw.cfg.fallback.on_timeout,
        }
    }

    /// The body as JSON when some entry overrides keys in it; a body that is not JSON is then
    /// the client's error, before anything is sent.
    fn override_base(
        &self,
        entries: &[Entry],
        body: &Bytes,
    ) -> Result<Option<serde_json::Value>, GatewayError> {
        if entries.iter().all(|e| e.body_override.is_none()) {
            return Ok(None);
        }
        serde_json::from_slice(body).map(Some).map_err(|e| {
            GatewayError::InvalidHeader {
                header: "Helicone-Fallbacks",
                message: format!(
                    "Helicone-Fallbacks has a bodyKeyOverride, but the request body is not JSON: {e}"
                ),
            }
        })
    }

    /// Count a request to an unapproved host against the caller's limits.
    pub async fn admit(&self, caller: &str, host: &str) -> Result<(), GatewayError> {
        self.limiter
            .admit(caller, host, SystemTime::now())
            .await
            .map_err(|d| GatewayError::RateLimited {
                message: format!(
                    "Rate limit reached for requests to {host}, which is not an approved host: \
                     {} ({}); retry in {} s",
                    d.limit,
                    self.limit_text(d.limit),
                    d.retry_after.as_secs().max(1)
                ),
                retry_after: d.retry_after.as_secs().max(1),
            })
    }

    fn limit_text(&self, which: &str) -> String {
        let l = &self.gw.cfg.header_mode.limits;
        match which {
            "per-day" => format!("{} a day", l.per_day),
            _ => format!("{} a second", l.per_second),
        }
    }

    /// The request for entry `e`: the client's method, path and headers (minus the stripped
    /// ones), the entry's headers replacing the client's, then host and framing.
    fn url_header(
        &self,
        client: &RequestHeader,
        e: &Entry,
        body: &Bytes,
        request_id: &str,
    ) -> Result<RequestHeader, GatewayError> {
        let bad = |m: String| GatewayError::InvalidHeader {
            header: "Helicone-Fallbacks",
            message: m,
        };
        let path = target_path(&e.url, &client.uri);
        let mut h = RequestHeader::build(client.method.clone(), path.as_bytes(), None)
            .map_err(|_| bad(format!("cannot build a request to {}", e.url.origin())))?;
        let hop = connection_named(&client.headers);
        for (name, value) in client.headers.iter() {
            if !reserved_header(name.as_str()) && !hop.iter().any(|n| n == name.as_str()) {
                let _ = h.append_header(name.clone(), value.clone());
            }
        }
        for (name, value) in &e.headers {
            let _ = h.insert_header(name.clone(), value.clone());
        }
        let _ = h.insert_header(http::header::HOST, e.url.authority.as_str());
        let had_body = client.headers.contains_key(http::header::CONTENT_LENGTH)
            || client.headers.contains_key(http::header::TRANSFER_ENCODING);
        if had_body || !body.is_empty() {
            let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len());
        }
        if !h.headers.contains_key("x-request-id") {
            let _ = h.insert_header("x-request-id", request_id);
        }
        Ok(h)
    }

    /// Pass the chosen entry's response to the client as it arrives.
    async fn relay_url(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        up: HttpSession,
        peer: HttpPeer,
        t: Served,
    ) -> Result<(), GatewayError> {
        let Some(resp) = up.response_header().cloned() else {
            return Err(self.all_failed(log, false));
        };
        let status = resp.status.as_u16();
        let a_outcome = if status < 400 {
            "success"
        } else {
            "client_error"
        };
        let a = AttemptLog {
            via: t.via,
            source: t.source,
            outcome: a_outcome,
            status: Some(status),
            error: None,
            duration: t.started.elapsed(),
            pay: None,
            ..AttemptLog::default()
        };
        self.log(log, a);
        log.status = status;
        log.outcome = a_outcome;
        let h = self
            .url_client_header(&resp, (t.i, &t.host), log)
            .map_err(|_| GatewayError::AllFailed {
                status: 502,
                attempts: log.reports(),
            })?;
        let conn = Upstream {
            up,
            peer,
            deadline: t.deadline,
            idle: self.gw.cfg.header_mode.timeouts.idle,
            keep_alive: self.gw.cfg.header_mode.timeouts.keep_alive,
        };
        if s.req_header().method == http::Method::HEAD || matches!(status, 204 | 304) {
            return self.relay_bodiless(s, conn, h, &resp).await;
        }
        let length = super::relay::upstream_length(&resp);
        if commit(s, h, length).await.is_err() {
            return Err(GatewayError::ClientClosed);
        }
        match self.relay_rest(s, conn).await {
            Delivered::Done { .. } => Ok(()),
            Delivered::ClientGone | Delivered::Broken { .. } => Err(GatewayError::ClientClosed),
            Delivered::Cut { reason } => {
                log.post_commit_error = Some(reason);
                Err(GatewayError::AnswerCut)
            }
        }
    }

    /// A response without a body (to `HEAD`, a 204, a 304): its header, with the target's
    /// `Content-Length` where it describes the resource, and no framing of its own.
    async fn relay_bodiless(
        &self,
        s: &mut Session,
        mut conn: Upstream,
        mut h: ResponseHeader,
        resp: &ResponseHeader,
    ) -> Result<(), GatewayError> {
        if let Some(cl) = resp.headers.get(http::header::CONTENT_LENGTH) {
            if resp.status.as_u16() != 204 {
                let _ = h.insert_header(http::header::CONTENT_LENGTH, cl.clone());
            }
        }
        if s.write_response_header(Box::new(h), true).await.is_err() {
            return Err(GatewayError::ClientClosed);
        }
        // The target sends no body: reading reaches its end at once, and the connection can
        // go back to the pool.
        let _ = conn.next(s).await;
        self.release(conn.up, &conn.peer).await;
        Ok(())
    }

    /// The client's header: the upstream's status and headers (minus hop-by-hop), with the
    /// entry index, the request id and the attempt count.
    fn url_client_header(
        &self,
        resp: &ResponseHeader,
        (i, host): (usize, &str),
        log: &RequestLog,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 3))?;
        let hop = connection_named(&resp.headers);
        for (name, value) in resp.headers.iter() {
            if !strip_from_upstream(name.as_str()) && !hop.iter().any(|n| n == name.as_str()) {
                h.append_header(name.clone(), value.clone())?;
            }
        }
        h.insert_header(INDEX_HEADER, i)?;
        h.insert_header("x-detour-fallback-index", i)?;
        h.insert_header("x-detour-provider", host)?;
        h.insert_header("x-request-id", log.request_id.as_str())?;
        h.insert_header("x-detour-attempts", log.attempts_made())?;
        Ok(h)
    }
}

/// The body entry `e` gets: the client's, or (with an override) `tree` with it merged in.
fn entry_body(tree: Option<&serde_json::Value>, e: &Entry, body: &Bytes) -> Bytes {
    match (tree, &e.body_override) {
        (Some(t), Some(o)) => {
            let mut v = t.clone();
            merge(&mut v, o);
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        _ => body.clone(),
    }
}

/// The entry whose response goes to the client.
struct Served {
    i: usize,
    /// The target's host, for `x-detour-provider`.
    host: String,
    via: Via,
    source: String,
    started: Instant,
    deadline: Instant,
}
