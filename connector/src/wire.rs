//! What the edge and the connector send each other (JSON bodies of the
//! registration port, the connectors' API and the admin API). Both sides use
//! these types, so they cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::config::{AppSettings, ProxyCookiesConfig};

/// Registration request body (`POST /v1/register`, bearer admin token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// PEM CSR of the connector's new key.
    pub csr_pem: String,
    /// Group to join (default: the first configured group).
    #[serde(default)]
    pub group: Option<String>,
}

/// Registration answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Assigned connector id.
    pub connector_id: String,
    /// Group.
    pub group: String,
    /// Signed client certificate, PEM.
    pub certificate_pem: String,
    /// Connector CA certificate (trust anchor of the tunnel listener), PEM.
    pub ca_pem: String,
    /// Tunnel addresses to dial.
    pub tunnel_addresses: Vec<String>,
}

/// Renewal request body (`POST /v1/renew` over mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR of the new key.
    pub csr_pem: String,
}

/// Renewal answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    /// New certificate, PEM.
    pub certificate_pem: String,
}

/// Configuration a connector pulls (`GET /v1/config` over mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorView {
    /// The connector's id.
    pub connector_id: String,
    /// Its group.
    pub group: String,
    /// Suggested refresh interval, seconds.
    pub refresh_seconds: u64,
    /// Apps of the group.
    pub apps: Vec<AppSettings>,
    /// The proxy's own cookie names, stripped again before the backend (absent
    /// from older edges: the defaults).
    #[serde(default)]
    pub proxy_cookies: ProxyCookiesConfig,
}

impl PartialEq for ProxyCookiesConfig {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.prefixes == other.prefixes
    }
}
impl Eq for ProxyCookiesConfig {}

/// Admin API: `POST /v1/connectors/<id>/revoke` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why (kept in the registry).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Admin API: `GET /v1/connectors` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectorList {
    /// Every connector the registry knows, oldest registration first.
    pub connectors: Vec<crate::registry::ConnectorEntry>,
}
