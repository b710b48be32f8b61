//! Portcullis cookie filter: keeps the proxy's own cookies away from apps,
//! hardens the apps' `Set-Cookie` headers, and translates internal URLs into
//! external ones in `Location`, `Content-Location`, `Refresh`, `Link` and
//! (opt-in per app) in response bodies, streaming chunk by chunk.
//!
//! The decisions live in [`portcullis_core::cookies`]; the module is the
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
    portcullis_proxy_wasm::start!(Layout::Single(StageKind::Cookie));
}}
