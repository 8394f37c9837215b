//! The mock's HTTP/1.1 server: accept, read one request at a time (bounded), route it by path
//! to the dialect it speaks, and keep the connection for the next request unless the answer
//! ended it.

use super::faults::{self, Plan};
use super::{Dialect, MockConfig, MockStats, RecordedRequest};
use bytes::BytesMut;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request head the mock reads (431 beyond it).
const MAX_HEAD: usize = 64 * 1024;
/// The largest request body the mock reads (413 beyond it).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Accept connections forever.
pub async fn serve(listener: TcpListener, cfg: Arc<MockConfig>, stats: Arc<MockStats>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(sock, cfg.clone(), stats.clone()));
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    len: usize,
    content_length: usize,
}

enum Parsed {
    Head(Head),
    Partial,
    Bad(u16),
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut content_length = 0;
            let mut headers = Vec::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                let v = String::from_utf8_lossy(h.value).into_owned();
                if h.name.eq_ignore_ascii_case("content-length") {
                    match v.trim().parse() {
                        Ok(n) => content_length = n,
                        Err(_) => return Parsed::Bad(400),
                    }
                }
                headers.push((h.name.to_ascii_lowercase(), v));
            }
            if content_length > MAX_BODY {
                return Parsed::Bad(413);
            }
            Parsed::Head(Head {
                method: req.method.unwrap_or("").to_string(),
                path: req.path.unwrap_or("").to_string(),
                headers,
                len: n,
                content_length,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Parsed::Bad(431),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad(400),
    }
}

/// Read more into `buf`; `false` when the peer is gone.
async fn fill(sock: &mut TcpStream, buf: &mut BytesMut) -> bool {
    matches!(sock.read_buf(buf).await, Ok(n) if n > 0)
}

async fn connection(mut sock: TcpStream, cfg: Arc<MockConfig>, stats: Arc<MockStats>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let head = loop {
            match parse_head(&buf) {
                Parsed::Head(h) => break h,
                Parsed::Bad(status) => {
                    let _ = write_json(&mut sock, status, &json!({"error": "bad request"})).await;
                    return;
                }
                Parsed::Partial => {
                    if !fill(&mut sock, &mut buf).await {
                        return;
                    }
                }
            }
        };
        let total = head.len + head.content_length;
        while buf.len() < total {
            if !fill(&mut sock, &mut buf).await {
                return;
            }
        }
        let req = buf.split_to(total).freeze();
        let body = req.slice(head.len..);
        let n = stats.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let plan = faults::plan_for(&cfg, &stats, n, &head.headers, &head.path, &body);
        let (method, path) = (head.method.clone(), head.path.clone());
        if cfg.record {
            if let Ok(mut r) = stats.requests.lock() {
                r.push(RecordedRequest {
                    method: head.method,
                    path: head.path,
                    headers: head.headers,
                    body: body.clone(),
                });
            }
        }
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        let route = path.split('?').next().unwrap_or("");
        let next = match (method.as_str(), dialect_of(route)) {
            ("POST", Some((dialect, model, stream))) => {
                let model = model.unwrap_or_else(|| model_of(&body));
                let stream = stream.unwrap_or(plan.stream);
                faults::answer(sock, &cfg, &stats, &plan, &model, stream, dialect).await
            }
            ("POST", None)
                if route.ends_with("/messages/count_tokens")
                    || route.ends_with("/models/count-tokens:rawPredict") =>
            {
                // Anthropic's token count: the body's length, so a test can tell it came here.
                let b = json!({"input_tokens": body.len()});
                write_json(&mut sock, 200, &b).await.then_some(sock)
            }
            ("POST", None) if route.ends_with("/token") => {
                let ok = token(&mut sock, &cfg, &stats, &plan, &body).await;
                ok.then_some(sock)
            }
            ("GET", None) if route.ends_with("/models") => {
                let b = json!({"object": "list", "data": [
                    {"id": "mock-model", "object": "model", "owned_by": cfg.name}]});
                write_json(&mut sock, 200, &b).await.then_some(sock)
            }
            _ => {
                let b = json!({"error": {"message": "Unknown request URL",
                    "type": "invalid_request_error", "param": null, "code": "unknown_url"}});
                write_json(&mut sock, 404, &b).await.then_some(sock)
            }
        };
        match next {
            Some(s) => sock = s,
            None => return,
        }
    }
}

