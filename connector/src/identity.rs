//! Identity on the edge: identity travels to an app only with its proof.
//!
//! The preauth filter signs an identity assertion (`X-Portcullis-Jwt-Assertion`,
//! see `portcullis_core::assertion`) for every authenticated request. For each
//! request the edge:
//!
//! 1. checks the assertion against the app's [`AssertionRules`]: keys from the
//!    app's published JWKS (fetched through Envoy, refreshed in the background,
//!    refetched at most every [`REFETCH_EVERY`] on an unknown `kid`) and/or inline
//!    keys; `iss`, `aud` and the clock skew. Verified assertions are cached by
//!    value until they expire, so a session's repeated requests cost one
//!    verification;
//! 2. strips every identity header (the default claim headers, every app's
//!    mapping, configured extras, every `x-portcullis-*`; any case, `_` for `-`);
//! 3. with a valid assertion for this app, sets the app's claim headers from the
//!    verified claims and forwards the assertion; without one (missing, expired,
//!    forged, for another app, `alg` confusion) the request goes on anonymously,
//!    or is refused with `assertion_required` where the app requires one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::assertion::{self, AssertionClaims, AssertionError, Expected, PublicKeySet};
use portcullis_core::config::{check_header_name, ConfigError};
use tracing::{debug, warn};

use crate::config::AssertionConfig;

/// Header names every edge strips (preauth's default claim headers and the assertion).
pub const DEFAULT_IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    assertion::ASSERTION_HEADER,
];

/// Prefix of the proxy's internal headers (all stripped).
const INTERNAL_PREFIX: &str = "x-portcullis-";

/// Refetches of an app's JWKS for an unknown `kid` are at most this frequent.
pub const REFETCH_EVERY: Duration = Duration::from_secs(30);

/// Most verified assertions kept (all apps together).
const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
struct Fetched {
    keys: PublicKeySet,
    at: Option<Instant>,
}

/// One app's assertion rules, validated, with the keys fetched so far.
#[derive(Debug)]
pub struct AssertionRules {
    issuer: String,
    audience: String,
    jwks_url: Option<String>,
    jwks_host: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    inline: PublicKeySet,
    required: bool,
    skew_secs: u64,
    refresh: Duration,
    claim_headers: Vec<(HeaderName, String)>,
    fetched: RwLock<Fetched>,
    fetching: tokio::sync::Mutex<()>,
}

