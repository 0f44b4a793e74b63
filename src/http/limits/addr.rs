//! Which client a request comes from, as the per-address limits see it.
//!
//! The peer address of the TCP connection (axum's `ConnectInfo<SocketAddr>`), or, only when the
//! operator says a proxy in front sets it (`--trust-forwarded-for`), the last address of
//! `X-Forwarded-For`: a client can put anything in that header, so trusting it without a proxy
//! would let anyone pick their own key. IPv4-mapped IPv6 addresses count as the IPv4 address, and
//! an IPv6 client is keyed by its /64 prefix: one host usually owns a whole /64, so keying by the
//! full address would let it rotate through 2^64 keys. Addresses in an exempt range (loopback by
//! default, so benchmarks and local tools are never throttled) get no key at all.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;

/// A range of client addresses in CIDR notation (`127.0.0.0/8`, `::1`, `10.1.2.3`), for
/// [`super::LimitsConfig::exempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    /// The range's first address (host bits cleared).
    pub network: IpAddr,
    /// Leading bits that must match.
    pub prefix: u8,
}

/// Why a text is not an address range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range: expected an IP address or CIDR such as 127.0.0.0/8 or ::1/128")]
pub struct AddrRangeError(String);

impl AddrRange {
    /// Whether `ip` lies in this range (an IPv4 address never lies in an IPv6 range, and the other
    /// way round; IPv4-mapped IPv6 addresses are compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask32(u32::from(ip), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask128(u128::from(ip), self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

impl FromStr for AddrRange {
    type Err = AddrRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || AddrRangeError(text.to_string());
        let (ip, prefix) = match text.trim().split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask32(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask128(u128::from(v6), prefix).into()),
        };
        Ok(AddrRange { network, prefix })
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(prefix))) }
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(prefix))) }
}

/// The key of the client of a request: `None` when the address is unknown (the embedding
/// application serves without `ConnectInfo`) or exempt.
pub(super) fn client_key(parts: &Parts, trust_forwarded_for: bool, exempt: &[AddrRange]) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded = if trust_forwarded_for { forwarded_for(&parts.headers) } else { None };
    let ip = forwarded.or(peer)?.to_canonical();
    if exempt.iter().any(|range| range.contains(ip)) {
        return None;
    }
    Some(key_of(ip))
}

/// IPv4 as is; IPv6 by its /64 prefix.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(v6), 64))),
    }
}

/// The last address in the last `X-Forwarded-For` header: the one the proxy in front of us saw
/// (earlier entries were written by the client or by proxies we know nothing about).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.trim_start_matches('[').trim_end_matches(']').parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn range(text: &str) -> AddrRange {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        assert_eq!(range("127.0.0.0/8").to_string(), "127.0.0.0/8");
        assert_eq!(range("10.1.2.3/16").to_string(), "10.1.0.0/16", "host bits are cleared");
        assert_eq!(range("::1").to_string(), "::1/128");
        assert_eq!(range("::ffff:127.0.0.1").to_string(), "127.0.0.1/32", "mapped IPv4 is IPv4");
        assert!(range("127.0.0.0/8").contains(ip("127.200.3.4")));
        assert!(range("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!range("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(!range("127.0.0.0/8").contains(ip("::1")));
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(range("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!range("2001:db8::/32").contains(ip("2001:db9::1")));
        for bad in ["", "localhost", "127.0.0.1/33", "::1/129", "1.2.3.4/x", "1.2.3/8"] {
            assert!(bad.parse::<AddrRange>().is_err(), "{bad}");
        }
    }

    fn parts(peer: Option<&str>, forwarded: &[&str]) -> Parts {
        let mut request = Request::builder();
        for value in forwarded {
            request = request.header("x-forwarded-for", *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        if let Some(peer) = peer {
            parts.extensions.insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        }
        parts
    }

    #[test]
    fn the_client_key() {
        let loopback = [range("127.0.0.0/8"), range("::1")];
        // The peer, unless exempt; nothing without ConnectInfo.
        assert_eq!(client_key(&parts(Some("192.0.2.1:5000"), &[]), false, &loopback), Some(ip("192.0.2.1")));
        assert_eq!(client_key(&parts(Some("127.0.0.1:5000"), &[]), false, &loopback), None);
        assert_eq!(client_key(&parts(Some("[::1]:5000"), &[]), false, &loopback), None);
        assert_eq!(client_key(&parts(None, &[]), false, &[]), None);
        // IPv6 by /64; mapped IPv4 as IPv4.
        assert_eq!(client_key(&parts(Some("[2001:db8:1:2:3::9]:1"), &[]), false, &[]), Some(ip("2001:db8:1:2::")));
        assert_eq!(client_key(&parts(Some("[::ffff:192.0.2.7]:1"), &[]), false, &[]), Some(ip("192.0.2.7")));
        // X-Forwarded-For only when trusted, and then its last entry.
        let proxied = parts(Some("127.0.0.1:5000"), &["203.0.113.9, 198.51.100.4"]);
        assert_eq!(client_key(&proxied, false, &loopback), None, "the proxy itself is exempt");
        assert_eq!(client_key(&proxied, true, &loopback), Some(ip("198.51.100.4")));
        let two = parts(Some("127.0.0.1:5000"), &["203.0.113.9", "198.51.100.5:443"]);
        assert_eq!(client_key(&two, true, &loopback), Some(ip("198.51.100.5")));
        let garbage = parts(Some("192.0.2.1:5000"), &["unknown"]);
        assert_eq!(client_key(&garbage, true, &loopback), Some(ip("192.0.2.1")), "unreadable: the peer");
        assert_eq!(client_key(&parts(None, &["[2001:db8::1]"]), true, &[]), Some(ip("2001:db8::")));
    }
}
