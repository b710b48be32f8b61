//! OpenID Connect preauthentication: the decisions of the preauth filter.
//!
//! The glue calls [`on_request`] for every request and gets a [`Decision`]
//! back; for a callback it dispatches the token request and hands the answer
//! to [`finish_login`]. Time, random bytes and the provider state (metadata,
//! keys) are passed in.

pub mod config;
pub mod handoff;
pub mod jwks;
pub mod login;
pub mod session;
pub mod token;
pub mod url;

use crate::app::{self, Chosen, RouteApp};
use crate::assertion::{ASSERTION_HEADER, JWKS_CACHE_CONTROL, JWKS_PATH};
use crate::denial::{Code, Denial, DenialResponse, Format};
use crate::forwarded;
use crate::identity::Identity;
use crate::redirect;
use crate::seal::SEAL_RANDOM_LEN;
use config::{AppConfig, OidcSettings, PreauthConfig, ProviderMetadata};
use jwks::KeySet;
use login::{LoginState, LOGIN_RANDOM_LEN};
use session::SessionError;
use token::{TokenChecks, TokenError};

/// Reserved path: start a login.
pub const LOGIN_PATH: &str = "/.auth/login";
/// Reserved path: the OIDC redirect URI.
pub const CALLBACK_PATH: &str = "/.auth/callback";
/// Reserved path: sign out.
pub const LOGOUT_PATH: &str = "/.auth/logout";
/// Reserved path: the current identity as JSON.
pub const ME_PATH: &str = "/.auth/me";

/// Prefix of every internal header; clients' copies are always removed.
pub const INTERNAL_HEADER_PREFIX: &str = "x-portcullis-";

/// An HTTP call to the provider, for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Envoy cluster.
    pub cluster: String,
    /// Headers including `:method`, `:path`, `:authority`, `:scheme`.
    pub headers: Vec<(String, String)>,
    /// Body (empty for GET).
    pub body: Vec<u8>,
    /// Timeout, milliseconds.
    pub timeout_ms: u64,
}

/// A local response (redirect, denial, `/.auth/me`, logout page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers; `set-cookie` may repeat.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    fn from_denial(d: DenialResponse) -> Response {
        Response {
            status: d.status,
            headers: d.headers,
            body: d.body.into_bytes(),
        }
    }

    fn redirect(location: &str) -> Response {
        Response {
            status: 302,
            headers: vec![
                ("location".into(), location.into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: Vec::new(),
        }
    }

    /// The value of header `name` (first occurrence).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a request needs from the provider before it can be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The endpoints (discovery document).
    Metadata,
    /// The signing keys.
    Keys,
}

/// The glue's decision for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let the request on after removing `remove` and adding `add`; when
    /// `identity` is set, hand it to later filters ([`handoff`]).
    Continue {
        /// Request headers to remove (client copies of identity/internal headers).
        remove: Vec<String>,
        /// Identity headers to add (set, replacing any value).
        add: Vec<(String, String)>,
        /// The authenticated user, if any.
        identity: Option<Box<Identity>>,
        /// The app id.
        app_id: Option<String>,
    },
    /// Answer with this response; the request does not go on.
    Respond {
        /// The response.
        response: Response,
        /// A token named a key the JWKS lacks: refetch it (rate-limited).
        refetch_keys: bool,
    },
    /// Pause the request, send `call` to the token endpoint, then give the
    /// answer to [`finish_login`] with `pending`.
    ExchangeCode {
        /// The token request.
        call: HttpCall,
        /// What the callback needs to finish.
        pending: Box<PendingLogin>,
    },
    /// Pause the request until the provider's metadata or keys are loaded,
    /// then call [`on_request`] again.
    Wait(Needs),
}

/// A callback waiting for the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// Index of the app in the configuration.
    pub app: usize,
    /// The opened login state.
    pub login: LoginState,
    /// The login-state cookie to clear.
    pub state_cookie: String,
    /// Request id, for denials.
    pub request_id: String,
    /// The representation the client asked for.
    pub format: Format,
}

