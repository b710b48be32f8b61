//! What the app learns about the client is what Envoy saw.
//!
//! Backends believe a handful of request headers about the original host,
//! client address, URL and method. A client can send any of them, and Envoy
//! passes most through untouched (it only maintains `X-Forwarded-For` and, at
//! the edge, `X-Forwarded-Proto`). The preauth filter therefore removes every
//! client copy of [`UNTRUSTED_CLIENT_HEADERS`] (any letter case, `_` for `-`),
//! in every mode and for unknown hosts too, and then sets `X-Forwarded-Host`
//! to the `:authority` Envoy routed on and `X-Real-IP` to Envoy's downstream
//! address ([`forwarded_headers`]).
//!
//! This lives in the filter, not only in Envoy routes, so that it holds in
//! every deployment that runs preauth (Istio and Envoy Gateway routes cannot be
//! relied on to remove them).
//!
//! `X-Original-URL` and `X-Rewrite-URL` replace the request path in IIS and in
//! some frameworks, and the method overrides replace the method: an app that
//! honoured a client copy would serve another path or method than the one the
//! policies judged.

/// Request headers (lower case) whose client copies never reach the app.
pub const UNTRUSTED_CLIENT_HEADERS: &[&str] = &[
    // The original host.
    "x-forwarded-host",
    "x-forwarded-server",
    "x-original-host",
    "x-host",
    // The original scheme, port and prefix (`X-Forwarded-Proto` is Envoy's).
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
    // The client address (`X-Forwarded-For` is Envoy's: it appends what it saw).
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    // The original URL: these replace the path in IIS and some frameworks.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-path",
    // Method overrides: these replace the method the policies judged.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The header set from the request's `:authority`.
pub const FORWARDED_HOST: &str = "x-forwarded-host";
/// The header set from Envoy's downstream address.
pub const REAL_IP: &str = "x-real-ip";

/// True when a header (its name lower-cased, `_` read as `-`) is one whose
/// client copy is removed.
pub fn is_untrusted(canonical_name: &str) -> bool {
    UNTRUSTED_CLIENT_HEADERS.contains(&canonical_name)
}

/// The headers to set for the app: `X-Forwarded-Host` from the
/// `:authority` Envoy routed on (when it is a header value that can be sent),
/// `X-Real-IP` from Envoy's downstream address (`source.address`, with or
/// without a port).
pub fn forwarded_headers(authority: &str, downstream: Option<&str>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(2);
    if !authority.is_empty()
        && authority.len() <= 1024
        && authority.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        out.push((FORWARDED_HOST.to_string(), authority.to_string()));
    }
    if let Some(ip) = downstream.and_then(address_without_port) {
        out.push((REAL_IP.to_string(), ip.to_string()));
    }
    out
}

/// The address part of Envoy's `source.address` (`192.0.2.1:443`,
/// `[2001:db8::1]:443`, or either without a port), as Envoy wrote it. Envoy
/// writes a well-formed address; only its characters are checked (hex digits,
/// `.` and `:`), which is far cheaper per request than parsing and printing it.
fn address_without_port(text: &str) -> Option<&str> {
    let addr = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None if text.bytes().filter(|b| *b == b':').count() == 1 => text.split_once(':')?.0,
        None => text,
    };
    (!addr.is_empty()
        && addr.len() <= 45
        && addr
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':'))
    .then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_what_envoy_saw() {
        assert_eq!(
            forwarded_headers("admin.localhost:10000", Some("127.0.0.1:50000")),
            vec![
                (
                    "x-forwarded-host".to_string(),
                    "admin.localhost:10000".to_string()
                ),
                ("x-real-ip".to_string(), "127.0.0.1".to_string()),
            ]
        );
        assert_eq!(
            forwarded_headers("a", Some("[2001:db8::1]:443"))[1].1,
            "2001:db8::1"
        );
        // Nothing is invented: no authority, no address, or unusable ones.
        assert!(forwarded_headers("", None).is_empty());
        assert!(forwarded_headers("a b", Some("not an address")).is_empty());
        assert!(forwarded_headers("a b", Some("[::1")).is_empty());
        assert_eq!(forwarded_headers("a b", Some("10.0.0.1"))[0].1, "10.0.0.1");
        assert_eq!(
            forwarded_headers("a b", Some("2001:db8::1"))[0].1,
            "2001:db8::1"
        );
    }

    #[test]
    fn the_list_is_lower_case_and_keeps_envoys_own_headers() {
        for h in UNTRUSTED_CLIENT_HEADERS {
            assert_eq!(*h, h.to_ascii_lowercase());
        }
        assert!(is_untrusted("x-original-url") && is_untrusted("forwarded"));
        assert!(!is_untrusted("x-forwarded-for") && !is_untrusted("x-forwarded-proto"));
    }
}
