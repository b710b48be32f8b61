//! End-to-end: stock Envoy with `envoy-configs/cookie.yaml` in front of the
//! sample app, which redirects to its internal URL, sets cookies for its
//! internal host without protections (and one with the proxy's own name), and
//! links to its internal URL in HTML. The client sees only external URLs and
//! hardened cookies; the app never receives the proxy's cookies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig};
use portcullis_e2e::free_port;
use portcullis_e2e::sample_app::SampleApp;

#[test]
fn clients_see_external_urls_and_hardened_cookies_and_the_app_never_sees_proxy_cookies() {
    let app = SampleApp::start("127.0.0.1:0", "cookie e2e").unwrap();
    let internal = format!("http://127.0.0.1:{}", app.addr().port());
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let external = format!("http://127.0.0.1:{listen}");
    let config = EnvoyConfig::from_repo("cookie.yaml")
        .unwrap()
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap()
        .port(8081, app.addr().port())
        .unwrap()
        .replace(
            "\"internal_url\": \"http://127.0.0.1:8081\"",
            &format!("\"internal_url\": \"{internal}\""),
        )
        .unwrap()
        .replace(
            "\"external_url\": \"http://127.0.0.1:10000\"",
            &format!("\"external_url\": \"{external}\""),
        )
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();
    let addr = format!("127.0.0.1:{listen}");

    // Location pointing at the internal URL is translated.
    let r = http_request(&addr, "GET", "/redirect", &[], b"").unwrap();
    assert_eq!(r.status, 302, "{}", envoy.log());
    assert_eq!(
        r.header("location"),
        Some(format!("{external}/landing?from=redirect").as_str())
    );

    // App cookies are hardened; the internal Domain is rewritten or dropped; the
    // app's attempt to set the proxy's own cookie is refused.
    let r = http_request(&addr, "GET", "/set-cookies", &[], b"").unwrap();
    let cookies = r.headers_named("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for c in &cookies {
        let lower = c.to_ascii_lowercase();
        assert!(lower.contains("; secure"), "{c}");
        assert!(lower.contains("; httponly"), "{c}");
        assert!(lower.contains("samesite=lax"), "{c}");
        assert!(!c.starts_with("__Host-portcullis"), "{c}");
        if let Some(d) = lower.split("domain=").nth(1) {
            assert!(
                !d.starts_with(&format!("127.0.0.1:{}", app.addr().port())),
                "{c}"
            );
        }
    }
    assert!(cookies.iter().any(|c| c.starts_with("app_session=s1")));
    assert!(cookies.iter().any(|c| c.starts_with("app_pref=dark")));

    // Internal absolute URLs in an HTML body are translated; others are left alone.
    let r = http_request(&addr, "GET", "/links", &[], b"").unwrap();
    let body = r.text();
    assert!(body.contains(&format!("href=\"{external}/a\"")), "{body}");
    assert!(
        body.contains(&format!("src=\"{external}/b.png\"")),
        "{body}"
    );
    assert!(body.contains("https://example.org/"), "{body}");
    assert!(!body.contains(&internal), "{body}");

    // The proxy's cookies never reach the app; the app's own cookies do, byte for byte.
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[("Cookie", "__Host-portcullis=sealed; app_pref=\"dark blue\"; __Host-portcullis-login-0a1b2c3d=x; a=1")],
        b"",
    )
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        seen["headers"]["cookie"], "app_pref=\"dark blue\"; a=1",
        "{seen}"
    );
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[("Cookie", "__Host-portcullis=sealed")],
        b"",
    )
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert!(
        seen["headers"].get("cookie").is_none(),
        "the Cookie header must be dropped when empty: {seen}"
    );
}
