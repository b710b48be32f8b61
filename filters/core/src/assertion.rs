//! The signed identity assertion: a short-lived JWT (EdDSA, Ed25519) that the
//! preauth filter sends with every authenticated request in
//! [`ASSERTION_HEADER`], and that the edge service and the apps verify against
//! the keys published at [`JWKS_PATH`].
//!
//! - Claims: `iss` (the app's stable external origin), `aud` (the app id),
//!   `sub`, `iat`, `exp`, and what the identity headers carry: `email`,
//!   `preferred_username`, the policy-named `groups`, `amr`, `acr`,
//!   `auth_time`, and the claims an app's claim → header mapping names. Never
//!   the session cookie, never a secret.
//! - Lifetime: [`AssertionSigner::lifetime_secs`] (default 300 s), never past
//!   the session's own expiry. The filter signs when a worker first opens a
//!   session and keeps the assertion with the cached session; it signs again
//!   once less than a third of the lifetime is left. A cache hit costs no
//!   signature.
//! - Keys: Ed25519. By default one key per sealing key of the app, derived by
//!   HKDF-SHA256 ([`derive_seed`]) with a domain-separating label and the app
//!   id, so every replica and worker with the same configuration signs with
//!   keys the JWKS of every other one holds, and no new secret is needed.
//!   Explicit seeds may be configured instead. The first key signs; every key
//!   is published (rotation with overlap: add the new key first, keep the old
//!   one until assertions signed with it have expired).
//! - `kid`: the RFC 7638 JWK thumbprint of the public key.
//!
//! [`verify`] is the verifier the edge uses: `alg` must be exactly `EdDSA`
//! (never `none`, never HMAC), `kid` must name a known key, the signature must
//! hold, `iss` and `aud` must be the expected ones, and `iat`/`exp` must hold
//! at `now` with the given skew.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Request header carrying the assertion (lower-case).
pub const ASSERTION_HEADER: &str = "x-portcullis-jwt-assertion";
/// Reserved path serving the app's assertion keys (JWKS).
pub const JWKS_PATH: &str = "/.auth/jwks";
/// Default assertion lifetime, seconds.
pub const DEFAULT_LIFETIME_SECS: u64 = 300;
/// Shortest configurable lifetime, seconds.
pub const MIN_LIFETIME_SECS: u64 = 30;
/// Longest configurable lifetime, seconds; [`verify`] refuses longer ones.
pub const MAX_LIFETIME_SECS: u64 = 3600;
/// Longest token [`verify`] looks at, bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// `Cache-Control` of the JWKS answer.
pub const JWKS_CACHE_CONTROL: &str = "public, max-age=300";
/// HKDF label that separates assertion keys from every other use of a sealing key.
const DERIVE_LABEL: &[u8] = b"portcullis identity assertion signing key v1";

/// Derives an Ed25519 seed from a sealing key, for app `app_id`:
/// HKDF-SHA256 with salt [`DERIVE_LABEL`], input key material the sealing
/// key, and info the label, a zero byte and the app id.
pub fn derive_seed(sealing_key: &[u8; 32], app_id: &str) -> [u8; 32] {
    let prk = hmac_sha256::HKDF::extract(DERIVE_LABEL, sealing_key);
    let mut info = Vec::with_capacity(
        app_id
            .len()
            .saturating_add(DERIVE_LABEL.len())
            .saturating_add(1),
    );
    info.extend_from_slice(DERIVE_LABEL);
    info.push(0);
    info.extend_from_slice(app_id.as_bytes());
    let mut out = [0u8; 32];
    hmac_sha256::HKDF::expand(&mut out, prk, info);
    out
}

/// The RFC 7638 thumbprint of an Ed25519 public key: the `kid`.
pub fn thumbprint(public: &[u8; 32]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(canonical.as_bytes()))
}

/// One Ed25519 signing key with its `kid`. `Debug` never prints the secret.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pair: ed25519_compact::KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key for a 32-byte Ed25519 seed (`None` only if the library refuses it).
    pub fn from_seed(seed: [u8; 32]) -> Option<SigningKey> {
        let pair =
            ed25519_compact::KeyPair::try_from_seed(ed25519_compact::Seed::new(seed)).ok()?;
        let kid = thumbprint(&pair.pk);
        Some(SigningKey { kid, pair })
    }

    /// The `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key bytes.
    pub fn public_key(&self) -> [u8; 32] {
        *self.pair.pk
    }
}

