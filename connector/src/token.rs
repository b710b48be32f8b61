//! Admin tokens presented at registration: a JWT signed by a key of the configured
//! provider's JWKS, unexpired, for the configured issuer, audience and tenant, whose
//! holder has an admin role or group. Refusals carry a stable code and a reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use jwt_simple::JWTError;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::config::AdminConfig;
use crate::denial::Code;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TokenRefusal {
    /// Stable code, e.g. `token_expired`, `token_invalid_signature`, `tenant_mismatch`, `not_admin`.
    pub code: Code,
    /// Reason for humans.
    pub message: String,
}

fn refuse(code: Code, message: impl Into<String>) -> TokenRefusal {
    TokenRefusal {
        code,
        message: message.into(),
    }
}

/// The admin a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClaims {
    /// `sub`.
    pub subject: String,
    /// Tenant claim, if any.
    pub tenant: Option<String>,
    /// `jti`, if any.
    pub jti: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

impl AdminClaims {
    /// What counts the token's uses: its `jti` (with the issuer), else a hash of the
    /// token itself.
    pub fn use_key(&self, token: &str) -> String {
        use sha2::Digest as _;
        match &self.jti {
            Some(j) => format!("jti:{}", hex(&sha2::Sha256::digest(j.as_bytes()))),
            None => format!("sha256:{}", hex(&sha2::Sha256::digest(token.as_bytes()))),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Default)]
struct KeyCache {
    keys: Vec<Value>,
    fetched: Option<Instant>,
}

/// The JWK `kty` of the keys that verify `alg`.
fn key_type(alg: &str) -> &'static str {
    match alg {
        "ES256" | "ES384" => "EC",
        "EdDSA" => "OKP",
        _ => "RSA",
    }
}

/// Checks admin tokens against the configured rules and JWKS.
#[derive(Debug)]
pub struct AdminTokenVerifier {
    rules: AdminConfig,
    cache: Mutex<KeyCache>,
}

/// Refetches of the JWKS (unknown `kid`) are at most this frequent.
const REFETCH_EVERY: Duration = Duration::from_secs(30);

impl AdminTokenVerifier {
    /// A verifier for `rules`; keys are loaded on first use.
    pub fn new(rules: AdminConfig) -> Arc<Self> {
        Arc::new(Self {
            rules,
            cache: Mutex::new(KeyCache::default()),
        })
    }

