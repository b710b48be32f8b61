//! The bodies of the Portcullis fuzz targets.
//!
//! Each target is one function `fn(&[u8])` that feeds attacker-controlled
//! bytes to one parser or validator and checks properties of the answer
//! (idempotence, round trips, chunk-split equality, "cannot be forged"). A
//! property that fails panics, which is how libFuzzer and the replay test see
//! it. [`TARGETS`] lists them all: `fuzz/fuzz_targets/<name>.rs` wraps each
//! for cargo-fuzz (nightly), and `tests/replay.rs` runs every file of
//! `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through it on stable.
//!
//! Path targets call the current `portcullis_core::path` API (`normalize`,
//! `has_prefix`) and `redirect::validate`; they are kept thin so that they
//! follow that API when it changes.
// Fuzz targets report a broken property by panicking: that is their purpose.
#![allow(clippy::panic)]

mod config;
mod crypto;
mod edge;
mod http;
pub mod json;
mod paths;

/// A fuzz target: a name (the cargo-fuzz target and corpus directory) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name of the cargo-fuzz target and of its corpus directory.
    pub name: &'static str,
    /// What it covers.
    pub covers: &'static str,
    /// The body.
    pub run: fn(&[u8]),
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "path_normalize",
        covers: "path::normalize: idempotent, canonical form",
        run: paths::normalize,
    },
    Target {
        name: "path_prefix",
        covers: "path::has_prefix on normalised paths",
        run: paths::prefix,
    },
    Target {
        name: "redirect_validate",
        covers: "redirect::validate of `rd`",
        run: paths::redirect,
    },
    Target {
        name: "cookie_header",
        covers: "parsing and stripping of the Cookie header (bytes)",
        run: http::cookie_header,
    },
    Target {
        name: "set_cookie",
        covers: "Set-Cookie rewriting",
        run: http::set_cookie,
    },
    Target {
        name: "url_header",
        covers: "URL translation in Location, Content-Location, Refresh, Link",
        run: http::url_header,
    },
    Target {
        name: "body_chunks",
        covers: "body translation: split anywhere = translated whole",
        run: http::body_chunks,
    },
    Target {
        name: "policy_inputs",
        covers: "X-Forwarded-For, addresses, step-up marker, cookie values, user agent",
        run: http::policy_inputs,
    },
    Target {
        name: "seal_open",
        covers: "opening a sealed cookie; seal/open round trip",
        run: crypto::seal_open,
    },
    Target {
        name: "jwt_validate",
        covers: "ID/bearer token validation (any bytes, and a signed token with one part replaced)",
        run: crypto::jwt_validate,
    },
    Target {
        name: "jwks_parse",
        covers: "JWKS parsing",
        run: crypto::jwks_parse,
    },
    Target {
        name: "discovery_parse",
        covers: "discovery document and token response parsing",
        run: crypto::discovery_parse,
    },
    Target {
        name: "handoff_decode",
        covers: "identity handoff and session payload decoding",
        run: crypto::handoff_decode,
    },
    Target {
        name: "config_preauth",
        covers: "preauth configuration parser (raw JSON bytes)",
        run: config::preauth,
    },
    Target {
        name: "config_policy",
        covers: "conditional-access configuration parser (raw JSON bytes)",
        run: config::policy,
    },
    Target {
        name: "config_cookie",
        covers: "cookie filter configuration parser (raw JSON bytes)",
        run: config::cookie,
    },
    Target {
        name: "config_robots",
        covers: "robots configuration parser (raw JSON bytes)",
        run: config::robots,
    },
    Target {
        name: "config_structured",
        covers: "every filter and connector configuration parser, JSON built from the schemas' field names",
        run: config::structured,
    },
    Target {
        name: "connector_config",
        covers: "connector and edge configuration files (raw bytes)",
        run: config::connector,
    },
    Target {
        name: "edge_register",
        covers: "the edge's registration request body and its CSR",
        run: edge::register,
    },
    Target {
        name: "edge_csr",
        covers: "CSR signing from arbitrary DER (signature must verify)",
        run: edge::csr,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Splits `data` at the first `sep` (or gives all of it and an empty rest).
pub(crate) fn split2(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `data` as text when it is UTF-8 (header values reach the core as `&str`
/// only after the filters checked them).
pub(crate) fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
