//! The core work of one authenticated request, natively: open the sealed
//! session cookie (AES-256-GCM + identity decoding + expiry) and evaluate 20
//! conditional-access policies that all apply, then format the decision line.
//!
//! `cargo run --release -p portcullis-core --example request_cost -- N`
//!
//! Does it N times (default 1000) and prints nothing but a checksum. Meant to run
//! under `valgrind --tool=callgrind` (scripts/costs.sh): the difference between
//! two runs with different N, divided by the difference in N, is the number of
//! instructions per request — the same on a busy machine as on a quiet one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::identity::Identity;
use portcullis_core::oidc::session::{encode_identity, open_session};
use portcullis_core::policy::log::decision_log;
use portcullis_core::policy::{evaluate, Decision};
use portcullis_core::seal::Sealer;
use std::hint::black_box;

mod common;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("N"));
    let config = common::twenty_policies();
    let now = common::NOW;
    let sealer = Sealer::new(&[[7u8; 32]]).unwrap();
    let identity = Identity {
        sub: "u-1234567890".into(),
        name: Some("Alice Example".into()),
        email: Some("alice@example.com".into()),
        groups: vec!["staff".into(), "engineering".into()],
        amr: vec!["pwd".into(), "mfa".into()],
        acr: Some("urn:portcullis:mfa".into()),
        auth_time: Some(now - 60),
        iat: now - 60,
        exp: now + 3600,
        ..Identity::default()
    };
    let cookie = sealer
        .seal(
            "__Host-portcullis",
            "hr",
            &encode_identity(&identity),
            [9u8; portcullis_core::seal::SEAL_RANDOM_LEN],
        )
        .unwrap();
    let mut checksum = 0usize;
    for _ in 0..n {
        let id = open_session(
            black_box(&sealer),
            "__Host-portcullis",
            "hr",
            black_box(&cookie),
            now,
        )
        .unwrap();
        let req = common::request(&id);
        let e = evaluate(black_box(&config), black_box(&req));
        assert_eq!(e.decision, Decision::Allow);
        checksum = checksum.wrapping_add(decision_log(&e, &req, "rid").len());
    }
    println!("{checksum}");
}
