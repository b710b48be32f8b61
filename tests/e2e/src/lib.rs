//! Support for end-to-end tests on stock Envoy: find the Envoy binary, start
//! it on free ports with a config from `envoy-configs/`, and the sample app
//! that stands behind it.

pub mod envoy;
pub mod idp;
pub mod idp_django;
pub mod loadgen;
pub mod redis;
pub mod sample_app;
pub mod signin;
pub mod stack;

use std::net::TcpListener;
use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The value of `key` in a query string, as a number (0 when absent or not a number).
pub fn query_u64(query: Option<&str>, key: &str) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// First and one-past-last port [`free_port`] hands out: below Linux's
/// ephemeral range (32768–60999), so a port picked here is never given to a
/// socket that binds port 0 or connects out between the pick and the server
/// binding it (that race once made CI's Envoy fail with "Address already in use").
const PORT_RANGE: (u16, u16) = (20_000, 32_000);

/// A free TCP port on 127.0.0.1 for a server the test starts next.
///
/// Ports come from [`PORT_RANGE`], starting at an offset taken from the
/// process id and advancing with a process-wide counter, so parallel tests in
/// one binary, and test binaries run one after another, do not get the same
/// port twice; each candidate is checked by binding it.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.1 - PORT_RANGE.0);
    let start = (std::process::id().wrapping_mul(7919)) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let offset = (start + n) % span;
        let port = PORT_RANGE.0 + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port in 20000-32000 on 127.0.0.1",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
        assert!(ports
            .iter()
            .all(|p| (PORT_RANGE.0..PORT_RANGE.1).contains(p)));
    }
}
