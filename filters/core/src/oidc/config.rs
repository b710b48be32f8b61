//! Preauth plugin configuration: raw JSON (`deny_unknown_fields`), validated
//! into typed per-app settings that cannot be wrong.
//!
//! ```json
//! {"apps": [{
//!   "id": "hr", "hosts": ["hr.localhost"], "mode": "oidc",
//!   "issuer": "http://127.0.0.1:9000", "cluster": "oidc_provider",
//!   "client_id": "portcullis", "client_secret": "…",
//!   "sealing_keys": ["<base64 of 32 bytes>"]
//! }]}
//! ```

use super::url::HttpUrl;
pub use crate::app::strip_port;
use crate::app::{host_name, Chosen, RouteApp};
use crate::assertion::{self, AssertionSigner, SigningKey};
use crate::config::{check_header_name, parse_json, ConfigError};
use crate::path::{PathPrefix, PathRules};
use crate::seal::{Sealer, KEY_LEN};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// Default session cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "__Host-portcullis";
/// Default clock skew allowed on token times, seconds.
pub const DEFAULT_SKEW_SECS: u64 = 60;
/// Largest clock skew accepted in configuration, seconds.
pub const MAX_SKEW_SECS: u64 = 300;
/// Default maximum session length, seconds (8 hours).
pub const DEFAULT_MAX_SESSION_SECS: u64 = 8 * 3600;
/// Lifetime of a login-state cookie, seconds (DESIGN: ≤ 10 min).
pub const LOGIN_STATE_TTL_SECS: u64 = 600;
/// Default token-endpoint timeout, milliseconds.
pub const DEFAULT_TOKEN_TIMEOUT_MS: u64 = 5000;
/// Default JWKS refresh period, seconds.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 3600;
/// Least time between two refetches triggered by an unknown `kid`, seconds.
pub const DEFAULT_JWKS_MIN_REFETCH_SECS: u64 = 30;

/// Signature algorithms the filter knows how to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Parses a JOSE `alg` name; `none`, HMAC and unsupported names give `None`.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "RS256" => Some(Algorithm::RS256),
            "PS256" => Some(Algorithm::PS256),
            "ES256" => Some(Algorithm::ES256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// Whether the filter authenticates an app or only strips identity headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// OpenID Connect sign-in required.
    Oidc,
    /// No authentication: client copies of identity headers are still removed.
    Passthrough,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret.
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// Public client: PKCE only, client id in the body.
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    apps: Vec<RawApp>,
    #[serde(default)]
    other_hosts: Option<OtherHosts>,
}

/// What happens to requests for a host no app lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtherHosts {
    /// Refuse with `404 unknown_host` (default: fail closed).
    Deny,
    /// Let them on unauthenticated (identity headers are still stripped).
    Pass,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    http_only: Option<bool>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    persistent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssertion {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    lifetime_seconds: Option<u64>,
    #[serde(default)]
    signing_keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBearer {
    audience: String,
}

/// How the configuration reads the environment: the value of a variable,
/// `None` when it is unset.
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A secret as written: the value itself, or `{"env": "NAME"}`, the name of
/// a variable of the filter's environment that holds it.
enum Secret {
    Inline(String),
    Env(String),
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct EnvRef {
            env: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Inline(String),
            Env(EnvRef),
        }
        match Written::deserialize(d) {
            Ok(Written::Inline(s)) => Ok(Secret::Inline(s)),
            Ok(Written::Env(e)) => Ok(Secret::Env(e.env)),
            Err(_) => Err(serde::de::Error::custom(
                "must be the secret itself (a string) or {\"env\": \"NAME\"}, the variable of \
                 the filter's environment that holds it",
            )),
        }
    }
}

impl Secret {
    /// The secret's value; a variable that is unset or empty refuses the
    /// configuration, naming the variable.
    fn resolve(self, field: &str, env: &Env<'_>) -> Result<String, ConfigError> {
        let name = match self {
            Secret::Inline(s) => return Ok(s),
            Secret::Env(name) => name,
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ConfigError::new(
                format!("{field}.env"),
                format!("`{name}` is not an environment variable name (letters, digits, `_`)"),
            ));
        }
        match env(&name) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(ConfigError::new(
                format!("{field}.env"),
                format!("environment variable `{name}` is empty"),
            )),
            None => Err(ConfigError::new(
                format!("{field}.env"),
                format!(
                    "environment variable `{name}` is not set (Envoy passes it to the filter with \
                     vm_config.environment_variables.host_env_keys)"
                ),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    id: String,
    hosts: Vec<String>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<Secret>,
    #[serde(default)]
    client_auth: Option<ClientAuth>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    discovery: Option<bool>,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    allowed_algorithms: Option<Vec<String>>,
    #[serde(default)]
    clock_skew_seconds: Option<u64>,
    #[serde(default)]
    max_session_seconds: Option<u64>,
    #[serde(default)]
    token_timeout_ms: Option<u64>,
    #[serde(default)]
    jwks_refresh_seconds: Option<u64>,
    #[serde(default)]
    external_scheme: Option<String>,
    #[serde(default)]
    cookie: Option<RawCookie>,
    #[serde(default)]
    sealing_keys: Vec<Secret>,
    #[serde(default)]
    claim_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    policy_groups: Option<Vec<String>>,
    #[serde(default)]
    policy_claims: Vec<String>,
    #[serde(default)]
    unauthenticated_paths: Vec<String>,
    #[serde(default)]
    path_rules: Option<PathRules>,
    #[serde(default)]
    bearer: Option<RawBearer>,
    #[serde(default)]
    post_logout_redirect_uri: Option<String>,
    #[serde(default)]
    assertion: Option<RawAssertion>,
}

/// Cookie switches of an app (as in the reference: HttpOnly, Secure, persistent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    /// Session cookie name (the `__Host-` prefix is dropped when Secure is off).
    pub name: String,
    /// Send `HttpOnly`.
    pub http_only: bool,
    /// Send `Secure`.
    pub secure: bool,
    /// Send `Max-Age` (persistent cookie) instead of a browser-session cookie.
    pub persistent: bool,
}

/// Where the provider's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Fetched from `<issuer>/.well-known/openid-configuration`.
    Discover(HttpUrl),
    /// Given in the configuration.
    Explicit(Box<ProviderMetadata>),
}

