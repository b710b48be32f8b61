//! What the host keeps per `Store`: streams, recorded effects, clock, random
//! source; and [`SharedData`], the one piece of state that several plugin
//! instances (Envoy worker VMs) may share.

use crate::abi::{buffer_type, map_type};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::{bail, Result};

/// A header map: lower-case names, raw values, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// One log line written by the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// 0 trace … 5 critical.
    pub level: u32,
    /// The context that was running.
    pub context_id: u32,
    /// The message.
    pub message: String,
}

/// A call the module made with `proxy_http_call`.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// The token returned to the module.
    pub token: u32,
    /// The context that dispatched it.
    pub context_id: u32,
    /// The cluster name.
    pub upstream: String,
    /// Request headers (`:method`, `:path`, `:authority` …).
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout the module asked for.
    pub timeout_ms: u32,
    /// Whether the test has answered it.
    pub answered: bool,
}

impl HttpCall {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

/// A metric defined by the module.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: MetricKind,
    /// Counter/gauge value.
    pub value: u64,
    /// Histogram samples.
    pub samples: Vec<u64>,
}

/// A response the module sent with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: u32,
    /// Details string.
    pub details: String,
    /// Headers (lower-case names).
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }

    /// Every value of header `name`, as text.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        header_values(&self.headers, name)
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The first value of `name` in `headers`.
pub fn header_value(headers: &Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Every value of `name` in `headers`.
pub fn header_values(headers: &Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Per-stream state, like Envoy's for one HTTP request.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    /// Request headers as the next filter would see them.
    pub request_headers: Headers,
    /// Request trailers.
    pub request_trailers: Headers,
    /// Response headers as the client would see them.
    pub response_headers: Headers,
    /// Response trailers.
    pub response_trailers: Headers,
    /// The request body buffered in the filter (current chunk plus what it paused on).
    pub request_body: Vec<u8>,
    /// The response body buffered in the filter.
    pub response_body: Vec<u8>,
    /// Request body bytes released downstream of the filter (to the upstream).
    pub request_body_out: Vec<u8>,
    /// Response body bytes released to the client.
    pub response_body_out: Vec<u8>,
    /// The local response, if the module sent one.
    pub local_response: Option<LocalResponse>,
    /// How many times the module resumed the request / response.
    pub request_continued: u32,
    /// How many times the module resumed the response.
    pub response_continued: u32,
    /// Whether the module closed the stream.
    pub closed: bool,
    /// Per-stream properties set by the test (e.g. `source.address`).
    pub properties: HashMap<String, Vec<u8>>,
    /// The metadata of the route Envoy chose for the stream: namespace →
    /// key → string value (`filter_metadata` of the route). `None`: the
    /// stream matched no route.
    pub route_metadata: Option<BTreeMap<String, BTreeMap<String, String>>>,
    /// Filter state shared with other plugins on the same stream (`set_property`).
    pub filter_state: FilterState,
    /// Which map/buffer the current callback works on (request or response side).
    pub in_response: bool,
}

/// Filter state for one stream; clone it into a second plugin's stream to run a chain.
#[derive(Debug, Default, Clone)]
pub struct FilterState(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl FilterState {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The value stored under `key` (path segments joined with `.`).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().get(key).cloned()
    }

    /// Stores `value` under `key`.
    pub fn set(&self, key: &str, value: Vec<u8>) {
        self.lock().insert(key.to_string(), value);
    }
}

#[derive(Debug, Default)]
struct SharedInner {
    data: HashMap<String, (Vec<u8>, u32)>,
    queues: Vec<(String, VecDeque<Vec<u8>>)>,
}

/// Shared data and queues: one per "Envoy process". Clone it into several
/// plugins to model worker VMs that share a cache.
#[derive(Debug, Default, Clone)]
pub struct SharedData(Arc<Mutex<SharedInner>>);

impl SharedData {
    fn lock(&self) -> MutexGuard<'_, SharedInner> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The value and CAS of `key`.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(key).cloned()
    }

    /// Sets `key` if `cas` is 0 or matches; returns false on a CAS mismatch.
    pub fn set(&self, key: &str, value: Vec<u8>, cas: u32) -> bool {
        let mut inner = self.lock();
        let current = inner.data.get(key).map(|(_, c)| *c).unwrap_or(0);
        if cas != 0 && cas != current {
            return false;
        }
        inner.data.insert(key.to_string(), (value, current + 1));
        true
    }

    pub(crate) fn register_queue(&self, name: &str) -> u32 {
        let mut inner = self.lock();
        if let Some(i) = inner.queues.iter().position(|(n, _)| n == name) {
            return i as u32 + 1;
        }
        inner.queues.push((name.to_string(), VecDeque::new()));
        inner.queues.len() as u32
    }

    pub(crate) fn resolve_queue(&self, name: &str) -> Option<u32> {
        let inner = self.lock();
        inner
            .queues
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as u32 + 1)
    }

    pub(crate) fn enqueue(&self, id: u32, value: Vec<u8>) -> bool {
        let mut inner = self.lock();
        match inner.queues.get_mut((id as usize).wrapping_sub(1)) {
            Some((_, q)) => {
                q.push_back(value);
                true
            }
            None => false,
        }
    }

    /// `None`: no such queue; `Some(None)`: empty.
    pub(crate) fn dequeue(&self, id: u32) -> Option<Option<Vec<u8>>> {
        let mut inner = self.lock();
        inner
            .queues
            .get_mut((id as usize).wrapping_sub(1))
            .map(|(_, q)| q.pop_front())
    }
}

