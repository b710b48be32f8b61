//! Configuration files of the edge service and the connector (JSON, unknown fields
//! refused, validated into typed settings; every error names the field at fault).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use portcullis_core::config::{parse_json, ConfigError};
use serde::{Deserialize, Serialize};

/// Reads and validates a configuration file; errors name the file and the field.
fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))
}

// ---------------------------------------------------------------- edge

/// The edge configuration file, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfigFile {
    /// Directory for the connector CA (created if missing).
    pub state_dir: PathBuf,
    /// Listen addresses.
    #[serde(default)]
    pub listen: EdgeListen,
    /// Names (DNS or IP) in the edge's TLS server certificate.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
    /// Tunnel addresses handed to connectors at registration (default: the tunnel listen address).
    #[serde(default)]
    pub advertised_tunnel_addresses: Vec<String>,
    /// Request header that names the published app.
    #[serde(default = "default_app_header")]
    pub app_header: String,
    /// Peers whose `X-Forwarded-*` headers and request id are trusted on Envoy's
    /// TCP listeners: addresses or CIDRs (`10.0.0.0/8`, `fd00::/8`).
    #[serde(default = "default_trusted_proxies")]
    pub trusted_proxies: Vec<String>,
    /// The proxy's own cookies (never forwarded to apps): the same names and
    /// prefixes as the cookie filter's `proxy_cookies` (default `__Host-portcullis`,
    /// prefix `portcullis`).
    #[serde(default)]
    pub proxy_cookies: ProxyCookiesConfig,
    /// Where the state every edge replica shares lives (connector registry,
    /// revocations, admin-token uses).
    #[serde(default)]
    pub store: StoreConfig,
    /// Limits of the exposed ports (time-outs, connection caps, registration rate).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Taking failing connectors out of rotation.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Rules for admin tokens at registration.
    pub admin: AdminConfig,
    /// Connector groups.
    pub groups: Vec<String>,
    /// Published apps reached through connectors.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Validity of issued connector certificates, in days.
    #[serde(default = "default_cert_days")]
    pub client_cert_days: u32,
    /// Absolute lifetime of a connector identity from its registration, in days:
    /// renewals never issue a certificate past it; then the connector registers again.
    #[serde(default = "default_max_lifetime_days")]
    pub connector_max_lifetime_days: u32,
    /// How often connectors should refresh their configuration, in seconds.
    #[serde(default = "default_refresh")]
    pub config_refresh_seconds: u64,
    /// HTTP/2 keepalive ping interval on tunnels, in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_seconds: u64,
    /// Time a keepalive ping may go unanswered before the tunnel is dropped, in seconds.
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout_seconds: u64,
    /// Grace period for requests in flight at shutdown, in seconds.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
    /// How long a request waits for a tunnel of its group when none is up (a
    /// connector reconnecting, the edge just restarted), in milliseconds; 0 = none.
    #[serde(default = "default_connector_wait_ms")]
    pub connector_wait_ms: u64,
    /// Largest request header block accepted from Envoy, in KiB (at least Envoy's
    /// default `max_request_headers_kb`, 60).
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// Further identity headers to strip from every request (besides the default
    /// claim headers, every app's `assertion.claim_headers` and every `x-portcullis-*`).
    #[serde(default)]
    pub identity_headers: Vec<String>,
}

/// Listen addresses of the edge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeListen {
    /// HTTPS registration endpoint.
    #[serde(default = "default_registration_listen")]
    pub registration: String,
    /// Mutual-TLS listener for connector tunnels and their API calls.
    #[serde(default = "default_tunnel_listen")]
    pub tunnel: String,
    /// Unix socket for Envoy's upstream traffic (HTTP/1.1 and h2c). Default:
    /// `envoy.sock` in the state directory, unless `envoy_mtls` or
    /// `insecure_envoy_h2c_tcp` is set.
    #[serde(default)]
    pub envoy_socket: Option<PathBuf>,
    /// File mode of `envoy_socket`, octal (default `"0660"`: owner and group).
    #[serde(default)]
    pub envoy_socket_mode: Option<String>,
    /// Mutual-TLS TCP listener for Envoy's upstream traffic (HTTP/2 or HTTP/1.1).
    #[serde(default)]
    pub envoy_mtls: Option<EnvoyMtls>,
    /// Plain h2c / HTTP/1.1 on TCP for Envoy's upstream traffic: anyone who can
    /// reach this address can speak to the edge as Envoy. Only for a loopback
    /// address on a machine of one tenant; the edge warns at start-up.
    #[serde(default)]
    pub insecure_envoy_h2c_tcp: Option<String>,
    /// Replaced by `envoy_socket`, `envoy_mtls` and `insecure_envoy_h2c_tcp`; refused.
    #[serde(default, skip_serializing)]
    pub local: Option<String>,
    /// Prometheus `/metrics` (omit or null to disable).
    #[serde(default = "default_edge_metrics")]
    pub metrics: Option<String>,
}

impl Default for EdgeListen {
    fn default() -> Self {
        Self {
            registration: default_registration_listen(),
            tunnel: default_tunnel_listen(),
            envoy_socket: None,
            envoy_socket_mode: None,
            envoy_mtls: None,
            insecure_envoy_h2c_tcp: None,
            local: None,
            metrics: default_edge_metrics(),
        }
    }
}

