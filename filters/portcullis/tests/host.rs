//! The all-in-one module (`portcullis.wasm`) with every stage in one
//! configuration document: the stages run in chain order in one filter, the
//! identity goes from preauth to conditional access in memory (no filter
//! state), a request waiting for the provider runs the later stages when it is
//! resumed, and a request with 20 policies stays within its fuel budget.
//!
//! The same scenarios as the single-stage modules' tests run on this module
//! too: `PORTCULLIS_LAYOUT=all-in-one cargo test -p portcullis-host-tests
//! -p portcullis-preauth -p portcullis-conditional-access` (`scripts/test.sh`).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_simple::prelude::*;
use portcullis_core::identity::Identity;
use portcullis_core::oidc::config::PreauthConfig;
use portcullis_core::oidc::session::seal_session;
use portcullis_host_tests::{Action, Filter, FilterState, Plugin};
use std::sync::OnceLock;

const ISS: &str = "https://idp.test";
const NOW: u64 = 1_800_000_000;
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
/// Fuel budget of one request through the four stages with a cached session
/// and 20 policies (see `cost_of_a_request_through_every_stage`).
const BUDGET: u64 = 307_000;

fn signing_key() -> &'static ES256KeyPair {
    static K: OnceLock<ES256KeyPair> = OnceLock::new();
    K.get_or_init(|| ES256KeyPair::generate().with_key_id("k1"))
}

fn jwks() -> String {
    let p = signing_key()
        .public_key()
        .public_key()
        .to_bytes_uncompressed();
    let (x, y) = (p.get(1..33).unwrap(), p.get(33..65).unwrap());
    format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","x":"{}","y":"{}"}}]}}"#,
        B64.encode(x),
        B64.encode(y)
    )
}

fn preauth_section() -> String {
    format!(
        r#"{{"apps":[{{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"portcullis",
          "client_secret":"s3cret","cluster":"idp","sealing_keys":["{KEY}"],"policy_groups":["staff"],
          "bearer":{{"audience":"api://hr"}}}}]}}"#
    )
}

/// 20 policies that all apply to alice's requests (as in conditional
/// access's own cost test), and a step-up for `/admin`.
fn policies(with_twenty: bool) -> String {
    let mut policies = vec![
        r#"{"name": "admin-mfa", "apps": ["hr"], "conditions": {"paths": ["/admin"]}, "grant": {"mfa": true}}"#
            .to_string(),
    ];
    if with_twenty {
        for i in 0..20 {
            policies.push(format!(
                r#"{{"name": "p{i}", "apps": ["hr"], "assignments": {{"include": {{"groups": ["staff", "g{i}"]}}, "exclude": {{"users": ["x{i}"]}}}},
                    "conditions": {{"paths": ["/app{i}", "/"], "methods": ["GET", "POST"], "locations": {{"include": ["all"], "exclude": ["office"]}}}},
                    "grant": {{"require": "one", "mfa": true, "claims": {{"device": "ok"}}}}, "session": {{"sign_in_frequency": 86400}}}}"#
            ));
        }
    }
    format!(
        r#"{{"mfa": {{"step_up_acr": "urn:portcullis:mfa"}},
            "named_locations": {{"office": {{"cidrs": ["10.0.0.0/8"]}}}},
            "apps": {{"hr": {{"groups": ["staff"], "users": ["service-1"]}}}},
            "hosts": {{"hr.localhost": "hr"}},
            "policies": [{}]}}"#,
        policies.join(",")
    )
}

const COOKIE: &str = r#"{"apps":[{"name":"hr","internal_url":"http://hr.internal:8080",
  "external_url":"https://hr.localhost","set_cookie":{"secure":true,"http_only":true}}]}"#;

fn config(with_twenty: bool) -> String {
    format!(
        r#"{{"robots": {{}}, "preauth": {}, "conditional_access": {}, "cookie": {COOKIE}}}"#,
        preauth_section(),
        policies(with_twenty)
    )
}