    async fn load_keys(&self) -> Result<Vec<Value>, TokenRefusal> {
        let bytes = if let Some(path) = &self.rules.jwks_file {
            tokio::fs::read(path).await.map_err(|e| {
                refuse(
                    Code::JwksUnavailable,
                    format!("cannot read JWKS file {}: {e}", path.display()),
                )
            })?
        } else if let Some(url) = &self.rules.jwks_url {
            crate::backend::fetch_url(url, self.rules.jwks_ca_file.as_deref())
                .await
                .map_err(|e| {
                    refuse(
                        Code::JwksUnavailable,
                        format!("cannot fetch JWKS {url}: {e}"),
                    )
                })?
        } else {
            return Err(refuse(Code::JwksUnavailable, "no JWKS configured"));
        };
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(Code::JwksUnavailable, format!("JWKS is not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| refuse(Code::JwksUnavailable, "JWKS has no `keys` array"))?;
        Ok(keys)
    }

    async fn find_key(&self, kid: Option<&str>, alg: &str) -> Result<Value, TokenRefusal> {
        let mut cache = self.cache.lock().await;
        for attempt in 0..2 {
            let stale = cache
                .fetched
                .map(|t| t.elapsed() >= REFETCH_EVERY)
                .unwrap_or(true);
            if cache.fetched.is_none() || (attempt == 1 && stale) {
                cache.keys = self.load_keys().await?;
                cache.fetched = Some(Instant::now());
            }
            let found = cache.keys.iter().find(|k| {
                let kid_ok = match kid {
                    Some(kid) => k.get("kid").and_then(Value::as_str) == Some(kid),
                    None => true,
                };
                let alg_ok = k
                    .get("alg")
                    .and_then(Value::as_str)
                    .map(|a| a == alg || (alg == "EdDSA" && a == "Ed25519"))
                    .unwrap_or(true);
                // Without a kid, the first key of the algorithm's type (an RS256
                // token must not stop at an EC key listed before the RSA one).
                let kty_ok = k.get("kty").and_then(Value::as_str) == Some(key_type(alg));
                kid_ok && alg_ok && kty_ok
            });
            if let Some(k) = found {
                return Ok(k.clone());
            }
        }
        Err(refuse(
            Code::TokenInvalidSignature,
            format!("no key in the provider's JWKS for kid {kid:?} and alg {alg}"),
        ))
    }

    /// Checks `token`; `Ok` only when every rule holds.
    pub async fn verify(&self, token: &str) -> Result<AdminClaims, TokenRefusal> {
        let meta = Token::decode_metadata(token)
            .map_err(|_| refuse(Code::TokenMalformed, "the token is not a JWT"))?;
        let alg = meta.algorithm().to_string();
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(refuse(
                Code::TokenAlgorithmRefused,
                format!("algorithm {alg} is not allowed"),
            ));
        }
        let jwk = self.find_key(meta.key_id(), &alg).await?;
        let jwk = jwk.to_string();
        let r = &self.rules;
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([r.issuer.clone()])),
            allowed_audiences: Some(HashSet::from([r.audience.clone()])),
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(r.leeway_seconds)),
            ..Default::default()
        };
        let bad_key =
            |e: jwt_simple::Error| refuse(Code::JwksUnavailable, format!("JWKS key unusable: {e}"));
        macro_rules! check {
            ($t:ty) => {
                <$t>::from_jwk(&jwk)
                    .map_err(bad_key)?
                    .verify_token::<Map<String, Value>>(token, Some(options))
            };
        }
        let verified = match alg.as_str() {
            "RS256" => check!(RS256PublicKey),
            "RS384" => check!(RS384PublicKey),
            "RS512" => check!(RS512PublicKey),
            "PS256" => check!(PS256PublicKey),
            "PS384" => check!(PS384PublicKey),
            "PS512" => check!(PS512PublicKey),
            "ES256" => check!(ES256PublicKey),
            "ES384" => check!(ES384PublicKey),
            _ => check!(Ed25519PublicKey),
        };
        let claims = verified.map_err(|e| match e.downcast_ref::<JWTError>() {
            Some(JWTError::TokenHasExpired) => refuse(Code::TokenExpired, "the token has expired"),
            Some(JWTError::TokenNotValidYet) => {
                refuse(Code::TokenNotYetValid, "the token is not valid yet")
            }
            Some(JWTError::RequiredAudienceMismatch) | Some(JWTError::RequiredAudienceMissing) => {
                refuse(
                    Code::AudienceMismatch,
                    format!("the token is not for audience {}", r.audience),
                )
            }
            Some(JWTError::RequiredIssuerMismatch) | Some(JWTError::RequiredIssuerMissing) => {
                refuse(
                    Code::IssuerMismatch,
                    format!("the token was not issued by {}", r.issuer),
                )
            }
            Some(JWTError::InvalidSignature) => refuse(
                Code::TokenInvalidSignature,
                "the token's signature does not verify",
            ),
            _ => refuse(Code::TokenInvalid, format!("the token was refused: {e}")),
        })?;
        let Some(expires_at) = claims.expires_at else {
            return Err(refuse(Code::TokenInvalid, "the token has no expiry (exp)"));
        };
        let custom = &claims.custom;
        let tenant = custom
            .get(&r.tenant_claim)
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(want) = &r.tenant {
            if tenant.as_deref() != Some(want.as_str()) {
                return Err(refuse(
                    Code::TenantMismatch,
                    format!(
                        "the token is for tenant {:?}, not {want}",
                        tenant.unwrap_or_default()
                    ),
                ));
            }
        }
        let holds = |claim: &str, wanted: &[String]| -> bool {
            match custom.get(claim) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|v| wanted.iter().any(|w| w == v)),
                Some(Value::String(s)) => {
                    s.split_whitespace().any(|v| wanted.iter().any(|w| w == v))
                }
                _ => false,
            }
        };
        if !holds(&r.roles_claim, &r.admin_roles) && !holds(&r.groups_claim, &r.admin_groups) {
            return Err(refuse(
                Code::NotAdmin,
                "the token's holder has none of the configured admin roles or groups",
            ));
        }
        Ok(AdminClaims {
            subject: claims.subject.unwrap_or_default(),
            tenant,
            jti: claims.jwt_id.clone(),
            expires_at: expires_at.as_secs(),
        })
    }
}
