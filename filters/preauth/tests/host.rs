//! Host tests on the release `portcullis_preauth.wasm`: the OpenID Connect
//! flows that need signed ID tokens (generated here with jwt-simple), with a
//! programmable provider (discovery, JWKS, token endpoint). The flows without
//! tokens are in `host-tests/tests/preauth.rs`.
//!
//! Build the module first:
//! `cargo build --release --target wasm32-wasip1 -p portcullis-preauth`
//! (set `PORTCULLIS_WASM_DIR` when using another target directory).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_simple::prelude::*;
use portcullis_host_tests::{header_values, Action, Filter, HttpCall, Plugin, SharedData};
use std::sync::OnceLock;
use std::time::Duration as StdDuration;

const ISS: &str = "https://idp.test";
const CLIENT: &str = "portcullis";
const NOW: u64 = 1_800_000_000;
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
/// Fuel budget of a session's first request on a worker (see `request_cost_stays_within_its_budget`).
const BUDGET_FIRST_REQUEST: u64 = 7_600_000;
/// Fuel budget of a session's later requests.
const BUDGET_SESSION_HIT: u64 = 150_000;

fn signing_key() -> &'static ES256KeyPair {
    static K: OnceLock<ES256KeyPair> = OnceLock::new();
    K.get_or_init(|| ES256KeyPair::generate().with_key_id("k1"))
}

fn rotated_key() -> &'static ES256KeyPair {
    static K: OnceLock<ES256KeyPair> = OnceLock::new();
    K.get_or_init(|| ES256KeyPair::generate().with_key_id("k2"))
}

fn jwk(k: &ES256KeyPair, kid: &str) -> String {
    let p = k.public_key().public_key().to_bytes_uncompressed();
    format!(
        r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","x":"{}","y":"{}"}}"#,
        B64.encode(&p[1..33]),
        B64.encode(&p[33..65])
    )
}

fn jwks(keys: &[(&ES256KeyPair, &str)]) -> String {
    let keys: Vec<String> = keys.iter().map(|(k, kid)| jwk(k, kid)).collect();
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

fn discovery() -> String {
    format!(
        r#"{{"issuer":"{ISS}","authorization_endpoint":"{ISS}/auth","token_endpoint":"{ISS}/token",
        "jwks_uri":"{ISS}/jwks","end_session_endpoint":"{ISS}/logout"}}"#
    )
}

fn config() -> String {
    format!(
        r#"{{"apps":[
        {{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"{CLIENT}",
          "client_secret":"s3cret","cluster":"idp","token_timeout_ms":3000,
          "sealing_keys":["{KEY}"],"unauthenticated_paths":["/public"],
          "bearer":{{"audience":"api://hr"}}}},
        {{"id":"open","hosts":["open.localhost"],"mode":"passthrough"}}]}}"#
    )
}

const WASM_NOTE: &str =
    "build the module first: cargo build --release --target wasm32-wasip1 -p portcullis-preauth";

fn start_with(shared: SharedData) -> Plugin {
    let p = Plugin::builder(Filter::Preauth)
        .config(config())
        .cluster("idp")
        .now_secs(NOW)
        .shared(shared)
        .start()
        .expect(WASM_NOTE);
    assert!(p.configured(), "{:?}", p.log_messages());
    p
}

fn pending_to(p: &Plugin, path: &str) -> HttpCall {
    p.pending_calls()
        .into_iter()
        .find(|c| c.header(":path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no pending call to {path}: {:?}", p.http_calls()))
}

/// Starts a plugin and serves discovery and JWKS.
fn ready() -> Plugin {
    let mut p = start_with(SharedData::default());
    serve_documents(&mut p);
    p
}

/// Answers the plugin's discovery and JWKS fetches.
fn serve_documents(p: &mut Plugin) {
    p.tick().unwrap();
    let d = pending_to(p, "/.well-known/openid-configuration");
    assert_eq!(d.upstream, "idp");
    assert_eq!(d.header(":authority").as_deref(), Some("idp.test"));
    p.respond_http_call(d.token, 200, &[], discovery().as_bytes())
        .unwrap();
    p.tick().unwrap();
    let j = pending_to(p, "/jwks");
    p.respond_http_call(j.token, 200, &[], jwks(&[(signing_key(), "k1")]).as_bytes())
        .unwrap();
}