/// The edge's mutual-TLS listener for Envoy: its server certificate, and the CA
/// that Envoy's client certificate must chain to (never the connector CA, so no
/// connector certificate can pass).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyMtls {
    /// Listen address.
    pub address: String,
    /// PEM certificate chain of the edge's server certificate.
    pub cert_file: PathBuf,
    /// PEM private key of it.
    pub key_file: PathBuf,
    /// PEM CA bundle that Envoy's client certificate must chain to.
    pub client_ca_file: PathBuf,
}

/// How the edge checks an app's identity assertion (`X-Portcullis-Jwt-Assertion`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// Expected `iss`: the app's external origin as preauth signs it.
    pub issuer: String,
    /// Expected `aud` (default: the app name).
    #[serde(default)]
    pub audience: Option<String>,
    /// The app's published keys, e.g. `http://127.0.0.1:10000/.auth/jwks` through Envoy.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// `Host` for `jwks_url` (default: the URL's own), to ask Envoy for the app's host.
    #[serde(default)]
    pub jwks_host: Option<String>,
    /// CA bundle for an https `jwks_url`.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Keys given inline (a JWKS document), besides or instead of `jwks_url`.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Refuse requests without a valid assertion (`assertion_required`, 401) instead of
    /// sending them on anonymously. Off by default: unauthenticated paths have none.
    #[serde(default)]
    pub required: bool,
    /// Clock skew allowed on `iat` and `exp`, in seconds (at most 300).
    #[serde(default = "default_assertion_skew")]
    pub clock_skew_seconds: u64,
    /// How often the keys are fetched again, in seconds.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Header → claim mapping set from a valid assertion (default: preauth's
    /// `x-forwarded-user` sub, `-email`, `-groups`, `-preferred-username`).
    #[serde(default)]
    pub claim_headers: Option<BTreeMap<String, String>>,
}

/// Admin-token rules for registration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// JWKS file with the provider's signing keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (http, or https with `jwks_ca_file`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA bundle for an https `jwks_url`.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: String,
    /// Required audience (one of `aud`).
    pub audience: String,
    /// Claim holding the tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Required tenant (omit to not check).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Claim holding roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Any of these roles makes the holder an admin.
    #[serde(default)]
    pub admin_roles: Vec<String>,
    /// Claim holding groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Any of these groups makes the holder an admin.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`/`iat`, in seconds (at most 60).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// How many connectors one admin token may register (by its `jti`, or its
    /// hash without one), counted in the shared store until the token expires.
    #[serde(default = "default_registrations_per_token")]
    pub registrations_per_token: u32,
}

/// The proxy's own cookie names and prefixes (as in the cookie filter).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCookiesConfig {
    /// Exact names (a `__Host-`/`__Secure-` prefix is ignored when comparing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Name prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<String>>,
}

impl ProxyCookiesConfig {
    /// The validated names (`field` names the configuration field in errors).
    pub fn validate(
        &self,
        field: &str,
    ) -> Result<portcullis_core::cookies::ProxyCookieNames, ConfigError> {
        match (&self.names, &self.prefixes) {
            (None, None) => Ok(portcullis_core::cookies::ProxyCookieNames::default()),
            (n, p) => portcullis_core::cookies::ProxyCookieNames::new(
                field,
                n.as_deref().unwrap_or_default(),
                p.as_deref().unwrap_or_default(),
            ),
        }
    }
}

/// The shared store: `embedded` (a file in the state directory; one edge process)
/// or `redis` (every replica of a fleet on one server).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default) or `redis`.
    #[serde(default = "default_store_backend")]
    pub backend: String,
    /// Embedded: the database file (default `<state_dir>/store.redb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Redis: `redis://[user:password@]host:port[/db]` or `redis+unix:///path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Redis: prefix of every key (default `portcullis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Time allowed to reach the store at start-up and for each operation, ms.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A URL with its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: default_store_backend(),
            path: None,
            url: None,
            prefix: None,
            timeout_ms: default_store_timeout_ms(),
        }
    }
}

/// Limits of the edge's exposed ports. Connections that have not authenticated
/// (TLS handshakes on the tunnel port, everything on the registration port) share
/// a budget apart from authenticated tunnels, and Envoy's listener has neither
/// limit, so neither a flood of idle sockets nor slow handshakes lock out real
/// connectors or Envoy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time a client has to finish its TLS handshake (tunnel and registration ports), ms.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Time a client of the registration port and the connectors' API has to send
    /// a request's headers (also the idle time allowed between requests), ms.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Unauthenticated connections at once, all sources (default: a quarter of
    /// the descriptor limit).
    #[serde(default)]
    pub max_pending_connections: Option<usize>,
    /// Unauthenticated connections at once from one source address.
    #[serde(default = "default_pending_per_source")]
    pub max_pending_per_source: usize,
    /// Authenticated tunnels and API connections at once (default: half of the
    /// descriptor limit).
    #[serde(default)]
    pub max_tunnels: Option<usize>,
    /// Authenticated connections at once of one connector id.
    #[serde(default = "default_tunnels_per_connector")]
    pub max_tunnels_per_connector: usize,
    /// Requests to the registration port (registration and admin API) per minute
    /// from one source address (a burst of a third of it, at least 5, is allowed).
    #[serde(default = "default_registration_rate")]
    pub registrations_per_minute_per_source: u32,
    /// Registration-port requests handled at once (token checks, signing); more are
    /// refused with 503 `registration_busy`.
    #[serde(default = "default_registration_concurrency")]
    pub max_concurrent_registrations: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: default_handshake_timeout_ms(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            max_pending_connections: None,
            max_pending_per_source: default_pending_per_source(),
            max_tunnels: None,
            max_tunnels_per_connector: default_tunnels_per_connector(),
            registrations_per_minute_per_source: default_registration_rate(),
            max_concurrent_registrations: default_registration_concurrency(),
        }
    }
}

