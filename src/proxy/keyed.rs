//! Gateway keys on the request path (`auth.required: true`): the caller and its limits before
//! anything is read or planned, its attempts in the plan, its credits in a tab.

use super::Serving;
use crate::api::{ChatRequest, GatewayError};
use crate::auth::escrow::Tab;
use crate::auth::pay::CallerPayer;
use crate::auth::{Caller, Pass};
use crate::engine::RequestLog;
use crate::plan::Plan;
use pingora_proxy::Session;
use std::sync::Arc;

/// A request's caller, admitted: its concurrency slot is held while this lives (or, in the
/// chain mode, its tab: [`Tab::answered`]).
pub struct Admitted {
    pub caller: Arc<Caller>,
    pass: Option<Pass>,
}

impl Serving {
    /// The request's caller when keys are required (`None` when they are not): a 401 without
    /// a live key, a 429 over a limit. `chain_mode`: `Authorization` may carry the key.
    pub(super) async fn admitted(
        &self,
        session: &Session,
        log: &mut RequestLog,
        chain_mode: bool,
    ) -> Result<Option<Admitted>, GatewayError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let caller = keys
            .caller(&session.req_header().headers, chain_mode)
            .await?;
        log.key = caller.id.clone();
        let pass = keys.admit(&caller).await?;
        Ok(Some(Admitted {
            caller,
            pass: Some(pass),
        }))
    }

    /// The request's plan; with a caller, each target's attempts are the caller's (BYOK, PTB,
    /// or skipped with the reason counted).
    pub(super) fn plan_for(
        &self,
        req: &ChatRequest,
        who: Option<&Admitted>,
    ) -> Result<Plan, GatewayError> {
        let gw = self.gw();
        let (Some(keys), Some(who)) = (&self.keys, who) else {
            return crate::plan::plan(&req.model, gw).map_err(GatewayError::InvalidChain);
        };
        let payer = CallerPayer {
            caller: &who.caller,
            gw,
            cfg: &keys.cfg,
        };
        let plan = crate::plan::plan_for(&req.model, gw, Some(&payer))
            .map_err(GatewayError::InvalidChain)?;
        for s in &plan.skipped {
            if s.why != "credentials" {
                keys.reject(s.why);
            }
        }
        Ok(plan)
    }

    /// The request's tab: its credits held and settled per attempt; the caller's concurrency
    /// slot moves into it.
    pub(super) fn tab(
        &self,
        req: &ChatRequest,
        who: Option<&mut Admitted>,
        id: &str,
    ) -> Option<Tab> {
        let (keys, who) = (self.keys.as_ref()?, who?);
        Some(Tab::new(
            keys.clone(),
            who.caller.clone(),
            id.to_string(),
            req.body.len(),
            req.max_tokens,
            who.pass.take(),
        ))
    }
}
