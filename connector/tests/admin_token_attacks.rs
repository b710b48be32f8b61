//! The permanent JWT attack table against the edge's admin tokens
//! (`token::AdminTokenVerifier::verify`, what `POST /v1/register` calls).
//! The rows are the filters' (`filters/core/tests/jwt_attacks/rows.rs`); this
//! table says which refusal code the registration answers for each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../filters/core/tests/jwt_attacks/rows.rs"]
mod rows;

use portcullis_connector::config::AdminConfig;
use portcullis_connector::token::AdminTokenVerifier;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

const ISS: &str = "https://idp.test";
const AUD: &str = "portcullis-edge";

const EXPECT: &[(&str, &str)] = &[
    ("valid ES256", "ok"),
    ("valid RS256", "ok"),
    ("alg none, signature \"\"", "token_algorithm_refused"),
    ("alg none, signature \"AAAA\"", "token_algorithm_refused"),
    ("alg None, signature \"\"", "token_algorithm_refused"),
    ("alg None, signature \"AAAA\"", "token_algorithm_refused"),
    ("alg NONE, signature \"\"", "token_algorithm_refused"),
    ("alg NONE, signature \"AAAA\"", "token_algorithm_refused"),
    ("alg nOnE, signature \"\"", "token_algorithm_refused"),
    ("alg nOnE, signature \"AAAA\"", "token_algorithm_refused"),
    ("HS256 keyed with the EC PEM", "token_algorithm_refused"),
    ("HS384 keyed with the EC PEM", "token_algorithm_refused"),
    ("HS512 keyed with the EC PEM", "token_algorithm_refused"),
    ("HS256 keyed with the EC DER", "token_algorithm_refused"),
    ("HS384 keyed with the EC DER", "token_algorithm_refused"),
    ("HS512 keyed with the EC DER", "token_algorithm_refused"),
    ("HS256 keyed with the EC JWK", "token_algorithm_refused"),
    ("HS384 keyed with the EC JWK", "token_algorithm_refused"),
    ("HS512 keyed with the EC JWK", "token_algorithm_refused"),
    (
        "HS256 keyed with the EC raw point",
        "token_algorithm_refused",
    ),
    (
        "HS384 keyed with the EC raw point",
        "token_algorithm_refused",
    ),
    (
        "HS512 keyed with the EC raw point",
        "token_algorithm_refused",
    ),
    ("HS256 keyed with the RSA PEM", "token_algorithm_refused"),
    ("HS384 keyed with the RSA PEM", "token_algorithm_refused"),
    ("HS512 keyed with the RSA PEM", "token_algorithm_refused"),
    ("HS256 keyed with the RSA DER", "token_algorithm_refused"),
    ("HS384 keyed with the RSA DER", "token_algorithm_refused"),
    ("HS512 keyed with the RSA DER", "token_algorithm_refused"),
    ("HS256 keyed with the RSA JWK", "token_algorithm_refused"),
    ("HS384 keyed with the RSA JWK", "token_algorithm_refused"),
    ("HS512 keyed with the RSA JWK", "token_algorithm_refused"),
    ("embedded jwk (attacker's key), kid ec1", "token_malformed"),
    ("embedded jwk (attacker's key), no kid", "token_malformed"),
    (
        "jku to the attacker's key, attacker's kid",
        "token_invalid_signature",
    ),
    (
        "jku to the attacker's key, provider's kid",
        "token_invalid_signature",
    ),
    (
        "x5u to the attacker's key, attacker's kid",
        "token_invalid_signature",
    ),
    (
        "x5u to the attacker's key, provider's kid",
        "token_invalid_signature",
    ),
    (
        "x5c to the attacker's key, attacker's kid",
        "token_invalid_signature",
    ),
    (
        "x5c to the attacker's key, provider's kid",
        "token_invalid_signature",
    ),
    ("kid path traversal", "token_invalid_signature"),
    (
        "kid path traversal to a key file",
        "token_invalid_signature",
    ),
    ("kid SQL injection", "token_invalid_signature"),
    ("kid command injection", "token_invalid_signature"),
    ("kid empty", "token_invalid_signature"),
    ("kid unknown", "token_invalid_signature"),
    ("kid as a number", "token_malformed"),
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
        "token_malformed",
    ),
    ("not three parts", "token_invalid"),
    ("four parts", "token_invalid"),
    ("header not JSON", "token_malformed"),
    ("signature r = s = 0", "token_invalid_signature"),
    (
        "signature r = s = n (the group order)",
        "token_invalid_signature",
    ),
    ("signature truncated to 32 bytes", "token_invalid_signature"),
    ("signature truncated by one byte", "token_invalid_signature"),
    (
        "signature oversized: one byte more",
        "token_invalid_signature",
    ),
    (
        "signature oversized: DER-encoded",
        "token_invalid_signature",
    ),
    ("signature empty", "token_invalid_signature"),
    ("signature with padding characters", "token_invalid"),
    ("exp 2^31", "ok"),
    ("exp 2^32", "ok"),
    ("exp 2^53", "ok"),
    ("exp 2^63", "ok"),
    ("exp u64::MAX", "ok"),
    ("exp 1e300", "ok"),
    ("exp -1", "token_invalid"),
    ("exp a float", "ok"),
    ("exp a string", "token_invalid"),
    ("exp a date text", "token_invalid"),
    ("exp null", "token_invalid"),
    ("exp missing", "token_invalid"),
    ("iat a string", "token_invalid"),
    ("iat in the future (+1 h)", "token_invalid"),
    ("nbf in the future (+1 h)", "token_not_yet_valid"),
    ("expired (exp 1 h ago)", "token_expired"),
    ("aud as a one-element array", "ok"),
    ("aud as an array with another audience, no azp", "ok"),
    ("aud as an array with another audience, azp ours", "ok"),
    ("aud another app", "audience_mismatch"),
    ("aud an array without us", "audience_mismatch"),
    ("aud missing", "audience_mismatch"),
    ("azp another party", "ok"),
    ("iss another provider", "issuer_mismatch"),
];

