//! Denials: the one place that maps a refusal to an HTTP status, a stable
//! code and a sentence for humans, and renders it as HTML or JSON.
//!
//! Every part of Portcullis answers a refusal from here: the filters
//! (preauth, conditional access), the edge and the connector
//! ([`Denial::render`]), and the edge's registration and admin API
//! ([`Denial::json`]). The code is part of the contract (operators grep logs
//! and users quote it), so codes never change once published: every code is a
//! [`Code`], a closed set of `&'static str`. A code that names something the
//! request met (the provider's error, the policy) carries it as a separate
//! *detail*, sanitised to `[a-z0-9_.:-]`; the public code is `code:detail`
//! (e.g. `idp_error:access_denied`, `policy_blocked:finance-only`).
//!
//! Which representation a client gets is decided once, by [`Format::negotiate`],
//! so the same `Accept` header gets the same format from every part.

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $status:literal, $sentence:literal; )*) => {
        /// Every stable denial code (a closed set).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in declaration order.
            pub const ALL: &'static [Code] = &[$( Code::$variant, )*];

            /// The code as published, e.g. `token_expired`.
            pub const fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $name, )* }
            }

            /// The HTTP status a page with this code answers with.
            pub const fn status(self) -> u16 {
                match self { $( Code::$variant => $status, )* }
            }

            /// The sentence for humans when the denial names nothing more specific.
            pub const fn sentence(self) -> &'static str {
                match self { $( Code::$variant => $sentence, )* }
            }
        }
    };
}

