//! The cookie filter's decisions: keep the proxy's cookies away from apps,
//! harden the apps' cookies, and translate internal URLs to external ones in
//! headers and (opt-in) bodies.
//!
//! - [`CookieFilterConfig::from_json`] parses and validates the plugin
//!   configuration (see the README for the language).
//! - [`CookieFilterConfig::select`] picks the app: by the route's app id
//!   (the entry's `name`), else by `Host` and path ([`crate::app`]).
//! - Request: [`CookieFilterConfig::strip_request_cookies`].
//! - Response: [`CookieFilterConfig::apply_set_cookie`],
//!   [`AppPolicy::translate_header`], [`BodyPolicy::plan`] and
//!   [`BodyRewriter::push`].

pub mod body;
pub mod names;
pub mod request;
pub mod set_cookie;
pub mod stage;
pub mod url;

pub use body::{BodyMatcher, BodyPlan, BodyPolicy, BodyRewriter, SkipReason};
pub use names::{ProxyCookieNames, DEFAULT_PROXY_COOKIE_NAME, DEFAULT_PROXY_COOKIE_PREFIX};
pub use request::{strip_proxy_cookies, strip_proxy_cookies_bytes, CookieHeaderAction};
pub use set_cookie::{apply_set_cookie, DomainPolicy, SameSite, SetCookieOutcome, SetCookiePolicy};
pub use url::{Endpoint, Scheme, UrlMapping};

use crate::app::{host_name, Chosen, RouteApp};
use crate::config::{parse_json, ConfigError};
use serde::Deserialize;

/// The content types translated by default when body translation is on.
pub const DEFAULT_BODY_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/css",
    "application/javascript",
    "text/javascript",
    "application/json",
];

