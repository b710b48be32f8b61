//! Conditional access: per-app policies judged on every request.
//!
//! - [`config`]: the JSON policy language, validated into [`PolicyConfig`];
//! - [`address`]: the client address (downstream, or `X-Forwarded-For` through trusted hops);
//! - [`cidr`]: IPv4/IPv6 address blocks;
//! - [`eval`]: the evaluator ([`evaluate`]) and its decision (allow / deny / step-up);
//! - [`log`]: the JSON decision log line.
//!
//! The conditional-access filter reads the identity the preauth filter hands over
//! ([`crate::oidc::handoff`]), the downstream address, the request headers and the
//! time, calls [`evaluate`], and answers with the decision.

pub mod address;
pub mod cidr;
pub mod config;
pub mod eval;
pub mod log;
pub mod stage;

pub use config::PolicyConfig;
pub use eval::{evaluate, Decision, Evaluation, Request, StepUp, StepUpMarker};

#[cfg(test)]
mod tests;
