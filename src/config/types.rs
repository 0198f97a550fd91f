//! Value types that validate themselves while the TOML is read, so that a bad value is reported
//! by the TOML parser with the exact line and column of the offending value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::auth::password::PasswordHash;

/// Implements `Deserialize` for a type through its `FromStr`, so the parse error message becomes
/// the TOML error message (with the span of the value attached by the TOML parser).
fn from_str_de<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

// === impl HumanDuration ===

/// A duration written as a number followed by a unit: `500ms`, `30s`, `15m`, `12h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid duration {text:?}: expected a whole number followed by a unit, \
                 one of ms, s, m, h, d (for example \"30s\" or \"15m\")"
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(expected)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| expected())?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(expected()),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        Ok(HumanDuration(Duration::from_millis(millis)))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ];
        for (size, unit) in units {
            if millis >= size && millis.is_multiple_of(size) {
                return write!(f, "{}{unit}", millis / size);
            }
        }
        write!(f, "{millis}ms")
    }
}

// === impl ListenAddr ===

/// An `ip:port` socket address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse().map(ListenAddr).map_err(|_| {
            format!(
                "invalid listen address {text:?}: expected IP:PORT, for example \
                 \"0.0.0.0:8080\" or \"[::1]:8080\" (host names are not resolved)"
            )
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

// === impl Cidr ===

/// A network in CIDR notation; a bare address means that single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// Whether `ip` lies in this network; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical_ip(ip))
    }
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`, so dual-stack listeners see the same client addresses.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(ip)));
        }
        Err(format!(
            "invalid CIDR {text:?}: expected an address or a network such as \
             \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\""
        ))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

// === impl UpstreamUrl ===

/// The upstream's scheme and authority; requests keep their own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host:port` as written.
    pub authority: http::uri::Authority,
}

impl FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = |why: &str| {
            format!("invalid upstream url {text:?}: {why} (expected for example \"http://127.0.0.1:3000\")")
        };
        let uri: http::Uri = text.parse().map_err(|_| expected("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| expected("no scheme"))?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(expected("the scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| expected("no host"))?;
        if authority.as_str().contains('@') {
            return Err(expected("user information in the URL is not supported"));
        }
        let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
        if !path_ok {
            return Err(expected("a path or query on the upstream is not supported"));
        }
        Ok(UpstreamUrl { scheme, authority })
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

// === impl RoutePath ===

/// A route's path prefix, canonical: starts with `/`, no dot segments, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutePath(Arc<str>);

impl RoutePath {
    /// The canonical prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix as a shared string: every request logs its route, and this is a reference
    /// count instead of a copy.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl FromStr for RoutePath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        crate::path::canonical_route_path(text)
            .map(|path| RoutePath(path.into()))
            .map_err(|why| format!("invalid route path: {why}"))
    }
}

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

impl fmt::Display for RoutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl HeaderNameValue ===

/// A header name from the config (for the identity headers), validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigHeaderName(pub http::HeaderName);

impl FromStr for ConfigHeaderName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        http::HeaderName::from_bytes(text.as_bytes())
            .map(ConfigHeaderName)
            .map_err(|_| format!("invalid header name {text:?}: expected letters, digits and '-'"))
    }
}

impl<'de> Deserialize<'de> for ConfigHeaderName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

// === impl ConfigMethod ===

/// An HTTP method named in a route's `methods` list (upper case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMethod(pub http::Method);

impl FromStr for ConfigMethod {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
        if !valid {
            return Err(format!(
                "invalid method {text:?}: expected an upper-case HTTP method such as \"GET\""
            ));
        }
        http::Method::from_bytes(text.as_bytes())
            .map(ConfigMethod)
            .map_err(|_| format!("invalid method {text:?}"))
    }
}

impl<'de> Deserialize<'de> for ConfigMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

// === impl ConfigPasswordHash ===

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PasswordHash::parse(&text).map_err(de::Error::custom)
    }
}

/// A SHA-256 digest written as 64 hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct Sha256Hex(pub [u8; 32]);

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hex(..)")
    }
}

impl FromStr for Sha256Hex {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        let ok = text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok();
        if !ok {
            return Err(
                "invalid token_sha256: expected 64 hex characters (the SHA-256 of the token; \
                 `portcullis gen-token` prints one)"
                    .to_string(),
            );
        }
        Ok(Sha256Hex(out))
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_str_de(deserializer)
    }
}

/// An RFC 3339 timestamp, kept as seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub i64);

impl FromStr for Rfc3339 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_rfc3339(text).map(Rfc3339).ok_or_else(|| {
            format!("invalid timestamp {text:?}: expected RFC 3339, for example \"2027-01-01T00:00:00Z\"")
        })
    }
}

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // TOML has a native datetime type; accept it as well as a string.
        let value = toml::Value::deserialize(deserializer)?;
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Datetime(d) => d.to_string(),
            _ => return Err(de::Error::custom("expected an RFC 3339 timestamp")),
        };
        text.parse().map_err(de::Error::custom)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into Unix seconds.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let separators = bytes[4] == b'-' && bytes[7] == b'-' && bytes[13] == b':' && bytes[16] == b':';
    let in_range = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !separators || !in_range {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours = num_of(&rest[1..3])?;
            let minutes = num_of(&rest[4..6])?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn num_of(text: &str) -> Option<i64> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())?
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_every_unit() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("15m", 900_000),
            ("12h", 43_200_000),
            ("7d", 604_800_000),
        ];
        for (text, millis) in cases {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.0, Duration::from_millis(millis), "{text}");
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn durations_reject_garbage() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-5s",
            "1.5s",
            "10 s",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cidrs_accept_networks_and_addresses() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let single: Cidr = "192.168.1.7".parse().unwrap();
        assert!(single.contains("192.168.1.7".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana".parse::<Cidr>().is_err());
    }

    #[test]
    fn rfc3339_parses_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(1_798_761_600));
        assert_eq!(
            parse_rfc3339("2027-01-01T01:00:00+01:00"),
            Some(1_798_761_600)
        );
        assert_eq!(
            parse_rfc3339("2027-01-01T00:00:00.250Z"),
            Some(1_798_761_600)
        );
        assert_eq!(parse_rfc3339("2027-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn upstream_urls_must_be_plain_http_origins() {
        assert!("http://127.0.0.1:3000".parse::<UpstreamUrl>().is_ok());
        assert!("http://127.0.0.1:3000/".parse::<UpstreamUrl>().is_ok());
        assert!("127.0.0.1:3000".parse::<UpstreamUrl>().is_err());
        assert!("http://127.0.0.1:3000/app".parse::<UpstreamUrl>().is_err());
        assert!("https://example.com".parse::<UpstreamUrl>().is_ok());
        assert!("ftp://x".parse::<UpstreamUrl>().is_err());
    }
}
