//! Approved target hosts: the providers' official API hosts (built in), the hosts of the
//! config's providers, and the config's `header-mode.approved-hosts`. Requests to them are not
//! rate limited. The pattern that matched is the metric label, so labels stay a bounded set.

/// The providers' official API hosts. `*` stands for exactly one DNS label.
pub const BUILTIN: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "*.openai.azure.com",
    "*.cognitiveservices.azure.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
    "bedrock-runtime.*.amazonaws.com",
    "api.together.xyz",
    "api.together.ai",
    "openrouter.ai",
    "api.groq.com",
    "api.deepinfra.com",
    "api.mistral.ai",
    "api.fireworks.ai",
    "api.deepseek.com",
    "api.x.ai",
    "api.perplexity.ai",
    "api.cohere.com",
    "api.cohere.ai",
];

/// One approved-host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// The host itself.
    Exact(String),
    /// `before` + one DNS label + `after` (built-in `*`).
    Label { before: String, after: String },
    /// Any host under the domain, at any depth (config `*.example.com`; holds `.example.com`).
    Suffix(String),
}

impl Pattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            Pattern::Exact(h) => host == h,
            Pattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            Pattern::Label { before, after } => host
                .strip_prefix(before.as_str())
                .and_then(|r| r.strip_suffix(after.as_str()))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// The approved hosts, each with its label.
#[derive(Debug, Clone, Default)]
pub struct Approved {
    patterns: Vec<(Pattern, String)>,
}

impl Approved {
    /// The built-in list, then `provider_hosts` (exact), then the config's `extra` entries
    /// (exact hosts, or `*.domain` for every host under it). `Err` names a bad config entry.
    pub fn new(provider_hosts: &[String], extra: &[String]) -> Result<Approved, (usize, String)> {
        let mut patterns = Vec::new();
        for b in BUILTIN {
            let p = match b.split_once('*') {
                Some((before, after)) => Pattern::Label {
                    before: before.to_string(),
                    after: after.to_string(),
                },
                None => Pattern::Exact((*b).to_string()),
            };
            patterns.push((p, (*b).to_string()));
        }
        for h in provider_hosts {
            let h = h.to_ascii_lowercase();
            patterns.push((Pattern::Exact(h.clone()), h));
        }
        for (i, e) in extra.iter().enumerate() {
            let e = e.trim().to_ascii_lowercase();
            let bad = |m: &str| Err((i, format!("`{e}`: {m}")));
            let p = match e.strip_prefix("*.") {
                Some(d) if !d.is_empty() && !d.contains('*') => Pattern::Suffix(format!(".{d}")),
                Some(_) => return bad("expected `*.domain`"),
                None if e.is_empty() || e.contains('*') || e.contains('/') || e.contains(':') => {
                    return bad("expected a host name or `*.domain`")
                }
                None => Pattern::Exact(e.clone()),
            };
            patterns.push((p, e));
        }
        Ok(Approved { patterns })
    }

    /// The label of the pattern `host` matches (lower-case host), or `None`: unapproved.
    pub fn label(&self, host: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|(p, _)| p.matches(host))
            .map(|(_, l)| l.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_hosts_and_their_wildcards() {
        let a = Approved::new(&[], &[]).expect("list");
        assert_eq!(a.label("api.openai.com"), Some("api.openai.com"));
        assert_eq!(
            a.label("myres.openai.azure.com"),
            Some("*.openai.azure.com")
        );
        assert_eq!(
            a.label("bedrock-runtime.us-east-1.amazonaws.com"),
            Some("bedrock-runtime.*.amazonaws.com")
        );
        assert_eq!(
            a.label("us-east5-aiplatform.googleapis.com"),
            Some("*-aiplatform.googleapis.com")
        );
        // One label only: a bucket named `bedrock-runtime.x` under s3 is not Bedrock.
        assert_eq!(a.label("bedrock-runtime.x.s3.amazonaws.com"), None);
        assert_eq!(a.label("a.b.openai.azure.com"), None);
        assert_eq!(a.label("openai.azure.com"), None);
        assert_eq!(a.label("api.openai.com.evil.com"), None);
        assert_eq!(a.label("evilapi.openai.com"), None);
    }

    #[test]
    fn config_hosts_and_suffixes() {
        let a = Approved::new(
            &["llm.internal".into()],
            &["models.example.org".into(), "*.corp.example".into()],
        )
        .expect("list");
        assert_eq!(a.label("llm.internal"), Some("llm.internal"));
        assert_eq!(a.label("models.example.org"), Some("models.example.org"));
        assert_eq!(a.label("a.b.corp.example"), Some("*.corp.example"));
        assert_eq!(a.label("corp.example"), None);
        assert_eq!(a.label("xcorp.example"), None);
        for bad in ["*", "*.", "a.*.b", "http://x.com", "x.com:80", ""] {
            assert!(Approved::new(&[], &[bad.into()]).is_err(), "{bad}");
        }
    }
}
