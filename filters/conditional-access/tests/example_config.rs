//! The example policy file is a fixture: it must parse, and it must mean what
//! the README says it means.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::identity::Identity;
use portcullis_core::policy::{evaluate, Decision, PolicyConfig, Request};

const NOW: u64 = 1_800_000_000;

fn config() -> PolicyConfig {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/policies.json"
    ))
    .unwrap();
    PolicyConfig::from_json(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn staff(amr: &[&str]) -> Identity {
    Identity {
        sub: "u-alice".into(),
        groups: vec!["staff".into()],
        amr: amr.iter().map(|s| s.to_string()).collect(),
        auth_time: Some(NOW - 60),
        iat: NOW - 60,
        exp: NOW + 3600,
        ..Identity::default()
    }
}

fn req<'a>(id: &'a Identity, app: &'a str, path: &'a str, client: &str) -> Request<'a> {
    Request {
        app,
        identity: Some(id),
        client: Some(client.parse().unwrap()),
        country: None,
        method: "GET",
        path,
        user_agent: None,
        browser: true,
        now: NOW,
        marker: None,
    }
}

#[test]
fn example_policies_parse_and_behave_as_documented() {
    let c = config();
    assert_eq!(c.policies.len(), 5, "the disabled policy is dropped");
    let pwd = staff(&["pwd"]);
    // In the office, password only: everything but /admin.
    assert_eq!(
        evaluate(&c, &req(&pwd, "hr", "/", "10.1.2.3")).decision,
        Decision::Allow
    );
    let Decision::StepUp(s) = evaluate(&c, &req(&pwd, "hr", "/admin/x", "10.1.2.3")).decision
    else {
        panic!("admin must step up");
    };
    assert_eq!(s.acr.as_deref(), Some("urn:portcullis:mfa"));
    // Outside the office: MFA (or a compliant device) everywhere on hr.
    assert!(matches!(
        evaluate(&c, &req(&pwd, "hr", "/", "198.51.100.9")).decision,
        Decision::StepUp(_)
    ));
    let mfa = staff(&["pwd", "mfa"]);
    assert_eq!(
        evaluate(&c, &req(&mfa, "hr", "/admin", "2001:db8:ffff::1")).decision,
        Decision::Allow
    );
    // Not in `staff`: not assigned to hr; the wiki is open to every signed-in user.
    let mut guest = staff(&["pwd", "mfa"]);
    guest.groups.clear();
    assert_eq!(
        evaluate(&c, &req(&guest, "hr", "/", "10.1.2.3"))
            .decision
            .label(),
        "deny"
    );
    assert_eq!(
        evaluate(&c, &req(&guest, "wiki", "/", "10.1.2.3")).decision,
        Decision::Allow
    );
    // Embargoed country: blocked on every app.
    let mut r = req(&mfa, "wiki", "/", "10.1.2.3");
    r.country = Some("kp");
    let e = evaluate(&c, &r);
    assert_eq!(e.decision.denial().unwrap().code(), "location_blocked");
    // An app the file does not define is refused, even for staff with MFA.
    assert_eq!(
        evaluate(&c, &req(&mfa, "payroll", "/", "10.1.2.3"))
            .decision
            .denial()
            .unwrap()
            .code(),
        "not_assigned"
    );
}