const BROWSER: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

fn request(p: &mut Plugin, host: &str, path: &str, extra: &[(&str, &str)]) -> (u32, Action) {
    let s = p.new_stream().unwrap();
    let mut h = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", host),
        (":scheme", "https"),
        ("x-request-id", "rid-42"),
    ];
    h.extend_from_slice(extra);
    let a = p.request_headers(s, &h, true).unwrap();
    (s, a)
}

fn query(url: &str, name: &str) -> String {
    let q = &url[url.find('?').unwrap() + 1..];
    q.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map(|v| {
            v.replace("%2F", "/")
                .replace("%3A", ":")
                .replace("%2B", "+")
        })
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

fn id_token_at(key: &ES256KeyPair, nonce: &str, now: u64) -> String {
    let claims = Claims::with_custom_claims(
        serde_json::json!({"email":"alice@example.com","preferred_username":"alice","groups":["staff","admins"]}),
        jwt_simple::prelude::Duration::from_secs(3600),
    )
    .with_issuer(ISS)
    .with_audience(CLIENT)
    .with_subject("alice-sub")
    .with_nonce(nonce);
    let mut claims = claims;
    claims.issued_at = Some(jwt_simple::prelude::Duration::from_secs(now));
    claims.expires_at = Some(jwt_simple::prelude::Duration::from_secs(now + 3600));
    claims.invalid_before = None;
    key.sign(claims).unwrap()
}

fn id_token(key: &ES256KeyPair, nonce: &str) -> String {
    id_token_at(key, nonce, NOW)
}

/// Navigates to `original`, returns (state cookie pair, state, nonce).
fn start_login(p: &mut Plugin, original: &str) -> (String, String, String) {
    let (s, a) = request(p, "hr.localhost", original, &[BROWSER]);
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).expect("a redirect to the provider");
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(&format!("{ISS}/auth?")), "{loc}");
    assert_eq!(query(&loc, "response_type"), "code");
    assert_eq!(query(&loc, "code_challenge_method"), "S256");
    assert_eq!(
        query(&loc, "redirect_uri"),
        "https://hr.localhost/.auth/callback"
    );
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("Max-Age=600"));
    let pair = set.split(';').next().unwrap().to_string();
    (pair, query(&loc, "state"), query(&loc, "nonce"))
}

/// Sends the callback and returns the stream and the token-endpoint call.
fn callback(p: &mut Plugin, cookie: &str, state: &str) -> (u32, HttpCall) {
    let path = format!("/.auth/callback?code=c0de&state={state}");
    let (s, a) = request(p, "hr.localhost", &path, &[BROWSER, ("cookie", cookie)]);
    assert_eq!(a, Action::Pause, "{:?}", p.local_response(s));
    assert!(p.local_response(s).is_none());
    let call = pending_to(p, "/token");
    (s, call)
}

fn sign_in(p: &mut Plugin, original: &str) -> String {
    let (cookie, state, nonce) = start_login(p, original);
    let (s, call) = callback(p, &cookie, &state);
    let now = p.now_nanos() / 1_000_000_000;
    let body = format!(
        r#"{{"id_token":"{}"}}"#,
        id_token_at(signing_key(), &nonce, now)
    );
    p.respond_http_call(call.token, 200, &[], body.as_bytes())
        .unwrap();
    let r = p.local_response(s).expect("a redirect back");
    assert_eq!(r.status, 302, "{}", r.body_text());
    assert_eq!(r.header("location").as_deref(), Some(original));
    let cookies = r.headers_named("set-cookie");
    assert!(cookies[0].starts_with("__Host-portcullis="));
    assert!(cookies[0].contains("Secure; HttpOnly; SameSite=Lax"));
    assert!(cookies[1].contains("Max-Age=0"));
    cookies[0].split(';').next().unwrap().to_string()
}

