//! Portcullis core: the pure decision logic of every filter.
//!
//! Nothing here talks to a proxy, a socket, a clock or a random source: the
//! filters pass the current time and random bytes in, and turn the decisions
//! that come back into host calls. Everything is unit-tested natively.
#![forbid(unsafe_code)]
#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::unreachable,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unreachable,
        clippy::arithmetic_side_effects
    )
)]

pub mod app;
pub mod assertion;
pub mod config;
pub mod cookies;
pub mod denial;
pub mod forwarded;
pub mod identity;
pub mod oidc;
pub mod path;
pub mod pipeline;
pub mod policy;
pub mod redirect;
pub mod robots;
pub mod seal;
