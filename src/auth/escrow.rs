//! One request's credits: before each pass-through (PTB) attempt its worst-case cost is held
//! ([`Tab::hold`]); a failed attempt's hold is released, a served one is settled at the usage
//! the provider reported ([`Tab::close`]). BYOK answers cost nothing but are recorded.
//!
//! The worst case: the request body's length in bytes as its prompt tokens (a token is at least
//! a byte in every tokenizer detour's providers use, so this bounds the real count) × the input
//! price, plus `max_tokens` (else the catalog's output limit, else `auth.default-output-tokens`)
//! × the output price. A debit never exceeds its hold, so a balance never passes its limit.

use super::{Caller, Keys, Pass};
use crate::api::GatewayError;
use crate::catalog::Price;
use crate::plan::{Pay, Target};
use crate::store::{Charge, Micros, Reserve};
use std::sync::{Arc, Mutex};

/// A usage's cost in micro-dollars at `price` (USD per million tokens = µ$ per token), rounded up.
pub fn cost(price: Price, input: u64, output: u64) -> Micros {
    let c = input as f64 * price.input + output as f64 * price.output;
    if c.is_finite() && c > 0.0 {
        (c.ceil() as i64).max(0)
    } else {
        0
    }
}

/// Open holds of one request.
pub struct Tab {
    keys: Arc<Keys>,
    caller: Arc<Caller>,
    request_id: String,
    /// Upper bounds: prompt tokens, output tokens asked for.
    prompt_bound: u64,
    max_tokens: Option<u64>,
    /// (target index, reservation, amount).
    held: Mutex<Vec<(usize, u64, Micros)>>,
    /// The caller's concurrency slot, free as soon as the answer is delivered (before it is
    /// billed): a client that sends its next request on the answer finds it free.
    slot: Mutex<Option<Pass>>,
    /// The answer's tokens are already counted against the key's tokens per minute (a JSON
    /// answer's, before it was delivered).
    tokens_counted: std::sync::atomic::AtomicBool,
}

