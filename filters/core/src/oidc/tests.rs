//! Whole-flow tests of the preauth decisions.

use super::config::tests::KEY_B64;
use super::token::tests::{claims_at, key_set, keys, CLIENT, ISS, NOW};
use super::*;
use crate::app::RouteApp;
use jwt_simple::prelude::*;

fn config_json(extra: &str) -> String {
    format!(
        r#"{{"apps":[
        {{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"{CLIENT}",
          "client_secret":"s3cret","cluster":"idp","discovery":false,
          "authorization_endpoint":"{ISS}/auth","token_endpoint":"{ISS}/token",
          "jwks_uri":"{ISS}/jwks","end_session_endpoint":"{ISS}/logout",
          "sealing_keys":["{KEY_B64}"],"unauthenticated_paths":["/public/"]{extra}}},
        {{"id":"open","hosts":["open.localhost"],"mode":"passthrough"}}]}}"#
    )
}

fn config() -> PreauthConfig {
    PreauthConfig::from_json(config_json("").as_bytes()).unwrap()
}

fn metadata(c: &PreauthConfig) -> ProviderMetadata {
    match &c.apps[0].oidc.as_ref().unwrap().endpoints {
        config::Endpoints::Explicit(m) => (**m).clone(),
        config::Endpoints::Discover(_) => unreachable!(),
    }
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

/// A deterministic "random" source: different for every call in a test run.
fn counter() -> impl FnMut(&mut [u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(1);
    move |buf: &mut [u8]| {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((i % 8) * 8)) as u8 ^ (i as u8);
        }
    }
}

struct World {
    config: PreauthConfig,
    owned: Vec<String>,
    metadata: ProviderMetadata,
    keys: KeySet,
}

impl World {
    fn new() -> World {
        let config = config();
        World {
            owned: owned_headers(&config),
            metadata: metadata(&config),
            keys: key_set(),
            config,
        }
    }

    fn provider(&self) -> Provider<'_> {
        Provider {
            metadata: Some(&self.metadata),
            keys: Some(&self.keys),
        }
    }

    fn request(&self, host: &str, path: &str, headers: &[(String, String)]) -> Decision {
        self.routed(RouteApp::Absent, host, path, headers)
    }

    /// A request whose route names `route` (as `xds.route_metadata…app` would).
    fn routed(
        &self,
        route: RouteApp<'_>,
        host: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Decision {
        self.with_cache(
            route,
            host,
            path,
            headers,
            NOW,
            &mut session::SessionCache::default(),
        )
    }

    /// A request answered with the worker's session cache `cache` at `now`.
    fn with_cache(
        &self,
        route: RouteApp<'_>,
        host: &str,
        path: &str,
        headers: &[(String, String)],
        now: u64,
        cache: &mut session::SessionCache,
    ) -> Decision {
        let req = RequestView {
            method: "GET",
            path,
            host,
            headers,
            request_id: "req-1",
            route_app: route,
            client_address: Some("203.0.113.9:40000"),
        };
        on_request(
            &self.config,
            &self.owned,
            &req,
            self.provider(),
            now,
            &mut counter(),
            cache,
        )
    }
}

fn respond(d: Decision) -> Response {
    match d {
        Decision::Respond { response, .. } => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn set_cookies(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.clone())
        .collect()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::query_param(&url::query_params(&url[url.find('?').unwrap()..]), name)
}

/// Runs login → callback; returns the callback decision and the state cookie pair.
fn login_and_callback(w: &World, original: &str) -> (Decision, String, String) {
    let r = respond(w.request("hr.localhost", original, &h(&[HTML])));
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap().to_string();
    let state = param(&location, "state").unwrap();
    let state_cookie = cookie_pair(&set_cookies(&r)[0]);
    let path = format!(
        "/.auth/callback?code=c0de&state={}",
        url::percent_encode(&state)
    );
    let d = w.request(
        "hr.localhost",
        &path,
        &h(&[HTML, ("cookie", &state_cookie)]),
    );
    (d, state_cookie, param(&location, "nonce").unwrap())
}

fn id_token(nonce: &str) -> String {
    keys().rsa.sign(claims_at(NOW).with_nonce(nonce)).unwrap()
}

fn token_body(token: &str) -> Vec<u8> {
    format!(r#"{{"id_token":"{token}","access_token":"at","token_type":"Bearer"}}"#).into_bytes()
}

#[test]
fn whole_flow_sets_session_and_passes_identity() {
    let w = World::new();
    let (d, state_cookie, nonce) = login_and_callback(&w, "/reports?q=1");
    let Decision::ExchangeCode { call, pending } = d else {
        panic!("{d:?}")
    };
    assert_eq!(call.cluster, "idp");
    assert!(call
        .headers
        .contains(&(":path".to_string(), "/token".to_string())));
    let body = String::from_utf8(call.body.clone()).unwrap();
    assert!(body.contains("grant_type=authorization_code"));
    assert!(body.contains("code=c0de"));
    assert!(body.contains(&format!("code_verifier={}", pending.login.verifier)));
    assert!(body.contains("redirect_uri=https%3A%2F%2Fhr.localhost%2F.auth%2Fcallback"));
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| n == "authorization" && v.starts_with("Basic ")));

    let outcome = finish_login(
        &w.config,
        &pending,
        Some(200),
        &token_body(&id_token(&nonce)),
        Some(&w.keys),
        NOW,
        &mut counter(),
    );
    let LoginOutcome::Respond(r) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/reports?q=1"));
    let cookies = set_cookies(&r);
    assert!(cookies[0].starts_with("__Host-portcullis="));
    assert!(cookies[0].contains("; Secure; HttpOnly; SameSite=Lax"));
    assert!(!cookies[0].contains("Max-Age"));
    let state_name = state_cookie.split('=').next().unwrap();
    assert!(cookies[1].starts_with(&format!("{state_name}=;")));
    assert!(cookies[1].contains("Max-Age=0"));

    // The next request carries the session; spoofed identity headers go.
    let session = cookie_pair(&cookies[0]);
    let d = w.request(
        "hr.localhost",
        "/reports",
        &h(&[
            HTML,
            ("cookie", &session),
            ("X-Forwarded-User", "mallory"),
            ("x_forwarded_email", "m@evil"),
            ("X-Portcullis-Identity", "forged"),
        ]),
    );
    let Decision::Continue {
        remove,
        add,
        identity,
        app_id,
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        remove,
        vec![
            "X-Forwarded-User",
            "x_forwarded_email",
            "X-Portcullis-Identity"
        ]
    );
    assert!(add.contains(&("x-forwarded-user".into(), "alice-sub".into())));
    assert!(add.contains(&("x-forwarded-email".into(), "alice@example.com".into())));
    assert_eq!(identity.unwrap().sub, "alice-sub");
    assert_eq!(app_id.as_deref(), Some("hr"));

    // /.auth/me shows the identity.
    let r = respond(w.request("hr.localhost", "/.auth/me", &h(&[("cookie", &session)])));
    assert_eq!(r.status, 200);
    let me: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(me["sub"], "alice-sub");
    assert_eq!(me["exp"], NOW + 3600);
}

