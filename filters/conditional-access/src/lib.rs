//! Portcullis conditional-access filter: judges every request against the
//! per-app policies of [`portcullis_core::policy`] and answers with the
//! decision — continue, a denial page, or a step-up (302 to
//! `/.auth/login?rd=…&acr=…&max_age=…` for browsers, 401 JSON for API clients).
//!
//! Inputs: the identity the preauth filter hands over in the
//! `portcullis_identity` property ([`portcullis_core::oidc::handoff`]), Envoy's
//! downstream address (`source.address`), the request headers and the clock.
//! Every decision is logged as one JSON line at info level and counted in
//! `portcullis_ca.app.<app>.result.<allow|deny|step_up>`.
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

use portcullis_core::app::{self, RouteApp, ROUTE_APP_PROPERTY};
use portcullis_core::denial::Denial;
use portcullis_core::oidc::handoff;
use portcullis_core::policy::address::{client_address, AddressError};
use portcullis_core::policy::config::AppRefusal;
use portcullis_core::policy::eval::{cookie_value, is_browser};
use portcullis_core::policy::log::decision_log;
use portcullis_core::policy::{evaluate, Decision, PolicyConfig, Request, StepUpMarker};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// How often the module re-reads Envoy's log level.
const LOG_LEVEL_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Lowers the module's own log filter to Envoy's level for wasm logs, so a
/// decision log line that Envoy would drop (e.g. `--log-level warn`) is not
/// even formatted: that is most of a decision's cost. Changes made through
/// Envoy's admin `/logging` apply within [`LOG_LEVEL_REFRESH`].
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// Per-VM state shared by the streams.
#[derive(Debug)]
struct Vm {
    config: PolicyConfig,
    /// Metric ids by name, defined on first use.
    metrics: RefCell<HashMap<String, u32>>,
}

/// The root context: parses the policies.
#[derive(Debug, Default)]
struct Root {
    vm: Option<Rc<Vm>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        follow_host_log_level();
        let _ = hostcalls::set_tick_period(LOG_LEVEL_REFRESH);
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match PolicyConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "portcullis-conditional-access: {} policies for {} named app(s)",
                    config.policies.len(),
                    config.apps.len()
                );
                log::info!(
                    "portcullis-conditional-access: the preauth filter must keep groups {:?} and claims {:?} in the session",
                    config.groups_named(),
                    config.claims_named()
                );
                self.vm = Some(Rc::new(Vm {
                    config,
                    metrics: RefCell::new(HashMap::new()),
                }));
                true
            }
            Err(e) => {
                log::error!("portcullis-conditional-access: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        follow_host_log_level();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.as_ref()?;
        Some(Box::new(Stream {
            vm: Rc::clone(vm),
            context_id,
            clear_marker: false,
        }))
    }
}

/// One HTTP stream.
struct Stream {
    vm: Rc<Vm>,
    context_id: u32,
    /// A satisfied step-up: remove the marker cookie on the response.
    clear_marker: bool,
}

