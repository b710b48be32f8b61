//! Denials: the one place that maps a refusal to an HTTP status, a stable
//! code and a sentence for humans, and renders it as HTML or JSON.
//!
//! Every filter (preauth, conditional access, connector) answers a refusal
//! with [`Denial::render`]; the code is part of the contract (operators grep
//! logs and users quote it), so codes never change once published.

use std::fmt;

/// Why a request was refused. [`Denial::code`] gives the stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The ID token (or bearer token) has expired (`token_expired`).
    TokenExpired,
    /// The token's `nbf`/`iat` lies in the future beyond the allowed skew (`token_not_yet_valid`).
    TokenNotYetValid,
    /// The token's audience does not contain the client id (`audience_mismatch`).
    AudienceMismatch,
    /// Several audiences and `azp` is not the client id (`azp_mismatch`).
    AuthorizedPartyMismatch,
    /// The token's issuer is not the configured issuer (`issuer_mismatch`).
    IssuerMismatch,
    /// The token's nonce is not the one the login sent (`nonce_mismatch`).
    NonceMismatch,
    /// The token's signature does not verify (`signature_invalid`).
    SignatureInvalid,
    /// The token's algorithm is not on the allow-list (`algorithm_not_allowed`).
    AlgorithmNotAllowed,
    /// No key in the provider's JWKS has the token's `kid` (`unknown_key`).
    UnknownKey,
    /// The token is not a well-formed JWT or lacks a required claim (`token_invalid`).
    TokenInvalid,
    /// The callback's `state` does not match the state cookie (`state_mismatch`).
    StateMismatch,
    /// The callback came without a state cookie or without `state` (`state_missing`).
    StateMissing,
    /// The provider answered the authorization request with an error (`idp_error:<code>`).
    IdpError(String),
    /// The token endpoint refused or answered garbage (`token_exchange_failed`).
    TokenExchangeFailed,
    /// The token endpoint did not answer in time (`token_exchange_timeout`).
    TokenExchangeTimeout,
    /// The provider's signing keys could not be fetched yet (`keys_unavailable`).
    KeysUnavailable,
    /// The session cookie could not be opened, for any reason (`cookie_invalid`).
    CookieInvalid,
    /// The session has expired (`session_expired`).
    SessionExpired,
    /// The request needs a session and has none (`login_required`).
    LoginRequired,
    /// A redirect target is not a safe relative URL (`redirect_invalid`).
    RedirectInvalid,
    /// The request itself is malformed (`bad_request`).
    BadRequest,
    /// The request path could be read as another path by some backend, so no
    /// decision is made on it (`ambiguous_path`; see [`crate::path`]).
    AmbiguousPath(crate::path::PathRefusal),
    /// A conditional-access policy blocked the request (`policy_blocked:<policy>`).
    PolicyBlocked(String),
    /// The user is not assigned to the app (`not_assigned`).
    NotAssigned,
    /// The request comes from a blocked location (`location_blocked`).
    LocationBlocked,
    /// The sign-in risk is above the app's limit (`risk_too_high`).
    RiskTooHigh,
    /// The app requires multi-factor authentication (`mfa_required`).
    MfaRequired,
    /// No connector of the app's group is connected (`connector_unavailable`).
    ConnectorUnavailable,
    /// Any other refusal: a filter-specific code, status and sentence.
    Other {
        /// HTTP status.
        status: u16,
        /// Stable code (`[a-z0-9_:.-]`).
        code: String,
        /// Sentence for humans.
        sentence: String,
    },
}