fn session_cookie(sub: &str, groups: &[&str], amr: &[&str]) -> String {
    let config = PreauthConfig::from_json(preauth_section().as_bytes()).unwrap();
    let app = config.apps.first().unwrap();
    let settings = app.oidc.as_ref().unwrap();
    let id = Identity {
        sub: sub.into(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        amr: amr.iter().map(|s| s.to_string()).collect(),
        auth_time: Some(NOW - 60),
        iat: NOW - 60,
        exp: NOW + 3600,
        ..Identity::default()
    };
    let value = seal_session(
        &app.id,
        settings,
        &id,
        [7; portcullis_core::seal::SEAL_RANDOM_LEN],
    )
    .unwrap();
    format!("{}={value}", settings.cookie.name)
}

fn start(with_twenty: bool) -> Plugin {
    let p = Plugin::builder(Filter::Portcullis)
        .config(config(with_twenty))
        .cluster("idp")
        .now_secs(NOW)
        .start()
        .unwrap();
    assert!(p.configured(), "{:?}", p.log_messages());
    p
}

fn serve_documents(p: &mut Plugin) {
    for _ in 0..3 {
        p.tick().unwrap();
        for call in p.pending_calls() {
            let body = match call.header(":path").as_deref() {
                Some("/.well-known/openid-configuration") => format!(
                    r#"{{"issuer":"{ISS}","authorization_endpoint":"{ISS}/auth","token_endpoint":"{ISS}/token","jwks_uri":"{ISS}/jwks"}}"#
                ),
                _ => jwks(),
            };
            p.respond_http_call(call.token, 200, &[], body.as_bytes())
                .unwrap();
        }
    }
}

fn ready(with_twenty: bool) -> Plugin {
    let mut p = start(with_twenty);
    serve_documents(&mut p);
    p
}

/// One request; returns its stream, the action and the stream's filter state.
fn request(p: &mut Plugin, path: &str, extra: &[(&str, &str)]) -> (u32, Action, FilterState) {
    let fs = FilterState::default();
    let s = p.new_stream_with(fs.clone()).unwrap();
    p.set_stream_property(s, "source.address", "198.51.100.7:5000")
        .unwrap();
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "hr.localhost"),
        (":scheme", "https"),
        ("accept", "text/html"),
        ("x-request-id", "aio-1"),
    ];
    headers.extend_from_slice(extra);
    let action = p.request_headers(s, &headers, true).unwrap();
    (s, action, fs)
}

#[test]
fn one_filter_runs_every_stage_in_chain_order() {
    let mut p = ready(false);
    // robots answers first: no session needed, no other stage runs.
    let (s, action, _) = request(&mut p, "/robots.txt", &[]);
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("Disallow: /"));

    // Without a session, preauth sends the browser to the provider.
    let (s, action, _) = request(&mut p, "/", &[]);
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with(ISS));

    // The redirect's own cookies go back to the browser as preauth set them:
    // the cookie stage, after preauth, never sees a reply preauth made (Envoy
    // runs a local reply back through the filters before the one that sent it).
    let login_cookie = r.header("set-cookie").unwrap();
    assert!(
        login_cookie.starts_with("__Host-portcullis-login"),
        "{login_cookie}"
    );
    let reply_headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let reply_headers: Vec<(&str, &str)> = reply_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut with_status = vec![(":status", "302")];
    with_status.extend(reply_headers);
    p.response_headers(s, &with_status, true).unwrap();
    assert_eq!(
        p.response_header(s, "set-cookie").as_deref(),
        Some(login_cookie.as_str()),
        "the login cookie is not refused by the cookie stage"
    );

    // With one, conditional access judges the identity preauth passed in
    // memory, and the cookie stage keeps the proxy's cookie from the app.
    let pwd = session_cookie("alice", &["staff"], &["pwd"]);
    let cookie = format!("{pwd}; app_pref=dark");
    let (s, action, fs) = request(
        &mut p,
        "/",
        &[("cookie", &cookie), ("x-forwarded-user", "mallory")],
    );
    assert_eq!(action, Action::Continue, "{:?}", p.local_response(s));
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        p.request_header(s, "cookie").as_deref(),
        Some("app_pref=dark")
    );
    assert!(
        fs.get("portcullis_identity").is_none(),
        "the identity stays in memory"
    );
    assert_eq!(p.metric("portcullis_ca.app.hr.result.allow"), Some(1));
    p.response_headers(
        s,
        &[
            (":status", "302"),
            ("location", "http://hr.internal:8080/next"),
            ("set-cookie", "sid=1; Path=/"),
            ("x-robots-tag", "all"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        p.response_header(s, "location").as_deref(),
        Some("https://hr.localhost/next")
    );
    let set = p.response_header(s, "set-cookie").unwrap();
    assert!(set.contains("Secure") && set.contains("HttpOnly"), "{set}");
    assert_eq!(
        p.response_header(s, "x-robots-tag").as_deref(),
        Some("noindex, nofollow")
    );

    // Step-up on /admin for a password-only session, from the core.
    let (s, action, _) = request(&mut p, "/admin", &[("cookie", &pwd)]);
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/.auth/login?rd=%2Fadmin&acr=urn%3Aportcullis%3Amfa")
    );

    // Someone outside the app's assignment.
    let outsider = session_cookie("mallory", &["guests"], &["pwd", "mfa"]);
    let (s, action, _) = request(&mut p, "/", &[("cookie", &outsider)]);
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 403);
    assert!(r.body_text().contains("not_assigned"));
}