impl Tab {
    pub fn new(
        keys: Arc<Keys>,
        caller: Arc<Caller>,
        request_id: String,
        body_len: usize,
        max_tokens: Option<u64>,
        slot: Option<Pass>,
    ) -> Tab {
        Tab {
            keys,
            caller,
            request_id,
            prompt_bound: body_len as u64,
            max_tokens,
            held: Mutex::new(Vec::new()),
            slot: Mutex::new(slot),
            tokens_counted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Count an answer's tokens against the key's tokens per minute before the answer goes to
    /// the client (its usage is known: a whole JSON answer), so a client that sends its next
    /// request on the answer is measured with them; [`Tab::close`] then does not count again.
    pub async fn count_tokens_now(&self, tokens: u64) {
        self.keys.count_tokens(&self.caller, tokens).await;
        self.tokens_counted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The answer is delivered: the caller's concurrency slot is given back.
    pub fn answered(&self) {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    fn worst_case(&self, target: &Target) -> Micros {
        let output = self
            .max_tokens
            .or(target.route.max_output_tokens.map(u64::from))
            .unwrap_or(u64::from(self.keys.cfg.default_output_tokens));
        target
            .route
            .price
            .map_or(0, |p| cost(p, self.prompt_bound, output))
    }

    fn labels<'a>(&'a self, target: &'a Target) -> [&'a str; 2] {
        let provider = self.keys.gateway().providers[target.route.provider]
            .name
            .as_str();
        [provider, target.model.as_str()]
    }

    fn count(&self, target: &Target, action: &str, amount: Micros) {
        let [p, m] = self.labels(target);
        self.keys
            .metrics()
            .auth
            .credits_usd
            .with_label_values(&[p, m, action])
            .inc_by(amount as f64 / 1e6);
    }

    /// Before a PTB attempt of target `t`: hold its worst case (once per target). Over the
    /// balance and credit limit: a 429 `insufficient_credits`; the store down: a 503.
    pub async fn hold(&self, t: usize, target: &Target) -> Result<(), GatewayError> {
        if target.pay != Pay::Ptb || self.lock().iter().any(|h| h.0 == t) {
            return Ok(());
        }
        let amount = self.worst_case(target);
        let limit = self.caller.policy.credit_limit;
        let r = self
            .keys
            .timed(
                "reserve",
                self.keys.store.reserve(&self.caller.id, amount, limit),
            )
            .await;
        match r {
            Ok(Reserve::Held(id)) => {
                self.lock().push((t, id, amount));
                self.count(target, "reserved", amount);
                Ok(())
            }
            Ok(Reserve::Short { available }) => {
                self.keys.reject("insufficient_credits");
                Err(GatewayError::InsufficientCredits(format!(
                    "This key's credits do not cover {}: it may cost up to ${:.6}, and ${:.6} is \
                     available",
                    target.source(self.keys.gateway()),
                    amount as f64 / 1e6,
                    available.max(0) as f64 / 1e6
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, "credit reservation failed");
                self.keys.reject("store_unavailable");
                Err(GatewayError::StoreUnavailable(
                    "The credit store cannot be reached, so the operator's credentials cannot \
                     be billed; retry shortly"
                        .into(),
                ))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, u64, Micros)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, t: usize) -> Option<(u64, Micros)> {
        let mut g = self.lock();
        let i = g.iter().position(|h| h.0 == t)?;
        let (_, id, amount) = g.swap_remove(i);
        Some((id, amount))
    }

    /// After a failed attempt of target `t`: its hold released.
    pub async fn release(&self, t: usize, target: &Target) {
        if let Some((id, amount)) = self.take(t) {
            let r = self.keys.store.release(&self.caller.id, id);
            if self.keys.timed("release", r).await.is_ok() {
                self.count(target, "released", amount);
            }
        }
    }

    /// After target `t` served: settle its hold at `usage` (prompt, completion tokens), or at
    /// the hold itself when the provider reported none (a client that left, a cut answer);
    /// a BYOK answer's cost is recorded.
    pub async fn close(&self, t: usize, target: &Target, usage: Option<(u64, u64)>) {
        let (input, output) = usage.unwrap_or((0, 0));
        if !self
            .tokens_counted
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.keys.count_tokens(&self.caller, input + output).await;
        }
        let [provider, model] = self.labels(target);
        let mut charge = Charge {
            request_id: self.request_id.clone(),
            provider: provider.to_string(),
            model: model.to_string(),
            input_tokens: input,
            output_tokens: output,
            cost: target.route.price.map_or(0, |p| cost(p, input, output)),
        };
        match target.pay {
            Pay::Ptb => {
                let Some((id, amount)) = self.take(t) else {
                    return;
                };
                if usage.is_none() {
                    charge.cost = amount;
                }
                let settle = self.keys.store.settle(&self.caller.id, id, &charge);
                if self.keys.timed("settle", settle).await.is_ok() {
                    self.count(target, "settled", charge.cost.min(amount));
                    self.count(target, "released", amount - charge.cost.min(amount));
                }
            }
            Pay::Byok => {
                let r = self.keys.store.record(&self.caller.id, &charge);
                let _ = self.keys.timed("record", r).await;
            }
            Pay::Operator => {}
        }
    }
}

impl Drop for Tab {
    /// Holds still open when the request ends (a hedge that lost, a client that left before
    /// an answer) are released.
    fn drop(&mut self) {
        let left = std::mem::take(&mut *self.lock());
        if left.is_empty() {
            return;
        }
        let (store, id) = (self.keys.store.clone(), self.caller.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (_, r, _) in left {
                    let _ = store.release(&id, r).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_micro_dollars_rounded_up() {
        let p = Price {
            input: 2.5,
            output: 10.0,
        };
        assert_eq!(cost(p, 1000, 100), 3500);
        assert_eq!(cost(p, 1, 0), 3);
        assert_eq!(cost(p, 0, 0), 0);
        let free = Price {
            input: 0.0,
            output: 0.0,
        };
        assert_eq!(cost(free, 10, 10), 0);
        assert_eq!(cost(p, u64::MAX, u64::MAX), i64::MAX);
    }
}
