//! Support for end-to-end tests on stock Envoy: find the Envoy binary, start
//! it on free ports with a config from `envoy-configs/`, and the sample app
//! that stands behind it.

pub mod envoy;
pub mod idp;
pub mod sample_app;
pub mod stack;

use std::net::TcpListener;
use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests
/// that start their servers right away).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
