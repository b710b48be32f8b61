//! End-to-end on stock Envoy (issue 12, point 3): configuration that would
//! open a door does not load, and a route naming an app a filter does not know
//! is refused.
//!
//! What Envoy 1.40 does when a wasm plugin's `on_configure` returns false at
//! start, with `failure_policy: FAIL_CLOSED`: it logs the filter's message
//! (which names the field), then "Unable to create Wasm plugin <name>", and
//! exits with status 1 before it listens. No request is ever answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig};
use portcullis_e2e::free_port;
use portcullis_e2e::sample_app::SampleApp;

/// One of the minimal configs on free ports, with `edits` applied.
fn config(name: &str, edits: &[(&str, &str)]) -> (EnvoyConfig, u16, u16) {
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut c = EnvoyConfig::from_repo(name)
        .unwrap()
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap();
    if name == "preauth.yaml" {
        // The provider is not needed here: point its cluster at a free port.
        c = c.port(9000, free_port().unwrap()).unwrap();
    }
    for (from, to) in edits {
        c = c.replace(from, to).unwrap();
    }
    (c, listen, admin)
}

#[test]
fn envoy_refuses_to_start_with_an_app_id_no_app_defines() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // A typo in policies[].apps: the policy would protect nothing.
        (
            "conditional-access.yaml",
            r#""apps": ["sample"]"#,
            r#""apps": ["sampel"]"#,
            "policies[0].apps[0]",
        ),
        // An app entry without an assignment (nor `open`).
        (
            "conditional-access.yaml",
            r#""apps": {"sample": {"users": ["*"]}}"#,
            r#""apps": {"sample": {}}"#,
            "apps.sample",
        ),
        // default_app naming an app `apps` does not define.
        (
            "conditional-access.yaml",
            r#""default_app": "sample""#,
            r#""default_app": "sampel""#,
            "default_app",
        ),
        // A host with a trailing dot could never be routed as written.
        (
            "preauth.yaml",
            r#""hosts": ["127.0.0.1", "localhost"]"#,
            r#""hosts": ["127.0.0.1", "localhost."]"#,
            "apps[0].hosts[1]",
        ),
    ];
    for (file, from, to, field) in cases {
        let (c, _, admin) = config(file, &[(from, to)]);
        let err = match Envoy::start(&c, admin) {
            Ok(envoy) => panic!("{file} with {to} loaded:\n{}", envoy.log()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("Envoy exited with exit status: 1"), "{err}");
        assert!(err.contains("Unable to create Wasm plugin"), "{err}");
        assert!(
            err.contains(&format!("field `{field}`")),
            "{file}: the log names {field}:\n{err}"
        );
    }
}

#[test]
fn a_route_naming_an_unknown_app_is_refused_by_every_filter() {
    let app = SampleApp::start("127.0.0.1:0", "fail-closed e2e").unwrap();
    let upstream = app.addr().port();
    let route = "metadata: { filter_metadata: { portcullis: { app: sample } } }";
    let typo = "metadata: { filter_metadata: { portcullis: { app: sampel } } }";
    for (file, status, code) in [
        ("preauth.yaml", 500, "route_app_unknown"),
        ("cookie.yaml", 500, "route_app_unknown"),
        ("conditional-access.yaml", 403, "not_assigned"),
    ] {
        // The control: the shipped route reaches the app (for preauth, on its
        // unauthenticated path `/public`).
        let (c, listen, admin) = config(file, &[]);
        let c = c.port(8081, upstream).unwrap();
        let envoy = Envoy::start(&c, admin).unwrap();
        let addr = format!("127.0.0.1:{listen}");
        let r = http_request(&addr, "GET", "/public/x", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{file}: {}\n{}", r.text(), envoy.log());
        drop(envoy);

        let (c, listen, admin) = config(file, &[(route, typo)]);
        let c = c.port(8081, upstream).unwrap();
        let envoy = Envoy::start(&c, admin).unwrap();
        let addr = format!("127.0.0.1:{listen}");
        let hits = app.hits("/public/x");
        let r = http_request(
            &addr,
            "GET",
            "/public/x",
            &[("accept", "application/json")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, status, "{file}: {}\n{}", r.text(), envoy.log());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], code, "{file}");
        assert_eq!(
            app.hits("/public/x"),
            hits,
            "{file}: nothing reached the app"
        );
    }
}
