//! Forwarding rules both sides apply: which headers never travel (hop-by-hop
//! headers, and every header a `Connection` header names), the proxy's own cookies
//! (the names the cookie filter is configured with), the request id and the
//! `X-Forwarded-*` chain.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_core::cookies::{strip_proxy_cookies_bytes, CookieHeaderAction, ProxyCookieNames};

use crate::REQUEST_ID_HEADER;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual extras): never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
];

const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";
const XFH: &str = "x-forwarded-host";

/// Removes the hop-by-hop headers and every header that a `Connection` header
/// lists (`Connection: close, x-secret` drops `x-secret` too).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    for h in listed {
        headers.remove(h);
    }
}

/// Removes the proxy's cookies from the `Cookie` header(s); other cookies are
/// kept byte for byte (several headers become one when something was removed).
pub fn strip_proxy_cookies(headers: &mut HeaderMap, names: &ProxyCookieNames) {
    let action = {
        let values: Vec<&[u8]> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if values.is_empty() {
            return;
        }
        strip_proxy_cookies_bytes(names, &values).0
    };
    match action {
        CookieHeaderAction::Unchanged => {}
        CookieHeaderAction::Remove => {
            headers.remove(header::COOKIE);
        }
        CookieHeaderAction::Replace(v) => {
            headers.remove(header::COOKIE);
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.insert(header::COOKIE, v);
            }
        }
    }
}

/// The request id: a trusted peer's (when it is sane), else a new random one.
pub fn request_id(headers: &HeaderMap, trusted: bool) -> String {
    if trusted {
        if let Some(v) = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
            if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
                return v.to_string();
            }
        }
    }
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the request id header.
pub fn set_request_id(headers: &mut HeaderMap, rid: &str) {
    if let Ok(v) = HeaderValue::from_str(rid) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
}

/// The edge's rules: a trusted peer's `X-Forwarded-For/-Proto/-Host` are kept
/// (others are dropped, as is `Forwarded`); the peer's address is appended; proto
/// defaults to `default_proto` and host to `host`.
pub fn edge_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    default_proto: &str,
    host: Option<&str>,
) {
    let text = |h: &HeaderMap, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (prior, proto, fhost) = if trusted {
        let prior: Vec<String> = headers
            .get_all(XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        (prior, text(headers, XFP), text(headers, XFH))
    } else {
        (Vec::new(), None, None)
    };
    headers.remove(XFF);
    headers.remove(XFP);
    headers.remove(XFH);
    headers.remove(header::FORWARDED);
    let mut chain = prior;
    chain.push(peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(XFF, v);
    }
    if let Ok(v) = HeaderValue::from_str(proto.as_deref().unwrap_or(default_proto)) {
        headers.insert(XFP, v);
    }
    if let Some(h) = fhost.as_deref().or(host) {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(XFH, v);
        }
    }
}

/// The connector's rules: the edge is authenticated (mutual TLS), so its chain is
/// kept and its address appended; host and proto are filled in if missing.
pub fn connector_forwarded(headers: &mut HeaderMap, edge_peer: IpAddr, authority: Option<&str>) {
    let mut chain = headers
        .get_all(XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&edge_peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(XFF, v);
    }
    if !headers.contains_key(XFH) {
        if let Some(h) = authority.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(XFH, h);
        }
    }
    if !headers.contains_key(XFP) {
        headers.insert(XFP, HeaderValue::from_static("https"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_cookies_are_removed_in_any_case_and_others_kept() {
        let names = ProxyCookieNames::default();
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis=a; theme=dark"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("PortCullis_state=b;lang=en; __Secure-portcullis-x=c"),
        );
        strip_proxy_cookies(&mut h, &names);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "theme=dark; lang=en");
        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("__host-PORTCULLIS=a"),
        );
        strip_proxy_cookies(&mut only, &names);
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn configured_cookie_names_are_the_ones_stripped() {
        let names = ProxyCookieNames::new("proxy_cookies", &["__Host-gate".into()], &[]).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-gate=s; portcullis=app-owned; a=1"),
        );
        strip_proxy_cookies(&mut h, &names);
        assert_eq!(h[header::COOKIE], "portcullis=app-owned; a=1");
    }

    #[test]
    fn connection_tokens_and_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret ,x-other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_are_kept_only_from_trusted_peers() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let mut untrusted = h.clone();
        edge_forwarded(&mut untrusted, peer, false, "http", Some("app.test"));
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.9");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "app.test");
        assert!(untrusted.get("forwarded").is_none());
        edge_forwarded(&mut h, peer, true, "http", Some("app.test"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.test");
        connector_forwarded(&mut h, "192.0.2.1".parse().unwrap(), Some("x"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9, 192.0.2.1");
        assert_eq!(h["x-forwarded-host"], "evil.test");
    }

    #[test]
    fn request_id_is_taken_only_from_trusted_peers_and_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h, true).len(), 32);
    }
}
