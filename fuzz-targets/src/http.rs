//! Cookie headers, Set-Cookie, URL translation in headers and bodies, and the
//! request inputs of conditional access.

use crate::{split2, text};
use portcullis_core::cookies::{
    BodyMatcher, BodyRewriter, CookieFilterConfig, CookieHeaderAction, SetCookieOutcome,
};
use portcullis_core::policy::{address, eval, StepUpMarker};
use std::sync::OnceLock;

/// The cookie filter configuration of the targets: two apps, one with path
/// mapping, header and body translation on, the other with defaults.
pub const COOKIE_CONFIG: &str = r#"{
  "proxy_cookies": { "names": ["__Host-portcullis"], "prefixes": ["portcullis"] },
  "apps": [
    { "name": "wiki", "internal_url": "http://wiki.internal:8080/app",
      "external_url": "https://wiki.localhost:10443/",
      "set_cookie": { "secure": true, "http_only": true, "same_site": "Lax", "domain": "rewrite", "map_path": true },
      "translate_headers": true,
      "body": { "enabled": true, "max_body_bytes": 10485760 } },
    { "internal_url": "http://10.0.0.7", "external_url": "https://portal.localhost/hr",
      "set_cookie": { "domain": "drop" } }
  ]
}"#;

fn cookie_config() -> &'static CookieFilterConfig {
    static C: OnceLock<CookieFilterConfig> = OnceLock::new();
    C.get_or_init(
        || match CookieFilterConfig::from_json(COOKIE_CONFIG.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("target configuration: {e}"),
        },
    )
}

fn no_control(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// Stripping proxy cookies from `Cookie` headers (one header per line of the
/// input): what is left holds no proxy cookie, so stripping it again changes
/// nothing; a header without control bytes stays without them.
pub fn cookie_header(data: &[u8]) {
    let c = cookie_config();
    let values: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let (action, removed) = c.strip_request_cookies_bytes(&values);
    match action {
        CookieHeaderAction::Unchanged => assert_eq!(removed, 0),
        CookieHeaderAction::Remove => assert!(removed > 0),
        CookieHeaderAction::Replace(v) => {
            assert!(removed > 0);
            assert!(!v.contains(&b'\n'));
            let (again, n) = c.strip_request_cookies_bytes(&[&v]);
            assert_eq!(
                n,
                0,
                "{:?} left a proxy cookie",
                String::from_utf8_lossy(&v)
            );
            assert_eq!(again, CookieHeaderAction::Unchanged);
        }
    }
    // The text API agrees with the bytes API on UTF-8 input.
    if let Some(t) = text(data) {
        let values: Vec<&str> = t.split('\n').collect();
        let (_, n) = c.strip_request_cookies(&values);
        assert_eq!(n, removed);
    }
}

/// Set-Cookie rewriting, for each app and for no app: a rewritten value has
/// no control byte, and a proxy cookie is never let through unchanged.
pub fn set_cookie(data: &[u8]) {
    let Some(value) = text(data) else { return };
    let c = cookie_config();
    for app in [c.apps.first(), c.apps.get(1), None] {
        match c.apply_set_cookie(app, value) {
            SetCookieOutcome::Rewritten(v) => {
                assert!(no_control(&v) || !no_control(value), "{value:?} -> {v:?}");
                // The rewritten cookie keeps its name and is not a proxy cookie.
                let name = v.split_once('=').map(|(n, _)| n.trim()).unwrap_or("");
                assert!(!c.proxy_cookies.is_proxy_cookie(name), "{value:?} -> {v:?}");
            }
            SetCookieOutcome::Unchanged | SetCookieOutcome::Refused { .. } => {}
        }
    }
}

/// URL translation in the response headers that carry URLs: the result has
/// no control byte the input did not have.
pub fn url_header(data: &[u8]) {
    let Some(value) = text(data) else { return };
    let c = cookie_config();
    for app in &c.apps {
        for name in ["location", "content-location", "refresh", "link"] {
            if let Some(v) = app.translate_header(name, value) {
                assert!(
                    no_control(&v) || !no_control(value),
                    "{name}: {value:?} -> {v:?}"
                );
            }
        }
    }
}

/// Body translation, chunk by chunk: the first byte gives the number of
/// split points, the next bytes their positions; the rest is the body.
/// Split anywhere, the output is exactly the whole body's translation.
pub fn body_chunks(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    if rest.len() < n {
        return;
    }
    let (cuts, body) = rest.split_at(n);
    let c = cookie_config();
    for app in &c.apps {
        let matcher = BodyMatcher::new(&app.mapping);
        let mut whole = BodyRewriter::new(u64::MAX);
        let expect = whole.push(&matcher, body, true);
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| usize::from(*c) * body.len() / 256)
            .collect();
        points.sort_unstable();
        let mut split = BodyRewriter::new(u64::MAX);
        let mut out = Vec::new();
        let mut at = 0;
        for p in points {
            out.extend(split.push(&matcher, &body[at..p], false));
            assert!(split.carry_len() <= matcher.max_carry(), "carry bound");
            at = p;
        }
        out.extend(split.push(&matcher, &body[at..], true));
        assert_eq!(split.carry_len(), 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expect),
            "split at {cuts:?}"
        );
        assert_eq!(out, expect);
        assert_eq!(split.rewrites(), whole.rewrites());
    }
}

/// The request inputs of conditional access that a client sends: the
/// forwarded chain, addresses, the step-up marker cookie, cookie values and
/// the user agent.
pub fn policy_inputs(data: &[u8]) {
    let (a, b) = split2(data, b'\n');
    let (Some(a), Some(b)) = (text(a), text(b)) else {
        return;
    };
    for hops in [0, 1, 2, 255] {
        if let Ok(ip) = address::forwarded_for(a, hops) {
            // The address chosen is one the header named.
            assert!(
                a.split(',')
                    .any(|part| address::parse_address(part) == Some(ip)),
                "{a:?} -> {ip}"
            );
        }
    }
    if let Some(ip) = address::parse_address(a) {
        assert_eq!(address::parse_address(&ip.to_string()), Some(ip));
    }
    if let Some(m) = StepUpMarker::parse(a) {
        assert_eq!(StepUpMarker::parse(&m.value()), Some(m));
    }
    if let Some(v) = eval::cookie_value(a, b) {
        assert!(a.contains(v));
    }
    let _ = eval::platform(Some(a));
    let _ = eval::is_browser(Some(a), Some(b));
    let _ = eval::risk_level(Some(b));
}