/// The provider endpoints the filter uses (from discovery or configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    /// Authorization endpoint (the browser is sent there).
    pub authorization_endpoint: HttpUrl,
    /// Token endpoint (called through the cluster).
    pub token_endpoint: HttpUrl,
    /// JWKS URI (called through the cluster).
    pub jwks_uri: HttpUrl,
    /// End-session endpoint, if the provider has one.
    pub end_session_endpoint: Option<HttpUrl>,
}

/// The OIDC settings of an app in `oidc` mode.
#[derive(Clone)]
pub struct OidcSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Client id (expected in `aud`).
    pub client_id: String,
    /// Client secret (never printed).
    pub client_secret: Option<String>,
    /// Token-endpoint authentication.
    pub client_auth: ClientAuth,
    /// Envoy cluster that reaches the provider.
    pub cluster: String,
    /// Endpoints source.
    pub endpoints: Endpoints,
    /// Scopes asked for (always includes `openid`).
    pub scopes: Vec<String>,
    /// Allowed token signature algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`, seconds.
    pub skew_secs: u64,
    /// Longest session, seconds.
    pub max_session_secs: u64,
    /// Token-endpoint timeout, milliseconds.
    pub token_timeout_ms: u64,
    /// JWKS refresh period, seconds.
    pub jwks_refresh_secs: u64,
    /// Scheme of the external URL when `x-forwarded-proto` is absent (`https` by default).
    pub external_scheme: Option<String>,
    /// Cookie switches.
    pub cookie: CookieSettings,
    /// Sealing keys (first seals).
    pub sealer: Sealer,
    /// Header (lower-case) → claim mapping.
    pub claim_headers: Vec<(String, String)>,
    /// Claim holding the groups.
    pub groups_claim: String,
    /// Groups kept in the session (`None`: all groups, subject to the size limit).
    pub policy_groups: Option<Vec<String>>,
    /// Further claims kept in the session for later filters (risk levels, device
    /// compliance), without sending them to the app as headers.
    pub policy_claims: Vec<String>,
    /// The path-equivalence rule of the app ([`crate::path`]): how its
    /// paths are compared, and which are refused (`ambiguous_path`).
    pub path_rules: PathRules,
    /// Path prefixes that need no session (checked and canonicalised with
    /// `path_rules`; they open a path only below them as written and under
    /// the rule).
    pub unauthenticated_paths: Vec<PathPrefix>,
    /// Audience for `Authorization: Bearer` access tokens; `None` disables bearer tokens.
    pub bearer_audience: Option<String>,
    /// Where the provider sends the browser after logout: an absolute URL, or a
    /// path of the app (made absolute with the external origin).
    pub post_logout_redirect_uri: Option<String>,
    /// Signs the identity assertion (keys, `iss`, `aud`, lifetime, JWKS).
    pub assertion: AssertionSigner,
}

impl fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_auth", &self.client_auth)
            .field("cluster", &self.cluster)
            .field("endpoints", &self.endpoints)
            .field("algorithms", &self.algorithms)
            .field("skew_secs", &self.skew_secs)
            .field("max_session_secs", &self.max_session_secs)
            .field("cookie", &self.cookie)
            .field("sealer", &self.sealer)
            .field("assertion", &self.assertion)
            .finish_non_exhaustive()
    }
}

/// One published app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// App id (bound into sealed cookies).
    pub id: String,
    /// Host names (lower-case, no port) that select this app.
    pub hosts: Vec<String>,
    /// `None` in passthrough mode.
    pub oidc: Option<OidcSettings>,
}

/// The whole preauth configuration.
#[derive(Debug, Clone)]
pub struct PreauthConfig {
    /// The apps, in configuration order.
    pub apps: Vec<AppConfig>,
    /// Requests for hosts no app lists.
    pub other_hosts: OtherHosts,
}

