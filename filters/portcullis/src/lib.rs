//! Portcullis all-in-one filter (`portcullis.wasm`): any subset of the stages
//! robots → preauth → conditional access → cookie in one Envoy filter, in
//! chain order. Its configuration is one JSON document with a section per
//! stage (`robots`, `preauth`, `conditional_access`, `cookie`), each exactly
//! the configuration of that stage's single-stage module
//! ([`portcullis_core::pipeline::PipelineConfig`]). The request header map is
//! read once per request and shared by the stages, and the identity goes from
//! preauth to conditional access in memory.
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

use portcullis_proxy_wasm::Layout;

proxy_wasm::main! {{
    portcullis_proxy_wasm::start!(Layout::AllInOne);
}}
