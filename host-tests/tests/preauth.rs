//! Host tests on the release `portcullis_preauth.wasm` that need no token
//! signing: configuration, passthrough, login redirects, waiting for the
//! provider, state checks, token-endpoint failures, documents shared between
//! workers. The flows with signed ID tokens are in
//! `filters/preauth/tests/host.rs` (they need jwt-simple as a dev-dependency).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host_tests::{Action, Filter, HttpCall, Plugin, SharedData};
use std::time::Duration;

const ISS: &str = "https://idp.test";
const CLIENT: &str = "portcullis";
const NOW: u64 = 1_800_000_000;
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
/// An EC P-256 public key (any valid point works: nothing is signed here).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig",
  "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

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
          "sealing_keys":["{KEY}"],"unauthenticated_paths":["/public"]}},
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

/// Starts a plugin and serves discovery and JWKS.
fn ready() -> Plugin {
    let mut p = start_with(SharedData::default());
    p.tick().unwrap();
    let d = pending_to(&p, "/.well-known/openid-configuration");
    assert_eq!(d.upstream, "idp");
    assert_eq!(d.header(":authority").as_deref(), Some("idp.test"));
    assert_eq!(d.header(":method").as_deref(), Some("GET"));
    p.respond_http_call(d.token, 200, &[], discovery().as_bytes())
        .unwrap();
    p.tick().unwrap();
    let j = pending_to(&p, "/jwks");
    p.respond_http_call(j.token, 200, &[], JWKS.as_bytes())
        .unwrap();
    p
}

/// Sends the callback and returns the stream and the token-endpoint call.
fn callback(p: &mut Plugin, cookie: &str, state: &str) -> (u32, HttpCall) {
    let path = format!("/.auth/callback?code=c0de&state={state}");
    let (s, a) = request(p, "hr.localhost", &path, &[BROWSER, ("cookie", cookie)]);
    assert_eq!(a, Action::Pause, "{:?}", p.local_response(s));
    assert!(p.local_response(s).is_none());
    (s, pending_to(p, "/token"))
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    for (config, field) in [
        (
            r#"{"apps":[{"id":"x","hosts":["x"],"mode":"passthrough","colour":1}]}"#,
            "apps[0].colour",
        ),
        (
            r#"{"apps":[{"id":"x","hosts":["x"],"issuer":"https://i","client_id":"c","cluster":"idp",
            "sealing_keys":["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="],"allowed_algorithms":["HS256"]}]}"#,
            "apps[0].allowed_algorithms[0]",
        ),
        (
            r#"{"apps":[{"id":"x","hosts":["x"],"issuer":"https://i"}]}"#,
            "apps[0].client_id",
        ),
    ] {
        let p = Plugin::builder(Filter::Preauth)
            .config(config)
            .start()
            .expect(WASM_NOTE);
        assert!(!p.configured(), "{config}");
        assert!(
            p.log_messages().iter().any(|m| m.contains(field)),
            "{field}: {:?}",
            p.log_messages()
        );
    }
}

#[test]
fn passthrough_strips_identity_headers() {
    let mut p = start_with(SharedData::default());
    let (s, a) = request(
        &mut p,
        "open.localhost",
        "/",
        &[
            ("X-Forwarded-User", "mallory"),
            ("x_forwarded_groups", "admins"),
            ("X-Forwarded-Preferred-Username", "root"),
            ("X-Portcullis-Whatever", "1"),
        ],
    );
    assert_eq!(a, Action::Continue);
    for h in [
        "x-forwarded-user",
        "x_forwarded_groups",
        "x-forwarded-preferred-username",
        "x-portcullis-whatever",
    ] {
        assert_eq!(p.request_header(s, h), None, "{h}");
    }
    assert!(p
        .stream(s)
        .filter_state
        .get("portcullis_identity")
        .is_none());
}

#[test]
fn unknown_hosts_are_refused() {
    let mut p = start_with(SharedData::default());
    let (s, a) = request(&mut p, "evil.localhost", "/", &[BROWSER]);
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body_text().contains("unknown_host"));
}

#[test]
fn navigation_is_sent_to_the_provider_with_state_nonce_and_pkce() {
    let mut p = ready();
    let (c1, s1, n1) = start_login(&mut p, "/reports?q=1");
    let (c2, s2, n2) = start_login(&mut p, "/other");
    // Parallel logins: distinct state, nonce and state-cookie names.
    assert_ne!(s1, s2);
    assert_ne!(n1, n2);
    assert_ne!(c1.split('=').next(), c2.split('=').next());
    assert!(c1.starts_with("__Host-portcullis-login-"));
}

