//! Token endpoint exchange and token validation (ID tokens and bearer access tokens).

use super::config::{Algorithm, ClientAuth, OidcSettings, ProviderMetadata};
use super::jwks::{KeySet, VerifyKey};
use super::url::{form_encode, percent_encode, HttpUrl};
use super::HttpCall;
use crate::denial::Denial;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jwt_simple::prelude::{
    Audiences, Duration, ECDSAP256PublicKeyLike, EdDSAPublicKeyLike, JWTClaims, RSAPublicKeyLike,
    Token, VerificationOptions,
};
use jwt_simple::JWTError;
use serde::Deserialize;
use std::fmt;

/// Largest token accepted, bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Extra (non-registered) claims of a validated token.
pub type ExtraClaims = serde_json::Map<String, serde_json::Value>;

/// A GET request to the provider through its cluster (discovery, JWKS).
pub fn get_request(cluster: &str, url: &HttpUrl, timeout_ms: u64) -> HttpCall {
    HttpCall {
        cluster: cluster.to_string(),
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), url.path_and_query.clone()),
            (":authority".into(), url.authority.clone()),
            (":scheme".into(), url.scheme.clone()),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
        timeout_ms,
    }
}

/// The token-endpoint request exchanging `code` (with the PKCE `verifier`).
pub fn token_request(
    settings: &OidcSettings,
    metadata: &ProviderMetadata,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> HttpCall {
    let url = &metadata.token_endpoint;
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), url.path_and_query.clone()),
        (":authority".to_string(), url.authority.clone()),
        (":scheme".to_string(), url.scheme.clone()),
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
    ];
    let mut params: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    let secret = settings.client_secret.as_deref().unwrap_or("");
    match settings.client_auth {
        ClientAuth::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts form-encoded before Base64.
            let pair = format!(
                "{}:{}",
                percent_encode(&settings.client_id),
                percent_encode(secret)
            );
            headers.push((
                "authorization".to_string(),
                format!("Basic {}", STANDARD.encode(pair)),
            ));
        }
        ClientAuth::ClientSecretPost => {
            params.push(("client_id", &settings.client_id));
            params.push(("client_secret", secret));
        }
        ClientAuth::None => params.push(("client_id", &settings.client_id)),
    }
    HttpCall {
        cluster: settings.cluster.clone(),
        headers,
        body: form_encode(&params).into_bytes(),
        timeout_ms: settings.token_timeout_ms,
    }
}