/// The default claim → header mapping.
pub fn default_claim_headers() -> Vec<(String, String)> {
    [
        ("x-forwarded-user", "sub"),
        ("x-forwarded-email", "email"),
        ("x-forwarded-groups", "groups"),
        ("x-forwarded-preferred-username", "preferred_username"),
    ]
    .into_iter()
    .map(|(h, c)| (h.to_string(), c.to_string()))
    .collect()
}

fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let text = text.trim();
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .ok()?;
    bytes.try_into().ok()
}

fn non_empty(field: &str, value: Option<String>) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ConfigError::new(field, "is required in oidc mode")),
    }
}

fn url(field: &str, value: &str) -> Result<HttpUrl, ConfigError> {
    HttpUrl::parse(value).map_err(|e| ConfigError::new(field, e.to_string()))
}

impl RawApp {
    fn validate(mut self, env: &Env<'_>) -> Result<AppConfig, ConfigError> {
        if !crate::app::is_app_id(&self.id) {
            return Err(ConfigError::new(
                "id",
                "must be 1 to 128 letters, digits, `-`, `_` or `.`",
            ));
        }
        if self.hosts.is_empty() {
            return Err(ConfigError::new("hosts", "must name at least one host"));
        }
        let mut hosts = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let h = h.to_ascii_lowercase();
            let name = h.strip_prefix("*.").unwrap_or(&h);
            if name.is_empty()
                || name.split('.').any(|label| {
                    label.is_empty()
                        || !label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return Err(ConfigError::new(
                    format!("hosts[{i}]"),
                    "must be a host name without port, scheme or trailing dot \
                     (`*.` may stand for one leading label)",
                ));
            }
            hosts.push(h);
        }
        let mode = self.mode.unwrap_or(Mode::Oidc);
        if mode == Mode::Passthrough && self.path_rules.is_some() {
            return Err(ConfigError::new(
                "path_rules",
                "has no effect in passthrough mode: preauth judges no path of a passthrough app \
                 (set it for the app in conditional access)",
            ));
        }
        if mode == Mode::Passthrough {
            return Ok(AppConfig {
                id: self.id,
                hosts,
                oidc: None,
            });
        }
        let issuer = non_empty("issuer", self.issuer)?;
        url("issuer", &issuer)?;
        let client_id = non_empty("client_id", self.client_id)?;
        let cluster = non_empty("cluster", self.cluster)?;
        let client_secret = self
            .client_secret
            .take()
            .map(|s| s.resolve("client_secret", env))
            .transpose()?;
        let client_auth = match (self.client_auth, &client_secret) {
            (Some(ClientAuth::None), Some(_)) => {
                return Err(ConfigError::new(
                    "client_secret",
                    "must not be set for a public client (client_auth `none`)",
                ))
            }
            (Some(ClientAuth::None), None) | (None, None) => ClientAuth::None,
            (Some(a), Some(_)) => a,
            (None, Some(_)) => ClientAuth::ClientSecretBasic,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "client_secret",
                    "is required unless client_auth is `none`",
                ))
            }
        };
        let explicit = [
            &self.authorization_endpoint,
            &self.token_endpoint,
            &self.jwks_uri,
        ];
        let endpoints = if self
            .discovery
            .unwrap_or(explicit.iter().all(|e| e.is_none()))
        {
            if explicit.iter().any(|e| e.is_some()) {
                return Err(ConfigError::new(
                    "discovery",
                    "explicit endpoints are given: set discovery to false or remove them",
                ));
            }
            let base = issuer.trim_end_matches('/');
            Endpoints::Discover(url(
                "issuer",
                &format!("{base}/.well-known/openid-configuration"),
            )?)
        } else {
            let need = |field: &str, v: &Option<String>| -> Result<HttpUrl, ConfigError> {
                match v {
                    Some(v) => url(field, v),
                    None => Err(ConfigError::new(
                        field,
                        "is required when discovery is false",
                    )),
                }
            };
            Endpoints::Explicit(Box::new(ProviderMetadata {
                authorization_endpoint: need(
                    "authorization_endpoint",
                    &self.authorization_endpoint,
                )?,
                token_endpoint: need("token_endpoint", &self.token_endpoint)?,
                jwks_uri: need("jwks_uri", &self.jwks_uri)?,
                end_session_endpoint: match &self.end_session_endpoint {
                    Some(v) => Some(url("end_session_endpoint", v)?),
                    None => None,
                },
            }))
        };
        let mut scopes = self
            .scopes
            .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
        for (i, s) in scopes.iter().enumerate() {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                return Err(ConfigError::new(format!("scopes[{i}]"), "invalid scope"));
            }
        }
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let algorithms = match self.allowed_algorithms {
            None => vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::PS256,
                Algorithm::EdDSA,
            ],
            Some(list) => {
                if list.is_empty() {
                    return Err(ConfigError::new(
                        "allowed_algorithms",
                        "must name at least one algorithm",
                    ));
                }
                let mut out = Vec::new();
                for (i, name) in list.iter().enumerate() {
                    match Algorithm::from_name(name) {
                        Some(a) => out.push(a),
                        None => {
                            return Err(ConfigError::new(
                                format!("allowed_algorithms[{i}]"),
                                format!(
                                    "`{name}` is not allowed (use RS256, PS256, ES256 or EdDSA; \
                                     never `none` or HMAC)"
                                ),
                            ))
                        }
                    }
                }
                out
            }
        };
        let skew_secs = self.clock_skew_seconds.unwrap_or(DEFAULT_SKEW_SECS);
        if skew_secs > MAX_SKEW_SECS {
            return Err(ConfigError::new(
                "clock_skew_seconds",
                format!("must be at most {MAX_SKEW_SECS}"),
            ));
        }
        let max_session_secs = self.max_session_seconds.unwrap_or(DEFAULT_MAX_SESSION_SECS);
        if max_session_secs == 0 || max_session_secs > 30 * 24 * 3600 {
            return Err(ConfigError::new(
                "max_session_seconds",
                "must be between 1 and 2592000 (30 days)",
            ));
        }
        let token_timeout_ms = self.token_timeout_ms.unwrap_or(DEFAULT_TOKEN_TIMEOUT_MS);
        if !(100..=60_000).contains(&token_timeout_ms) {
            return Err(ConfigError::new(
                "token_timeout_ms",
                "must be between 100 and 60000",
            ));
        }
        let jwks_refresh_secs = self
            .jwks_refresh_seconds
            .unwrap_or(DEFAULT_JWKS_REFRESH_SECS);
        if !(60..=7 * 24 * 3600).contains(&jwks_refresh_secs) {
            return Err(ConfigError::new(
                "jwks_refresh_seconds",
                "must be between 60 and 604800",
            ));
        }
        if let Some(s) = &self.external_scheme {
            if s != "http" && s != "https" {
                return Err(ConfigError::new(
                    "external_scheme",
                    "must be `http` or `https`",
                ));
            }
        }
        let raw_cookie = self.cookie.unwrap_or(RawCookie {
            name: None,
            http_only: None,
            secure: None,
            persistent: None,
        });
        let secure = raw_cookie.secure.unwrap_or(true);
        let mut name = raw_cookie
            .name
            .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string());
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(ConfigError::new(
                "cookie.name",
                "must be a cookie name token of at most 64 characters",
            ));
        }
        if !secure {
            if let Some(rest) = name.strip_prefix("__Host-") {
                name = rest.to_string();
            } else if let Some(rest) = name.strip_prefix("__Secure-") {
                name = rest.to_string();
            }
            if name.is_empty() {
                return Err(ConfigError::new(
                    "cookie.name",
                    "is empty without its prefix",
                ));
            }
        }
        let cookie = CookieSettings {
            name,
            http_only: raw_cookie.http_only.unwrap_or(true),
            secure,
            persistent: raw_cookie.persistent.unwrap_or(false),
        };
        if self.sealing_keys.is_empty() {
            return Err(ConfigError::new(
                "sealing_keys",
                "at least one key (base64 of 32 random bytes) is required",
            ));
        }
        let mut keys = Vec::new();
        for (i, k) in std::mem::take(&mut self.sealing_keys)
            .into_iter()
            .enumerate()
        {
            let field = format!("sealing_keys[{i}]");
            let k = k.resolve(&field, env)?;
            let key = decode_key(&k)
                .ok_or_else(|| ConfigError::new(&field, "must be base64 of exactly 32 bytes"))?;
            if keys.contains(&key) {
                return Err(ConfigError::new(field, "repeats an earlier key"));
            }
            keys.push(key);
        }
        let sealer = Sealer::new(&keys)
            .ok_or_else(|| ConfigError::new("sealing_keys", "invalid key set"))?;
        let claim_headers = match self.claim_headers {
            None => default_claim_headers(),
            Some(map) => {
                let mut out = Vec::new();
                for (header, claim) in map {
                    let field = format!("claim_headers.{header}");
                    let h = check_header_name(&field, &header)?;
                    let canon = h.replace('_', "-");
                    if crate::forwarded::is_untrusted(&canon)
                        || canon == "x-forwarded-for"
                        || canon == "x-forwarded-proto"
                        || canon.starts_with("x-portcullis-")
                    {
                        return Err(ConfigError::new(
                            field,
                            "this header carries what the proxy saw about the request (or is internal); \
                             map the claim to another header",
                        ));
                    }
                    if claim.is_empty() {
                        return Err(ConfigError::new(field, "claim name is empty"));
                    }
                    out.push((h, claim));
                }
                out
            }
        };
        let groups_claim = self.groups_claim.unwrap_or_else(|| "groups".to_string());
        if groups_claim.is_empty() {
            return Err(ConfigError::new("groups_claim", "must not be empty"));
        }
        let path_rules = self.path_rules.unwrap_or_default();
        let mut unauthenticated_paths = Vec::new();
        for (i, p) in self.unauthenticated_paths.iter().enumerate() {
            let field = format!("unauthenticated_paths[{i}]");
            let prefix = path_rules
                .prefix(p)
                .map_err(|e| ConfigError::new(&field, e))?;
            if prefix.key(path_rules.case_sensitive).starts_with("/.auth") {
                return Err(ConfigError::new(
                    field,
                    "must not cover the reserved /.auth paths",
                ));
            }
            unauthenticated_paths.push(prefix);
        }
        let bearer_audience = match self.bearer {
            Some(b) if b.audience.is_empty() => {
                return Err(ConfigError::new("bearer.audience", "must not be empty"))
            }
            Some(b) => Some(b.audience),
            None => None,
        };
        let post_logout_redirect_uri = match self.post_logout_redirect_uri {
            Some(u) if u.starts_with('/') => {
                crate::redirect::validate(&u)
                    .map_err(|e| ConfigError::new("post_logout_redirect_uri", e.to_string()))?;
                Some(u)
            }
            Some(u) => {
                url("post_logout_redirect_uri", &u)?;
                Some(u)
            }
            None => None,
        };
        let assertion = assertion_signer(
            self.assertion,
            &self.id,
            &hosts,
            self.external_scheme.as_deref(),
            &keys,
        )?;
        Ok(AppConfig {
            id: self.id,
            hosts,
            oidc: Some(OidcSettings {
                issuer,
                client_id,
                client_secret,
                client_auth,
                cluster,
                endpoints,
                scopes,
                algorithms,
                skew_secs,
                max_session_secs,
                token_timeout_ms,
                jwks_refresh_secs,
                external_scheme: self.external_scheme,
                cookie,
                sealer,
                claim_headers,
                groups_claim,
                policy_groups: self.policy_groups,
                policy_claims: {
                    for (i, c) in self.policy_claims.iter().enumerate() {
                        if c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_graphic())
                        {
                            return Err(ConfigError::new(
                                format!("policy_claims[{i}]"),
                                "must be a claim name of 1 to 64 visible ASCII characters",
                            ));
                        }
                    }
                    self.policy_claims
                },
                path_rules,
                unauthenticated_paths,
                bearer_audience,
                post_logout_redirect_uri,
                assertion,
            }),
        })
    }
}

