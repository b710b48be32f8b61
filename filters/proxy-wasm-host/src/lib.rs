//! The one proxy-wasm host adapter of Portcullis. Every module (the four
//! single-stage modules and the all-in-one `portcullis.wasm`) is this adapter
//! with a [`Layout`]: it reads the request head once, runs the configured
//! stages of [`portcullis_core::pipeline`] in chain order (robots → preauth →
//! conditional access → cookie) and carries their plans out as host calls.
//!
//! Between preauth and conditional access the identity travels in memory when
//! both run in this module, else in the stream's filter state
//! ([`portcullis_core::oidc::handoff`]), as between the single-stage modules.
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

mod host;
mod preauth;

use portcullis_core::cookies::stage as cookie_stage;
use portcullis_core::cookies::{BodyRewriter, CookieFilterConfig};
use portcullis_core::denial::{Code, Denial};
use portcullis_core::oidc::handoff::{self, Handoff};
use portcullis_core::pipeline::{PipelineConfig, RequestHead, StageKind};
use portcullis_core::policy::stage::{self as ca_stage, CaResult, HandedOver};
use portcullis_core::policy::PolicyConfig;
use portcullis_core::robots::{self, RobotsConfig};
use preauth::{Pending, PreauthVm, Resume, Step};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Which module this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A single-stage module: its configuration is the stage's own document.
    Single(StageKind),
    /// `portcullis.wasm`: one document with a section per stage.
    AllInOne,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Single(kind) => kind.log_prefix(),
            Layout::AllInOne => "portcullis",
        }
    }
}

/// Registers a module of this layout: in `proxy_wasm::main!`, call
/// `portcullis_proxy_wasm::start!(Layout::…)`.
#[macro_export]
macro_rules! start {
    ($layout:expr) => {
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|id| $crate::root($layout, id));
    };
}

/// The root context of a module with this layout.
pub fn root(layout: Layout, context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root {
        layout,
        context_id,
        pipeline: None,
        ticks: 0,
    })
}

/// How often conditional access re-reads Envoy's log level.
const LOG_LEVEL_REFRESH: Duration = Duration::from_secs(10);

/// Lowers the module's own log filter to Envoy's level for wasm logs, so a
/// decision log line that Envoy would drop (e.g. `--log-level warn`) is not
/// even formatted: that is most of a decision's cost. Changes made through
/// Envoy's admin `/logging` apply within [`LOG_LEVEL_REFRESH`].
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// The conditional-access stage with its counters defined at configure time.
#[derive(Debug)]
struct CaStage {
    config: PolicyConfig,
    /// Counter ids of every app of the registry (and `""`), by result.
    metrics: HashMap<String, [Option<u32>; 3]>,
    /// Counters of app ids outside the registry, defined on first use.
    others: RefCell<HashMap<String, [Option<u32>; 3]>>,
}

fn define_counters(app: &str) -> [Option<u32>; 3] {
    CaResult::ALL.map(|r| {
        let name = ca_stage::metric_name(app, r);
        match hostcalls::define_metric(MetricType::Counter, &name) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("portcullis-conditional-access: cannot define metric {name}: {e:?}");
                None
            }
        }
    })
}

impl CaStage {
    fn new(config: PolicyConfig) -> CaStage {
        let metrics = config
            .apps
            .keys()
            .map(String::as_str)
            .chain(std::iter::once(""))
            .map(|app| (app.to_string(), define_counters(app)))
            .collect();
        CaStage {
            config,
            metrics,
            others: RefCell::new(HashMap::new()),
        }
    }

