//! A proxy-wasm (ABI 0.2.1) host on wasmtime, for testing the real Portcullis
//! `.wasm` files in-process.
//!
//! Each [`Plugin`] is one wasmtime `Store` with its own [`HostState`], so tests
//! run in parallel. Tests drive callbacks (`request_headers`, `response_body`,
//! `tick`, `respond_http_call` …) and assert on recorded effects: headers as the
//! next hop would see them, local responses, dispatched calls, logs, metrics.
//! Plugins that share a [`SharedData`] behave like Envoy worker VMs of one
//! process; streams that share a [`FilterState`] behave like filters in one chain.
//!
//! ```no_run
//! use portcullis_host_tests::{Filter, Plugin, Action};
//! let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
//! let s = p.new_stream().unwrap();
//! let action = p.request_headers(s, &[(":method", "GET"), (":path", "/robots.txt")], true).unwrap();
//! assert_eq!(action, Action::Pause);
//! assert_eq!(p.local_response(s).unwrap().status, 200);
//! ```

mod abi;
mod state;

pub use state::{
    header_value, header_values, FilterState, Headers, HostState, HttpCall, LocalResponse,
    LogEntry, Metric, MetricKind, SharedData, StreamState,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::error::Context as _;
use wasmtime::{bail, format_err as anyhow, Result};
use wasmtime::{
    Config, Engine, Instance, Linker, Module, Store, TypedFunc, WasmParams, WasmResults,
};

/// The filters this project ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// robots.txt and X-Robots-Tag.
    Robots,
    /// OpenID Connect preauthentication.
    Preauth,
    /// Conditional access.
    ConditionalAccess,
    /// Cookie and URL translation.
    Cookie,
    /// The all-in-one module (`portcullis.wasm`), configured with one section per stage.
    Portcullis,
}

/// The environment variable that runs every single-stage test on the
/// all-in-one module instead: `PORTCULLIS_LAYOUT=all-in-one`.
pub const LAYOUT_VAR: &str = "PORTCULLIS_LAYOUT";

/// Whether this test run puts each single-stage configuration in a section of
/// the all-in-one module ([`LAYOUT_VAR`] is `all-in-one`).
pub fn all_in_one_layout() -> bool {
    std::env::var(LAYOUT_VAR).is_ok_and(|v| v == "all-in-one")
}

/// The all-in-one document with `config` (a stage's own JSON text; empty
/// means `{}`) as its only section, `section`.
pub fn in_section(section: &str, config: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(config);
    let body = if text.trim().is_empty() {
        "{}"
    } else {
        text.trim()
    };
    format!("{{\"{section}\": {body}}}").into_bytes()
}

impl Filter {
    /// The module's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Filter::Robots => "portcullis_robots.wasm",
            Filter::Preauth => "portcullis_preauth.wasm",
            Filter::ConditionalAccess => "portcullis_conditional_access.wasm",
            Filter::Cookie => "portcullis_cookie.wasm",
            Filter::Portcullis => "portcullis.wasm",
        }
    }

    /// The section of the all-in-one document for this filter's stage.
    pub fn section(self) -> Option<&'static str> {
        match self {
            Filter::Robots => Some("robots"),
            Filter::Preauth => Some("preauth"),
            Filter::ConditionalAccess => Some("conditional_access"),
            Filter::Cookie => Some("cookie"),
            Filter::Portcullis => None,
        }
    }

    /// The module tests of this filter load: its own, or under
    /// [`all_in_one_layout`] the all-in-one module with the configuration
    /// in this filter's section.
    pub fn layout(self) -> (Filter, Option<&'static str>) {
        match self.section() {
            Some(section) if all_in_one_layout() => (Filter::Portcullis, Some(section)),
            _ => (self, None),
        }
    }

    /// Where the release build puts the module: `$PORTCULLIS_WASM_DIR`, or
    /// `<workspace>/target/wasm32-wasip1/release`.
    pub fn wasm_path(self) -> PathBuf {
        let dir = match std::env::var_os("PORTCULLIS_WASM_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("wasm32-wasip1")
                .join("release"),
        };
        dir.join(self.file_name())
    }
}

/// What a callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Stop iteration (headers) / buffer (body).
    Pause,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.consume_fuel(true);
        Engine::new(&config).unwrap_or_default()
    })
}