/// Everything the host knows, one per `Store`.
#[derive(Debug, Default)]
pub struct HostState {
    /// The plugin configuration handed to `on_configure`.
    pub plugin_config: Vec<u8>,
    /// The VM configuration handed to `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// The context whose callback is running.
    pub effective_context: u32,
    /// The root context id.
    pub root_context_id: u32,
    /// Streams by context id.
    pub streams: HashMap<u32, StreamState>,
    /// Log lines.
    pub logs: Vec<LogEntry>,
    /// Log level reported to the module.
    pub log_level: u32,
    /// Current time, settable by tests.
    pub now_nanos: u64,
    /// Tick period the module asked for.
    pub tick_period_ms: u32,
    /// Calls the module dispatched.
    pub http_calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    /// Clusters that exist (empty: any name is accepted).
    pub known_clusters: Vec<String>,
    /// The answer to the last HTTP call being delivered.
    pub(crate) call_response_headers: Headers,
    pub(crate) call_response_trailers: Headers,
    pub(crate) call_response_body: Vec<u8>,
    pub(crate) last_status: (u32, String),
    /// Shared data and queues.
    pub shared: SharedData,
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// Whether the module called `proxy_done`.
    pub done_called: bool,
    /// Root-level properties (`plugin_name`, …).
    pub properties: HashMap<String, Vec<u8>>,
    pub(crate) rng: u64,
}

