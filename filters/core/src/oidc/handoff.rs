//! Identity handoff from the preauth filter to later filters of the same stream.
//!
//! Contract: after authenticating a request, the preauth filter calls
//! `set_property(vec![IDENTITY_PROPERTY], Some(&encode(app_id, identity)))`.
//! Envoy keeps the value in the stream's filter state (as `wasm.portcullis_identity`),
//! which clients cannot set and the app never sees. The conditional-access
//! filter reads it with `get_property(vec![IDENTITY_PROPERTY])` and [`decode`]s it.
//! The property is absent when the request has no authenticated identity
//! (passthrough mode, unauthenticated path): later filters must treat that as
//! "anonymous", never as an error to ignore.
//!
//! The value is UTF-8 JSON: `{"v":1,"app":"<app id>","identity":{…}}`, where
//! `identity` is [`Identity`] with its long field names (`sub`, `name`, `email`,
//! `groups`, `amr`, `acr`, `auth_time`, `claims`, `iat`, `exp`).

use crate::identity::Identity;
use serde::{Deserialize, Serialize};

/// The Envoy property path (one segment) carrying the identity.
pub const IDENTITY_PROPERTY: &str = "portcullis_identity";
/// Version of the handoff format.
pub const HANDOFF_VERSION: u32 = 1;

/// What the preauth filter hands to later filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Format version ([`HANDOFF_VERSION`]).
    pub v: u32,
    /// The app id the session belongs to.
    pub app: String,
    /// The signed-in user.
    pub identity: Identity,
}

/// Why a handoff value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffError {
    /// Not the JSON described in the module documentation.
    Malformed,
    /// A version this build does not know.
    UnknownVersion,
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandoffError::Malformed => "identity handoff is malformed",
            HandoffError::UnknownVersion => "identity handoff has an unknown version",
        })
    }
}

impl std::error::Error for HandoffError {}

/// Encodes the identity for `set_property`.
pub fn encode(app_id: &str, identity: &Identity) -> Vec<u8> {
    let h = Handoff {
        v: HANDOFF_VERSION,
        app: app_id.to_string(),
        identity: identity.clone(),
    };
    serde_json::to_vec(&h).unwrap_or_default()
}

/// Decodes a value read with `get_property`. The whole value is parsed once;
/// only when that fails is the version read, to tell an unknown version from
/// a malformed value.
pub fn decode(bytes: &[u8]) -> Result<Handoff, HandoffError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match serde_json::from_slice::<Handoff>(bytes) {
        Ok(h) if h.v == HANDOFF_VERSION => Ok(h),
        Ok(_) => Err(HandoffError::UnknownVersion),
        Err(_) => match serde_json::from_slice::<Version>(bytes) {
            Ok(v) if v.v != HANDOFF_VERSION => Err(HandoffError::UnknownVersion),
            _ => Err(HandoffError::Malformed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_format() {
        let id = Identity {
            sub: "alice".into(),
            groups: vec!["staff".into()],
            iat: 1,
            exp: 2,
            ..Identity::default()
        };
        let bytes = encode("hr", &id);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["app"], "hr");
        assert_eq!(json["identity"]["sub"], "alice");
        assert_eq!(json["identity"]["groups"][0], "staff");
        let h = decode(&bytes).unwrap();
        assert_eq!(h.identity, id);
        assert_eq!(h.app, "hr");
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(decode(b""), Err(HandoffError::Malformed));
        assert_eq!(
            decode(br#"{"v":2,"app":"a"}"#),
            Err(HandoffError::UnknownVersion)
        );
        assert_eq!(
            decode(br#"{"v":1,"app":"a"}"#),
            Err(HandoffError::Malformed)
        );
        // A well-formed value of another version is refused too.
        let mut other = serde_json::from_slice::<serde_json::Value>(&encode(
            "a",
            &Identity {
                sub: "s".into(),
                ..Identity::default()
            },
        ))
        .unwrap();
        other["v"] = 3.into();
        assert_eq!(
            decode(&serde_json::to_vec(&other).unwrap()),
            Err(HandoffError::UnknownVersion)
        );
    }
}
