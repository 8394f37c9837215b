//! A target URL as a client sends it (`Helicone-Target-Url`, a fallback's `target-url`):
//! parsed and checked for shape. Pure; where the host resolves is `super::vet`'s business.

use super::net::loose_ipv4;
use std::net::IpAddr;

/// Longest target URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// A target URL of the right shape: `http(s)://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    pub tls: bool,
    /// Host name or IP literal (no brackets), lower-cased.
    pub host: String,
    pub port: u16,
    /// For the `Host` header: `host` or `host:port` when the port is not the scheme's.
    pub authority: String,
    /// Path prefix without a trailing slash (`""` for none).
    pub base_path: String,
    /// The address the host denotes when it is one (any IPv4 spelling, or IPv6).
    pub ip: Option<IpAddr>,
}

impl TargetUrl {
    /// Parse `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<TargetUrl, String> {
        if s.len() > MAX_URL_BYTES {
            return Err(format!("is longer than {MAX_URL_BYTES} bytes"));
        }
        if s.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err("may hold only printable ASCII, no spaces".into());
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (false, r)
        } else {
            return Err("must start with http:// or https://".into());
        };
        if rest.contains('#') || rest.contains('?') {
            return Err(
                "must not have a query or fragment (the request's own are appended)".into(),
            );
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("must not carry user info (`user@`)".into());
        }
        if path.contains("/../") || path.ends_with("/..") || path.contains('\\') {
            return Err("must not have `..` segments or backslashes in its path".into());
        }
        let (host, port) = split_host_port(authority)?;
        let host = host.to_ascii_lowercase();
        let default = if tls { 443 } else { 80 };
        let port = port.unwrap_or(default);
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => loose_ipv4(&host).map(IpAddr::V4),
        };
        if ip.is_none() && !is_dns_name(&host) {
            return Err(format!("has an invalid host `{host}`"));
        }
        let shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default {
            shown
        } else {
            format!("{shown}:{port}")
        };
        Ok(TargetUrl {
            tls,
            host,
            port,
            authority,
            base_path: path.trim_end_matches('/').to_string(),
            ip,
        })
    }

    /// What a rate limit counts against: the address for an IP in any spelling (`134744072`
    /// and `8.8.8.8` are one target), else the host without a trailing dot.
    pub fn limit_key(&self) -> String {
        match self.ip {
            Some(ip) => ip.to_canonical().to_string(),
            None => self.host.trim_end_matches('.').to_string(),
        }
    }

    /// The URL for logs and errors: scheme and authority, no path.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(a: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || "has an invalid port".to_string();
    if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("has an unclosed `[`")?;
        return match after {
            "" => Ok((h, None)),
            p => {
                let p = p.strip_prefix(':').ok_or_else(bad_port)?;
                Ok((h, Some(p.parse().map_err(|_| bad_port())?)))
            }
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port: u16 = p.parse().map_err(|_| bad_port())?;
            if port == 0 {
                return Err(bad_port());
            }
            Ok((h, Some(port)))
        }
        Some(_) => Err("has an IPv6 address without brackets".into()),
        None => Ok((a, None)),
    }
}

/// Letters, digits, `-`, `_` and dots; labels of 1..=63 bytes, 253 bytes in all.
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls() {
        let u = TargetUrl::parse("https://API.openai.com").expect("url");
        assert_eq!(
            (
                u.tls,
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.base_path.as_str()
            ),
            (true, "api.openai.com", 443, "api.openai.com", "")
        );
        let u = TargetUrl::parse("http://10.0.0.5:8000/serve/v1/").expect("url");
        assert_eq!(u.base_path, "/serve/v1");
        assert_eq!(u.authority, "10.0.0.5:8000");
        assert_eq!(u.ip, Some("10.0.0.5".parse().expect("ip")));
        let u = TargetUrl::parse("http://[::1]:9000").expect("url");
        assert_eq!(
            (u.host.as_str(), u.authority.as_str()),
            ("::1", "[::1]:9000")
        );
        let u = TargetUrl::parse("http://2130706433/").expect("url");
        assert_eq!(u.ip, Some("127.0.0.1".parse().expect("ip")));
        // One target, one limit key, however it is spelled.
        let keys: Vec<String> = [
            "http://8.8.8.8",
            "http://134744072",
            "http://0x8.8.2056",
            "http://010.010.010.010:8080",
            "http://[::ffff:8.8.8.8]",
        ]
        .iter()
        .map(|s| TargetUrl::parse(s).expect("url").limit_key())
        .collect();
        assert!(keys.iter().all(|k| k == "8.8.8.8"), "{keys:?}");
        let a = TargetUrl::parse("https://Evil.com.")
            .expect("url")
            .limit_key();
        assert_eq!(a, "evil.com");
    }

    #[test]
    fn bad_urls_say_why() {
        for (s, why) in [
            ("ftp://x.com", "http://"),
            ("file:///etc/passwd", "http://"),
            ("https://user:pw@api.openai.com", "user info"),
            ("https://api.openai.com?x=1", "query"),
            ("https://api.openai.com/#f", "fragment"),
            ("https://a b.com", "printable"),
            ("https://api.openai.com:99999", "port"),
            ("https://api.openai.com:0", "port"),
            ("https://[::1", "unclosed"),
            ("https://::1", "brackets"),
            ("https://exa$mple.com", "invalid host"),
            ("https://x.com/a/../b", ".."),
            ("https://", "invalid host"),
        ] {
            let e = TargetUrl::parse(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
        let long = format!("https://x.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(TargetUrl::parse(&long).is_err());
    }
}