/// The provider state of an app as the glue knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provider<'a> {
    /// Endpoints, once discovered (or from configuration).
    pub metadata: Option<&'a ProviderMetadata>,
    /// Signing keys, once fetched.
    pub keys: Option<&'a KeySet>,
}

/// The request as the glue sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` (raw, with query).
    pub path: &'a str,
    /// `:authority` / `Host`.
    pub host: &'a str,
    /// Every request header (name, value), names in any case.
    pub headers: &'a [(String, String)],
    /// `x-request-id` (or another id) for denials and logs.
    pub request_id: &'a str,
    /// The app the route names ([`app::ROUTE_APP_PROPERTY`]).
    pub route_app: RouteApp<'a>,
    /// Envoy's downstream address (`source.address`), for `X-Real-IP`.
    pub client_address: Option<&'a str>,
}

impl RequestView<'_> {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The denial format for this client.
    pub fn format(&self) -> Format {
        Format::negotiate(self.header("accept"))
    }

    /// True for page navigations: `Accept` names `text/html` and no `X-Requested-With`.
    pub fn is_navigation(&self) -> bool {
        self.header("x-requested-with").is_none()
            && self
                .header("accept")
                .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
    }
}

/// Header names (lower-case, `-` for `_`, sorted) whose client copies the
/// filter removes: the identity headers (defaults and every app's mapping)
/// and the headers backends trust about the client
/// ([`forwarded::UNTRUSTED_CLIENT_HEADERS`]).
pub fn owned_headers(config: &PreauthConfig) -> Vec<String> {
    let mut names: Vec<String> = config::default_claim_headers()
        .into_iter()
        .map(|(h, _)| h)
        .chain(
            forwarded::UNTRUSTED_CLIENT_HEADERS
                .iter()
                .map(|h| h.to_string()),
        )
        .chain(
            config
                .apps
                .iter()
                .filter_map(|a| a.oidc.as_ref())
                .flat_map(|o| o.claim_headers.iter().map(|(h, _)| h.clone())),
        )
        .map(|h| h.replace('_', "-"))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The request headers to remove: any spelling (case, `_` for `-`) of an
/// owned header (`owned` as [`owned_headers`] makes it: sorted), and every
/// `x-portcullis-*` header.
pub fn headers_to_strip(owned: &[String], headers: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in headers {
        let canon = name.to_ascii_lowercase().replace('_', "-");
        if (canon.starts_with(INTERNAL_HEADER_PREFIX) || owned.binary_search(&canon).is_ok())
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    }
    out
}

fn deny(denial: Denial, req: &RequestView<'_>) -> Decision {
    Decision::Respond {
        response: Response::from_denial(denial.render_as(req.request_id, req.format())),
        refetch_keys: false,
    }
}

fn deny_json(denial: Denial, req: &RequestView<'_>) -> Decision {
    Decision::Respond {
        response: Response::from_denial(denial.render_as(req.request_id, Format::Json)),
        refetch_keys: false,
    }
}

/// Decides a request (see [`Decision`]). `random` fills buffers with fresh
/// random bytes; `sessions` holds the sessions this worker opened recently
/// (one cache per configuration: see [`session::SessionCache`]).
pub fn on_request(
    config: &PreauthConfig,
    owned: &[String],
    req: &RequestView<'_>,
    provider: Provider<'_>,
    now: u64,
    random: &mut dyn FnMut(&mut [u8]),
    sessions: &mut session::SessionCache,
) -> Decision {
    let remove = headers_to_strip(owned, req.headers);
    let forwarded = forwarded::forwarded_headers(req.host, req.client_address);
    let app_index = match config.select_app(req.route_app, req.host) {
        Chosen::Route { app, .. } | Chosen::Host(app) => app,
        Chosen::UnknownRoute => return deny(app::route_app_unknown(), req),
        Chosen::None => {
            if config.other_hosts == config::OtherHosts::Pass {
                return Decision::Continue {
                    remove,
                    add: forwarded,
                    identity: None,
                    app_id: None,
                };
            }
            return deny(Denial::from(Code::UnknownHost), req);
        }
    };
    // select_app returns indexes into config.apps; fail closed all the same.
    let Some(app) = config.apps.get(app_index) else {
        return deny(app::route_app_unknown(), req);
    };
    let Some(settings) = &app.oidc else {
        return Decision::Continue {
            remove,
            add: forwarded,
            identity: None,
            app_id: Some(app.id.clone()),
        };
    };
    // The path rule decides every path below, and refuses a path that some
    // backend could read as another one before anything else.
    let path = match settings.path_rules.canonicalize(req.path) {
        Ok(p) => p,
        Err(why) => return deny(Denial::AmbiguousPath(why), req),
    };
    match path.key() {
        JWKS_PATH => return jwks(settings),
        LOGIN_PATH => return start_login_from_params(app, settings, req, provider, now, random),
        CALLBACK_PATH => return callback(app_index, app, settings, req, provider, now),
        LOGOUT_PATH => return logout(settings, req, provider),
        ME_PATH => {
            return match session::session_from_headers(app, settings, req.headers, now, sessions) {
                Some(Ok(session::Session { identity: id, .. })) => Decision::Respond {
                    response: Response {
                        status: 200,
                        headers: vec![
                            ("content-type".into(), "application/json".into()),
                            ("cache-control".into(), "no-store".into()),
                        ],
                        body: serde_json::to_vec(&id).unwrap_or_default(),
                    },
                    refetch_keys: false,
                },
                Some(Err(SessionError::Expired)) => deny_json(Denial::SessionExpired, req),
                Some(Err(SessionError::Invalid)) => deny_json(Denial::CookieInvalid, req),
                None => deny_json(Denial::LoginRequired, req),
            }
        }
        _ => {}
    }
    if path.key().starts_with("/.auth/") {
        return deny(
            Denial::explained(Code::NotFound, "There is no such sign-in page."),
            req,
        );
    }
    let session = session::session_from_headers(app, settings, req.headers, now, sessions);
    let continue_with =
        |id: Identity, assertion: String, remove: Vec<String>, forwarded: Vec<(String, String)>| {
            let mut add = session::identity_headers(settings, &id);
            add.push((ASSERTION_HEADER.to_string(), assertion));
            add.extend(forwarded);
            Decision::Continue {
                add,
                remove,
                identity: Some(Box::new(id)),
                app_id: Some(app.id.clone()),
            }
        };
    let session = match session {
        Some(Ok(s)) => return continue_with(s.identity, s.assertion, remove, forwarded),
        Some(Err(e)) => Some(Err::<(), _>(e)),
        None => None,
    };
    if settings
        .unauthenticated_paths
        .iter()
        .any(|p| path.is_under_as_written(p))
    {
        return Decision::Continue {
            remove,
            add: forwarded,
            identity: None,
            app_id: Some(app.id.clone()),
        };
    }
    if let (Some(audience), Some(auth)) = (&settings.bearer_audience, req.header("authorization")) {
        if let Some(token) = bearer_token(auth) {
            let Some(keys) = provider.keys else {
                return Decision::Wait(Needs::Keys);
            };
            let checks = TokenChecks {
                issuer: &settings.issuer,
                audience,
                authorized_party: None,
                nonce: None,
                algorithms: &settings.algorithms,
                skew_secs: settings.skew_secs,
                now,
            };
            // A token validated before comes from the cache with its
            // assertion: the signature check and the Ed25519 signature run
            // once per token and worker.
            let validated = sessions.bearer(settings, &app.id, token, now, || {
                token::validate_token(token, keys, &checks)
                    .map(|t| session::identity_from_token(settings, &t, now))
            });
            return match validated {
                Ok(s) => continue_with(s.identity, s.assertion, remove, forwarded),
                Err(e) => Decision::Respond {
                    response: Response::from_denial(
                        e.denial().render_as(req.request_id, Format::Json),
                    ),
                    refetch_keys: matches!(e, TokenError::UnknownKey(_)),
                },
            };
        }
    }
    if !req.is_navigation() {
        let denial = match session {
            Some(Err(SessionError::Expired)) => Denial::SessionExpired,
            Some(Err(SessionError::Invalid)) => Denial::CookieInvalid,
            _ => Denial::LoginRequired,
        };
        return deny_json(denial, req);
    }
    let return_to = redirect::or_root(Some(req.path)).to_string();
    start_login(
        app, settings, req, provider, &return_to, None, None, now, random,
    )
}

/// `/.auth/jwks`: the app's assertion keys, public and cacheable, no session needed.
fn jwks(settings: &OidcSettings) -> Decision {
    Decision::Respond {
        response: Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), JWKS_CACHE_CONTROL.into()),
            ],
            body: settings.assertion.jwks().to_vec(),
        },
        refetch_keys: false,
    }
}