impl Context for Stream {}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn property_text(path: Vec<&str>) -> Option<String> {
    hostcalls::get_property(path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// All values of header `name`, joined with `,` (as `X-Forwarded-For` lines combine).
fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn first<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn send(status: u16, headers: &[(String, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = (!body.is_empty()).then_some(body.as_bytes());
    if let Err(e) = hostcalls::send_http_response(u32::from(status), headers, body) {
        log::error!("portcullis-conditional-access: cannot send a local response: {e:?}");
    }
}

fn send_denial(denial: &Denial, request_id: &str, accept: Option<&str>) {
    let d = denial.render(request_id, accept);
    send(d.status, &d.headers, &d.body);
}

impl Vm {
    fn count(&self, app: &str, result: &str) {
        let safe: String = app
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let app = if safe.is_empty() {
            "_none"
        } else {
            safe.as_str()
        };
        let name = format!("portcullis_ca.app.{app}.result.{result}");
        let mut metrics = self.metrics.borrow_mut();
        let id = match metrics.get(&name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => {
                    metrics.insert(name, id);
                    id
                }
                Err(e) => {
                    log::warn!("portcullis-conditional-access: cannot define metric {name}: {e:?}");
                    return;
                }
            },
        };
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let vm = Rc::clone(&self.vm);
        let config = &vm.config;
        // Bytes, read lossily: the SDK's string reader panics on a value that
        // is not UTF-8, which would trap the VM.
        let headers: Vec<(String, String)> = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect();
        let request_id = property_text(vec!["request", "id"])
            .filter(|s| !s.is_empty())
            .or_else(|| first(&headers, "x-request-id").map(str::to_string))
            .unwrap_or_else(|| format!("ctx-{}", self.context_id));
        let accept = first(&headers, "accept");
        let raw_path = first(&headers, ":path").unwrap_or("");
        let method = first(&headers, ":method").unwrap_or("");
        let host = first(&headers, ":authority").unwrap_or("");

        // The identity handed over by the preauth filter (absent = anonymous).
        let handoff = match hostcalls::get_property(vec![handoff::IDENTITY_PROPERTY]) {
            Ok(Some(bytes)) if !bytes.is_empty() => match handoff::decode(&bytes) {
                Ok(h) => Some(h),
                Err(e) => {
                    log::error!("portcullis-conditional-access: [{request_id}] {e}");
                    send_denial(
                        &Denial::Other {
                            status: 500,
                            code: "identity_handoff_invalid".into(),
                            sentence: "The proxy could not read the signed-in identity.".into(),
                        },
                        &request_id,
                        accept,
                    );
                    return Action::Pause;
                }
            },
            _ => None,
        };
        // The app Envoy routes to; a handed-over identity must belong to it.
        let route_app = hostcalls::get_property(ROUTE_APP_PROPERTY.to_vec())
            .ok()
            .flatten();
        let route = RouteApp::from_property(route_app.as_deref());
        let handed_over = handoff.as_ref().map(|h| h.app.as_str());
        let app = match config.select_app(route, handed_over, host) {
            Ok(app) => app,
            Err(refusal) => {
                let (denial, why) = match refusal {
                    AppRefusal::RouteInvalid => (
                        app::route_app_unknown(),
                        "the route's portcullis.app metadata is not an app id".to_string(),
                    ),
                    AppRefusal::Mismatch => (
                        app::app_mismatch(),
                        format!(
                            "the identity was handed over for app `{}`, the request goes to {}",
                            handed_over.unwrap_or(""),
                            match route.id() {
                                Some(id) => format!("app `{id}` (route)"),
                                None => format!("another app (Host `{}`)", host.escape_debug()),
                            }
                        ),
                    ),
                };
                log::warn!(
                    "portcullis-conditional-access: [{request_id}] refused with {}: {why}",
                    denial.code()
                );
                vm.count("", "deny");
                send_denial(&denial, &request_id, accept);
                return Action::Pause;
            }
        };
        if config.app(app).is_none() {
            log::warn!(
                "portcullis-conditional-access: [{request_id}] app `{}` has no entry in `apps`: not_assigned",
                app.escape_debug()
            );
        }

        let downstream = property_text(vec!["source", "address"]);
        let xff = joined(&headers, "x-forwarded-for");
        let client = match client_address(&config.address, downstream.as_deref(), xff.as_deref()) {
            Ok(ip) => Some(ip),
            Err(AddressError::NoDownstream) => None,
            Err(e) => {
                log::warn!("portcullis-conditional-access: [{request_id}] {e}");
                vm.count(app, "deny");
                send_denial(
                    &Denial::Other {
                        status: 400,
                        code: "client_address_invalid".into(),
                        sentence: "The client address could not be determined.".into(),
                    },
                    &request_id,
                    accept,
                );
                return Action::Pause;
            }
        };
        let country = config
            .country_header
            .as_deref()
            .and_then(|h| first(&headers, h));
        let marker = first(&headers, "cookie")
            .and_then(|c| cookie_value(c, &config.step_up_cookie))
            .and_then(StepUpMarker::parse);
        let now = now_secs();
        let req = Request {
            app,
            identity: handoff.as_ref().map(|h| &h.identity),
            client,
            country,
            method,
            path: raw_path,
            user_agent: first(&headers, "user-agent"),
            browser: is_browser(accept, first(&headers, "x-requested-with")),
            now,
            marker,
        };
        let eval = evaluate(config, &req);
        log::info!("{}", decision_log(&eval, &req, &request_id));
        vm.count(app, eval.decision.label());
        match &eval.decision {
            Decision::Allow => {
                self.clear_marker = marker.is_some();
                Action::Continue
            }
            Decision::Deny { .. } => {
                let d = eval
                    .decision
                    .denial()
                    .unwrap_or_else(|| Denial::PolicyBlocked(String::new()));
                send_denial(&d, &request_id, accept);
                Action::Pause
            }
            Decision::StepUp(step) => {
                let cookie = config.marker_cookie(&step.marker(now));
                let mut out = vec![
                    ("cache-control".to_string(), "no-store".to_string()),
                    ("set-cookie".to_string(), cookie),
                ];
                if req.browser {
                    out.push(("location".to_string(), step.login_url(raw_path)));
                    send(302, &out, "");
                } else {
                    out.push(("www-authenticate".to_string(), step.www_authenticate()));
                    out.push(("content-type".to_string(), "application/json".to_string()));
                    send(401, &out, &step.json_body(raw_path, &request_id));
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.clear_marker {
            let _ = hostcalls::add_map_value(
                MapType::HttpResponseHeaders,
                "set-cookie",
                &self.vm.config.clear_marker_cookie(),
            );
        }
        Action::Continue
    }
}
