//! Which attempts a caller's key gets for each planned target (pure): a BYOK attempt when the
//! key holds credentials for the provider, a PTB attempt when the operator's credentials may
//! serve it (the key allows PTB, neither deny-list names it, the catalog has a price), in the
//! configured order; or a skip with its reason.

use super::Caller;
use crate::catalog::ModelRoute;
use crate::config::{AuthConfig, PayOrder};
use crate::gateway::Gateway;
use crate::plan::{Pay, Payer};

/// `pattern` with `*` matching any run of characters (case-sensitive, whole string).
pub fn glob(pattern: &str, s: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a `provider/model` deny-list names this target (`provider/*` names all of it).
fn denied(list: &[String], provider: &str, model: &str, id: &str) -> bool {
    list.iter().any(|e| {
        e.split_once('/')
            .is_some_and(|(p, m)| p == provider && (glob(m, model) || glob(m, id)))
    })
}

/// A caller's decisions over one gateway's config.
pub struct CallerPayer<'a> {
    pub caller: &'a Caller,
    pub gw: &'a Gateway,
    pub cfg: &'a AuthConfig,
}

impl CallerPayer<'_> {
    fn allowed(&self, provider: &str, model: &str, id: &str) -> bool {
        let p = &self.caller.policy;
        let any = |list: &[String], v: &[&str]| {
            list.is_empty() || list.iter().any(|pat| v.iter().any(|s| glob(pat, s)))
        };
        any(&p.models, &[model, id]) && any(&p.providers, &[provider])
    }

    /// Why the operator's credentials may not serve this target, if they may not.
    fn ptb_refusal(&self, route: &ModelRoute, provider: &str, model: &str) -> Option<String> {
        let p = &self.caller.policy;
        if !p.ptb_allowed() {
            return Some("this key is not allowed pass-through billing".into());
        }
        if denied(&p.ptb_deny, provider, model, &route.id) {
            return Some("the key's ptb-deny list names it".into());
        }
        if denied(&self.cfg.ptb_deny, provider, model, &route.id) {
            return Some("it is not offered for pass-through billing".into());
        }
        if route.price.is_none() {
            return Some("the catalog has no price for it".into());
        }
        None
    }
}

impl Payer for CallerPayer<'_> {
    fn attempts(
        &self,
        model: &str,
        route: &ModelRoute,
    ) -> Result<Vec<Pay>, (&'static str, String)> {
        let provider = &self.gw.providers[route.provider];
        let name = provider.name.as_str();
        if !self.allowed(name, model, &route.id) {
            return Err((
                "not_allowed",
                format!("skipped: not_allowed (this key may not use {model} on {name})"),
            ));
        }
        let byok = self
            .caller
            .byok
            .get(route.provider)
            .is_some_and(|c| c.is_some());
        let operator = provider.credentials.unavailable();
        let ptb = match (&operator, self.ptb_refusal(route, name, model)) {
            (None, None) => Ok(()),
            (_, Some(why)) => Err(("ptb_disallowed", format!("skipped: ptb_disallowed ({why})"))),
            (Some(why), None) => Err(("credentials", why.clone())),
        };
        let mut v = Vec::with_capacity(2);
        if byok {
            v.push(Pay::Byok);
        }
        match ptb {
            Ok(()) if self.cfg.order == PayOrder::PtbFirst => v.insert(0, Pay::Ptb),
            Ok(()) => v.push(Pay::Ptb),
            Err(e) if v.is_empty() => return Err(e),
            Err(_) => {}
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("gpt-4o", "gpt-4o"));
        assert!(!glob("gpt-4o", "gpt-4o-mini"));
        assert!(glob("gpt-4o*", "gpt-4o-mini"));
        assert!(glob("*", ""));
        assert!(glob("claude-*-4", "claude-sonnet-4"));
        assert!(!glob("claude-*-4", "claude-sonnet-4.5"));
        assert!(glob("*mini", "gpt-4o-mini"));
        assert!(!glob("a*a", "a"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
    }

    #[test]
    fn deny_lists_name_a_provider_and_model() {
        let list = vec!["openai/gpt-4o".to_string(), "azure/*".to_string()];
        assert!(denied(&list, "openai", "gpt-4o", "gpt-4o-2024-08-06"));
        assert!(!denied(&list, "openai", "gpt-4o-mini", "gpt-4o-mini"));
        assert!(denied(&list, "azure", "anything", "x"));
        assert!(!denied(&list, "groq", "gpt-4o", "gpt-4o"));
    }
}
