//! Portcullis preauth filter: OpenID Connect sign-in, sealed session cookie,
//! identity headers for the app. Every decision is made by
//! [`portcullis_core::oidc`]; this crate only translates proxy-wasm callbacks
//! into calls of the core and its decisions into host calls.
//!
//! Provider documents (discovery, JWKS) are fetched by the root context of
//! each VM through the configured cluster and published in shared data, so
//! every worker VM uses the same keys; a lease in shared data keeps VMs from
//! fetching at once. Keys are refreshed periodically and, rate-limited, when
//! a token names an unknown `kid`; the last good keys survive a failed fetch.
//! Requests that arrive before the provider is known wait and are resumed.
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

use portcullis_core::app::{Chosen, RouteApp, ROUTE_APP_PROPERTY};
use portcullis_core::denial::Denial;
use portcullis_core::oidc::config::{Endpoints, PreauthConfig, ProviderMetadata};
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::session::SessionCache;
use portcullis_core::oidc::{
    self, finish_login, finish_login_denial, handoff, Decision, HttpCall, LoginOutcome, Needs,
    PendingLogin, Provider, RequestView, Response,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root::new(id)) });
}}

/// Root tick period.
const TICK: Duration = Duration::from_millis(200);
/// How long a request may wait for the provider's metadata or keys.
const WAIT_LIMIT_MS: u64 = 10_000;
/// How long a VM holds the fetch lease of a document.
const LEASE_SECS: u64 = 10;
/// Pause after a failed fetch before this VM tries again.
const RETRY_SECS: u64 = 5;
/// Timeout of discovery and JWKS fetches.
const FETCH_TIMEOUT_MS: u64 = 5_000;
/// Least time between two refetches forced by an unknown `kid`.
const MIN_FORCED_REFETCH_SECS: u64 = oidc::config::DEFAULT_JWKS_MIN_REFETCH_SECS;
/// Shared-data key prefix.
const SHARED_PREFIX: &str = "portcullis_preauth:";

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fills `buf` from the host's random source; false if it failed.
fn fill_random(buf: &mut [u8]) -> bool {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_fill_bytes(buf).is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocKind {
    Metadata,
    Jwks,
}

/// A provider document as published in shared data: fetch time (8 bytes, BE) then the body.
fn pack(fetched_at: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len().saturating_add(8));
    v.extend_from_slice(&fetched_at.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn unpack(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, body) = bytes.split_at_checked(8)?;
    Some((u64::from_be_bytes(head.try_into().ok()?), body))
}

/// What one VM knows about an app's provider.
#[derive(Default)]
struct AppProvider {
    metadata: Option<ProviderMetadata>,
    metadata_cas: Option<u32>,
    metadata_at: u64,
    keys: Option<KeySet>,
    keys_cas: Option<u32>,
    keys_at: u64,
    /// Bumped whenever this VM's keys change or a fetch of them ends.
    keys_generation: u64,
    /// A token named an unknown kid: refetch as soon as the rate limit allows.
    force_keys: bool,
    retry_after: [u64; 2],
}

impl AppProvider {
    /// When a failed fetch of `kind` may be retried.
    fn retry_after(&mut self, kind: DocKind) -> &mut u64 {
        match kind {
            DocKind::Metadata => &mut self.retry_after[0],
            DocKind::Jwks => &mut self.retry_after[1],
        }
    }
}

/// Why a stream waits.
enum WaitFor {
    /// `on_request` said [`Decision::Wait`].
    Provider(Needs),
    /// `finish_login` met an unknown `kid`; keys are being refetched.
    Keys {
        generation: u64,
        pending: Box<PendingLogin>,
        status: Option<u16>,
        body: Vec<u8>,
    },
}

struct Waiter {
    app: usize,
    since_ms: u64,
    what: WaitFor,
    context_id: u32,
}

/// A token exchange in flight.
struct Exchange {
    context_id: u32,
    pending: Box<PendingLogin>,
    started_ms: u64,
    timeout_ms: u64,
}

/// Per-VM state shared by the root context and the streams.
struct Vm {
    config: Rc<PreauthConfig>,
    owned: Vec<String>,
    apps: Vec<AppProvider>,
    /// In-flight document fetches: token → (app, kind).
    fetches: HashMap<u32, (usize, DocKind)>,
    /// In-flight token exchanges by call token.
    exchanges: HashMap<u32, Exchange>,
    waiters: Vec<Waiter>,
    ticks: u64,
    /// Sessions this worker opened recently; a new configuration gets a new,
    /// empty cache (see `SessionCache`).
    sessions: RefCell<SessionCache>,
}

impl Vm {
    fn new(config: PreauthConfig) -> Vm {
        let owned = oidc::owned_headers(&config);
        let apps = config
            .apps
            .iter()
            .map(|a| {
                let mut p = AppProvider::default();
                if let Some(Endpoints::Explicit(m)) = a.oidc.as_ref().map(|o| &o.endpoints) {
                    p.metadata = Some((**m).clone());
                }
                p
            })
            .collect();
        Vm {
            config: Rc::new(config),
            owned,
            apps,
            fetches: HashMap::new(),
            exchanges: HashMap::new(),
            waiters: Vec::new(),
            ticks: 0,
            sessions: RefCell::new(SessionCache::default()),
        }
    }

    fn provider(&self, app: usize) -> Provider<'_> {
        match self.apps.get(app) {
            Some(p) => Provider {
                metadata: p.metadata.as_ref(),
                keys: p.keys.as_ref(),
            },
            None => Provider::default(),
        }
    }

    /// The shared-data key of an app's document (keyed by URL, so apps of
    /// one provider share it).
    fn doc_key(&self, app: usize, kind: DocKind) -> Option<String> {
        let settings = self.config.apps.get(app)?.oidc.as_ref()?;
        let url = match kind {
            DocKind::Metadata => match &settings.endpoints {
                Endpoints::Discover(u) => u.to_string(),
                Endpoints::Explicit(_) => return None,
            },
            DocKind::Jwks => self.apps.get(app)?.metadata.as_ref()?.jwks_uri.to_string(),
        };
        Some(format!("{SHARED_PREFIX}{url}"))
    }

    /// Reads the app's documents from shared data and parses any that changed.
    fn sync(&mut self, app: usize) {
        let Some(settings) = self.config.apps.get(app).and_then(|a| a.oidc.clone()) else {
            return;
        };
        if let Some(key) = self.doc_key(app, DocKind::Metadata) {
            if let (Ok((Some(bytes), cas)), Some(p)) =
                (hostcalls::get_shared_data(&key), self.apps.get_mut(app))
            {
                if cas != p.metadata_cas {
                    p.metadata_cas = cas;
                    match unpack(&bytes)
                        .map(|(at, body)| (at, parse_discovery(body, &settings.issuer)))
                    {
                        Some((at, Ok(m))) => {
                            p.metadata = Some(m);
                            p.metadata_at = at;
                        }
                        Some((_, Err(e))) => {
                            log::warn!("portcullis-preauth: shared discovery document refused: {e}")
                        }
                        None => {}
                    }
                }
            }
        }
        if let Some(key) = self.doc_key(app, DocKind::Jwks) {
            if let (Ok((Some(bytes), cas)), Some(p)) =
                (hostcalls::get_shared_data(&key), self.apps.get_mut(app))
            {
                if cas != p.keys_cas {
                    p.keys_cas = cas;
                    match unpack(&bytes).map(|(at, body)| (at, KeySet::parse(body))) {
                        Some((at, Ok(k))) => {
                            p.keys = Some(k);
                            p.keys_at = at;
                            p.keys_generation = p.keys_generation.saturating_add(1);
                        }
                        // Keep the last good keys.
                        Some((_, Err(e))) => {
                            log::warn!("portcullis-preauth: shared JWKS refused: {e}")
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// True when a document should be fetched now by someone.
    fn due(&self, app: usize, kind: DocKind, now: u64) -> bool {
        let (Some(settings), Some(p)) = (
            self.config.apps.get(app).and_then(|a| a.oidc.as_ref()),
            self.apps.get(app),
        ) else {
            return false;
        };
        let retry_after = match kind {
            DocKind::Metadata => p.retry_after[0],
            DocKind::Jwks => p.retry_after[1],
        };
        if now < retry_after || self.fetches.values().any(|f| *f == (app, kind)) {
            return false;
        }
        match kind {
            DocKind::Metadata => {
                matches!(settings.endpoints, Endpoints::Discover(_))
                    && (p.metadata.is_none()
                        || p.metadata_at.saturating_add(settings.jwks_refresh_secs) <= now)
            }
            DocKind::Jwks => {
                p.metadata.is_some()
                    && (p.keys.is_none()
                        || p.keys_at.saturating_add(settings.jwks_refresh_secs) <= now
                        || (p.force_keys
                            && p.keys_at.saturating_add(MIN_FORCED_REFETCH_SECS) <= now))
            }
        }
    }

    /// Takes the fetch lease of `key` for this VM (best effort across VMs).
    fn take_lease(key: &str, now: u64) -> bool {
        let lease_key = format!("{key}#lease");
        let (value, cas) = hostcalls::get_shared_data(&lease_key).unwrap_or((None, None));
        if let Some(v) = value {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                if u64::from_be_bytes(b) > now {
                    return false;
                }
            }
        }
        hostcalls::set_shared_data(
            &lease_key,
            Some(&now.saturating_add(LEASE_SECS).to_be_bytes()),
            cas,
        )
        .is_ok()
    }

    fn release_lease(key: &str) {
        let lease_key = format!("{key}#lease");
        let _ = hostcalls::set_shared_data(&lease_key, Some(&0u64.to_be_bytes()), None);
    }

    /// Dispatches the document fetches that are due (root context only).
    fn start_fetches(&mut self, now: u64) {
        for app in 0..self.apps.len() {
            for kind in [DocKind::Metadata, DocKind::Jwks] {
                if !self.due(app, kind, now) {
                    continue;
                }
                let Some(key) = self.doc_key(app, kind) else {
                    continue;
                };
                if !Self::take_lease(&key, now) {
                    continue;
                }
                let (Some(app_config), Some(p)) =
                    (self.config.apps.get(app), self.apps.get_mut(app))
                else {
                    continue;
                };
                let Some(settings) = app_config.oidc.as_ref() else {
                    continue;
                };
                let url = match (kind, &settings.endpoints, &p.metadata) {
                    (DocKind::Metadata, Endpoints::Discover(u), _) => u.clone(),
                    (DocKind::Jwks, _, Some(m)) => m.jwks_uri.clone(),
                    _ => continue,
                };
                let call = oidc::token::get_request(&settings.cluster, &url, FETCH_TIMEOUT_MS);
                match dispatch(&call) {
                    Ok(token) => {
                        log::info!(
                            "portcullis-preauth: fetching {url} for app {}",
                            app_config.id
                        );
                        self.fetches.insert(token, (app, kind));
                    }
                    Err(e) => {
                        log::warn!(
                            "portcullis-preauth: cannot fetch {url} through cluster `{}`: {e}",
                            settings.cluster
                        );
                        *p.retry_after(kind) = now.saturating_add(RETRY_SECS);
                        Self::release_lease(&key);
                    }
                }
            }
        }
    }

    /// Handles the answer to a document fetch.
    fn on_fetched(
        &mut self,
        app: usize,
        kind: DocKind,
        status: Option<u16>,
        body: &[u8],
        now: u64,
    ) {
        let Some(key) = self.doc_key(app, kind) else {
            return;
        };
        Self::release_lease(&key);
        let Some(settings) = self.config.apps.get(app).and_then(|a| a.oidc.clone()) else {
            return;
        };
        let Some(app_id) = self.config.apps.get(app).map(|a| a.id.clone()) else {
            return;
        };
        let result = match status {
            Some(200) => match kind {
                DocKind::Metadata => parse_discovery(body, &settings.issuer).map(|_| ()),
                DocKind::Jwks => KeySet::parse(body).map(|_| ()),
            }
            .map_err(|e| e.to_string()),
            Some(s) => Err(format!("status {s}")),
            None => Err("no answer (timeout or connection failure)".to_string()),
        };
        let Some(p) = self.apps.get_mut(app) else {
            return;
        };
        if kind == DocKind::Jwks {
            p.force_keys = false;
            p.keys_generation = p.keys_generation.saturating_add(1);
        }
        match result {
            Ok(()) => {
                publish(&key, now, body);
                log::info!("portcullis-preauth: {kind:?} of app {app_id} updated");
                self.sync(app);
            }
            Err(e) => {
                // The last good document stays in place.
                log::warn!("portcullis-preauth: {kind:?} fetch for app {app_id} failed: {e}");
                *p.retry_after(kind) = now.saturating_add(RETRY_SECS);
            }
        }
    }

    /// Removes and returns the waiters that can go on now.
    fn ready_waiters(&mut self, now_ms: u64) -> Vec<(Waiter, bool)> {
        let mut ready = Vec::new();
        let mut i = 0;
        while let Some(w) = self.waiters.get(i) {
            // A waiter of an app this VM does not know is never satisfied: it expires.
            let satisfied = self.apps.get(w.app).is_some_and(|p| match &w.what {
                WaitFor::Provider(Needs::Metadata) => p.metadata.is_some(),
                WaitFor::Provider(Needs::Keys) => p.keys.is_some(),
                WaitFor::Keys { generation, .. } => p.keys_generation > *generation,
            });
            let expired = now_ms >= w.since_ms.saturating_add(WAIT_LIMIT_MS);
            if satisfied || expired {
                ready.push((self.waiters.remove(i), expired && !satisfied));
            } else {
                i = i.saturating_add(1);
            }
        }
        ready
    }
}

/// Publishes a fetched document in shared data with compare-and-swap: a
/// concurrent write by another VM wins if it is at least as recent.
fn publish(key: &str, fetched_at: u64, body: &[u8]) {
    let value = pack(fetched_at, body);
    for _ in 0..3 {
        let (current, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        if let Some((at, _)) = current.as_deref().and_then(unpack) {
            if at > fetched_at {
                return;
            }
        }
        if hostcalls::set_shared_data(key, Some(&value), cas).is_ok() {
            return;
        }
    }
    log::warn!("portcullis-preauth: could not publish {key} (concurrent updates)");
}

fn dispatch(call: &HttpCall) -> Result<u32, String> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!call.body.is_empty()).then_some(call.body.as_slice());
    hostcalls::dispatch_http_call(
        &call.cluster,
        headers,
        body,
        Vec::new(),
        Duration::from_millis(call.timeout_ms),
    )
    .map_err(|s| format!("{s:?}"))
}

/// The status and body of the HTTP call answer being delivered.
fn call_answer(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok());
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

/// Routes an HTTP call answer to the document handler or the waiting stream.
fn on_call_answer(vm: &Rc<RefCell<Vm>>, token: u32, num_headers: usize, body_size: usize) {
    let (status, body) = call_answer(num_headers, body_size);
    let now = now_ms();
    let fetch = vm.borrow_mut().fetches.remove(&token);
    if let Some((app, kind)) = fetch {
        vm.borrow_mut()
            .on_fetched(app, kind, status, &body, now / 1000);
        resume_ready(vm);
        return;
    }
    let exchange = vm.borrow_mut().exchanges.remove(&token);
    if let Some(x) = exchange {
        if hostcalls::set_effective_context(x.context_id).is_err() {
            return;
        }
        if status.is_none() {
            let denial = if now >= x.started_ms.saturating_add(x.timeout_ms.saturating_sub(50)) {
                Denial::TokenExchangeTimeout
            } else {
                Denial::TokenExchangeFailed
            };
            log::warn!(
                "portcullis-preauth: [{}] token endpoint gave no answer: {}",
                x.pending.request_id,
                denial.code()
            );
            let config = Rc::clone(&vm.borrow().config);
            send(&finish_login_denial(&config, &x.pending, denial));
            return;
        }
        finish(vm, x.context_id, x.pending, status, body, false);
    }
}

/// Resumes every waiter that can go on.
fn resume_ready(vm: &Rc<RefCell<Vm>>) {
    let ready = vm.borrow_mut().ready_waiters(now_ms());
    for (waiter, timed_out) in ready {
        if hostcalls::set_effective_context(waiter.context_id).is_err() {
            continue;
        }
        match waiter.what {
            WaitFor::Provider(_) => {
                decide(vm, waiter.context_id, true, timed_out);
            }
            WaitFor::Keys {
                pending,
                status,
                body,
                ..
            } => finish(vm, waiter.context_id, pending, status, body, true),
        }
    }
}

/// The root context of a VM.
struct Root {
    context_id: u32,
    vm: Option<Rc<RefCell<Vm>>>,
}

impl Root {
    fn new(context_id: u32) -> Root {
        Root {
            context_id,
            vm: None,
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        if let Some(vm) = &self.vm {
            on_call_answer(vm, token, num_headers, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match PreauthConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "portcullis-preauth: configured {} app(s) (root context {})",
                    config.apps.len(),
                    self.context_id
                );
                self.vm = Some(Rc::new(RefCell::new(Vm::new(config))));
                self.set_tick_period(TICK);
                true
            }
            Err(e) => {
                log::error!("portcullis-preauth: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else {
            return;
        };
        let now = now_ms() / 1000;
        {
            let mut v = vm.borrow_mut();
            v.ticks = v.ticks.wrapping_add(1);
            let missing = v
                .apps
                .iter()
                .zip(v.config.apps.iter())
                .any(|(p, a)| a.oidc.is_some() && (p.metadata.is_none() || p.keys.is_none()));
            if missing || !v.waiters.is_empty() || v.ticks % 5 == 0 {
                for app in 0..v.apps.len() {
                    v.sync(app);
                }
            }
            v.start_fetches(now);
        }
        resume_ready(vm);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.as_ref()?;
        Some(Box::new(Stream {
            vm: Rc::clone(vm),
            context_id,
        }))
    }
}

/// One HTTP stream.
struct Stream {
    vm: Rc<RefCell<Vm>>,
    context_id: u32,
}

/// The request headers. Values that are not UTF-8 (obs-text, which Envoy lets
/// through) are read lossily: the SDK's string reader panics on them, which
/// would trap the VM and fail every later request on the worker.
fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

/// A property of the stream (`None`: not found).
fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// The id of app `index`, for the logs.
fn app_id(config: &PreauthConfig, index: usize) -> &str {
    config.apps.get(index).map_or("?", |a| a.id.as_str())
}

/// The route wins over the Host. When the Host alone would have chosen
/// another app, say so (warn: Envoy's domains and the apps' `hosts` disagree);
/// a Host no app lists under a route that names its app is only a debug line.
fn log_route_and_host(
    config: &PreauthConfig,
    route: RouteApp<'_>,
    chosen: &Chosen<usize>,
    host: &str,
    rid: &str,
) {
    match chosen {
        Chosen::Route {
            app,
            host_choice: Some(other),
        } if other != app => log::warn!(
            "portcullis-preauth: [{rid}] the route names app `{}` but Host `{}` belongs to app `{}`: the route wins",
            app_id(config, *app),
            host.escape_debug(),
            app_id(config, *other)
        ),
        Chosen::Route {
            app,
            host_choice: None,
        } => log::debug!(
            "portcullis-preauth: [{rid}] the route names app `{}`; Host `{}` names no app",
            app_id(config, *app),
            host.escape_debug()
        ),
        Chosen::UnknownRoute => log::warn!(
            "portcullis-preauth: [{rid}] refused with route_app_unknown: the route names {}, which no entry of `apps` defines",
            match route.id() {
                Some(id) => format!("app `{id}`"),
                None => "a value that is not an app id".to_string(),
            }
        ),
        _ => {}
    }
}

fn header(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn send(response: &Response) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!response.body.is_empty()).then_some(response.body.as_slice());
    if let Err(e) = hostcalls::send_http_response(u32::from(response.status), headers, body) {
        log::error!("portcullis-preauth: cannot send a local response: {e:?}");
    }
}

fn deny(denial: Denial, req: &RequestView<'_>) -> Response {
    let d = denial.render(req.request_id, req.header("accept"));
    Response {
        status: d.status,
        headers: d.headers,
        body: d.body.into_bytes(),
    }
}

fn internal_error(sentence: &str) -> Denial {
    Denial::Other {
        status: 500,
        code: "internal_error".into(),
        sentence: sentence.into(),
    }
}

/// Runs the request decision for stream `context_id` (the effective context).
/// `resumed`: the request was paused before; `timed_out`: it waited too long
/// for the provider.
fn decide(vm_rc: &Rc<RefCell<Vm>>, context_id: u32, resumed: bool, timed_out: bool) -> Action {
    let headers = request_headers();
    let method = header(&headers, ":method");
    let path = header(&headers, ":path");
    let host = header(&headers, ":authority");
    let request_id = match header(&headers, "x-request-id") {
        id if id.is_empty() => format!("ctx-{context_id}"),
        id => id,
    };
    // The app Envoy routes to (route metadata), and the address Envoy saw.
    let route_app = property(&ROUTE_APP_PROPERTY);
    let client_address = property(&["source", "address"]).and_then(|b| String::from_utf8(b).ok());
    let req = RequestView {
        method: &method,
        path: &path,
        host: &host,
        headers: &headers,
        request_id: &request_id,
        route_app: RouteApp::from_property(route_app.as_deref()),
        client_address: client_address.as_deref(),
    };
    let mut random_ok = true;
    let mut random = |buf: &mut [u8]| random_ok &= fill_random(buf);
    let (decision, app) = {
        let vm = vm_rc.borrow();
        let chosen = vm.config.select_app(req.route_app, &host);
        if !resumed {
            log_route_and_host(&vm.config, req.route_app, &chosen, &host, &request_id);
        }
        let app = chosen.app();
        let provider = app.map(|a| vm.provider(a)).unwrap_or_default();
        let d = oidc::on_request(
            &vm.config,
            &vm.owned,
            &req,
            provider,
            now_ms() / 1000,
            &mut random,
            &mut vm.sessions.borrow_mut(),
        );
        (d, app)
    };
    if !random_ok {
        log::error!("portcullis-preauth: [{request_id}] no random bytes from the host");
        send(&deny(
            internal_error("The proxy could not start a sign-in."),
            &req,
        ));
        return Action::Pause;
    }
    match decision {
        Decision::Continue {
            remove,
            add,
            identity,
            app_id,
        } => {
            for name in &remove {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
            }
            for (name, value) in &add {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            if let (Some(id), Some(app_id)) = (identity, app_id) {
                let value = handoff::encode(&app_id, &id);
                if let Err(e) =
                    hostcalls::set_property(vec![handoff::IDENTITY_PROPERTY], Some(&value))
                {
                    log::warn!(
                        "portcullis-preauth: [{request_id}] cannot hand the identity on: {e:?}"
                    );
                }
            }
            if resumed {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Respond {
            response,
            refetch_keys,
        } => {
            if response.status >= 400 {
                log::info!(
                    "portcullis-preauth: [{request_id}] {} {host} refused with {}: {}",
                    method,
                    response.status,
                    response.header("www-authenticate").unwrap_or("")
                );
            }
            if let (true, Some(a)) = (refetch_keys, app) {
                if let Some(p) = vm_rc.borrow_mut().apps.get_mut(a) {
                    p.force_keys = true;
                }
            }
            send(&response);
            Action::Pause
        }
        Decision::ExchangeCode { call, pending } => match dispatch(&call) {
            Ok(token) => {
                vm_rc.borrow_mut().exchanges.insert(
                    token,
                    Exchange {
                        context_id,
                        pending,
                        started_ms: now_ms(),
                        timeout_ms: call.timeout_ms,
                    },
                );
                Action::Pause
            }
            Err(e) => {
                log::warn!(
                    "portcullis-preauth: [{request_id}] cannot call the token endpoint through `{}`: {e}",
                    call.cluster
                );
                let config = Rc::clone(&vm_rc.borrow().config);
                send(&finish_login_denial(
                    &config,
                    &pending,
                    Denial::TokenExchangeFailed,
                ));
                Action::Pause
            }
        },
        Decision::Wait(needs) => {
            let app = match app {
                Some(app) if !timed_out => app,
                _ => {
                    log::warn!(
                        "portcullis-preauth: [{request_id}] provider unavailable ({needs:?})"
                    );
                    send(&deny(Denial::KeysUnavailable, &req));
                    return Action::Pause;
                }
            };
            vm_rc.borrow_mut().waiters.push(Waiter {
                app,
                since_ms: now_ms(),
                what: WaitFor::Provider(needs),
                context_id,
            });
            Action::Pause
        }
    }
}

/// Finishes a callback with the token endpoint's answer. `retried`: the keys
/// were refetched for an unknown `kid` already.
fn finish(
    vm_rc: &Rc<RefCell<Vm>>,
    context_id: u32,
    pending: Box<PendingLogin>,
    status: Option<u16>,
    body: Vec<u8>,
    retried: bool,
) {
    let now = now_ms() / 1000;
    let mut random_ok = true;
    let mut random = |buf: &mut [u8]| random_ok &= fill_random(buf);
    let outcome = {
        let vm = vm_rc.borrow();
        let keys = vm.apps.get(pending.app).and_then(|p| p.keys.as_ref());
        finish_login(&vm.config, &pending, status, &body, keys, now, &mut random)
    };
    match outcome {
        LoginOutcome::Respond(r) => {
            if !random_ok {
                log::error!(
                    "portcullis-preauth: [{}] no random bytes from the host",
                    pending.request_id
                );
                let config = Rc::clone(&vm_rc.borrow().config);
                send(&finish_login_denial(
                    &config,
                    &pending,
                    internal_error("The proxy could not create a session."),
                ));
                return;
            }
            if r.status >= 400 {
                log::info!(
                    "portcullis-preauth: [{}] sign-in refused with {}: {}",
                    pending.request_id,
                    r.status,
                    r.header("www-authenticate").unwrap_or("")
                );
            }
            send(&r);
        }
        LoginOutcome::UnknownKey(kid) => {
            let mut vm = vm_rc.borrow_mut();
            let Some(p) = vm.apps.get_mut(pending.app) else {
                return;
            };
            let can_refetch =
                p.keys.is_none() || p.keys_at.saturating_add(MIN_FORCED_REFETCH_SECS) <= now;
            if retried || !can_refetch {
                let denial = if p.keys.is_none() {
                    Denial::KeysUnavailable
                } else {
                    Denial::UnknownKey
                };
                let config = Rc::clone(&vm.config);
                drop(vm);
                log::warn!(
                    "portcullis-preauth: [{}] ID token names unknown key {kid:?}",
                    pending.request_id
                );
                send(&finish_login_denial(&config, &pending, denial));
                return;
            }
            p.force_keys = true;
            let generation = p.keys_generation;
            let app = pending.app;
            vm.waiters.push(Waiter {
                app,
                since_ms: now_ms(),
                what: WaitFor::Keys {
                    generation,
                    pending,
                    status,
                    body,
                },
                context_id,
            });
        }
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        on_call_answer(&self.vm, token, num_headers, body_size);
    }

    fn on_done(&mut self) -> bool {
        let id = self.context_id;
        let mut vm = self.vm.borrow_mut();
        vm.waiters.retain(|w| w.context_id != id);
        vm.exchanges.retain(|_, x| x.context_id != id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        decide(&self.vm, self.context_id, false, false)
    }
}