/// The dialect a path speaks, the model it names (Gemini, Vertex, Bedrock put it in the path)
/// and whether the path itself asks for a stream.
fn dialect_of(p: &str) -> Option<(Dialect, Option<String>, Option<bool>)> {
    if p.ends_with("/chat/completions") {
        Some((Dialect::OpenAi, None, None))
    } else if p.ends_with(":generateContent") || p.ends_with(":streamGenerateContent") {
        let stream = p.ends_with(":streamGenerateContent");
        let model = model_in_path(p, "gemini");
        Some((Dialect::Gemini, Some(model), Some(stream)))
    } else if p.ends_with("/converse") || p.ends_with("/converse-stream") {
        let stream = p.ends_with("/converse-stream");
        let model = p
            .rsplit_once("/model/")
            .and_then(|(_, rest)| rest.rsplit_once('/'))
            .map(|(id, _)| percent_decode(id))
            .unwrap_or_else(|| "bedrock".into());
        Some((Dialect::Bedrock, Some(model), Some(stream)))
    } else if p.ends_with("/invoke") || p.ends_with("/invoke-with-response-stream") {
        let stream = p.ends_with("/invoke-with-response-stream");
        let model = p
            .rsplit_once("/model/")
            .and_then(|(_, rest)| rest.rsplit_once('/'))
            .map(|(id, _)| percent_decode(id))
            .unwrap_or_else(|| "bedrock".into());
        Some((Dialect::BedrockInvoke, Some(model), Some(stream)))
    } else if p.ends_with("/count-tokens:rawPredict") {
        None // Claude's token count on Vertex
    } else if p.ends_with(":rawPredict") || p.ends_with(":streamRawPredict") {
        // Claude on Vertex: Anthropic's API, the model and streaming named by the URL.
        let stream = p.ends_with(":streamRawPredict");
        Some((
            Dialect::Anthropic,
            Some(model_in_path(p, "claude")),
            Some(stream),
        ))
    } else if p.ends_with("/messages") {
        Some((Dialect::Anthropic, None, None))
    } else {
        None
    }
}

/// An OAuth2 token endpoint (the JWT bearer grant), as Google's.
async fn token(
    sock: &mut TcpStream,
    cfg: &MockConfig,
    stats: &MockStats,
    plan: &Plan,
    body: &[u8],
) -> bool {
    let n = stats.tokens.fetch_add(1, Ordering::SeqCst) + 1;
    let form = String::from_utf8_lossy(body);
    let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
    let (status, b) = if !form.contains(grant) || !form.contains("assertion=") {
        (
            400,
            json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}),
        )
    } else if plan.status != 200 {
        (
            plan.status,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        )
    } else {
        (
            200,
            json!({"access_token": format!("ya29.mock-{n}"),
                   "expires_in": cfg.token_lifetime_secs, "token_type": "Bearer"}),
        )
    };
    write_json(sock, status, &b).await
}

/// The model of a `…/models/{model}:{method}` path (Gemini, Vertex).
fn model_in_path(path: &str, default: &str) -> String {
    path.rsplit('/')
        .next()
        .and_then(|m| m.split(':').next())
        .map(percent_decode)
        .unwrap_or_else(|| default.to_string())
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn model_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        #[serde(default)]
        model: Option<String>,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_else(|| "unknown".into())
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

pub(super) async fn write_json(
    sock: &mut TcpStream,
    status: u16,
    body: &serde_json::Value,
) -> bool {
    write_json_with(sock, status, &[], body).await
}

/// A JSON answer with `extra` headers.
pub(super) async fn write_json_with(
    sock: &mut TcpStream,
    status: u16,
    extra: &[(String, String)],
    body: &serde_json::Value,
) -> bool {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut out = head(status, "application/json", extra, Some(body.len()));
    out.extend_from_slice(&body);
    sock.write_all(&out).await.is_ok()
}

/// A response head: `Content-Length` when given, else chunked.
pub(super) fn head(
    status: u16,
    content_type: &str,
    extra: &[(String, String)],
    length: Option<usize>,
) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    match length {
        Some(n) => h.push_str(&format!("content-length: {n}\r\n\r\n")),
        None => h.push_str("transfer-encoding: chunked\r\n\r\n"),
    }
    h.into_bytes()
}

/// Close with a TCP reset instead of a FIN.
pub(super) fn reset(sock: TcpStream) {
    // SO_LINGER 0 makes close() send RST instead of FIN.
    #[allow(deprecated)]
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_bounded() {
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n"),
            Parsed::Bad(413)
        ));
        let long = format!("POST / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(parse_head(long.as_bytes()), Parsed::Bad(431)));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            Parsed::Bad(400)
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn paths_name_their_dialect_and_model() {
        let d = dialect_of;
        assert_eq!(
            d("/v1beta/models/a%2Fb:streamGenerateContent"),
            Some((Dialect::Gemini, Some("a/b".into()), Some(true)))
        );
        assert_eq!(
            d("/model/us.x-v1%3A0/converse"),
            Some((Dialect::Bedrock, Some("us.x-v1:0".into()), Some(false)))
        );
        assert_eq!(
            d("/v1/chat/completions"),
            Some((Dialect::OpenAi, None, None))
        );
        assert_eq!(d("/v1/other"), None);
    }
}