fn bearer_token(auth: &str) -> Option<&str> {
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn start_login_from_params(
    app: &AppConfig,
    settings: &OidcSettings,
    req: &RequestView<'_>,
    provider: Provider<'_>,
    now: u64,
    random: &mut dyn FnMut(&mut [u8]),
) -> Decision {
    let params = url::query_params(req.path);
    let return_to = match url::query_param(&params, "rd") {
        Some(rd) => match redirect::validate(&rd) {
            Ok(rd) => rd.to_string(),
            Err(_) => return deny(Denial::RedirectInvalid, req),
        },
        None => "/".to_string(),
    };
    let acr = url::query_param(&params, "acr").filter(|a| {
        !a.is_empty() && a.len() <= 256 && a.bytes().all(|b| (0x20..0x7f).contains(&b))
    });
    let max_age = match url::query_param(&params, "max_age") {
        Some(m) => match m.parse::<u64>() {
            Ok(m) => Some(m),
            Err(_) => return deny(Denial::BadRequest, req),
        },
        None => None,
    };
    start_login(
        app, settings, req, provider, &return_to, acr, max_age, now, random,
    )
}

#[allow(clippy::too_many_arguments)]
fn start_login(
    app: &AppConfig,
    settings: &OidcSettings,
    req: &RequestView<'_>,
    provider: Provider<'_>,
    return_to: &str,
    acr: Option<String>,
    max_age: Option<u64>,
    now: u64,
    random: &mut dyn FnMut(&mut [u8]),
) -> Decision {
    let Some(metadata) = provider.metadata else {
        return Decision::Wait(Needs::Metadata);
    };
    let Some(redirect_uri) =
        login::redirect_uri(settings, req.host, req.header("x-forwarded-proto"))
    else {
        return deny(Denial::BadRequest, req);
    };
    let mut bytes = [0u8; LOGIN_RANDOM_LEN];
    random(&mut bytes);
    let login = LoginState::new(&bytes, return_to, acr, max_age, now);
    let mut seal_random = [0u8; SEAL_RANDOM_LEN];
    seal_random.copy_from_slice(&bytes[64..64 + SEAL_RANDOM_LEN]);
    let cookie_name = login::state_cookie_name(&settings.cookie.name, &login.state);
    let sealed = match settings
        .sealer
        .seal(&cookie_name, &app.id, &login.encode(), seal_random)
    {
        Ok(v) => v,
        // Only a return address near the size limit can get here.
        Err(_) => return deny(Denial::RedirectInvalid, req),
    };
    let mut response = Response::redirect(&login::authorization_url(
        settings,
        metadata,
        &login,
        &redirect_uri,
    ));
    response.headers.push((
        "set-cookie".into(),
        session::set_cookie(
            &settings.cookie,
            &cookie_name,
            &sealed,
            Some(config::LOGIN_STATE_TTL_SECS),
        ),
    ));
    let pending = login::pending_login_cookies(req.headers, &settings.cookie.name);
    if pending.len() >= login::MAX_PENDING_LOGINS {
        for name in pending {
            response.headers.push((
                "set-cookie".into(),
                session::clear_cookie(&settings.cookie, &name),
            ));
        }
    }
    Decision::Respond {
        response,
        refetch_keys: false,
    }
}

fn callback(
    app_index: usize,
    app: &AppConfig,
    settings: &OidcSettings,
    req: &RequestView<'_>,
    provider: Provider<'_>,
    now: u64,
) -> Decision {
    let params = url::query_params(req.path);
    let state = url::query_param(&params, "state");
    if let Some(error) = url::query_param(&params, "error") {
        let mut d = Denial::IdpError(error).render_as(req.request_id, req.format());
        if let Some(state) = &state {
            let name = login::state_cookie_name(&settings.cookie.name, state);
            d.headers.push((
                "set-cookie".into(),
                session::clear_cookie(&settings.cookie, &name),
            ));
        }
        return Decision::Respond {
            response: Response::from_denial(d),
            refetch_keys: false,
        };
    }
    let Some(state) = state.filter(|s| !s.is_empty()) else {
        return deny(Denial::StateMissing, req);
    };
    let cookie_name = login::state_cookie_name(&settings.cookie.name, &state);
    let values = session::cookie_values(req.headers, &cookie_name);
    if values.is_empty() {
        return deny(Denial::StateMissing, req);
    }
    let login = values.iter().find_map(|v| {
        let bytes = settings.sealer.open(&cookie_name, &app.id, v).ok()?;
        LoginState::decode(&bytes)
    });
    let Some(login) = login else {
        return deny(Denial::StateMismatch, req);
    };
    // Constant-time comparison is not needed: the cookie name is derived from
    // the state and the value is authenticated; still compare the whole value.
    if login.state != state {
        return deny(Denial::StateMismatch, req);
    }
    if !login.is_fresh(now) {
        return deny(Denial::StateMissing, req);
    }
    let Some(code) = url::query_param(&params, "code").filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return deny(Denial::IdpError("missing_code".into()), req);
    };
    let Some(metadata) = provider.metadata else {
        return Decision::Wait(Needs::Metadata);
    };
    let Some(redirect_uri) =
        login::redirect_uri(settings, req.host, req.header("x-forwarded-proto"))
    else {
        return deny(Denial::BadRequest, req);
    };
    let call = token::token_request(settings, metadata, &code, &login.verifier, &redirect_uri);
    Decision::ExchangeCode {
        call,
        pending: Box::new(PendingLogin {
            app: app_index,
            login,
            state_cookie: cookie_name,
            request_id: req.request_id.to_string(),
            format: req.format(),
        }),
    }
}

