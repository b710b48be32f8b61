//! The permanent JWT attack table (issue 14, point 4), against the filters'
//! two token validators: ID tokens at the end of a sign-in
//! (`oidc::finish_login` → `token::validate_token` with nonce and azp), and
//! bearer tokens on the request path (`oidc::on_request`, as a client sends
//! them). Each row names the attack and the refusal code the client sees.
//! The rows are in `jwt_attacks/rows.rs`, shared with the edge's admin-token
//! table (`connector/tests/admin_token_attacks.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "jwt_attacks/rows.rs"]
mod rows;

use portcullis_core::oidc::config::{Algorithm, PreauthConfig};
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::session::SessionCache;
use portcullis_core::oidc::token::{validate_token, TokenChecks};
use portcullis_core::oidc::{self, Decision, Provider, RequestView};
use serde_json::json;

const ISS: &str = "https://idp.test";
const CLIENT: &str = "portcullis";
const BEARER_AUD: &str = "api://hr";
const NOW: u64 = 1_800_000_000;

fn key_set() -> KeySet {
    KeySet::parse(rows::jwks().as_bytes()).unwrap()
}

/// Outcomes shared by both tables (the rows whose refusal does not depend on
/// the validator's audience, nonce or azp rules).
const COMMON: &[(&str, &str)] = &[
    ("valid ES256", "ok"),
    ("valid RS256", "ok"),
    ("alg none, signature \"\"", "algorithm_not_allowed"),
    ("alg none, signature \"AAAA\"", "algorithm_not_allowed"),
    ("alg None, signature \"\"", "algorithm_not_allowed"),
    ("alg None, signature \"AAAA\"", "algorithm_not_allowed"),
    ("alg NONE, signature \"\"", "algorithm_not_allowed"),
    ("alg NONE, signature \"AAAA\"", "algorithm_not_allowed"),
    ("alg nOnE, signature \"\"", "algorithm_not_allowed"),
    ("alg nOnE, signature \"AAAA\"", "algorithm_not_allowed"),
    ("HS256 keyed with the EC PEM", "algorithm_not_allowed"),
    ("HS384 keyed with the EC PEM", "algorithm_not_allowed"),
    ("HS512 keyed with the EC PEM", "algorithm_not_allowed"),
    ("HS256 keyed with the EC DER", "algorithm_not_allowed"),
    ("HS384 keyed with the EC DER", "algorithm_not_allowed"),
    ("HS512 keyed with the EC DER", "algorithm_not_allowed"),
    ("HS256 keyed with the EC JWK", "algorithm_not_allowed"),
    ("HS384 keyed with the EC JWK", "algorithm_not_allowed"),
    ("HS512 keyed with the EC JWK", "algorithm_not_allowed"),
    ("HS256 keyed with the EC raw point", "algorithm_not_allowed"),
    ("HS384 keyed with the EC raw point", "algorithm_not_allowed"),
    ("HS512 keyed with the EC raw point", "algorithm_not_allowed"),
    ("HS256 keyed with the RSA PEM", "algorithm_not_allowed"),
    ("HS384 keyed with the RSA PEM", "algorithm_not_allowed"),
    ("HS512 keyed with the RSA PEM", "algorithm_not_allowed"),
    ("HS256 keyed with the RSA DER", "algorithm_not_allowed"),
    ("HS384 keyed with the RSA DER", "algorithm_not_allowed"),
    ("HS512 keyed with the RSA DER", "algorithm_not_allowed"),
    ("HS256 keyed with the RSA JWK", "algorithm_not_allowed"),
    ("HS384 keyed with the RSA JWK", "algorithm_not_allowed"),
    ("HS512 keyed with the RSA JWK", "algorithm_not_allowed"),
    // jwt-simple reads `jwk` as a string: a JWK object fails the header.
    ("embedded jwk (attacker's key), kid ec1", "token_invalid"),
    ("embedded jwk (attacker's key), no kid", "token_invalid"),
    ("jku to the attacker's key, attacker's kid", "unknown_key"),
    (
        "jku to the attacker's key, provider's kid",
        "signature_invalid",
    ),
    ("x5u to the attacker's key, attacker's kid", "unknown_key"),
    (
        "x5u to the attacker's key, provider's kid",
        "signature_invalid",
    ),
    ("x5c to the attacker's key, attacker's kid", "unknown_key"),
    (
        "x5c to the attacker's key, provider's kid",
        "signature_invalid",
    ),
    ("kid path traversal", "unknown_key"),
    ("kid path traversal to a key file", "unknown_key"),
    ("kid SQL injection", "unknown_key"),
    ("kid command injection", "unknown_key"),
    ("kid empty", "unknown_key"),
    ("kid unknown", "unknown_key"),
    ("kid as a number", "token_invalid"),
    ("crit [exp] (validly signed)", "token_invalid"),
    (
        "crit with an unknown extension (validly signed)",
        "token_invalid",
    ),
    (
        "nested JWT as the payload (cty JWT, validly signed)",
        "token_invalid",
    ),
    (
        "duplicate sub in the payload (validly signed)",
        "token_invalid",
    ),
    (
        "duplicate iss in the payload (validly signed)",
        "token_invalid",
    ),
    (
        "duplicate alg in the header (none, then ES256; validly signed)",
        "token_invalid",
    ),
    ("not three parts", "token_invalid"),
    ("four parts", "token_invalid"),
    ("header not JSON", "token_invalid"),
    ("signature r = s = 0", "signature_invalid"),
    ("signature r = s = n (the group order)", "signature_invalid"),
    ("signature truncated to 32 bytes", "signature_invalid"),
    ("signature truncated by one byte", "signature_invalid"),
    ("signature oversized: one byte more", "signature_invalid"),
    ("signature oversized: DER-encoded", "signature_invalid"),
    ("signature empty", "signature_invalid"),
    ("signature with padding characters", "token_invalid"),
    ("exp 2^31", "ok"),
    ("exp 2^32", "ok"),
    // NumericDate beyond 2^32 saturates at 2^32 - 1 (2106): no overflow, no wrap
    // into the past; the session is still bounded by max_session (test below).
    ("exp 2^53", "ok"),
    ("exp 2^63", "ok"),
    ("exp u64::MAX", "ok"),
    ("exp 1e300", "ok"),
    ("exp -1", "token_invalid"),
    // RFC 7519 §2: a NumericDate may be non-integer.
    ("exp a float", "ok"),
    ("exp a string", "token_invalid"),
    ("exp a date text", "token_invalid"),
    ("exp null", "token_invalid"),
    ("exp missing", "token_invalid"),
    ("iat a string", "token_invalid"),
    ("iat in the future (+1 h)", "token_not_yet_valid"),
    ("nbf in the future (+1 h)", "token_not_yet_valid"),
    ("expired (exp 1 h ago)", "token_expired"),
    ("aud as a one-element array", "ok"),
    ("aud another app", "audience_mismatch"),
    ("aud an array without us", "audience_mismatch"),
    ("aud missing", "audience_mismatch"),
    ("iss another provider", "issuer_mismatch"),
];