/// Compiles each module once per test process.
fn module(path: &Path) -> Result<Module> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let cache = MODULES.get_or_init(Default::default);
    let mut guard = cache.lock().map_err(|_| anyhow!("module cache poisoned"))?;
    if let Some(m) = guard.get(path) {
        return Ok(m.clone());
    }
    if !path.exists() {
        bail!(
            "{} does not exist: build the filters first with `make build` \
             (or `cargo build --release --target wasm32-wasip1 --workspace --exclude portcullis-host-tests --exclude portcullis-connector`)",
            path.display()
        );
    }
    let m = Module::from_file(engine(), path)
        .with_context(|| format!("compiling {}", path.display()))?;
    guard.insert(path.to_path_buf(), m.clone());
    Ok(m)
}

/// Builds a [`Plugin`].
#[derive(Debug)]
pub struct PluginBuilder {
    path: PathBuf,
    config: Vec<u8>,
    vm_config: Vec<u8>,
    shared: SharedData,
    now_nanos: u64,
    clusters: Vec<String>,
    seed: u64,
    properties: HashMap<String, Vec<u8>>,
    log_level: u32,
    section: Option<&'static str>,
}

impl PluginBuilder {
    /// The host's log level (proxy-wasm numbering: 0 trace … 5 critical), as
    /// `proxy_get_log_level` reports it; default 1 (debug).
    pub fn log_level(mut self, level: u32) -> Self {
        self.log_level = level;
        self
    }

    /// The plugin configuration (JSON text).
    pub fn config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.config = config.as_ref().to_vec();
        self
    }

    /// The VM configuration.
    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.vm_config = config.as_ref().to_vec();
        self
    }

    /// Shared data and queues (share one between plugins to model worker VMs).
    pub fn shared(mut self, shared: SharedData) -> Self {
        self.shared = shared;
        self
    }

    /// The host clock, in Unix seconds.
    pub fn now_secs(mut self, secs: u64) -> Self {
        self.now_nanos = secs.saturating_mul(1_000_000_000);
        self
    }

    /// Clusters that exist; a call to any other fails with BadArgument, like Envoy.
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.push(name.to_string());
        self
    }

    /// Seed of the module's random source.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A root-level property, e.g. `plugin_name`.
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.properties
            .insert(path.to_string(), value.as_ref().to_vec());
        self
    }

    /// Instantiates the module and runs `_initialize`, root context creation,
    /// `on_vm_start` and `on_configure`. A refused configuration is not an
    /// error here: check [`Plugin::configured`].
    pub fn start(self) -> Result<Plugin> {
        let module = module(&self.path)?;
        let mut linker = Linker::new(engine());
        abi::link(&mut linker)?;
        linker.define_unknown_imports_as_traps(&module)?;
        let plugin_config = match self.section {
            Some(section) => in_section(section, &self.config),
            None => self.config,
        };
        let state = HostState {
            plugin_config,
            vm_config: self.vm_config,
            shared: self.shared,
            now_nanos: self.now_nanos,
            known_clusters: self.clusters,
            rng: self.seed,
            properties: self.properties,
            log_level: self.log_level,
            root_context_id: 1,
            ..HostState::default()
        };
        let mut store = Store::new(engine(), state);
        store.set_fuel(u64::MAX)?;
        let instance = linker.instantiate(&mut store, &module)?;
        let mut plugin = Plugin {
            store,
            instance,
            next_context: 2,
            configured: false,
            section: self.section,
        };
        for init in ["_initialize", "_start"] {
            if let Ok(f) = plugin
                .instance
                .get_typed_func::<(), ()>(&mut plugin.store, init)
            {
                f.call(&mut plugin.store, ())
                    .with_context(|| format!("{init} trapped"))?;
                break;
            }
        }
        plugin.call::<(i32, i32), ()>("proxy_on_context_create", 1, (1, 0))?;
        let vm_len = plugin.store.data().vm_config.len() as i32;
        let vm_ok = plugin.call::<(i32, i32), i32>("proxy_on_vm_start", 1, (1, vm_len))?;
        let cfg_len = plugin.store.data().plugin_config.len() as i32;
        let cfg_ok = vm_ok != 0
            && plugin.call::<(i32, i32), i32>("proxy_on_configure", 1, (1, cfg_len))? != 0;
        plugin.configured = cfg_ok;
        Ok(plugin)
    }
}

