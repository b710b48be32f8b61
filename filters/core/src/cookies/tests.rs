//! Configuration and body-translation tests of the cookie filter's core.

use super::*;

pub(crate) const EXAMPLE: &str = r#"{
  "proxy_cookies": { "names": ["__Host-portcullis"], "prefixes": ["portcullis"] },
  "apps": [
    {
      "name": "wiki",
      "internal_url": "http://wiki.internal:8080/app",
      "external_url": "https://wiki.localhost:10443/",
      "set_cookie": { "secure": true, "http_only": true, "same_site": "Lax", "domain": "rewrite", "map_path": true },
      "translate_headers": true,
      "body": {
        "enabled": true,
        "content_types": ["text/html", "text/css", "application/javascript", "application/json"],
        "max_body_bytes": 10485760,
        "request_identity_encoding": true
      }
    },
    { "internal_url": "http://10.0.0.7", "external_url": "https://portal.localhost/hr" }
  ]
}"#;

fn example() -> CookieFilterConfig {
    CookieFilterConfig::from_json(EXAMPLE.as_bytes()).unwrap()
}

#[test]
fn example_config_parses_into_typed_values() {
    let c = example();
    assert_eq!(c.apps.len(), 2);
    let wiki = &c.apps[0];
    assert_eq!(wiki.name, "wiki");
    assert_eq!(wiki.mapping.internal.port, 8080);
    assert_eq!(wiki.mapping.external.authority(), "wiki.localhost:10443");
    assert_eq!(wiki.set_cookie.same_site, Some(SameSite::Lax));
    assert!(wiki.wants_identity_encoding());
    let body = wiki.body.as_ref().unwrap();
    assert_eq!(body.max_body_bytes, 10 * 1024 * 1024);
    let hr = &c.apps[1];
    assert_eq!(hr.name, "https://portal.localhost/hr");
    // Defaults: Secure on for an https external URL, the rest opt-in.
    assert_eq!(
        hr.set_cookie,
        SetCookiePolicy {
            secure: true,
            http_only: false,
            same_site: None,
            domain: DomainPolicy::Rewrite,
            map_path: true
        }
    );
    assert!(hr.translate_headers);
    assert!(hr.body.is_none());
    assert!(!hr.wants_identity_encoding());
}

#[test]
fn empty_config_strips_the_default_proxy_cookies() {
    let c = CookieFilterConfig::from_json(b"").unwrap();
    assert!(c.apps.is_empty());
    assert_eq!(
        c.strip_request_cookies(&["__Host-portcullis=x; a=b"]),
        (CookieHeaderAction::Replace("a=b".into()), 1)
    );
    let http = CookieFilterConfig::from_json(
        br#"{"apps":[{"internal_url":"http://a.internal","external_url":"http://a.localhost:10000"}]}"#,
    )
    .unwrap();
    assert!(!http.apps[0].set_cookie.secure);
}

#[test]
fn config_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"appz": []}"#, "appz"),
        (
            r#"{"proxy_cookies": {"names": ["a;b"]}}"#,
            "proxy_cookies.names[0]",
        ),
        (
            r#"{"proxy_cookies": {"names": [], "prefixes": []}}"#,
            "proxy_cookies",
        ),
        (
            r#"{"apps": [{"internal_url": "x", "external_url": "https://a/"}]}"#,
            "apps[0].internal_url",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://u@b/"}]}"#,
            "apps[0].external_url",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "set_cookie": {"same_site": "Loose"}}]}"#,
            "apps[0].set_cookie.same_site",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "set_cookie": {"domain": "keep"}}]}"#,
            "apps[0].set_cookie.domain",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "set_cookie": {"secure": 1}}]}"#,
            "apps[0].set_cookie.secure",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "body": {"enabled": true, "content_types": ["text/html; charset=utf-8"]}}]}"#,
            "apps[0].body.content_types[0]",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "body": {"enabled": true, "content_types": []}}]}"#,
            "apps[0].body.content_types",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "body": {"max_body_bytes": 0}}]}"#,
            "apps[0].body.max_body_bytes",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "body": {"request_identity_encoding": true}}]}"#,
            "apps[0].body.request_identity_encoding",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "body": {"enable": true}}]}"#,
            "apps[0].body.enable",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "name": " "}]}"#,
            "apps[0].name",
        ),
        (
            r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b/x"}, {"internal_url": "http://c", "external_url": "https://B/x/"}]}"#,
            "apps[1].external_url",
        ),
    ];
    for (json, field) in cases {
        let e = CookieFilterConfig::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(e.field, *field, "{json}: {e}");
    }
}