/// Outlier ejection: a connector whose tunnels keep failing is taken out of
/// rotation for a while (longer each time), as long as another one is healthy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive gateway errors (tunnel failures, 502/503/504) that eject a connector.
    #[serde(default = "default_consecutive_errors")]
    pub consecutive_errors: u32,
    /// First ejection, ms; each further ejection doubles it.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// Longest ejection, ms.
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_errors: default_consecutive_errors(),
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
        }
    }
}

/// One published app reached through a connector group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App name, as sent in the app header.
    pub name: String,
    /// Connector group serving it.
    pub group: String,
    /// Backend URL seen from the connector (`http://` or `https://`).
    pub internal_url: String,
    /// Time allowed to the backend for its response headers, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// CA bundle (PEM file on the edge) that the backend's certificate must chain to.
    #[serde(default)]
    pub backend_ca_file: Option<PathBuf>,
    /// SHA-256 hashes of allowed backend public keys (SPKI), base64 or hex.
    #[serde(default)]
    pub spki_sha256: Vec<String>,
    /// Send the client's Host to the backend instead of the internal URL's host.
    #[serde(default)]
    pub preserve_host: bool,
    /// The identity assertion check; without it every identity header is stripped
    /// and the app only ever sees anonymous requests.
    #[serde(default)]
    pub assertion: Option<AssertionConfig>,
}

fn default_max_request_headers_kb() -> u32 {
    96
}
fn default_max_lifetime_days() -> u32 {
    730
}
fn default_ping_timeout() -> u64 {
    3
}
fn default_connector_wait_ms() -> u64 {
    2_000
}
fn default_registrations_per_token() -> u32 {
    1
}
fn default_store_backend() -> String {
    "embedded".into()
}
fn default_store_timeout_ms() -> u64 {
    3_000
}
fn default_handshake_timeout_ms() -> u64 {
    5_000
}
fn default_header_read_timeout_ms() -> u64 {
    5_000
}
fn default_pending_per_source() -> usize {
    16
}
fn default_tunnels_per_connector() -> usize {
    256
}
fn default_registration_rate() -> u32 {
    60
}
fn default_registration_concurrency() -> usize {
    8
}
fn default_consecutive_errors() -> u32 {
    3
}
fn default_base_ejection_ms() -> u64 {
    5_000
}
fn default_max_ejection_ms() -> u64 {
    60_000
}
fn default_assertion_skew() -> u64 {
    60
}
fn default_jwks_refresh() -> u64 {
    300
}

fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}
fn default_app_header() -> String {
    crate::DEFAULT_APP_HEADER.into()
}
fn default_trusted_proxies() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into()]
}
fn default_cert_days() -> u32 {
    365
}
fn default_refresh() -> u64 {
    300
}
fn default_keepalive() -> u64 {
    5
}
fn default_drain() -> u64 {
    30
}
fn default_registration_listen() -> String {
    "127.0.0.1:8441".into()
}
fn default_tunnel_listen() -> String {
    "127.0.0.1:8442".into()
}
fn default_edge_metrics() -> Option<String> {
    Some("127.0.0.1:9102".into())
}
fn default_tenant_claim() -> String {
    "tid".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_timeout_ms() -> u64 {
    30_000
}

/// Validated edge settings.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// State directory (CA key and certificate).
    pub state_dir: PathBuf,
    /// Registration listen address.
    pub registration_listen: SocketAddr,
    /// Tunnel listen address.
    pub tunnel_listen: SocketAddr,
    /// Unix socket for Envoy, with its file mode.
    pub envoy_socket: Option<(PathBuf, u32)>,
    /// Mutual-TLS listener for Envoy.
    pub envoy_mtls: Option<(SocketAddr, EnvoyMtls)>,
    /// Plain h2c TCP listener for Envoy (asked for by name).
    pub insecure_envoy_h2c_tcp: Option<SocketAddr>,
    /// Largest request header block from Envoy, bytes.
    pub max_request_headers: u32,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Server certificate names.
    pub server_names: Vec<String>,
    /// Addresses handed to connectors (empty: the bound tunnel address).
    pub advertised_tunnel_addresses: Vec<String>,
    /// The shared store.
    pub store: crate::store::StoreSettings,
    /// Time allowed to reach the store.
    pub store_timeout: Duration,
    /// Port limits.
    pub limits: LimitsConfig,
    /// Everything that can change on reload.
    pub dynamic: EdgeDynamic,
}