fn bearer() -> String {
    let mut claims = Claims::with_custom_claims(
        serde_json::json!({}),
        jwt_simple::prelude::Duration::from_secs(600),
    )
    .with_issuer(ISS)
    .with_audience("api://hr")
    .with_subject("service-1");
    claims.issued_at = Some(jwt_simple::prelude::Duration::from_secs(NOW));
    claims.expires_at = Some(jwt_simple::prelude::Duration::from_secs(NOW + 600));
    claims.invalid_before = None;
    format!("Bearer {}", signing_key().sign(claims).unwrap())
}

/// A request that waits for the provider's keys is resumed once they are
/// there, and only after conditional access and the cookie stage judged it.
#[test]
fn a_resumed_request_runs_the_later_stages() {
    let mut p = start(false);
    let auth = bearer();
    let (s, action, _) = request(
        &mut p,
        "/api",
        &[
            ("authorization", &auth),
            ("cookie", "__Host-portcullis=x; a=1"),
        ],
    );
    assert_eq!(action, Action::Pause);
    assert!(p.local_response(s).is_none());
    assert_eq!(p.metric("portcullis_ca.app.hr.result.allow"), Some(0));
    serve_documents(&mut p);
    assert!(p.local_response(s).is_none(), "{:?}", p.local_response(s));
    assert_eq!(p.stream(s).request_continued, 1);
    assert_eq!(p.metric("portcullis_ca.app.hr.result.allow"), Some(1));
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("service-1")
    );
    assert_eq!(p.request_header(s, "cookie").as_deref(), Some("a=1"));

    // Waiting, then refused by a later stage: answered, not resumed.
    let mut p = start(false);
    let (s, action, _) = request(&mut p, "/admin", &[("authorization", &auth)]);
    assert_eq!(action, Action::Pause);
    serve_documents(&mut p);
    let r = p.local_response(s).expect("conditional access answers");
    assert_eq!(r.status, 302, "{}", r.body_text());
    assert_eq!(p.stream(s).request_continued, 0);
}