#[test]
fn api_requests_get_401_json_and_public_paths_pass() {
    let mut p = ready();
    for extra in [
        vec![("accept", "application/json")],
        vec![BROWSER, ("x-requested-with", "XMLHttpRequest")],
    ] {
        let (s, _) = request(&mut p, "hr.localhost", "/api/data", &extra);
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let v: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
        assert_eq!(v["error"], "login_required");
        assert_eq!(v["request_id"], "rid-42");
    }
    let (s, a) = request(
        &mut p,
        "hr.localhost",
        "/public/x",
        &[("x-forwarded-user", "mallory")],
    );
    assert_eq!(a, Action::Continue);
    assert!(p.local_response(s).is_none());
    assert_eq!(p.request_header(s, "x-forwarded-user"), None);
    let (s, _) = request(&mut p, "hr.localhost", "/private", &[BROWSER]);
    assert_eq!(p.local_response(s).unwrap().status, 302);
    // A path Envoy did not normalise is not judged: it is refused.
    for path in ["/public/../public/x", "/public/../private"] {
        let (s, _) = request(&mut p, "hr.localhost", path, &[BROWSER]);
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body_text().contains("ambiguous_path"), "{path}");
    }
}

/// Spellings an attacker tries to reach a page outside the unauthenticated
/// prefix `/public` (raw, and as Envoy forwards them after `normalize_path`
/// and `merge_slashes`): none reaches the app without a session.
#[test]
fn an_unauthenticated_prefix_opens_no_other_path() {
    let mut p = ready();
    for path in [
        "/PUBLIC/../admin",
        "/public/../admin",
        "/admin",
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
        "/;/public",
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
        let (s, a) = request(&mut p, "hr.localhost", path, &[BROWSER]);
        assert_eq!(a, Action::Pause, "{path} reached the app without a session");
        let r = p.local_response(s).unwrap();
        let location = r.header("location").unwrap_or_default();
        assert!(
            r.status == 302 && location.starts_with(&format!("{ISS}/auth?"))
                || r.status == 400 && r.body_text().contains("ambiguous_path"),
            "{path}: {} {location} {}",
            r.status,
            r.body_text()
        );
    }
    for path in [
        "/public",
        "/public/",
        "/public/x",
        "/public/x;jsessionid=1",
        "/public/X?q=1",
    ] {
        let (_, a) = request(&mut p, "hr.localhost", path, &[BROWSER]);
        assert_eq!(a, Action::Continue, "{path}");
    }
}

#[test]
fn ambiguous_paths_are_refused_with_code_and_request_id() {
    let mut p = ready();
    for path in [
        "/admin%2f",
        "/ADMIN%2f",
        "/%2fadmin",
        "/x/..%2fadmin",
        "/admin%5c",
        "/admin%3b",
        "/%2561dmin",
        "/admin.",
        "/admin%2e",
        "/admin%20",
        "/admin%09",
        "/admin..;/",
        "/..;/admin",
        "/%2e%2e;/admin",
        "/admin%u0041",
    ] {
        let (s, _) = request(&mut p, "hr.localhost", path, &[BROWSER]);
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body_text().contains("ambiguous_path"), "{path}");
        assert!(r.body_text().contains("rid-42"), "{path}");
        let (s, _) = request(
            &mut p,
            "hr.localhost",
            path,
            &[("accept", "application/json")],
        );
        let v: serde_json::Value =
            serde_json::from_str(&p.local_response(s).unwrap().body_text()).unwrap();
        assert_eq!(v["error"], "ambiguous_path", "{path}");
        assert_eq!(v["request_id"], "rid-42");
    }
}

#[test]
fn reserved_paths_are_the_filters_in_every_spelling() {
    let mut p = ready();
    for path in ["/.AUTH/ME", "/.auth/me;x", "/.Auth/Me"] {
        let (s, a) = request(&mut p, "hr.localhost", path, &[BROWSER]);
        assert_eq!(a, Action::Pause, "{path}");
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 401, "{path}");
        assert!(r.body_text().contains("login_required"), "{path}");
    }
    let (s, _) = request(&mut p, "hr.localhost", "/.AUTH/other", &[BROWSER]);
    assert_eq!(p.local_response(s).unwrap().status, 404);
}

