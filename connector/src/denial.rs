//! The one place that maps a failure to an HTTP status, a stable denial code and a page
//! (JSON when the client asks for it, HTML otherwise).

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{full, BoxBody};
use crate::ERROR_CODE_HEADER;

/// A failure the edge or the connector answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `connector_unavailable`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
}

impl Denial {
    /// A new denial.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// Renders the denial for a request with `request_headers`; `request_id` is echoed.
    pub fn into_response(self, request_headers: &HeaderMap, request_id: &str) -> Response<BoxBody> {
        let wants_json = request_headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(|a| a.contains("application/json") && !a.contains("text/html"))
            .unwrap_or(false);
        let (content_type, body) = if wants_json {
            let value = serde_json::json!({
                "error": self.code,
                "message": self.message,
                "request_id": request_id,
            });
            ("application/json", value.to_string())
        } else {
            let html = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status}</title></head>\
                 <body><h1>{status}</h1><p>{msg}</p><p>Error code: <code>{code}</code></p>\
                 <p>Request id: <code>{rid}</code></p></body></html>\n",
                status = self.status,
                msg = escape_html(&self.message),
                code = escape_html(&self.code),
                rid = escape_html(request_id),
            );
            ("text/html; charset=utf-8", html)
        };
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&self.code) {
            headers.insert(ERROR_CODE_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(crate::REQUEST_ID_HEADER, v);
        }
        resp
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small JSON response (API answers).
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<BoxBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON API error `{"error": code, "message": ...}`.
pub fn api_error(status: StatusCode, code: &str, message: &str) -> Response<BoxBody> {
    let mut resp = json_response(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        resp.headers_mut().insert(ERROR_CODE_HEADER, v);
    }
    resp
}