/// The claims of an assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Issuer: the app's external origin.
    pub iss: String,
    /// Audience: the app id.
    pub aud: String,
    /// The provider's subject.
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display / principal name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The groups some policy names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Authentication methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Authentication context class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Last active authentication (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// Further claims the app's claim → header mapping names (string values).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl AssertionClaims {
    /// The value of `claim` as one header value (lists joined with `,`), if any.
    pub fn claim_value(&self, claim: &str) -> Option<String> {
        let v = match claim {
            "sub" => Some(self.sub.clone()),
            "email" => self.email.clone(),
            "preferred_username" | "upn" | "name" => self.preferred_username.clone(),
            "groups" => (!self.groups.is_empty()).then(|| self.groups.join(",")),
            "amr" => (!self.amr.is_empty()).then(|| self.amr.join(",")),
            "acr" => self.acr.clone(),
            "auth_time" => self.auth_time.map(|t| t.to_string()),
            c => self
                .extra
                .get(c)
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }?;
        let v: String = v.chars().filter(|c| !c.is_control()).collect();
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// Signs an app's assertions; holds its keys, issuer, audience and the JWKS
/// document, all computed at configure time.
#[derive(Clone)]
pub struct AssertionSigner {
    keys: Vec<SigningKey>,
    issuer: String,
    audience: String,
    lifetime_secs: u64,
    header_b64: String,
    jwks: Vec<u8>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// A signer with `keys` (the first signs; `None` when empty).
    pub fn new(
        keys: Vec<SigningKey>,
        issuer: String,
        audience: String,
        lifetime_secs: u64,
    ) -> Option<AssertionSigner> {
        let first = keys.first()?;
        let header = serde_json::json!({"alg": "EdDSA", "kid": first.kid, "typ": "JWT"});
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).ok()?);
        let jwks = serde_json::to_vec(&serde_json::json!({
            "keys": keys.iter().map(|k| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.public_key()),
                "kid": k.kid,
                "alg": "EdDSA",
                "use": "sig",
            })).collect::<Vec<_>>()
        }))
        .ok()?;
        Some(AssertionSigner {
            keys,
            issuer,
            audience,
            lifetime_secs,
            header_b64,
            jwks,
        })
    }

    /// The `iss` of every assertion.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of every assertion.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Lifetime of a fresh assertion, seconds.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    /// The keys (first signs).
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The JWKS document (every key, public parts only).
    pub fn jwks(&self) -> &[u8] {
        &self.jwks
    }

    /// True when an assertion expiring at `exp` should be signed again at `now`:
    /// less than a third of the lifetime is left (or it has expired).
    pub fn needs_resign(&self, exp: u64, now: u64) -> bool {
        now.saturating_add(self.lifetime_secs / 3) >= exp
    }

    /// The claims of an assertion for `identity` signed at `now`: expires after
    /// the lifetime or with the session, whichever is first. `header_claims`
    /// names the claims the app's claim → header mapping uses.
    pub fn claims_for(
        &self,
        identity: &crate::identity::Identity,
        header_claims: &[&str],
        now: u64,
    ) -> AssertionClaims {
        let mut extra = BTreeMap::new();
        for c in header_claims {
            if let Some(v) = identity.claims.get(*c) {
                extra.insert((*c).to_string(), serde_json::Value::String(v.clone()));
            }
        }
        AssertionClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: identity.sub.clone(),
            iat: now,
            exp: now.saturating_add(self.lifetime_secs).min(identity.exp),
            email: identity.email.clone(),
            preferred_username: identity.name.clone(),
            groups: identity.groups.clone(),
            amr: identity.amr.clone(),
            acr: identity.acr.clone(),
            auth_time: identity.auth_time,
            extra,
        }
    }

    /// Signs `claims` with the first key: the compact JWT.
    pub fn sign(&self, claims: &AssertionClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut token = String::with_capacity(
            self.header_b64
                .len()
                .saturating_add(payload.len())
                .saturating_add(90),
        );
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&payload);
        let signature = match self.keys.first() {
            Some(k) => k.pair.sk.sign(token.as_bytes(), None),
            None => return String::new(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }
}

/// Public keys an assertion may be signed with (from a JWKS document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeySet {
    keys: Vec<(String, [u8; 32])>,
}

/// Why a JWKS document gives no keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(pub String);

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwksError {}