/// The part of the edge settings that a reload may change without dropping tunnels.
#[derive(Debug, Clone)]
pub struct EdgeDynamic {
    /// Lower-case app header name.
    pub app_header: http::HeaderName,
    /// Trusted proxy networks.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The proxy's own cookies.
    pub proxy_cookies: portcullis_core::cookies::ProxyCookieNames,
    /// The same, as configured (sent to connectors).
    pub proxy_cookies_config: ProxyCookiesConfig,
    /// Admin token rules.
    pub admin: AdminConfig,
    /// Groups.
    pub groups: BTreeSet<String>,
    /// Apps by name.
    pub apps: BTreeMap<String, AppSettings>,
    /// Issued certificate validity.
    pub client_cert_days: u32,
    /// Absolute lifetime of a connector identity.
    pub max_lifetime: Duration,
    /// Refresh interval told to connectors.
    pub config_refresh: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
    /// Time a keepalive ping may go unanswered.
    pub ping_timeout: Duration,
    /// Drain grace.
    pub drain: Duration,
    /// Wait for a tunnel when none of the group is up.
    pub connector_wait: Duration,
    /// Outlier ejection.
    pub outlier: OutlierConfig,
    /// Identity assertion rules by app name (apps without one get none).
    pub assertions: BTreeMap<String, Arc<crate::identity::AssertionRules>>,
    /// Header names (lower-case, `-` spelling) stripped from every request.
    pub identity_headers: Vec<String>,
}

/// A validated app, as sent to its connectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// App name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Backend URL.
    pub internal_url: String,
    /// Header timeout, ms.
    pub timeout_ms: u64,
    /// CA bundle PEM text (read from `backend_ca_file`).
    #[serde(default)]
    pub backend_ca_pem: Option<String>,
    /// Allowed SPKI SHA-256 hashes (32 bytes each, base64 standard).
    #[serde(default)]
    pub spki_sha256: Vec<String>,
    /// Keep the client's Host.
    #[serde(default)]
    pub preserve_host: bool,
}

/// Parses a listen address `host:port`.
fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            field,
            format!("`{s}` is not an address like 127.0.0.1:8080"),
        )
    })
}

/// Parses an address (`10.0.0.1`, a host network) or a CIDR (`10.0.0.0/8`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ipnet::IpNet::from(ip));
    }
    let net = s.parse::<ipnet::IpNet>().ok()?;
    // `10.0.0.1/8` is a typo for `10.0.0.0/8` or for one host: refuse it.
    (net.network() == net.addr()).then_some(net)
}