impl Denial {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        use Denial::*;
        match self {
            TokenExpired
            | TokenNotYetValid
            | AudienceMismatch
            | AuthorizedPartyMismatch
            | IssuerMismatch
            | NonceMismatch
            | SignatureInvalid
            | AlgorithmNotAllowed
            | UnknownKey
            | TokenInvalid
            | IdpError(_)
            | CookieInvalid
            | SessionExpired
            | LoginRequired => 401,
            StateMismatch | StateMissing | RedirectInvalid | BadRequest | AmbiguousPath(_) => 400,
            TokenExchangeFailed | ConnectorUnavailable => 502,
            TokenExchangeTimeout => 504,
            KeysUnavailable => 503,
            PolicyBlocked(_) | NotAssigned | LocationBlocked | RiskTooHigh | MfaRequired => 403,
            Other { status, .. } => *status,
        }
    }

    /// The stable code, e.g. `token_expired` or `idp_error:access_denied`.
    pub fn code(&self) -> String {
        use Denial::*;
        let fixed = match self {
            TokenExpired => "token_expired",
            TokenNotYetValid => "token_not_yet_valid",
            AudienceMismatch => "audience_mismatch",
            AuthorizedPartyMismatch => "azp_mismatch",
            IssuerMismatch => "issuer_mismatch",
            NonceMismatch => "nonce_mismatch",
            SignatureInvalid => "signature_invalid",
            AlgorithmNotAllowed => "algorithm_not_allowed",
            UnknownKey => "unknown_key",
            TokenInvalid => "token_invalid",
            StateMismatch => "state_mismatch",
            StateMissing => "state_missing",
            IdpError(code) => return format!("idp_error:{}", sanitize_code(code)),
            TokenExchangeFailed => "token_exchange_failed",
            TokenExchangeTimeout => "token_exchange_timeout",
            KeysUnavailable => "keys_unavailable",
            CookieInvalid => "cookie_invalid",
            SessionExpired => "session_expired",
            LoginRequired => "login_required",
            RedirectInvalid => "redirect_invalid",
            BadRequest => "bad_request",
            AmbiguousPath(_) => "ambiguous_path",
            PolicyBlocked(name) => return format!("policy_blocked:{}", sanitize_code(name)),
            NotAssigned => "not_assigned",
            LocationBlocked => "location_blocked",
            RiskTooHigh => "risk_too_high",
            MfaRequired => "mfa_required",
            ConnectorUnavailable => "connector_unavailable",
            Other { code, .. } => return sanitize_code(code),
        };
        fixed.to_string()
    }

    /// A sentence for humans that names the source of the problem.
    pub fn sentence(&self) -> String {
        use Denial::*;
        let fixed = match self {
            TokenExpired => "The sign-in token from the identity provider has expired. Sign in again.",
            TokenNotYetValid => "The sign-in token from the identity provider is not valid yet (check the clocks).",
            AudienceMismatch => "The sign-in token was issued for another application.",
            AuthorizedPartyMismatch => "The sign-in token was requested by another application.",
            IssuerMismatch => "The sign-in token was issued by an unexpected identity provider.",
            NonceMismatch => "The sign-in token does not belong to this sign-in attempt.",
            SignatureInvalid => "The sign-in token's signature is invalid.",
            AlgorithmNotAllowed => "The sign-in token is signed with an algorithm that is not allowed.",
            UnknownKey => "The sign-in token is signed with a key the identity provider does not publish.",
            TokenInvalid => "The sign-in token is malformed or incomplete.",
            StateMismatch => "This sign-in response does not belong to this browser's sign-in attempt. Start again.",
            StateMissing => "The sign-in attempt has expired or cookies are blocked. Start again.",
            IdpError(_) => "The identity provider refused the sign-in.",
            TokenExchangeFailed => "The identity provider did not accept the sign-in code.",
            TokenExchangeTimeout => "The identity provider did not answer in time.",
            KeysUnavailable => "The identity provider's signing keys are not available yet. Try again shortly.",
            CookieInvalid => "The session cookie is not valid. Sign in again.",
            SessionExpired => "Your session has expired. Sign in again.",
            LoginRequired => "You need to sign in to reach this application.",
            RedirectInvalid => "The return address is not a page of this application.",
            BadRequest => "The request is malformed.",
            AmbiguousPath(why) => {
                return format!(
                    "The request path is refused because applications could read it as another path: {why}."
                )
            }
            PolicyBlocked(_) => "An access policy blocked this request.",
            NotAssigned => "You are not assigned to this application.",
            LocationBlocked => "Access from your location is blocked.",
            RiskTooHigh => "The sign-in risk is too high for this application.",
            MfaRequired => "This application requires multi-factor authentication.",
            ConnectorUnavailable => "The application's connector is not reachable.",
            Other { sentence, .. } => return sentence.clone(),
        };
        fixed.to_string()
    }

    /// Renders the denial for a client whose `Accept` header is `accept`,
    /// naming the request id.
    pub fn render(&self, request_id: &str, accept: Option<&str>) -> DenialResponse {
        self.render_as(request_id, Format::from_accept(accept))
    }

    /// Renders the denial in the given format.
    pub fn render_as(&self, request_id: &str, format: Format) -> DenialResponse {
        let status = self.status();
        let code = self.code();
        let sentence = self.sentence();
        let mut headers = vec![("cache-control".to_string(), "no-store".to_string())];
        if status == 401 {
            headers.push((
                "www-authenticate".to_string(),
                format!("Bearer error=\"{code}\""),
            ));
        }
        let (content_type, body) = match format {
            Format::Json => {
                let body = serde_json::json!({
                    "error": code,
                    "message": sentence,
                    "request_id": request_id,
                });
                ("application/json", body.to_string())
            }
            Format::Html => (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Access denied</title></head>\
                     <body><h1>Access denied</h1><p>{}</p><p>Error code: <code>{}</code></p>\
                     <p>Request id: <code>{}</code></p></body></html>\n",
                    escape_html(&sentence),
                    escape_html(&code),
                    escape_html(request_id)
                ),
            ),
        };
        headers.push(("content-type".to_string(), content_type.to_string()));
        DenialResponse {
            status,
            headers,
            body,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}

