//! Portcullis preauth filter: OpenID Connect sign-in, sealed session cookie,
//! identity headers for the app. Every decision is made by
//! [`portcullis_core::oidc`]; the module is the shared host adapter
//! ([`portcullis_proxy_wasm`]) running that one stage, which fetches the
//! provider's documents, keeps them in shared data for every worker VM, and
//! hands the identity to later filters in the stream's filter state.
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
    portcullis_proxy_wasm::start!(Layout::Single(StageKind::Preauth));
}}