#[test]
fn an_app_loosens_its_path_rule_by_name() {
    let config = config().replace(
        r#""unauthenticated_paths":["/public"]"#,
        r#""unauthenticated_paths":["/public"],"path_rules":{"allow_encoded_slash":true,"case_sensitive":true}"#,
    );
    let mut p = Plugin::builder(Filter::Preauth)
        .config(config)
        .cluster("idp")
        .now_secs(NOW)
        .start()
        .expect(WASM_NOTE);
    assert!(p.configured(), "{:?}", p.log_messages());
    let (_, a) = request(&mut p, "hr.localhost", "/public/a%2fb", &[BROWSER]);
    assert_eq!(a, Action::Continue);
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        "/public%2fx",
        &[("accept", "application/json")],
    );
    assert_eq!(p.local_response(s).unwrap().status, 401);
    let (s, _) = request(&mut p, "hr.localhost", "/a%3b", &[BROWSER]);
    assert_eq!(p.local_response(s).unwrap().status, 400);
    // An unknown switch does not load, naming the field.
    let bad = config_with_rules(r#"{"allow_encoded_slashes":true}"#);
    let p = Plugin::builder(Filter::Preauth)
        .config(bad)
        .cluster("idp")
        .start()
        .unwrap();
    assert!(!p.configured());
    assert!(
        p.log_messages()
            .iter()
            .any(|m| m.contains("apps[0].path_rules.allow_encoded_slashes")),
        "{:?}",
        p.log_messages()
    );
}

fn config_with_rules(rules: &str) -> String {
    config().replace(
        r#""unauthenticated_paths":["/public"]"#,
        &format!(r#""unauthenticated_paths":["/public"],"path_rules":{rules}"#),
    )
}

#[test]
fn open_redirects_are_refused() {
    let mut p = ready();
    for rd in [
        "//evil.com",
        "https:evil.com",
        "/%2F%2Fevil",
        "/%5Cevil",
        "/%09/evil",
        "/..//evil.com",
        "/%2e%2e//evil.com",
        "/x/..//evil.com",
    ] {
        let (s, _) = request(
            &mut p,
            "hr.localhost",
            &format!("/.auth/login?rd={rd}"),
            &[BROWSER],
        );
        let r = p.local_response(s).unwrap();
        assert_eq!(r.status, 400, "{rd}");
        assert!(r.body_text().contains("redirect_invalid"));
    }
}

#[test]
fn me_and_logout_without_a_session() {
    let mut p = ready();
    let (s, _) = request(&mut p, "hr.localhost", "/.auth/me", &[BROWSER]);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body_text().contains("login_required"));
    let (s, _) = request(&mut p, "hr.localhost", "/.auth/logout", &[BROWSER]);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{ISS}/logout?client_id={CLIENT}")));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn requests_wait_for_the_provider_and_are_resumed() {
    let mut p = start_with(SharedData::default());
    let (s, a) = request(&mut p, "hr.localhost", "/x", &[BROWSER]);
    assert_eq!(a, Action::Pause);
    assert!(p.local_response(s).is_none(), "must wait, not answer");
    p.tick().unwrap();
    let d = pending_to(&p, "/.well-known/openid-configuration");
    p.respond_http_call(d.token, 200, &[], discovery().as_bytes())
        .unwrap();
    let r = p
        .local_response(s)
        .expect("resumed once the endpoints are known");
    assert_eq!(r.status, 302);
}

#[test]
fn provider_down_gives_keys_unavailable_after_the_wait_limit() {
    let mut p = start_with(SharedData::default());
    let (s, _) = request(&mut p, "hr.localhost", "/x", &[BROWSER]);
    p.tick().unwrap();
    let d = pending_to(&p, "/.well-known/openid-configuration");
    p.fail_http_call(d.token).unwrap();
    assert!(p.local_response(s).is_none());
    p.advance(Duration::from_secs(6));
    p.tick().unwrap();
    // Retried after the back-off.
    let d = pending_to(&p, "/.well-known/openid-configuration");
    p.respond_http_call(d.token, 503, &[], b"down").unwrap();
    p.advance(Duration::from_secs(5));
    p.tick().unwrap();
    let r = p.local_response(s).expect("a denial after the wait limit");
    assert_eq!(r.status, 503);
    assert!(r.body_text().contains("keys_unavailable"));
    assert!(r.body_text().contains("rid-42"));
}