#[test]
fn a_section_that_does_not_load_names_its_field() {
    let p = Plugin::builder(Filter::Portcullis)
        .config(r#"{"robots": {}, "cookie": {"apps": [{"name": "x"}]}}"#)
        .start()
        .unwrap();
    assert!(!p.configured());
    assert!(
        p.log_messages()
            .iter()
            .any(|m| m.contains("field `cookie.apps[0]")),
        "{:?}",
        p.log_messages()
    );
    let p = Plugin::builder(Filter::Portcullis)
        .config(r#"{"robots": {}, "preauth_typo": {}}"#)
        .start()
        .unwrap();
    assert!(!p.configured());
}

/// Deterministic cost in the test host (wasm fuel, about one unit per wasm
/// instruction; not a timing): one request with a cached session through
/// the four stages, conditional access judging 20 policies that all apply,
/// decision log line included, response headers included. The budget is
/// about 25% above the figure measured with it (see BENCHMARKS.md).
#[test]
fn cost_of_a_request_through_every_stage() {
    let mut p = ready(true);
    let mfa = session_cookie("alice", &["staff"], &["pwd", "mfa"]);
    let cookie = format!("{mfa}; app_pref=dark");
    let run = |p: &mut Plugin| {
        let (s, action, _) = request(p, "/app3/x", &[("cookie", &cookie)]);
        assert_eq!(action, Action::Continue, "{:?}", p.local_response(s));
        p.response_headers(
            s,
            &[(":status", "200"), ("content-type", "text/html")],
            false,
        )
        .unwrap();
        p.finish_stream(s).unwrap();
    };
    run(&mut p); // the session's first request opens and caches it
    let runs = 50u64;
    let before = p.fuel_consumed();
    for _ in 0..runs {
        run(&mut p);
    }
    let per = (p.fuel_consumed() - before) / runs;
    println!("all-in-one, four stages, 20 policies, cached session: {per} wasm fuel per request");
    assert!(per <= BUDGET, "{per} > {BUDGET}");
}

/// Every stage of one all-in-one module judges the app the route names
/// (Host exactly, without route metadata), and what the app and the later
/// stages learn about the client is what Envoy saw, as in the split layout.
/// Conditional access reads its country from `x-portcullis-country`, which
/// preauth strips: a client copy must not exempt it from the step-up (the
/// shared request head used to keep the client's headers after preauth
/// removed them from the request; the split layout never saw them).
fn routed_config() -> String {
    let preauth = format!(
        r#"{{"apps":[{{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"portcullis",
          "client_secret":"s3cret","cluster":"idp","sealing_keys":["{KEY}"],"policy_groups":["staff"],
          "bearer":{{"audience":"api://hr"}}}},
          {{"id":"open","hosts":["open.localhost"],"mode":"passthrough"}}]}}"#
    );
    let ca = r#"{"country_header": "x-portcullis-country",
        "named_locations": {"home": {"countries": ["FR"]}},
        "apps": {"hr": {"groups": ["staff"]}, "open": {"users": ["*"]}},
        "hosts": {"hr.localhost": "hr", "open.localhost": "open"},
        "policies": [{"name": "away-mfa", "apps": ["hr"],
          "conditions": {"locations": {"include": ["all"], "exclude": ["home"]}},
          "grant": {"mfa": true}}]}"#;
    let cookie = r#"{"apps":[
        {"name":"hr","internal_url":"http://hr.internal:8080","external_url":"https://hr.localhost"},
        {"name":"open","internal_url":"http://open.internal:8080","external_url":"https://open.localhost"}]}"#;
    format!(r#"{{"preauth": {preauth}, "conditional_access": {ca}, "cookie": {cookie}}}"#)
}

fn routed(
    p: &mut Plugin,
    route_app: Option<&str>,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (u32, Action) {
    let s = p.new_stream().unwrap();
    if let Some(app) = route_app {
        p.set_route_app(s, app).unwrap();
    }
    p.set_stream_property(s, "source.address", "198.51.100.20:40000")
        .unwrap();
    let mut h = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", host),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("x-request-id", "rid-9"),
    ];
    h.extend_from_slice(extra);
    let a = p.request_headers(s, &h, true).unwrap();
    (s, a)
}

/// The `location` the app's redirect to `http://<internal>/next` becomes.
fn translated_location(p: &mut Plugin, s: u32, internal: &str) -> Option<String> {
    let location = format!("http://{internal}/next");
    p.response_headers(s, &[(":status", "302"), ("location", &location)], true)
        .unwrap();
    p.response_header(s, "location")
}

