//! Sealed cookies, tokens, provider documents and the identity handoff.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_simple::prelude::*;
use portcullis_core::oidc::config::Algorithm;
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::token::{parse_token_response, validate_token, TokenChecks};
use portcullis_core::oidc::{handoff, login, session};
use portcullis_core::seal::{Sealer, SEAL_RANDOM_LEN};
use std::sync::OnceLock;

const K1: [u8; 32] = [1; 32];
const K2: [u8; 32] = [2; 32];
/// A format-1 value sealed with K1 (cookie `__Host-portcullis`, app `hr`) by the previous code.
const GOLDEN_V1: &str = "AdQHBwcHBwcHBwcHBwf20ZnRbYyLg3j2bVPD4hpRIje3G6c9D1H4JEc7Bbc1";

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| match Sealer::new(&[K1, K2]) {
        Some(s) => s,
        None => panic!("two distinct keys"),
    })
}

/// Opening any value fails (nothing but the keys can make one); a value this
/// target seals opens to what was sealed, and only under its name and app;
/// changing any one byte of it makes it fail.
pub fn seal_open(data: &[u8]) {
    let s = sealer();
    if let Some(v) = crate::text(data) {
        // The one value that opens: the format-1 seed sealed with K1 by the old code.
        if s.open("__Host-portcullis", "hr", v).is_ok() {
            assert_eq!(v, GOLDEN_V1, "{v:?} opened");
        }
    }
    if data.len() < SEAL_RANDOM_LEN + 1 {
        return;
    }
    let (random, rest) = data.split_at(SEAL_RANDOM_LEN);
    let (&pos, plaintext) = match rest.split_first() {
        Some(x) => x,
        None => return,
    };
    let mut r = [0u8; SEAL_RANDOM_LEN];
    r.copy_from_slice(random);
    let Ok(v) = s.seal("c", "app", plaintext, r) else {
        return;
    };
    assert_eq!(s.open("c", "app", &v).as_deref(), Ok(plaintext));
    assert!(s.open("c", "app2", &v).is_err());
    assert!(s.open("c2", "app", &v).is_err());
    let Ok(mut raw) = B64.decode(&v) else {
        panic!("sealed value is not base64url")
    };
    let i = usize::from(pos) % raw.len();
    raw[i] ^= 1 << (pos % 8);
    assert!(
        s.open("c", "app", &B64.encode(&raw)).is_err(),
        "byte {i} not covered"
    );
}

struct JwtFixture {
    keys: KeySet,
    tokens: Vec<String>,
}

const ISS: &str = "https://idp.test";
const AUD: &str = "portcullis";
const NOW: u64 = 1_800_000_000;

fn jwt_fixture() -> &'static JwtFixture {
    static F: OnceLock<JwtFixture> = OnceLock::new();
    F.get_or_init(|| {
        let Ok(es) = ES256KeyPair::from_bytes(&[7u8; 32]) else {
            panic!("fixed P-256 key")
        };
        // Per process; no property depends on the key's value.
        let ed = Ed25519KeyPair::generate();
        let es = es.with_key_id("ec1");
        let ed = ed.with_key_id("ed1");
        let p = es.public_key().public_key().to_bytes_uncompressed();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"ec1","x":"{}","y":"{}"}},
            {{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"{}"}}]}}"#,
            B64.encode(&p[1..33]),
            B64.encode(&p[33..65]),
            B64.encode(ed.public_key().to_bytes())
        );
        let Ok(keys) = KeySet::parse(jwks.as_bytes()) else {
            panic!("fixture JWKS")
        };
        let claims = || {
            let mut c = Claims::create(Duration::from_secs(3600))
                .with_issuer(ISS)
                .with_audience(AUD)
                .with_subject("alice")
                .with_nonce("n0nce");
            c.issued_at = Some(Duration::from_secs(NOW));
            c.invalid_before = None;
            c.expires_at = Some(Duration::from_secs(NOW + 3600));
            c
        };
        let (Ok(t1), Ok(t2)) = (es.sign(claims()), ed.sign(claims())) else {
            panic!("fixture tokens")
        };
        JwtFixture {
            keys,
            tokens: vec![t1, t2],
        }
    })
}

fn checks() -> TokenChecks<'static> {
    TokenChecks {
        issuer: ISS,
        audience: AUD,
        authorized_party: Some(AUD),
        nonce: Some("n0nce"),
        algorithms: &[
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        skew_secs: 60,
        now: NOW,
    }
}

/// Token validation. Byte 0 chooses: the input as a whole token (it cannot
/// be valid), or a valid signed token with its header, payload or signature
/// replaced by the input (valid only when the input is that very part).
pub fn jwt_validate(data: &[u8]) {
    let f = jwt_fixture();
    let c = checks();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if let Some(t) = crate::text(rest) {
        assert!(validate_token(t, &f.keys, &c).is_err(), "{t:?} validated");
    }
    let token = &f.tokens[usize::from(mode) % f.tokens.len()];
    let part = usize::from(mode / 2) % 3;
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let replacement = if mode & 0x80 != 0 {
        // The input as raw text of the part (e.g. JSON for header and payload).
        match crate::text(rest) {
            Some(t) => B64.encode(t),
            None => return,
        }
    } else {
        B64.encode(rest)
    };
    if replacement == parts[part] {
        return;
    }
    parts[part] = replacement;
    let forged = parts.join(".");
    if let Ok(v) = validate_token(&forged, &f.keys, &c) {
        // Only a header change that keeps the signed bytes' meaning could pass,
        // and the signature covers the header bytes: nothing may pass.
        panic!("forged token validated: {forged:?} -> {v:?}");
    }
}

/// JWKS parsing: a set that parses has keys, and each key's `kid` is found.
pub fn jwks_parse(data: &[u8]) {
    if let Ok(set) = KeySet::parse(data) {
        assert!(!set.keys.is_empty());
        for k in &set.keys {
            if let Some(kid) = &k.kid {
                assert!(set.has_kid(kid));
            }
        }
    }
}

/// Discovery documents and token responses.
pub fn discovery_parse(data: &[u8]) {
    if let Ok(m) = parse_discovery(data, ISS) {
        for u in [&m.authorization_endpoint, &m.token_endpoint, &m.jwks_uri] {
            assert!(u.path_and_query.starts_with('/'), "{u:?}");
            assert!(!u.authority.is_empty(), "{u:?}");
        }
    }
    for status in [200, 400] {
        if let Ok(r) = parse_token_response(status, data) {
            assert_eq!(status, 200);
            assert!(!r.id_token.is_empty());
        }
    }
}

/// The identity handoff (and the decoders of sealed payloads: session
/// identity, login state): what decodes re-encodes to the same value.
pub fn handoff_decode(data: &[u8]) {
    if let Ok(h) = handoff::decode(data) {
        let again = handoff::decode(&handoff::encode(&h.app, &h.identity));
        assert_eq!(again.as_ref(), Ok(&h));
    }
    if let Some(id) = session::decode_identity(data) {
        assert_eq!(
            session::decode_identity(&session::encode_identity(&id)),
            Some(id)
        );
    }
    if let Some(l) = login::LoginState::decode(data) {
        assert_eq!(login::LoginState::decode(&l.encode()), Some(l));
    }
}