#[test]
fn navigation_redirects_and_api_calls_get_401_json() {
    let w = World::new();
    let r = respond(w.request("hr.localhost", "/x", &h(&[HTML])));
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(&format!("{ISS}/auth?")));
    assert_eq!(param(loc, "code_challenge_method").as_deref(), Some("S256"));
    let sc = &set_cookies(&r)[0];
    assert!(sc.starts_with("__Host-portcullis-login-"));
    assert!(sc.contains("Max-Age=600"));

    for headers in [
        h(&[("accept", "application/json")]),
        h(&[]),
        h(&[HTML, ("X-Requested-With", "XMLHttpRequest")]),
    ] {
        let r = respond(w.request("hr.localhost", "/api", &headers));
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "login_required");
        assert_eq!(v["request_id"], "req-1");
    }
}

#[test]
fn pending_sign_ins_are_bounded() {
    let w = World::new();
    let mut jar: Vec<String> = Vec::new();
    for _ in 0..login::MAX_PENDING_LOGINS {
        let cookies = jar.join("; ");
        let r = respond(w.request("hr.localhost", "/x", &h(&[HTML, ("cookie", &cookies)])));
        let sc = set_cookies(&r);
        assert_eq!(sc.len(), 1, "below the bound only the new cookie: {sc:?}");
        jar.push(cookie_pair(&sc[0]));
    }
    // The next sign-in sets its own cookie and clears every pending one, and
    // nothing else: not the session cookie, not the app's cookies, not a name
    // that only looks similar.
    let cookies = format!(
        "{}; __Host-portcullis=abc; __Host-portcullis-login-x=1; app=1",
        jar.join("; ")
    );
    let r = respond(w.request("hr.localhost", "/x", &h(&[HTML, ("cookie", &cookies)])));
    assert_eq!(r.status, 302);
    let sc = set_cookies(&r);
    assert_eq!(sc.len(), login::MAX_PENDING_LOGINS + 1, "{sc:?}");
    assert!(sc[0].contains("Max-Age=600"));
    let new_name = sc[0].split('=').next().unwrap();
    assert!(!jar.iter().any(|c| c.starts_with(&format!("{new_name}="))));
    for pending in &jar {
        let name = pending.split('=').next().unwrap();
        assert!(
            sc[1..]
                .iter()
                .any(|c| c.starts_with(&format!("{name}=")) && c.contains("Max-Age=0")),
            "{name} not cleared: {sc:?}"
        );
    }
    // The same cookie twice counts once.
    let twice = format!("{}; {}", jar[0], jar[0]);
    assert_eq!(
        login::pending_login_cookies(&h(&[("cookie", &twice)]), "__Host-portcullis").len(),
        1
    );
}

#[test]
fn original_url_is_kept_only_when_safe() {
    let w = World::new();
    let (d, _, _) = login_and_callback(&w, "/a/b?c=d");
    let Decision::ExchangeCode { pending, .. } = d else {
        panic!()
    };
    assert_eq!(pending.login.return_to, "/a/b?c=d");
    // A crafted /.auth/login?rd= is refused.
    for rd in [
        "//evil.com",
        "https://evil.com",
        "/%2F%2Fevil",
        "/\\evil",
        "/..//evil.com",
        "/%2e%2e//evil.com",
    ] {
        let path = format!("/.auth/login?rd={}", url::percent_encode(rd));
        let r = respond(w.request("hr.localhost", &path, &h(&[HTML])));
        assert_eq!(r.status, 400, "{rd}");
        assert!(String::from_utf8_lossy(&r.body).contains("redirect_invalid"));
    }
    // Also written raw in the query, as in the issue.
    let r = respond(w.request("hr.localhost", "/.auth/login?rd=/..//evil.com", &h(&[HTML])));
    assert_eq!(r.status, 400);
    let r = respond(w.request(
        "hr.localhost",
        "/.auth/login?rd=%2Fok%3Fx%3D1&acr=mfa&max_age=0",
        &h(&[HTML]),
    ));
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert_eq!(param(loc, "prompt").as_deref(), Some("login"));
    assert_eq!(param(loc, "acr_values").as_deref(), Some("mfa"));
}