fn logout(settings: &OidcSettings, req: &RequestView<'_>, provider: Provider<'_>) -> Decision {
    let clear = (
        "set-cookie".to_string(),
        session::clear_cookie(&settings.cookie, &settings.cookie.name),
    );
    let after = settings.post_logout_redirect_uri.as_ref().and_then(|u| {
        if u.starts_with('/') {
            login::external_origin(settings, req.host, req.header("x-forwarded-proto"))
                .map(|o| format!("{o}{u}"))
        } else {
            Some(u.clone())
        }
    });
    let response = match provider
        .metadata
        .and_then(|m| m.end_session_endpoint.as_ref())
    {
        Some(end) => {
            let mut params = vec![("client_id", settings.client_id.as_str())];
            if let Some(a) = &after {
                params.push(("post_logout_redirect_uri", a));
            }
            let mut r = Response::redirect(&end.with_query(&params));
            r.headers.push(clear);
            r
        }
        None if after.is_some() => {
            let mut r = Response::redirect(after.as_deref().unwrap_or("/"));
            r.headers.push(clear);
            r
        }
        None => {
            let json = req.format() == Format::Json;
            Response {
                status: 200,
                headers: vec![
                    clear,
                    ("cache-control".into(), "no-store".into()),
                    (
                        "content-type".into(),
                        if json {
                            "application/json"
                        } else {
                            "text/html; charset=utf-8"
                        }
                        .into(),
                    ),
                ],
                body: if json {
                    br#"{"signed_out":true}"#.to_vec()
                } else {
                    b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Signed out</title></head>\
                      <body><h1>You are signed out.</h1></body></html>\n"
                        .to_vec()
                },
            }
        }
    };
    Decision::Respond {
        response,
        refetch_keys: false,
    }
}