/// A rendered denial, ready for `send_http_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers (lower-case names), including `content-type`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An HTML page for browsers.
    Html,
    /// A JSON object `{"error","message","request_id"}`.
    Json,
}

impl Format {
    /// JSON when `Accept` names `application/json` (or a `+json` type) before
    /// any `text/html`; HTML otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Html;
        };
        let accept = accept.to_ascii_lowercase();
        for item in accept.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media == "text/html" {
                return Format::Html;
            }
            if media == "application/json" || media.ends_with("+json") {
                return Format::Json;
            }
        }
        Format::Html
    }
}

/// Keeps a code to `[a-z0-9_.:-]`, replacing anything else by `_` and
/// capping its length, so that provider-supplied text can never break a page,
/// a header or a log line.
fn sanitize_code(code: &str) -> String {
    let cleaned: String = code
        .chars()
        .take(64)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attributes.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_stable() {
        let cases: Vec<(Denial, u16, &str)> = vec![
            (Denial::TokenExpired, 401, "token_expired"),
            (Denial::AudienceMismatch, 401, "audience_mismatch"),
            (Denial::IssuerMismatch, 401, "issuer_mismatch"),
            (Denial::NonceMismatch, 401, "nonce_mismatch"),
            (Denial::SignatureInvalid, 401, "signature_invalid"),
            (Denial::AlgorithmNotAllowed, 401, "algorithm_not_allowed"),
            (Denial::UnknownKey, 401, "unknown_key"),
            (Denial::StateMismatch, 400, "state_mismatch"),
            (Denial::StateMissing, 400, "state_missing"),
            (
                Denial::IdpError("access_denied".into()),
                401,
                "idp_error:access_denied",
            ),
            (Denial::TokenExchangeFailed, 502, "token_exchange_failed"),
            (Denial::TokenExchangeTimeout, 504, "token_exchange_timeout"),
            (Denial::CookieInvalid, 401, "cookie_invalid"),
            (Denial::SessionExpired, 401, "session_expired"),
            (Denial::LoginRequired, 401, "login_required"),
            (
                Denial::PolicyBlocked("finance-only".into()),
                403,
                "policy_blocked:finance-only",
            ),
            (Denial::NotAssigned, 403, "not_assigned"),
            (Denial::LocationBlocked, 403, "location_blocked"),
            (Denial::RiskTooHigh, 403, "risk_too_high"),
            (Denial::MfaRequired, 403, "mfa_required"),
            (Denial::ConnectorUnavailable, 502, "connector_unavailable"),
            (
                Denial::AmbiguousPath(crate::path::PathRefusal::EncodedSlash),
                400,
                "ambiguous_path",
            ),
        ];
        for (denial, status, code) in cases {
            assert_eq!(denial.status(), status, "{code}");
            assert_eq!(denial.code(), code);
            assert!(!denial.sentence().is_empty());
        }
    }

    #[test]
    fn provider_supplied_codes_are_sanitised() {
        let d = Denial::IdpError("<script>alert(1)</script>".into());
        assert_eq!(d.code(), "idp_error:_script_alert_1___script_");
        assert_eq!(Denial::IdpError(String::new()).code(), "idp_error:unknown");
        assert_eq!(Denial::IdpError("x".repeat(500)).code().len(), 10 + 64);
    }

    #[test]
    fn html_is_escaped_and_names_code_and_request_id() {
        let r = Denial::StateMismatch.render("<req&1>", Some("text/html,*/*"));
        assert_eq!(r.status, 400);
        assert!(r.body.contains("state_mismatch"));
        assert!(r.body.contains("&lt;req&amp;1&gt;"));
        assert!(!r.body.contains("<req&1>"));
        assert!(r
            .headers
            .contains(&("content-type".into(), "text/html; charset=utf-8".into())));
    }

    #[test]
    fn json_when_asked_for() {
        let r = Denial::TokenExpired.render("abc\"", Some("application/json"));
        assert_eq!(r.status, 401);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"], "token_expired");
        assert_eq!(v["request_id"], "abc\"");
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v.contains("token_expired")));
    }

    #[test]
    fn format_negotiation() {
        assert_eq!(Format::from_accept(None), Format::Html);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Html);
        assert_eq!(
            Format::from_accept(Some("text/html,application/json")),
            Format::Html
        );
        assert_eq!(
            Format::from_accept(Some("Application/JSON;q=1, text/html;q=0.5")),
            Format::Json
        );
        assert_eq!(
            Format::from_accept(Some("application/problem+json")),
            Format::Json
        );
    }

    #[test]
    fn other_denials_keep_their_status() {
        let d = Denial::Other {
            status: 429,
            code: "Too Many".into(),
            sentence: "Slow down.".into(),
        };
        assert_eq!(d.status(), 429);
        assert_eq!(d.code(), "too_many");
        let r = d.render("r", Some("text/html"));
        assert!(r.body.contains("Slow down."));
        assert!(!r.headers.iter().any(|(n, _)| n == "www-authenticate"));
    }
}