#[test]
fn apps_are_selected_by_host_and_longest_path_prefix() {
    let c = CookieFilterConfig::from_json(
        br#"{"apps": [
            {"name": "root", "internal_url": "http://a", "external_url": "https://portal.localhost"},
            {"name": "hr", "internal_url": "http://b", "external_url": "https://portal.localhost/hr"},
            {"name": "wiki", "internal_url": "http://c", "external_url": "https://wiki.localhost:10443"}
        ]}"#,
    )
    .unwrap();
    let pick = |h: &str, p: &str| c.select_app(h, p).map(|a| a.name.as_str());
    assert_eq!(pick("portal.localhost", "/"), Some("root"));
    assert_eq!(pick("Portal.LOCALHOST:10443", "/hr/x?y"), Some("hr"));
    assert_eq!(pick("portal.localhost", "/hr?x"), Some("hr"));
    assert_eq!(pick("portal.localhost", "/hrm"), Some("root"));
    assert_eq!(pick("wiki.localhost", "/anything"), Some("wiki"));
    // A trailing dot is Envoy's to strip (strip_trailing_host_dot): here it
    // matches no app, as it matches no virtual host.
    assert_eq!(pick("wiki.localhost.", "/"), None);
    assert_eq!(pick("wiki.localhost.:10443", "/"), None);
    assert_eq!(pick("other.localhost", "/"), None);
    assert_eq!(pick("", "/"), None);
    assert_eq!(pick("[::1]:10000", "/"), None);

    // The route's app wins; an app the route names but no entry has is refused.
    use crate::app::{Chosen, RouteApp};
    assert_eq!(
        c.select(RouteApp::Named("wiki"), "portal.localhost", "/hr"),
        Chosen::Route {
            app: 2,
            host_choice: Some(1)
        }
    );
    assert_eq!(
        c.select(RouteApp::Named("wikki"), "wiki.localhost", "/"),
        Chosen::UnknownRoute
    );
    assert_eq!(
        c.select(RouteApp::Absent, "portal.localhost", "/hr"),
        Chosen::Host(1)
    );
    assert_eq!(
        c.select(RouteApp::Absent, "wiki.localhost.", "/"),
        Chosen::None
    );
    // One entry per name.
    let e = CookieFilterConfig::from_json(
        br#"{"apps": [
            {"name": "hr", "internal_url": "http://a", "external_url": "https://a.localhost"},
            {"name": "hr", "internal_url": "http://b", "external_url": "https://b.localhost"}
        ]}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "apps[1].name");
}

#[test]
fn headers_translate_only_when_enabled() {
    let c = CookieFilterConfig::from_json(
        br#"{"apps": [{"internal_url": "http://a.internal", "external_url": "https://a.localhost", "translate_headers": false}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.apps[0].translate_header("location", "http://a.internal/x"),
        None
    );
    let c = example();
    assert_eq!(
        c.apps[0]
            .translate_header("Location", "http://WIKI.internal:8080/app/page")
            .as_deref(),
        Some("https://wiki.localhost:10443/page")
    );
}

// ---- body translation ----

fn policy(internal: &str, external: &str) -> BodyPolicy {
    let json = format!(
        r#"{{"apps": [{{"internal_url": "{internal}", "external_url": "{external}", "body": {{"enabled": true}}}}]}}"#
    );
    let c = CookieFilterConfig::from_json(json.as_bytes()).unwrap();
    c.apps[0].body.clone().unwrap()
}

fn rewrite_chunks(p: &BodyPolicy, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = p.rewriter();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(r.push(&p.matcher, c, i + 1 == chunks.len()));
        assert!(
            r.carry_len() <= p.matcher.max_carry(),
            "carry {} > {}",
            r.carry_len(),
            p.matcher.max_carry()
        );
    }
    out
}

fn rewrite(p: &BodyPolicy, s: &str) -> String {
    String::from_utf8(rewrite_chunks(p, &[s.as_bytes()])).unwrap()
}

