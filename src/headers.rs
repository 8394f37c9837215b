//! Classes of header names, shared by every path that forwards headers (a provider attempt,
//! a header-mode target, a response passed back). Pure.

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy ones): they concern one connection and
/// are never forwarded. `Content-Length` and `Host` are not here: each path sets them itself.
pub fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Headers that steer detour (`x-detour-*`) or Helicone (`helicone-*`): read by detour, never
/// sent to a target, never taken from one.
pub fn steering(name: &str) -> bool {
    name.starts_with("helicone-") || name.starts_with("x-detour-")
}

/// The header names a `Connection:` header lists (hop-by-hop for that message), lower-cased.
pub fn connection_named(h: &http::HeaderMap) -> Vec<String> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}
