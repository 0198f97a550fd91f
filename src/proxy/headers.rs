//! The per-request header rewrite: hop-by-hop headers out, client-supplied identity and
//! forwarding headers out (in every spelling), then the proxy's own headers in.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use crate::auth::Identity;
use crate::auth::Scheme;
use crate::config::IdentityConfig;

/// The request id header, as a name (no parsing per request).
const REQUEST_ID: HeaderName = HeaderName::from_static(crate::response::REQUEST_ID);

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard ones proxies have always dropped).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Headers through which an upstream might learn who the caller is or where the request came
/// from, or by which it might re-route the request. A client must never set them; they are
/// matched ignoring case and treating `_` as `-`, since some servers (CGI, WSGI, PHP) fold both
/// spellings into one.
const SPOOFABLE: [&str; 21] = [
    "x-forwarded-user",
    "x-forwarded-identity",
    "x-forwarded-groups",
    "x-forwarded-auth-method",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "remote-user",
    "x-remote-user",
    "x-auth-request-user",
];

/// What the rewrite needs to know about the request.
pub struct ForwardContext<'a> {
    /// The address this hop appends to `X-Forwarded-For` and `Forwarded`: the TCP peer.
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are extended).
    pub peer_trusted: bool,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The host the client asked for (`Host` or the HTTP/2 authority).
    pub host: Option<HeaderValue>,
    /// The request id to pass on.
    pub request_id: &'a HeaderValue,
    /// The authenticated caller, if any.
    pub identity: Option<&'a Identity>,
    /// `[identity]`
    pub config: &'a IdentityConfig,
    /// Keep the client's Host.
    pub preserve_host: bool,
}

/// `HTTP2-Settings` (RFC 7540 §3.2): only meaningful with an `h2c` upgrade, which is never
/// passed on.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Rewrites request headers for the upstream. Of the protocol upgrades, only a WebSocket
/// handshake is kept: any other (`h2c`, `TLS/1.2`, …) would let an upstream that switches
/// turn this connection into a tunnel past every later check, so such a request goes on as a
/// plain one.
pub fn rewrite_request(headers: &mut HeaderMap, ctx: &ForwardContext<'_>) {
    let websocket = requests_websocket(headers);
    headers.remove(&HTTP2_SETTINGS);
    let prior_for = ctx.peer_trusted.then(|| joined(headers, &X_FORWARDED_FOR));
    let prior_forwarded = ctx
        .peer_trusted
        .then(|| joined(headers, &header::FORWARDED));
    // Headers named in Connection go first; everything the proxy adds is added after this, so a
    // client's `Connection: X-Forwarded-User` can never remove the identity we set.
    remove_connection_listed(headers);
    remove_hop_by_hop(headers);
    remove_spoofable(headers, ctx.config);
    // Only the credential that admitted this request may travel on: not one that came along
    // with a session that did, nor one sent to a public route (nobody checked it).
    let admitted_by_authorization = ctx
        .identity
        .is_some_and(|i| matches!(i.method, Scheme::Basic | Scheme::Bearer));
    if !(ctx.config.forward_authorization && admitted_by_authorization) {
        headers.remove(header::AUTHORIZATION);
    }
    if !ctx.preserve_host {
        headers.remove(header::HOST);
    } else if let (false, Some(host)) = (headers.contains_key(header::HOST), &ctx.host) {
        headers.insert(header::HOST, host.clone());
    }
    join_cookies(headers);
    add_forwarding(headers, ctx, prior_for.flatten(), prior_forwarded.flatten());
    add_identity(headers, ctx);
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// Several `Cookie` fields become one, joined with `; `: HTTP/2 clients may send one field per
/// cookie (RFC 9113 §8.2.3), and an HTTP/1.1 upstream must get a single line (RFC 6265 §5.4),
/// else it may read only the first or the last.
fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.nth(1).is_none() {
        return;
    }
    let mut line: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.extend_from_slice(b"; ");
        }
        line.extend_from_slice(value);
    }
    headers.remove(header::COOKIE);
    // Valid field values joined by "; " are a valid field value.
    if let Ok(joined) = HeaderValue::from_bytes(&line) {
        if !line.is_empty() {
            headers.insert(header::COOKIE, joined);
        }
    }
}

