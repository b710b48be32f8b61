//! Portcullis cookie filter: keeps the proxy's own cookies away from apps,
//! hardens the apps' `Set-Cookie` headers, and translates internal URLs into
//! external ones in `Location`, `Content-Location`, `Refresh`, `Link` and
//! (opt-in per app) in response bodies, streaming chunk by chunk.
//!
//! The decisions live in [`portcullis_core::cookies`]; this crate only
//! translates callbacks. Header values are handled as bytes, so a header that
//! is not UTF-8 never makes the filter panic.
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

use portcullis_core::app::{self, Chosen, RouteApp, ROUTE_APP_PROPERTY};
use portcullis_core::cookies::{
    AppPolicy, BodyPlan, BodyRewriter, CookieFilterConfig, CookieHeaderAction, SetCookieOutcome,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(CookieFilterConfig::default()) })
    });
}}

/// The response headers that carry URLs and may be translated.
const URL_HEADERS: &[&str] = &["location", "content-location", "refresh", "link"];

/// The root context holds the validated configuration shared by all streams.
struct Root {
    config: Rc<CookieFilterConfig>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match CookieFilterConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "portcullis-cookie: configured ({} app(s))",
                    config.apps.len()
                );
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                log::error!("portcullis-cookie: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            config: Rc::clone(&self.config),
            app: None,
            request_id: String::new(),
            body: None,
        }))
    }
}

/// One HTTP stream.
struct Stream {
    context_id: u32,
    config: Rc<CookieFilterConfig>,
    /// Index of the request's app in `config.apps`.
    app: Option<usize>,
    /// `x-request-id`, for log lines.
    request_id: String,
    /// The body rewriter, when this response's body is translated.
    body: Option<BodyRewriter>,
}

impl Stream {
    fn app(&self) -> Option<&AppPolicy> {
        self.app.and_then(|i| self.config.apps.get(i))
    }

    /// The values of response header `name` (lower case), as bytes.
    fn values_of<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Applies the Set-Cookie policy; returns the new values if any changed.
    fn set_cookies(&self, values: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(values.len());
        let mut changed = false;
        for raw in values {
            let text = String::from_utf8_lossy(raw);
            // A value that is not UTF-8 is only checked for a proxy name, never rewritten.
            let app = if matches!(text, std::borrow::Cow::Borrowed(_)) {
                self.app()
            } else {
                None
            };
            match self.config.apply_set_cookie(app, &text) {
                SetCookieOutcome::Unchanged => out.push(raw.to_vec()),
                SetCookieOutcome::Rewritten(v) => {
                    changed = true;
                    out.push(v.into_bytes());
                }
                SetCookieOutcome::Refused { name } => {
                    changed = true;
                    log::warn!(
                        "portcullis-cookie: context {} request {}: refused a Set-Cookie from the app for the proxy's cookie name `{}`",
                        self.context_id,
                        self.request_id,
                        name.escape_debug()
                    );
                }
            }
        }
        changed.then_some(out)
    }

    /// Translates the URL headers called `name`; returns the new values if any changed.
    fn translate(&self, app: &AppPolicy, name: &str, values: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
        let mut changed = false;
        let out = values
            .iter()
            .map(|raw| {
                let translated = std::str::from_utf8(raw)
                    .ok()
                    .and_then(|v| app.translate_header(name, v));
                match translated {
                    Some(t) => {
                        changed = true;
                        t.into_bytes()
                    }
                    None => raw.to_vec(),
                }
            })
            .collect();
        changed.then_some(out)
    }

