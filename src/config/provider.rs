//! One `providers:` entry as configured: the fields every kind shares, validated here; what a
//! kind does with its own fields (regions, projects, API versions, where its credentials come
//! from) is its adapter's business (`providers/`).

use super::raw::{RawProvider, RawTimeouts};
use super::{timeouts, ConfigError, Timeouts};
use http::header::{HeaderName, HeaderValue};

/// A provider as configured, before its adapter reads its kind-specific fields and loads its
/// credentials.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    /// The adapter kind (`openai`, `azure`, …), checked against the registry in `providers/`.
    pub kind: String,
    /// Required except where the kind's adapter derives one (bedrock and vertex, from `region`).
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the key.
    pub api_key_env: Option<String>,
    pub api_version: Option<String>,
    pub region: Option<String>,
    pub project: Option<String>,
    pub credentials_file: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeouts: Timeouts,
    /// The YAML as written, for an endpoint the adapter derives (a token URI inherits them).
    pub raw_timeouts: RawTimeouts,
    /// Offer HTTP/2 in ALPN (TLS upstreams only).
    pub http2: bool,
    /// `providers[i]`: where this entry is, for errors.
    pub path: String,
}

impl ProviderConfig {
    /// An error about `field` of this entry.
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(format!("{}.{field}", self.path), message)
    }
}

/// Where a provider (or a token endpoint) is: scheme, host, port and base path of its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host name or IP literal, for DNS, SNI and the `Host` header.
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` when the port is not the scheme's default.
    pub authority: String,
    /// Path prefix of the base URL without a trailing slash, e.g. `/v1`.
    pub base_path: String,
}

impl Endpoint {
    /// Parse a base URL (`https://host[:port][/path]`, no query); errors name `path`.
    pub fn parse(url: &str, path: &str) -> Result<Endpoint, ConfigError> {
        let err = |m: String| ConfigError::new(path, m);
        let uri: http::Uri = url
            .parse()
            .map_err(|_| err(format!("`{url}` is not a URL")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(err("the URL must start with http:// or https://".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| err("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let default_port = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = match uri.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", uri.host().unwrap_or_default()),
            _ => uri.host().unwrap_or_default().to_string(),
        };
        if uri.query().is_some() {
            return Err(err("the base URL must not have a query".into()));
        }
        Ok(Endpoint {
            tls,
            host,
            port,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validate the shared fields of `providers[i]`.
pub(super) fn provider(
    i: usize,
    p: &RawProvider,
    base: Timeouts,
) -> Result<ProviderConfig, ConfigError> {
    let path = format!("providers[{i}]");
    if !valid_name(&p.name) {
        return Err(ConfigError::new(
            format!("{path}.name"),
            format!(
                "`{}` is not a valid provider name (letters, digits, - _ . only)",
                p.name
            ),
        ));
    }
    if let Some(r) = &p.region {
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::new(
                format!("{path}.region"),
                format!("`{r}` is not a region name"),
            ));
        }
    }
    if let Some(pr) = &p.project {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':';
        if pr.is_empty() || !pr.bytes().all(ok) {
            return Err(ConfigError::new(
                format!("{path}.project"),
                format!("`{pr}` is not a project id"),
            ));
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &p.headers {
        let hp = format!("{path}.headers.{k}");
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ConfigError::new(&hp, "invalid header name"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| ConfigError::new(&hp, "invalid header value"))?;
        headers.push((name, value));
    }
    Ok(ProviderConfig {
        name: p.name.clone(),
        kind: p.kind.clone(),
        base_url: p.base_url.clone(),
        api_key_env: p.api_key_env.clone(),
        api_version: p.api_version.clone(),
        region: p.region.clone(),
        project: p.project.clone(),
        credentials_file: p.credentials_file.clone(),
        headers,
        timeouts: timeouts(&p.timeouts, base, &format!("{path}.timeouts"))?,
        raw_timeouts: p.timeouts.clone(),
        http2: p.http2.unwrap_or(true),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://api.openai.com/v1/", "x").expect("valid");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.authority.as_str()),
            (true, "api.openai.com", 443, "api.openai.com")
        );
        assert_eq!(e.base_path, "/v1");
        let e = Endpoint::parse("http://127.0.0.1:8443", "x").expect("valid");
        assert_eq!((e.port, e.authority.as_str()), (8443, "127.0.0.1:8443"));
        assert_eq!(e.base_path, "");
        for bad in ["ftp://x", "not a url", "https://x/v1?q=1", "/relative"] {
            assert_eq!(
                Endpoint::parse(bad, "p.base-url").expect_err(bad).path,
                "p.base-url"
            );
        }
    }
}