/// The default limit of translated body bytes (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy_cookies: RawProxyCookies,
    #[serde(default)]
    apps: Vec<RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyCookies {
    names: Option<Vec<String>>,
    prefixes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    internal_url: String,
    external_url: String,
    #[serde(default)]
    set_cookie: RawSetCookie,
    #[serde(default = "default_true")]
    translate_headers: bool,
    #[serde(default)]
    body: RawBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetCookie {
    secure: Option<bool>,
    #[serde(default)]
    http_only: bool,
    same_site: Option<RawSameSite>,
    #[serde(default)]
    domain: RawDomain,
    #[serde(default = "default_true")]
    map_path: bool,
}

impl Default for RawSetCookie {
    fn default() -> Self {
        Self {
            secure: None,
            http_only: false,
            same_site: None,
            domain: RawDomain::default(),
            map_path: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum RawSameSite {
    #[serde(alias = "strict")]
    Strict,
    #[serde(alias = "lax")]
    Lax,
    #[serde(alias = "none")]
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDomain {
    #[default]
    Rewrite,
    Drop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    #[serde(default)]
    enabled: bool,
    content_types: Option<Vec<String>>,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default)]
    request_identity_encoding: bool,
}

impl Default for RawBody {
    fn default() -> Self {
        Self {
            enabled: false,
            content_types: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_identity_encoding: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// One published app's cookie and translation policy.
#[derive(Debug, Clone)]
pub struct AppPolicy {
    /// A name for logs (defaults to the external URL).
    pub name: String,
    /// The internal and external URLs.
    pub mapping: UrlMapping,
    /// The `Set-Cookie` hardening.
    pub set_cookie: SetCookiePolicy,
    /// Translate `Location`, `Content-Location`, `Refresh` and `Link`.
    pub translate_headers: bool,
    /// Body translation, when enabled.
    pub body: Option<BodyPolicy>,
}

impl AppPolicy {
    /// Translates one response header when header translation is on and the
    /// header is one that carries URLs. `None` means leave it unchanged.
    pub fn translate_header(&self, name: &str, value: &str) -> Option<String> {
        if self.translate_headers {
            self.mapping.translate_header(name, value)
        } else {
            None
        }
    }

    /// True when the request to the app should carry `Accept-Encoding: identity`.
    pub fn wants_identity_encoding(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(|b| b.request_identity_encoding)
    }
}

/// The validated cookie filter configuration.
#[derive(Debug, Clone, Default)]
pub struct CookieFilterConfig {
    /// The proxy's own cookie names and prefixes.
    pub proxy_cookies: ProxyCookieNames,
    /// The published apps.
    pub apps: Vec<AppPolicy>,
}

fn check_media_type(field: &str, t: &str) -> Result<String, ConfigError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((a, b)) if token(a) && token(b) => Ok(t.to_ascii_lowercase()),
        _ => Err(ConfigError::new(
            field,
            format!("`{t}` is not a media type such as `text/html` (no parameters)"),
        )),
    }
}

impl CookieFilterConfig {
    /// Parses and validates the plugin configuration (empty means defaults:
    /// strip the default proxy cookies, no apps).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        let proxy_cookies = match (&raw.proxy_cookies.names, &raw.proxy_cookies.prefixes) {
            (None, None) => ProxyCookieNames::default(),
            (names, prefixes) => ProxyCookieNames::new(
                "proxy_cookies",
                names.as_deref().unwrap_or_default(),
                prefixes.as_deref().unwrap_or_default(),
            )?,
        };
        let mut apps: Vec<AppPolicy> = Vec::with_capacity(raw.apps.len());
        for (i, app) in raw.apps.into_iter().enumerate() {
            let policy = Self::validate_app(app).map_err(|e| e.within(&format!("apps[{i}]")))?;
            if let Some(other) = apps.iter().position(|a| {
                a.mapping.external.host == policy.mapping.external.host
                    && a.mapping.external.base == policy.mapping.external.base
            }) {
                return Err(ConfigError::new(
                    format!("apps[{i}].external_url"),
                    format!("is already published by apps[{other}]"),
                ));
            }
            // The route names an app by this name: one entry per app.
            if let Some(other) = apps.iter().position(|a| a.name == policy.name) {
                return Err(ConfigError::new(
                    format!("apps[{i}].name"),
                    format!("`{}` is already the name of apps[{other}]", policy.name),
                ));
            }
            apps.push(policy);
        }
        Ok(Self {
            proxy_cookies,
            apps,
        })
    }

    fn validate_app(raw: RawApp) -> Result<AppPolicy, ConfigError> {
        let internal = Endpoint::parse("internal_url", &raw.internal_url)?;
        let external = Endpoint::parse("external_url", &raw.external_url)?;
        let mapping = UrlMapping { internal, external };
        let name = match raw.name {
            Some(n) if n.trim().is_empty() => {
                return Err(ConfigError::new("name", "must not be empty"));
            }
            Some(n) => n,
            None => mapping.external.origin() + &mapping.external.base,
        };
        let sc = raw.set_cookie;
        let set_cookie = SetCookiePolicy {
            secure: sc
                .secure
                .unwrap_or(mapping.external.scheme == Scheme::Https),
            http_only: sc.http_only,
            same_site: sc.same_site.map(|s| match s {
                RawSameSite::Strict => SameSite::Strict,
                RawSameSite::Lax => SameSite::Lax,
                RawSameSite::None => SameSite::None,
            }),
            domain: match sc.domain {
                RawDomain::Rewrite => DomainPolicy::Rewrite,
                RawDomain::Drop => DomainPolicy::Drop,
            },
            map_path: sc.map_path,
        };
        let b = raw.body;
        let mut content_types = Vec::new();
        match &b.content_types {
            None => content_types.extend(DEFAULT_BODY_CONTENT_TYPES.iter().map(|t| t.to_string())),
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    content_types.push(check_media_type(&format!("body.content_types[{i}]"), t)?);
                }
            }
        }
        if b.enabled && content_types.is_empty() {
            return Err(ConfigError::new(
                "body.content_types",
                "must name at least one media type when body translation is enabled",
            ));
        }
        if b.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "body.max_body_bytes",
                "must be greater than 0",
            ));
        }
        if b.request_identity_encoding && !b.enabled {
            return Err(ConfigError::new(
                "body.request_identity_encoding",
                "only makes sense with `body.enabled: true`",
            ));
        }
        let body = b.enabled.then(|| BodyPolicy {
            content_types,
            max_body_bytes: b.max_body_bytes,
            request_identity_encoding: b.request_identity_encoding,
            matcher: BodyMatcher::new(&mapping),
        });
        Ok(AppPolicy {
            name,
            mapping,
            set_cookie,
            translate_headers: raw.translate_headers,
            body,
        })
    }

    /// The request's app ([`crate::app`]): the entry whose `name` is the
    /// app the route names; without route metadata, [`Self::select_app`].
    /// A route naming an app no entry has is [`Chosen::UnknownRoute`]: the
    /// app's cookies would go unhardened and its URLs untranslated.
    pub fn select(&self, route: RouteApp<'_>, authority: &str, path: &str) -> Chosen<usize> {
        crate::app::choose(
            route,
            |id| self.apps.iter().position(|a| a.name == id),
            || {
                self.select_app(authority, path)
                    .and_then(|a| self.apps.iter().position(|b| std::ptr::eq(a, b)))
            },
        )
    }

    /// Picks the app for a request by its `Host`/`:authority` (host compared
    /// case-insensitively, port ignored, nothing else removed: a trailing dot
    /// matches no app) and, among apps on the same host, the longest external
    /// path prefix that contains `path`.
    pub fn select_app(&self, authority: &str, path: &str) -> Option<&AppPolicy> {
        let host = host_name(authority);
        let path = crate::path::strip_query(path);
        self.apps
            .iter()
            .filter(|a| a.mapping.external.host == host)
            .filter(|a| {
                let base = a.mapping.external.base.as_str();
                match path.strip_prefix(base) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            })
            .max_by_key(|a| a.mapping.external.base.len())
    }

    /// Removes the proxy's cookies from the request's `Cookie` header values.
    pub fn strip_request_cookies(&self, values: &[&str]) -> (CookieHeaderAction, usize) {
        strip_proxy_cookies(&self.proxy_cookies, values)
    }

    /// [`Self::strip_request_cookies`] on raw header bytes.
    pub fn strip_request_cookies_bytes(
        &self,
        values: &[&[u8]],
    ) -> (CookieHeaderAction<Vec<u8>>, usize) {
        strip_proxy_cookies_bytes(&self.proxy_cookies, values)
    }

    /// Applies the proxy-name check and the app's policy (if any) to one
    /// `Set-Cookie` value.
    pub fn apply_set_cookie(&self, app: Option<&AppPolicy>, value: &str) -> SetCookieOutcome {
        apply_set_cookie(
            &self.proxy_cookies,
            app.map(|a| (&a.set_cookie, &a.mapping)),
            value,
        )
    }
}

#[cfg(test)]
mod tests;