#[test]
fn parallel_logins_do_not_clobber_each_other() {
    let w = World::new();
    let (d1, c1, _) = login_and_callback(&w, "/one");
    let (d2, c2, _) = login_and_callback(&w, "/two");
    assert_ne!(c1.split('=').next(), c2.split('=').next());
    let (Decision::ExchangeCode { pending: p1, .. }, Decision::ExchangeCode { pending: p2, .. }) =
        (d1, d2)
    else {
        panic!()
    };
    assert_eq!(p1.login.return_to, "/one");
    assert_eq!(p2.login.return_to, "/two");
}

#[test]
fn callback_state_checks() {
    let w = World::new();
    let r = respond(w.request("hr.localhost", "/x", &h(&[HTML])));
    let loc = r.header("location").unwrap().to_string();
    let state = param(&loc, "state").unwrap();
    let cookie = cookie_pair(&set_cookies(&r)[0]);
    let cb = |path: &str, cookies: &str| {
        let mut headers = h(&[HTML]);
        if !cookies.is_empty() {
            headers.push(("cookie".into(), cookies.into()));
        }
        respond(w.request("hr.localhost", path, &headers))
    };
    let code_of = |r: &Response| String::from_utf8_lossy(&r.body).to_string();

    // No state cookie at all.
    let r = cb(&format!("/.auth/callback?code=x&state={state}"), "");
    assert!(code_of(&r).contains("state_missing"));
    // No state parameter.
    let r = cb("/.auth/callback?code=x", &cookie);
    assert!(code_of(&r).contains("state_missing"));
    // Another state: its cookie name differs, so the cookie is missing.
    let r = cb("/.auth/callback?code=x&state=forged", &cookie);
    assert!(code_of(&r).contains("state_missing"));
    // The right cookie name with a tampered value.
    let name = cookie.split('=').next().unwrap();
    let r = cb(
        &format!("/.auth/callback?code=x&state={state}"),
        &format!("{name}=AAAA"),
    );
    assert_eq!(r.status, 400);
    assert!(code_of(&r).contains("state_mismatch"));
    // A state cookie sealed for another app does not open here.
    let mut other = config();
    other.apps[0].id = "payroll".into();
    let other_world = World {
        owned: owned_headers(&other),
        metadata: metadata(&other),
        keys: key_set(),
        config: other,
    };
    let r2 = respond(other_world.request("hr.localhost", "/x", &h(&[HTML])));
    let s2 = param(r2.header("location").unwrap(), "state").unwrap();
    let c2 = cookie_pair(&set_cookies(&r2)[0]);
    let r = cb(&format!("/.auth/callback?code=x&state={s2}"), &c2);
    assert!(code_of(&r).contains("state_mismatch"));
    // The provider's error is named.
    let r = cb(
        &format!("/.auth/callback?error=access_denied&state={state}"),
        &cookie,
    );
    assert_eq!(r.status, 401);
    assert!(code_of(&r).contains("idp_error:access_denied"));
    assert!(set_cookies(&r)[0].contains("Max-Age=0"));
}

#[test]
fn expired_login_state_is_refused() {
    let w = World::new();
    let r = respond(w.request("hr.localhost", "/x", &h(&[HTML])));
    let state = param(r.header("location").unwrap(), "state").unwrap();
    let cookie = cookie_pair(&set_cookies(&r)[0]);
    let headers = h(&[HTML, ("cookie", &cookie)]);
    let path = format!("/.auth/callback?code=x&state={state}");
    let req = RequestView {
        method: "GET",
        path: &path,
        host: "hr.localhost",
        headers: &headers,
        request_id: "r",
        route_app: RouteApp::Absent,
        client_address: None,
    };
    let d = on_request(
        &w.config,
        &w.owned,
        &req,
        w.provider(),
        NOW + 601,
        &mut counter(),
        &mut session::SessionCache::default(),
    );
    assert!(String::from_utf8_lossy(&respond(d).body).contains("state_missing"));
}