    /// Replaces every response header `name` by `values`, in order.
    fn replace_response_header(&self, name: &str, values: &[Vec<u8>]) {
        self.set_http_response_header_bytes(name, None);
        for v in values {
            self.add_http_response_header_bytes(name, v);
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        let text = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        self.request_id = text("x-request-id").unwrap_or_else(|| "-".to_string());
        let authority = text(":authority")
            .or_else(|| text("host"))
            .unwrap_or_default();
        let path = text(":path").unwrap_or_default();
        let route_app = self.get_property(ROUTE_APP_PROPERTY.to_vec());
        let route = RouteApp::from_property(route_app.as_deref());
        self.app = match self.config.select(route, &authority, &path) {
            Chosen::Route { app, .. } | Chosen::Host(app) => Some(app),
            Chosen::None => None,
            Chosen::UnknownRoute => {
                // Its cookies would go unhardened and its URLs untranslated.
                log::warn!(
                    "portcullis-cookie: context {} request {}: refused with route_app_unknown: the route names {}, which no entry of `apps` names",
                    self.context_id,
                    self.request_id,
                    match route.id() {
                        Some(id) => format!("app `{id}`"),
                        None => "a value that is not an app id".to_string(),
                    }
                );
                let d =
                    app::route_app_unknown().render(&self.request_id, text("accept").as_deref());
                let headers: Vec<(&str, &str)> = d
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                self.send_http_response(u32::from(d.status), headers, Some(d.body.as_bytes()));
                return Action::Pause;
            }
        };

        let cookies = Self::values_of(&headers, "cookie");
        if !cookies.is_empty() {
            match self.config.strip_request_cookies_bytes(&cookies).0 {
                CookieHeaderAction::Unchanged => {}
                CookieHeaderAction::Remove => self.set_http_request_header_bytes("cookie", None),
                CookieHeaderAction::Replace(v) => {
                    self.set_http_request_header_bytes("cookie", None);
                    self.add_http_request_header_bytes("cookie", &v);
                }
            }
        }
        if self.app().is_some_and(AppPolicy::wants_identity_encoding) {
            self.set_http_request_header("accept-encoding", Some("identity"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers: Vec<(String, Vec<u8>)> = self
            .get_http_response_headers_bytes()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();

        let set_cookies = Self::values_of(&headers, "set-cookie");
        if !set_cookies.is_empty() {
            if let Some(new) = self.set_cookies(&set_cookies) {
                self.replace_response_header("set-cookie", &new);
            }
        }

        let config = Rc::clone(&self.config);
        let Some(app) = self.app.and_then(|i| config.apps.get(i)) else {
            return Action::Continue;
        };
        for name in URL_HEADERS {
            let values = Self::values_of(&headers, name);
            if values.is_empty() {
                continue;
            }
            if let Some(new) = self.translate(app, name, &values) {
                self.replace_response_header(name, &new);
            }
        }

        if let Some(policy) = app.body.as_ref().filter(|_| !end_of_stream) {
            let one = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            let plan = policy.plan(
                one("content-type").as_deref(),
                one("content-encoding").as_deref(),
                one("content-length").as_deref(),
            );
            match plan {
                BodyPlan::Rewrite => {
                    // The length changes as URLs are rewritten: send it chunked.
                    self.set_http_response_header("content-length", None);
                    self.body = Some(policy.rewriter());
                }
                BodyPlan::Skip(reason) => {
                    log::debug!(
                        "portcullis-cookie: context {} request {}: body not translated ({reason:?})",
                        self.context_id,
                        self.request_id
                    );
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(mut rewriter) = self.body.take() else {
            return Action::Continue;
        };
        let config = Rc::clone(&self.config);
        let Some(policy) = self
            .app
            .and_then(|i| config.apps.get(i))
            .and_then(|a| a.body.as_ref())
        else {
            return Action::Continue;
        };
        let chunk = if body_size > 0 {
            self.get_http_response_body(0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let was_limited = rewriter.limit_reached();
        let out = rewriter.push(&policy.matcher, &chunk, end_of_stream);
        if out != chunk {
            self.set_http_response_body(0, body_size, &out);
        }
        if rewriter.limit_reached() && !was_limited {
            log::warn!(
                "portcullis-cookie: context {} request {}: body larger than max_body_bytes ({}); the rest passes untranslated",
                self.context_id,
                self.request_id,
                policy.max_body_bytes
            );
        }
        if !end_of_stream {
            self.body = Some(rewriter);
        }
        Action::Continue
    }
}
