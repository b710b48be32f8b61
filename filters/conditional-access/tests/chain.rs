//! The preauth → conditional-access chain on the two release modules: the
//! identity the preauth filter hands over (from a real sealed session cookie)
//! is what the conditional-access filter judges.
//!
//! Build both modules first:
//! `cargo build --release --target wasm32-wasip1 -p portcullis-preauth -p portcullis-conditional-access`
//! (set `PORTCULLIS_WASM_DIR` when using another target directory).
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::identity::Identity;
use portcullis_core::oidc::config::PreauthConfig;
use portcullis_core::oidc::session::seal_session;
use portcullis_host_tests::{Action, Filter, FilterState, Plugin};

const ISS: &str = "https://idp.test";
const NOW: u64 = 1_800_000_000;
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn preauth_config() -> String {
    format!(
        r#"{{"apps":[{{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"portcullis",
          "client_secret":"s3cret","cluster":"idp","sealing_keys":["{KEY}"],"policy_groups":["staff"]}}]}}"#
    )
}

const POLICIES: &str = r#"{
  "mfa": {"step_up_acr": "urn:portcullis:mfa"},
  "apps": {"hr": {"groups": ["staff"]}},
  "policies": [{"name": "admin-mfa", "apps": ["hr"], "conditions": {"paths": ["/admin"]}, "grant": {"mfa": true}}]
}"#;

fn session_cookie(sub: &str, groups: &[&str], amr: &[&str]) -> String {
    let config = PreauthConfig::from_json(preauth_config().as_bytes()).unwrap();
    let app = &config.apps[0];
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

/// Serves discovery and JWKS to the preauth plugin so it is ready.
fn preauth() -> Plugin {
    let mut p = Plugin::builder(Filter::Preauth)
        .config(preauth_config())
        .cluster("idp")
        .now_secs(NOW)
        .start()
        .unwrap();
    assert!(p.configured(), "{:?}", p.log_messages());
    for _ in 0..3 {
        p.tick().unwrap();
        for call in p.pending_calls() {
            let body = match call.header(":path").as_deref() {
                Some("/.well-known/openid-configuration") => format!(
                    r#"{{"issuer":"{ISS}","authorization_endpoint":"{ISS}/auth","token_endpoint":"{ISS}/token","jwks_uri":"{ISS}/jwks"}}"#
                ),
                _ => r#"{"keys":[]}"#.to_string(),
            };
            p.respond_http_call(call.token, 200, &[], body.as_bytes())
                .unwrap();
        }
    }
    p
}

fn conditional_access() -> Plugin {
    let p = Plugin::builder(Filter::ConditionalAccess)
        .config(POLICIES)
        .now_secs(NOW)
        .start()
        .unwrap();
    assert!(p.configured(), "{:?}", p.log_messages());
    p
}

/// Runs one request through both filters; returns the second filter's stream and action.
fn through(pre: &mut Plugin, ca: &mut Plugin, path: &str, cookie: &str) -> (u32, Action) {
    let fs = FilterState::default();
    let headers = [
        (":method", "GET"),
        (":path", path),
        (":authority", "hr.localhost"),
        (":scheme", "https"),
        ("accept", "text/html"),
        ("cookie", cookie),
        ("x-request-id", "chain-1"),
    ];
    let s = pre.new_stream_with(fs.clone()).unwrap();
    assert_eq!(
        pre.request_headers(s, &headers, true).unwrap(),
        Action::Continue,
        "preauth must let a valid session through: {:?}",
        pre.local_response(s)
    );
    assert!(
        fs.get("portcullis_identity").is_some(),
        "preauth hands the identity over"
    );
    let s2 = ca.new_stream_with(fs).unwrap();
    let action = ca.request_headers(s2, &headers, true).unwrap();
    (s2, action)
}

#[test]
fn the_handed_over_identity_is_judged() {
    let (mut pre, mut ca) = (preauth(), conditional_access());
    let pwd = session_cookie("alice", &["staff", "other"], &["pwd"]);
    assert_eq!(through(&mut pre, &mut ca, "/", &pwd).1, Action::Continue);

    let (s, action) = through(&mut pre, &mut ca, "/admin", &pwd);
    assert_eq!(action, Action::Pause);
    let r = ca.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/.auth/login?rd=%2Fadmin&acr=urn%3Aportcullis%3Amfa")
    );

    let mfa = session_cookie("alice", &["staff"], &["pwd", "mfa"]);
    assert_eq!(
        through(&mut pre, &mut ca, "/admin", &mfa).1,
        Action::Continue
    );

    let outsider = session_cookie("mallory", &["guests"], &["pwd", "mfa"]);
    let (s, action) = through(&mut pre, &mut ca, "/", &outsider);
    assert_eq!(action, Action::Pause);
    let r = ca.local_response(s).unwrap();
    assert_eq!(r.status, 403);
    assert!(r.body_text().contains("not_assigned"));
}