#[test]
fn whole_flow_with_identity_headers_and_handoff() {
    let mut p = ready();
    let (cookie, state, nonce) = start_login(&mut p, "/reports?q=1");
    let (s, call) = callback(&mut p, &cookie, &state);
    assert_eq!(call.upstream, "idp");
    assert_eq!(call.timeout_ms, 3000);
    let body = String::from_utf8_lossy(&call.body).to_string();
    assert!(body.contains("grant_type=authorization_code"), "{body}");
    assert!(body.contains("code=c0de"));
    assert!(body.contains("code_verifier="));
    assert!(call.header("authorization").unwrap().starts_with("Basic "));
    let token = format!(r#"{{"id_token":"{}"}}"#, id_token(signing_key(), &nonce));
    p.respond_http_call(call.token, 200, &[], token.as_bytes())
        .unwrap();
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location").as_deref(), Some("/reports?q=1"));
    let session = r.headers_named("set-cookie")[0]
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // With the session: spoofed headers are removed, identity headers added.
    let fuel_before = p.fuel_consumed();
    let (s, a) = request(
        &mut p,
        "hr.localhost",
        "/reports",
        &[
            BROWSER,
            ("cookie", &session),
            ("x-forwarded-user", "mallory"),
            ("X_Forwarded_Email", "m@evil"),
            ("x-portcullis-identity", "forged"),
            ("x-portcullis-jwt-assertion", "forged.by.client"),
        ],
    );
    assert_eq!(a, Action::Continue);
    // The signed identity assertion replaces any client copy, and the app's
    // published JWKS verifies it.
    let assertion = p.request_header(s, "x-portcullis-jwt-assertion").unwrap();
    assert_ne!(assertion, "forged.by.client");
    assert_eq!(assertion.split('.').count(), 3);
    println!(
        "fuel for one request with a session cookie: {}",
        p.fuel_consumed() - fuel_before
    );
    assert!(p.local_response(s).is_none());
    let (js, _) = request(&mut p, "hr.localhost", "/.auth/jwks", &[]);
    let jwks = p.local_response(js).unwrap();
    assert_eq!(jwks.status, 200);
    assert_eq!(
        jwks.header("cache-control").as_deref(),
        Some("public, max-age=300")
    );
    let keys = portcullis_core::assertion::PublicKeySet::from_jwks(&jwks.body).unwrap();
    let claims = portcullis_core::assertion::verify(
        &assertion,
        &keys,
        &portcullis_core::assertion::Expected {
            issuer: "https://hr.localhost",
            audience: "hr",
            skew_secs: 60,
            now: NOW,
        },
    )
    .unwrap();
    assert_eq!(claims.sub, "alice-sub");
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("alice-sub")
    );
    assert_eq!(
        p.request_header(s, "x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        p.request_header(s, "x-forwarded-groups").as_deref(),
        Some("staff,admins")
    );
    assert_eq!(p.request_header(s, "x_forwarded_email"), None);
    assert_eq!(p.request_header(s, "x-portcullis-identity"), None);
    let handoff = p
        .stream(s)
        .filter_state
        .get("portcullis_identity")
        .expect("identity handed to later filters");
    let v: serde_json::Value = serde_json::from_slice(&handoff).unwrap();
    assert_eq!(v["v"], 1);
    assert_eq!(v["app"], "hr");
    assert_eq!(v["identity"]["sub"], "alice-sub");

    // /.auth/me
    let (s, _) = request(&mut p, "hr.localhost", "/.auth/me", &[("cookie", &session)]);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 200);
    let me: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(me["email"], "alice@example.com");

    // Logout clears the cookie and goes to the provider's end-session endpoint.
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        "/.auth/logout",
        &[BROWSER, ("cookie", &session)],
    );
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{ISS}/logout")));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn nonce_is_checked() {
    let mut p = ready();
    let (cookie, state, _) = start_login(&mut p, "/");
    let (s, call) = callback(&mut p, &cookie, &state);
    let body = format!(
        r#"{{"id_token":"{}"}}"#,
        id_token(signing_key(), "not-the-nonce")
    );
    p.respond_http_call(call.token, 200, &[], body.as_bytes())
        .unwrap();
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body_text().contains("nonce_mismatch"));
}

