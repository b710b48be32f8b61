//! Portcullis conditional-access filter — PLACEHOLDER: this module builds and loads in Envoy
//! but does nothing yet (every request and response passes unchanged).
//! See the project's issues for the work that fills it in.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// The root context: accepts any configuration, makes pass-through streams.
struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        log::warn!(
            "portcullis-conditional-access is a placeholder: it passes every request unchanged"
        );
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }
}

/// A pass-through stream.
struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {}
