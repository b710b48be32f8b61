//! The preauth stage under proxy-wasm: the request decision comes from
//! [`portcullis_core::oidc`]; this module keeps the provider's documents of
//! one VM (fetched by the root context through the configured cluster,
//! published in shared data with compare-and-swap so every worker VM uses the
//! same keys, one VM fetching at a time under a lease), the token exchanges in
//! flight and the requests waiting for the provider.
//!
//! Keys are refreshed periodically and, rate-limited, when a token names an
//! unknown `kid`; the last good keys survive a failed fetch.

use crate::host::{self, now_ms};
use portcullis_core::app::{Chosen, RouteApp};
use portcullis_core::denial::{Code, Denial};
use portcullis_core::oidc::config::{Endpoints, PreauthConfig, ProviderMetadata};
use portcullis_core::oidc::handoff::{Handoff, HANDOFF_VERSION};
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::session::SessionCache;
use portcullis_core::oidc::{
    self, finish_login, finish_login_denial, Decision, LoginOutcome, Needs, PendingLogin, Provider,
    RequestView, Response,
};
use portcullis_core::pipeline::RequestHead;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Root tick period.
pub const TICK: Duration = Duration::from_millis(200);
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
const PREFIX: &str = "portcullis-preauth";

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
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(head), bytes.get(8..)?))
}

/// What one VM knows about an app's provider.
#[derive(Debug, Default)]
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
    retry_metadata_after: u64,
    retry_keys_after: u64,
}

impl AppProvider {
    fn retry_after(&mut self, kind: DocKind) -> &mut u64 {
        match kind {
            DocKind::Metadata => &mut self.retry_metadata_after,
            DocKind::Jwks => &mut self.retry_keys_after,
        }
    }
}

/// Why a stream waits.
#[derive(Debug)]
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

#[derive(Debug)]
struct Waiter {
    app: usize,
    since_ms: u64,
    what: WaitFor,
    context_id: u32,
}

/// A token exchange in flight.
#[derive(Debug)]
struct Exchange {
    context_id: u32,
    pending: Box<PendingLogin>,
    started_ms: u64,
    timeout_ms: u64,
}

/// Per-VM state of the preauth stage, shared by the root context and the streams.
#[derive(Debug)]
pub struct PreauthVm {
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

/// A stream the root must resume: it waited for the provider.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    /// The stream.
    pub context_id: u32,
    /// It waited too long.
    pub timed_out: bool,
}

/// A stream paused in the stage.
#[derive(Debug)]
pub enum Pending {
    /// It waits for the provider's metadata or keys: decide it again.
    Provider,
    /// A sign-in callback (token exchange or key refetch in flight).
    Callback(Box<PendingLogin>),
}

/// The request headers preauth removed (every value) and set (one value each).
#[derive(Debug)]
pub struct HeadersChanged {
    /// Removed.
    pub remove: Vec<String>,
    /// Set.
    pub set: Vec<(String, String)>,
}

/// What the stage did with a request.
#[derive(Debug)]
pub enum Step {
    /// The request goes on, with the signed-in identity if any, and the
    /// request headers removed and set (for the later stages' view of the request).
    Continue(Option<Box<Handoff>>, HeadersChanged),
    /// The request is paused: answered locally, or waiting.
    Paused,
}