fn table(specific: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut t: Vec<(&str, &str)> = COMMON.to_vec();
    t.extend_from_slice(specific);
    t
}

#[test]
fn id_tokens_refuse_every_attack() {
    let claims = json!({"iss":ISS,"aud":CLIENT,"sub":"alice","nonce":"n0nce",
        "iat":NOW,"exp":NOW + 3600,"email":"alice@example.com"});
    let rows = rows::attacks(&claims, NOW);
    let keys = key_set();
    let checks = TokenChecks {
        issuer: ISS,
        audience: CLIENT,
        authorized_party: Some(CLIENT),
        nonce: Some("n0nce"),
        algorithms: &[
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        skew_secs: 60,
        now: NOW,
    };
    let expect = table(&[
        // OIDC Core §3.1.3.7: several audiences need azp, and azp must be us.
        (
            "aud as an array with another audience, no azp",
            "azp_mismatch",
        ),
        ("aud as an array with another audience, azp ours", "ok"),
        ("azp another party", "azp_mismatch"),
    ]);
    rows::check_table("ID token", &rows, &expect, |t| {
        match validate_token(t, &keys, &checks) {
            Ok(_) => "ok".into(),
            Err(e) => e.denial().code().to_string(),
        }
    });
}

fn bearer_config() -> PreauthConfig {
    let cfg = format!(
        r#"{{"apps":[{{"id":"hr","hosts":["hr.localhost"],"issuer":"{ISS}","client_id":"{CLIENT}",
          "client_secret":"s3cret","cluster":"idp",
          "sealing_keys":["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="],
          "allowed_algorithms":["ES256","RS256"],
          "bearer":{{"audience":"{BEARER_AUD}"}}}}]}}"#
    );
    PreauthConfig::from_json(cfg.as_bytes()).unwrap()
}

