//! Prometheus text-format metrics, kept in atomics (no registry crate needed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters and gauges of one process (edge or connector).
#[derive(Debug)]
pub struct Metrics {
    prefix: &'static str,
    /// Live tunnels (gauge).
    pub tunnels_up: AtomicI64,
    /// Streams (requests) in flight (gauge).
    pub streams_active: AtomicI64,
    /// Requests handled.
    pub requests_total: AtomicU64,
    /// Request body bytes sent towards the app.
    pub bytes_up_total: Arc<AtomicU64>,
    /// Response body bytes sent towards the client.
    pub bytes_down_total: Arc<AtomicU64>,
    /// Tunnel connections established.
    pub tunnel_connects_total: AtomicU64,
    /// Certificates issued or received by renewal.
    pub renewals_total: AtomicU64,
    /// Configuration pulls served (edge) or made (connector).
    pub config_pulls_total: AtomicU64,
    /// Connections that have not authenticated yet (edge: TLS handshakes on the
    /// tunnel port, registration-port connections) (gauge).
    pub pending_connections: AtomicI64,
    /// Registration-port requests being handled (gauge).
    pub registrations_in_flight: AtomicI64,
    /// Connectors out of rotation (outlier ejection) (gauge).
    pub connectors_ejected: AtomicI64,
    /// Outlier ejections.
    pub ejections_total: AtomicU64,
    /// Connector revocations made or learnt.
    pub revocations_total: AtomicU64,
    registrations: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    assertions: Mutex<BTreeMap<String, u64>>,
    limited: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    /// New metrics whose names start with `prefix` (e.g. `portcullis_edge`).
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            tunnels_up: AtomicI64::new(0),
            streams_active: AtomicI64::new(0),
            requests_total: AtomicU64::new(0),
            bytes_up_total: Arc::new(AtomicU64::new(0)),
            bytes_down_total: Arc::new(AtomicU64::new(0)),
            tunnel_connects_total: AtomicU64::new(0),
            renewals_total: AtomicU64::new(0),
            config_pulls_total: AtomicU64::new(0),
            pending_connections: AtomicI64::new(0),
            registrations_in_flight: AtomicI64::new(0),
            connectors_ejected: AtomicI64::new(0),
            ejections_total: AtomicU64::new(0),
            revocations_total: AtomicU64::new(0),
            registrations: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            assertions: Mutex::new(BTreeMap::new()),
            limited: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one error with its denial code.
    pub fn error(&self, code: &str) {
        if let Ok(mut map) = self.errors.lock() {
            *map.entry(code.to_string()).or_insert(0) += 1;
        }
    }

    /// Counts one refusal by a limit (`registration_rate`, `registration_concurrency`,
    /// `pending_global`, `pending_per_source`, `tunnels_global`, `tunnels_per_connector`,
    /// `handshake_timeout`).
    pub fn limited(&self, limit: &str) {
        if let Ok(mut map) = self.limited.lock() {
            *map.entry(limit.to_string()).or_insert(0) += 1;
        }
    }

    /// The number of refusals counted for `limit`.
    pub fn limited_with(&self, limit: &str) -> u64 {
        self.limited
            .lock()
            .map(|m| m.get(limit).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The number of registrations counted with `result`.
    pub fn registrations_with(&self, result: &str) -> u64 {
        self.registrations
            .lock()
            .map(|m| m.get(result).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts one registration with its result (`ok` or a refusal code).
    pub fn registration(&self, result: &str) {
        if let Ok(mut map) = self.registrations.lock() {
            *map.entry(result.to_string()).or_insert(0) += 1;
        }
    }

    /// Counts one identity-assertion check with its outcome (`valid`, `cached`,
    /// `missing`, `not_configured`, or a refusal code such as `assertion_expired`).
    pub fn assertion(&self, outcome: &str) {
        if let Ok(mut map) = self.assertions.lock() {
            *map.entry(outcome.to_string()).or_insert(0) += 1;
        }
    }

    /// The number of assertion checks counted with `outcome`.
    pub fn assertions_with(&self, outcome: &str) -> u64 {
        self.assertions
            .lock()
            .map(|m| m.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The number of errors counted with `code`.
    pub fn errors_with(&self, code: &str) -> u64 {
        self.errors
            .lock()
            .map(|m| m.get(code).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Renders all metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let p = self.prefix;
        let mut out = String::new();
        let gauges = [
            (
                "tunnels_up",
                "Live tunnels.",
                self.tunnels_up.load(Ordering::Relaxed),
            ),
            (
                "streams_active",
                "Streams in flight.",
                self.streams_active.load(Ordering::Relaxed),
            ),
            (
                "pending_connections",
                "Connections not authenticated yet.",
                self.pending_connections.load(Ordering::Relaxed),
            ),
            (
                "registrations_in_flight",
                "Registration-port requests being handled.",
                self.registrations_in_flight.load(Ordering::Relaxed),
            ),
            (
                "connectors_ejected",
                "Connectors out of rotation (outlier ejection).",
                self.connectors_ejected.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {p}_{name} {help}\n# TYPE {p}_{name} gauge\n{p}_{name} {v}"
            );
        }
        let counters = [
            ("requests_total", "Requests handled.", &self.requests_total),
            (
                "bytes_up_total",
                "Request body bytes towards the app.",
                &*self.bytes_up_total,
            ),
            (
                "bytes_down_total",
                "Response body bytes towards the client.",
                &*self.bytes_down_total,
            ),
            (
                "tunnel_connects_total",
                "Tunnel connections established.",
                &self.tunnel_connects_total,
            ),
            (
                "renewals_total",
                "Certificate renewals.",
                &self.renewals_total,
            ),
            (
                "config_pulls_total",
                "Configuration pulls.",
                &self.config_pulls_total,
            ),
            (
                "ejections_total",
                "Outlier ejections of connectors.",
                &self.ejections_total,
            ),
            (
                "revocations_total",
                "Connector revocations made or learnt.",
                &self.revocations_total,
            ),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {p}_{name} {help}\n# TYPE {p}_{name} counter\n{p}_{name} {v}"
            );
        }
        let labelled = [
            (
                "registrations_total",
                "Registrations by result.",
                "result",
                &self.registrations,
            ),
            (
                "errors_total",
                "Errors by denial code.",
                "code",
                &self.errors,
            ),
            (
                "assertions_total",
                "Identity assertion checks by outcome.",
                "outcome",
                &self.assertions,
            ),
            (
                "limited_total",
                "Connections and requests refused by a limit.",
                "limit",
                &self.limited,
            ),
        ];
        for (name, help, label, map) in labelled {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} counter");
            if let Ok(map) = map.lock() {
                for (k, v) in map.iter() {
                    let k = k.replace('\\', "\\\\").replace('"', "\\\"");
                    let _ = writeln!(out, "{p}_{name}{{{label}=\"{k}\"}} {v}");
                }
            }
        }
        out
    }
}
