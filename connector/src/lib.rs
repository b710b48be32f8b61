//! Portcullis connector (outbound-only agent) and edge service.
//!
//! The edge service runs beside Envoy: it owns a connector CA, registers connectors
//! (admin token checked against a JWKS), accepts their mutual-TLS tunnels and sends
//! Envoy's upstream traffic down them as HTTP/2 requests. The connector runs inside the
//! private network, dials the edge (it never listens), serves HTTP/2 on its outbound
//! connections and forwards each request to the app's backend.
//!
//! Both sides are libraries first: [`edge::start`] and [`connector::start`] bind their
//! sockets (port 0 works), report the bound addresses in a handle and run until the
//! [`Shutdown`] fires. The binaries in `src/bin/` only parse arguments, set up logging
//! and wire signals.

pub mod backend;
pub mod body;
pub mod config;
pub mod connector;
pub mod denial;
pub mod edge;
pub mod forwarding;
pub mod identity;
pub mod limits;
mod liveness;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod shutdown;
pub mod store;
pub mod token;
pub mod wire;

pub use shutdown::{Shutdown, ShutdownTrigger};

/// ALPN protocol a connector offers when it opens a tunnel (it will serve HTTP/2 on it).
pub const TUNNEL_ALPN: &[u8] = b"portcullis-tunnel/1";
/// ALPN protocol a connector offers when it calls the edge's API (config, renewal).
pub const API_ALPN: &[u8] = b"http/1.1";
/// Default request header that names the published app (set by Envoy's route).
pub const DEFAULT_APP_HEADER: &str = "x-portcullis-app";
/// Request id header passed to the connector and the app.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header carrying the denial code of an error produced by the edge or connector.
pub const ERROR_CODE_HEADER: &str = "x-portcullis-error";

/// Largest header block either side of a tunnel accepts, bytes (above the edge's
/// largest `max_request_headers_kb`, so what Envoy and the edge let through fits).
pub const TUNNEL_MAX_HEADER_LIST: u32 = 256 * 1024 + 16 * 1024;

/// An error and all its sources, joined by `: ` (hyper's own messages are terse).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