#[test]
fn callback_state_is_checked() {
    let mut p = ready();
    let (cookie, state, _) = start_login(&mut p, "/");
    let path = format!("/.auth/callback?code=c&state={state}");
    let (s, _) = request(&mut p, "hr.localhost", &path, &[BROWSER]);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("state_missing"));
    let name = cookie.split('=').next().unwrap();
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        &path,
        &[
            BROWSER,
            (
                "cookie",
                &format!("{name}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ),
        ],
    );
    let r = p.local_response(s).unwrap();
    assert!(r.body_text().contains("state_mismatch"));
    let (s, _) = request(
        &mut p,
        "hr.localhost",
        &format!("/.auth/callback?error=access_denied&state={state}"),
        &[BROWSER, ("cookie", &cookie)],
    );
    assert!(p
        .local_response(s)
        .unwrap()
        .body_text()
        .contains("idp_error:access_denied"));
}

#[test]
fn token_exchange_timeout_and_failure() {
    let mut p = ready();
    let (cookie, state, _) = start_login(&mut p, "/");
    let (s, call) = callback(&mut p, &cookie, &state);
    assert_eq!(call.upstream, "idp");
    assert_eq!(call.timeout_ms, 3000);
    assert_eq!(call.header(":method").as_deref(), Some("POST"));
    let body = String::from_utf8_lossy(&call.body).to_string();
    assert!(body.contains("grant_type=authorization_code"), "{body}");
    assert!(body.contains("code=c0de"));
    assert!(body.contains("code_verifier="));
    assert!(call.header("authorization").unwrap().starts_with("Basic "));
    p.advance(Duration::from_millis(3000));
    p.fail_http_call(call.token).unwrap();
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 504);
    assert!(r.body_text().contains("token_exchange_timeout"));

    let (cookie, state, _) = start_login(&mut p, "/");
    let (s, call) = callback(&mut p, &cookie, &state);
    p.respond_http_call(call.token, 400, &[], br#"{"error":"invalid_grant"}"#)
        .unwrap();
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 502);
    assert!(r.body_text().contains("token_exchange_failed"));
    assert!(r
        .headers_named("set-cookie")
        .iter()
        .any(|c| c.contains("Max-Age=0")));
}

#[test]
fn documents_are_shared_between_workers() {
    let a = ready();
    let mut b = start_with(a.shared());
    b.tick().unwrap();
    assert!(
        b.pending_calls().is_empty(),
        "the second worker uses the published documents: {:?}",
        b.http_calls()
    );
    start_login(&mut b, "/from-b");
}

/// Header values need not be UTF-8 (Envoy passes obs-text through). Reading
/// them must never trap the VM: a trap would take every later request on
/// the worker down with it.
#[test]
fn non_utf8_header_values_never_trap() {
    let mut p = ready();
    let raw = |extra: &[(&str, &[u8])], host: &str| {
        let mut h: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), b"/".to_vec()),
            (":authority".into(), host.as_bytes().to_vec()),
            (":scheme".into(), b"https".to_vec()),
            ("accept".into(), b"text/html".to_vec()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_vec())));
        h
    };
    // Passthrough: a spoofed identity header with a non-UTF-8 value is still removed.
    let s = p.new_stream().unwrap();
    let a = p
        .request_headers_raw(
            s,
            raw(
                &[
                    ("x-forwarded-user", b"m\xffllory"),
                    ("user-agent", b"\xe9\xff"),
                ],
                "open.localhost",
            ),
            true,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(p.request_header(s, "x-forwarded-user"), None);
    // Sign-in app: a cookie that is not UTF-8 is no session; the browser is sent to sign in.
    let s = p.new_stream().unwrap();
    let a = p
        .request_headers_raw(
            s,
            raw(&[("cookie", b"__Host-portcullis=\xff\xfe")], "hr.localhost"),
            true,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    assert_eq!(p.local_response(s).unwrap().status, 302);
    // The VM is still alive for the next request.
    let (s, a) = request(&mut p, "hr.localhost", "/", &[BROWSER]);
    assert_eq!(a, Action::Pause);
    assert_eq!(p.local_response(s).unwrap().status, 302);
}
