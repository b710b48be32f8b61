//! The session: identity built from a validated ID token, its compact sealed
//! form in the session cookie, cookie headers, and identity headers for the app.

use super::config::{AppConfig, CookieSettings, OidcSettings};
use super::token::ValidatedToken;
use crate::identity::Identity;
use crate::seal::{OpenError, SealError, Sealer, SEAL_RANDOM_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Longest value kept for a single string claim, bytes.
const MAX_CLAIM_LEN: usize = 512;

/// The compact payload sealed in the session cookie (short keys).
#[derive(Serialize, Deserialize)]
struct CompactIdentity {
    s: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    g: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    m: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    c: BTreeMap<String, String>,
    i: u64,
    x: u64,
}

/// Encodes an identity compactly (JSON with one-letter keys).
pub fn encode_identity(id: &Identity) -> Vec<u8> {
    let c = CompactIdentity {
        s: id.sub.clone(),
        n: id.name.clone(),
        e: id.email.clone(),
        g: id.groups.clone(),
        m: id.amr.clone(),
        a: id.acr.clone(),
        t: id.auth_time,
        c: id.claims.clone(),
        i: id.iat,
        x: id.exp,
    };
    serde_json::to_vec(&c).unwrap_or_default()
}

/// Decodes [`encode_identity`]'s output.
pub fn decode_identity(bytes: &[u8]) -> Option<Identity> {
    let c: CompactIdentity = serde_json::from_slice(bytes).ok()?;
    Some(Identity {
        sub: c.s,
        name: c.n,
        email: c.e,
        groups: c.g,
        amr: c.m,
        acr: c.a,
        auth_time: c.t,
        claims: c.c,
        iat: c.i,
        exp: c.x,
    })
}

/// Why a session cookie does not give a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The cookie could not be opened or decoded (every reason alike).
    Invalid,
    /// The session's expiry has passed.
    Expired,
}

/// Seals `identity` for the app's session cookie with the caller's fresh
/// random bytes (the seal's nonce and HKDF salt, see [`crate::seal`]).
pub fn seal_session(
    app_id: &str,
    settings: &OidcSettings,
    identity: &Identity,
    random: [u8; SEAL_RANDOM_LEN],
) -> Result<String, SealError> {
    settings.sealer.seal(
        &settings.cookie.name,
        app_id,
        &encode_identity(identity),
        random,
    )
}

/// Opens a session cookie value and checks its expiry against `now`.
pub fn open_session(
    sealer: &Sealer,
    cookie_name: &str,
    app_id: &str,
    value: &str,
    now: u64,
) -> Result<Identity, SessionError> {
    let bytes = sealer
        .open(cookie_name, app_id, value)
        .map_err(|OpenError| SessionError::Invalid)?;
    let id = decode_identity(&bytes).ok_or(SessionError::Invalid)?;
    if now >= id.exp {
        return Err(SessionError::Expired);
    }
    Ok(id)
}

fn claim_string(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    };
    if s.len() > MAX_CLAIM_LEN {
        return None;
    }
    Some(s)
}

fn string_list(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .filter(|s| s.len() <= MAX_CLAIM_LEN)
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_CLAIM_LEN => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Claims kept in dedicated identity fields (never copied into `claims`).
const STANDARD_CLAIMS: &[&str] = &[
    "sub",
    "email",
    "preferred_username",
    "upn",
    "name",
    "amr",
    "acr",
    "auth_time",
];

/// Builds the session identity from a validated ID token at `now`:
/// only what some decision or header needs; expiry = min(token `exp`, now + max session).
pub fn identity_from_token(settings: &OidcSettings, token: &ValidatedToken, now: u64) -> Identity {
    let x = &token.extra;
    let str_claim = |name: &str| {
        x.get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= MAX_CLAIM_LEN)
            .map(str::to_string)
    };
    let mut groups = string_list(x.get(&settings.groups_claim));
    if let Some(keep) = &settings.policy_groups {
        groups.retain(|g| keep.contains(g));
    }
    let mut claims = BTreeMap::new();
    let wanted = settings
        .claim_headers
        .iter()
        .map(|(_, claim)| claim)
        .chain(settings.policy_claims.iter());
    for claim in wanted {
        if STANDARD_CLAIMS.contains(&claim.as_str()) || *claim == settings.groups_claim {
            continue;
        }
        if let Some(v) = x.get(claim).and_then(claim_string) {
            claims.insert(claim.clone(), v);
        }
    }
    Identity {
        sub: token.subject.clone(),
        name: str_claim("preferred_username")
            .or_else(|| str_claim("upn"))
            .or_else(|| str_claim("name")),
        email: str_claim("email"),
        groups,
        amr: string_list(x.get("amr")),
        acr: str_claim("acr"),
        auth_time: x.get("auth_time").and_then(|v| v.as_u64()),
        claims,
        iat: now,
        exp: token
            .expires_at
            .min(now.saturating_add(settings.max_session_secs)),
    }
}

