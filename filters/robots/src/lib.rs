//! Portcullis robots filter: answers `GET`/`HEAD /robots.txt` on every host with
//! `User-agent: *` / `Disallow: /` without reaching the upstream, and adds
//! `X-Robots-Tag` to every response. The decisions live in
//! [`portcullis_core::robots`]; the module is the shared host adapter
//! ([`portcullis_proxy_wasm`]) running that one stage.

use portcullis_core::pipeline::StageKind;
use portcullis_proxy_wasm::Layout;

proxy_wasm::main! {{
    portcullis_proxy_wasm::start!(Layout::Single(StageKind::Robots));
}}
