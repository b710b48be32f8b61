//! Portcullis conditional-access filter: judges every request against the
//! per-app policies of [`portcullis_core::policy`] and answers with the
//! decision — continue, a denial page, or a step-up (302 to
//! `/.auth/login?rd=…&acr=…&max_age=…` for browsers, 401 JSON for API clients),
//! all made by [`portcullis_core::policy::stage`].
//!
//! Inputs: the identity the preauth filter hands over in the
//! `portcullis_identity` property ([`portcullis_core::oidc::handoff`]), Envoy's
//! downstream address (`source.address`), the request headers and the clock.
//! Every decision is logged as one JSON line at info level and counted in
//! `portcullis_ca.app.<app>.result.<allow|deny|step_up>`. The module is the
//! shared host adapter ([`portcullis_proxy_wasm`]) running that one stage.
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

use portcullis_core::pipeline::StageKind;
use portcullis_proxy_wasm::Layout;

proxy_wasm::main! {{
    portcullis_proxy_wasm::start!(Layout::Single(StageKind::ConditionalAccess));
}}