/// Removes characters that cannot travel in a header value (controls, DEL).
fn header_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

/// The value of `claim` for the identity headers.
pub fn identity_claim(settings: &OidcSettings, id: &Identity, claim: &str) -> Option<String> {
    let v = match claim {
        "sub" => Some(id.sub.clone()),
        "email" => id.email.clone(),
        "preferred_username" | "upn" | "name" => id.name.clone(),
        "amr" => (!id.amr.is_empty()).then(|| id.amr.join(",")),
        "acr" => id.acr.clone(),
        "auth_time" => id.auth_time.map(|t| t.to_string()),
        c if c == settings.groups_claim || c == "groups" => {
            (!id.groups.is_empty()).then(|| id.groups.join(","))
        }
        c => id.claims.get(c).cloned(),
    }?;
    let v = header_safe(&v);
    (!v.is_empty()).then_some(v)
}

/// The identity headers for the app, from the claim → header mapping.
pub fn identity_headers(settings: &OidcSettings, id: &Identity) -> Vec<(String, String)> {
    settings
        .claim_headers
        .iter()
        .filter_map(|(h, c)| identity_claim(settings, id, c).map(|v| (h.clone(), v)))
        .collect()
}

fn attributes(cookie: &CookieSettings) -> String {
    let mut a = String::from("; Path=/");
    if cookie.secure {
        a.push_str("; Secure");
    }
    if cookie.http_only {
        a.push_str("; HttpOnly");
    }
    a.push_str("; SameSite=Lax");
    a
}

/// `Set-Cookie` for a session (or login-state) cookie `name=value`; with
/// `max_age` the cookie persists, without it lives as long as the browser session.
pub fn set_cookie(
    cookie: &CookieSettings,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> String {
    let mut s = format!("{name}={value}{}", attributes(cookie));
    if let Some(m) = max_age {
        s.push_str(&format!("; Max-Age={m}"));
    }
    s
}

/// `Set-Cookie` that deletes cookie `name`.
pub fn clear_cookie(cookie: &CookieSettings, name: &str) -> String {
    format!("{name}={}; Max-Age=0", attributes(cookie))
}

/// Every value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(h, _)| h.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .collect()
}

/// An opened session: the identity, and the signed assertion that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub identity: Identity,
    /// The identity assertion (compact JWT) for [`crate::assertion::ASSERTION_HEADER`].
    pub assertion: String,
}

/// Signs the identity assertion for `identity` at `now`: the token and its expiry.
pub fn sign_assertion(settings: &OidcSettings, identity: &Identity, now: u64) -> (String, u64) {
    let header_claims: Vec<&str> = settings
        .claim_headers
        .iter()
        .map(|(_, c)| c.as_str())
        .filter(|c| !STANDARD_CLAIMS.contains(c) && *c != settings.groups_claim)
        .collect();
    let claims = settings.assertion.claims_for(identity, &header_claims, now);
    (settings.assertion.sign(&claims), claims.exp)
}

#[derive(Debug)]
struct CacheEntry {
    key: [u8; 32],
    identity: Identity,
    assertion: String,
    assertion_exp: u64,
}

/// Sessions a worker opened recently, so that a request carrying the same
/// session cookie again skips base64, AES-256-GCM, identity decoding and the
/// assertion's signature.
///
/// - The key is SHA-256 over the app id and the exact cookie value. A value
///   differing in any byte, or presented to another app, misses and is opened
///   (and refused) in full; nothing but a value that opened before can hit.
/// - The expiry is checked on every hit against the caller's clock, exactly as
///   [`open_session`] checks it.
/// - Each entry keeps the signed identity assertion; a hit signs again only
///   when less than a third of the assertion's lifetime is left.
/// - It is bounded ([`SessionCache::CAPACITY`] entries, replaced round-robin)
///   and belongs to one configuration: the filter makes a new one whenever it
///   is configured, so a sealing key taken out of the configuration stops
///   opening cookies at once.
/// - Lookups compare digests of attacker-chosen input, not secrets, so their
///   timing tells nothing about other users' cookies.
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: Vec<CacheEntry>,
    next: usize,
    hits: u64,
    signatures: u64,
}