/// One plugin instance (one Envoy worker VM with one root context).
pub struct Plugin {
    store: Store<HostState>,
    instance: Instance,
    next_context: u32,
    configured: bool,
    /// The section every configuration goes in ([`Filter::layout`]).
    section: Option<&'static str>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn to_headers(headers: &[(&str, &str)]) -> Headers {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

fn to_action(value: i32) -> Action {
    if value == 0 {
        Action::Continue
    } else {
        Action::Pause
    }
}

impl Plugin {
    /// A builder for `filter`'s release module, with the clock at the real
    /// time (under [`all_in_one_layout`], the all-in-one module with the
    /// configuration in the filter's section).
    pub fn builder(filter: Filter) -> PluginBuilder {
        let (module, section) = filter.layout();
        let mut b = Self::builder_from_path(module.wasm_path());
        b.section = section;
        b
    }

    /// A builder for the module at `path`.
    pub fn builder_from_path(path: impl Into<PathBuf>) -> PluginBuilder {
        PluginBuilder {
            path: path.into(),
            config: Vec::new(),
            vm_config: Vec::new(),
            shared: SharedData::default(),
            now_nanos: now_nanos(),
            clusters: Vec::new(),
            seed: 0x5eed,
            properties: HashMap::new(),
            log_level: 1,
            section: None,
        }
    }

    /// Loads `filter` with `config`; an error if the module refuses the configuration.
    pub fn load(filter: Filter, config: &str) -> Result<Self> {
        let plugin = Self::builder(filter).config(config).start()?;
        if !plugin.configured {
            bail!(
                "{} refused its configuration: {:?}",
                filter.file_name(),
                plugin.log_messages()
            );
        }
        Ok(plugin)
    }

    /// Delivers a new plugin configuration to the running root context, as
    /// Envoy does on a configuration update; returns what `on_configure` returned.
    pub fn reconfigure(&mut self, config: impl AsRef<[u8]>) -> Result<bool> {
        self.store.data_mut().plugin_config = match self.section {
            Some(section) => in_section(section, config.as_ref()),
            None => config.as_ref().to_vec(),
        };
        let len = self.store.data().plugin_config.len() as i32;
        let ok = self.call::<(i32, i32), i32>("proxy_on_configure", 1, (1, len))? != 0;
        self.configured = ok;
        Ok(ok)
    }

    /// Whether `on_vm_start` and `on_configure` both returned true.
    pub fn configured(&self) -> bool {
        self.configured
    }

    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        context: u32,
        params: P,
    ) -> Result<R> {
        let f: TypedFunc<P, R> = self
            .instance
            .get_typed_func(&mut self.store, name)
            .with_context(|| format!("module does not export {name}"))?;
        self.store.data_mut().effective_context = context;
        f.call(&mut self.store, params)
            .with_context(|| format!("{name} trapped (a panic in the filter?)"))
    }

    /// The host state (for assertions not covered by the helpers).
    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    /// Mutable host state.
    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// All log lines so far.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// All log messages so far.
    pub fn log_messages(&self) -> Vec<String> {
        self.logs().iter().map(|l| l.message.clone()).collect()
    }

    /// Fuel (roughly: wasm instructions) consumed so far; a deterministic cost measure.
    pub fn fuel_consumed(&self) -> u64 {
        u64::MAX - self.store.get_fuel().unwrap_or(u64::MAX)
    }

    /// The host clock, in nanoseconds since the epoch.
    pub fn now_nanos(&self) -> u64 {
        self.store.data().now_nanos
    }

    /// Sets the host clock, in Unix seconds.
    pub fn set_now_secs(&mut self, secs: u64) {
        self.store.data_mut().now_nanos = secs.saturating_mul(1_000_000_000);
    }

    /// Moves the host clock forward.
    pub fn advance(&mut self, by: Duration) {
        let d = &mut self.store.data_mut().now_nanos;
        *d = d.saturating_add(by.as_nanos() as u64);
    }

    /// The tick period the module asked for (0: none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Fires the root context's timer once.
    pub fn tick(&mut self) -> Result<()> {
        self.call::<i32, ()>("proxy_on_tick", 1, 1)
    }