/// The outcome of a token exchange.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginOutcome {
    /// Send this response (a `302` with the session cookie, or a denial).
    Respond(Response),
    /// The ID token names a key the JWKS lacks: refetch the keys (if the rate
    /// limit allows) and call [`finish_login`] again; otherwise call
    /// [`finish_login_denial`] with [`Denial::UnknownKey`].
    UnknownKey(Option<String>),
}

/// A denial for a pending login (timeout, unknown key after refetch, …).
/// The login-state cookie is cleared as well.
pub fn finish_login_denial(
    config: &PreauthConfig,
    pending: &PendingLogin,
    denial: Denial,
) -> Response {
    let mut r = Response::from_denial(denial.render_as(&pending.request_id, pending.format));
    if let Some(settings) = config.apps.get(pending.app).and_then(|a| a.oidc.as_ref()) {
        r.headers.push((
            "set-cookie".into(),
            session::clear_cookie(&settings.cookie, &pending.state_cookie),
        ));
    }
    r
}

/// Finishes a callback with the token endpoint's answer (`status`, `body`).
/// `status` is `None` when the call failed without an HTTP answer
/// (reset or timeout: the glue maps a timeout to [`Denial::TokenExchangeTimeout`]
/// via [`finish_login_denial`] instead).
pub fn finish_login(
    config: &PreauthConfig,
    pending: &PendingLogin,
    status: Option<u16>,
    body: &[u8],
    keys: Option<&KeySet>,
    now: u64,
    random: &mut dyn FnMut(&mut [u8]),
) -> LoginOutcome {
    let fail = |d: Denial| LoginOutcome::Respond(finish_login_denial(config, pending, d));
    let Some((app, settings)) = config
        .apps
        .get(pending.app)
        .and_then(|a| a.oidc.as_ref().map(|o| (a, o)))
    else {
        return fail(Denial::TokenExchangeFailed);
    };
    let Some(status) = status else {
        return fail(Denial::TokenExchangeFailed);
    };
    let response = match token::parse_token_response(status, body) {
        Ok(r) => r,
        Err(_) => return fail(Denial::TokenExchangeFailed),
    };
    let Some(keys) = keys else {
        return LoginOutcome::UnknownKey(None);
    };
    let checks = TokenChecks {
        issuer: &settings.issuer,
        audience: &settings.client_id,
        authorized_party: Some(&settings.client_id),
        nonce: Some(&pending.login.nonce),
        algorithms: &settings.algorithms,
        skew_secs: settings.skew_secs,
        now,
    };
    let validated = match token::validate_token(&response.id_token, keys, &checks) {
        Ok(v) => v,
        Err(TokenError::UnknownKey(kid)) => return LoginOutcome::UnknownKey(kid),
        Err(e) => return fail(e.denial()),
    };
    let identity = session::identity_from_token(settings, &validated, now);
    if identity.exp <= now {
        return fail(Denial::TokenExpired);
    }
    let mut nonce = [0u8; SEAL_RANDOM_LEN];
    random(&mut nonce);
    let sealed = match session::seal_session(&app.id, settings, &identity, nonce) {
        Ok(v) => v,
        Err(e) => {
            return fail(Denial::explained(
                Code::SessionTooLarge,
                format!("The session cannot be stored in a cookie ({e})."),
            ))
        }
    };
    let max_age = settings
        .cookie
        .persistent
        .then(|| identity.exp.saturating_sub(now));
    let mut r = Response::redirect(redirect::or_root(Some(&pending.login.return_to)));
    r.headers.push((
        "set-cookie".into(),
        session::set_cookie(&settings.cookie, &settings.cookie.name, &sealed, max_age),
    ));
    r.headers.push((
        "set-cookie".into(),
        session::clear_cookie(&settings.cookie, &pending.state_cookie),
    ));
    LoginOutcome::Respond(r)
}

#[cfg(test)]
mod tests;