#[test]
fn unknown_kid_refetches_the_keys_once() {
    let mut p = ready();
    // The forced refetch is rate-limited against the last fetch.
    p.advance(StdDuration::from_secs(31));
    let (cookie, state, nonce) = start_login(&mut p, "/after-rotation");
    let (s, call) = callback(&mut p, &cookie, &state);
    let body = format!(r#"{{"id_token":"{}"}}"#, id_token(rotated_key(), &nonce));
    p.respond_http_call(call.token, 200, &[], body.as_bytes())
        .unwrap();
    assert!(p.local_response(s).is_none(), "waits for fresh keys");
    p.tick().unwrap();
    let j = pending_to(&p, "/jwks");
    p.respond_http_call(
        j.token,
        200,
        &[],
        jwks(&[(signing_key(), "k1"), (rotated_key(), "k2")]).as_bytes(),
    )
    .unwrap();
    let r = p.local_response(s).expect("resumed after the refetch");
    assert_eq!(r.status, 302, "{}", r.body_text());
    assert_eq!(r.header("location").as_deref(), Some("/after-rotation"));
}

#[test]
fn unknown_kid_within_the_rate_limit_is_refused() {
    let mut p = ready();
    let (cookie, state, nonce) = start_login(&mut p, "/");
    let (s, call) = callback(&mut p, &cookie, &state);
    let body = format!(r#"{{"id_token":"{}"}}"#, id_token(rotated_key(), &nonce));
    p.respond_http_call(call.token, 200, &[], body.as_bytes())
        .unwrap();
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body_text().contains("unknown_key"));
    p.tick().unwrap();
    assert!(
        p.pending_calls().is_empty(),
        "no refetch inside the rate limit"
    );
}

#[test]
fn keys_are_shared_between_workers_and_survive_a_failed_refresh() {
    let mut a = ready();
    let mut b = start_with(a.shared());
    b.tick().unwrap();
    assert!(
        b.pending_calls().is_empty(),
        "the second worker uses the published documents: {:?}",
        b.http_calls()
    );
    sign_in(&mut b, "/from-b");

    // After the refresh period a fetch that fails keeps the last good keys.
    a.advance(StdDuration::from_secs(3601));
    a.tick().unwrap();
    for c in a.pending_calls() {
        a.respond_http_call(c.token, 500, &[], b"oops").unwrap();
    }
    a.tick().unwrap();
    sign_in(&mut a, "/still-works");
}

#[test]
fn sessions_expire() {
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    // The ID token lives an hour; the session ends with it.
    p.advance(StdDuration::from_secs(3600));
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        "/api",
        &[("accept", "application/json"), ("cookie", &session)],
    );
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body_text().contains("session_expired"));
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        "/page",
        &[BROWSER, ("cookie", &session)],
    );
    assert_eq!(p.local_response(s).unwrap().status, 302);
}

#[test]
fn bearer_tokens_for_api_clients() {
    let mut p = ready();
    let mut claims = Claims::with_custom_claims(
        serde_json::json!({"email":"svc@example.com"}),
        jwt_simple::prelude::Duration::from_secs(600),
    )
    .with_issuer(ISS)
    .with_audience("api://hr")
    .with_subject("service-1");
    claims.issued_at = Some(jwt_simple::prelude::Duration::from_secs(NOW));
    claims.expires_at = Some(jwt_simple::prelude::Duration::from_secs(NOW + 600));
    claims.invalid_before = None;
    let token = signing_key().sign(claims).unwrap();
    let auth = format!("Bearer {token}");
    let (s, a) = request(
        &mut p,
        "hr.localhost",
        "/api",
        &[("authorization", &auth), ("x-forwarded-user", "mallory")],
    );
    assert_eq!(a, Action::Continue, "{:?}", p.local_response(s));
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("service-1")
    );
    // An ID token for the web client is not an access token for the API.
    let id = id_token(signing_key(), "n");
    let auth = format!("Bearer {id}");
    let (s, _) = request(&mut p, "hr.localhost", "/api", &[("authorization", &auth)]);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body_text().contains("audience_mismatch"));
}

