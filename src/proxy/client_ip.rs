//! The real client address: the TCP peer, unless the peer is a trusted proxy, in which case
//! its `X-Forwarded-For` (or `Forwarded`) is walked from the right past other trusted proxies.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::types::canonical_ip;
use crate::config::Cidr;

/// Returns the client address and whether the TCP peer itself is trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> (IpAddr, bool) {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return (peer, false);
    }
    let chain = forwarded_chain(headers);
    // Right to left: each hop was appended by the proxy before it; the first address that is
    // not one of ours is the last one we can vouch for.
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(*ip) {
                    break;
                }
            }
            None => break,
        }
    }
    (client, true)
}

/// The addresses listed by `X-Forwarded-For`, or failing that by `Forwarded`'s `for=`;
/// `None` for an entry that is not an address (obfuscated, `unknown`, garbage).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|entry| parse_ip(entry.trim()))
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
                key.eq_ignore_ascii_case("for")
                    .then(|| parse_forwarded_node(value))
            })
        })
        .collect()
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(canonical_ip)
}

/// `for=192.0.2.1`, `for="192.0.2.1:80"`, `for="[2001:db8::1]:80"`.
fn parse_forwarded_node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return parse_ip(ip);
    }
    let host = match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => value,
    };
    parse_ip(host)
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
        let (ip, trusted_peer) = client_ip("198.51.100.1".parse().unwrap(), &h, &trusted());
        assert_eq!(ip.to_string(), "198.51.100.1");
        assert!(!trusted_peer);
    }

    #[test]
    fn trusted_peers_are_walked_from_the_right() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.5, 10.1.1.1"),
        );
        let (ip, trusted_peer) = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert_eq!(ip.to_string(), "203.0.113.5");
        assert!(trusted_peer);
    }

    #[test]
    fn forwarded_header_is_read_when_no_xff() {
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=\"[2001:db8::7]:443\";proto=https, for=10.2.2.2"),
        );
        let (ip, _) = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert_eq!(ip.to_string(), "2001:db8::7");
    }

    #[test]
    fn garbage_stops_the_walk() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, nonsense, 10.1.1.1"),
        );
        let (ip, _) = client_ip("10.0.0.2".parse().unwrap(), &h, &trusted());
        assert_eq!(ip.to_string(), "10.1.1.1");
    }
}