codes! {
    /// The ID token (or bearer token) has expired.
    TokenExpired = "token_expired", 401, "The sign-in token from the identity provider has expired. Sign in again.";
    /// The token's `nbf`/`iat` lies in the future beyond the allowed skew.
    TokenNotYetValid = "token_not_yet_valid", 401, "The sign-in token from the identity provider is not valid yet (check the clocks).";
    /// The token's audience does not contain the client id.
    AudienceMismatch = "audience_mismatch", 401, "The sign-in token was issued for another application.";
    /// Several audiences and `azp` is not the client id.
    AuthorizedPartyMismatch = "azp_mismatch", 401, "The sign-in token was requested by another application.";
    /// The token's issuer is not the configured issuer.
    IssuerMismatch = "issuer_mismatch", 401, "The sign-in token was issued by an unexpected identity provider.";
    /// The token's nonce is not the one the login sent.
    NonceMismatch = "nonce_mismatch", 401, "The sign-in token does not belong to this sign-in attempt.";
    /// The token's signature does not verify.
    SignatureInvalid = "signature_invalid", 401, "The sign-in token's signature is invalid.";
    /// The token's algorithm is not on the allow-list.
    AlgorithmNotAllowed = "algorithm_not_allowed", 401, "The sign-in token is signed with an algorithm that is not allowed.";
    /// No key in the provider's JWKS has the token's `kid`.
    UnknownKey = "unknown_key", 401, "The sign-in token is signed with a key the identity provider does not publish.";
    /// The token is not a well-formed JWT or lacks a required claim.
    TokenInvalid = "token_invalid", 401, "The sign-in token is malformed or incomplete.";
    /// The callback's `state` does not match the state cookie.
    StateMismatch = "state_mismatch", 400, "This sign-in response does not belong to this browser's sign-in attempt. Start again.";
    /// The callback came without a state cookie or without `state`.
    StateMissing = "state_missing", 400, "The sign-in attempt has expired or cookies are blocked. Start again.";
    /// The provider answered the authorization request with an error (detail: the error).
    IdpError = "idp_error", 401, "The identity provider refused the sign-in.";
    /// The token endpoint refused or answered garbage.
    TokenExchangeFailed = "token_exchange_failed", 502, "The identity provider did not accept the sign-in code.";
    /// The token endpoint did not answer in time.
    TokenExchangeTimeout = "token_exchange_timeout", 504, "The identity provider did not answer in time.";
    /// The provider's signing keys could not be fetched yet.
    KeysUnavailable = "keys_unavailable", 503, "The identity provider's signing keys are not available yet. Try again shortly.";
    /// The session cookie could not be opened, for any reason.
    CookieInvalid = "cookie_invalid", 401, "The session cookie is not valid. Sign in again.";
    /// The session has expired.
    SessionExpired = "session_expired", 401, "Your session has expired. Sign in again.";
    /// The request needs a session and has none.
    LoginRequired = "login_required", 401, "You need to sign in to reach this application.";
    /// A redirect target is not a safe relative URL.
    RedirectInvalid = "redirect_invalid", 400, "The return address is not a page of this application.";
    /// The request itself is malformed.
    BadRequest = "bad_request", 400, "The request is malformed.";
    /// The request path could be read as another path by some backend.
    AmbiguousPath = "ambiguous_path", 400, "The request path is refused because applications could read it as another path.";
    /// A conditional-access policy blocked the request (detail: the policy).
    PolicyBlocked = "policy_blocked", 403, "An access policy blocked this request.";
    /// The user is not assigned to the app.
    NotAssigned = "not_assigned", 403, "You are not assigned to this application.";
    /// The request comes from a blocked location.
    LocationBlocked = "location_blocked", 403, "Access from your location is blocked.";
    /// The sign-in risk is above the app's limit.
    RiskTooHigh = "risk_too_high", 403, "The sign-in risk is too high for this application.";
    /// The app requires multi-factor authentication.
    MfaRequired = "mfa_required", 403, "This application requires multi-factor authentication.";
    /// No connector of the app's group is connected, or its tunnel failed.
    ConnectorUnavailable = "connector_unavailable", 502, "The application's connector is not reachable.";
    /// No application is published on the request's host name.
    UnknownHost = "unknown_host", 404, "No application is published on this host name.";
    /// No such page (reserved paths, API routes).
    NotFound = "not_found", 404, "There is no such page.";
    /// The session does not fit in a cookie.
    SessionTooLarge = "session_too_large", 500, "The session cannot be stored in a cookie.";
    /// The route names an app this proxy is not configured for.
    RouteAppUnknown = "route_app_unknown", 500, "The route names an application that this proxy is not configured for.";
    /// A handed-over identity is for another app than the request's.
    AppMismatch = "app_mismatch", 500, "The session was checked for another application than the one this request goes to.";
    /// The identity handed over between filters could not be read.
    IdentityHandoffInvalid = "identity_handoff_invalid", 500, "The proxy could not read the signed-in identity.";
    /// The client address could not be determined.
    ClientAddressInvalid = "client_address_invalid", 400, "The client address could not be determined.";
    /// The configuration changed while a sign-in waited for the provider.
    SignInInterrupted = "sign_in_interrupted", 503, "The proxy's configuration changed during the sign-in. Start again.";
    /// The proxy itself failed.
    InternalError = "internal_error", 500, "The proxy failed to handle this request.";
    /// The edge or the connector does not publish the request's app.
    AppUnknown = "app_unknown", 404, "No published application answers this request.";
    /// The app takes only requests with a valid identity assertion.
    AssertionRequired = "assertion_required", 401, "This application takes only requests with a valid identity assertion.";
    /// The connector could not reach the backend.
    BackendUnreachable = "backend_unreachable", 502, "The application's backend is not reachable.";
    /// The backend's certificate is outside the pinned set.
    BackendPinMismatch = "backend_pin_mismatch", 502, "The application's backend presented a certificate outside the pinned set.";
    /// The backend's certificate is not trusted.
    BackendTlsUntrusted = "backend_tls_untrusted", 502, "The application's backend presented an untrusted certificate.";
    /// The backend did not answer in time.
    BackendTimeout = "backend_timeout", 504, "The application's backend did not answer in time.";
    /// The backend answered with a protocol error.
    BackendError = "backend_error", 502, "The application's backend failed.";
    /// The connector's settings for the backend are unusable.
    BackendMisconfigured = "backend_misconfigured", 502, "The connector's settings for this application's backend are unusable.";
    /// API: no bearer admin token.
    TokenMissing = "token_missing", 401, "Send the admin token as `Authorization: Bearer <token>`.";
    /// API: the admin token's algorithm is not allowed.
    TokenAlgorithmRefused = "token_algorithm_refused", 401, "The token is signed with an algorithm that is not allowed.";
    /// API: the admin token's signature does not verify.
    TokenInvalidSignature = "token_invalid_signature", 401, "The token's signature is invalid.";
    /// API: the admin token is not a JWT.
    TokenMalformed = "token_malformed", 401, "The token is not a JWT.";
    /// API: the provider's JWKS could not be used to check the admin token.
    JwksUnavailable = "jwks_unavailable", 503, "The identity provider's signing keys are not available.";
    /// API: the admin token names another tenant.
    TenantMismatch = "tenant_mismatch", 403, "The token was issued for another tenant.";
    /// API: the admin token lacks the admin role or group.
    NotAdmin = "not_admin", 403, "The token does not hold the admin role or group.";
    /// API: the registration token was used already.
    TokenUsed = "token_used", 403, "The token was used already.";
    /// API: too many registrations.
    RateLimited = "rate_limited", 429, "Too many requests; try again later.";
    /// API: too many registrations at once.
    RegistrationBusy = "registration_busy", 503, "Too many registrations at once; try again later.";
    /// API: the method is not allowed on this route.
    MethodNotAllowed = "method_not_allowed", 405, "The method is not allowed here.";
    /// API: the request body did not arrive in time.
    RequestTimeout = "request_timeout", 408, "The request did not arrive in time.";
    /// API: the edge cannot reach its shared store.
    StoreUnavailable = "store_unavailable", 503, "The edge cannot reach its shared store; try again later.";
    /// API: no such connector group.
    UnknownGroup = "unknown_group", 400, "There is no such connector group.";
    /// API: the certificate signing request is unusable.
    BadCsr = "bad_csr", 400, "The certificate signing request is unusable.";
    /// API: the connector's certificate was revoked.
    ConnectorRevoked = "connector_revoked", 403, "This connector was revoked.";
    /// API: the connector's certificate has expired.
    IdentityExpired = "identity_expired", 403, "This connector's certificate has expired.";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a request was refused: a [`Code`], perhaps a detail, and a sentence.
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
    /// The provider answered the authorization request with an error
    /// (`idp_error`, detail: the provider's error).
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
    /// A conditional-access policy blocked the request (`policy_blocked`, detail: the policy).
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
    /// Any code of the closed set, with its own detail and a sentence that
    /// names the specifics (the app, the policy, the backend's error).
    Explained {
        /// The code; it also gives the status.
        code: Code,
        /// The detail of the public code (`code:detail`), if any.
        detail: Option<String>,
        /// The sentence for humans; `None` for the code's own sentence.
        sentence: Option<String>,
    },
}