/// Sessions the worker opened are cached, but a sealing key taken out of the
/// configuration stops opening cookies at once: the cache belongs to one
/// configuration.
#[test]
fn a_removed_sealing_key_stops_even_a_cached_session() {
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    for _ in 0..3 {
        let (s, a) = request(
            &mut p,
            "hr.localhost",
            "/app",
            &[BROWSER, ("cookie", &session)],
        );
        assert_eq!(a, Action::Continue);
        assert_eq!(
            p.request_header(s, "x-forwarded-user").as_deref(),
            Some("alice-sub")
        );
        p.finish_stream(s).unwrap();
    }
    let other_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    assert!(p.reconfigure(config().replace(KEY, other_key)).unwrap());
    // The provider's documents come from the workers' shared data.
    p.tick().unwrap();
    let (s, a) = request(
        &mut p,
        "hr.localhost",
        "/app",
        &[BROWSER, ("cookie", &session)],
    );
    assert_eq!(a, Action::Pause);
    assert_eq!(p.request_header(s, "x-forwarded-user"), None);
    let r = p.local_response(s).expect("a sign-in redirect");
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{ISS}/auth?")));
    // With the old key back, the same cookie opens again.
    assert!(p.reconfigure(config()).unwrap());
    p.tick().unwrap();
    let (_, a) = request(
        &mut p,
        "hr.localhost",
        "/app",
        &[BROWSER, ("cookie", &session)],
    );
    assert_eq!(a, Action::Continue);
}

/// Deterministic per-request cost in the test host (wasm fuel, about one unit
/// per wasm instruction; the same on any machine for the same module), with
/// budgets so that a regression fails here even when wall-clock benchmarks are
/// too noisy to show it. Three figures: a request without a session
/// (unauthenticated path); the first request of a session on a worker (opens
/// the AES-256-GCM cookie, decodes the identity and signs the identity
/// assertion, Ed25519); and the session's later requests, which find all of it
/// in the worker's session cache (the cost of a valid session). All strip and
/// add identity headers and hand the identity over.
///
/// Measured 2026-12-01 with this test on the module before the assertion
/// existed: 34,554 / 242,454 / 107,844 fuel; with it: 34,368 / 6,068,766 (one
/// Ed25519 signature, once per session and worker) / 109,764 (+1.8%); with
/// the path-equivalence rule (issue 12) and cookie format 2: 34,732 /
/// 6,134,709 / 111,502. After the rest of issue 12 (the route's app and
/// Envoy's downstream address read, X-Forwarded-Host and X-Real-IP set: four
/// host calls): 43,295 / 6,142,474 / 120,070 (+8.6% on the 110,533 before
/// the assertion and issue 12).
/// The budgets allow about 25% above the figures with the assertion. The cost
/// of the cookie format 2 on a first request is in
/// `a_session_cache_miss_costs_one_hkdf_more`. Print them with
/// `cargo test --release -p portcullis-preauth --test host request_cost -- --nocapture`.
#[test]
fn request_cost_stays_within_its_budget() {
    const BUDGET_PUBLIC: u64 = 54_000;
    const BUDGET_FIRST: u64 = BUDGET_FIRST_REQUEST;
    const BUDGET_HIT: u64 = BUDGET_SESSION_HIT;
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    let n = 50u32;
    let measure = |p: &mut Plugin, path: &str, headers: &[(&str, &str)], n: u32| {
        let fuel = p.fuel_consumed();
        for _ in 0..n {
            let (s, a) = request(p, "hr.localhost", path, headers);
            assert_eq!(a, Action::Continue);
            p.finish_stream(s).unwrap();
        }
        (p.fuel_consumed() - fuel) / u64::from(n)
    };
    let public = measure(&mut p, "/public/x", &[BROWSER], n);
    let first = measure(&mut p, "/app", &[BROWSER, ("cookie", &session)], 1);
    let hit = measure(&mut p, "/app", &[BROWSER, ("cookie", &session)], n);
    println!(
        "preauth in the test host, per request: {public} fuel without a session; \
         {first} fuel for a session's first request on a worker; {hit} fuel for its \
         later requests (cookie {} bytes)",
        session.len()
    );
    assert!(public <= BUDGET_PUBLIC, "{public} > {BUDGET_PUBLIC}");
    assert!(first <= BUDGET_FIRST, "{first} > {BUDGET_FIRST}");
    assert!(hit <= BUDGET_HIT, "{hit} > {BUDGET_HIT}");
}

/// A request whose route names `route_app` (route metadata `portcullis.app`),
/// from downstream address `source`.
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
        ("x-request-id", "rid-7"),
    ];
    h.extend_from_slice(extra);
    let a = p.request_headers(s, &h, true).unwrap();
    (s, a)
}

