//! End-to-end: stock Envoy with `envoy-configs/portcullis.yaml` (the
//! all-in-one module, every stage in one filter) in front of the sample app.
//! The later stages see the request as Envoy hands it to the next filter of a
//! split chain: without the client's copies of the headers preauth removes.
//! Conditional access, reading its country from `x-portcullis-country` (a
//! header preauth strips), is not exempted from a policy by a client copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig};
use portcullis_e2e::free_port;
use portcullis_e2e::sample_app::SampleApp;

#[test]
fn a_header_preauth_strips_is_not_seen_by_conditional_access() {
    let app = SampleApp::start("127.0.0.1:0", "portcullis e2e").unwrap();
    let (listen, admin, provider) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let config = EnvoyConfig::from_repo("portcullis.yaml")
        .unwrap()
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap()
        .port(8081, app.addr().port())
        .unwrap()
        // Nothing listens there: these requests need no provider.
        .port(9000, provider)
        .unwrap()
        .replace(
            r#""unauthenticated_paths": ["/public"]"#,
            r#""unauthenticated_paths": ["/public", "/headers", "/links"]"#,
        )
        .unwrap()
        .replace(
            r#""client_address": {"xff_trusted_hops": 0},"#,
            r#""client_address": {"xff_trusted_hops": 0}, "country_header": "x-portcullis-country","#,
        )
        .unwrap()
        .replace(
            r#""named_locations": {"loopback""#,
            r#""named_locations": {"home": {"countries": ["FR"]}, "loopback""#,
        )
        .unwrap()
        .replace(
            r#""policies": ["#,
            r#""policies": [
                          {"name": "block-away", "apps": ["sample"],
                           "conditions": {"paths": ["/headers"], "locations": {"include": ["all"], "exclude": ["home"]}},
                           "grant": {"block": true}},"#,
        )
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();
    let addr = format!("127.0.0.1:{listen}");
    let claim_home = [
        ("accept", "application/json"),
        ("x-portcullis-country", "FR"),
    ];

    // The control: a path the policy does not name reaches the app.
    let r = http_request(&addr, "GET", "/links", &claim_home, b"").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());

    // Away from home, with or without a client copy claiming home: blocked.
    for headers in [&claim_home[..1], &claim_home[..]] {
        let r = http_request(&addr, "GET", "/headers", headers, b"").unwrap();
        assert_eq!(r.status, 403, "{headers:?}: {}\n{}", r.text(), envoy.log());
        assert!(r.text().contains("blocked"), "{headers:?}: {}", r.text());
    }
}
