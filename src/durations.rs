//! Durations from the config, from clients and from upstreams, and time arithmetic that cannot
//! panic.
//!
//! A leaf module. Every duration an upstream supplies (`Retry-After` in seconds or as an
//! HTTP-date, `retry-after-ms`, an OAuth `expires_in`) is untrusted: it is parsed saturating at
//! [`CEILING`], so `1e20` or `99999999999` is a long but finite duration that the caller then
//! caps by its own configured maximum. `Instant` arithmetic goes through [`later`] and
//! [`earlier`], which never overflow.

use std::time::{Duration, Instant, SystemTime};

/// The longest duration detour represents; anything longer saturates here. Far beyond any
/// configured limit, far below where `Instant` arithmetic could overflow.
pub const CEILING: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parse a config duration: `250ms`, `5s`, `2m`, `1h`. `None` for anything else, or for
/// more than [`CEILING`].
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (d <= CEILING).then_some(d)
}

/// Seconds as an untrusted float: `None` unless finite and non-negative; saturates at
/// [`CEILING`].
pub fn secs_f64(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(CEILING)
            .min(CEILING),
    )
}

/// An upstream's wait hint: `retry-after-ms` (milliseconds, the finer one, wins), else
/// `Retry-After` as seconds or as an HTTP-date (relative to `now`; a past date is zero).
/// Saturating at [`CEILING`]; garbage is `None`.
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(d) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| secs_f64(ms / 1000.0))
    {
        return Some(d);
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return secs_f64(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(CEILING),
    )
}

/// `now + d`, never panicking: `d` is cut to [`CEILING`], and an unrepresentable instant is
/// `now` (expired at once, the safe side for every caller).
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(CEILING)).unwrap_or(now)
}

/// `now - d`, never panicking (an instant before the clock's origin is `now`).
pub fn earlier(now: Instant, d: Duration) -> Instant {
    now.checked_sub(d).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn config_durations() {
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("8784h"), Some(CEILING));
        assert_eq!(parse("8785h"), None, "beyond the ceiling");
        assert_eq!(parse("99999999999999999999h"), None);
        assert_eq!(parse("5"), None);
        assert_eq!(parse("s"), None);
    }

    #[test]
    fn hostile_retry_after_values_saturate_or_are_ignored() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let ra = |pairs: &[(&str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(ra(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            ra(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            ra(&[("retry-after", "2"), ("retry-after-ms", "150")]),
            Some(Duration::from_millis(150)),
            "the finer one wins"
        );
        for huge in ["1e20", "1e19", "99999999999", "1e308"] {
            assert_eq!(ra(&[("retry-after", huge)]), Some(CEILING), "{huge}");
        }
        assert_eq!(ra(&[("retry-after-ms", "1e25")]), Some(CEILING));
        for bad in ["-1", "NaN", "inf", "-inf", "soon", ""] {
            assert_eq!(ra(&[("retry-after", bad)]), None, "{bad}");
        }
        assert_eq!(
            ra(&[("retry-after-ms", "NaN"), ("retry-after", "3")]),
            Some(Duration::from_secs(3)),
            "a garbage retry-after-ms does not hide a good Retry-After"
        );
        // HTTP-date: relative to now; a past date means now.
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            ra(&[("retry-after", &in_90s)]),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(ra(&[("retry-after", &past)]), Some(Duration::ZERO));
        assert_eq!(
            ra(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            Some(CEILING)
        );
    }

    #[test]
    fn instant_arithmetic_never_panics() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), now + CEILING);
        assert_eq!(earlier(now, Duration::MAX), now);
        assert_eq!(
            earlier(now, Duration::from_secs(1)) + Duration::from_secs(1),
            now
        );
    }
}