/// Issue 12, point 2, on the real module: the app comes from the route, and a
/// Host spelling Envoy routed elsewhere never carries `hr`'s session along.
#[test]
fn the_route_chooses_the_app_not_a_host_spelling() {
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    let json = ("accept", "application/json");
    // Without route metadata the Host decides, exactly: a trailing dot Envoy
    // left is no app (the old module stripped every dot and accepted the session).
    for host in [
        "hr.localhost.",
        "hr.localhost.:10000",
        "HR.localhost..:10000",
    ] {
        let (s, a) = routed(&mut p, None, host, "/x", &[json, ("cookie", &session)]);
        assert_eq!(a, Action::Pause, "{host}");
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 404, "{host}");
        assert!(r.body_text().contains("unknown_host"), "{host}");
        assert!(p
            .stream(s)
            .filter_state
            .get("portcullis_identity")
            .is_none());
    }
    // Routed to the passthrough app, hr's session is nobody's identity.
    let (s, a) = routed(
        &mut p,
        Some("open"),
        "hr.localhost",
        "/x",
        &[json, ("cookie", &session), ("x-forwarded-user", "mallory")],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(p.request_header(s, "x-forwarded-user"), None);
    assert!(p
        .stream(s)
        .filter_state
        .get("portcullis_identity")
        .is_none());
    // Routed to hr, the session opens whatever the Host says, and is handed on as hr's.
    let (s, a) = routed(
        &mut p,
        Some("hr"),
        "hr.localhost.",
        "/x",
        &[json, ("cookie", &session)],
    );
    assert_eq!(a, Action::Continue);
    let v: serde_json::Value =
        serde_json::from_slice(&p.stream(s).filter_state.get("portcullis_identity").unwrap())
            .unwrap();
    assert_eq!(v["app"], "hr");
    // A route naming an app this filter does not know is refused, not passed.
    let (s, a) = routed(
        &mut p,
        Some("h-r"),
        "hr.localhost",
        "/x",
        &[json, ("cookie", &session)],
    );
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.body_text().contains("route_app_unknown"));
    assert!(p
        .log_messages()
        .iter()
        .any(|m| m.contains("route_app_unknown") && m.contains("`h-r`")));
}

/// Issue 12, point 5, on the real module: client copies of the headers
/// backends trust about the client are dropped; X-Forwarded-Host and
/// X-Real-IP are what Envoy saw.
#[test]
fn forwarded_headers_are_what_envoy_saw() {
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    let spoof = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4;host=evil.example;proto=https"),
        ("X-Forwarded-Port", "8443"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X_Original_URL", "/admin"),
        ("X-HTTP-Method-Override", "DELETE"),
    ];
    for (route, path, cookie) in [
        (Some("hr"), "/x", session.as_str()),
        (Some("hr"), "/public/x", ""),
        (Some("open"), "/x", ""),
        (None, "/x", session.as_str()),
    ] {
        let mut extra = spoof.to_vec();
        extra.push(("cookie", cookie));
        let (s, a) = routed(&mut p, route, "hr.localhost:10443", path, &extra);
        assert_eq!(a, Action::Continue, "{route:?} {path}");
        for (name, _) in &spoof[2..] {
            assert_eq!(p.request_header(s, name), None, "{name}");
        }
        assert_eq!(
            p.request_header(s, "x-forwarded-host").as_deref(),
            Some("hr.localhost:10443")
        );
        assert_eq!(
            p.request_header(s, "x-real-ip").as_deref(),
            Some("198.51.100.20")
        );
        assert_eq!(
            header_values(&p.stream(s).request_headers, "x-forwarded-host").len(),
            1
        );
    }
}

/// The same session as a cookie of format 1 (AES-256-GCM directly under the
/// configured key), built here from its definition: what a filter of the
/// previous release sealed.
fn as_format_1(session: &str) -> String {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let (name, value) = session.split_once('=').unwrap();
    let key: [u8; 32] = [1; 32];
    let sealer = portcullis_core::seal::Sealer::new(&[key]).unwrap();
    let plaintext = sealer.open(name, "hr", value).unwrap();
    let id = portcullis_core::seal::key_id(&key);
    let mut aad = b"portcullis-seal".to_vec();
    aad.extend_from_slice(&[1, id]);
    aad.extend_from_slice(&(name.len() as u32).to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad.extend_from_slice(&2u32.to_be_bytes());
    aad.extend_from_slice(b"hr");
    let nonce = [5u8; 12];
    let ct = aes_gcm::Aes256Gcm::new(&key.into())
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    let mut raw = vec![1, id];
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&ct);
    format!("{name}={}", B64.encode(raw))
}