const SAMPLE_IN: &str = concat!(
    "<a href=\"http://app.internal:8080/app/x?y=1\">x</a>",
    "<a href='HTTP://App.Internal:8080/app'>root</a>",
    "<img src=//app.internal:8080/app/i.png>",
    "<script>var u=\"http:\\/\\/app.internal:8080\\/app\\/api\";</script>",
    "<style>body{background:url(http://app.internal:8080/app/bg.png)}</style>",
    "<a href=\"http://app.internal:8080/application\">no</a>",
    "<a href=\"http://app.internal:8080@evil/app\">no</a>",
    "<a href=\"http://app.internal:80/app\">no</a>",
    "<a href=\"http://app.internal.evil:8080/app\">no</a>",
    "<a href=\"https://app.internal:8080/app\">no</a>",
    "<a href=\"xhttp://app.internal:8080/app\">no</a>",
    "<a href=\"ftp://app.internal:8080/app\">no</a>",
    "<a href=\"http://app.internal:80800/app\">no</a>",
    "end http://app.internal:8080/app"
);

const SAMPLE_OUT: &str = concat!(
    "<a href=\"https://ext.example/x?y=1\">x</a>",
    "<a href='https://ext.example'>root</a>",
    "<img src=//ext.example/i.png>",
    "<script>var u=\"https:\\/\\/ext.example\\/api\";</script>",
    "<style>body{background:url(https://ext.example/bg.png)}</style>",
    "<a href=\"http://app.internal:8080/application\">no</a>",
    "<a href=\"http://app.internal:8080@evil/app\">no</a>",
    "<a href=\"http://app.internal:80/app\">no</a>",
    "<a href=\"http://app.internal.evil:8080/app\">no</a>",
    "<a href=\"https://app.internal:8080/app\">no</a>",
    "<a href=\"xhttp://app.internal:8080/app\">no</a>",
    "<a href=\"ftp://app.internal:8080/app\">no</a>",
    "<a href=\"http://app.internal:80800/app\">no</a>",
    "end https://ext.example"
);

#[test]
fn body_sample_is_rewritten_in_one_chunk() {
    let p = policy("http://app.internal:8080/app", "https://ext.example/");
    assert_eq!(rewrite(&p, SAMPLE_IN), SAMPLE_OUT);
}

#[test]
fn body_rewrite_is_the_same_for_every_split_point() {
    let p = policy("http://app.internal:8080/app", "https://ext.example/");
    let input = SAMPLE_IN.as_bytes();
    for cut in 0..=input.len() {
        let out = rewrite_chunks(&p, &[&input[..cut], &input[cut..]]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            SAMPLE_OUT,
            "split at {cut}"
        );
    }
    // Byte by byte, and an empty final chunk.
    let mut chunks: Vec<&[u8]> = input.chunks(1).collect();
    chunks.push(b"");
    assert_eq!(
        String::from_utf8(rewrite_chunks(&p, &chunks)).unwrap(),
        SAMPLE_OUT
    );
}