    /// Shared data (clone it into another plugin to model another worker).
    pub fn shared(&self) -> SharedData {
        self.store.data().shared.clone()
    }

    /// Every HTTP call dispatched so far.
    pub fn http_calls(&self) -> &[HttpCall] {
        &self.store.data().http_calls
    }

    /// Calls not answered yet.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.http_calls()
            .iter()
            .filter(|c| !c.answered)
            .cloned()
            .collect()
    }

    /// The value of a metric by name.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Every metric.
    pub fn metrics(&self) -> &[Metric] {
        &self.store.data().metrics
    }

    /// Answers HTTP call `token` with `status`, `headers` and `body`.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let mut h = vec![(":status".to_string(), status.to_string().into_bytes())];
        h.extend(to_headers(headers));
        self.deliver_call(token, h, body.to_vec())
    }

    /// Fails HTTP call `token` (reset or timeout): Envoy then reports no headers.
    pub fn fail_http_call(&mut self, token: u32) -> Result<()> {
        self.deliver_call(token, Vec::new(), Vec::new())
    }

    fn deliver_call(&mut self, token: u32, headers: Headers, body: Vec<u8>) -> Result<()> {
        let state = self.store.data_mut();
        let call = state
            .http_calls
            .iter_mut()
            .find(|c| c.token == token)
            .ok_or_else(|| anyhow!("no HTTP call with token {token}"))?;
        if call.answered {
            bail!("HTTP call {token} was already answered");
        }
        call.answered = true;
        let context = call.context_id;
        let (n_headers, body_len) = (headers.len() as i32, body.len() as i32);
        state.call_response_headers = headers;
        state.call_response_body = body;
        state.call_response_trailers = Vec::new();
        state.last_status = (0, String::new());
        self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            context,
            (context as i32, token as i32, n_headers, body_len, 0),
        )
    }

    /// Creates a new HTTP stream and returns its context id.
    pub fn new_stream(&mut self) -> Result<u32> {
        self.new_stream_with(FilterState::default())
    }

    /// Creates a new HTTP stream sharing `filter_state` with streams of other plugins (a chain).
    pub fn new_stream_with(&mut self, filter_state: FilterState) -> Result<u32> {
        let id = self.next_context;
        self.next_context += 1;
        self.store.data_mut().streams.insert(
            id,
            StreamState {
                filter_state,
                ..StreamState::default()
            },
        );
        self.call::<(i32, i32), ()>("proxy_on_context_create", id, (id as i32, 1))?;
        Ok(id)
    }

    /// The state of stream `id`.
    pub fn stream(&self, id: u32) -> &StreamState {
        static EMPTY: OnceLock<StreamState> = OnceLock::new();
        self.store
            .data()
            .streams
            .get(&id)
            .unwrap_or_else(|| EMPTY.get_or_init(StreamState::default))
    }

    fn stream_mut(&mut self, id: u32) -> Result<&mut StreamState> {
        self.store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no stream {id}"))
    }

    /// Sets a per-stream property, e.g. `source.address` → `203.0.113.7:4242`.
    pub fn set_stream_property(
        &mut self,
        id: u32,
        path: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<()> {
        self.stream_mut(id)?
            .properties
            .insert(path.to_string(), value.as_ref().to_vec());
        Ok(())
    }

    /// Sets the metadata of the route stream `id` matched, as Envoy's route
    /// `metadata: {filter_metadata: {<namespace>: {<key>: <value>}}}` would:
    /// the module reads it as `xds.route_metadata.filter_metadata.<namespace>.<key>`.
    pub fn set_route_metadata(
        &mut self,
        id: u32,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        self.stream_mut(id)?
            .route_metadata
            .get_or_insert_with(Default::default)
            .entry(namespace.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Sets the app the route of stream `id` names (`portcullis.app`).
    pub fn set_route_app(&mut self, id: u32, app: &str) -> Result<()> {
        self.set_route_metadata(id, "portcullis", "app", app)
    }

    /// The local response sent on stream `id`, if any.
    pub fn local_response(&self, id: u32) -> Option<&LocalResponse> {
        self.stream(id).local_response.as_ref()
    }

    /// The first value of request header `name` on stream `id`, as the next hop sees it.
    pub fn request_header(&self, id: u32, name: &str) -> Option<String> {
        header_value(&self.stream(id).request_headers, name)
    }

    /// The first value of response header `name` on stream `id`, as the client sees it.
    pub fn response_header(&self, id: u32, name: &str) -> Option<String> {
        header_value(&self.stream(id).response_headers, name)
    }

    /// Delivers request headers.
    pub fn request_headers(
        &mut self,
        id: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.request_headers_raw(id, to_headers(headers), end_of_stream)
    }

    /// Delivers request headers with raw byte values (e.g. not UTF-8).
    pub fn request_headers_raw(
        &mut self,
        id: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action> {
        let s = self.stream_mut(id)?;
        s.request_headers = headers;
        s.in_response = false;
        let n = s.request_headers.len() as i32;
        let r = self.call::<(i32, i32, i32), i32>(
            "proxy_on_request_headers",
            id,
            (id as i32, n, i32::from(end_of_stream)),
        )?;
        Ok(to_action(r))
    }

    /// Delivers a request body chunk. On `Continue` the buffered bytes move on
    /// to the upstream ([`StreamState::request_body_out`]); on `Pause` they stay buffered.
    pub fn request_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(id, chunk, end_of_stream, false)
    }

    /// Delivers response headers.
    pub fn response_headers(
        &mut self,
        id: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        let s = self.stream_mut(id)?;
        s.response_headers = to_headers(headers);
        s.in_response = true;
        let n = s.response_headers.len() as i32;
        let r = self.call::<(i32, i32, i32), i32>(
            "proxy_on_response_headers",
            id,
            (id as i32, n, i32::from(end_of_stream)),
        )?;
        Ok(to_action(r))
    }

    /// Delivers response headers with raw names and byte values (e.g. not UTF-8).
    pub fn response_headers_raw(
        &mut self,
        id: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action> {
        let s = self.stream_mut(id)?;
        s.response_headers = headers;
        s.in_response = true;
        let n = s.response_headers.len() as i32;
        let r = self.call::<(i32, i32, i32), i32>(
            "proxy_on_response_headers",
            id,
            (id as i32, n, i32::from(end_of_stream)),
        )?;
        Ok(to_action(r))
    }

    /// Answers HTTP call `token` with raw headers (the `:status` included, or
    /// not) and `body`.
    pub fn respond_http_call_raw(
        &mut self,
        token: u32,
        headers: Headers,
        body: &[u8],
    ) -> Result<()> {
        self.deliver_call(token, headers, body.to_vec())
    }

    /// Size of the module's linear memory, bytes (it only grows).
    pub fn memory_bytes(&mut self) -> usize {
        match self.instance.get_memory(&mut self.store, "memory") {
            Some(m) => m.data_size(&self.store),
            None => 0,
        }
    }

    /// Delivers a response body chunk (see [`Plugin::request_body`]).
    pub fn response_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(id, chunk, end_of_stream, true)
    }

    fn body(
        &mut self,
        id: u32,
        chunk: &[u8],
        end_of_stream: bool,
        response: bool,
    ) -> Result<Action> {
        let s = self.stream_mut(id)?;
        let buffer = if response {
            &mut s.response_body
        } else {
            &mut s.request_body
        };
        buffer.extend_from_slice(chunk);
        let n = buffer.len() as i32;
        let callback = if response {
            "proxy_on_response_body"
        } else {
            "proxy_on_request_body"
        };
        let r = to_action(self.call::<(i32, i32, i32), i32>(
            callback,
            id,
            (id as i32, n, i32::from(end_of_stream)),
        )?);
        if r == Action::Continue {
            let s = self.stream_mut(id)?;
            let (buffer, out) = if response {
                (&mut s.response_body, &mut s.response_body_out)
            } else {
                (&mut s.request_body, &mut s.request_body_out)
            };
            out.append(buffer);
        }
        Ok(r)
    }

    /// Ends stream `id`: `on_log`, `on_done`, `on_delete`.
    pub fn finish_stream(&mut self, id: u32) -> Result<()> {
        self.call::<i32, ()>("proxy_on_log", id, id as i32)?;
        self.call::<i32, i32>("proxy_on_done", id, id as i32)?;
        self.call::<i32, ()>("proxy_on_delete", id, id as i32)?;
        Ok(())
    }
}
