//! Who sent a request: the peer address Spin observed, or, when that peer
//! is a proxy the operator trusts, the client the proxy names.
//!
//! Spin copies the client's headers and then *appends* its own
//! `spin-client-addr`, so a client can send a value of its own that comes
//! first; only the last value is Spin's. `X-Forwarded-For` and `Forwarded`
//! are believed only from a peer inside `trusted_proxies`, and are read
//! from the right, skipping further trusted hops, so a client cannot
//! prepend an address of its choice.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The header Spin sets to the TCP peer (`ip:port`).
pub const PEER_HEADER: &str = "spin-client-addr";

/// Networks whose forwarding headers are believed (`trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma- or space-separated list of CIDRs or single addresses.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        text.split([',', ' '])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{p}` is not an address or a CIDR network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address, if the request says: the last `spin-client-addr`,
/// or behind trusted proxies the rightmost untrusted forwarded address.
pub fn client_ip(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = headers
        .get_all(PEER_HEADER)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(parse_addr)?;
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let forwarded = forwarded_chain(headers);
    // From the nearest hop outwards: the first address no trusted proxy
    // owns is the client. An unreadable hop ends the walk at the last
    // address we could vouch for.
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop {
            Some(ip) if trusted.contains(*ip) => client = *ip,
            Some(ip) => return Some(*ip),
            None => return Some(client),
        }
    }
    Some(client)
}

/// Every hop named by `X-Forwarded-For` (all its lines, in order), or, if
/// there is none, by `Forwarded` (RFC 7239 `for=`); `None` for a hop that
/// is not an address (`unknown`, an obfuscated name).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let lines = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default())
            .collect()
    };
    let xff = lines("x-forwarded-for");
    if !xff.is_empty() {
        return xff
            .iter()
            .flat_map(|line| line.split(','))
            .map(|hop| parse_addr(hop.trim()))
            .collect();
    }
    lines("forwarded")
        .iter()
        .flat_map(|line| line.split(','))
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| parse_addr(value.trim().trim_matches('"')))
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5`, `::1`, `[::1]:5`, `[::1]`; IPv4-mapped IPv6
/// (`::ffff:1.2.3.4`) is the IPv4 address it maps.
fn parse_addr(text: &str) -> Option<IpAddr> {
    let ip = text
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .or_else(|_| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or("")
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_last_peer_header_is_spins_own() {
        let none = TrustedProxies::default();
        let h = headers(&[
            (PEER_HEADER, "8.8.8.8:1"),
            (PEER_HEADER, "198.51.100.7:4242"),
        ]);
        assert_eq!(client_ip(&h, &none), ip("198.51.100.7"));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_ipv4_address() {
        let none = TrustedProxies::default();
        let h = headers(&[(PEER_HEADER, "[::ffff:203.0.113.9]:5000")]);
        assert_eq!(client_ip(&h, &none), ip("203.0.113.9"));
        let h = headers(&[(PEER_HEADER, "[2001:db8::1]:5000")]);
        assert_eq!(client_ip(&h, &none), ip("2001:db8::1"));
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let none = TrustedProxies::default();
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=2.2.2.2"),
            (PEER_HEADER, "198.51.100.7:1"),
        ]);
        assert_eq!(client_ip(&h, &none), ip("198.51.100.7"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1").unwrap();
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.5"),
            ("x-forwarded-for", "10.1.2.3"),
            (PEER_HEADER, "192.0.2.1:443"),
        ]);
        assert_eq!(client_ip(&h, &trusted), ip("203.0.113.5"));
        let h = headers(&[
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https"#,
            ),
            (PEER_HEADER, "10.9.9.9:443"),
        ]);
        assert_eq!(client_ip(&h, &trusted), ip("2001:db8:cafe::17"));
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_trusted_address() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, unknown, 10.0.0.2"),
            (PEER_HEADER, "10.0.0.1:1"),
        ]);
        assert_eq!(client_ip(&h, &trusted), ip("10.0.0.2"));
        let h = headers(&[(PEER_HEADER, "10.0.0.1:1")]);
        assert_eq!(client_ip(&h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn no_peer_header_is_no_address() {
        assert_eq!(
            client_ip(&HeaderMap::new(), &TrustedProxies::default()),
            None
        );
        let h = headers(&[(PEER_HEADER, "not an address")]);
        assert_eq!(client_ip(&h, &TrustedProxies::default()), None);
    }

    #[test]
    fn bad_proxy_lists_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
        assert_eq!(
            TrustedProxies::parse(" ").unwrap(),
            TrustedProxies::default()
        );
    }
}
