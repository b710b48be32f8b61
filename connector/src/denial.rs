//! Turns the core's denials ([`portcullis_core::denial`]) into HTTP responses
//! for the edge and the connector: the same codes, the same `Accept`
//! negotiation ([`Format::negotiate`]) and the same page or JSON as the
//! filters, plus the `x-portcullis-error` and `x-request-id` headers.

use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{full, BoxBody};
use crate::ERROR_CODE_HEADER;

pub use portcullis_core::denial::{Code, Denial, Format};

/// Renders a core [`Denial`] as an HTTP response.
pub trait IntoResponse {
    /// Renders the denial for a request with `request_headers` (their
    /// `Accept` picks HTML or JSON); `request_id` is echoed.
    fn into_response(self, request_headers: &HeaderMap, request_id: &str) -> Response<BoxBody>;
}

impl IntoResponse for Denial {
    fn into_response(self, request_headers: &HeaderMap, request_id: &str) -> Response<BoxBody> {
        let accept = request_headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let rendered = self.render(request_id, accept);
        let mut resp = Response::new(full(rendered.body));
        *resp.status_mut() =
            StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = resp.headers_mut();
        for (name, value) in rendered.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(n, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&self.public_code()) {
            headers.insert(ERROR_CODE_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(crate::REQUEST_ID_HEADER, v);
        }
        resp
    }
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

/// A JSON API error of the registration and admin endpoints: the core's
/// denial object ([`Denial::json`]: `error`, `code`, `message`) for `code`,
/// answered with `status` (an API may answer a code with a more precise
/// status than its page, e.g. 413 for an oversized `bad_request`).
pub fn api_error(status: StatusCode, code: Code, message: &str) -> Response<BoxBody> {
    let denial = Denial::explained(code, message);
    let mut resp = json_response(status, &denial.json(None));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&denial.public_code()) {
        resp.headers_mut().insert(ERROR_CODE_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response<BoxBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[tokio::test]
    async fn the_edge_answers_with_the_cores_page_and_negotiation() {
        let d = Denial::explained(Code::ConnectorUnavailable, "No connector of group `g`.");
        for (a, json) in [
            ("application/json, text/html", true),
            ("text/html, application/json", false),
            ("text/html;q=0.5, application/json", true),
            ("*/*", false),
        ] {
            let resp = d.clone().into_response(&accept(a), "rid-1");
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
            let core = d.render("rid-1", Some(a));
            let ct = resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(ct.starts_with("application/json"), json, "{a}");
            assert_eq!(resp.headers()[ERROR_CODE_HEADER], "connector_unavailable");
            assert_eq!(resp.headers()[crate::REQUEST_ID_HEADER], "rid-1");
            assert_eq!(body(resp).await, core.body, "{a}");
        }
        let resp = d.clone().into_response(&HeaderMap::new(), "r");
        assert!(resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    #[tokio::test]
    async fn api_errors_are_the_cores_json_object() {
        let resp = api_error(StatusCode::FORBIDDEN, Code::TokenUsed, "used <twice>");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[ERROR_CODE_HEADER], "token_used");
        let v: serde_json::Value = serde_json::from_str(&body(resp).await).unwrap();
        assert_eq!(v["error"], "token_used");
        assert_eq!(v["code"], "token_used");
        assert_eq!(v["message"], "used <twice>");
    }

    #[test]
    fn every_code_the_readme_documents_is_in_the_closed_set() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("| code | status | where |")
            .nth(1)
            .and_then(|t| t.split("\n\n").next())
            .unwrap();
        let mut documented = 0;
        for row in table.lines().skip(2) {
            let first = row.split('|').nth(1).unwrap();
            // Drop parenthesised remarks (they name settings, not codes).
            let mut text = String::new();
            let mut depth = 0;
            for c in first.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    c if depth == 0 => text.push(c),
                    _ => {}
                }
            }
            for code in text.split('`').skip(1).step_by(2) {
                assert!(
                    Code::ALL.iter().any(|c| c.as_str() == code),
                    "`{code}` is documented but not a denial::Code"
                );
                documented += 1;
            }
        }
        assert!(documented > 20, "{documented}");
    }
}