impl PreauthVm {
    /// The state for a new configuration (no documents yet, apart from explicit endpoints).
    pub fn new(config: PreauthConfig) -> PreauthVm {
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
        PreauthVm {
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

    /// The configuration, shared.
    pub fn config_rc(&self) -> &Rc<PreauthConfig> {
        &self.config
    }

    /// Takes every stream that waits or exchanges a code (a reconfigure
    /// resumes or fails each one).
    pub fn take_pending(&mut self) -> Vec<(u32, Pending)> {
        let waiters = std::mem::take(&mut self.waiters).into_iter().map(|w| {
            let what = match w.what {
                WaitFor::Provider(_) => Pending::Provider,
                WaitFor::Keys { pending, .. } => Pending::Callback(pending),
            };
            (w.context_id, what)
        });
        let exchanges = std::mem::take(&mut self.exchanges)
            .into_values()
            .map(|x| (x.context_id, Pending::Callback(x.pending)));
        waiters.chain(exchanges).collect()
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
                            log::warn!("{PREFIX}: shared discovery document refused: {e}")
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
                        Some((_, Err(e))) => log::warn!("{PREFIX}: shared JWKS refused: {e}"),
                        None => {}
                    }
                }
            }
        }
    }

    /// True when a document should be fetched now by someone.
    fn due(&mut self, app: usize, kind: DocKind, now: u64) -> bool {
        let in_flight = self.fetches.values().any(|f| *f == (app, kind));
        let (Some(settings), Some(p)) = (
            self.config.apps.get(app).and_then(|a| a.oidc.as_ref()),
            self.apps.get_mut(app),
        ) else {
            return false;
        };
        if now < *p.retry_after(kind) || in_flight {
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
                let config = Rc::clone(&self.config);
                let (Some(app_config), Some(p)) = (config.apps.get(app), self.apps.get_mut(app))
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
                match host::dispatch(&call) {
                    Ok(token) => {
                        log::info!("{PREFIX}: fetching {url} for app {}", app_config.id);
                        self.fetches.insert(token, (app, kind));
                    }
                    Err(e) => {
                        log::warn!(
                            "{PREFIX}: cannot fetch {url} through cluster `{}`: {e}",
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
        let config = Rc::clone(&self.config);
        let Some(app_config) = config.apps.get(app) else {
            return;
        };
        let Some(settings) = app_config.oidc.as_ref() else {
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
                log::info!("{PREFIX}: {kind:?} of app {} updated", app_config.id);
                self.sync(app);
            }
            Err(e) => {
                // The last good document stays in place.
                log::warn!(
                    "{PREFIX}: {kind:?} fetch for app {} failed: {e}",
                    app_config.id
                );
                *p.retry_after(kind) = now.saturating_add(RETRY_SECS);
            }
        }
    }

    /// Removes and returns the waiters that can go on now (and whether each timed out).
    fn ready_waiters(&mut self, now_ms: u64) -> Vec<(Waiter, bool)> {
        let apps = &self.apps;
        let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| {
                satisfied(apps, w) || now_ms >= w.since_ms.saturating_add(WAIT_LIMIT_MS)
            });
        self.waiters = waiting;
        ready
            .into_iter()
            .map(|w| {
                let timed_out = !satisfied(apps, &w);
                (w, timed_out)
            })
            .collect()
    }

    /// A stream ended: forget its waits and exchanges.
    pub fn forget(&mut self, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
        self.exchanges.retain(|_, x| x.context_id != context_id);
    }
}

fn satisfied(apps: &[AppProvider], w: &Waiter) -> bool {
    let Some(p) = apps.get(w.app) else {
        return true;
    };
    match &w.what {
        WaitFor::Provider(Needs::Metadata) => p.metadata.is_some(),
        WaitFor::Provider(Needs::Keys) => p.keys.is_some(),
        WaitFor::Keys { generation, .. } => p.keys_generation > *generation,
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
    log::warn!("{PREFIX}: could not publish {key} (concurrent updates)");
}

/// The root's tick: syncs documents from shared data, starts due fetches;
/// returns the streams to resume.
pub fn on_tick(vm: &Rc<RefCell<PreauthVm>>) -> Vec<Resume> {
    let now = now_ms() / 1000;
    {
        let mut v = vm.borrow_mut();
        v.ticks = v.ticks.wrapping_add(1);
        let missing = v
            .apps
            .iter()
            .zip(v.config.apps.iter())
            .any(|(p, a)| a.oidc.is_some() && (p.metadata.is_none() || p.keys.is_none()));
        if missing || !v.waiters.is_empty() || v.ticks.is_multiple_of(5) {
            for app in 0..v.apps.len() {
                v.sync(app);
            }
        }
        v.start_fetches(now);
    }
    resume_ready(vm)
}

/// Finishes the waiters that can go on: a callback waiting for keys is
/// finished here; the streams that waited for the provider are returned, for
/// the pipeline to decide them again and run the later stages.
fn resume_ready(vm: &Rc<RefCell<PreauthVm>>) -> Vec<Resume> {
    let ready = vm.borrow_mut().ready_waiters(now_ms());
    let mut resume = Vec::new();
    for (waiter, timed_out) in ready {
        match waiter.what {
            WaitFor::Provider(_) => resume.push(Resume {
                context_id: waiter.context_id,
                timed_out,
            }),
            WaitFor::Keys {
                pending,
                status,
                body,
                ..
            } => {
                if hostcalls::set_effective_context(waiter.context_id).is_ok() {
                    finish(vm, waiter.context_id, pending, status, body, true);
                }
            }
        }
    }
    resume
}

/// Routes an HTTP call answer to the document handler or the waiting
/// stream; returns the streams to resume.
pub fn on_call_answer(
    vm: &Rc<RefCell<PreauthVm>>,
    token: u32,
    num_headers: usize,
    body_size: usize,
) -> Vec<Resume> {
    let (status, body) = host::call_answer(num_headers, body_size);
    let now = now_ms();
    let fetch = vm.borrow_mut().fetches.remove(&token);
    if let Some((app, kind)) = fetch {
        vm.borrow_mut()
            .on_fetched(app, kind, status, &body, now / 1000);
        return resume_ready(vm);
    }
    let exchange = vm.borrow_mut().exchanges.remove(&token);
    if let Some(x) = exchange {
        if hostcalls::set_effective_context(x.context_id).is_err() {
            return Vec::new();
        }
        if status.is_none() {
            let denial = if now >= x.started_ms.saturating_add(x.timeout_ms.saturating_sub(50)) {
                Denial::TokenExchangeTimeout
            } else {
                Denial::TokenExchangeFailed
            };
            log::warn!(
                "{PREFIX}: [{}] token endpoint gave no answer: {}",
                x.pending.request_id,
                denial.code()
            );
            let config = Rc::clone(&vm.borrow().config);
            send(&finish_login_denial(&config, &x.pending, denial));
            return Vec::new();
        }
        finish(vm, x.context_id, x.pending, status, body, false);
    }
    Vec::new()
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
    let id = |i: usize| config.apps.get(i).map_or("", |a| a.id.as_str());
    match chosen {
        Chosen::Route {
            app,
            host_choice: Some(other),
        } if other != app => log::warn!(
            "{PREFIX}: [{rid}] the route names app `{}` but Host `{}` belongs to app `{}`: the route wins",
            id(*app),
            host.escape_debug(),
            id(*other)
        ),
        Chosen::Route {
            app,
            host_choice: None,
        } => log::debug!(
            "{PREFIX}: [{rid}] the route names app `{}`; Host `{}` names no app",
            id(*app),
            host.escape_debug()
        ),
        Chosen::UnknownRoute => log::warn!(
            "{PREFIX}: [{rid}] refused with route_app_unknown: the route names {}, which no entry of `apps` defines",
            match route.id() {
                Some(id) => format!("app `{id}`"),
                None => "a value that is not an app id".to_string(),
            }
        ),
        _ => {}
    }
}

fn send(response: &Response) {
    host::send(response, PREFIX);
}

fn deny(denial: Denial, request_id: &str, accept: Option<&str>) -> Response {
    let d = denial.render(request_id, accept);
    Response {
        status: d.status,
        headers: d.headers,
        body: d.body.into_bytes(),
    }
}

fn internal_error(sentence: &str) -> Denial {
    Denial::explained(Code::InternalError, sentence)
}

/// Decides the request of stream `context_id` (the effective context).
/// `resumed`: the request was paused before; `timed_out`: it waited too long
/// for the provider.
pub fn decide(
    vm_rc: &Rc<RefCell<PreauthVm>>,
    context_id: u32,
    head: &RequestHead,
    request_id: &str,
    resumed: bool,
    timed_out: bool,
) -> Step {
    let host = head.authority();
    let req = RequestView {
        method: head.method(),
        path: head.path(),
        host,
        headers: &head.headers,
        request_id,
        route_app: head.route(),
        client_address: head.source_address.as_deref(),
    };
    let mut random_ok = true;
    let mut random = |buf: &mut [u8]| random_ok &= host::fill_random(buf);
    let (decision, app) = {
        let vm = vm_rc.borrow();
        let chosen = vm.config.select_app(req.route_app, host);
        if !resumed {
            log_route_and_host(&vm.config, req.route_app, &chosen, host, request_id);
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
        log::error!("{PREFIX}: [{request_id}] no random bytes from the host");
        send(&deny(
            internal_error("The proxy could not start a sign-in."),
            request_id,
            req.header("accept"),
        ));
        return Step::Paused;
    }
    match decision {
        Decision::Continue {
            remove,
            add,
            identity,
            app_id,
        } => {
            host::replace(MapType::HttpRequestHeaders, &remove, &add);
            let handoff = match (identity, app_id) {
                (Some(identity), Some(app)) => Some(Box::new(Handoff {
                    v: HANDOFF_VERSION,
                    app,
                    identity: *identity,
                })),
                _ => None,
            };
            Step::Continue(handoff, HeadersChanged { remove, set: add })
        }
        Decision::Respond {
            response,
            refetch_keys,
        } => {
            if response.status >= 400 {
                log::info!(
                    "{PREFIX}: [{request_id}] {} {host} refused with {}: {}",
                    req.method,
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
            Step::Paused
        }
        Decision::ExchangeCode { call, pending } => match host::dispatch(&call) {
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
                Step::Paused
            }
            Err(e) => {
                log::warn!(
                    "{PREFIX}: [{request_id}] cannot call the token endpoint through `{}`: {e}",
                    call.cluster
                );
                let config = Rc::clone(&vm_rc.borrow().config);
                send(&finish_login_denial(
                    &config,
                    &pending,
                    Denial::TokenExchangeFailed,
                ));
                Step::Paused
            }
        },
        Decision::Wait(needs) => {
            let app = match app {
                Some(app) if !timed_out => app,
                _ => {
                    log::warn!("{PREFIX}: [{request_id}] provider unavailable ({needs:?})");
                    send(&deny(
                        Denial::KeysUnavailable,
                        request_id,
                        req.header("accept"),
                    ));
                    return Step::Paused;
                }
            };
            vm_rc.borrow_mut().waiters.push(Waiter {
                app,
                since_ms: now_ms(),
                what: WaitFor::Provider(needs),
                context_id,
            });
            Step::Paused
        }
    }
}

/// Finishes a callback with the token endpoint's answer. `retried`: the keys
/// were refetched for an unknown `kid` already.
fn finish(
    vm_rc: &Rc<RefCell<PreauthVm>>,
    context_id: u32,
    pending: Box<PendingLogin>,
    status: Option<u16>,
    body: Vec<u8>,
    retried: bool,
) {
    let now = now_ms() / 1000;
    let mut random_ok = true;
    let mut random = |buf: &mut [u8]| random_ok &= host::fill_random(buf);
    let outcome = {
        let vm = vm_rc.borrow();
        let keys = vm.apps.get(pending.app).and_then(|p| p.keys.as_ref());
        finish_login(&vm.config, &pending, status, &body, keys, now, &mut random)
    };
    match outcome {
        LoginOutcome::Respond(r) => {
            if !random_ok {
                log::error!(
                    "{PREFIX}: [{}] no random bytes from the host",
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
                    "{PREFIX}: [{}] sign-in refused with {}: {}",
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
                    "{PREFIX}: [{}] ID token names unknown key {kid:?}",
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
