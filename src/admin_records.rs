//! `/admin/requests…` on the admin port, behind the admin token:
//!
//! | method and path | does |
//! |---|---|
//! | `GET /admin/requests?key=&provider=&model=&outcome=&fallback=&since=&until=&before=&limit=` | the newest records that match, newest first; `next` is the `before` of the next page |
//! | `GET /admin/requests/{id}` | one request with all its attempts |

use crate::admin::respond;
use crate::admin_keys::{authorized, error};
use crate::records::{Filter, Recorder};
use http::Response;
use pingora_core::protocols::http::ServerSession;

pub fn serve(recorder: &Recorder, token_env: &str, session: &ServerSession) -> Response<Vec<u8>> {
    if let Err(e) = authorized(token_env, session) {
        return error(e.status, &e.message);
    }
    let h = session.req_header();
    if h.method != http::Method::GET {
        return error(405, "records are read with GET");
    }
    let path = h.uri.path().trim_end_matches('/');
    let json = |v: serde_json::Value| respond(200, "application/json", v.to_string().into_bytes());
    match path.strip_prefix("/admin/requests") {
        Some("") => match Filter::parse(h.uri.query()) {
            Ok(f) => {
                let found = recorder.list(&f);
                let next = (found.len() == f.limit)
                    .then(|| found.last().map(|r| r.seq))
                    .flatten();
                let data: Vec<&crate::records::Record> = found.iter().map(AsRef::as_ref).collect();
                json(serde_json::json!({"object": "list", "data": data, "next": next}))
            }
            Err(m) => error(400, &m),
        },
        Some(rest) => {
            let id = rest.trim_start_matches('/');
            match crate::text::percent_decode(id).and_then(|id| recorder.get(&id)) {
                Some(r) => json(serde_json::json!(r.as_ref())),
                None => error(404, "no record of that request (only the newest are kept)"),
            }
        }
        None => error(404, "unknown admin URL"),
    }
}