/// A cookie the worker has not opened yet (a cache miss) costs one
/// HKDF-Expand and one AES key schedule more in format 2 than in format 1
/// (and 42 more bytes of base64); a cookie of format 1 still opens. Before the
/// identity assertion (whose Ed25519 signature now dominates a first request)
/// this measured 307,261 fuel per miss with a format-2 cookie and 241,857 with
/// a format-1 cookie (+65,404, +27%, 2026-12-01). The miss now shares the
/// first-request budget; the difference between the formats is printed.
#[test]
fn a_session_cache_miss_costs_one_hkdf_more() {
    const BUDGET_MISS: u64 = BUDGET_FIRST_REQUEST;
    let mut p = ready();
    let session = sign_in(&mut p, "/");
    let old = as_format_1(&session);
    let n = 5u64;
    let miss = |p: &mut Plugin, cookie: &str| {
        let mut total = 0;
        for _ in 0..n {
            // A new configuration starts with an empty session cache.
            assert!(p.reconfigure(config()).unwrap());
            p.tick().unwrap();
            let fuel = p.fuel_consumed();
            let (s, a) = request(p, "hr.localhost", "/app", &[BROWSER, ("cookie", cookie)]);
            assert_eq!(a, Action::Continue);
            assert_eq!(
                p.request_header(s, "x-forwarded-user").as_deref(),
                Some("alice-sub")
            );
            p.finish_stream(s).unwrap();
            total += p.fuel_consumed() - fuel;
        }
        total / n
    };
    let v2 = miss(&mut p, &session);
    let v1 = miss(&mut p, &old);
    println!(
        "preauth session cache miss, per request: {v2} fuel (format 2, {} bytes), \
         {v1} fuel (format 1, {} bytes)",
        session.len(),
        old.len()
    );
    assert!(v2 <= BUDGET_MISS, "{v2} > {BUDGET_MISS}");
}

/// A bearer request for `/api` signed by the current key.
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

/// A reconfigure replaces the VM's state: a request waiting for the provider
/// is decided again under the new configuration (and goes on once the keys
/// are there) instead of hanging in the old state forever.
#[test]
fn a_reconfigure_resumes_the_requests_waiting_for_the_provider() {
    let mut p = start_with(SharedData::default());
    let auth = bearer();
    let (s, a) = request(&mut p, "hr.localhost", "/api", &[("authorization", &auth)]);
    assert_eq!(a, Action::Pause, "waits for the keys");
    assert!(p.local_response(s).is_none());
    assert!(p.reconfigure(config()).unwrap());
    serve_documents(&mut p);
    assert!(p.local_response(s).is_none(), "{:?}", p.local_response(s));
    assert_eq!(
        p.stream(s).request_continued,
        1,
        "resumed under the new configuration"
    );
    assert_eq!(
        p.request_header(s, "x-forwarded-user").as_deref(),
        Some("service-1")
    );
}

/// A sign-in callback whose token exchange is in flight when the
/// configuration changes is answered (`sign_in_interrupted`, the login-state
/// cookie cleared) instead of hanging: the exchange belongs to the old state.
#[test]
fn a_reconfigure_answers_a_callback_in_flight() {
    let mut p = ready();
    let (cookie, state, _nonce) = start_login(&mut p, "/x");
    let (s, call) = callback(&mut p, &cookie, &state);
    assert!(p.reconfigure(config()).unwrap());
    let r = p.local_response(s).expect("answered at the reconfigure");
    assert_eq!(r.status, 503);
    assert!(
        r.body_text().contains("sign_in_interrupted"),
        "{}",
        r.body_text()
    );
    assert!(r
        .headers_named("set-cookie")
        .iter()
        .any(|c| c.contains("Max-Age=0")));
    // The late answer of the old exchange is ignored.
    let body = r#"{"id_token":"x"}"#;
    p.respond_http_call(call.token, 200, &[], body.as_bytes())
        .unwrap();
    assert_eq!(p.local_response(s).unwrap().status, 503);
}
