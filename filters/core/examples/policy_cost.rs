//! Native cost of one conditional-access decision with 20 policies.
//!
//! `cargo run --release -p portcullis-core --example policy_cost`
//!
//! Prints nanoseconds per decision for the evaluator alone and for evaluator +
//! JSON decision log line (what the filter does per request). A measurement to
//! read, not a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::identity::Identity;
use portcullis_core::policy::log::decision_log;
use portcullis_core::policy::{evaluate, Decision, PolicyConfig, Request};
use std::hint::black_box;
use std::time::Instant;

fn main() {
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
        r#"{{"named_locations": {{"office": {{"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}}}, "policies": [{}]}}"#,
        policies.join(",")
    );
    let config = PolicyConfig::from_json(json.as_bytes()).unwrap();
    let now = 1_800_000_000;
    let id = Identity {
        sub: "alice".into(),
        groups: vec!["staff".into()],
        amr: vec!["pwd".into(), "mfa".into()],
        auth_time: Some(now - 60),
        iat: now - 60,
        exp: now + 3600,
        ..Identity::default()
    };
    let req = Request {
        app: "hr",
        identity: Some(&id),
        client: Some("198.51.100.7".parse().unwrap()),
        country: None,
        method: "GET",
        path: "/app3/x",
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
        browser: true,
        now,
        marker: None,
    };
    assert_eq!(evaluate(&config, &req).decision, Decision::Allow);
    let n = 200_000u32;
    for _ in 0..10_000 {
        black_box(evaluate(black_box(&config), black_box(&req)));
    }
    let t = Instant::now();
    for _ in 0..n {
        black_box(evaluate(black_box(&config), black_box(&req)));
    }
    let eval_ns = t.elapsed().as_nanos() / u128::from(n);
    let t = Instant::now();
    for _ in 0..n / 10 {
        let e = evaluate(black_box(&config), black_box(&req));
        black_box(decision_log(&e, &req, "rid"));
    }
    let log_ns = t.elapsed().as_nanos() / u128::from(n / 10);
    println!("20 policies, all applying and satisfied: {eval_ns} ns/decision (evaluator), {log_ns} ns/decision (evaluator + JSON log line)");
}