#[test]
fn token_exchange_failures_and_token_checks_deny() {
    let w = World::new();
    let (d, _, nonce) = login_and_callback(&w, "/x");
    let Decision::ExchangeCode { pending, .. } = d else {
        panic!()
    };
    let finish = |status: Option<u16>, body: &[u8], keys: Option<&KeySet>| {
        finish_login(&w.config, &pending, status, body, keys, NOW, &mut counter())
    };
    let denied = |o: LoginOutcome, code: &str| match o {
        LoginOutcome::Respond(r) => {
            assert!(String::from_utf8_lossy(&r.body).contains(code), "{code}");
            r.status
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        denied(
            finish(Some(400), br#"{"error":"invalid_grant"}"#, Some(&w.keys)),
            "token_exchange_failed"
        ),
        502
    );
    denied(finish(None, b"", Some(&w.keys)), "token_exchange_failed");
    denied(
        finish(Some(200), b"{}", Some(&w.keys)),
        "token_exchange_failed",
    );
    denied(
        finish(Some(200), &token_body(&id_token("wrong")), Some(&w.keys)),
        "nonce_mismatch",
    );
    let expired = keys()
        .rsa
        .sign(claims_at(NOW - 4000).with_nonce(&nonce))
        .unwrap();
    denied(
        finish(Some(200), &token_body(&expired), Some(&w.keys)),
        "token_expired",
    );
    // Unknown kid: the glue is asked to refetch the keys.
    let rotated = keys()
        .rsa
        .clone()
        .with_key_id("new")
        .sign(claims_at(NOW).with_nonce(&nonce))
        .unwrap();
    assert_eq!(
        finish(Some(200), &token_body(&rotated), Some(&w.keys)),
        LoginOutcome::UnknownKey(Some("new".into()))
    );
    assert_eq!(
        finish(Some(200), &token_body(&id_token(&nonce)), None),
        LoginOutcome::UnknownKey(None)
    );
    let r = finish_login_denial(&w.config, &pending, Denial::TokenExchangeTimeout);
    assert!(set_cookies(&r)[0].contains("Max-Age=0"));
    assert_eq!(r.status, 504);
    assert!(String::from_utf8_lossy(&r.body).contains("token_exchange_timeout"));
}

#[test]
fn bad_cookies_are_one_code_and_expiry_is_its_own() {
    let w = World::new();
    let s = w.config.apps[0].oidc.as_ref().unwrap();
    let json = h(&[("accept", "application/json")]);
    let with_cookie = |v: &str| {
        let mut hs = json.clone();
        hs.push(("cookie".into(), format!("__Host-portcullis={v}")));
        hs
    };
    let id = Identity {
        sub: "a".into(),
        iat: NOW - 100,
        exp: NOW - 1,
        ..Identity::default()
    };
    let expired = session::seal_session("hr", s, &id, [4; crate::seal::SEAL_RANDOM_LEN]).unwrap();
    let r = respond(w.request("hr.localhost", "/api", &with_cookie(&expired)));
    assert!(String::from_utf8_lossy(&r.body).contains("session_expired"));
    let mut bodies = Vec::new();
    for bad in ["garbage", &expired[..expired.len() - 2], "AQ"] {
        let r = respond(w.request("hr.localhost", "/api", &with_cookie(bad)));
        assert_eq!(r.status, 401);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "cookie_invalid");
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|b| b[0] == b[1]), "no oracle");
    // A browser navigation with a bad cookie is sent to sign in again.
    let nav = h(&[HTML, ("cookie", "__Host-portcullis=garbage")]);
    assert_eq!(respond(w.request("hr.localhost", "/", &nav)).status, 302);
}

#[test]
fn passthrough_and_unauthenticated_paths_strip_headers() {
    let w = World::new();
    let spoof = h(&[
        ("X-FORWARDED-USER", "mallory"),
        ("x-portcullis-anything", "1"),
    ]);
    for (host, path) in [("open.localhost", "/x"), ("hr.localhost", "/public/a")] {
        match w.request(host, path, &spoof) {
            Decision::Continue {
                remove, identity, ..
            } => {
                assert_eq!(remove, vec!["X-FORWARDED-USER", "x-portcullis-anything"]);
                assert!(identity.is_none());
            }
            other => panic!("{other:?}"),
        }
    }
    // Matched on Envoy's normal form only: a path Envoy did not normalise is
    // refused, what Envoy makes of it is judged.
    for raw in ["/public/../private", "/x/..//public/%61"] {
        let r = respond(w.request("hr.localhost", raw, &h(&[HTML])));
        assert_eq!(r.status, 400, "{raw}");
        assert!(String::from_utf8_lossy(&r.body).contains("ambiguous_path"));
        let seen = crate::path::normalize(raw).unwrap();
        let opened = matches!(
            w.request("hr.localhost", &seen, &h(&[HTML])),
            Decision::Continue { .. }
        );
        assert_eq!(opened, seen.starts_with("/public/"), "{raw} -> {seen}");
    }
    // Unknown hosts are refused.
    assert_eq!(
        respond(w.request("evil.localhost", "/", &h(&[HTML]))).status,
        404
    );
}

#[test]
fn logout_and_me_without_session() {
    let w = World::new();
    let r = respond(w.request("hr.localhost", "/.auth/logout", &h(&[HTML])));
    assert_eq!(r.status, 302);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{ISS}/logout?client_id=")));
    assert!(set_cookies(&r)[0].starts_with("__Host-portcullis=;"));
    let r = respond(w.request("hr.localhost", "/.auth/me", &h(&[HTML])));
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        respond(w.request("hr.localhost", "/.auth/other", &h(&[HTML]))).status,
        404
    );
}

#[test]
fn waits_for_provider_state() {
    let w = World::new();
    let headers = h(&[HTML]);
    let req = RequestView {
        method: "GET",
        path: "/x",
        host: "hr.localhost",
        headers: &headers,
        request_id: "r",
        route_app: RouteApp::Absent,
        client_address: None,
    };
    let d = on_request(
        &w.config,
        &w.owned,
        &req,
        Provider::default(),
        NOW,
        &mut counter(),
        &mut session::SessionCache::default(),
    );
    assert_eq!(d, Decision::Wait(Needs::Metadata));
}

