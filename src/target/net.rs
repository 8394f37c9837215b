//! Which addresses a header-mode target may reach. Pure: an address in, a reason out.
//!
//! Refused unless the config's allow-list names the range: loopback, RFC 1918 private, CGNAT,
//! link-local (cloud metadata at `169.254.169.254`, `fd00:ec2::254`), multicast, unspecified,
//! reserved and documentation ranges, IPv6 unique-local, link-local and site-local, and every
//! IPv6 form that carries an IPv4 address (mapped, compatible, NAT64, 6to4) when that address
//! is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parse `addr/bits` (or a bare address: one host). `None` if malformed.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, b.parse::<u8>().ok()?),
            None => (s, 128),
        };
        let net: IpAddr = a.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = if s.contains('/') { bits } else { max };
        (bits <= max).then_some(Cidr { net, bits })
    }

    /// Whether `ip` is inside. An IPv4-mapped IPv6 address matches IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why `ip` may not be reached from the header mode, or `None` if it may: allowed when it is
/// public or inside one of `allow`.
pub fn refused(ip: IpAddr, allow: &[Cidr]) -> Option<&'static str> {
    if allow.iter().any(|c| c.contains(ip)) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6, allow),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let why = match o {
        [0, ..] => "an unspecified address",
        [127, ..] => "a loopback address",
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "a private (RFC 1918) address",
        [100, 64..=127, ..] => "a carrier-grade NAT address",
        [169, 254, ..] => "a link-local address (cloud metadata lives here)",
        [224..=239, ..] => "a multicast address",
        [240..=255, ..] => "a reserved or broadcast address",
        [192, 0, 0, _] | [198, 18..=19, ..] => "a reserved address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        _ => return None,
    };
    Some(why)
}

fn refused_v6(ip: Ipv6Addr, allow: &[Cidr]) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        // Judge what it reaches: `::ffff:127.0.0.1` is loopback.
        return refused(IpAddr::V4(v4), allow).map(|_| "an IPv6 form of a refused IPv4 address");
    }
    let s = ip.segments();
    let why = match s[0] {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        0xfc00..=0xfdff => "a unique-local address",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xff00..=0xffff => "a multicast address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only address",
        0x0064 if s[1] == 0xff9b && s[2] == 1 => "a local-use NAT64 address",
        0x2001 if s[1] == 0 => "a Teredo tunnel address",
        0x2001 if s[1] == 0xdb8 => "a documentation address",
        _ => return None,
    };
    Some(why)
}

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // NAT64, and the IPv4-translated form `::ffff:0:a.b.c.d`.
        return Some(tail);
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// A host written as an IPv4 address in any spelling `inet_aton` accepts — `2130706433`,
/// `0x7f.1`, `0177.0.0.1`, `127.1` — as that address; `None` for a name. These spellings are
/// read only so the address they denote is judged like any other.
pub fn loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| parse_part(p))
        .collect::<Option<Vec<u64>>>()?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|n| *n > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    let mut v: u64 = 0;
    for (i, n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((v | last) as u32))
}

fn parse_part(p: &str) -> Option<u64> {
    if p.is_empty() || p.len() > 12 {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // `0x` alone is 0, as inet_aton reads it.
        return (radix == 16).then_some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(s: &str) -> bool {
        refused(s.parse().expect("ip"), &[]).is_some()
    }

    #[test]
    fn private_and_special_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001::1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(no(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "104.18.6.192",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::6810:7c1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!no(ip), "{ip} must pass");
        }
    }

    #[test]
    fn the_allow_list_opens_a_range_and_its_mapped_forms() {
        let allow = [Cidr::parse("127.0.0.0/8").expect("cidr")];
        assert_eq!(refused("127.0.0.1".parse().expect("ip"), &allow), None);
        assert_eq!(
            refused("::ffff:127.0.0.1".parse().expect("ip"), &allow),
            None
        );
        assert!(refused("10.0.0.1".parse().expect("ip"), &allow).is_some());
        let one = [Cidr::parse("fd00::5").expect("cidr")];
        assert_eq!(refused("fd00::5".parse().expect("ip"), &one), None);
        assert!(refused("fd00::6".parse().expect("ip"), &one).is_some());
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("::/129").is_none());
        assert!(Cidr::parse("x/8").is_none());
        let c = Cidr::parse("172.16.0.0/12").expect("cidr");
        assert!(c.contains("172.31.1.1".parse().expect("ip")));
        assert!(!c.contains("172.32.1.1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("cidr")
            .contains("1.2.3.4".parse().expect("ip")));
    }

    #[test]
    fn every_ipv4_spelling_is_read_as_its_address() {
        let lo = Ipv4Addr::new(127, 0, 0, 1);
        for s in [
            "2130706433",
            "0x7f000001",
            "017700000001",
            "127.1",
            "0x7f.1",
            "0177.0.0.1",
        ] {
            assert_eq!(loose_ipv4(s), Some(lo), "{s}");
        }
        assert_eq!(
            loose_ipv4("169.254.43518"),
            Some(Ipv4Addr::new(169, 254, 169, 254))
        );
        for s in [
            "api.openai.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "4294967296",
            "",
            "1..2",
            "09",
        ] {
            assert_eq!(loose_ipv4(s), None, "{s}");
        }
    }
}