#[test]
fn body_rewrite_is_the_same_for_random_multi_splits() {
    let p = policy("http://app.internal:8080/app", "https://ext.example/");
    let input = SAMPLE_IN.repeat(3);
    let input = input.as_bytes();
    // A small deterministic generator (xorshift) so failures reproduce.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let expected = SAMPLE_OUT.repeat(3);
    for _ in 0..2000 {
        let mut cuts: Vec<usize> = (0..next(12)).map(|_| next(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&input[last..c]);
            last = c;
        }
        chunks.push(&input[last..]);
        let out = rewrite_chunks(&p, &chunks);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}

#[test]
fn body_default_ports_case_and_boundaries() {
    let p = policy("https://App.Internal/app", "https://ext.example:8443/pub");
    assert_eq!(
        rewrite(&p, "https://app.internal/app/x"),
        "https://ext.example:8443/pub/x"
    );
    assert_eq!(
        rewrite(&p, "HTTPS://APP.INTERNAL:443/app"),
        "https://ext.example:8443/pub"
    );
    assert_eq!(
        rewrite(&p, "(https://app.internal/app)"),
        "(https://ext.example:8443/pub)"
    );
    assert_eq!(
        rewrite(&p, "'https://app.internal:/app?q'"),
        "'https://ext.example:8443/pub?q'"
    );
    assert_eq!(
        rewrite(&p, "https://app.internal/App/x"),
        "https://app.internal/App/x"
    );
    assert_eq!(
        rewrite(&p, "https://app.internal/apps"),
        "https://app.internal/apps"
    );
    assert_eq!(
        rewrite(&p, "https://app.internal/app.html"),
        "https://app.internal/app.html"
    );
    assert_eq!(
        rewrite(&p, "https://app.internal/"),
        "https://app.internal/"
    );
    assert_eq!(
        rewrite(&p, "https://app.internal-x/app"),
        "https://app.internal-x/app"
    );
    assert_eq!(
        rewrite(&p, "a//app.internal/app b://app.internal/app"),
        "a//app.internal/app b://app.internal/app"
    );
    assert_eq!(
        rewrite(&p, "url(//app.internal/app/a.css)"),
        "url(//ext.example:8443/pub/a.css)"
    );
    assert_eq!(rewrite(&p, "https://app.internal"), "https://app.internal");
    // Root internal URL: the host alone is a match.
    let root = policy("http://app.internal", "https://ext.example");
    assert_eq!(
        rewrite(&root, "\"http://app.internal\""),
        "\"https://ext.example\""
    );
    assert_eq!(rewrite(&root, "http://app.internal"), "https://ext.example");
    assert_eq!(
        rewrite(&root, "http://app.internal:80/"),
        "https://ext.example/"
    );
    assert_eq!(
        rewrite(&root, "http://app.internal.evil/"),
        "http://app.internal.evil/"
    );
    assert_eq!(
        rewrite(&root, "http://app.internal@evil/"),
        "http://app.internal@evil/"
    );
    assert_eq!(
        rewrite(&root, "http://app.internal:8080/"),
        "http://app.internal:8080/"
    );
    assert_eq!(
        rewrite(&root, "http://app.internal:"),
        "https://ext.example"
    );
    assert_eq!(
        rewrite(&root, "http://app.internal:x"),
        "http://app.internal:x"
    );
    assert_eq!(rewrite(&root, ""), "");
    // Non-UTF-8 bytes pass through untouched.
    let bytes = rewrite_chunks(&root, &[b"\xff\xfehttp://app.internal/\x80"]);
    assert_eq!(bytes, b"\xff\xfehttps://ext.example/\x80");
}

#[test]
fn body_size_limit_stops_translation_and_passes_the_rest() {
    let mut p = policy("http://app.internal", "https://ext.example");
    p.max_body_bytes = 40;
    let mut r = p.rewriter();
    let a = r.push(
        &p.matcher,
        b"go http://app.internal/ and http://app.",
        false,
    );
    assert_eq!(a, b"go https://ext.example/ and ");
    assert!(!r.limit_reached());
    let b = r.push(&p.matcher, b"internal/ then http://app.internal/", true);
    assert!(r.limit_reached());
    // Past the limit, held-back and new bytes pass unchanged.
    assert_eq!(b, b"http://app.internal/ then http://app.internal/");
    assert_eq!(r.rewrites(), 1);
}

#[test]
fn body_plan_checks_type_encoding_and_length() {
    let p = policy("http://app.internal", "https://ext.example");
    assert_eq!(
        p.plan(Some("text/html; charset=utf-8"), None, Some("100")),
        BodyPlan::Rewrite
    );
    assert_eq!(
        p.plan(Some("Application/JSON"), Some("identity"), None),
        BodyPlan::Rewrite
    );
    assert_eq!(
        p.plan(Some("text/javascript"), Some(""), None),
        BodyPlan::Rewrite
    );
    assert_eq!(
        p.plan(Some("image/png"), None, None),
        BodyPlan::Skip(SkipReason::ContentType)
    );
    assert_eq!(
        p.plan(None, None, None),
        BodyPlan::Skip(SkipReason::ContentType)
    );
    assert_eq!(
        p.plan(Some("text/html"), Some("gzip"), None),
        BodyPlan::Skip(SkipReason::Encoded)
    );
    assert_eq!(
        p.plan(Some("text/html"), Some("identity, br"), None),
        BodyPlan::Skip(SkipReason::Encoded)
    );
    assert_eq!(
        p.plan(
            Some("text/css"),
            None,
            Some(&(DEFAULT_MAX_BODY_BYTES + 1).to_string())
        ),
        BodyPlan::Skip(SkipReason::TooLarge)
    );
}

#[test]
fn carry_is_bounded_by_the_longest_pattern() {
    let p = policy(
        "http://app.internal:8080/some/long/prefix",
        "https://ext.example/",
    );
    let m = &p.matcher;
    // The longest held-back tail: the absolute (JSON-escaped) form right up to its last byte.
    let long = "http:\\/\\/app.internal:08080\\/some\\/long\\/prefix";
    let mut r = p.rewriter();
    let out = r.push(m, long.as_bytes(), false);
    assert!(out.is_empty());
    assert_eq!(r.carry_len(), long.len());
    assert!(r.carry_len() <= m.max_carry());
    let out = r.push(m, b"/x", true);
    assert_eq!(out, b"https:\\/\\/ext.example/x");
}
