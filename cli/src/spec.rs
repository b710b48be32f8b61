//! `portcullis.yaml` as written: the providers, the apps and where Envoy
//! listens. Unknown fields are refused with their path; the filters' own
//! fields are passed through to the stage they belong to and judged there by
//! the stage's own parser.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A `portcullis.yaml` error (or a stage's refusal, mapped back to the field
/// of `portcullis.yaml` that produced it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Dotted path in `portcullis.yaml` (`apps[0].hosts[1]`), empty for the whole file.
    pub field: String,
    /// What is wrong, for humans.
    pub message: String,
}

impl SpecError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "portcullis.yaml: {}", self.message)
        } else {
            write!(
                f,
                "portcullis.yaml: field `{}`: {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for SpecError {}

/// Which modules Envoy loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Four modules, one per stage (robots, preauth, conditional access, cookie).
    #[default]
    Split,
    /// One module (`portcullis.wasm`) with a section per stage.
    AllInOne,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// `split` (default) or `all-in-one`.
    #[serde(default)]
    pub layout: Layout,
    /// Directory of the `.wasm` modules, as Envoy resolves it (relative to its
    /// working directory). Default `target/wasm32-wasip1/release`.
    #[serde(default)]
    pub modules: Option<String>,
    /// Envoy's admin address (default `127.0.0.1:9901`).
    #[serde(default)]
    pub admin: Option<String>,
    /// Where Envoy listens.
    pub listeners: Listeners,
    /// OpenID providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, Provider>,
    /// The edge service, for apps reached through connectors.
    #[serde(default)]
    pub edge: Option<Edge>,
    /// Sealing keys of every app that gives none (`apps[].sealing_keys`).
    #[serde(default)]
    pub sealing_keys: Vec<Value>,
    /// The robots stage's configuration (default `{}`).
    #[serde(default)]
    pub robots: Option<Value>,
    /// The conditional-access stage's configuration without `apps` (from
    /// `apps[].access`); its `policies` are added to the apps' own.
    #[serde(default)]
    pub conditional_access: Map<String, Value>,
    /// The cookie stage's configuration without `apps` (from the apps).
    #[serde(default)]
    pub cookie: Map<String, Value>,
    /// The published apps, in the order Envoy matches their host names.
    pub apps: Vec<App>,
}

/// Envoy's listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Plain HTTP listener address (`127.0.0.1:10000`).
    #[serde(default)]
    pub http: Option<String>,
    /// HTTPS listener.
    #[serde(default)]
    pub https: Option<HttpsListener>,
}

/// An HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsListener {
    /// Address (`127.0.0.1:10443`).
    pub address: String,
    /// PEM certificate chain file, as Envoy resolves it.
    pub certificate: String,
    /// PEM private key file, as Envoy resolves it.
    pub private_key: String,
}

/// Fields of a preauth app entry that may be set on a provider (and
/// overridden per app).
pub const PROVIDER_FIELDS: &[&str] = &[
    "client_auth",
    "scopes",
    "discovery",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "end_session_endpoint",
    "allowed_algorithms",
    "clock_skew_seconds",
    "token_timeout_ms",
    "jwks_refresh_seconds",
    "claim_headers",
    "groups_claim",
];

/// Fields of a preauth app entry that an app may set.
pub const APP_PREAUTH_FIELDS: &[&str] = &[
    "cookie",
    "max_session_seconds",
    "external_scheme",
    "policy_groups",
    "policy_claims",
    "unauthenticated_paths",
    "path_rules",
    "bearer",
    "post_logout_redirect_uri",
    "assertion",
];

/// Fields of a cookie-stage app entry that an app may set.
pub const APP_COOKIE_FIELDS: &[&str] = &["set_cookie", "translate_headers", "body"];

/// An OpenID provider.
#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    /// Exactly the `iss` of its tokens and discovery document.
    pub issuer: String,
    /// The Envoy cluster that reaches it (default `oidc_<name>`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// `host:port` Envoy connects to (default: the issuer's host and port).
    #[serde(default)]
    pub address: Option<String>,
    /// TLS to the provider (used when the issuer is `https`).
    #[serde(default)]
    pub tls: Option<ProviderTls>,
    /// Further hosts (`host` or `host:port`, the issuer's scheme) the token
    /// endpoint and the JWKS are on (Google: `oauth2.googleapis.com`,
    /// `www.googleapis.com`). With any, the provider's cluster routes each
    /// call by its host to a cluster of that host, and refuses other hosts.
    #[serde(default)]
    pub endpoint_hosts: Vec<String>,
    /// The client registered for Portcullis.
    pub client_id: String,
    /// Its secret: a string, `{env: NAME}` (read by the filter from its
    /// environment) or `{file: PATH}` (read at render time).
    #[serde(default)]
    pub client_secret: Option<Value>,
    /// Further preauth fields ([`PROVIDER_FIELDS`]).
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// TLS settings of a provider cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTls {
    /// CA bundle Envoy verifies the provider with (default the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Server name sent and verified (default the issuer's host).
    #[serde(default)]
    pub sni: Option<String>,
}

/// How Envoy reaches the edge service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// The edge's Unix socket for Envoy (`listen.envoy_socket` of the edge).
    #[serde(default)]
    pub socket: Option<String>,
    /// Or a TCP address (the edge's `insecure_envoy_h2c_tcp`, loopback only).
    #[serde(default)]
    pub address: Option<String>,
    /// The edge's configuration file (`edge.json`) without `apps`, which the
    /// apps reached through connectors fill.
    pub config: Map<String, Value>,
}

/// A published app.
#[derive(Debug, Clone, Deserialize)]
pub struct App {
    /// The app id every stage and the edge know it by.
    pub id: String,
    /// Its external host names (Envoy's domains `name` and `name:*`).
    pub hosts: Vec<String>,
    /// `oidc` (default) or `passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The provider (a key of `providers`; default the only one).
    #[serde(default)]
    pub provider: Option<String>,
    /// Sealing keys (default the top-level `sealing_keys`).
    #[serde(default)]
    pub sealing_keys: Option<Vec<Value>>,
    /// The URL users open (the cookie stage's `external_url`; default the first
    /// host on the HTTPS listener's port, else on the HTTP one's).
    #[serde(default)]
    pub external_url: Option<String>,
    /// A URL Envoy reaches the app at directly (`http://10.0.0.5:8080`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// CA bundle for an `https` upstream (default the system bundle).
    #[serde(default)]
    pub upstream_ca_file: Option<String>,
    /// Or the app is reached through a connector group: the edge's app entry
    /// (`group`, `internal_url`, and any further field of it).
    #[serde(default)]
    pub connector: Option<Map<String, Value>>,
    /// The conditional-access assignment (`{open: true}`, `{groups: [..]}`, `{users: [..]}`).
    #[serde(default)]
    pub access: Option<Value>,
    /// Conditional-access policies of this app (their `apps` is this app).
    #[serde(default)]
    pub policies: Vec<Map<String, Value>>,
    /// Further fields ([`APP_PREAUTH_FIELDS`], [`APP_COOKIE_FIELDS`], and
    /// [`PROVIDER_FIELDS`] to override the provider's).
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// Parses `portcullis.yaml` text; errors name the field by its path.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        SpecError::new(field, e.into_inner().to_string())
    })
}
