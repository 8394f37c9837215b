//! `/admin/keys…` on the admin port, behind `Authorization: Bearer <admin token>` (the token
//! from the variable `auth.admin-token-env` names; unset: these routes answer 403).
//!
//! | method and path | does |
//! |---|---|
//! | `POST /admin/keys` | create (`{"name", "policy", "credits-usd"}`); the secret is in this answer only |
//! | `GET /admin/keys`, `GET /admin/keys/{id}` | list, show |
//! | `PATCH /admin/keys/{id}` | change name, policy fields, `disabled` |
//! | `DELETE /admin/keys/{id}` | revoke |
//! | `POST /admin/keys/{id}/credits` | top up (`{"usd"}` or `{"micros"}`, `note`) |
//! | `PUT`/`DELETE /admin/keys/{id}/providers/{name}` | the key's own credentials (BYOK) |
//! | `GET /admin/keys/{id}/usage?days=N`, `GET /admin/keys/{id}/ledger?limit=N` | reports |

use crate::admin::respond;
use crate::auth::manage::{Manager, Refused};
use crate::auth::Keys;
use http::Response;
use pingora_core::protocols::http::ServerSession;

/// The largest admin request body.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn error(status: u16, message: &str) -> Response<Vec<u8>> {
    let kind = match status {
        401 | 403 => "authentication_error",
        503 => "store_unavailable",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    respond(status, "application/json", body.to_string().into_bytes())
}

/// Whether the request carries the admin token (from the variable `env` names).
pub(crate) fn authorized(env: &str, session: &ServerSession) -> Result<(), Refused> {
    let Some(token) = std::env::var(env).ok().filter(|t| !t.trim().is_empty()) else {
        return Err(Refused {
            status: 403,
            message: format!("the admin API is off: set {env} to an admin token"),
        });
    };
    let given = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared as hashes: the time taken says nothing about the token.
    let (a, b) = (
        crate::auth::secret::hash(given.trim()),
        crate::auth::secret::hash(token.trim()),
    );
    if a != b {
        return Err(Refused {
            status: 401,
            message: "a valid admin token is needed".into(),
        });
    }
    Ok(())
}

async fn body(session: &mut ServerSession) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_BODY {
                    return Err(Refused {
                        status: 413,
                        message: "the body is larger than 64 KiB".into(),
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(_) => {
                return Err(Refused {
                    status: 400,
                    message: "the body could not be read".into(),
                })
            }
        }
    }
}

/// A query parameter as a number.
fn param(query: Option<&str>, name: &str, default: usize) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

pub async fn serve(keys: Option<&Keys>, session: &mut ServerSession) -> Response<Vec<u8>> {
    let Some(keys) = keys else {
        return error(404, "gateway keys are off (auth.required: false)");
    };
    if let Err(e) = authorized(&keys.cfg.admin_token_env, session) {
        return error(e.status, &e.message);
    }
    let method = session.req_header().method.as_str().to_string();
    let uri = session.req_header().uri.clone();
    let body = match method.as_str() {
        "POST" | "PUT" | "PATCH" => match body(session).await {
            Ok(b) => b,
            Err(e) => return error(e.status, &e.message),
        },
        _ => Vec::new(),
    };
    let m = Manager {
        store: keys.store.as_ref(),
        sealer: keys.sealer.as_ref(),
        providers: keys
            .gateway()
            .providers
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect(),
    };
    let parts: Vec<&str> = uri
        .path()
        .trim_end_matches('/')
        .split('/')
        .skip(3)
        .collect();
    let q = uri.query();
    let r: Result<serde_json::Value, Refused> = match (method.as_str(), parts.as_slice()) {
        ("POST", []) => m.create(&body).await,
        ("GET", []) => m.list().await,
        ("GET", [id]) => m.show(id).await,
        ("PATCH", [id]) => m.change(id, &body).await,
        ("DELETE", [id]) => m.revoke(id).await,
        ("POST", [id, "credits"]) => m.top_up(id, &body).await,
        ("PUT", [id, "providers", p]) => m.byok(id, p, Some(&body)).await,
        ("DELETE", [id, "providers", p]) => m.byok(id, p, None).await,
        ("GET", [id, "usage"]) => m.usage(id, param(q, "days", 30) as u32).await,
        ("GET", [id, "ledger"]) => m.ledger(id, param(q, "limit", 100)).await,
        _ => Err(Refused {
            status: 404,
            message: "unknown admin URL or method".into(),
        }),
    };
    let created = method == "POST" && parts.is_empty();
    if !matches!(method.as_str(), "GET") {
        keys.invalidate();
    }
    match r {
        Ok(v) => respond(
            if created { 201 } else { 200 },
            "application/json",
            v.to_string().into_bytes(),
        ),
        Err(e) => error(e.status, &e.message),
    }
}
