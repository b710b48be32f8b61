//! Portcullis robots filter: answers `GET`/`HEAD /robots.txt` on every host with
//! `User-agent: *` / `Disallow: /` without reaching the upstream, and adds
//! `X-Robots-Tag` to every response. The decisions live in
//! [`portcullis_core::robots`]; the module is the shared host adapter
//! ([`portcullis_proxy_wasm`]) running that one stage.
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
    portcullis_proxy_wasm::start!(Layout::Single(StageKind::Robots));
}}