impl PublicKeySet {
    /// The Ed25519 keys of a JWKS document. Keys of other types are skipped;
    /// a key without `kid` gets its thumbprint; a `kid` that is not the
    /// thumbprint is kept as written.
    pub fn from_jwks(json: &[u8]) -> Result<PublicKeySet, JwksError> {
        let doc: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| JwksError(format!("not JSON: {e}")))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| JwksError("no `keys` array".into()))?;
        let mut keys = Vec::new();
        for k in list {
            let s = |n: &str| k.get(n).and_then(|v| v.as_str());
            if s("kty") != Some("OKP") || s("crv") != Some("Ed25519") {
                continue;
            }
            if s("alg").is_some_and(|a| a != "EdDSA") {
                continue;
            }
            let Some(x) = s("x").and_then(|x| URL_SAFE_NO_PAD.decode(x).ok()) else {
                return Err(JwksError("an Ed25519 key has no valid `x`".into()));
            };
            let Ok(public) = <[u8; 32]>::try_from(x.as_slice()) else {
                return Err(JwksError("an Ed25519 key's `x` is not 32 bytes".into()));
            };
            if ed25519_compact::PublicKey::new(public).validate().is_err() {
                return Err(JwksError("an Ed25519 key is not a valid point".into()));
            }
            let kid = s("kid").map_or_else(|| thumbprint(&public), str::to_string);
            keys.push((kid, public));
        }
        Ok(PublicKeySet { keys })
    }

    /// The public keys of a signer (what its JWKS holds).
    pub fn from_signer(signer: &AssertionSigner) -> PublicKeySet {
        PublicKeySet {
            keys: signer
                .keys
                .iter()
                .map(|k| (k.kid.clone(), k.public_key()))
                .collect(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a key has this `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == kid)
    }

    /// Merges `other`'s keys into this set (kids already present are kept).
    pub fn extend(&mut self, other: &PublicKeySet) {
        for (kid, key) in &other.keys {
            if !self.contains(kid) {
                self.keys.push((kid.clone(), *key));
            }
        }
    }
}

/// What [`verify`] expects of an assertion.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Clock skew allowed on `iat` and `exp`, seconds.
    pub skew_secs: u64,
    /// Now (Unix seconds).
    pub now: u64,
}

/// Why an assertion is refused. Each has a stable code ([`AssertionError::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// Not a compact JWT of our form, or a claim is missing (`assertion_malformed`).
    Malformed,
    /// `alg` is not `EdDSA`, or the header has `crit` (`assertion_algorithm`).
    Algorithm,
    /// No known key has the `kid` (`assertion_unknown_key`).
    UnknownKey(String),
    /// The signature does not hold (`assertion_signature`).
    Signature,
    /// `iss` is not the expected one (`assertion_issuer`).
    Issuer,
    /// `aud` is not this app (`assertion_audience`).
    Audience,
    /// `exp` has passed, or the lifetime is longer than allowed (`assertion_expired`).
    Expired,
    /// `iat` lies in the future beyond the skew (`assertion_not_yet_valid`).
    NotYetValid,
}

impl AssertionError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AssertionError::Malformed => "assertion_malformed",
            AssertionError::Algorithm => "assertion_algorithm",
            AssertionError::UnknownKey(_) => "assertion_unknown_key",
            AssertionError::Signature => "assertion_signature",
            AssertionError::Issuer => "assertion_issuer",
            AssertionError::Audience => "assertion_audience",
            AssertionError::Expired => "assertion_expired",
            AssertionError::NotYetValid => "assertion_not_yet_valid",
        }
    }
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for AssertionError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies an assertion against `keys` and `expected` (see the module docs).
pub fn verify(
    token: &str,
    keys: &PublicKeySet,
    expected: &Expected<'_>,
) -> Result<AssertionClaims, AssertionError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AssertionError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::Malformed);
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AssertionError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| AssertionError::Malformed)?;
    if header.alg != "EdDSA" || header.crit.is_some() {
        return Err(AssertionError::Algorithm);
    }
    let kid = header.kid.ok_or(AssertionError::Malformed)?;
    let Some((_, public)) = keys.keys.iter().find(|(k, _)| *k == kid) else {
        return Err(AssertionError::UnknownKey(kid));
    };
    let sig_bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AssertionError::Malformed)?;
    let signature = ed25519_compact::Signature::from_slice(&sig_bytes)
        .map_err(|_| AssertionError::Malformed)?;
    // What is signed: the header and the payload, up to the last dot.
    let (signed, _) = token.rsplit_once('.').ok_or(AssertionError::Malformed)?;
    ed25519_compact::PublicKey::new(*public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| AssertionError::Signature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| AssertionError::Malformed)?;
    let claims: AssertionClaims =
        serde_json::from_slice(&payload).map_err(|_| AssertionError::Malformed)?;
    if claims.iss != expected.issuer {
        return Err(AssertionError::Issuer);
    }
    if claims.aud != expected.audience {
        return Err(AssertionError::Audience);
    }
    if claims.iat > expected.now.saturating_add(expected.skew_secs) {
        return Err(AssertionError::NotYetValid);
    }
    if claims.exp.saturating_add(expected.skew_secs) <= expected.now
        || claims
            .exp
            .checked_sub(claims.iat)
            .is_none_or(|lifetime| lifetime > MAX_LIFETIME_SECS)
    {
        return Err(AssertionError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn signer(seeds: &[[u8; 32]]) -> AssertionSigner {
        let keys = seeds
            .iter()
            .map(|s| SigningKey::from_seed(*s).unwrap())
            .collect();
        AssertionSigner::new(keys, "https://hr.example.com".into(), "hr".into(), 300).unwrap()
    }

    fn bob() -> Identity {
        Identity {
            sub: "u-bob".into(),
            name: Some("bob".into()),
            email: Some("bob@example.com".into()),
            groups: vec!["admins".into(), "staff".into()],
            amr: vec!["pwd".into(), "otp".into()],
            acr: None,
            auth_time: Some(1_800_000_000),
            claims: [("department".to_string(), "R&D".to_string())].into(),
            iat: 1_800_000_000,
            exp: 1_800_003_600,
        }
    }

    fn expected(now: u64) -> Expected<'static> {
        Expected {
            issuer: "https://hr.example.com",
            audience: "hr",
            skew_secs: 60,
            now,
        }
    }

    const NOW: u64 = 1_800_000_100;

    #[test]
    fn claims_hold_what_the_headers_hold_and_nothing_else() {
        let s = signer(&[[7; 32]]);
        let c = s.claims_for(&bob(), &["department", "sub"], NOW);
        assert_eq!(c.iss, "https://hr.example.com");
        assert_eq!(c.aud, "hr");
        assert_eq!((c.iat, c.exp), (NOW, NOW + 300));
        assert_eq!(c.groups, vec!["admins", "staff"]);
        assert_eq!(c.claim_value("groups").as_deref(), Some("admins,staff"));
        assert_eq!(c.claim_value("department").as_deref(), Some("R&D"));
        let token = s.sign(&c);
        let got = verify(&token, &PublicKeySet::from_signer(&s), &expected(NOW)).unwrap();
        assert_eq!(got, c);
        // Only the mapped extra claims travel.
        let c = s.claims_for(&bob(), &[], NOW);
        assert!(c.extra.is_empty());
        let json = String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(s.sign(&c).split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(!json.contains("R&D"), "{json}");
    }

    #[test]
    fn header_names_the_kid_and_the_algorithm() {
        let s = signer(&[[7; 32]]);
        let token = s.sign(&s.claims_for(&bob(), &[], NOW));
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], s.keys()[0].kid());
        // The kid is the RFC 7638 thumbprint of the public key.
        let jwks: serde_json::Value = serde_json::from_slice(s.jwks()).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        assert_eq!(
            header["kid"],
            URL_SAFE_NO_PAD.encode(hmac_sha256::Hash::hash(canonical.as_bytes()))
        );
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    }

    #[test]
    fn rfc8037_test_vector_signs_the_same() {
        // RFC 8037, appendix A.1 and A.4: the secret key, public key and thumbprint.
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let k = SigningKey::from_seed(d.try_into().unwrap()).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(k.public_key()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(k.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn lifetime_never_passes_the_session() {
        let s = signer(&[[7; 32]]);
        let mut id = bob();
        id.exp = NOW + 10;
        let c = s.claims_for(&id, &[], NOW);
        assert_eq!(c.exp, NOW + 10);
        assert!(!s.needs_resign(NOW + 300, NOW));
        assert!(!s.needs_resign(NOW + 300, NOW + 199));
        assert!(s.needs_resign(NOW + 300, NOW + 200));
        assert!(s.needs_resign(NOW + 300, NOW + 400));
    }

    #[test]
    fn rotation_publishes_old_and_new_and_signs_with_the_newest() {
        let old = signer(&[[1; 32]]);
        let rotated = signer(&[[2; 32], [1; 32]]);
        let jwks = PublicKeySet::from_jwks(rotated.jwks()).unwrap();
        assert_eq!(jwks.len(), 2);
        // An assertion signed before the rotation still verifies...
        let before = old.sign(&old.claims_for(&bob(), &[], NOW));
        assert!(verify(&before, &jwks, &expected(NOW)).is_ok());
        // ...and new ones are signed with the new key.
        let after = rotated.sign(&rotated.claims_for(&bob(), &[], NOW));
        let kid = rotated.keys()[0].kid();
        assert!(after.starts_with(&rotated.header_b64));
        assert!(verify(&after, &jwks, &expected(NOW)).is_ok());
        // Once the old key is gone, its assertions fail with the unknown kid.
        let only_new = PublicKeySet::from_signer(&signer(&[[2; 32]]));
        assert!(matches!(
            verify(&before, &only_new, &expected(NOW)),
            Err(AssertionError::UnknownKey(k)) if k == old.keys()[0].kid()
        ));
        assert_ne!(kid, old.keys()[0].kid());
    }

    #[test]
    fn derived_keys_are_stable_per_app_and_separate_between_apps() {
        let sealing = [9u8; 32];
        assert_eq!(derive_seed(&sealing, "hr"), derive_seed(&sealing, "hr"));
        assert_ne!(derive_seed(&sealing, "hr"), derive_seed(&sealing, "admin"));
        assert_ne!(derive_seed(&sealing, "hr"), sealing);
        assert_ne!(derive_seed(&[8; 32], "hr"), derive_seed(&sealing, "hr"));
    }

    fn forge(header: &str, claims: &serde_json::Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn every_bad_assertion_is_refused_with_its_code() {
        let s = signer(&[[7; 32]]);
        let keys = PublicKeySet::from_signer(&s);
        let good = s.sign(&s.claims_for(&bob(), &[], NOW));
        let code = |t: &str, e: Expected<'_>| verify(t, &keys, &e).map(|_| ()).unwrap_err().code();
        // Expired (beyond the skew), and not yet valid.
        assert!(verify(&good, &keys, &expected(NOW + 300 + 59)).is_ok());
        assert_eq!(code(&good, expected(NOW + 300 + 60)), "assertion_expired");
        assert_eq!(code(&good, expected(NOW - 61)), "assertion_not_yet_valid");
        // Another app's audience or issuer.
        let mut e = expected(NOW);
        e.audience = "admin";
        assert_eq!(code(&good, e), "assertion_audience");
        let mut e = expected(NOW);
        e.issuer = "https://admin.example.com";
        assert_eq!(code(&good, e), "assertion_issuer");
        // Tampered payload, wrong key (same kid), alg none, HMAC, crit, garbage.
        let (h, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut claims = serde_json::to_value(s.claims_for(&bob(), &[], NOW)).unwrap();
        claims["sub"] = "u-alice".into();
        let tampered = format!(
            "{h}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert_eq!(code(&tampered, expected(NOW)), "assertion_signature");
        let other = signer(&[[8; 32]]);
        let mut other_token = other.sign(&other.claims_for(&bob(), &[], NOW));
        other_token = format!("{h}.{}", other_token.split_once('.').unwrap().1);
        assert_eq!(code(&other_token, expected(NOW)), "assertion_signature");
        let kid = s.keys()[0].kid();
        let none = forge(&format!(r#"{{"alg":"none","kid":"{kid}"}}"#), &claims, b"");
        assert_eq!(code(&none, expected(NOW)), "assertion_algorithm");
        let hs = forge(
            &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            &claims,
            &[0; 32],
        );
        assert_eq!(code(&hs, expected(NOW)), "assertion_algorithm");
        let crit = forge(
            &format!(r#"{{"alg":"EdDSA","kid":"{kid}","crit":["x"]}}"#),
            &claims,
            &[0; 64],
        );
        assert_eq!(code(&crit, expected(NOW)), "assertion_algorithm");
        let nokid = forge(r#"{"alg":"EdDSA"}"#, &claims, &[0; 64]);
        assert_eq!(code(&nokid, expected(NOW)), "assertion_malformed");
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(code(garbage, expected(NOW)), "assertion_malformed");
        }
        // A signed assertion with an over-long lifetime is refused too.
        let mut long = s.claims_for(&bob(), &[], NOW);
        long.exp = NOW + MAX_LIFETIME_SECS + 1;
        assert_eq!(code(&s.sign(&long), expected(NOW)), "assertion_expired");
    }

    #[test]
    fn jwks_parsing_skips_other_keys_and_refuses_bad_ones() {
        let s = signer(&[[7; 32]]);
        let mut doc: serde_json::Value = serde_json::from_slice(s.jwks()).unwrap();
        doc["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"kty":"RSA","n":"x","e":"AQAB","kid":"r"}));
        let set = PublicKeySet::from_jwks(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(set, PublicKeySet::from_signer(&s));
        assert!(PublicKeySet::from_jwks(b"{}").is_err());
        assert!(
            PublicKeySet::from_jwks(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let s = signer(&[[7; 32]]);
        let text = format!("{s:?}");
        assert!(text.contains(s.keys()[0].kid()));
        let seed_b64 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(!text.contains(&seed_b64));
        assert!(!text.contains("[7, 7"), "{text}");
    }
}
