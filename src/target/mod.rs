//! Header-mode targets: URLs a client names (`Helicone-Target-Url`, `Helicone-Fallbacks`)
//! instead of catalog models. Everything here is about the URL, not the request: its shape
//! ([`url`]), which addresses it may reach ([`net`]), whether its host is approved
//! ([`approved`]), how often unapproved hosts may be called ([`limit`]), and the fallback
//! header's entries ([`fallbacks`]). [`vet`] resolves a URL's host once and returns the one
//! address that passed the checks: the connection goes there, so a second DNS answer
//! (rebinding) can never take it elsewhere.

pub mod approved;
pub mod fallbacks;
pub mod limit;
pub mod net;
pub mod url;

pub use approved::Approved;
pub use net::Cidr;
pub use url::TargetUrl;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

/// Concurrent DNS lookups for header-mode targets.
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);

/// Where header-mode targets may connect.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Ranges reachable although private (a self-hosted model server).
    pub allow_networks: Vec<Cidr>,
    /// Ports besides 80 and 443.
    pub allow_ports: Vec<RangeInclusive<u16>>,
}

impl Policy {
    fn port_allowed(&self, port: u16) -> bool {
        port == 80 || port == 443 || self.allow_ports.iter().any(|r| r.contains(&port))
    }
}

/// The address to connect to for `url`: its IP, or its host resolved (within `within`), the
/// first address the policy allows (IPv4 first). `Err` says why nothing may be sent.
pub async fn vet(url: &TargetUrl, policy: &Policy, within: Duration) -> Result<SocketAddr, String> {
    if !policy.port_allowed(url.port) {
        return Err(format!(
            "{}: port {} is not allowed (80, 443 and header-mode.allow-ports are)",
            url.origin(),
            url.port
        ));
    }
    if let Some(ip) = url.ip {
        return match net::refused(ip, &policy.allow_networks) {
            Some(why) => Err(format!("{}: {ip} is {why}", url.origin())),
            None => Ok(SocketAddr::new(ip, url.port)),
        };
    }
    // Lookups run on blocking threads that a time-out does not stop: at most this many at once.
    let looked_up = tokio::time::timeout(within, async {
        let _slot = LOOKUPS.acquire().await;
        tokio::net::lookup_host((url.host.as_str(), url.port)).await
    })
    .await;
    let addrs: Vec<SocketAddr> = match looked_up {
        Err(_) => return Err(format!("{}: DNS lookup timed out", url.origin())),
        Ok(Err(_)) => return Err(format!("{}: the host does not resolve", url.origin())),
        Ok(Ok(a)) => a.collect(),
    };
    // The reason, not the address: a client may not map the internal network through it.
    let mut first_refusal = None;
    let mut allowed: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        match net::refused(a.ip(), &policy.allow_networks) {
            None => allowed.push(a),
            Some(why) => {
                first_refusal.get_or_insert(why);
            }
        }
    }
    let pick = allowed.iter().find(|a| a.is_ipv4()).or(allowed.first());
    match (pick, first_refusal) {
        (Some(a), _) => Ok(*a),
        (None, Some(why)) => Err(format!("{} resolves to {why}", url.origin())),
        (None, None) => Err(format!("{}: the host has no address", url.origin())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> TargetUrl {
        TargetUrl::parse(s).expect("url")
    }

    #[tokio::test]
    async fn literals_and_names_are_judged_by_address() {
        let p = Policy::default();
        let t = Duration::from_secs(2);
        for s in [
            "http://127.0.0.1",
            "http://[::1]",
            "http://[::ffff:127.0.0.1]",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/",
        ] {
            let e = vet(&url(s), &p, t).await.expect_err(s);
            assert!(e.contains(" is a") || e.contains("resolves to"), "{s}: {e}");
        }
        let e = vet(&url("https://8.8.8.8:8443"), &p, t)
            .await
            .expect_err("port");
        assert!(e.contains("port 8443"), "{e}");
        let ok = vet(&url("https://8.8.8.8"), &p, t).await.expect("public");
        assert_eq!(ok, "8.8.8.8:443".parse().expect("addr"));
    }

    #[tokio::test]
    async fn the_allow_lists_open_a_private_server() {
        let p = Policy {
            allow_networks: vec![Cidr::parse("127.0.0.0/8").expect("cidr")],
            allow_ports: vec![8000..=8100],
        };
        let got = vet(&url("http://localhost:8080"), &p, Duration::from_secs(2))
            .await
            .expect("allowed");
        assert!(got.ip().is_loopback() && got.port() == 8080);
        assert!(
            vet(&url("http://127.0.0.1:9000"), &p, Duration::from_secs(2))
                .await
                .is_err()
        );
    }
}
