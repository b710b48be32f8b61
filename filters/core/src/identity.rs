//! The signed-in user, as the filters pass it around.
//!
//! The preauth filter builds an [`Identity`] from a validated ID token, seals
//! it in the session cookie, and hands it to later filters; the
//! conditional-access filter judges it. Only what some decision needs is kept.

use serde::{Deserialize, Serialize};

/// A signed-in user: what the session cookie carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Identity {
    /// The provider's subject (`sub`).
    pub sub: String,
    /// The display / principal name (`preferred_username`, `upn` or `name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The e-mail address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The groups that some policy names (never the full list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Authentication methods (`amr`), e.g. `pwd`, `mfa`, `otp`, `hwk`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Authentication context class (`acr`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// When the user last actively authenticated (`auth_time`, Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// Extra claims that policies or header mappings name (claim → value).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
    /// When the session was issued (Unix seconds).
    pub iat: u64,
    /// When the session expires (Unix seconds): min(token `exp`, app's maximum session).
    pub exp: u64,
}