impl SessionCache {
    /// Most sessions kept (an identity is bounded by the cookie size limit,
    /// so a full cache holds well under 1 MiB).
    pub const CAPACITY: usize = 128;

    fn key(app_id: &str, value: &str) -> [u8; 32] {
        Self::key_of(b'c', app_id, value)
    }

    /// The key of a bearer token: apart from cookie values by its first byte,
    /// so a cookie value equal to a token never hits the token's entry.
    fn bearer_key(app_id: &str, token: &str) -> [u8; 32] {
        Self::key_of(b'b', app_id, token)
    }

    fn key_of(kind: u8, app_id: &str, value: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([kind]);
        h.update((app_id.len() as u64).to_be_bytes());
        h.update(app_id.as_bytes());
        h.update(value.as_bytes());
        h.finalize().into()
    }

    fn get(&mut self, settings: &OidcSettings, key: &[u8; 32], now: u64) -> Option<Session> {
        let i = self.entries.iter().position(|e| e.key == *key)?;
        let e = self.entries.get_mut(i)?;
        if now >= e.identity.exp {
            self.entries.swap_remove(i);
            return None;
        }
        self.hits = self.hits.saturating_add(1);
        if settings.assertion.needs_resign(e.assertion_exp, now) {
            let (token, exp) = sign_assertion(settings, &e.identity, now);
            e.assertion = token;
            e.assertion_exp = exp;
            self.signatures = self.signatures.saturating_add(1);
        }
        Some(Session {
            identity: e.identity.clone(),
            assertion: e.assertion.clone(),
        })
    }

    fn insert(
        &mut self,
        settings: &OidcSettings,
        key: [u8; 32],
        identity: Identity,
        now: u64,
    ) -> Session {
        let (assertion, assertion_exp) = sign_assertion(settings, &identity, now);
        self.signatures = self.signatures.saturating_add(1);
        let session = Session {
            identity: identity.clone(),
            assertion: assertion.clone(),
        };
        let entry = CacheEntry {
            key,
            identity,
            assertion,
            assertion_exp,
        };
        if self.entries.len() < Self::CAPACITY {
            self.entries.push(entry);
        } else {
            // The cache is full (len == CAPACITY): slot is in range.
            let slot = self.next % Self::CAPACITY;
            if let Some(old) = self.entries.get_mut(slot) {
                *old = entry;
            }
            self.next = slot.saturating_add(1);
        }
        session
    }

