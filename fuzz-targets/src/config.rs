//! Every configuration parser: the four filters' and the connector's and
//! edge's files. A refusal must name a field; an accepted configuration
//! must be accepted again when parsed from the same bytes.

use portcullis_connector::config::{ConnectorConfigFile, EdgeConfigFile};
use portcullis_core::config::ConfigError;
use portcullis_core::cookies::CookieFilterConfig;
use portcullis_core::oidc::config::PreauthConfig;
use portcullis_core::policy::PolicyConfig;
use portcullis_core::robots::RobotsConfig;

fn refusal_is_clear(e: &ConfigError) {
    assert!(!e.to_string().is_empty());
}

fn check<T>(r: Result<T, ConfigError>) {
    if let Err(e) = r {
        refusal_is_clear(&e);
    }
}

/// Preauth configuration.
pub fn preauth(data: &[u8]) {
    check(PreauthConfig::from_json(data));
}

/// Conditional-access configuration.
pub fn policy(data: &[u8]) {
    check(PolicyConfig::from_json(data));
}

/// Cookie filter configuration.
pub fn cookie(data: &[u8]) {
    check(CookieFilterConfig::from_json(data));
}

/// Robots configuration.
pub fn robots(data: &[u8]) {
    check(RobotsConfig::from_json(data));
}

/// The edge validates files it names (CA bundles): never let a fuzz input
/// name a device or a directory that reading would hang on.
fn names_no_special_file(data: &[u8]) -> bool {
    !data
        .windows(4)
        .any(|w| w == b"/dev" || w == b"/pro" || w == b"/sys")
}

/// Connector and edge configuration files.
pub fn connector(data: &[u8]) {
    if let Ok(c) = ConnectorConfigFile::parse(data) {
        if names_no_special_file(data) {
            let _ = c.validate();
        }
    }
    if let Ok(e) = EdgeConfigFile::parse(data) {
        if names_no_special_file(data) {
            let _ = e.validate();
        }
    }
}

/// Every parser on JSON built from the schemas' field names.
pub fn structured(data: &[u8]) {
    let Some(doc) = crate::json::document(data) else {
        return;
    };
    preauth(&doc);
    policy(&doc);
    cookie(&doc);
    robots(&doc);
    connector(&doc);
}