#[test]
fn bearer_tokens_for_api_clients() {
    let config =
        PreauthConfig::from_json(config_json(r#","bearer":{"audience":"api://hr"}"#).as_bytes())
            .unwrap();
    let w = World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    };
    let mut c = claims_at(NOW).with_audience("api://hr");
    c.nonce = None;
    let token = keys().es.sign(c).unwrap();
    let auth = format!("Bearer {token}");
    match w.request("hr.localhost", "/api", &h(&[("authorization", &auth)])) {
        Decision::Continue { identity, .. } => assert_eq!(identity.unwrap().sub, "alice-sub"),
        other => panic!("{other:?}"),
    }
    // Wrong audience (an ID token for the web client).
    let token = keys().es.sign(claims_at(NOW)).unwrap();
    let auth = format!("Bearer {token}");
    let r = respond(w.request("hr.localhost", "/api", &h(&[("authorization", &auth)])));
    assert!(String::from_utf8_lossy(&r.body).contains("audience_mismatch"));
    // Unknown kid asks for a refetch.
    let token = ES256KeyPair::from_bytes(&keys().es.to_bytes())
        .unwrap()
        .with_key_id("nope")
        .sign(claims_at(NOW).with_audience("api://hr"))
        .unwrap();
    let auth = format!("Bearer {token}");
    match w.request("hr.localhost", "/api", &h(&[("authorization", &auth)])) {
        Decision::Respond { refetch_keys, .. } => assert!(refetch_keys),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotation_keeps_sessions_valid() {
    let w = World::new();
    let s = w.config.apps[0].oidc.as_ref().unwrap();
    let id = Identity {
        sub: "a".into(),
        iat: NOW,
        exp: NOW + 60,
        ..Identity::default()
    };
    let old = session::seal_session("hr", s, &id, [4; crate::seal::SEAL_RANDOM_LEN]).unwrap();
    let new_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    let rotated_json = config_json("").replace(
        &format!(r#"["{KEY_B64}"]"#),
        &format!(r#"["{new_key}","{KEY_B64}"]"#),
    );
    let rotated = PreauthConfig::from_json(rotated_json.as_bytes()).unwrap();
    let rs = rotated.apps[0].oidc.as_ref().unwrap();
    assert_eq!(
        session::open_session(&rs.sealer, &rs.cookie.name, "hr", &old, NOW).unwrap(),
        id
    );
}

#[test]
fn logout_sends_the_post_logout_redirect_uri() {
    let config =
        PreauthConfig::from_json(config_json(r#","post_logout_redirect_uri":"/bye""#).as_bytes())
            .unwrap();
    let w = World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    };
    let r = respond(w.request("hr.localhost:10443", "/.auth/logout", &h(&[HTML])));
    let loc = r.header("location").unwrap();
    assert_eq!(
        param(loc, "post_logout_redirect_uri").as_deref(),
        Some("https://hr.localhost:10443/bye")
    );
    assert_eq!(param(loc, "client_id").as_deref(), Some(CLIENT));
}

#[test]
fn other_hosts_can_pass_with_headers_stripped() {
    let json = config_json("").replacen(r#"{"apps":["#, r#"{"other_hosts":"pass","apps":["#, 1);
    let config = PreauthConfig::from_json(json.as_bytes()).unwrap();
    let w = World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    };
    match w.request("health.internal", "/", &h(&[("x-forwarded-user", "x")])) {
        Decision::Continue {
            remove, identity, ..
        } => {
            assert_eq!(remove, vec!["x-forwarded-user"]);
            assert!(identity.is_none());
        }
        other => panic!("{other:?}"),
    }
    let bad = config_json("").replacen(r#"{"apps":["#, r#"{"other_hosts":"allow","apps":["#, 1);
    assert_eq!(
        PreauthConfig::from_json(bad.as_bytes()).unwrap_err().field,
        "other_hosts"
    );
}

/// The unauthenticated prefix `/public/` opens nothing else, whatever the
/// spelling (as Envoy hands it over): each is refused (`ambiguous_path`) or
/// sent to sign in; none goes on without a session.
#[test]
fn an_unauthenticated_prefix_opens_no_other_path() {
    let w = World::new();
    for raw in [
        "/PUBLIC/../admin",
        "/public/../admin",
        "/public;/../admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public%2f..%2fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
        "/public/.%2e/admin",
        "/public/%252e%252e/admin",
        "/public/x/..%20/..%20/admin",
        "/public/...",
        "/;/public/x",
        "/PUBLIC/x",
        "/Public/x",
        "/public;x/y",
        "/public%3b/x",
        "/public./x",
        "/public%20/x",
        "/publicity",
    ] {
        let seen = crate::path::normalize(raw).unwrap();
        match w.request("hr.localhost", &seen, &h(&[HTML])) {
            Decision::Continue { .. } => panic!("{raw:?} -> {seen} opened without a session"),
            Decision::Respond { response, .. } => {
                let body = String::from_utf8_lossy(&response.body).into_owned();
                assert!(
                    response.status == 302 && response.header("location").is_some()
                        || response.status == 400 && body.contains("ambiguous_path"),
                    "{raw:?} -> {seen}: {} {body}",
                    response.status
                );
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }
    for open in [
        "/public/",
        "/public/x",
        "/public/x;jsessionid=1",
        "/public/X",
    ] {
        assert!(
            matches!(
                w.request("hr.localhost", open, &h(&[HTML])),
                Decision::Continue { .. }
            ),
            "{open}"
        );
    }
}

#[test]
fn ambiguous_paths_are_refused_with_the_code_and_request_id() {
    let w = World::new();
    for raw in [
        "/admin%2f",
        "/x/..%2fadmin",
        "/%2561dmin",
        "/admin.",
        "/admin%09",
    ] {
        let r = respond(w.request("hr.localhost", raw, &h(&[HTML])));
        assert_eq!(r.status, 400, "{raw}");
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("ambiguous_path") && body.contains("req-1"),
            "{body}"
        );
        let r = respond(w.request("hr.localhost", raw, &h(&[("accept", "application/json")])));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "ambiguous_path");
    }
    // Passthrough apps are not judged by preauth.
    assert!(matches!(
        w.request("open.localhost", "/admin%2f", &h(&[HTML])),
        Decision::Continue { .. }
    ));
}

#[test]
fn reserved_paths_are_matched_under_the_rule() {
    let w = World::new();
    // Every spelling of /.auth/me is the filter's own page: never the app's.
    for raw in ["/.auth/me", "/.AUTH/ME", "/.auth/me;x", "/.Auth/Me/"] {
        let r = respond(w.request("hr.localhost", raw, &h(&[HTML])));
        assert!(r.status == 401 || r.status == 404, "{raw}: {}", r.status);
    }
    let r = respond(w.request("hr.localhost", "/.AUTH/LOGIN?rd=/x", &h(&[HTML])));
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with(ISS));
    let r = respond(w.request("hr.localhost", "/.Auth/anything", &h(&[HTML])));
    assert_eq!(r.status, 404);
}

#[test]
fn an_app_loosens_its_path_rule_by_name() {
    let c = PreauthConfig::from_json(
        config_json(r#","path_rules":{"case_sensitive":true,"allow_encoded_slash":true}"#)
            .as_bytes(),
    )
    .unwrap();
    let w = World {
        owned: owned_headers(&c),
        metadata: metadata(&c),
        keys: key_set(),
        config: c,
    };
    // An encoded slash is accepted, and stays inside its segment.
    assert_eq!(
        respond(w.request("hr.localhost", "/public%2fx", &h(&[HTML]))).status,
        302
    );
    assert!(matches!(
        w.request("hr.localhost", "/public/a%2fb", &h(&[HTML])),
        Decision::Continue { .. }
    ));
    // Case-sensitive: /.AUTH/me is an app path (sign-in first), /PUBLIC/ is not public.
    assert_eq!(
        respond(w.request("hr.localhost", "/PUBLIC/x", &h(&[HTML]))).status,
        302
    );
    let r = respond(w.request("hr.localhost", "/.AUTH/me", &h(&[HTML])));
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with(ISS));
    // The rest of the rule is still strict.
    assert_eq!(
        respond(w.request("hr.localhost", "/x%3b", &h(&[HTML]))).status,
        400
    );
}

/// Signs in through the whole flow; returns the world and the session cookie pair.
fn signed_in(w: &World) -> String {
    let (d, _, nonce) = login_and_callback(w, "/");
    let Decision::ExchangeCode { pending, .. } = d else {
        panic!("{d:?}")
    };
    let LoginOutcome::Respond(r) = finish_login(
        &w.config,
        &pending,
        Some(200),
        &token_body(&id_token(&nonce)),
        Some(&w.keys),
        NOW,
        &mut counter(),
    ) else {
        panic!("login")
    };
    cookie_pair(&set_cookies(&r)[0])
}

fn assertion_of(add: &[(String, String)]) -> Option<&str> {
    add.iter()
        .find(|(n, _)| n == crate::assertion::ASSERTION_HEADER)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_valid_session_carries_a_verifiable_assertion_and_client_copies_go() {
    use crate::assertion::{verify, Expected, PublicKeySet};
    let w = World::new();
    let session = signed_in(&w);
    let d = w.request(
        "hr.localhost",
        "/reports",
        &h(&[
            HTML,
            ("cookie", &session),
            ("X-Portcullis-Jwt-Assertion", "forged.by.client"),
        ]),
    );
    let Decision::Continue { remove, add, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(remove, vec!["X-Portcullis-Jwt-Assertion"]);
    let token = assertion_of(&add).expect("assertion header");
    assert_ne!(token, "forged.by.client");
    // The published JWKS verifies it, for this app's issuer and audience.
    let jwks = respond(w.request("hr.localhost", "/.auth/jwks", &[]));
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.header("cache-control"), Some("public, max-age=300"));
    let keys = PublicKeySet::from_jwks(&jwks.body).unwrap();
    let claims = verify(
        token,
        &keys,
        &Expected {
            issuer: "https://hr.localhost",
            audience: "hr",
            skew_secs: 0,
            now: NOW,
        },
    )
    .unwrap();
    assert_eq!(claims.sub, "alice-sub");
    assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
    assert_eq!(claims.exp, NOW + 300);
    // No assertion without a session: unauthenticated paths and passthrough apps.
    for (host, path) in [("hr.localhost", "/public/a"), ("open.localhost", "/x")] {
        match w.request(host, path, &h(&[("x-portcullis-jwt-assertion", "x")])) {
            Decision::Continue { add, remove, .. } => {
                assert!(assertion_of(&add).is_none());
                assert_eq!(remove, vec!["x-portcullis-jwt-assertion"]);
            }
            other => panic!("{other:?}"),
        }
    }
    // Passthrough apps have no JWKS of their own.
    assert!(matches!(
        w.request("open.localhost", "/.auth/jwks", &[]),
        Decision::Continue { .. }
    ));
}

#[test]
fn bearer_requests_carry_an_assertion_too() {
    let config =
        PreauthConfig::from_json(config_json(r#","bearer":{"audience":"api://hr"}"#).as_bytes())
            .unwrap();
    let w = World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    };
    let mut c = claims_at(NOW).with_audience("api://hr");
    c.nonce = None;
    let auth = format!("Bearer {}", keys().es.sign(c).unwrap());
    match w.request("hr.localhost", "/api", &h(&[("authorization", &auth)])) {
        Decision::Continue { add, .. } => assert!(assertion_of(&add).is_some()),
        other => panic!("{other:?}"),
    }
}

/// A bearer token validated once is answered from the worker's cache with its
/// assertion (one signature per token and worker, as for session cookies);
/// a token differing in any byte is checked in full and refused, an expired
/// one is refused, and a cookie whose value is the token is no session.
#[test]
fn bearer_tokens_are_validated_and_signed_once_per_worker() {
    let config =
        PreauthConfig::from_json(config_json(r#","bearer":{"audience":"api://hr"}"#).as_bytes())
            .unwrap();
    let w = World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    };
    let mut c = claims_at(NOW).with_audience("api://hr");
    c.nonce = None;
    let token = keys().es.sign(c).unwrap();
    let auth = format!("Bearer {token}");
    let cache = &mut session::SessionCache::default();
    let mut seen = vec![];
    for _ in 0..3 {
        match w.with_cache(
            RouteApp::Absent,
            "hr.localhost",
            "/api",
            &h(&[("authorization", &auth)]),
            NOW,
            cache,
        ) {
            Decision::Continue { add, .. } => seen.push(assertion_of(&add).unwrap().to_string()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(cache.signatures(), 1);
    assert_eq!(cache.hits(), 2);
    assert!(seen.iter().all(|a| *a == seen[0]));
    // One byte of the signature changed: validated in full, refused, not kept.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = format!("Bearer {}", String::from_utf8(forged).unwrap());
    let r = respond(w.with_cache(
        RouteApp::Absent,
        "hr.localhost",
        "/api",
        &h(&[("authorization", &forged)]),
        NOW,
        cache,
    ));
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(cache.len(), 1);
    // The token as a session cookie value is not a session.
    let cookie = format!(
        "{}={token}",
        w.config.apps[0].oidc.as_ref().unwrap().cookie.name
    );
    let r = respond(w.with_cache(
        RouteApp::Absent,
        "hr.localhost",
        "/api",
        &h(&[("cookie", &cookie)]),
        NOW,
        cache,
    ));
    assert_eq!(r.status, 401, "{r:?}");
    // Past its expiry the cached token is refused like any other.
    let later = NOW + 7 * 24 * 3600;
    let r = respond(w.with_cache(
        RouteApp::Absent,
        "hr.localhost",
        "/api",
        &h(&[("authorization", &auth)]),
        later,
        cache,
    ));
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(cache.hits(), 2);
}

#[test]
fn assertion_configuration() {
    let with = |extra: &str| PreauthConfig::from_json(config_json(extra).as_bytes());
    let signer = |c: &PreauthConfig| c.apps[0].oidc.as_ref().unwrap().assertion.clone();
    let default = signer(&with("").unwrap());
    assert_eq!(default.issuer(), "https://hr.localhost");
    assert_eq!(default.audience(), "hr");
    assert_eq!(default.keys().len(), 1);
    // Derived from the sealing key: the same on every replica, no new secret.
    assert_eq!(
        signer(&with("").unwrap()).keys()[0].kid(),
        default.keys()[0].kid()
    );
    // A second sealing key (rotation) publishes a second assertion key; the first signs.
    let rotated = config_json("").replace(
        &format!(r#"["{KEY_B64}"]"#),
        &format!(r#"["AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","{KEY_B64}"]"#),
    );
    let rotated = signer(&PreauthConfig::from_json(rotated.as_bytes()).unwrap());
    assert_eq!(rotated.keys().len(), 2);
    assert_eq!(rotated.keys()[1].kid(), default.keys()[0].kid());
    assert_ne!(rotated.keys()[0].kid(), default.keys()[0].kid());
    // Explicit issuer, lifetime and keys.
    let explicit = signer(
        &with(
            r#","assertion":{"issuer":"https://hr.example.com:8443","lifetime_seconds":120,
            "signing_keys":["AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="]}"#,
        )
        .unwrap(),
    );
    assert_eq!(explicit.issuer(), "https://hr.example.com:8443");
    assert_eq!(explicit.lifetime_secs(), 120);
    assert_ne!(explicit.keys()[0].kid(), default.keys()[0].kid());
    assert!(!format!("{explicit:?}").contains("AwMDAwMD"));
    // Bad values are named.
    for (extra, field) in [
        (
            r#","assertion":{"issuer":"https://x/path"}"#,
            "apps[0].assertion.issuer",
        ),
        (r#","assertion":{"issuer":"x"}"#, "apps[0].assertion.issuer"),
        (
            r#","assertion":{"lifetime_seconds":5}"#,
            "apps[0].assertion.lifetime_seconds",
        ),
        (
            r#","assertion":{"lifetime_seconds":7200}"#,
            "apps[0].assertion.lifetime_seconds",
        ),
        (
            r#","assertion":{"signing_keys":["AAAA"]}"#,
            "apps[0].assertion.signing_keys[0]",
        ),
        (
            &format!(r#","assertion":{{"signing_keys":["{KEY_B64}"]}}"#),
            "apps[0].assertion.signing_keys[0]",
        ),
        (r#","assertion":{"kid":"x"}"#, "apps[0].assertion.kid"),
    ] {
        assert_eq!(with(extra).unwrap_err().field, field, "{extra}");
    }
    // Only wildcard hosts: the issuer must be given.
    let wild = config_json("").replace(r#"["hr.localhost"]"#, r#"["*.hr.localhost"]"#);
    assert_eq!(
        PreauthConfig::from_json(wild.as_bytes()).unwrap_err().field,
        "apps[0].assertion.issuer"
    );
}

/// Two signed-in apps with the same sealing key and cookie name, as in the demo.
fn two_apps() -> World {
    let admin = format!(
        r#"{{"id":"admin","hosts":["admin.localhost"],"issuer":"{ISS}","client_id":"{CLIENT}",
          "client_secret":"s3cret","cluster":"idp","discovery":false,
          "authorization_endpoint":"{ISS}/auth","token_endpoint":"{ISS}/token",
          "jwks_uri":"{ISS}/jwks","sealing_keys":["{KEY_B64}"]}},"#
    );
    let json = config_json("").replacen(r#"{"apps":["#, &format!(r#"{{"apps":[{admin}"#), 1);
    let config = PreauthConfig::from_json(json.as_bytes()).unwrap();
    World {
        owned: owned_headers(&config),
        metadata: metadata(&config),
        keys: key_set(),
        config,
    }
}

fn session_of(w: &World, app: &str) -> String {
    let i = w.config.app_by_id(app).unwrap();
    let s = w.config.apps[i].oidc.as_ref().unwrap();
    let id = Identity {
        sub: format!("{app}-user"),
        iat: NOW,
        exp: NOW + 600,
        ..Identity::default()
    };
    format!(
        "__Host-portcullis={}",
        session::seal_session(app, s, &id, [7; crate::seal::SEAL_RANDOM_LEN]).unwrap()
    )
}

#[test]
fn the_route_chooses_the_app_and_a_session_only_opens_at_its_own_app() {
    let w = two_apps();
    let admin = h(&[
        ("accept", "application/json"),
        ("cookie", &session_of(&w, "admin")),
    ]);
    // The issue's spellings: Envoy routed them to the default virtual host,
    // whose route names `hr`. The admin session is judged as a session of
    // `hr`, where it does not open.
    for host in [
        "admin.localhost.",
        "admin.localhost.:10000",
        "admin.localhost..:10000",
        "ADMIN.localhost.",
    ] {
        let r = respond(w.routed(RouteApp::Named("hr"), host, "/headers", &admin));
        assert_eq!(r.status, 401, "{host}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("cookie_invalid"),
            "{host}"
        );
        // Without route metadata the Host decides, exactly: no app.
        let r = respond(w.request(host, "/headers", &admin));
        assert_eq!(r.status, 404, "{host}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("unknown_host"),
            "{host}"
        );
    }
    // Routed to admin, the admin session opens, whatever the Host says.
    for host in ["admin.localhost", "hr.localhost", "evil.example"] {
        match w.routed(RouteApp::Named("admin"), host, "/x", &admin) {
            Decision::Continue {
                identity, app_id, ..
            } => {
                assert_eq!(identity.unwrap().sub, "admin-user");
                assert_eq!(app_id.as_deref(), Some("admin"));
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    // The passthrough app's route never carries an identity on.
    match w.routed(RouteApp::Named("open"), "admin.localhost", "/x", &admin) {
        Decision::Continue {
            identity, app_id, ..
        } => {
            assert!(identity.is_none());
            assert_eq!(app_id.as_deref(), Some("open"));
        }
        other => panic!("{other:?}"),
    }
    // A route naming an app preauth does not know is refused, not passed.
    for route in [RouteApp::Named("admn"), RouteApp::Invalid] {
        let r = respond(w.routed(route, "admin.localhost", "/x", &admin));
        assert_eq!(r.status, 500);
        assert!(String::from_utf8_lossy(&r.body).contains("route_app_unknown"));
    }
}

#[test]
fn forwarded_headers_are_what_envoy_saw() {
    let w = World::new();
    let spoof = h(&[
        ("X-Forwarded-Host", "evil.example"),
        ("x-real-ip", "1.2.3.4"),
        ("Forwarded", "for=1.2.3.4;host=evil.example"),
        ("X-Forwarded-Port", "1"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Original-URL", "/admin"),
        ("x_rewrite_url", "/admin"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
    ]);
    for (host, path) in [("open.localhost", "/x"), ("hr.localhost", "/public/a")] {
        let Decision::Continue { remove, add, .. } = w.request(host, path, &spoof) else {
            panic!("{host}")
        };
        assert_eq!(
            remove,
            vec![
                "X-Forwarded-Host",
                "x-real-ip",
                "Forwarded",
                "X-Forwarded-Port",
                "X-Forwarded-Prefix",
                "X-Original-URL",
                "x_rewrite_url",
                "X-HTTP-Method-Override",
            ],
            "{host}: Envoy maintains X-Forwarded-For and -Proto itself"
        );
        assert_eq!(
            add,
            vec![
                ("x-forwarded-host".to_string(), host.to_string()),
                ("x-real-ip".to_string(), "203.0.113.9".to_string()),
            ]
        );
    }
}
