//! Shared by the cost examples: 20 conditional-access policies that all apply
//! to app "hr" and are all satisfied by a staff member with MFA, and the
//! request they are evaluated for.

use portcullis_core::identity::Identity;
use portcullis_core::policy::{PolicyConfig, Request};

/// The Unix time the examples run at.
pub const NOW: u64 = 1_800_000_000;

/// 20 policies, each with assignments, conditions (paths, methods, locations),
/// a grant and a sign-in frequency.
pub fn twenty_policies() -> PolicyConfig {
    let mut policies = Vec::new();
    for i in 0..20 {
        policies.push(format!(
            r#"{{"name": "p{i}", "apps": ["hr"],
                "assignments": {{"include": {{"groups": ["staff", "g{i}"]}}, "exclude": {{"users": ["x{i}"]}}}},
                "conditions": {{"paths": ["/app{i}", "/"], "methods": ["GET", "POST"],
                                "locations": {{"include": ["all"], "exclude": ["office"]}}}},
                "grant": {{"require": "one", "mfa": true, "claims": {{"device": "ok"}}}},
                "session": {{"sign_in_frequency": 86400}}}}"#
        ));
    }
    let json = format!(
        r#"{{"named_locations": {{"office": {{"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}}},
            "apps": {{"hr": {{"users": ["*"]}}}}, "policies": [{}]}}"#,
        policies.join(",")
    );
    PolicyConfig::from_json(json.as_bytes()).expect("the example policies parse")
}

/// A browser GET of `/app3/x` on "hr" from outside the office by `identity`.
pub fn request(identity: &Identity) -> Request<'_> {
    Request {
        app: "hr",
        identity: Some(identity),
        client: Some("198.51.100.7".parse().expect("an address")),
        country: None,
        method: "GET",
        path: "/app3/x",
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
        browser: true,
        now: NOW,
        marker: None,
    }
}