impl From<Code> for Denial {
    fn from(code: Code) -> Self {
        Denial::Explained {
            code,
            detail: None,
            sentence: None,
        }
    }
}

impl Denial {
    /// A denial with `code` and a sentence naming the specifics.
    pub fn explained(code: Code, sentence: impl Into<String>) -> Self {
        Denial::Explained {
            code,
            detail: None,
            sentence: Some(sentence.into()),
        }
    }

    /// The code, from the closed set.
    pub fn kind(&self) -> Code {
        use Denial::*;
        match self {
            TokenExpired => Code::TokenExpired,
            TokenNotYetValid => Code::TokenNotYetValid,
            AudienceMismatch => Code::AudienceMismatch,
            AuthorizedPartyMismatch => Code::AuthorizedPartyMismatch,
            IssuerMismatch => Code::IssuerMismatch,
            NonceMismatch => Code::NonceMismatch,
            SignatureInvalid => Code::SignatureInvalid,
            AlgorithmNotAllowed => Code::AlgorithmNotAllowed,
            UnknownKey => Code::UnknownKey,
            TokenInvalid => Code::TokenInvalid,
            StateMismatch => Code::StateMismatch,
            StateMissing => Code::StateMissing,
            IdpError(_) => Code::IdpError,
            TokenExchangeFailed => Code::TokenExchangeFailed,
            TokenExchangeTimeout => Code::TokenExchangeTimeout,
            KeysUnavailable => Code::KeysUnavailable,
            CookieInvalid => Code::CookieInvalid,
            SessionExpired => Code::SessionExpired,
            LoginRequired => Code::LoginRequired,
            RedirectInvalid => Code::RedirectInvalid,
            BadRequest => Code::BadRequest,
            AmbiguousPath(_) => Code::AmbiguousPath,
            PolicyBlocked(_) => Code::PolicyBlocked,
            NotAssigned => Code::NotAssigned,
            LocationBlocked => Code::LocationBlocked,
            RiskTooHigh => Code::RiskTooHigh,
            MfaRequired => Code::MfaRequired,
            ConnectorUnavailable => Code::ConnectorUnavailable,
            Explained { code, .. } => *code,
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.kind().status()
    }

    /// The stable code without its detail, e.g. `idp_error`.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The detail, sanitised to `[a-z0-9_.:-]` (at most 64 characters), for
    /// the codes that carry one.
    pub fn detail(&self) -> Option<String> {
        let raw = match self {
            Denial::IdpError(e) => e.as_str(),
            Denial::PolicyBlocked(p) => p.as_str(),
            Denial::Explained {
                detail: Some(d), ..
            } => d.as_str(),
            _ => return None,
        };
        Some(sanitize_detail(raw))
    }

    /// The code as published: `code`, or `code:detail`
    /// (e.g. `idp_error:access_denied`).
    pub fn public_code(&self) -> String {
        match self.detail() {
            Some(d) => format!("{}:{d}", self.code()),
            None => self.code().to_string(),
        }
    }

    /// A sentence for humans that names the source of the problem.
    pub fn sentence(&self) -> String {
        match self {
            Denial::AmbiguousPath(why) => format!(
                "The request path is refused because applications could read it as another path: {why}."
            ),
            Denial::Explained {
                sentence: Some(s), ..
            } => s.clone(),
            other => other.kind().sentence().to_string(),
        }
    }

    /// Renders the denial for a client whose `Accept` header is `accept`,
    /// naming the request id.
    pub fn render(&self, request_id: &str, accept: Option<&str>) -> DenialResponse {
        self.render_as(request_id, Format::negotiate(accept))
    }

    /// The JSON object of a denial: `error` (the public code), `code`,
    /// `detail` (when there is one), `message` (the sentence) and
    /// `request_id` (when there is one). The edge's API errors are this object.
    pub fn json(&self, request_id: Option<&str>) -> serde_json::Value {
        use serde_json::Value;
        let mut v = serde_json::Map::new();
        v.insert("error".into(), Value::String(self.public_code()));
        v.insert("code".into(), Value::String(self.code().into()));
        if let Some(d) = self.detail() {
            v.insert("detail".into(), Value::String(d));
        }
        v.insert("message".into(), Value::String(self.sentence()));
        if let Some(r) = request_id {
            v.insert("request_id".into(), Value::String(r.to_string()));
        }
        Value::Object(v)
    }

    /// Renders the denial in the given format.
    pub fn render_as(&self, request_id: &str, format: Format) -> DenialResponse {
        let status = self.status();
        let public = self.public_code();
        let mut headers = vec![("cache-control".to_string(), "no-store".to_string())];
        if status == 401 {
            headers.push((
                "www-authenticate".to_string(),
                format!("Bearer error=\"{public}\""),
            ));
        }
        let (content_type, body) = match format {
            Format::Json => ("application/json", self.json(Some(request_id)).to_string()),
            Format::Html => {
                let detail = match self.detail() {
                    Some(d) => format!("<p>Detail: <code>{}</code></p>", escape_html(&d)),
                    None => String::new(),
                };
                (
                    "text/html; charset=utf-8",
                    format!(
                        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Access denied</title></head>\
                         <body><h1>Access denied</h1><p>{}</p><p>Error code: <code>{}</code></p>{detail}\
                         <p>Request id: <code>{}</code></p></body></html>\n",
                        escape_html(&self.sentence()),
                        escape_html(&public),
                        escape_html(request_id)
                    ),
                )
            }
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
        f.write_str(&self.public_code())
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
    /// A JSON object (see [`Denial::json`]).
    Json,
}

/// How one `Accept` entry matches a representation: its q-value in
/// thousandths, how specific its range is (2 the exact type, 1 `type/*`,
/// 0 `*/*`), and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Match {
    q: u16,
    specific: u8,
    position: usize,
}

impl Match {
    /// Whether `self`, rather than `other`, gives the representation its
    /// q-value: the most specific range decides (so `text/html;q=0, */*`
    /// refuses HTML), then the higher q, then the earlier entry.
    fn governs(&self, other: &Option<Match>) -> bool {
        match other {
            None => true,
            Some(o) => {
                (self.specific, self.q, std::cmp::Reverse(self.position))
                    > (o.specific, o.q, std::cmp::Reverse(o.position))
            }
        }
    }

    /// Whether the representation matched by `self` is preferred to the one
    /// matched by `other`: the higher q, then the more specific range, then
    /// the earlier entry.
    fn preferred_to(&self, other: &Option<Match>) -> bool {
        match other {
            None => true,
            Some(o) => {
                (self.q, self.specific, std::cmp::Reverse(self.position))
                    > (o.q, o.specific, std::cmp::Reverse(o.position))
            }
        }
    }
}

impl Format {
    /// The one `Accept` negotiation of Portcullis (filters, edge, connector).
    ///
    /// JSON is `application/json` or any `application/*+json`; HTML is
    /// `text/html`. Each takes its q-value from its most specific matching
    /// range (the exact type, then `application/*` or `text/*`, then `*/*`;
    /// `q=0` refuses it). JSON wins only when it is preferred to HTML: a
    /// higher q, then a more specific range, then the earlier entry. A
    /// missing, empty or unmatched header, `*/*` alone, and any other tie give
    /// HTML (browsers).
    /// So `application/json, text/html` is JSON (first listed) and
    /// `text/html, application/json` is HTML.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Html;
        };
        let mut json: Option<Match> = None;
        let mut html: Option<Match> = None;
        for (position, item) in accept.split(',').enumerate() {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1000u16;
            for param in parts {
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                if name.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(value.trim()).unwrap_or(0);
                }
            }
            let (kind, sub) = media.split_once('/').unwrap_or((media.as_str(), ""));
            let for_json = match (kind, sub) {
                ("application", "json") => Some(2),
                ("application", s) if s.ends_with("+json") => Some(2),
                ("application", "*") => Some(1),
                ("*", "*") => Some(0),
                _ => None,
            };
            let for_html = match (kind, sub) {
                ("text", "html") => Some(2),
                ("text", "*") => Some(1),
                ("*", "*") => Some(0),
                _ => None,
            };
            if let Some(specific) = for_json {
                let m = Match {
                    q,
                    specific,
                    position,
                };
                if m.governs(&json) {
                    json = Some(m);
                }
            }
            if let Some(specific) = for_html {
                let m = Match {
                    q,
                    specific,
                    position,
                };
                if m.governs(&html) {
                    html = Some(m);
                }
            }
        }
        match json {
            Some(j) if j.q > 0 && j.preferred_to(&html.filter(|h| h.q > 0)) => Format::Json,
            _ => Format::Html,
        }
    }

    /// The same as [`Format::negotiate`] (kept for the filters' callers).
    pub fn from_accept(accept: Option<&str>) -> Format {
        Format::negotiate(accept)
    }
}