#[test]
fn every_stage_judges_the_routes_app_and_sees_what_envoy_saw() {
    let mut p = Plugin::builder(Filter::Portcullis)
        .config(routed_config())
        .cluster("idp")
        .now_secs(NOW)
        .start()
        .unwrap();
    assert!(p.configured(), "{:?}", p.log_messages());
    serve_documents(&mut p);
    let pwd = session_cookie("alice", &["staff"], &["pwd"]);
    let mfa = session_cookie("alice", &["staff"], &["pwd", "mfa"]);
    let spoof = [
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4;host=evil.example"),
        ("x-original-url", "/admin"),
    ];

    // Routed to hr, whatever the Host says: preauth opens hr's session,
    // conditional access judges hr, the cookie stage applies hr's policy, and
    // the app gets Envoy's host and address, not the client's.
    let mut extra = spoof.to_vec();
    extra.push(("cookie", &mfa));
    let (s, a) = routed(&mut p, Some("hr"), "hr.localhost.:10443", "/x", &extra);
    assert_eq!(a, Action::Continue, "{:?}", p.local_response(s));
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        p.request_header(s, "x-forwarded-host").as_deref(),
        Some("hr.localhost.:10443")
    );
    assert_eq!(
        p.request_header(s, "x-real-ip").as_deref(),
        Some("198.51.100.20")
    );
    for name in ["forwarded", "x-original-url"] {
        assert_eq!(p.request_header(s, name), None, "{name}");
    }
    assert_eq!(p.metric("portcullis_ca.app.hr.result.allow"), Some(1));
    assert_eq!(
        translated_location(&mut p, s, "hr.internal:8080").as_deref(),
        Some("https://hr.localhost/next")
    );

    // Without route metadata the Host decides, exactly: a trailing dot is no
    // app, and preauth refuses it before any later stage runs.
    let (s, a) = routed(&mut p, None, "hr.localhost.", "/x", &[("cookie", &mfa)]);
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(
        (r.status, r.body_text().contains("unknown_host")),
        (404, true)
    );

    // Routed to the passthrough app on hr's Host, hr's session is nobody's
    // identity; conditional access and the cookie stage judge `open`.
    let (s, a) = routed(
        &mut p,
        Some("open"),
        "hr.localhost",
        "/x",
        &[("cookie", &mfa), ("x-forwarded-user", "mallory")],
    );
    assert_eq!(a, Action::Continue, "{:?}", p.local_response(s));
    assert_eq!(p.request_header(s, "x-forwarded-user"), None);
    assert_eq!(p.metric("portcullis_ca.app.open.result.allow"), Some(1));
    assert_eq!(
        translated_location(&mut p, s, "open.internal:8080").as_deref(),
        Some("https://open.localhost/next")
    );
    assert_eq!(
        translated_location(&mut p, s, "hr.internal:8080").as_deref(),
        Some("http://hr.internal:8080/next"),
        "hr's URLs are not translated on open's route"
    );

    // A route naming an app no stage knows is refused, not passed.
    let (s, a) = routed(
        &mut p,
        Some("h-r"),
        "hr.localhost",
        "/x",
        &[("cookie", &mfa)],
    );
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(
        (r.status, r.body_text().contains("route_app_unknown")),
        (500, true)
    );

    // The country header preauth strips is none for conditional access: a
    // password-only session away from home is asked for the step-up, with or
    // without a client copy claiming home.
    for extra in [vec![], vec![("x-portcullis-country", "FR")]] {
        let mut h = extra.clone();
        h.push(("cookie", &pwd));
        let (s, a) = routed(&mut p, Some("hr"), "hr.localhost", "/x", &h);
        assert_eq!(a, Action::Pause, "{extra:?}: {:?}", p.local_response(s));
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 401, "{extra:?}: {}", r.body_text());
    }
}
