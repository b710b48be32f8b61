//! Provider metadata (discovery document) and signing keys (JWKS).

use super::config::{Algorithm, ProviderMetadata};
use super::url::HttpUrl;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{ES256PublicKey, Ed25519PublicKey, PS256PublicKey, RS256PublicKey};
use serde::Deserialize;
use std::fmt;

/// Largest discovery document or JWKS accepted, bytes.
pub const MAX_DOCUMENT_LEN: usize = 256 * 1024;

/// Why a discovery document or JWKS was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDocError(pub String);

impl fmt::Display for ProviderDocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProviderDocError {}

fn err(msg: impl Into<String>) -> ProviderDocError {
    ProviderDocError(msg.into())
}

#[derive(Deserialize)]
struct RawDiscovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
}

/// Parses an OpenID discovery document and checks that its `issuer` is
/// exactly `expected_issuer` (OpenID Connect Discovery §4.3).
pub fn parse_discovery(
    body: &[u8],
    expected_issuer: &str,
) -> Result<ProviderMetadata, ProviderDocError> {
    if body.len() > MAX_DOCUMENT_LEN {
        return Err(err("discovery document too large"));
    }
    let raw: RawDiscovery =
        serde_json::from_slice(body).map_err(|e| err(format!("discovery document: {e}")))?;
    if raw.issuer != expected_issuer {
        return Err(err(format!(
            "discovery document names issuer `{}`, configured `{expected_issuer}`",
            raw.issuer
        )));
    }
    let url = |name: &str, v: &str| {
        HttpUrl::parse(v).map_err(|e| err(format!("discovery document: {name}: {e}")))
    };
    Ok(ProviderMetadata {
        authorization_endpoint: url("authorization_endpoint", &raw.authorization_endpoint)?,
        token_endpoint: url("token_endpoint", &raw.token_endpoint)?,
        jwks_uri: url("jwks_uri", &raw.jwks_uri)?,
        end_session_endpoint: match raw.end_session_endpoint {
            Some(v) => Some(url("end_session_endpoint", &v)?),
            None => None,
        },
    })
}

/// A verification key of one of the supported types.
#[derive(Clone)]
pub enum VerifyKey {
    /// RSA, usable for RS256 and PS256.
    Rsa {
        /// The key as RS256.
        rs256: Box<RS256PublicKey>,
        /// The key as PS256.
        ps256: Box<PS256PublicKey>,
    },
    /// EC P-256, for ES256.
    P256(Box<ES256PublicKey>),
    /// Ed25519, for EdDSA.
    Ed25519(Box<Ed25519PublicKey>),
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl VerifyKey {
    /// True when this key type can verify `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (VerifyKey::Rsa { .. }, Algorithm::RS256 | Algorithm::PS256)
                | (VerifyKey::P256(_), Algorithm::ES256)
                | (VerifyKey::Ed25519(_), Algorithm::EdDSA)
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            VerifyKey::Rsa { .. } => "RSA",
            VerifyKey::P256(_) => "EC P-256",
            VerifyKey::Ed25519(_) => "Ed25519",
        }
    }
}

/// One key of the provider's JWKS.
#[derive(Clone)]
pub struct Jwk {
    /// `kid`, if any.
    pub kid: Option<String>,
    /// `alg` pinned by the JWK, if any.
    pub alg: Option<String>,
    /// The key.
    pub key: VerifyKey,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("type", &self.key.kind())
            .finish()
    }
}

/// The usable signing keys of a provider.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Keys in JWKS order.
    pub keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(v: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v.as_deref()?.trim_end_matches('='))
        .ok()
}

fn parse_key(raw: &RawJwk) -> Option<VerifyKey> {
    match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = b64(&raw.n)?;
            let e = b64(&raw.e)?;
            let rs256 = RS256PublicKey::from_components(&n, &e).ok()?;
            let ps256 = PS256PublicKey::from_components(&n, &e).ok()?;
            Some(VerifyKey::Rsa {
                rs256: Box::new(rs256),
                ps256: Box::new(ps256),
            })
        }
        ("EC", Some("P-256")) => {
            let x = b64(&raw.x)?;
            let y = b64(&raw.y)?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Some(VerifyKey::P256(Box::new(
                ES256PublicKey::from_bytes(&point).ok()?,
            )))
        }
        ("OKP", Some("Ed25519")) => {
            let x = b64(&raw.x)?;
            Some(VerifyKey::Ed25519(Box::new(
                Ed25519PublicKey::from_bytes(&x).ok()?,
            )))
        }
        _ => None,
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys of unsupported types, encryption keys and
    /// malformed keys are skipped; a set with no usable key is an error.
    pub fn parse(body: &[u8]) -> Result<KeySet, ProviderDocError> {
        if body.len() > MAX_DOCUMENT_LEN {
            return Err(err("JWKS too large"));
        }
        let raw: RawJwks = serde_json::from_slice(body).map_err(|e| err(format!("JWKS: {e}")))?;
        let mut keys = Vec::new();
        for value in raw.keys {
            let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
                continue;
            };
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            if let Some(key) = parse_key(&jwk) {
                keys.push(Jwk {
                    kid: jwk.kid,
                    alg: jwk.alg,
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(err(
                "JWKS has no usable signing key (RSA, EC P-256, Ed25519)",
            ));
        }
        Ok(KeySet { keys })
    }

    /// The keys that may verify a token with header `kid` and algorithm `alg`:
    /// with a `kid`, the keys carrying it; without one, every key of a fitting type.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |k| {
            let kid_ok = match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            };
            kid_ok && k.key.supports(alg) && k.alg.as_deref().is_none_or(|a| a == alg.name())
        })
    }

    /// True when some key carries `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_is_parsed_and_issuer_checked() {
        let doc = br#"{"issuer":"http://127.0.0.1:9000","authorization_endpoint":"http://127.0.0.1:9000/auth",
            "token_endpoint":"http://127.0.0.1:9000/token","jwks_uri":"http://127.0.0.1:9000/jwks",
            "end_session_endpoint":"http://127.0.0.1:9000/session/end","extra":1}"#;
        let m = parse_discovery(doc, "http://127.0.0.1:9000").unwrap();
        assert_eq!(m.token_endpoint.path_and_query, "/token");
        assert!(m.end_session_endpoint.is_some());
        assert!(parse_discovery(doc, "http://127.0.0.1:9000/").is_err());
        assert!(parse_discovery(b"{}", "x").is_err());
        assert!(parse_discovery(b"not json", "x").is_err());
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let ed = jwt_simple::prelude::Ed25519KeyPair::generate();
        let x = URL_SAFE_NO_PAD.encode(ed.public_key().to_bytes());
        let doc = format!(
            r#"{{"keys":[{{"kty":"oct","k":"AAAA"}},{{"kty":"OKP","crv":"Ed25519","x":"{x}","use":"enc","kid":"e"}},
            {{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"k1","alg":"EdDSA"}},{{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}},
            {{"kty":"RSA","n":"!!","e":"AQAB"}}, 7]}}"#
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.has_kid("k1"));
        assert!(!set.has_kid("e"));
        assert_eq!(set.candidates(Some("k1"), Algorithm::EdDSA).count(), 1);
        assert_eq!(set.candidates(Some("k1"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::EdDSA).count(), 1);
        assert!(KeySet::parse(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }
}