/// The useful part of a token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The ID token.
    pub id_token: String,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Why a token exchange failed (logged; the user sees `token_exchange_failed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeError(pub String);

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token exchange failed: {}", self.0)
    }
}

impl std::error::Error for ExchangeError {}

/// Parses the token endpoint's answer (`status` is the HTTP status).
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<TokenResponse, ExchangeError> {
    let raw: Option<RawTokenResponse> = serde_json::from_slice(body).ok();
    if status != 200 {
        let code = raw
            .and_then(|r| r.error)
            .unwrap_or_else(|| "no error code".into());
        let code: String = code
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_graphic())
            .collect();
        return Err(ExchangeError(format!("status {status}, error `{code}`")));
    }
    let raw = raw.ok_or_else(|| ExchangeError("response is not JSON".into()))?;
    if let Some(e) = raw.error {
        let e: String = e
            .chars()
            .take(64)
            .filter(|c| c.is_ascii_graphic())
            .collect();
        return Err(ExchangeError(format!("error `{e}`")));
    }
    match raw.id_token {
        Some(t) if !t.is_empty() && t.len() <= MAX_TOKEN_LEN => Ok(TokenResponse { id_token: t }),
        Some(_) => Err(ExchangeError("id_token empty or too long".into())),
        None => Err(ExchangeError("no id_token in the response".into())),
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct TokenChecks<'a> {
    /// Expected `iss`.
    pub issuer: &'a str,
    /// The audience `aud` must contain.
    pub audience: &'a str,
    /// When `Some`, `azp` must equal it if `aud` has several values (ID tokens).
    pub authorized_party: Option<&'a str>,
    /// Expected `nonce` (ID tokens of a login); `None` skips the check (bearer tokens).
    pub nonce: Option<&'a str>,
    /// Allowed algorithms.
    pub algorithms: &'a [Algorithm],
    /// Allowed clock skew, seconds.
    pub skew_secs: u64,
    /// Current time, Unix seconds.
    pub now: u64,
}

/// Why a token was refused. [`TokenError::denial`] maps it to the user-facing code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or a required claim (`sub`, `exp`, `iat`) is missing.
    Malformed,
    /// `alg` not on the allow-list (including `none` and HMAC).
    AlgorithmNotAllowed,
    /// No key carries the token's `kid` (the JWKS should be refetched).
    UnknownKey(Option<String>),
    /// The signature does not verify.
    SignatureInvalid,
    /// `exp` is past (beyond the skew).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the skew).
    NotYetValid,
    /// `iss` differs.
    IssuerMismatch,
    /// `aud` lacks the audience.
    AudienceMismatch,
    /// Several audiences and `azp` differs from the client id.
    AuthorizedPartyMismatch,
    /// `nonce` differs or is missing.
    NonceMismatch,
}

impl TokenError {
    /// The denial shown to the user.
    pub fn denial(&self) -> Denial {
        match self {
            TokenError::Malformed => Denial::TokenInvalid,
            TokenError::AlgorithmNotAllowed => Denial::AlgorithmNotAllowed,
            TokenError::UnknownKey(_) => Denial::UnknownKey,
            TokenError::SignatureInvalid => Denial::SignatureInvalid,
            TokenError::Expired => Denial::TokenExpired,
            TokenError::NotYetValid => Denial::TokenNotYetValid,
            TokenError::IssuerMismatch => Denial::IssuerMismatch,
            TokenError::AudienceMismatch => Denial::AudienceMismatch,
            TokenError::AuthorizedPartyMismatch => Denial::AuthorizedPartyMismatch,
            TokenError::NonceMismatch => Denial::NonceMismatch,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::UnknownKey(Some(kid)) => write!(f, "unknown_key (kid `{kid}`)"),
            other => f.write_str(other.denial().code()),
        }
    }
}

impl std::error::Error for TokenError {}

/// A token whose signature and every check passed.
#[derive(Debug, Clone)]
pub struct ValidatedToken {
    /// `sub`.
    pub subject: String,
    /// `iat`, Unix seconds.
    pub issued_at: u64,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// Every other claim (`email`, `groups`, `amr`, `acr`, `auth_time`, …).
    pub extra: ExtraClaims,
}

fn map_jwt_error(e: &jwt_simple::Error) -> TokenError {
    match e.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature) => TokenError::SignatureInvalid,
        Some(JWTError::TokenHasExpired) => TokenError::Expired,
        Some(JWTError::TokenNotValidYet) | Some(JWTError::ClockDrift) => TokenError::NotYetValid,
        Some(JWTError::AlgorithmMismatch) => TokenError::AlgorithmNotAllowed,
        // The signature crates report malformed signatures as their own errors.
        Some(_) => TokenError::Malformed,
        // Not jwt-simple's own error: JSON or base64 that does not decode. The
        // claims are decoded only after the signature verified, so this is a
        // token the provider signed with claims we cannot read (`exp` as a
        // string, a nested JWT as the payload, a duplicate claim): malformed,
        // not a bad signature (which would send the operator after the keys).
        None => TokenError::Malformed,
    }
}

fn verify_with(
    key: &VerifyKey,
    alg: Algorithm,
    token: &str,
    options: VerificationOptions,
) -> Result<JWTClaims<ExtraClaims>, TokenError> {
    let result = match (key, alg) {
        (VerifyKey::Rsa { rs256, .. }, Algorithm::RS256) => {
            rs256.verify_token::<ExtraClaims>(token, Some(options))
        }
        (VerifyKey::Rsa { ps256, .. }, Algorithm::PS256) => {
            ps256.verify_token::<ExtraClaims>(token, Some(options))
        }
        (VerifyKey::P256(k), Algorithm::ES256) => {
            k.verify_token::<ExtraClaims>(token, Some(options))
        }
        (VerifyKey::Ed25519(k), Algorithm::EdDSA) => {
            k.verify_token::<ExtraClaims>(token, Some(options))
        }
        _ => return Err(TokenError::AlgorithmNotAllowed),
    };
    result.map_err(|e| map_jwt_error(&e))
}

/// Validates a JWT: algorithm allow-list, key by `kid`, signature, times
/// (with the configured skew as jwt-simple's explicit tolerance and `now`
/// passed in), `iss`, `aud`, `azp`, `nonce`.
pub fn validate_token(
    token: &str,
    keys: &KeySet,
    checks: &TokenChecks<'_>,
) -> Result<ValidatedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let meta = Token::decode_metadata(token).map_err(|_| TokenError::Malformed)?;
    let alg = Algorithm::from_name(meta.algorithm())
        .filter(|a| checks.algorithms.contains(a))
        .ok_or(TokenError::AlgorithmNotAllowed)?;
    let kid = meta.key_id();
    let mut candidates = keys.candidates(kid, alg).peekable();
    if candidates.peek().is_none() {
        // A known kid of a type or pinned alg that does not fit: wrong algorithm.
        if kid.is_some_and(|k| keys.has_kid(k)) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        return Err(TokenError::UnknownKey(kid.map(str::to_string)));
    }
    let options = || VerificationOptions {
        // Explicit: jwt-simple's default tolerance is 15 minutes.
        time_tolerance: Some(Duration::from_secs(checks.skew_secs)),
        artificial_time: Some(Duration::from_secs(checks.now)),
        max_token_length: Some(MAX_TOKEN_LEN),
        accept_future: false,
        ..VerificationOptions::default()
    };
    let mut last = TokenError::SignatureInvalid;
    let mut claims = None;
    for jwk in candidates {
        match verify_with(&jwk.key, alg, token, options()) {
            Ok(c) => {
                claims = Some(c);
                break;
            }
            Err(e) => {
                // Only keep trying other keys when the signature did not verify.
                if e != TokenError::SignatureInvalid {
                    return Err(e);
                }
                last = e;
            }
        }
    }
    let claims = claims.ok_or(last)?;
    let (Some(subject), Some(exp), Some(iat)) =
        (claims.subject.clone(), claims.expires_at, claims.issued_at)
    else {
        return Err(TokenError::Malformed);
    };
    if subject.is_empty() {
        return Err(TokenError::Malformed);
    }
    if claims.issuer.as_deref() != Some(checks.issuer) {
        return Err(TokenError::IssuerMismatch);
    }
    let audiences: Vec<String> = match &claims.audiences {
        Some(Audiences::AsString(a)) => vec![a.clone()],
        Some(Audiences::AsSet(set)) => set.iter().cloned().collect(),
        None => Vec::new(),
    };
    if !audiences.iter().any(|a| a == checks.audience) {
        return Err(TokenError::AudienceMismatch);
    }
    if let Some(client_id) = checks.authorized_party {
        let azp = claims.custom.get("azp").and_then(|v| v.as_str());
        // OIDC Core §3.1.3.7: with several audiences azp must be present and be us;
        // if azp is present it must be us in any case.
        let ok = match azp {
            Some(azp) => azp == client_id,
            None => audiences.len() == 1,
        };
        if !ok {
            return Err(TokenError::AuthorizedPartyMismatch);
        }
    }
    if let Some(nonce) = checks.nonce {
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(TokenError::NonceMismatch);
        }
    }
    Ok(ValidatedToken {
        subject,
        issued_at: iat.as_secs(),
        expires_at: exp.as_secs(),
        extra: claims.custom,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jwt_simple::prelude::*;
    use std::sync::OnceLock;

    pub(crate) const ISS: &str = "https://idp.test";
    pub(crate) const CLIENT: &str = "portcullis";
    pub(crate) const NOW: u64 = 1_800_000_000;

    /// Test keys, generated once (RSA generation is slow in debug builds).
    pub(crate) struct Keys {
        pub rsa: RS256KeyPair,
        pub rsa_other: RS256KeyPair,
        pub ps: PS256KeyPair,
        pub es: ES256KeyPair,
        pub ed: Ed25519KeyPair,
    }

    pub(crate) fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let rsa = RS256KeyPair::generate(2048).unwrap().with_key_id("rsa1");
            let ps = PS256KeyPair::from_der(&rsa.to_der().unwrap())
                .unwrap()
                .with_key_id("rsa1");
            Keys {
                rsa,
                rsa_other: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa1"),
                ps,
                es: ES256KeyPair::generate().with_key_id("ec1"),
                ed: Ed25519KeyPair::generate().with_key_id("ed1"),
            }
        })
    }

    pub(crate) fn jwks_json() -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
        let k = keys();
        let c = k.rsa.public_key().to_components();
        let ec = k.es.public_key().public_key().to_bytes_uncompressed();
        format!(
            r#"{{"keys":[
            {{"kty":"RSA","kid":"rsa1","use":"sig","n":"{}","e":"{}"}},
            {{"kty":"EC","crv":"P-256","kid":"ec1","x":"{}","y":"{}"}},
            {{"kty":"OKP","crv":"Ed25519","kid":"ed1","x":"{}"}}]}}"#,
            B.encode(&c.n),
            B.encode(&c.e),
            B.encode(&ec[1..33]),
            B.encode(&ec[33..65]),
            B.encode(k.ed.public_key().to_bytes()),
        )
    }

    pub(crate) fn key_set() -> KeySet {
        KeySet::parse(jwks_json().as_bytes()).unwrap()
    }

    #[derive(Serialize, Deserialize, Default)]
    pub(crate) struct Extra {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub email: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub preferred_username: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        pub groups: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub azp: Option<String>,
    }

    /// Standard claims for a token issued at `iat` and valid for an hour.
    pub(crate) fn claims_at(iat: u64) -> JWTClaims<Extra> {
        let mut c = Claims::with_custom_claims(
            Extra {
                email: Some("alice@example.com".into()),
                preferred_username: Some("alice".into()),
                groups: vec!["staff".into()],
                azp: None,
            },
            Duration::from_secs(3600),
        )
        .with_issuer(ISS)
        .with_audience(CLIENT)
        .with_subject("alice-sub")
        .with_nonce("n0nce");
        c.issued_at = Some(Duration::from_secs(iat));
        c.invalid_before = Some(Duration::from_secs(iat));
        c.expires_at = Some(Duration::from_secs(iat + 3600));
        c
    }

    pub(crate) fn checks() -> TokenChecks<'static> {
        TokenChecks {
            issuer: ISS,
            audience: CLIENT,
            authorized_party: Some(CLIENT),
            nonce: Some("n0nce"),
            algorithms: &[
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::PS256,
                Algorithm::EdDSA,
            ],
            skew_secs: 60,
            now: NOW,
        }
    }

    pub(crate) fn rs_token(c: JWTClaims<Extra>) -> String {
        keys().rsa.sign(c).unwrap()
    }

    fn check(token: &str) -> Result<ValidatedToken, TokenError> {
        validate_token(token, &key_set(), &checks())
    }

    #[test]
    fn every_supported_algorithm_validates() {
        let k = keys();
        let c = || claims_at(NOW);
        for token in [
            k.rsa.sign(c()).unwrap(),
            k.ps.sign(c()).unwrap(),
            k.es.sign(c()).unwrap(),
            k.ed.sign(c()).unwrap(),
        ] {
            let v = check(&token).unwrap();
            assert_eq!(v.subject, "alice-sub");
            assert_eq!(v.expires_at, NOW + 3600);
            assert_eq!(v.extra["email"], "alice@example.com");
        }
    }

    fn b64(s: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
        B.encode(s)
    }

    #[test]
    fn alg_none_is_refused() {
        let good = rs_token(claims_at(NOW));
        let payload = good.split('.').nth(1).unwrap();
        for header in [
            r#"{"alg":"none","kid":"rsa1"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"None","kid":"rsa1"}"#,
        ] {
            let t = format!("{}.{payload}.", b64(header));
            assert_eq!(check(&t).unwrap_err(), TokenError::AlgorithmNotAllowed);
        }
    }

    #[test]
    fn rs_hs_confusion_is_refused() {
        // An attacker signs HS256 with the RSA public key bytes as the HMAC secret.
        let pem = keys().rsa.public_key().to_pem().unwrap();
        let der = keys().rsa.public_key().to_der().unwrap();
        for secret in [pem.as_bytes().to_vec(), der] {
            let hs = HS256Key::from_bytes(&secret).with_key_id("rsa1");
            let t = hs.authenticate(claims_at(NOW)).unwrap();
            assert_eq!(check(&t).unwrap_err(), TokenError::AlgorithmNotAllowed);
        }
        // An algorithm the app does not allow is refused even if the key fits.
        let t = keys().ps.sign(claims_at(NOW)).unwrap();
        let mut c = checks();
        c.algorithms = &[Algorithm::RS256];
        assert_eq!(
            validate_token(&t, &key_set(), &c).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn wrong_or_unknown_kid() {
        let k = keys();
        // Unknown kid: the glue refetches the JWKS.
        let t = k
            .rsa
            .clone()
            .with_key_id("rotated")
            .sign(claims_at(NOW))
            .unwrap();
        assert_eq!(
            check(&t).unwrap_err(),
            TokenError::UnknownKey(Some("rotated".into()))
        );
        // A kid that names a key of another type: RS256 header, EC key.
        let t = k
            .rsa
            .clone()
            .with_key_id("ec1")
            .sign(claims_at(NOW))
            .unwrap();
        assert_eq!(check(&t).unwrap_err(), TokenError::AlgorithmNotAllowed);
        // Right kid, other key (same kid, different key material).
        let t = k.rsa_other.sign(claims_at(NOW)).unwrap();
        assert_eq!(check(&t).unwrap_err(), TokenError::SignatureInvalid);
        // No kid: every key of the type is tried.
        let nokid = ES256KeyPair::from_bytes(&k.es.to_bytes()).unwrap();
        let t = nokid.sign(claims_at(NOW)).unwrap();
        assert!(check(&t).is_ok());
    }

    #[test]
    fn tampered_signature_and_payload() {
        let t = rs_token(claims_at(NOW));
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        let mut sig = parts[2].clone().into_bytes();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        parts[2] = String::from_utf8(sig).unwrap();
        assert_eq!(
            check(&parts.join(".")).unwrap_err(),
            TokenError::SignatureInvalid
        );
        let other = rs_token({
            let mut c = claims_at(NOW);
            c.subject = Some("mallory".into());
            c
        });
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            t.split('.').nth(2).unwrap()
        );
        assert_eq!(check(&forged).unwrap_err(), TokenError::SignatureInvalid);
        assert_eq!(check("a.b").unwrap_err(), TokenError::Malformed);
        assert_eq!(check("").unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn issuer_audience_azp_nonce() {
        let mut c = claims_at(NOW);
        c.issuer = Some("https://evil.test".into());
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::IssuerMismatch);
        let mut c = claims_at(NOW);
        c.issuer = None;
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::IssuerMismatch);

        let c = claims_at(NOW).with_audience("other-app");
        assert_eq!(
            check(&rs_token(c)).unwrap_err(),
            TokenError::AudienceMismatch
        );

        // Several audiences: azp must be us.
        let mut set = std::collections::HashSet::new();
        set.insert(CLIENT.to_string());
        set.insert("other".to_string());
        let c = claims_at(NOW).with_audiences(set.clone());
        assert_eq!(
            check(&rs_token(c)).unwrap_err(),
            TokenError::AuthorizedPartyMismatch
        );
        let mut c = claims_at(NOW).with_audiences(set);
        c.custom.azp = Some(CLIENT.into());
        assert!(check(&rs_token(c)).is_ok());
        let mut c = claims_at(NOW);
        c.custom.azp = Some("other".into());
        assert_eq!(
            check(&rs_token(c)).unwrap_err(),
            TokenError::AuthorizedPartyMismatch
        );

        let c = claims_at(NOW).with_nonce("other");
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::NonceMismatch);
        let mut c = claims_at(NOW);
        c.nonce = None;
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::NonceMismatch);
    }

    /// Claims that do not decode, in a token whose signature verifies, are
    /// `token_invalid` (they were reported as `signature_invalid`).
    #[test]
    fn validly_signed_unreadable_claims_are_malformed_not_a_bad_signature() {
        let header = b64(r#"{"alg":"ES256","kid":"ec1"}"#);
        for payload in [
            r#"{"iss":"https://idp.test","aud":"portcullis","sub":"a","iat":1800000000,"exp":"1800003600"}"#,
            r#"{"sub":"admin","sub":"a","iss":"https://idp.test","aud":"portcullis","iat":1800000000,"exp":1800003600}"#,
            "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        ] {
            let input = format!("{header}.{}", b64(payload));
            use base64::engine::general_purpose::URL_SAFE_NO_PAD as B;
            use p256::ecdsa::signature::Signer as _;
            let key = p256::ecdsa::SigningKey::from_slice(&keys().es.to_bytes()).unwrap();
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            let t = format!("{input}.{}", B.encode(sig.to_bytes()));
            assert_eq!(check(&t).unwrap_err(), TokenError::Malformed, "{payload}");
        }
    }

    #[test]
    fn missing_required_claims() {
        let mut c = claims_at(NOW);
        c.subject = None;
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::Malformed);
        let mut c = claims_at(NOW);
        c.expires_at = None;
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::Malformed);
        let mut c = claims_at(NOW);
        c.issued_at = None;
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn expiry_and_skew_boundaries() {
        // exp is iat + 3600; skew 60.
        let expired_edge = NOW - 3600 - 60; // exp = NOW - 60: still accepted
        assert!(check(&rs_token(claims_at(expired_edge))).is_ok());
        assert_eq!(
            check(&rs_token(claims_at(expired_edge - 1))).unwrap_err(),
            TokenError::Expired
        );
        // Far in the past: jwt-simple's 900 s default would not save it either way,
        // but 120 s past expiry must fail with a 60 s skew.
        assert_eq!(
            check(&rs_token(claims_at(NOW - 3600 - 120))).unwrap_err(),
            TokenError::Expired
        );
        // Future iat/nbf.
        assert!(check(&rs_token(claims_at(NOW + 60))).is_ok());
        assert_eq!(
            check(&rs_token(claims_at(NOW + 61))).unwrap_err(),
            TokenError::NotYetValid
        );
        // Only nbf in the future.
        let mut c = claims_at(NOW);
        c.invalid_before = Some(Duration::from_secs(NOW + 300));
        assert_eq!(check(&rs_token(c)).unwrap_err(), TokenError::NotYetValid);
        // Configured skew is honoured (not jwt-simple's default of 900 s).
        let mut ch = checks();
        ch.skew_secs = 0;
        assert_eq!(
            validate_token(&rs_token(claims_at(NOW - 3601)), &key_set(), &ch).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            validate_token(&rs_token(claims_at(NOW + 1)), &key_set(), &ch).unwrap_err(),
            TokenError::NotYetValid
        );
        assert!(validate_token(&rs_token(claims_at(NOW - 3600)), &key_set(), &ch).is_ok());
    }

    #[test]
    fn token_responses() {
        assert_eq!(
            parse_token_response(200, br#"{"id_token":"a.b.c","access_token":"x"}"#).unwrap(),
            TokenResponse {
                id_token: "a.b.c".into()
            }
        );
        assert!(parse_token_response(400, br#"{"error":"invalid_grant"}"#)
            .unwrap_err()
            .0
            .contains("invalid_grant"));
        assert!(parse_token_response(200, br#"{"access_token":"x"}"#).is_err());
        assert!(parse_token_response(200, b"<html>").is_err());
        assert!(parse_token_response(200, br#"{"error":"x","id_token":"a"}"#).is_err());
        assert!(parse_token_response(500, b"").is_err());
    }

    #[test]
    fn denials_map() {
        assert_eq!(TokenError::Expired.denial().code(), "token_expired");
        assert_eq!(TokenError::UnknownKey(None).denial().code(), "unknown_key");
        assert_eq!(
            TokenError::AlgorithmNotAllowed.denial().code(),
            "algorithm_not_allowed"
        );
    }
}