impl HostState {
    fn current_stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.effective_context)
    }

    fn current_stream_mut(&mut self) -> Option<&mut StreamState> {
        let ctx = self.effective_context;
        self.streams.get_mut(&ctx)
    }

    pub(crate) fn header_map(&self, map: i32) -> Option<&Headers> {
        match map {
            map_type::HTTP_CALL_RESPONSE_HEADERS => Some(&self.call_response_headers),
            map_type::HTTP_CALL_RESPONSE_TRAILERS => Some(&self.call_response_trailers),
            _ => {
                let s = self.current_stream()?;
                match map {
                    map_type::REQUEST_HEADERS => Some(&s.request_headers),
                    map_type::REQUEST_TRAILERS => Some(&s.request_trailers),
                    map_type::RESPONSE_HEADERS => Some(&s.response_headers),
                    map_type::RESPONSE_TRAILERS => Some(&s.response_trailers),
                    _ => None,
                }
            }
        }
    }

    pub(crate) fn header_map_mut(&mut self, map: i32) -> Option<&mut Headers> {
        match map {
            map_type::HTTP_CALL_RESPONSE_HEADERS => Some(&mut self.call_response_headers),
            map_type::HTTP_CALL_RESPONSE_TRAILERS => Some(&mut self.call_response_trailers),
            _ => {
                let s = self.current_stream_mut()?;
                match map {
                    map_type::REQUEST_HEADERS => Some(&mut s.request_headers),
                    map_type::REQUEST_TRAILERS => Some(&mut s.request_trailers),
                    map_type::RESPONSE_HEADERS => Some(&mut s.response_headers),
                    map_type::RESPONSE_TRAILERS => Some(&mut s.response_trailers),
                    _ => None,
                }
            }
        }
    }

    pub(crate) fn buffer(&self, buffer: i32) -> Option<&Vec<u8>> {
        match buffer {
            buffer_type::PLUGIN_CONFIGURATION => Some(&self.plugin_config),
            buffer_type::VM_CONFIGURATION => Some(&self.vm_config),
            buffer_type::HTTP_CALL_RESPONSE_BODY => Some(&self.call_response_body),
            buffer_type::REQUEST_BODY => self.current_stream().map(|s| &s.request_body),
            buffer_type::RESPONSE_BODY => self.current_stream().map(|s| &s.response_body),
            _ => None,
        }
    }

    pub(crate) fn buffer_mut(&mut self, buffer: i32) -> Option<&mut Vec<u8>> {
        match buffer {
            buffer_type::HTTP_CALL_RESPONSE_BODY => Some(&mut self.call_response_body),
            buffer_type::REQUEST_BODY => self.current_stream_mut().map(|s| &mut s.request_body),
            buffer_type::RESPONSE_BODY => self.current_stream_mut().map(|s| &mut s.response_body),
            _ => None,
        }
    }

    /// Looks a property up like Envoy: stream properties set by the test,
    /// then values derived from the request headers, then filter state, then
    /// root properties.
    pub(crate) fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        let key = path.join(".");
        if let Some(s) = self.current_stream() {
            if let Some(v) = s.properties.get(&key) {
                return Some(v.clone());
            }
            let from_header = |name: &str| {
                s.request_headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let derived = match key.as_str() {
                "request.path" => from_header(":path"),
                "request.url_path" => from_header(":path")
                    .map(|p| p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec()),
                "request.method" => from_header(":method"),
                "request.host" => from_header(":authority"),
                "request.scheme" => from_header(":scheme"),
                "request.id" => from_header("x-request-id"),
                "request.useragent" => from_header("user-agent"),
                "source.address" => Some(b"127.0.0.1:50000".to_vec()),
                "destination.address" => Some(b"127.0.0.1:10000".to_vec()),
                _ => None,
            };
            if derived.is_some() {
                return derived;
            }
            if let Some(rest) = key.strip_prefix("xds.route_metadata") {
                return route_metadata_property(s.route_metadata.as_ref()?, rest);
            }
            if let Some(v) = s.filter_state.get(&key) {
                return Some(v);
            }
        }
        self.properties.get(&key).cloned()
    }

    pub(crate) fn set_property(&mut self, path: &[String], value: Vec<u8>) {
        if path.first().is_some_and(|p| p == "xds") {
            // Envoy's `xds.*` attributes are read-only.
            return;
        }
        let key = path.join(".");
        match self.current_stream_mut() {
            Some(s) => s.filter_state.set(&key, value),
            None => {
                self.properties.insert(key, value);
            }
        }
    }

    pub(crate) fn continue_stream(&mut self, ctx: u32, stream_type: i32) {
        if let Some(s) = self.streams.get_mut(&ctx) {
            if stream_type == 1 {
                s.response_continued += 1;
                let body = std::mem::take(&mut s.response_body);
                s.response_body_out.extend(body);
            } else {
                s.request_continued += 1;
                let body = std::mem::take(&mut s.request_body);
                s.request_body_out.extend(body);
            }
        }
    }

    pub(crate) fn send_local_response(
        &mut self,
        ctx: u32,
        status: u32,
        details: String,
        headers: Headers,
        body: Vec<u8>,
    ) -> Result<()> {
        let Some(s) = self.streams.get_mut(&ctx) else {
            bail!("send_local_response from context {ctx}, which is not an HTTP stream");
        };
        if s.local_response.is_some() {
            bail!("send_local_response called twice on stream {ctx}");
        }
        s.local_response = Some(LocalResponse {
            status,
            details,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body,
        });
        Ok(())
    }

    /// Deterministic pseudo-random bytes (splitmix64), seeded per plugin.
    pub(crate) fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            out.extend_from_slice(&z.to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `xds.route_metadata…` as Envoy 1.40 answers it (checked against the real
/// binary): the `Metadata` message is walked field by field; a string leaf is
/// its raw bytes, a namespace (a `Struct`) the proxy-wasm pairs encoding of its
/// keys and values, anything missing "not found". The whole message (which
/// Envoy serializes as protobuf) is not modelled.
fn route_metadata_property(
    metadata: &BTreeMap<String, BTreeMap<String, String>>,
    rest: &str,
) -> Option<Vec<u8>> {
    let parts: Vec<&str> = rest.split('.').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["filter_metadata", ns, key] => metadata.get(*ns)?.get(*key).map(|v| v.as_bytes().to_vec()),
        ["filter_metadata", ns] => {
            let pairs: Vec<(String, Vec<u8>)> = metadata
                .get(*ns)?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect();
            Some(crate::abi::serialize_pairs(&pairs))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_compare_and_swap() {
        let shared = SharedData::default();
        assert!(shared.get("k").is_none());
        assert!(shared.set("k", b"a".to_vec(), 0));
        let (v, cas) = shared.get("k").unwrap();
        assert_eq!(v, b"a");
        assert!(shared.set("k", b"b".to_vec(), cas));
        assert!(!shared.set("k", b"c".to_vec(), cas), "stale CAS must fail");
        assert_eq!(shared.get("k").unwrap().0, b"b");
        // A clone is the same store (another worker VM).
        let other = shared.clone();
        assert_eq!(other.get("k").unwrap().0, b"b");
    }

    #[test]
    fn shared_queues() {
        let shared = SharedData::default();
        let id = shared.register_queue("q");
        assert_eq!(shared.register_queue("q"), id);
        assert_eq!(shared.resolve_queue("q"), Some(id));
        assert_eq!(shared.resolve_queue("nope"), None);
        assert_eq!(shared.dequeue(id), Some(None));
        assert!(shared.enqueue(id, b"1".to_vec()));
        assert!(shared.enqueue(id, b"2".to_vec()));
        assert_eq!(shared.dequeue(id), Some(Some(b"1".to_vec())));
        assert_eq!(shared.dequeue(id), Some(Some(b"2".to_vec())));
        assert_eq!(shared.dequeue(99), None);
        assert!(!shared.enqueue(99, vec![]));
    }

    #[test]
    fn random_bytes_are_deterministic_per_seed() {
        let mut a = HostState {
            rng: 7,
            ..HostState::default()
        };
        let mut b = HostState {
            rng: 7,
            ..HostState::default()
        };
        assert_eq!(a.random_bytes(33), b.random_bytes(33));
        assert_ne!(a.random_bytes(16), vec![0; 16]);
    }

    #[test]
    fn properties_derive_from_headers_and_filter_state() {
        let mut s = HostState::default();
        s.streams.insert(
            5,
            StreamState {
                request_headers: vec![
                    (":path".into(), b"/a?b".to_vec()),
                    ("x-request-id".into(), b"rid".to_vec()),
                ],
                ..StreamState::default()
            },
        );
        s.effective_context = 5;
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(s.property(&p(&["request", "path"])), Some(b"/a?b".to_vec()));
        assert_eq!(
            s.property(&p(&["request", "url_path"])),
            Some(b"/a".to_vec())
        );
        assert_eq!(s.property(&p(&["request", "id"])), Some(b"rid".to_vec()));
        assert_eq!(s.property(&p(&["nope"])), None);
        s.set_property(&p(&["portcullis_identity"]), b"x".to_vec());
        assert_eq!(
            s.property(&p(&["portcullis_identity"])),
            Some(b"x".to_vec())
        );
    }

    #[test]
    fn route_metadata_answers_like_envoy() {
        let mut s = HostState::default();
        let mut md: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        md.entry("portcullis".into())
            .or_default()
            .insert("app".into(), "admin".into());
        s.streams.insert(
            1,
            StreamState {
                route_metadata: Some(md),
                ..StreamState::default()
            },
        );
        s.streams.insert(2, StreamState::default());
        s.effective_context = 1;
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let leaf = p(&[
            "xds",
            "route_metadata",
            "filter_metadata",
            "portcullis",
            "app",
        ]);
        assert_eq!(s.property(&leaf), Some(b"admin".to_vec()));
        // The namespace as Envoy encodes a map (pairs), as seen from Envoy 1.40:
        // 1 pair, sizes 3 and 5, then `app\0admin\0`.
        assert_eq!(
            s.property(&leaf[..4]),
            Some(b"\x01\0\0\0\x03\0\0\0\x05\0\0\0app\0admin\0".to_vec())
        );
        assert_eq!(
            s.property(&p(&[
                "xds",
                "route_metadata",
                "filter_metadata",
                "other",
                "app"
            ])),
            None
        );
        // Read-only, and absent for a stream without a route.
        s.set_property(&leaf, b"sample".to_vec());
        assert_eq!(s.property(&leaf), Some(b"admin".to_vec()));
        s.effective_context = 2;
        assert_eq!(s.property(&leaf), None);
    }
}
