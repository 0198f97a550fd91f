//! The real client address: the TCP peer, unless the peer is a trusted proxy, in which case
//! its `X-Forwarded-For` (or `Forwarded`) is walked from the right past other trusted proxies.
//!
//! Entries may carry a port (`203.0.113.9:5555`, `[2001:db8::1]:443`), as some load balancers
//! write them. An entry that cannot be read where the walk reaches it is never replaced by the
//! address of the proxy that sent it: that would make every client behind one load balancer a
//! single client (one lockout for all). Such a request is refused instead (`unreadable`).

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::types::canonical_ip;
use crate::config::Cidr;

/// Who sent a request, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client address (for an unreadable chain: the last hop that could be read).
    pub ip: IpAddr,
    /// Whether the TCP peer itself is a trusted proxy.
    pub peer_trusted: bool,
    /// The walk through trusted proxies ended on an entry that is not an address (`unknown`,
    /// an obfuscated name, garbage): the client cannot be told apart from others.
    pub unreadable: bool,
}

/// Finds the client address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> ClientAddr {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = ClientAddr {
        ip: peer,
        peer_trusted: false,
        unreadable: false,
    };
    if !is_trusted(peer) {
        return client;
    }
    client.peer_trusted = true;
    let chain = forwarded_chain(headers);
    // Right to left: each hop was appended by the proxy before it; the first address that is
    // not one of ours is the last one we can vouch for.
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client.ip = *ip;
                if !is_trusted(*ip) {
                    break;
                }
            }
            None => {
                client.unreadable = true;
                break;
            }
        }
    }
    client
}

/// The addresses listed by `X-Forwarded-For`, or failing that by `Forwarded`'s `for=`;
/// `None` for an entry that is not an address (obfuscated, `unknown`, garbage).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.eq_ignore_ascii_case("for").then(|| parse_node(value))
            })
        })
        .collect()
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(canonical_ip)
}

/// An address with an optional port, as `X-Forwarded-For` entries and `Forwarded` `for=`
/// values carry them: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80` (quoted or not). Anything else is `None`.
fn parse_node(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let is_port =
        |port: &str| (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return if port_ok {
            ip.parse::<std::net::Ipv6Addr>()
                .ok()
                .map(|v6| canonical_ip(v6.into()))
        } else {
            None
        };
    }
    if let Some(ip) = parse_ip(value) {
        return Some(ip);
    }
    // `a.b.c.d:port` (a bare IPv6 address was read whole above).
    let (host, port) = value.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let client = client_ip("198.51.100.1".parse().unwrap(), &h, &trusted());
        assert_eq!(client.ip.to_string(), "198.51.100.1");
        assert!(!client.peer_trusted);
    }

    #[test]
    fn trusted_peers_are_walked_from_the_right() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.5, 10.1.1.1"),
        );
        let client = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert_eq!(client.ip.to_string(), "203.0.113.5");
        assert!(client.peer_trusted);
    }

    #[test]
    fn forwarded_header_is_read_when_no_xff() {
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=\"[2001:db8::7]:443\";proto=https, for=10.2.2.2"),
        );
        let client = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert_eq!(client.ip.to_string(), "2001:db8::7");
    }

    #[test]
    fn garbage_where_the_walk_ends_is_unreadable() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, nonsense, 10.1.1.1"),
        );
        let client = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert!(client.unreadable);
        assert_eq!(client.ip.to_string(), "10.1.1.1");
        // Left of the client's own address, garbage is the client's business.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("nonsense, 203.0.113.1, 10.1.1.1"),
        );
        let client = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert!(!client.unreadable);
        assert_eq!(client.ip.to_string(), "203.0.113.1");
    }

    #[test]
    fn entries_may_carry_ports() {
        for (entry, ip) in [
            ("203.0.113.9", "203.0.113.9"),
            ("203.0.113.9:5555", "203.0.113.9"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("\"[2001:db8::1]:443\"", "2001:db8::1"),
            ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ] {
            assert_eq!(
                parse_node(entry).map(|i| i.to_string()).as_deref(),
                Some(ip),
                "{entry}"
            );
        }
        for entry in [
            "unknown",
            "_hidden",
            "203.0.113.9:",
            "203.0.113.9:port",
            "203.0.113.9:123456",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[203.0.113.9]:80",
            "1.2.3",
            "",
        ] {
            assert_eq!(parse_node(entry), None, "{entry}");
        }
    }
}