/// The app's assertion signer: explicit `assertion.signing_keys` (Ed25519
/// seeds), or else one key per sealing key derived by HKDF-SHA256
/// ([`assertion::derive_seed`]); `iss` is `assertion.issuer`, or else the
/// external scheme and the first host without a wildcard.
fn assertion_signer(
    raw: Option<RawAssertion>,
    app_id: &str,
    hosts: &[String],
    external_scheme: Option<&str>,
    sealing_keys: &[[u8; KEY_LEN]],
) -> Result<AssertionSigner, ConfigError> {
    let raw = raw.unwrap_or(RawAssertion {
        issuer: None,
        lifetime_seconds: None,
        signing_keys: Vec::new(),
    });
    let issuer = match raw.issuer {
        Some(i) => {
            let u = url("assertion.issuer", &i)?;
            if u.path_and_query != "/" || i.ends_with('/') {
                return Err(ConfigError::new(
                    "assertion.issuer",
                    "must be an origin: scheme, host and optional port, no path",
                ));
            }
            i
        }
        None => match hosts.iter().find(|h| !h.contains('*')) {
            Some(h) => format!("{}://{h}", external_scheme.unwrap_or("https")),
            None => {
                return Err(ConfigError::new(
                    "assertion.issuer",
                    "is required when every host has a wildcard (the issuer must be stable)",
                ))
            }
        },
    };
    let lifetime = raw
        .lifetime_seconds
        .unwrap_or(assertion::DEFAULT_LIFETIME_SECS);
    if !(assertion::MIN_LIFETIME_SECS..=assertion::MAX_LIFETIME_SECS).contains(&lifetime) {
        return Err(ConfigError::new(
            "assertion.lifetime_seconds",
            format!(
                "must be between {} and {}",
                assertion::MIN_LIFETIME_SECS,
                assertion::MAX_LIFETIME_SECS
            ),
        ));
    }
    let mut seeds = Vec::new();
    for (i, k) in raw.signing_keys.iter().enumerate() {
        let field = format!("assertion.signing_keys[{i}]");
        let seed = decode_key(k).ok_or_else(|| {
            ConfigError::new(
                &field,
                "must be base64 of exactly 32 bytes (an Ed25519 seed)",
            )
        })?;
        if seeds.contains(&seed) || sealing_keys.contains(&seed) {
            return Err(ConfigError::new(
                field,
                "repeats an earlier key or a sealing key",
            ));
        }
        seeds.push(seed);
    }
    if seeds.is_empty() {
        seeds = sealing_keys
            .iter()
            .map(|k| assertion::derive_seed(k, app_id))
            .collect();
    }
    let keys = seeds
        .into_iter()
        .map(SigningKey::from_seed)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ConfigError::new("assertion.signing_keys", "invalid Ed25519 seed"))?;
    AssertionSigner::new(keys, issuer, app_id.to_string(), lifetime)
        .ok_or_else(|| ConfigError::new("assertion", "no signing key"))
}