/// Decodes an SPKI pin (base64 with or without a `sha256/` prefix, or 64 hex digits).
pub fn decode_pin(s: &str) -> Option<[u8; 32]> {
    let s = s.strip_prefix("sha256/").unwrap_or(s);
    let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()?
    };
    bytes.try_into().ok()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl EdgeConfigFile {
    /// Parses JSON text.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        parse_json(bytes)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?)
    }

    /// Validates into settings (reads CA bundle files named by apps).
    pub fn validate(&self) -> Result<EdgeSettings, ConfigError> {
        let registration_listen = parse_addr("listen.registration", &self.listen.registration)?;
        let tunnel_listen = parse_addr("listen.tunnel", &self.listen.tunnel)?;
        let l = &self.listen;
        if l.local.is_some() {
            return Err(ConfigError::new(
                "listen.local",
                "is gone: Envoy reaches the edge over `envoy_socket` (a Unix socket) or \
                 `envoy_mtls`; plain h2c on TCP only as `insecure_envoy_h2c_tcp`",
            ));
        }
        let mode = match &l.envoy_socket_mode {
            Some(m) => {
                let v = u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                    ConfigError::new("listen.envoy_socket_mode", "an octal mode like \"0660\"")
                })?;
                if v & 0o007 != 0 || v > 0o777 {
                    return Err(ConfigError::new(
                        "listen.envoy_socket_mode",
                        "must give others no access (like \"0660\" or \"0600\")",
                    ));
                }
                v
            }
            None => 0o660,
        };
        let envoy_mtls = match &l.envoy_mtls {
            Some(m) => Some((
                parse_addr("listen.envoy_mtls.address", &m.address)?,
                m.clone(),
            )),
            None => None,
        };
        let insecure_envoy_h2c_tcp = match &l.insecure_envoy_h2c_tcp {
            Some(a) => Some(parse_addr("listen.insecure_envoy_h2c_tcp", a)?),
            None => None,
        };
        let envoy_socket = match &l.envoy_socket {
            Some(p) => Some((p.clone(), mode)),
            None if envoy_mtls.is_none() && insecure_envoy_h2c_tcp.is_none() => {
                Some((self.state_dir.join("envoy.sock"), mode))
            }
            None => None,
        };
        if !(60..=256).contains(&self.max_request_headers_kb) {
            return Err(ConfigError::new(
                "max_request_headers_kb",
                "must be between 60 (Envoy's default limit) and 256 (the tunnel's)",
            ));
        }
        let metrics_listen = match &self.listen.metrics {
            Some(m) => Some(parse_addr("listen.metrics", m)?),
            None => None,
        };
        if self.server_names.is_empty() {
            return Err(ConfigError::new(
                "server_names",
                "at least one name is needed",
            ));
        }
        for (i, n) in self.server_names.iter().enumerate() {
            if n.is_empty() || n.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    format!("server_names[{i}]"),
                    "not a DNS name or IP",
                ));
            }
        }
        for (i, a) in self.advertised_tunnel_addresses.iter().enumerate() {
            if !a.contains(':') {
                return Err(ConfigError::new(
                    format!("advertised_tunnel_addresses[{i}]"),
                    "expected host:port",
                ));
            }
        }
        let store = match self.store.backend.as_str() {
            "embedded" => {
                if self.store.url.is_some() || self.store.prefix.is_some() {
                    return Err(ConfigError::new(
                        "store.url",
                        "url and prefix are for the redis backend",
                    ));
                }
                crate::store::StoreSettings::Embedded {
                    path: self
                        .store
                        .path
                        .clone()
                        .unwrap_or_else(|| self.state_dir.join("store.redb")),
                }
            }
            "redis" => {
                if self.store.path.is_some() {
                    return Err(ConfigError::new(
                        "store.path",
                        "path is for the embedded backend",
                    ));
                }
                let url = self.store.url.clone().ok_or_else(|| {
                    ConfigError::new("store.url", "the redis backend needs a url")
                })?;
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                    return Err(ConfigError::new(
                        "store.url",
                        "must start with redis:// or redis+unix://",
                    ));
                }
                if redis::Client::open(url.as_str()).is_err() {
                    return Err(ConfigError::new("store.url", "not a valid Redis URL"));
                }
                let prefix = self
                    .store
                    .prefix
                    .clone()
                    .unwrap_or_else(|| "portcullis".into());
                if !valid_name(&prefix) {
                    return Err(ConfigError::new(
                        "store.prefix",
                        "use letters, digits, - _ . (≤ 64)",
                    ));
                }
                crate::store::StoreSettings::Redis { url, prefix }
            }
            other => {
                return Err(ConfigError::new(
                    "store.backend",
                    format!("`{other}`: use embedded or redis"),
                ))
            }
        };
        if !(100..=600_000).contains(&self.store.timeout_ms) {
            return Err(ConfigError::new(
                "store.timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
        ] {
            if !(100..=300_000).contains(&v) {
                return Err(ConfigError::new(field, "must be between 100 and 300000"));
            }
        }
        for (field, v) in [
            ("limits.max_pending_connections", l.max_pending_connections),
            ("limits.max_tunnels", l.max_tunnels),
            (
                "limits.max_pending_per_source",
                Some(l.max_pending_per_source),
            ),
            (
                "limits.max_tunnels_per_connector",
                Some(l.max_tunnels_per_connector),
            ),
            (
                "limits.max_concurrent_registrations",
                Some(l.max_concurrent_registrations),
            ),
        ] {
            if v == Some(0) {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if l.registrations_per_minute_per_source == 0 {
            return Err(ConfigError::new(
                "limits.registrations_per_minute_per_source",
                "must be at least 1",
            ));
        }
        Ok(EdgeSettings {
            store,
            store_timeout: Duration::from_millis(self.store.timeout_ms),
            limits: l.clone(),
            state_dir: self.state_dir.clone(),
            registration_listen,
            tunnel_listen,
            envoy_socket,
            envoy_mtls,
            insecure_envoy_h2c_tcp,
            max_request_headers: self.max_request_headers_kb * 1024,
            metrics_listen,
            server_names: self.server_names.clone(),
            advertised_tunnel_addresses: self.advertised_tunnel_addresses.clone(),
            dynamic: self.validate_dynamic()?,
        })
    }

    fn validate_dynamic(&self) -> Result<EdgeDynamic, ConfigError> {
        let app_header =
            http::HeaderName::from_bytes(self.app_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::new("app_header", "not a valid header name"))?;
        let mut trusted_proxies = Vec::new();
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            trusted_proxies.push(parse_net(p).ok_or_else(|| {
                ConfigError::new(
                    format!("trusted_proxies[{i}]"),
                    "not an IP address or CIDR (like 10.0.0.0/8)",
                )
            })?);
        }
        let proxy_cookies = self.proxy_cookies.validate("proxy_cookies")?;
        let a = &self.admin;
        match (&a.jwks_file, &a.jwks_url) {
            (None, None) => {
                return Err(ConfigError::new(
                    "admin.jwks_file",
                    "set jwks_file or jwks_url",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "admin.jwks_url",
                    "set only one of jwks_file and jwks_url",
                ))
            }
            (None, Some(url)) => {
                if url.starts_with("https://") {
                    if a.jwks_ca_file.is_none() {
                        return Err(ConfigError::new(
                            "admin.jwks_ca_file",
                            "needed for an https jwks_url",
                        ));
                    }
                } else if !url.starts_with("http://") {
                    return Err(ConfigError::new(
                        "admin.jwks_url",
                        "must start with http:// or https://",
                    ));
                }
                if url.parse::<http::Uri>().is_err() {
                    return Err(ConfigError::new("admin.jwks_url", "not a valid URL"));
                }
            }
            (Some(_), None) => {}
        }
        if a.issuer.is_empty() {
            return Err(ConfigError::new("admin.issuer", "must not be empty"));
        }
        if a.audience.is_empty() {
            return Err(ConfigError::new("admin.audience", "must not be empty"));
        }
        if a.admin_roles.is_empty() && a.admin_groups.is_empty() {
            return Err(ConfigError::new(
                "admin.admin_roles",
                "set admin_roles and/or admin_groups",
            ));
        }
        if a.leeway_seconds > 60 {
            return Err(ConfigError::new("admin.leeway_seconds", "at most 60"));
        }
        if a.registrations_per_token == 0 {
            return Err(ConfigError::new(
                "admin.registrations_per_token",
                "must be at least 1",
            ));
        }
        if self.groups.is_empty() {
            return Err(ConfigError::new(
                "groups",
                "at least one connector group is needed",
            ));
        }
        let mut groups = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_name(g) {
                return Err(ConfigError::new(
                    format!("groups[{i}]"),
                    "use letters, digits, - _ . (≤ 64)",
                ));
            }
            if !groups.insert(g.clone()) {
                return Err(ConfigError::new(format!("groups[{i}]"), "duplicate group"));
            }
        }
        let mut apps = BTreeMap::new();
        let mut assertions = BTreeMap::new();
        let mut identity_headers: Vec<String> = crate::identity::DEFAULT_IDENTITY_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect();
        for (i, h) in self.identity_headers.iter().enumerate() {
            let h =
                portcullis_core::config::check_header_name(&format!("identity_headers[{i}]"), h)?;
            identity_headers.push(h.replace('_', "-"));
        }
        for (i, app) in self.apps.iter().enumerate() {
            if let Some(a) = &app.assertion {
                let rules = crate::identity::AssertionRules::new(&app.name, a)
                    .map_err(|e| e.within(&format!("apps[{i}].assertion")))?;
                for (h, _) in rules.claim_headers() {
                    identity_headers.push(h.as_str().replace('_', "-"));
                }
                assertions.insert(app.name.clone(), Arc::new(rules));
            }
            let settings = app
                .validate(&groups)
                .map_err(|e| e.within(&format!("apps[{i}]")))?;
            if apps.insert(settings.name.clone(), settings).is_some() {
                return Err(ConfigError::new(
                    format!("apps[{i}].name"),
                    "duplicate app name",
                ));
            }
        }
        if self.client_cert_days == 0 {
            return Err(ConfigError::new("client_cert_days", "must be at least 1"));
        }
        if self.config_refresh_seconds == 0 {
            return Err(ConfigError::new(
                "config_refresh_seconds",
                "must be at least 1",
            ));
        }
        if self.keepalive_seconds == 0 {
            return Err(ConfigError::new("keepalive_seconds", "must be at least 1"));
        }
        if self.ping_timeout_seconds == 0 || self.ping_timeout_seconds > self.keepalive_seconds * 4
        {
            return Err(ConfigError::new(
                "ping_timeout_seconds",
                "must be at least 1 and at most 4 × keepalive_seconds",
            ));
        }
        if self.connector_max_lifetime_days < self.client_cert_days {
            return Err(ConfigError::new(
                "connector_max_lifetime_days",
                "must be at least client_cert_days",
            ));
        }
        if self.connector_wait_ms > 60_000 {
            return Err(ConfigError::new("connector_wait_ms", "at most 60000"));
        }
        let o = &self.outlier;
        if o.consecutive_errors == 0 {
            return Err(ConfigError::new(
                "outlier.consecutive_errors",
                "must be at least 1",
            ));
        }
        if o.base_ejection_ms == 0 || o.max_ejection_ms < o.base_ejection_ms {
            return Err(ConfigError::new(
                "outlier.max_ejection_ms",
                "base_ejection_ms must be ≥ 1 and max_ejection_ms ≥ base_ejection_ms",
            ));
        }
        Ok(EdgeDynamic {
            app_header,
            trusted_proxies,
            proxy_cookies,
            proxy_cookies_config: self.proxy_cookies.clone(),
            admin: a.clone(),
            groups,
            apps,
            client_cert_days: self.client_cert_days,
            max_lifetime: Duration::from_secs(u64::from(self.connector_max_lifetime_days) * 86_400),
            config_refresh: Duration::from_secs(self.config_refresh_seconds),
            keepalive: Duration::from_secs(self.keepalive_seconds),
            ping_timeout: Duration::from_secs(self.ping_timeout_seconds),
            outlier: self.outlier.clone(),
            drain: Duration::from_secs(self.drain_seconds),
            connector_wait: Duration::from_millis(self.connector_wait_ms),
            assertions,
            identity_headers: {
                identity_headers.sort();
                identity_headers.dedup();
                identity_headers
            },
        })
    }
}

