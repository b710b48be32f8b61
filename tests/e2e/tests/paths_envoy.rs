//! End-to-end on stock Envoy: the path rule against the spellings of issue
//! 12, with the real provider and apps.
//!
//! - The whole demo system (`envoy-configs/demo.yaml`): `alice`, signed in
//!   through the provider without MFA, sends every spelling of `/admin` to
//!   the admin app; each is asked for the MFA step-up or refused with
//!   `ambiguous_path`, and none reaches the app.
//! - `envoy-configs/preauth.yaml` (unauthenticated prefix `/public`): no
//!   spelling opens another path without a session, and a return address
//!   that resolves to `//evil.com` is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::envoy::{http_request, http_request_raw, Envoy, EnvoyConfig, TempDir};
use portcullis_e2e::free_port;
use portcullis_e2e::idp::Idp;
use portcullis_e2e::sample_app::SampleApp;
use portcullis_e2e::signin::sign_in;
use portcullis_e2e::stack::{Ports, Stack, StackOptions};

/// The spellings the issue reports as reaching `/admin` without step-up.
const ADMIN_SPELLINGS: &[&str] = &[
    "/ADMIN",
    "/Admin",
    "/aDmIn/",
    "/%41dmin",
    "/ADMIN%2f",
    "/admin;x",
    "/admin;",
    "/admin;/x",
    "/;/admin",
    "/admin..;/",
    "/%2e%2e;/admin",
    "/admin%3b",
    "/admin%2f",
    "/admin%2F",
    "/%2fadmin",
    "/x/..%2fadmin",
    "/%2561dmin",
    "/admin.",
    "/admin%2e",
    "/admin%20",
    "/admin%09",
];

#[test]
fn no_spelling_of_admin_reaches_the_admin_app_without_mfa() {
    let stack = Stack::start(StackOptions {
        layout: Default::default(),
        ports: Ports::free().unwrap(),
        state_dir: None,
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports();
    let envoy = format!("127.0.0.1:{}", p.http);
    let host = format!("admin.localhost:{}", p.http);
    let jar = sign_in(&envoy, &host, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.envoy_log()));
    let cookie = jar.header();
    let headers = [
        ("Host", host.as_str()),
        ("Accept", "text/html"),
        ("Cookie", cookie.as_str()),
    ];
    let admin_app = &stack.apps()[1];

    // The session works: another page of the admin app is reached...
    let r = http_request_raw(&envoy, "GET", b"/reports", &headers).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(admin_app.hits("/reports"), 1);
    // ...and /admin itself asks alice for MFA.
    let r = http_request_raw(&envoy, "GET", b"/admin", &headers).unwrap();
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .contains("acr=urn%3Aportcullis%3Amfa"));

    let before = admin_app.total_hits();
    for spelling in ADMIN_SPELLINGS {
        let r = http_request_raw(&envoy, "GET", spelling.as_bytes(), &headers).unwrap();
        match r.status {
            302 => {
                let location = r.header("location").unwrap_or_default();
                assert!(
                    location.starts_with("/.auth/login?rd=")
                        && location.contains("acr=urn%3Aportcullis%3Amfa"),
                    "{spelling}: {location}"
                );
            }
            400 => {
                let body = r.text();
                assert!(body.contains("ambiguous_path"), "{spelling}: {body}");
                assert!(
                    body.contains("Request id: <code>"),
                    "{spelling}: the denial names the request id: {body}"
                );
            }
            other => panic!("{spelling}: {other} {}", r.text()),
        }
    }
    assert_eq!(
        admin_app.total_hits(),
        before,
        "a spelling of /admin reached the admin app without MFA"
    );
}

#[test]
fn an_unauthenticated_prefix_opens_no_other_path_and_rd_is_checked_after_dots() {
    let dir = TempDir::new("portcullis-paths-e2e").unwrap();
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let app_url = format!("http://127.0.0.1:{listen}");
    let clients = serde_json::json!({
        "clients": [{
            "client_id": "portcullis-demo",
            "client_secret": "portcullis-demo-secret",
            "redirect_uris": [format!("{app_url}/.auth/callback")],
            "post_logout_redirect_uris": [format!("{app_url}/")],
        }]
    });
    let idp = Idp::start(&clients.to_string(), dir.path()).unwrap();
    let app = SampleApp::start("127.0.0.1:0", "paths e2e").unwrap();
    let config = EnvoyConfig::from_repo("preauth.yaml")
        .unwrap()
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap()
        .port(8081, app.addr().port())
        .unwrap()
        .port(9000, idp.port())
        .unwrap()
        .replace("http://127.0.0.1:9000", idp.issuer())
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();
    let addr = format!("127.0.0.1:{listen}");

    // The prefix opens what lies below it (the first request waits for the
    // provider's documents).
    let r = http_request(&addr, "GET", "/public/x", &[("Accept", "text/html")], b"").unwrap();
    assert_eq!(r.status, 200, "{}", envoy.log());
    let r = http_request_raw(&addr, "GET", b"/public/x;jsessionid=1", &[]).unwrap();
    assert_eq!(r.status, 200);
    let before = app.total_hits();
    for spelling in [
        "/PUBLIC/../admin",
        "/public/../admin",
        "/public;/../admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
        "/public/.%2e/admin",
        "/public/%252e%252e/admin",
        "/public/..%252fadmin",
        "/public/x/..%20/..%20/admin",
        "/public/...",
        "/;/public/x",
        "/PUBLIC/x",
        "/Public",
        "/public;x/y",
        "/public%3b/x",
        "/public./x",
        "/public%2e/x",
        "/public%20/x",
        "/publicity",
        "//public/../admin",
    ] {
        let r = http_request_raw(
            &addr,
            "GET",
            spelling.as_bytes(),
            &[("Accept", "text/html")],
        )
        .unwrap();
        let location = r.header("location").unwrap_or_default().to_string();
        assert!(
            r.status == 302 && location.starts_with(&format!("{}/auth?", idp.issuer()))
                || r.status == 400 && r.text().contains("ambiguous_path"),
            "{spelling}: {} {location} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(
        app.total_hits(),
        before,
        "a spelling reached the app without a session"
    );

    // A return address that lands on //evil.com once its dot segments are
    // resolved is refused.
    for rd in ["/..//evil.com", "/%2e%2e//evil.com", "/x/..//evil.com"] {
        let target = format!("/.auth/login?rd={rd}");
        let r =
            http_request_raw(&addr, "GET", target.as_bytes(), &[("Accept", "text/html")]).unwrap();
        assert_eq!(r.status, 400, "{rd}: {}", r.text());
        assert!(r.text().contains("redirect_invalid"), "{rd}");
    }
    let r = http_request_raw(
        &addr,
        "GET",
        b"/.auth/login?rd=/x/../ok",
        &[("Accept", "text/html")],
    )
    .unwrap();
    assert_eq!(r.status, 302, "{}", r.text());
}