    /// The identity of a bearer token for `app_id`: from the cache when this
    /// exact token was validated before and has not expired, otherwise from
    /// `validate` (the full signature and claim checks), whose identity is
    /// kept with its signed assertion. Like Envoy's `jwt_authn` token cache,
    /// a token that validated once is trusted until its `exp` (the cache
    /// belongs to one configuration); a refused token is never kept, so each
    /// attempt is checked in full.
    pub fn bearer<E>(
        &mut self,
        settings: &OidcSettings,
        app_id: &str,
        token: &str,
        now: u64,
        validate: impl FnOnce() -> Result<Identity, E>,
    ) -> Result<Session, E> {
        let key = Self::bearer_key(app_id, token);
        if let Some(s) = self.get(settings, &key, now) {
            return Ok(s);
        }
        Ok(self.insert(settings, key, validate()?, now))
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Assertions signed so far (first opens and re-signs).
    pub fn signatures(&self) -> u64 {
        self.signatures
    }
}

/// Opens the app's session from the request's cookies: the first cookie of
/// the configured name that opens wins; otherwise the "worst" error. A value
/// that opened before (and has not expired) comes from `cache`, with its
/// assertion; a newly opened one gets its assertion signed once here.
pub fn session_from_headers(
    app: &AppConfig,
    settings: &OidcSettings,
    headers: &[(String, String)],
    now: u64,
    cache: &mut SessionCache,
) -> Option<Result<Session, SessionError>> {
    let values = cookie_values(headers, &settings.cookie.name);
    if values.is_empty() {
        return None;
    }
    let mut err = SessionError::Invalid;
    for v in values {
        let key = SessionCache::key(&app.id, v);
        if let Some(s) = cache.get(settings, &key, now) {
            return Some(Ok(s));
        }
        match open_session(&settings.sealer, &settings.cookie.name, &app.id, v, now) {
            Ok(id) => return Some(Ok(cache.insert(settings, key, id, now))),
            Err(SessionError::Expired) => err = SessionError::Expired,
            Err(SessionError::Invalid) => {}
        }
    }
    Some(Err(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::config::tests::minimal;
    use crate::oidc::config::PreauthConfig;

    fn app() -> AppConfig {
        PreauthConfig::from_json(minimal().as_bytes())
            .unwrap()
            .apps
            .remove(0)
    }

    fn alice(groups: usize) -> Identity {
        Identity {
            sub: "00000000-1111-2222-3333-444444444444".into(),
            name: Some("alice.anderson@contoso.example".into()),
            email: Some("alice.anderson@contoso.example".into()),
            groups: (0..groups)
                .map(|i| format!("5d3e1c2a-7b8f-4e6d-9a0b-{i:012}"))
                .collect(),
            amr: vec!["pwd".into(), "mfa".into()],
            acr: Some("urn:mace:incommon:iap:silver".into()),
            auth_time: Some(1_800_000_000),
            claims: BTreeMap::new(),
            iat: 1_800_000_000,
            exp: 1_800_003_600,
        }
    }

    #[test]
    fn compact_round_trip() {
        let id = alice(3);
        assert_eq!(decode_identity(&encode_identity(&id)).unwrap(), id);
        assert!(decode_identity(b"{}").is_none());
    }

    #[test]
    fn sealed_size_with_20_groups() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let v = seal_session(&app.id, s, &alice(20), [9; SEAL_RANDOM_LEN]).unwrap();
        let cookie = set_cookie(&s.cookie, &s.cookie.name, &v, None);
        // Twenty GUID groups (36 characters each) must fit well under 4 KiB.
        println!(
            "sealed session with 20 GUID groups: value {} bytes, Set-Cookie {} bytes",
            v.len(),
            cookie.len()
        );
        assert!(cookie.len() < 2000, "{}", cookie.len());
        // A user with hundreds of groups fails clearly instead of breaking the browser.
        match seal_session(&app.id, s, &alice(200), [9; SEAL_RANDOM_LEN]) {
            Err(SealError::TooLarge { size, .. }) => assert!(size > 4000),
            other => panic!("{other:?}"),
        }
    }

    /// Per-request cost of opening a session cookie (20 groups). Run with
    /// `cargo test --release -p portcullis-core open_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check"]
    fn open_cost() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let id = alice(20);
        let v = seal_session(&app.id, s, &id, [3; SEAL_RANDOM_LEN]).unwrap();
        let n = 20_000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let got = open_session(&s.sealer, &s.cookie.name, &app.id, &v, id.iat).unwrap();
            assert_eq!(got.groups.len(), 20);
        }
        let per = start.elapsed() / n;
        println!(
            "open_session with 20 groups: {per:?} per cookie ({} byte value)",
            v.len()
        );
    }

    fn cookie_header(s: &OidcSettings, v: &str) -> Vec<(String, String)> {
        vec![("cookie".to_string(), format!("{}={v}", s.cookie.name))]
    }