    fn count(&self, app: &str, result: CaResult) {
        let id = match self.metrics.get(app) {
            Some(ids) => ids.get(result.index()).copied().flatten(),
            None => {
                let mut others = self.others.borrow_mut();
                let ids = others
                    .entry(app.to_string())
                    .or_insert_with(|| define_counters(app));
                ids.get(result.index()).copied().flatten()
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// The stages of one configuration (one per VM and configuration).
#[derive(Debug)]
struct Pipeline {
    robots: Option<RobotsConfig>,
    preauth: Option<Rc<RefCell<PreauthVm>>>,
    ca: Option<CaStage>,
    cookie: Option<CookieFilterConfig>,
    /// Preauth and conditional access both run here: the identity goes in memory.
    identity_in_memory: bool,
    /// Streams paused in preauth, for the root to resume.
    paused: RefCell<HashMap<u32, Rc<RefCell<StreamState>>>>,
}

impl Pipeline {
    fn new(config: PipelineConfig) -> Pipeline {
        let identity_in_memory = config.preauth.is_some() && config.conditional_access.is_some();
        Pipeline {
            robots: config.robots,
            preauth: config
                .preauth
                .map(|c| Rc::new(RefCell::new(PreauthVm::new(c)))),
            ca: config.conditional_access.map(CaStage::new),
            cookie: config.cookie,
            identity_in_memory,
            paused: RefCell::new(HashMap::new()),
        }
    }

    /// Only robots: it reads `:path` alone, not the whole header map.
    fn robots_only(&self) -> bool {
        self.robots.is_some()
            && self.preauth.is_none()
            && self.ca.is_none()
            && self.cookie.is_none()
    }

    /// Resumes the streams preauth let go on.
    fn resume(&self, resumes: Vec<Resume>) {
        for r in resumes {
            let state = self.paused.borrow_mut().remove(&r.context_id);
            let Some(state) = state else {
                continue;
            };
            if hostcalls::set_effective_context(r.context_id).is_err() {
                continue;
            }
            if self.after_robots(r.context_id, &state, true, r.timed_out) == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
    }

    /// Preauth, conditional access and the cookie stage's request side.
    /// Borrows of `state` end before any host call that could re-enter.
    fn after_robots(
        &self,
        context_id: u32,
        state: &Rc<RefCell<StreamState>>,
        resumed: bool,
        timed_out: bool,
    ) -> Action {
        if let Some(vm) = &self.preauth {
            let step = {
                let s = state.borrow();
                preauth::decide(vm, context_id, &s.head, &s.request_id, resumed, timed_out)
            };
            match step {
                Step::Paused => {
                    self.paused
                        .borrow_mut()
                        .insert(context_id, Rc::clone(state));
                    return Action::Pause;
                }
                Step::Continue(identity, changed) => {
                    // The later stages see the request as Envoy hands it to
                    // the next filter: without the client's copies of the
                    // headers preauth removed, with the values it set.
                    if self.ca.is_some() || self.cookie.is_some() {
                        state
                            .borrow_mut()
                            .head
                            .replace(&changed.remove, changed.set);
                    }
                    if self.identity_in_memory {
                        state.borrow_mut().identity = identity;
                    } else if let Some(h) = identity {
                        let value = handoff::encode(&h.app, &h.identity);
                        if let Err(e) =
                            hostcalls::set_property(vec![handoff::IDENTITY_PROPERTY], Some(&value))
                        {
                            log::warn!(
                                "portcullis-preauth: [{}] cannot hand the identity on: {e:?}",
                                state.borrow().request_id
                            );
                        }
                    }
                }
            }
        }
        if let Some(ca) = &self.ca {
            let plan = {
                let s = state.borrow();
                let from_filter_state;
                let handed_over = if self.identity_in_memory {
                    s.identity
                        .as_deref()
                        .map_or(HandedOver::None, HandedOver::Identity)
                } else {
                    from_filter_state = match host::property(&[handoff::IDENTITY_PROPERTY]) {
                        Some(bytes) if !bytes.is_empty() => Some(handoff::decode(&bytes)),
                        _ => None,
                    };
                    match &from_filter_state {
                        None => HandedOver::None,
                        Some(Ok(h)) => HandedOver::Identity(h),
                        Some(Err(e)) => HandedOver::Invalid(*e),
                    }
                };
                ca_stage::on_request(
                    &ca.config,
                    &s.head,
                    &s.request_id,
                    handed_over,
                    host::now_ms() / 1000,
                    log::log_enabled!(log::Level::Info),
                )
            };
            host::log_lines(&plan.logs);
            if let Some((app, result)) = &plan.count {
                ca.count(app, *result);
            }
            if let Some(reply) = &plan.reply {
                host::send(reply, StageKind::ConditionalAccess.log_prefix());
                return Action::Pause;
            }
            state.borrow_mut().clear_marker = plan.clear_marker;
        }
        if let Some(cookie) = &self.cookie {
            let plan = {
                let s = state.borrow();
                cookie_stage::on_request(cookie, &s.head, &s.request_id, context_id)
            };
            host::log_lines(&plan.logs);
            if let Some(reply) = &plan.reply {
                host::send(reply, StageKind::Cookie.log_prefix());
                return Action::Pause;
            }
            host::apply(MapType::HttpRequestHeaders, &plan.edits);
            let mut s = state.borrow_mut();
            s.cookie_app = plan.app;
            s.cookie_passed = true;
        }
        Action::Continue
    }

    /// A reconfigure replaced this pipeline: every stream paused in it is
    /// resumed under `next` (a wait for the provider is decided again) or,
    /// for a sign-in callback in flight (its token exchange or key refetch
    /// belongs to the old configuration), answered `sign_in_interrupted`.
    fn hand_over(&self, next: &Pipeline) {
        let Some(vm) = &self.preauth else {
            return;
        };
        let pending = vm.borrow_mut().take_pending();
        let config = Rc::clone(vm.borrow().config_rc());
        let paused: HashMap<u32, Rc<RefCell<StreamState>>> =
            std::mem::take(&mut *self.paused.borrow_mut());
        for (context_id, what) in pending {
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            match what {
                Pending::Callback(login) => host::send(
                    &portcullis_core::oidc::finish_login_denial(&config, &login, reconfigured()),
                    StageKind::Preauth.log_prefix(),
                ),
                Pending::Provider => {
                    let Some(state) = paused.get(&context_id) else {
                        continue;
                    };
                    if next.after_robots(context_id, state, true, false) == Action::Continue {
                        let _ = hostcalls::resume_http_request();
                    }
                }
            }
        }
    }
}

/// The denial of a sign-in whose token exchange was in flight when the configuration changed.
fn reconfigured() -> Denial {
    Denial::from(Code::SignInInterrupted)
}

/// Per-stream state the stages keep between callbacks.
#[derive(Debug, Default)]
struct StreamState {
    head: RequestHead,
    request_id: String,
    /// The identity preauth handed over, when it travels in memory.
    identity: Option<Box<Handoff>>,
    /// A satisfied step-up: remove the marker cookie on the response.
    clear_marker: bool,
    /// The cookie stage's app (index in its `apps`).
    cookie_app: Option<usize>,
    /// The request went through the cookie stage. Only then does the stage
    /// see the response: a local reply of an earlier stage (a sign-in
    /// redirect with the proxy's own cookies, a denial) goes back through the
    /// stages before it only, as Envoy runs the encoders of a chain up to the
    /// filter that replied.
    cookie_passed: bool,
    /// The body rewriter, when this response's body is translated.
    body: Option<BodyRewriter>,
}

/// The root context of a module.
struct Root {
    layout: Layout,
    context_id: u32,
    pipeline: Option<Rc<Pipeline>>,
    ticks: u64,
}

impl Root {
    fn parse(&self, bytes: &[u8]) -> Result<PipelineConfig, String> {
        match self.layout {
            Layout::Single(kind) => PipelineConfig::single(kind, bytes),
            Layout::AllInOne => PipelineConfig::from_json(bytes),
        }
        .map_err(|e| e.to_string())
    }

    fn log_configured(&self, p: &PipelineConfig) {
        let name = self.layout.name();
        if self.layout == Layout::AllInOne {
            let stages: Vec<&str> = p.stages().iter().map(|s| s.section()).collect();
            log::info!("{name}: stages {}", stages.join(" → "));
        }
        if let Some(c) = &p.preauth {
            log::info!(
                "portcullis-preauth: configured {} app(s) (root context {})",
                c.apps.len(),
                self.context_id
            );
        }
        if let Some(c) = &p.conditional_access {
            log::info!(
                "portcullis-conditional-access: {} policies for {} named app(s)",
                c.policies.len(),
                c.apps.len()
            );
            log::info!(
                "portcullis-conditional-access: the preauth filter must keep groups {:?} and claims {:?} in the session",
                c.groups_named(),
                c.claims_named()
            );
        }
        if let Some(c) = &p.cookie {
            log::info!("portcullis-cookie: configured ({} app(s))", c.apps.len());
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
        on_call_answer(self.pipeline.as_ref(), token, num_headers, body_size);
    }
}

fn on_call_answer(pipeline: Option<&Rc<Pipeline>>, token: u32, headers: usize, body: usize) {
    let Some(p) = pipeline else {
        return;
    };
    if let Some(vm) = &p.preauth {
        let resumes = preauth::on_call_answer(vm, token, headers, body);
        p.resume(resumes);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match self.parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{}: {e}", self.layout.name());
                return false;
            }
        };
        if config.conditional_access.is_some() {
            follow_host_log_level();
        }
        self.log_configured(&config);
        let tick = if config.preauth.is_some() {
            Some(preauth::TICK)
        } else if config.conditional_access.is_some() {
            Some(LOG_LEVEL_REFRESH)
        } else {
            None
        };
        let next = Rc::new(Pipeline::new(config));
        if let Some(old) = self.pipeline.replace(Rc::clone(&next)) {
            old.hand_over(&next);
        }
        if let Some(t) = tick {
            let _ = hostcalls::set_tick_period(t);
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(p) = self.pipeline.clone() else {
            return;
        };
        self.ticks = self.ticks.wrapping_add(1);
        if p.ca.is_some() {
            let every = if p.preauth.is_some() {
                LOG_LEVEL_REFRESH
                    .as_millis()
                    .checked_div(preauth::TICK.as_millis())
                    .map_or(1, |n| u64::try_from(n).unwrap_or(u64::MAX))
                    .max(1)
            } else {
                1
            };
            if self.ticks.is_multiple_of(every) {
                follow_host_log_level();
            }
        }
        if let Some(vm) = &p.preauth {
            let resumes = preauth::on_tick(vm);
            p.resume(resumes);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let pipeline = self.pipeline.as_ref()?;
        Some(Box::new(Stream {
            pipeline: Rc::clone(pipeline),
            context_id,
            state: Rc::new(RefCell::new(StreamState::default())),
        }))
    }
}

/// One HTTP stream.
struct Stream {
    pipeline: Rc<Pipeline>,
    context_id: u32,
    state: Rc<RefCell<StreamState>>,
}

impl Stream {
    /// The robots-only module reads `:path` alone (every header read is a
    /// host call with a copy into the VM), and the method only for a path
    /// that could be robots.txt.
    fn robots_alone(&self, config: &RobotsConfig) -> Action {
        // Bytes: the SDK panics on a value that is not UTF-8, and such a path
        // is never /robots.txt anyway.
        let header = |name: &str| {
            self.get_http_request_header_bytes(name)
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default()
        };
        let path = header(":path");
        if !robots::is_robots_path(&path) {
            return Action::Continue;
        }
        match config.reply(&header(":method"), &path) {
            Some(reply) => {
                host::send(&reply, StageKind::Robots.log_prefix());
                Action::Pause
            }
            None => Action::Continue,
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
        on_call_answer(Some(&self.pipeline), token, num_headers, body_size);
    }

    fn on_done(&mut self) -> bool {
        if let Some(vm) = &self.pipeline.preauth {
            vm.borrow_mut().forget(self.context_id);
        }
        self.pipeline.paused.borrow_mut().remove(&self.context_id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let p = Rc::clone(&self.pipeline);
        if p.robots_only() {
            if let Some(config) = &p.robots {
                return self.robots_alone(config);
            }
        }
        let head = host::read_request_head(true);
        if let Some(config) = &p.robots {
            if let Some(reply) = config.reply(head.method(), head.path()) {
                host::send(&reply, StageKind::Robots.log_prefix());
                return Action::Pause;
            }
        }
        {
            let mut s = self.state.borrow_mut();
            s.request_id = head.request_id(self.context_id);
            s.head = head;
        }
        p.after_robots(self.context_id, &self.state, false, false)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let p = Rc::clone(&self.pipeline);
        // In reverse chain order, as Envoy runs the encoders of a chain.
        if let Some(cookie) = p
            .cookie
            .as_ref()
            .filter(|_| self.state.borrow().cookie_passed)
        {
            let headers = self.get_http_response_headers_bytes();
            let plan = {
                let s = self.state.borrow();
                cookie_stage::on_response_headers(
                    cookie,
                    s.cookie_app,
                    &headers,
                    end_of_stream,
                    &s.request_id,
                    self.context_id,
                )
            };
            host::log_lines(&plan.logs);
            host::apply(MapType::HttpResponseHeaders, &plan.edits);
            self.state.borrow_mut().body = plan.body;
        }
        if let Some(ca) = &p.ca {
            if self.state.borrow().clear_marker {
                let _ = hostcalls::add_map_value(
                    MapType::HttpResponseHeaders,
                    "set-cookie",
                    &ca.config.clear_marker_cookie(),
                );
            }
        }
        if let Some(tag) = p.robots.as_ref().and_then(|r| r.x_robots_tag.as_deref()) {
            // Set, not add: an app cannot weaken the tag with its own value.
            self.set_http_response_header("x-robots-tag", Some(tag));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let p = Rc::clone(&self.pipeline);
        let Some(cookie) = p
            .cookie
            .as_ref()
            .filter(|_| self.state.borrow().cookie_passed)
        else {
            return Action::Continue;
        };
        let Some(mut rewriter) = self.state.borrow_mut().body.take() else {
            return Action::Continue;
        };
        let chunk = if body_size > 0 {
            self.get_http_response_body(0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let (out, line) = {
            let s = self.state.borrow();
            cookie_stage::on_body_chunk(
                cookie,
                s.cookie_app,
                &mut rewriter,
                &chunk,
                end_of_stream,
                &s.request_id,
                self.context_id,
            )
        };
        if let Some(out) = out {
            self.set_http_response_body(0, body_size, &out);
        }
        if let Some(line) = line {
            host::log_lines(&[line]);
        }
        if !end_of_stream {
            self.state.borrow_mut().body = Some(rewriter);
        }
        Action::Continue
    }
}
