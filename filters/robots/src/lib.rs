//! Portcullis robots filter: answers `GET`/`HEAD /robots.txt` on every host with
//! `User-agent: *` / `Disallow: /` without reaching the upstream, and adds
//! `X-Robots-Tag` to every response. The decisions live in
//! [`portcullis_core::robots`]; this crate only translates callbacks.
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

use portcullis_core::robots::{self, RobotsConfig, RobotsDecision};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: Rc::new(RobotsConfig::default()) })
    });
}}

/// The root context holds the validated configuration shared by all streams.
struct Root {
    config: Rc<RobotsConfig>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match RobotsConfig::from_json(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                log::error!("portcullis-robots: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: Rc::clone(&self.config),
        }))
    }
}

/// One HTTP stream.
struct Stream {
    config: Rc<RobotsConfig>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Bytes, not `get_http_request_header`: the SDK panics on a value that
        // is not UTF-8, and such a path is never /robots.txt anyway.
        let header = |name: &str| {
            self.get_http_request_header_bytes(name)
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default()
        };
        // Every header read is a host call with a copy into the VM, which is
        // most of this filter's cost: the method is read only for a path
        // that could be robots.txt.
        let path = header(":path");
        if !robots::is_robots_path(&path) {
            return Action::Continue;
        }
        match robots::decide(&header(":method"), &path) {
            RobotsDecision::PassThrough => Action::Continue,
            RobotsDecision::Serve { with_body } => {
                let mut headers = vec![("content-type", robots::ROBOTS_CONTENT_TYPE)];
                if let Some(tag) = self.config.x_robots_tag.as_deref() {
                    headers.push(("x-robots-tag", tag));
                }
                let body = with_body.then_some(robots::ROBOTS_BODY.as_bytes());
                self.send_http_response(200, headers, body);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(tag) = self.config.x_robots_tag.as_deref() {
            // Set, not add: an app cannot weaken the tag with its own value.
            self.set_http_response_header("x-robots-tag", Some(tag));
        }
        Action::Continue
    }
}