impl PreauthConfig {
    /// Parses and validates the plugin configuration; secrets given as
    /// `{"env": "NAME"}` are read from the process environment (in Envoy, the
    /// variables `vm_config.environment_variables` gives the module).
    pub fn from_json(bytes: &[u8]) -> Result<PreauthConfig, ConfigError> {
        Self::from_json_with_env(bytes, &|name| std::env::var(name).ok())
    }

    /// [`PreauthConfig::from_json`] with the environment given: `env(NAME)`
    /// is the value of variable `NAME`, `None` when it is unset.
    pub fn from_json_with_env(bytes: &[u8], env: &Env<'_>) -> Result<PreauthConfig, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        if raw.apps.is_empty() {
            return Err(ConfigError::new("apps", "must list at least one app"));
        }
        let mut apps: Vec<AppConfig> = Vec::new();
        for (i, app) in raw.apps.into_iter().enumerate() {
            let prefix = format!("apps[{i}]");
            let app = app.validate(env).map_err(|e| e.within(&prefix))?;
            for h in &app.hosts {
                if apps.iter().any(|a| a.hosts.contains(h)) {
                    return Err(ConfigError::new(
                        format!("{prefix}.hosts"),
                        format!("host `{h}` is already used by another app"),
                    ));
                }
            }
            if apps.iter().any(|a| a.id == app.id) {
                return Err(ConfigError::new(
                    format!("{prefix}.id"),
                    format!("app id `{}` is used twice", app.id),
                ));
            }
            apps.push(app);
        }
        Ok(PreauthConfig {
            apps,
            other_hosts: raw.other_hosts.unwrap_or(OtherHosts::Deny),
        })
    }

    /// The app serving `host` (the `Host`/`:authority` value as Envoy
    /// canonicalised it): its [`host_name`] (port removed, lower case)
    /// compared exactly with the configured hosts, exact names before
    /// wildcards. A configured `*.example.com` matches one label in place of
    /// `*`. Nothing else is removed: `app.example.com.` matches no app.
    pub fn app_for_host(&self, host: &str) -> Option<usize> {
        let host = host_name(host);
        let host = host.as_str();
        self.apps
            .iter()
            .position(|a| a.hosts.iter().any(|h| h == host))
            .or_else(|| {
                self.apps.iter().position(|a| {
                    a.hosts.iter().any(|h| {
                        h.strip_prefix("*.").is_some_and(|suffix| {
                            host.strip_suffix(suffix)
                                .and_then(|l| l.strip_suffix('.'))
                                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                        })
                    })
                })
            })
    }

    /// The app with id `id`.
    pub fn app_by_id(&self, id: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.id == id)
    }

    /// The request's app: the route's when it names one, else the Host's
    /// ([`crate::app`]).
    pub fn select_app(&self, route: RouteApp<'_>, host: &str) -> Chosen<usize> {
        crate::app::choose(route, |id| self.app_by_id(id), || self.app_for_host(host))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const KEY_B64: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    pub(crate) fn minimal() -> String {
        format!(
            r#"{{"apps":[{{"id":"hr","hosts":["hr.localhost"],"issuer":"http://127.0.0.1:9000",
            "client_id":"portcullis","client_secret":"s3cret","cluster":"idp",
            "sealing_keys":["{KEY_B64}"]}}]}}"#
        )
    }

    /// The minimal configuration with its secret and key read from the environment.
    fn from_env(secret: &str, key: &str) -> String {
        minimal()
            .replace(r#""s3cret""#, secret)
            .replace(&format!(r#""{KEY_B64}""#), key)
    }

    #[test]
    fn secrets_come_from_the_environment_or_the_config_names_the_variable() {
        let json = from_env(
            r#"{"env": "PORTCULLIS_CLIENT_SECRET"}"#,
            r#"{"env": "PORTCULLIS_SEALING_KEY"}"#,
        );
        let env = |name: &str| match name {
            "PORTCULLIS_CLIENT_SECRET" => Some("from-env".to_string()),
            "PORTCULLIS_SEALING_KEY" => Some(KEY_B64.to_string()),
            _ => None,
        };
        let c = PreauthConfig::from_json_with_env(json.as_bytes(), &env).unwrap();
        let o = c.apps[0].oidc.as_ref().unwrap();
        assert_eq!(o.client_secret.as_deref(), Some("from-env"));
        assert_eq!(o.client_auth, ClientAuth::ClientSecretBasic);
        // The key from the environment seals what the inline key opens.
        let inline = PreauthConfig::from_json(minimal().as_bytes()).unwrap();
        let sealed = o
            .sealer
            .seal("c", "hr", b"payload", [7; crate::seal::SEAL_RANDOM_LEN])
            .unwrap();
        let opened = inline.apps[0]
            .oidc
            .as_ref()
            .unwrap()
            .sealer
            .open("c", "hr", &sealed);
        assert_eq!(opened.unwrap(), b"payload");

        // Unset, empty, or not a variable name: refused, naming the field and the variable.
        let unset = |_: &str| None;
        let e = PreauthConfig::from_json_with_env(json.as_bytes(), &unset).unwrap_err();
        assert_eq!(e.field, "apps[0].client_secret.env");
        assert!(
            e.message.contains("`PORTCULLIS_CLIENT_SECRET` is not set"),
            "{e}"
        );
        let only_secret = |n: &str| (n == "PORTCULLIS_CLIENT_SECRET").then(|| "x".to_string());
        let e = PreauthConfig::from_json_with_env(json.as_bytes(), &only_secret).unwrap_err();
        assert_eq!(e.field, "apps[0].sealing_keys[0].env");
        assert!(e.message.contains("`PORTCULLIS_SEALING_KEY`"), "{e}");
        let empty = |_: &str| Some("  ".to_string());
        let e = PreauthConfig::from_json_with_env(json.as_bytes(), &empty).unwrap_err();
        assert!(e.message.contains("is empty"), "{e}");
        let wrong_key = |_: &str| Some("c2hvcnQ=".to_string());
        let e = PreauthConfig::from_json_with_env(json.as_bytes(), &wrong_key).unwrap_err();
        assert_eq!(e.field, "apps[0].sealing_keys[0]");
        let bad_name = from_env(r#"{"env": "NOT A NAME"}"#, &format!(r#""{KEY_B64}""#));
        let e = PreauthConfig::from_json_with_env(bad_name.as_bytes(), &env).unwrap_err();
        assert_eq!(e.field, "apps[0].client_secret.env");
        for other in [r#"{"env": "A", "file": "b"}"#, r#"{"file": "b"}"#, "42"] {
            let json = from_env(other, &format!(r#""{KEY_B64}""#));
            let e = PreauthConfig::from_json_with_env(json.as_bytes(), &env).unwrap_err();
            assert_eq!(e.field, "apps[0].client_secret", "{other}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = PreauthConfig::from_json(minimal().as_bytes()).unwrap();
        let o = c.apps[0].oidc.as_ref().unwrap();
        assert_eq!(o.skew_secs, 60);
        assert_eq!(
            o.algorithms,
            vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::PS256,
                Algorithm::EdDSA
            ]
        );
        assert_eq!(o.client_auth, ClientAuth::ClientSecretBasic);
        assert_eq!(o.cookie.name, "__Host-portcullis");
        assert!(o.cookie.secure && o.cookie.http_only && !o.cookie.persistent);
        assert_eq!(o.scopes, vec!["openid", "profile", "email"]);
        match &o.endpoints {
            Endpoints::Discover(u) => assert_eq!(
                u.to_string(),
                "http://127.0.0.1:9000/.well-known/openid-configuration"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{o:?}").contains("s3cret"));
    }

    fn with(extra: &str) -> Result<PreauthConfig, ConfigError> {
        let base = minimal();
        let json = base.replacen(r#""id":"hr","#, &format!(r#""id":"hr",{extra},"#), 1);
        PreauthConfig::from_json(json.as_bytes())
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#""colour":"red""#, "apps[0].colour"),
            (
                r#""allowed_algorithms":["none"]"#,
                "apps[0].allowed_algorithms[0]",
            ),
            (
                r#""allowed_algorithms":["HS256"]"#,
                "apps[0].allowed_algorithms[0]",
            ),
            (r#""clock_skew_seconds":301"#, "apps[0].clock_skew_seconds"),
            (r#""mode":"magic""#, "apps[0].mode"),
            (r#""cookie":{"nmae":"x"}"#, "apps[0].cookie.nmae"),
            (r#""cookie":{"name":"a b"}"#, "apps[0].cookie.name"),
            (
                r#""claim_headers":{"bad header":"sub"}"#,
                "apps[0].claim_headers.bad header",
            ),
            (
                r#""unauthenticated_paths":["nope"]"#,
                "apps[0].unauthenticated_paths[0]",
            ),
            (
                r#""unauthenticated_paths":["/.auth"]"#,
                "apps[0].unauthenticated_paths[0]",
            ),
            (
                r#""unauthenticated_paths":["/.AUTH/x"]"#,
                "apps[0].unauthenticated_paths[0]",
            ),
            (
                r#""unauthenticated_paths":["/x","/public/../admin"]"#,
                "apps[0].unauthenticated_paths[1]",
            ),
            (
                r#""unauthenticated_paths":["/public;x"]"#,
                "apps[0].unauthenticated_paths[0]",
            ),
            (
                r#""unauthenticated_paths":["/public%2fx"]"#,
                "apps[0].unauthenticated_paths[0]",
            ),
            (
                r#""path_rules":{"allow_encoded_slashes":true}"#,
                "apps[0].path_rules.allow_encoded_slashes",
            ),
            (
                r#""mode":"passthrough","path_rules":{}"#,
                "apps[0].path_rules",
            ),
            (r#""client_auth":"none""#, "apps[0].client_secret"),
            (
                r#""claim_headers":{"X-Real-IP":"sub"}"#,
                "apps[0].claim_headers.X-Real-IP",
            ),
            (
                r#""claim_headers":{"x-portcullis-app":"sub"}"#,
                "apps[0].claim_headers.x-portcullis-app",
            ),
            (
                r#""discovery":true,"token_endpoint":"http://x/token""#,
                "apps[0].discovery",
            ),
            (
                r#""token_endpoint":"http://x/token""#,
                "apps[0].authorization_endpoint",
            ),
        ];
        for (extra, field) in cases {
            let e = with(extra).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
        let bad_key = minimal().replace(KEY_B64, "AAAA");
        let e = PreauthConfig::from_json(bad_key.as_bytes()).unwrap_err();
        assert_eq!(e.field, "apps[0].sealing_keys[0]");
        let e = PreauthConfig::from_json(br#"{"apps":[]}"#).unwrap_err();
        assert_eq!(e.field, "apps");
    }

    #[test]
    fn passthrough_needs_nothing_else() {
        let c = PreauthConfig::from_json(
            br#"{"apps":[{"id":"open","hosts":["open.localhost"],"mode":"passthrough"}]}"#,
        )
        .unwrap();
        assert!(c.apps[0].oidc.is_none());
    }

    #[test]
    fn explicit_endpoints_and_insecure_cookie() {
        let c = with(
            r#""discovery":false,"authorization_endpoint":"http://idp/auth",
            "token_endpoint":"http://idp/token","jwks_uri":"http://idp/jwks",
            "cookie":{"secure":false,"persistent":true}"#,
        )
        .unwrap();
        let o = c.apps[0].oidc.as_ref().unwrap();
        assert!(matches!(o.endpoints, Endpoints::Explicit(_)));
        assert_eq!(o.cookie.name, "portcullis");
        assert!(o.cookie.persistent);
        let e = with(r#""discovery":false,"token_endpoint":"http://idp/token""#).unwrap_err();
        assert_eq!(e.field, "apps[0].authorization_endpoint");
    }

    #[test]
    fn hosts_select_apps() {
        let json = r#"{"apps":[{"id":"a","hosts":["a.localhost","*.wild.test"],"mode":"passthrough"},
            {"id":"b","hosts":["B.localhost"],"mode":"passthrough"}]}"#;
        let c = PreauthConfig::from_json(json.as_bytes()).unwrap();
        assert_eq!(c.app_for_host("a.localhost:10443"), Some(0));
        assert_eq!(c.app_for_host("b.LOCALHOST"), Some(1));
        assert_eq!(c.app_for_host("x.wild.test"), Some(0));
        assert_eq!(c.app_for_host("x.y.wild.test"), None);
        assert_eq!(c.app_for_host("wild.test"), None);
        assert_eq!(c.app_for_host("c.localhost"), None);
        let dup = r#"{"apps":[{"id":"a","hosts":["x"],"mode":"passthrough"},
            {"id":"b","hosts":["x"],"mode":"passthrough"}]}"#;
        assert_eq!(
            PreauthConfig::from_json(dup.as_bytes()).unwrap_err().field,
            "apps[1].hosts"
        );
    }

    #[test]
    fn hosts_are_compared_exactly_as_envoy_routes_them() {
        let json = r#"{"apps":[{"id":"wild","hosts":["*.localhost"],"mode":"passthrough"},
            {"id":"admin","hosts":["admin.localhost"],"mode":"passthrough"}]}"#;
        let c = PreauthConfig::from_json(json.as_bytes()).unwrap();
        // Exact names before wildcards, whatever the order of the apps.
        assert_eq!(c.app_for_host("admin.localhost"), Some(1));
        assert_eq!(c.app_for_host("ADMIN.localhost:10000"), Some(1));
        assert_eq!(c.app_for_host("other.localhost"), Some(0));
        // Trailing dots are never removed here: Envoy strips one
        // (`strip_trailing_host_dot`) before routing, and whatever is left
        // matches no app.
        for spelling in [
            "admin.localhost.",
            "admin.localhost.:10000",
            "admin.localhost..",
            "admin.localhost..:10000",
            "admin.localhost,other",
        ] {
            assert_ne!(c.app_for_host(spelling), Some(1), "{spelling}");
        }
        assert_eq!(c.app_for_host("admin.localhost."), None);
        // The route wins; a route naming an unknown app is refused.
        assert_eq!(
            c.select_app(RouteApp::Named("wild"), "admin.localhost"),
            Chosen::Route {
                app: 0,
                host_choice: Some(1)
            }
        );
        assert_eq!(
            c.select_app(RouteApp::Named("admn"), "admin.localhost"),
            Chosen::UnknownRoute
        );
        assert_eq!(
            c.select_app(RouteApp::Absent, "admin.localhost"),
            Chosen::Host(1)
        );
        assert_eq!(
            c.select_app(RouteApp::Absent, "admin.localhost."),
            Chosen::None
        );
        for bad in [
            "admin.localhost.",
            "a..b",
            "*",
            "a.*.b",
            "[::1]",
            "a:80",
            "",
        ] {
            let json =
                format!(r#"{{"apps":[{{"id":"a","hosts":["{bad}"],"mode":"passthrough"}}]}}"#);
            assert_eq!(
                PreauthConfig::from_json(json.as_bytes()).unwrap_err().field,
                "apps[0].hosts[0]",
                "{bad}"
            );
        }
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