/// A q-value (`0`, `0.5`, `1`, `1.000`) in thousandths; `None` if malformed.
fn parse_q(value: &str) -> Option<u16> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Pad to three digits: "5" is 500 thousandths.
    let padded = format!("{frac:0<3}");
    let thousandths: u16 = if frac.is_empty() {
        0
    } else {
        padded.parse().ok()?
    };
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Keeps a detail to `[a-z0-9_.:-]`, replacing anything else by `_` and
/// capping its length, so that provider-supplied text can never break a page,
/// a header or a log line.
fn sanitize_detail(code: &str) -> String {
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
            assert_eq!(denial.public_code(), code);
            assert_eq!(denial.to_string(), code);
            assert_eq!(code.split(':').next(), Some(denial.code()));
            assert!(!denial.sentence().is_empty());
        }
    }

    #[test]
    fn provider_supplied_codes_are_sanitised() {
        let d = Denial::IdpError("<script>alert(1)</script>".into());
        assert_eq!(d.public_code(), "idp_error:_script_alert_1___script_");
        assert_eq!(
            Denial::IdpError(String::new()).public_code(),
            "idp_error:unknown"
        );
        assert_eq!(
            Denial::IdpError("x".repeat(500)).public_code().len(),
            10 + 64
        );
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

    fn neg(accept: &str) -> Format {
        Format::negotiate(Some(accept))
    }

    #[test]
    fn format_negotiation() {
        use Format::{Html, Json};
        // Missing, empty or unmatched: a browser page.
        assert_eq!(Format::negotiate(None), Html);
        assert_eq!(neg(""), Html);
        assert_eq!(neg("image/png"), Html);
        assert_eq!(neg("*/*"), Html);
        // Browsers.
        assert_eq!(
            neg("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            Html
        );
        // Both named at the same q: the first listed wins, everywhere.
        assert_eq!(neg("application/json, text/html"), Json);
        assert_eq!(neg("text/html,application/json"), Html);
        // q-values decide before order.
        assert_eq!(neg("Application/JSON;q=1, text/html;q=0.5"), Json);
        assert_eq!(neg("text/html;q=0.5, application/json"), Json);
        assert_eq!(neg("application/json;q=0.2, text/html;q=0.9"), Html);
        assert_eq!(
            neg("application/json; charset=utf-8; q=0.9, text/html;Q=0.8"),
            Json
        );
        // q=0 refuses a type.
        assert_eq!(neg("application/json;q=0"), Html);
        assert_eq!(neg("text/html;q=0, application/json"), Json);
        assert_eq!(neg("text/html;q=0, */*"), Json);
        assert_eq!(neg("*/*, text/html;q=0"), Json);
        assert_eq!(neg("text/*;q=0, */*;q=0.5, text/html;q=0.4"), Json);
        assert_eq!(neg("application/*;q=0, */*"), Html);
        // Wildcards: an exact type beats a wildcard at the same q.
        assert_eq!(neg("application/*"), Json);
        assert_eq!(neg("text/*"), Html);
        assert_eq!(neg("application/json, */*"), Json);
        assert_eq!(neg("*/*, application/json"), Json);
        assert_eq!(neg("text/html, */*"), Html);
        assert_eq!(neg("*/*;q=0.9, application/json;q=0.1"), Html);
        // Structured JSON types.
        assert_eq!(neg("application/problem+json"), Json);
        // A malformed q counts as 0.
        assert_eq!(neg("application/json;q=2, text/html;q=0.1"), Html);
        assert_eq!(neg("application/json;q=abc"), Html);
    }

    #[test]
    fn q_values_parse_strictly() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("-1"), None);
        assert_eq!(parse_q(""), None);
    }

    #[test]
    fn codes_are_a_closed_set_of_distinct_names() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let name = code.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!((400..600).contains(&code.status()), "{name}");
            assert!(code.sentence().ends_with('.'), "{name}");
            let d = Denial::from(*code);
            assert_eq!(d.code(), name);
            assert_eq!(d.status(), code.status());
        }
    }

    #[test]
    fn the_detail_is_a_separate_escaped_field() {
        let d = Denial::PolicyBlocked("Finance <Only>".into());
        assert_eq!(d.code(), "policy_blocked");
        assert_eq!(d.detail().as_deref(), Some("finance__only_"));
        assert_eq!(d.public_code(), "policy_blocked:finance__only_");
        let v = d.json(Some("r1"));
        assert_eq!(v["error"], "policy_blocked:finance__only_");
        assert_eq!(v["code"], "policy_blocked");
        assert_eq!(v["detail"], "finance__only_");
        assert_eq!(v["request_id"], "r1");
        let html = d.render_as("r1", Format::Html).body;
        assert!(html.contains("Detail: <code>finance__only_</code>"));
        assert!(!html.contains("<Only>"));
        assert_eq!(Denial::TokenExpired.json(None).get("detail"), None);
        assert_eq!(Denial::TokenExpired.json(None).get("request_id"), None);
    }

    #[test]
    fn explained_denials_take_their_status_from_the_code() {
        let d = Denial::explained(Code::RateLimited, "Slow down.");
        assert_eq!(d.status(), 429);
        assert_eq!(d.code(), "rate_limited");
        let r = d.render("r", Some("text/html"));
        assert!(r.body.contains("Slow down."));
        assert!(!r.headers.iter().any(|(n, _)| n == "www-authenticate"));
        let d = Denial::from(Code::ConnectorUnavailable);
        assert_eq!(d.status(), 502);
        assert_eq!(d.sentence(), Code::ConnectorUnavailable.sentence());
    }
}
