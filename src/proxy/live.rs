//! The service Pingora runs: it gives each request the [`Serving`] current when the request
//! arrives (`new_ctx`) and calls that one's hooks to the end, so a reload (`crate::reload`)
//! applies to new requests at once while in-flight ones finish on the config they began with.

use super::{Ctx, Serving};
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::{Arc, RwLock};

/// The config that serves new requests.
pub struct Current(RwLock<Arc<Serving>>);

impl Current {
    pub fn new(s: Serving) -> Current {
        Current(RwLock::new(Arc::new(s)))
    }

    pub fn load(&self) -> Arc<Serving> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New requests go to `s` from now on.
    pub fn store(&self, s: Serving) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }
}

pub struct DetourProxy {
    pub current: Arc<Current>,
}

impl DetourProxy {
    pub fn new(s: Serving) -> DetourProxy {
        DetourProxy {
            current: Arc::new(Current::new(s)),
        }
    }

    /// The request's own `Serving` (set by `new_ctx`).
    fn of(&self, ctx: &Ctx) -> Arc<Serving> {
        ctx.serving.clone().unwrap_or_else(|| self.current.load())
    }
}

#[async_trait]
impl ProxyHttp for DetourProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            serving: Some(self.current.load()),
            ..Ctx::default()
        }
    }

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // No response compression module: detour relays provider bytes as they are. The
        // Messages module rewrites the output of `/v1/messages` requests only.
        super::messages::install(modules);
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.of(ctx).request_filter(session, ctx).await
    }

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.of(ctx).upstream_peer(s, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        s: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.of(ctx).upstream_request_filter(s, up, ctx).await
    }

    async fn response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.of(ctx).response_filter(s, resp, ctx).await
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora_error::Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        self.of(ctx).fail_to_proxy(session, e, ctx).await
    }

    fn suppress_error_log(&self, s: &Session, ctx: &Ctx, e: &pingora_error::Error) -> bool {
        self.of(ctx).suppress_error_log(s, ctx, e)
    }

    async fn logging(&self, s: &mut Session, e: Option<&pingora_error::Error>, ctx: &mut Ctx) {
        self.of(ctx).logging(s, e, ctx).await
    }
}