/// Strips hop-by-hop headers from an upstream response (keeping the upgrade handshake of a
/// 101 response, which the caller has checked is a WebSocket one).
pub fn rewrite_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade = switching_protocols
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    remove_connection_listed(headers);
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Whether the request asks for a WebSocket upgrade and nothing else: `Connection` lists
/// `upgrade`, and there is one `Upgrade` header whose only token is `websocket` (any case).
pub fn requests_websocket(headers: &HeaderMap) -> bool {
    let listed = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    match (listed, upgrades.next(), upgrades.next()) {
        (true, Some(only), None) => only
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")),
        _ => false,
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes every hop-by-hop header. One pass over the names first, then only the ones found
/// are removed: most messages carry none or only `Connection`, and a removal costs a hash and
/// a probe per name.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

fn remove_connection_listed(headers: &mut HeaderMap) {
    // `Connection: keep-alive` (or `close`) is the usual value, and names no header the
    // message has: look before collecting anything.
    if !connection_tokens(headers).any(|t| headers.contains_key(t)) {
        return;
    }
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Whether a header name equals `target` once `_` is read as `-` (names are lower case).
fn same_header(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

fn remove_spoofable(headers: &mut HeaderMap, config: &IdentityConfig) {
    let configured = [
        config.user_header.as_str(),
        config.groups_header.as_str(),
        config.auth_method_header.as_str(),
        config.identity_header.as_str(),
        crate::response::REQUEST_ID,
    ];
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            SPOOFABLE
                .iter()
                .chain(configured.iter())
                .any(|target| same_header(name, target))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

// Each header value below is written once into a `String` whose buffer then becomes the
// value (`Bytes::from(String)` takes it without copying): one allocation per header.

fn add_forwarding(
    headers: &mut HeaderMap,
    ctx: &ForwardContext<'_>,
    prior_for: Option<String>,
    prior_forwarded: Option<String>,
) {
    let mut xff = match prior_for {
        Some(mut prior) => {
            prior.push_str(", ");
            prior
        }
        None => String::with_capacity(40),
    };
    // The address is formatted once, at the end of X-Forwarded-For, and copied from there.
    let ip_starts = xff.len();
    let _ = write!(xff, "{}", ctx.client_ip);
    let ip = &xff[ip_starts..];
    let mut forwarded = match prior_forwarded {
        Some(mut prior) => {
            prior.push_str(", ");
            prior
        }
        None => String::with_capacity(64),
    };
    match ctx.client_ip {
        IpAddr::V4(_) => {
            forwarded.push_str("for=");
            forwarded.push_str(ip);
        }
        IpAddr::V6(_) => {
            forwarded.push_str("for=\"[");
            forwarded.push_str(ip);
            forwarded.push_str("]\"");
        }
    }
    insert_owned(headers, X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(ctx.proto));
    if let Some(host) = &ctx.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(ctx.proto);
    if let Some(host) = ctx.host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=");
        crate::response::challenge::push_quoted(&mut forwarded, host);
    }
    insert_owned(headers, header::FORWARDED, forwarded);
    headers.insert(REQUEST_ID, ctx.request_id.clone());
}

fn add_identity(headers: &mut HeaderMap, ctx: &ForwardContext<'_>) {
    let Some(identity) = ctx.identity else { return };
    insert_owned(
        headers,
        ctx.config.user_header.clone(),
        identity.user().to_owned(),
    );
    let groups = identity.groups();
    let mut joined = String::with_capacity(groups.iter().map(|g| g.len() + 1).sum());
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            joined.push(',');
        }
        joined.push_str(group);
    }
    insert_owned(headers, ctx.config.groups_header.clone(), joined);
    insert_owned(
        headers,
        ctx.config.identity_header.clone(),
        identity.qualified().into_owned(),
    );
    headers.insert(
        ctx.config.auth_method_header.clone(),
        HeaderValue::from_static(identity.method.as_str()),
    );
}

/// Inserts `value` as the header's value without copying it. Values are formatted by us or
/// come from the config; one that is still not a valid header value is dropped rather than
/// sent half-formed.
fn insert_owned(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IdentityConfig {
        IdentityConfig {
            user_header: HeaderName::from_static("x-forwarded-user"),
            groups_header: HeaderName::from_static("x-forwarded-groups"),
            auth_method_header: HeaderName::from_static("x-forwarded-auth-method"),
            identity_header: HeaderName::from_static("x-forwarded-identity"),
            forward_authorization: false,
        }
    }

    fn rewrite(headers: &mut HeaderMap, trusted: bool) {
        let config = config();
        let id = HeaderValue::from_static("req-1");
        let ctx = ForwardContext {
            client_ip: "192.0.2.7".parse().unwrap(),
            peer_trusted: trusted,
            proto: "http",
            host: Some(HeaderValue::from_static("example.com")),
            request_id: &id,
            identity: None,
            config: &config,
            preserve_host: false,
        };
        rewrite_request(headers, &ctx);
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        for value in ["a=1", " ", "b=2; c=3", "d=4"] {
            headers.append(header::COOKIE, HeaderValue::from_static(value));
        }
        rewrite(&mut headers, false);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3; d=4"]);

        let mut single = HeaderMap::new();
        single.insert(header::COOKIE, HeaderValue::from_static("x=1;y=2"));
        rewrite(&mut single, false);
        assert_eq!(single.get(header::COOKIE).unwrap(), "x=1;y=2");
    }

    #[test]
    fn spoofed_identity_is_removed_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "X-Forwarded_User",
            "x-real-ip",
            "x-original-url",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
        }
        rewrite(&mut h, false);
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x-real-ip",
            "x-original-url",
        ] {
            assert!(!h.contains_key(name), "{name} survived");
        }
    }

    #[test]
    fn connection_cannot_remove_proxy_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, x-request-id, keep-alive"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        rewrite(&mut h, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-request-id"], "req-1");
        assert!(!h.contains_key(header::CONNECTION));
        assert!(h.contains_key("x-custom"));
    }

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        rewrite(&mut h, false);
        assert!(!h.contains_key("x-secret-hop"));
    }

    #[test]
    fn trusted_peers_extend_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        rewrite(&mut h, true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        rewrite(&mut h, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"example.com\""
        );
    }

    #[test]
    fn upgrade_survives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        rewrite(&mut h, false);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn only_a_websocket_upgrade_survives() {
        for (connection, upgrade) in [
            ("Upgrade, HTTP2-Settings", vec!["h2c"]),
            ("upgrade", vec!["TLS/1.2"]),
            ("upgrade", vec!["websocket, h2c"]),
            ("upgrade", vec!["h2c, websocket"]),
            ("upgrade", vec!["websocket", "h2c"]),
            ("upgrade", vec!["websocket/13"]),
            ("keep-alive", vec!["websocket"]),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            for u in &upgrade {
                h.append(header::UPGRADE, HeaderValue::from_static(u));
            }
            h.insert(
                HTTP2_SETTINGS,
                HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"),
            );
            rewrite(&mut h, false);
            assert!(!h.contains_key(header::UPGRADE), "{upgrade:?}");
            assert!(!h.contains_key(header::CONNECTION), "{upgrade:?}");
            assert!(!h.contains_key(HTTP2_SETTINGS), "{upgrade:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static(" WebSocket "));
        rewrite(&mut h, false);
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