fn verifier(jwks_json: &str) -> (tempfile::TempDir, std::sync::Arc<AdminTokenVerifier>) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json).unwrap();
    let verifier = AdminTokenVerifier::new(AdminConfig {
        jwks_file: Some(jwks),
        jwks_url: None,
        jwks_ca_file: None,
        issuer: ISS.into(),
        audience: AUD.into(),
        tenant_claim: "tid".into(),
        tenant: Some("t1".into()),
        roles_claim: "roles".into(),
        admin_roles: vec!["Connector.Admin".into()],
        groups_claim: "groups".into(),
        admin_groups: Vec::new(),
        leeway_seconds: 30,
        registrations_per_token: 1,
    });
    (dir, verifier)
}

fn admin_claims() -> (serde_json::Value, u64) {
    // The verifier reads the clock: the claims are built around it.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss":ISS,"aud":AUD,"sub":"admin-1","tid":"t1",
        "roles":["Connector.Admin"],"iat":now,"exp":now + 600});
    (claims, now)
}

#[tokio::test]
async fn admin_tokens_refuse_every_attack() {
    let (_dir, verifier) = verifier(&rows::jwks());
    let (claims, now) = admin_claims();
    let rows = rows::attacks(&claims, now);
    let mut outcomes = Vec::new();
    for row in &rows {
        outcomes.push(match verifier.verify(&row.token).await {
            Ok(_) => "ok".to_string(),
            Err(r) => r.code.to_string(),
        });
    }
    let mut i = 0;
    rows::check_table("admin token", &rows, EXPECT, |_| {
        i += 1;
        outcomes[i - 1].clone()
    });
}

/// A token without `kid` is checked with the first key of its algorithm's
/// type: an RS256 token was refused (`jwks_unavailable`) when an EC key came
/// first in the JWKS.
#[tokio::test]
async fn a_token_without_kid_finds_the_key_of_its_type() {
    use jwt_simple::prelude::*;
    let (_dir, verifier) = verifier(&rows::jwks());
    let (claims, _) = admin_claims();
    let rsa = RS256KeyPair::from_der(&rows::keys().rsa.to_der().unwrap()).unwrap();
    let token = rsa
        .sign(JWTClaims {
            issued_at: None,
            expires_at: None,
            invalid_before: None,
            issuer: None,
            subject: None,
            audiences: None,
            jwt_id: None,
            nonce: None,
            custom: claims.clone(),
        })
        .unwrap();
    verifier.verify(&token).await.unwrap();
    let token = rows::es256(json!({"alg":"ES256"}), &claims);
    verifier.verify(&token).await.unwrap();
}