impl AppConfig {
    fn validate(&self, groups: &BTreeSet<String>) -> Result<AppSettings, ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::new(
                "name",
                "use letters, digits, - _ . (≤ 64)",
            ));
        }
        if !groups.contains(&self.group) {
            return Err(ConfigError::new(
                "group",
                format!("unknown group `{}`", self.group),
            ));
        }
        let uri: http::Uri = self
            .internal_url
            .parse()
            .map_err(|_| ConfigError::new("internal_url", "not a valid URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(ConfigError::new(
                    "internal_url",
                    "must start with http:// or https://",
                ))
            }
        };
        if uri.host().is_none() {
            return Err(ConfigError::new("internal_url", "has no host"));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new("timeout_ms", "must be at least 1"));
        }
        let backend_ca_pem = match &self.backend_ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "backend_ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                if crate::pki::parse_certs_pem(&pem)
                    .map(|c| c.is_empty())
                    .unwrap_or(true)
                {
                    return Err(ConfigError::new(
                        "backend_ca_file",
                        "no PEM certificate in it",
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let mut pins = Vec::new();
        for (i, p) in self.spki_sha256.iter().enumerate() {
            let pin = decode_pin(p).ok_or_else(|| {
                ConfigError::new(
                    format!("spki_sha256[{i}]"),
                    "not a SHA-256 hash (base64 or hex)",
                )
            })?;
            pins.push(base64::engine::general_purpose::STANDARD.encode(pin));
        }
        if !https && (backend_ca_pem.is_some() || !pins.is_empty()) {
            return Err(ConfigError::new(
                "internal_url",
                "backend TLS settings need an https:// URL",
            ));
        }
        if https && backend_ca_pem.is_none() && pins.is_empty() {
            return Err(ConfigError::new(
                "spki_sha256",
                "an https backend needs backend_ca_file and/or spki_sha256",
            ));
        }
        Ok(AppSettings {
            name: self.name.clone(),
            group: self.group.clone(),
            internal_url: self.internal_url.clone(),
            timeout_ms: self.timeout_ms,
            backend_ca_pem,
            spki_sha256: pins,
            preserve_host: self.preserve_host,
        })
    }
}

// ---------------------------------------------------------------- connector

/// The connector configuration file, as written (`register` writes one).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfigFile {
    /// Directory with key, certificate, edge CA and configuration cache.
    pub state_dir: PathBuf,
    /// Edge tunnel addresses (`host:port`).
    pub edges: Vec<String>,
    /// Name expected in the edge's TLS certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Tunnels per edge address.
    #[serde(default = "default_tunnels")]
    pub tunnels_per_edge: usize,
    /// Renew the certificate when it is older than this, in seconds (default 180 days).
    #[serde(default = "default_renew_after")]
    pub renew_after_seconds: u64,
    /// How often to check the certificate age, in seconds.
    #[serde(default = "default_renew_check")]
    pub renew_check_seconds: u64,
    /// Configuration refresh interval override, in seconds (default: what the edge says).
    #[serde(default)]
    pub config_refresh_seconds: Option<u64>,
    /// HTTP/2 keepalive ping interval, in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_seconds: u64,
    /// Time a keepalive ping may go unanswered before the tunnel is dropped, in seconds.
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout_seconds: u64,
    /// Time allowed to each step of reaching the edge (TCP connect, TLS handshake,
    /// HTTP/2 handshake, an API answer), in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// First reconnect delay, in milliseconds.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Grace period for streams in flight at shutdown, in seconds.
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
    /// Concurrent streams allowed per tunnel.
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// Optional loopback `/metrics` listener. Off by default: the connector then never listens.
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_server_name() -> String {
    "localhost".into()
}
fn default_tunnels() -> usize {
    2
}
fn default_renew_after() -> u64 {
    180 * 86_400
}
fn default_renew_check() -> u64 {
    3600
}
fn default_backoff_initial() -> u64 {
    250
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_max_streams() -> u32 {
    1024
}

/// Validated connector settings.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    /// State directory.
    pub state_dir: PathBuf,
    /// Edge addresses.
    pub edges: Vec<String>,
    /// Edge TLS name.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Tunnels per edge.
    pub tunnels_per_edge: usize,
    /// Renewal age.
    pub renew_after: Duration,
    /// Renewal check interval.
    pub renew_check: Duration,
    /// Config refresh override.
    pub config_refresh: Option<Duration>,
    /// Keepalive.
    pub keepalive: Duration,
    /// Ping answer time-out.
    pub ping_timeout: Duration,
    /// Time allowed to each step of reaching the edge.
    pub connect_timeout: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Drain grace.
    pub drain: Duration,
    /// Streams per tunnel.
    pub max_concurrent_streams: u32,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
}

impl ConnectorConfigFile {
    /// Parses JSON text.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        parse_json(bytes)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?)
    }

    /// A configuration with defaults for `state_dir` and `edges`.
    pub fn with_defaults(state_dir: PathBuf, edges: Vec<String>, server_name: String) -> Self {
        Self {
            state_dir,
            edges,
            server_name,
            tunnels_per_edge: default_tunnels(),
            renew_after_seconds: default_renew_after(),
            renew_check_seconds: default_renew_check(),
            config_refresh_seconds: None,
            keepalive_seconds: default_keepalive(),
            ping_timeout_seconds: default_ping_timeout(),
            connect_timeout_seconds: default_connect_timeout(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
            drain_seconds: default_drain(),
            max_concurrent_streams: default_max_streams(),
            metrics_listen: None,
        }
    }

    /// Validates into settings.
    pub fn validate(&self) -> Result<ConnectorSettings, ConfigError> {
        if self.edges.is_empty() {
            return Err(ConfigError::new(
                "edges",
                "at least one edge address is needed",
            ));
        }
        for (i, e) in self.edges.iter().enumerate() {
            match e.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => {
                    return Err(ConfigError::new(
                        format!("edges[{i}]"),
                        "expected host:port",
                    ))
                }
            }
        }
        let server_name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|_| ConfigError::new("server_name", "not a DNS name or IP address"))?;
        if self.tunnels_per_edge == 0 || self.tunnels_per_edge > 64 {
            return Err(ConfigError::new(
                "tunnels_per_edge",
                "must be between 1 and 64",
            ));
        }
        if self.renew_after_seconds == 0 {
            return Err(ConfigError::new(
                "renew_after_seconds",
                "must be at least 1",
            ));
        }
        if self.renew_check_seconds == 0 {
            return Err(ConfigError::new(
                "renew_check_seconds",
                "must be at least 1",
            ));
        }
        if self.config_refresh_seconds == Some(0) {
            return Err(ConfigError::new(
                "config_refresh_seconds",
                "must be at least 1",
            ));
        }
        if self.keepalive_seconds == 0 {
            return Err(ConfigError::new("keepalive_seconds", "must be at least 1"));
        }
        if self.ping_timeout_seconds == 0 || self.ping_timeout_seconds > self.keepalive_seconds * 4
        {
            return Err(ConfigError::new(
                "ping_timeout_seconds",
                "must be at least 1 and at most 4 × keepalive_seconds",
            ));
        }
        if !(1..=300).contains(&self.connect_timeout_seconds) {
            return Err(ConfigError::new(
                "connect_timeout_seconds",
                "must be between 1 and 300",
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err(ConfigError::new(
                "backoff_max_ms",
                "backoff_initial_ms must be ≥ 1 and backoff_max_ms ≥ backoff_initial_ms",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::new(
                "max_concurrent_streams",
                "must be at least 1",
            ));
        }
        let metrics_listen = match &self.metrics_listen {
            Some(m) => {
                let a = parse_addr("metrics_listen", m)?;
                if !a.ip().is_loopback() {
                    return Err(ConfigError::new(
                        "metrics_listen",
                        "must be a loopback address",
                    ));
                }
                Some(a)
            }
            None => None,
        };
        Ok(ConnectorSettings {
            state_dir: self.state_dir.clone(),
            edges: self.edges.clone(),
            server_name,
            tunnels_per_edge: self.tunnels_per_edge,
            renew_after: Duration::from_secs(self.renew_after_seconds),
            renew_check: Duration::from_secs(self.renew_check_seconds),
            config_refresh: self.config_refresh_seconds.map(Duration::from_secs),
            keepalive: Duration::from_secs(self.keepalive_seconds),
            ping_timeout: Duration::from_secs(self.ping_timeout_seconds),
            connect_timeout: Duration::from_secs(self.connect_timeout_seconds),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            drain: Duration::from_secs(self.drain_seconds),
            max_concurrent_streams: self.max_concurrent_streams,
            metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_addresses_and_cidrs_and_refuse_host_bits() {
        let net = parse_net("10.0.0.0/8").unwrap();
        assert!(net.contains(&"10.42.7.3".parse::<IpAddr>().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse::<IpAddr>().unwrap()));
        let host = parse_net("127.0.0.1").unwrap();
        assert!(host.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(!host.contains(&"127.0.0.2".parse::<IpAddr>().unwrap()));
        assert!(parse_net("fd00::/8")
            .unwrap()
            .contains(&"fd12::1".parse::<IpAddr>().unwrap()));
        assert_eq!(parse_net("10.0.0.1/8"), None, "host bits set");
        assert_eq!(parse_net("10.0.0.0/33"), None);
        assert_eq!(parse_net("pod-network"), None);
    }

    #[test]
    fn liveness_defaults_find_a_silent_peer_within_ten_seconds() {
        let c = ConnectorConfigFile::with_defaults("/x".into(), vec!["e:1".into()], "e".into())
            .validate()
            .unwrap();
        assert!(c.keepalive + c.ping_timeout + Duration::from_secs(1) <= Duration::from_secs(10));
        assert!(
            c.ping_timeout < c.keepalive,
            "a separate, shorter ping time-out"
        );
    }

    #[test]
    fn redis_urls_are_redacted_in_debug_output() {
        assert_eq!(
            redact_url("redis://edge:s3cret@redis:6379/0"),
            "redis://edge:***@redis:6379/0"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        let c = StoreConfig {
            backend: "redis".into(),
            url: Some("redis://u:pw@h:1".into()),
            ..StoreConfig::default()
        };
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn pins_decode_from_base64_prefixed_base64_or_hex() {
        let raw = [0xabu8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(decode_pin(&b64), Some(raw));
        assert_eq!(decode_pin(&format!("sha256/{b64}")), Some(raw));
        assert_eq!(decode_pin(&"ab".repeat(32)), Some(raw));
        assert_eq!(decode_pin("abcd"), None);
        assert_eq!(decode_pin(&"ab".repeat(31)), None);
    }
}