impl AssertionRules {
    /// Validates an app's `assertion` section (errors name the field).
    pub fn new(app: &str, c: &AssertionConfig) -> Result<AssertionRules, ConfigError> {
        let issuer_ok = c
            .issuer
            .parse::<http::Uri>()
            .ok()
            .filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && !c.issuer.ends_with('/')
                    && u.path() == "/"
            })
            .is_some();
        if !issuer_ok {
            return Err(ConfigError::new(
                "issuer",
                "must be an origin like https://hr.example.com (as preauth signs it)",
            ));
        }
        if let Some(url) = &c.jwks_url {
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.authority().is_some())
                .map(|u| u.scheme_str().map(str::to_string));
            match ok {
                Some(Some(s)) if s == "http" => {}
                Some(Some(s)) if s == "https" => {
                    if c.jwks_ca_file.is_none() {
                        return Err(ConfigError::new(
                            "jwks_ca_file",
                            "needed for an https jwks_url",
                        ));
                    }
                }
                _ => return Err(ConfigError::new("jwks_url", "must be an http(s) URL")),
            }
        }
        if let Some(h) = &c.jwks_host {
            if HeaderValue::from_str(h).is_err() || h.is_empty() {
                return Err(ConfigError::new("jwks_host", "not a valid Host value"));
            }
        }
        let inline = match &c.jwks {
            Some(doc) => {
                let bytes = serde_json::to_vec(doc).unwrap_or_default();
                let set = PublicKeySet::from_jwks(&bytes)
                    .map_err(|e| ConfigError::new("jwks", e.to_string()))?;
                if set.is_empty() {
                    return Err(ConfigError::new("jwks", "holds no Ed25519 key"));
                }
                set
            }
            None => PublicKeySet::default(),
        };
        if c.jwks_url.is_none() && inline.is_empty() {
            return Err(ConfigError::new(
                "jwks_url",
                "set jwks_url and/or jwks (the app's assertion keys)",
            ));
        }
        if c.clock_skew_seconds > 300 {
            return Err(ConfigError::new("clock_skew_seconds", "at most 300"));
        }
        if !(30..=86_400).contains(&c.jwks_refresh_seconds) {
            return Err(ConfigError::new(
                "jwks_refresh_seconds",
                "must be between 30 and 86400",
            ));
        }
        let mapping: Vec<(String, String)> = match &c.claim_headers {
            Some(m) => m.iter().map(|(h, c)| (h.clone(), c.clone())).collect(),
            None => [
                ("x-forwarded-user", "sub"),
                ("x-forwarded-email", "email"),
                ("x-forwarded-groups", "groups"),
                ("x-forwarded-preferred-username", "preferred_username"),
            ]
            .iter()
            .map(|(h, c)| (h.to_string(), c.to_string()))
            .collect(),
        };
        let mut claim_headers = Vec::new();
        for (h, claim) in mapping {
            let field = format!("claim_headers.{h}");
            let name = check_header_name(&field, &h)?;
            if claim.is_empty() {
                return Err(ConfigError::new(field, "claim name is empty"));
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(&field, "not a valid header name"))?;
            claim_headers.push((name, claim));
        }
        Ok(AssertionRules {
            issuer: c.issuer.clone(),
            audience: c.audience.clone().unwrap_or_else(|| app.to_string()),
            jwks_url: c.jwks_url.clone(),
            jwks_host: c.jwks_host.clone(),
            jwks_ca_file: c.jwks_ca_file.clone(),
            inline,
            required: c.required,
            skew_secs: c.clock_skew_seconds,
            refresh: Duration::from_secs(c.jwks_refresh_seconds),
            claim_headers,
            fetched: RwLock::new(Fetched::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The header → claim mapping set from a valid assertion.
    pub fn claim_headers(&self) -> &[(HeaderName, String)] {
        &self.claim_headers
    }

    /// Whether requests without a valid assertion are refused.
    pub fn required(&self) -> bool {
        self.required
    }

    fn keys(&self) -> (PublicKeySet, Option<Instant>) {
        let f = match self.fetched.read() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        let mut keys = self.inline.clone();
        keys.extend(&f.keys);
        (keys, f.at)
    }

    /// Fetches the JWKS now unless another task fetched it within `min_age`.
    async fn fetch(&self, min_age: Duration) {
        let Some(url) = &self.jwks_url else {
            return;
        };
        let _one = self.fetching.lock().await;
        if self.keys().1.is_some_and(|at| at.elapsed() < min_age) {
            return;
        }
        let result = crate::backend::fetch_url_as(
            url,
            self.jwks_ca_file.as_deref(),
            self.jwks_host.as_deref(),
        )
        .await;
        let keys = match result {
            Ok(bytes) => match PublicKeySet::from_jwks(&bytes) {
                Ok(k) => Some(k),
                Err(e) => {
                    warn!(%url, "assertion keys unusable: {e}");
                    None
                }
            },
            Err(e) => {
                warn!(%url, "cannot fetch assertion keys: {e}");
                None
            }
        };
        let mut f = match self.fetched.write() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        if let Some(k) = keys {
            debug!(%url, keys = k.len(), "assertion keys fetched");
            f.keys = k;
        }
        // A failed fetch also counts, so that the rate limit holds.
        f.at = Some(Instant::now());
    }
}

/// What the edge made of a request's assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid for this app: identity travels.
    Valid {
        /// The verified claims.
        claims: Box<AssertionClaims>,
        /// The assertion, forwarded as it came.
        token: String,
        /// Whether it came from the cache (no signature check).
        cached: bool,
    },
    /// No valid assertion: identity is stripped; the outcome says why
    /// (`not_configured`, `missing`, or an `assertion_*` refusal code).
    Anonymous(&'static str),
}

impl Verdict {
    /// The metric outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Valid { cached: true, .. } => "cached",
            Verdict::Valid { .. } => "valid",
            Verdict::Anonymous(o) => o,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Assertions verified recently, by app and exact value, until they expire.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: Mutex<HashMap<(String, String), AssertionClaims>>,
}

impl VerifiedCache {
    fn get(&self, app: &str, token: &str, now: u64, skew: u64) -> Option<AssertionClaims> {
        let mut map = self.entries.lock().ok()?;
        let key = (app.to_string(), token.to_string());
        let claims = map.get(&key)?;
        if claims.exp.saturating_add(skew) <= now {
            map.remove(&key);
            return None;
        }
        Some(claims.clone())
    }

    fn insert(&self, app: &str, token: &str, claims: &AssertionClaims, now: u64, skew: u64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, c| c.exp.saturating_add(skew) > now);
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
        }
        map.insert((app.to_string(), token.to_string()), claims.clone());
    }

    /// Assertions held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks the assertion a request carries for app `app` (see the module docs).
pub async fn check(
    cache: &VerifiedCache,
    app: &str,
    rules: Option<&Arc<AssertionRules>>,
    headers: &HeaderMap,
) -> Verdict {
    let Some(rules) = rules else {
        return Verdict::Anonymous("not_configured");
    };
    let mut values = headers.get_all(assertion::ASSERTION_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(assertion::ASSERTION_HEADER) {
            Verdict::Anonymous(AssertionError::Malformed.code())
        } else {
            Verdict::Anonymous("missing")
        };
    };
    let Ok(token) = value.to_str() else {
        return Verdict::Anonymous(AssertionError::Malformed.code());
    };
    let now = unix_now();
    if let Some(claims) = cache.get(app, token, now, rules.skew_secs) {
        return Verdict::Valid {
            claims: Box::new(claims),
            token: token.to_string(),
            cached: true,
        };
    }
    let (mut keys, fetched_at) = keys_now(rules).await;
    let expected = |now| Expected {
        issuer: &rules.issuer,
        audience: &rules.audience,
        skew_secs: rules.skew_secs,
        now,
    };
    let mut result = assertion::verify(token, &keys, &expected(now));
    if matches!(result, Err(AssertionError::UnknownKey(_)))
        && rules.jwks_url.is_some()
        && fetched_at.is_some_and(|at| at.elapsed() >= REFETCH_EVERY)
    {
        rules.fetch(REFETCH_EVERY).await;
        keys = rules.keys().0;
        result = assertion::verify(token, &keys, &expected(unix_now()));
    }
    match result {
        Ok(claims) => {
            cache.insert(app, token, &claims, now, rules.skew_secs);
            Verdict::Valid {
                claims: Box::new(claims),
                token: token.to_string(),
                cached: false,
            }
        }
        Err(e) => Verdict::Anonymous(e.code()),
    }
}

/// The app's current keys: fetched now if never fetched; refreshed in the
/// background once older than the refresh period.
async fn keys_now(rules: &Arc<AssertionRules>) -> (PublicKeySet, Option<Instant>) {
    let (keys, at) = rules.keys();
    if rules.jwks_url.is_none() {
        return (keys, at);
    }
    match at {
        None => {
            rules.fetch(Duration::ZERO).await;
            rules.keys()
        }
        Some(t) if t.elapsed() >= rules.refresh => {
            let r = rules.clone();
            let refresh = r.refresh;
            tokio::spawn(async move { r.fetch(refresh).await });
            (keys, at)
        }
        Some(_) => (keys, at),
    }
}

/// Removes every identity header: the names in `names` (lower-case, `-`
/// spelling) in any case and with `_` for `-`, and every `x-portcullis-*`.
pub fn strip_identity(headers: &mut HeaderMap, names: &[String]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let canon = k.as_str().replace('_', "-");
            canon.starts_with(INTERNAL_PREFIX) || names.contains(&canon)
        })
        .cloned()
        .collect();
    for k in doomed {
        headers.remove(&k);
    }
}

/// Sets the app's claim headers from verified claims, and forwards the assertion.
pub fn set_identity(
    headers: &mut HeaderMap,
    rules: &AssertionRules,
    claims: &AssertionClaims,
    token: &str,
) {
    for (name, claim) in &rules.claim_headers {
        if let Some(v) = claims.claim_value(claim) {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(name.clone(), v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(token) {
        headers.insert(assertion::ASSERTION_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_identity_header_goes() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-user", HeaderValue::from_static("u-bob"));
        h.insert("x_forwarded_groups", HeaderValue::from_static("admins"));
        h.insert("x-portcullis-anything", HeaderValue::from_static("1"));
        h.insert("x-dept", HeaderValue::from_static("r&d"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let names: Vec<String> = DEFAULT_IDENTITY_HEADERS
            .iter()
            .map(|s| s.to_string())
            .chain(["x-dept".to_string()])
            .collect();
        strip_identity(&mut h, &names);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }
}
