//! A programmable upstream for hostile-provider tests: each request it reads (HTTP/1.1,
//! Content-Length bodies) is answered by a script of raw steps, byte for byte, so a test can
//! send what no well-behaved provider would: a key echoed in an error, `Retry-After: 1e20`, an
//! event that never ends, a body cut after its header.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Step {
    Send(Vec<u8>),
    Sleep(Duration),
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST).
    Reset,
    /// Keep the connection open, sending nothing, until the peer closes it.
    Hang,
    /// Send `Send`-sized pieces of `byte` for ever (as fast as the peer reads): an event that
    /// never ends. Stops when the peer goes away.
    Endless(u8),
}

/// A request as the upstream read it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Script = dyn Fn(&RawRequest) -> Vec<Step> + Send + Sync;

pub struct RawUpstream {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<Mutex<Vec<RawRequest>>>,
    /// Bytes written by `Endless` steps, all connections together.
    pub endless_sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(
        script: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static,
    ) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let endless_sent = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let (reqs, sent) = (requests.clone(), endless_sent.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (script, reqs, sent) = (script.clone(), reqs.clone(), sent.clone());
                tokio::spawn(async move { connection(sock, script, reqs, sent).await });
            }
        });
        RawUpstream {
            addr,
            requests,
            endless_sent,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

async fn connection(
    mut sock: TcpStream,
    script: Arc<Script>,
    reqs: Arc<Mutex<Vec<RawRequest>>>,
    sent: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await else {
            return;
        };
        let steps = script(&req);
        reqs.lock().unwrap().push(req);
        for step in steps {
            match step {
                Step::Send(b) => {
                    if sock.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => return,
                Step::Reset => {
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Hang => {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = sock.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                Step::Endless(byte) => {
                    let piece = vec![byte; 64 * 1024];
                    while sock.write_all(&piece).await.is_ok() {
                        sent.fetch_add(piece.len(), Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let (method, path) = (
                r.method.unwrap_or("").to_string(),
                r.path.unwrap_or("").to_string(),
            );
            while buf.len() < n + len {
                let mut tmp = [0u8; 65536];
                match sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some(RawRequest {
                method,
                path,
                headers,
                body,
            });
        }
        let mut tmp = [0u8; 65536];
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
}

/// A whole HTTP/1.1 response with a Content-Length body.
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The head of a chunked HTTP/1.1 response.
pub fn chunked_head(status: u16, content_type: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes()
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// An OpenAI stream chunk with `content`, as an SSE event.
pub fn content_event(content: &str) -> Vec<u8> {
    let v = serde_json::json!({"id": "chatcmpl-raw", "object": "chat.completion.chunk",
        "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {v}\n\n").into_bytes()
}

/// An OpenAI chat completion with `content`, as JSON.
pub fn completion_json(content: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"id": "chatcmpl-raw", "object": "chat.completion",
        "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
    )
    .unwrap()
}
