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
use portcullis_core::policy::{evaluate, Decision};
use std::hint::black_box;
use std::time::Instant;

mod common;

fn main() {
    let config = common::twenty_policies();
    let now = common::NOW;
    let id = Identity {
        sub: "alice".into(),
        groups: vec!["staff".into()],
        amr: vec!["pwd".into(), "mfa".into()],
        auth_time: Some(now - 60),
        iat: now - 60,
        exp: now + 3600,
        ..Identity::default()
    };
    let req = common::request(&id);
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