    #[test]
    fn cached_sessions_hit_only_the_same_value_for_the_same_app_and_still_expire() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let id = alice(2);
        let v = seal_session(&app.id, s, &id, [3; SEAL_RANDOM_LEN]).unwrap();
        let cache = &mut SessionCache::default();
        let get = |v: &str, now, cache: &mut SessionCache| {
            session_from_headers(&app, s, &cookie_header(s, v), now, cache).unwrap()
        };
        assert_eq!(get(&v, id.iat, cache).map(|s| s.identity), Ok(id.clone()));
        assert_eq!((cache.len(), cache.hits()), (1, 0));
        assert_eq!(
            get(&v, id.iat + 1, cache).map(|s| s.identity),
            Ok(id.clone())
        );
        assert_eq!(cache.hits(), 1);
        // Any change to the value misses and is opened (and refused) in full.
        let mut tampered = v.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            get(&tampered, id.iat, cache).map(|s| s.identity),
            Err(SessionError::Invalid)
        );
        assert_eq!(
            get(&v[..v.len() - 1], id.iat, cache).map(|s| s.identity),
            Err(SessionError::Invalid)
        );
        assert_eq!(cache.hits(), 1);
        // The same value for another app never hits the first app's entry.
        let mut other = app.clone();
        other.id = "other-app".into();
        assert_eq!(
            session_from_headers(&other, s, &cookie_header(s, &v), id.iat, cache)
                .unwrap()
                .map(|s| s.identity),
            Err(SessionError::Invalid)
        );
        assert_eq!(cache.hits(), 1);
        // Expiry is checked on every hit, and an expired entry leaves the cache.
        assert_eq!(
            get(&v, id.exp, cache).map(|s| s.identity),
            Err(SessionError::Expired)
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn a_cache_hit_reuses_the_assertion_and_signs_again_only_near_its_expiry() {
        use crate::assertion::{verify, Expected, PublicKeySet};
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let id = alice(2);
        let v = seal_session(&app.id, s, &id, [3; SEAL_RANDOM_LEN]).unwrap();
        let cache = &mut SessionCache::default();
        let get = |now, cache: &mut SessionCache| {
            session_from_headers(&app, s, &cookie_header(s, &v), now, cache)
                .unwrap()
                .unwrap()
        };
        let first = get(id.iat, cache);
        assert_eq!(cache.signatures(), 1);
        let keys = PublicKeySet::from_signer(&s.assertion);
        let expected = |now| Expected {
            issuer: "https://hr.localhost",
            audience: "hr",
            skew_secs: 0,
            now,
        };
        let claims = verify(&first.assertion, &keys, &expected(id.iat)).unwrap();
        assert_eq!(claims.sub, id.sub);
        assert_eq!(claims.exp, id.iat + s.assertion.lifetime_secs());
        // Hits within two thirds of the lifetime: the same token, no signature.
        let lifetime = s.assertion.lifetime_secs();
        for dt in [1, lifetime / 2, lifetime - lifetime / 3 - 1] {
            assert_eq!(get(id.iat + dt, cache).assertion, first.assertion);
        }
        assert_eq!(cache.signatures(), 1);
        // Then a fresh one, valid past the old expiry.
        let later = id.iat + lifetime - lifetime / 3;
        let renewed = get(later, cache);
        assert_ne!(renewed.assertion, first.assertion);
        assert_eq!(cache.signatures(), 2);
        assert!(verify(&renewed.assertion, &keys, &expected(id.iat + lifetime + 10)).is_ok());
        // Never past the session's expiry.
        let end = get(id.exp - 5, cache);
        let claims = verify(&end.assertion, &keys, &expected(id.exp - 5)).unwrap();
        assert_eq!(claims.exp, id.exp);
        // The session cookie itself never travels in the assertion.
        let payload = end.assertion.split('.').nth(1).unwrap();
        assert!(!end.assertion.contains(&v) && !payload.contains(&v[..20]));
    }

    #[test]
    fn the_session_cache_is_bounded() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let cache = &mut SessionCache::default();
        let first = seal_session(&app.id, s, &alice(0), [0; SEAL_RANDOM_LEN]).unwrap();
        for i in 0..(SessionCache::CAPACITY + 10) {
            let mut nonce = [0u8; SEAL_RANDOM_LEN];
            nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let v = seal_session(&app.id, s, &alice(0), nonce).unwrap();
            assert!(
                session_from_headers(&app, s, &cookie_header(s, &v), 1_800_000_000, cache)
                    .unwrap()
                    .is_ok()
            );
        }
        assert_eq!(cache.len(), SessionCache::CAPACITY);
        // The oldest entries were replaced: the first value opens again, in full.
        let hits = cache.hits();
        assert!(
            session_from_headers(&app, s, &cookie_header(s, &first), 1_800_000_000, cache)
                .unwrap()
                .is_ok()
        );
        assert_eq!(cache.hits(), hits);
    }

    #[test]
    fn session_expiry_and_tamper() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let id = alice(1);
        let v = seal_session(&app.id, s, &id, [1; SEAL_RANDOM_LEN]).unwrap();
        let open = |v: &str, now| open_session(&s.sealer, &s.cookie.name, &app.id, v, now);
        assert_eq!(open(&v, id.exp - 1).unwrap(), id);
        assert_eq!(open(&v, id.exp), Err(SessionError::Expired));
        assert_eq!(open(&v[..v.len() - 1], id.iat), Err(SessionError::Invalid));
        assert_eq!(
            open_session(&s.sealer, &s.cookie.name, "other-app", &v, id.iat),
            Err(SessionError::Invalid)
        );
        // Cookies from headers: a bad one next to a good one still opens.
        let headers = vec![
            (
                "Cookie".to_string(),
                format!("a=b; {}=garbage", s.cookie.name),
            ),
            ("cookie".to_string(), format!("{}={v}", s.cookie.name)),
        ];
        let cache = &mut SessionCache::default();
        assert_eq!(
            session_from_headers(&app, s, &headers, id.iat, cache)
                .unwrap()
                .unwrap()
                .identity,
            id
        );
        assert!(session_from_headers(&app, s, &[], id.iat, cache).is_none());
        let bad = vec![("cookie".to_string(), format!("{}=garbage", s.cookie.name))];
        assert_eq!(
            session_from_headers(&app, s, &bad, id.iat, cache)
                .unwrap()
                .map(|s| s.identity),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn cookie_attributes() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        assert_eq!(
            set_cookie(&s.cookie, "__Host-portcullis", "v", None),
            "__Host-portcullis=v; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie(&s.cookie, "n", "v", Some(60)),
            "n=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        assert!(clear_cookie(&s.cookie, "n").starts_with("n=; Path=/"));
        assert!(clear_cookie(&s.cookie, "n").ends_with("Max-Age=0"));
    }

    #[test]
    fn headers_from_identity() {
        let app = app();
        let s = app.oidc.as_ref().unwrap();
        let mut id = alice(2);
        id.name = Some("ali\r\nce".into());
        let h = identity_headers(s, &id);
        assert!(h.contains(&("x-forwarded-user".into(), id.sub.clone())));
        assert!(h.contains(&("x-forwarded-preferred-username".into(), "alice".into())));
        assert!(h
            .iter()
            .any(|(n, v)| n == "x-forwarded-groups" && v.contains(',')));
    }

    #[test]
    fn identity_from_token_keeps_only_what_is_needed() {
        let mut app = app();
        let s = app.oidc.as_mut().unwrap();
        s.policy_groups = Some(vec!["admins".into()]);
        s.claim_headers.push(("x-dept".into(), "department".into()));
        s.max_session_secs = 600;
        let extra: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"email":"a@x","upn":"a@x.example","groups":["admins","staff"],"amr":["pwd"],
            "department":"R&D","huge":"ignored","auth_time":5}"#,
        )
        .unwrap();
        let t = ValidatedToken {
            subject: "a".into(),
            issued_at: 100,
            expires_at: 10_000,
            extra,
        };
        let id = identity_from_token(s, &t, 100);
        assert_eq!(id.groups, vec!["admins"]);
        assert_eq!(id.name.as_deref(), Some("a@x.example"));
        assert_eq!(id.exp, 700);
        assert_eq!(id.auth_time, Some(5));
        assert_eq!(id.claims.get("department").map(String::as_str), Some("R&D"));
        assert!(!id.claims.contains_key("huge"));
    }

    #[test]
    fn policy_claims_are_kept_for_later_filters_but_not_sent_as_headers() {
        let mut app = app();
        let s = app.oidc.as_mut().unwrap();
        s.policy_claims = vec!["user_risk".into(), "device_compliant".into()];
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"user_risk":"high","device_compliant":true,"other":"x"}"#)
                .unwrap();
        let t = ValidatedToken {
            subject: "a".into(),
            issued_at: 100,
            expires_at: 10_000,
            extra,
        };
        let id = identity_from_token(s, &t, 100);
        assert_eq!(id.claims.get("user_risk").map(String::as_str), Some("high"));
        assert_eq!(
            id.claims.get("device_compliant").map(String::as_str),
            Some("true")
        );
        assert!(!id.claims.contains_key("other"));
        let headers = identity_headers(s, &id);
        assert!(headers.iter().all(|(_, v)| v != "high"), "{headers:?}");
    }

    #[test]
    fn policy_claims_are_validated() {
        let bad = minimal().replacen("\"id\"", "\"policy_claims\": [\"\"], \"id\"", 1);
        let e = PreauthConfig::from_json(bad.as_bytes()).unwrap_err();
        assert!(e.field.ends_with("policy_claims[0]"), "{e}");
    }
}