#[test]
fn bearer_tokens_refuse_every_attack() {
    let claims = json!({"iss":ISS,"aud":BEARER_AUD,"sub":"svc","iat":NOW,"exp":NOW + 3600});
    let rows = rows::attacks(&claims, NOW);
    let config = bearer_config();
    let owned = oidc::owned_headers(&config);
    let keys = key_set();
    let metadata = parse_discovery(
        format!(
            r#"{{"issuer":"{ISS}","authorization_endpoint":"{ISS}/auth",
            "token_endpoint":"{ISS}/token","jwks_uri":"{ISS}/jwks"}}"#
        )
        .as_bytes(),
        ISS,
    )
    .unwrap();
    let expect = table(&[
        // Bearer tokens are access tokens: no azp rule, any audience list holding ours.
        ("aud as an array with another audience, no azp", "ok"),
        ("aud as an array with another audience, azp ours", "ok"),
        ("azp another party", "ok"),
    ]);
    let mut cache = SessionCache::default();
    rows::check_table("bearer token", &rows, &expect, |t| {
        let headers = vec![
            ("authorization".to_string(), format!("Bearer {t}")),
            ("accept".to_string(), "application/json".to_string()),
        ];
        let req = RequestView {
            method: "GET",
            path: "/api/x",
            host: "hr.localhost",
            headers: &headers,
            request_id: "rid",
            route_app: portcullis_core::app::RouteApp::Absent,
            client_address: None,
        };
        let provider = Provider {
            metadata: Some(&metadata),
            keys: Some(&keys),
        };
        let mut random = |b: &mut [u8]| b.fill(4);
        match oidc::on_request(
            &config,
            &owned,
            &req,
            provider,
            NOW,
            &mut random,
            &mut cache,
        ) {
            Decision::Continue {
                identity: Some(_), ..
            } => "ok".into(),
            Decision::Respond { response, .. } => {
                let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
                body["error"]
                    .as_str()
                    .or(body["code"].as_str())
                    .unwrap_or("?")
                    .to_string()
            }
            other => format!("{other:?}"),
        }
    });
}

/// An `exp` far beyond 2^32 neither overflows nor wraps: it is read as
/// 2^32 - 1, and the session it starts still ends at `max_session`.
#[test]
fn huge_exp_saturates_and_the_session_stays_bounded() {
    use portcullis_core::oidc::session::identity_from_token;
    let config = bearer_config();
    let settings = config.apps[0].oidc.as_ref().unwrap();
    let keys = key_set();
    let checks = TokenChecks {
        issuer: ISS,
        audience: CLIENT,
        authorized_party: Some(CLIENT),
        nonce: None,
        algorithms: &[Algorithm::ES256],
        skew_secs: 60,
        now: NOW,
    };
    for exp in [
        json!(1u64 << 32),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(1e300),
    ] {
        let claims = json!({"iss":ISS,"aud":CLIENT,"sub":"alice","iat":NOW,"exp":exp});
        let t = rows::es256(json!({"alg":"ES256","kid":"ec1"}), &claims);
        let v = validate_token(&t, &keys, &checks).unwrap();
        assert_eq!(v.expires_at, u64::from(u32::MAX), "{exp}");
        let id = identity_from_token(settings, &v, NOW);
        assert_eq!(id.exp, NOW + settings.max_session_secs, "{exp}");
    }
}

/// Invalid-curve points never become keys: the JWKS parser drops them, so a
/// token naming them finds no key.
#[test]
fn invalid_curve_points_in_the_jwks_are_not_keys() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let good = rows::ec_jwk(&rows::keys().ec, "ec1");
    let mut off = good.clone();
    // y + 1: the point is not on P-256.
    let mut y = B64.decode(good["y"].as_str().unwrap()).unwrap();
    y[31] ^= 1;
    off["y"] = json!(B64.encode(&y));
    off["kid"] = json!("off");
    let zero = json!({"kty":"EC","crv":"P-256","kid":"zero","x":B64.encode([0u8;32]),"y":B64.encode([0u8;32])});
    // A point of a small-order curve with the same x range (y = 0 is never on P-256).
    let small =
        json!({"kty":"EC","crv":"P-256","kid":"small","x":good["x"],"y":B64.encode([0u8;32])});
    let doc = json!({"keys":[good, off, zero, small]}).to_string();
    let set = KeySet::parse(doc.as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1);
    for kid in ["off", "zero", "small"] {
        assert!(!set.has_kid(kid), "{kid} became a key");
    }
    assert!(KeySet::parse(json!({"keys":[zero]}).to_string().as_bytes()).is_err());
}
