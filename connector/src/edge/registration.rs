//! The registration port (HTTPS, no client certificate): `POST /v1/register`, and
//! the admin API under the same admin-token rules, `GET /v1/connectors` and
//! `POST /v1/connectors/<id>/revoke`.
//!
//! Every connection counts as unauthenticated (per-source and global caps; TLS
//! handshake and header-read time-outs). Requests are rate-limited per source and
//! handled at most `max_concurrent_registrations` at once. One admin token
//! registers at most `registrations_per_token` connectors, counted in the shared
//! store by its `jti` (or its hash) until it expires.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::tunnels::{admit_pending, pending_gauge};
use super::{read_json, EdgeState};
use crate::body::{BoxBody, OnDrop};
use crate::denial::{api_error, json_response, Code};
use crate::registry::{unix_now, ConnectorRecord};
use crate::token::{AdminClaims, TokenRefusal};
use crate::wire::{ConnectorList, RegisterRequest, RegisterResponse, RevokeRequest};

/// One connection on the registration port.
pub(super) async fn connection(
    state: Arc<EdgeState>,
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Some(_pending) = admit_pending(&state, peer) else {
        return;
    };
    let _gauge = pending_gauge(&state);
    let stream = match tokio::time::timeout(state.limits.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "registration TLS: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "registration TLS handshake not finished in time");
            state.metrics.limited("handshake_timeout");
            return;
        }
    };
    let header_timeout = state.limits.header_read_timeout;
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let _ = watcher.watch(conn).await;
}

async fn handle(
    state: Arc<EdgeState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    if !state.limits.rate.allow(peer.ip()) {
        state.metrics.limited("registration_rate");
        state.metrics.registration("rate_limited");
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited,
            "too many requests from this address; try again later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    }
    let Ok(_slot) = state.limits.registrations.clone().try_acquire_owned() else {
        state.metrics.limited("registration_concurrency");
        state.metrics.registration("registration_busy");
        let mut r = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::RegistrationBusy,
            "the edge is handling too many registrations; try again shortly",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    state
        .metrics
        .registrations_in_flight
        .fetch_add(1, Ordering::Relaxed);
    let _in_flight = {
        let m = state.metrics.clone();
        OnDrop::new(move || {
            m.registrations_in_flight.fetch_sub(1, Ordering::Relaxed);
        })
    };
    // A request must arrive whole in time, body included.
    let limit = state.limits.header_read_timeout * 2;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let work = async {
        match (method, path.as_str()) {
            (Method::POST, "/v1/register") => register(&state, req).await,
            (Method::GET, "/v1/connectors") => list(&state, &req).await,
            (Method::POST, p) if p.starts_with("/v1/connectors/") && p.ends_with("/revoke") => {
                let id = p["/v1/connectors/".len()..p.len() - "/revoke".len()].to_string();
                revoke(&state, id, req).await
            }
            (_, "/v1/register" | "/v1/connectors") => api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::MethodNotAllowed,
                "POST /v1/register, GET /v1/connectors",
            ),
            _ => api_error(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                "POST /v1/register, GET /v1/connectors, POST /v1/connectors/<id>/revoke",
            ),
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => api_error(
            StatusCode::REQUEST_TIMEOUT,
            Code::RequestTimeout,
            "the request did not arrive in time",
        ),
    }
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

fn refusal_response(refusal: &TokenRefusal) -> Response<BoxBody> {
    let status = match refusal.code {
        Code::NotAdmin | Code::TenantMismatch | Code::TokenUsed => StatusCode::FORBIDDEN,
        Code::JwksUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    api_error(status, refusal.code, &refusal.message)
}

/// Checks the bearer admin token; `Err` is the answer to send.
async fn admin(
    state: &EdgeState,
    req: &Request<Incoming>,
    what: &str,
) -> Result<(String, AdminClaims), Response<BoxBody>> {
    let Some(token) = bearer(req) else {
        state.metrics.registration("token_missing");
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            Code::TokenMissing,
            "send the admin token as `Authorization: Bearer <token>`",
        ));
    };
    match state.verifier().verify(&token).await {
        Ok(a) => Ok((token, a)),
        Err(refusal) => {
            warn!(
                code = refusal.code.as_str(),
                what, "admin token refused: {}", refusal.message
            );
            state.metrics.registration(refusal.code.as_str());
            Err(refusal_response(&refusal))
        }
    }
}

fn store_unavailable(state: &EdgeState, e: crate::store::StoreError) -> Response<BoxBody> {
    warn!("shared store: {e}");
    state.metrics.error("store_unavailable");
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::StoreUnavailable,
        "the edge cannot reach its shared store; try again later",
    )
}

fn new_connector_id() -> String {
    let bytes: [u8; 8] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("c-{hex}")
}

async fn register(state: &Arc<EdgeState>, req: Request<Incoming>) -> Response<BoxBody> {
    let (token, admin) = match admin(state, &req, "registration").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let body: RegisterRequest = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let dynamic = state.dynamic();
    let group = match body.group {
        Some(g) => g,
        None => dynamic.groups.iter().next().cloned().unwrap_or_default(),
    };
    if !dynamic.groups.contains(&group) {
        state.metrics.registration("unknown_group");
        return api_error(
            StatusCode::BAD_REQUEST,
            Code::UnknownGroup,
            &format!("no connector group `{group}`"),
        );
    }
    let id = new_connector_id();
    let now = unix_now();
    let identity_end = now + dynamic.max_lifetime.as_secs();
    let cert = match state.ca.sign_connector_csr(
        &body.csr_pem,
        &id,
        &group,
        dynamic.client_cert_days,
        SystemTime::now(),
    ) {
        Ok(c) => c,
        Err(e) => {
            state.metrics.registration("bad_csr");
            return api_error(StatusCode::BAD_REQUEST, Code::BadCsr, &e.to_string());
        }
    };
    // Count the use only for a registration that would otherwise succeed.
    let quota = dynamic.admin.registrations_per_token;
    let ttl = Duration::from_secs(
        admin.expires_at.saturating_sub(now) + dynamic.admin.leeway_seconds + 60,
    );
    match state
        .registry
        .use_token(&admin.use_key(&token), ttl, quota)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            warn!(admin = %admin.subject, quota, "admin token already used up");
            state.metrics.registration("token_used");
            return api_error(
                StatusCode::FORBIDDEN,
                Code::TokenUsed,
                &format!(
                    "this admin token has registered {quota} connector(s), its limit \
                     (registrations_per_token); get a new token"
                ),
            );
        }
        Err(e) => return store_unavailable(state, e),
    }
    let serial = crate::pki::parse_certs_pem(&cert)
        .ok()
        .and_then(|c| {
            c.first()
                .and_then(|c| crate::pki::ConnectorIdentity::from_cert(c).ok())
        })
        .map(|i| i.serial)
        .unwrap_or_default();
    let record = ConnectorRecord {
        id: id.clone(),
        group: group.clone(),
        serial,
        registered_at: now,
        registered_by: admin.subject.clone(),
        identity_expires_at: identity_end,
    };
    if let Err(e) = state.registry.register(&record).await {
        return store_unavailable(state, e);
    }
    info!(connector_id = %id, %group, admin = %admin.subject, "connector registered");
    state.metrics.registration("ok");
    let resp = RegisterResponse {
        connector_id: id,
        group,
        certificate_pem: cert,
        ca_pem: state.ca.cert_pem.clone(),
        tunnel_addresses: state.advertised.clone(),
    };
    json_response(
        StatusCode::OK,
        &serde_json::to_value(resp).unwrap_or_default(),
    )
}

async fn list(state: &Arc<EdgeState>, req: &Request<Incoming>) -> Response<BoxBody> {
    if let Err(r) = admin(state, req, "connectors list").await {
        return r;
    }
    match state.registry.list().await {
        Ok(connectors) => json_response(
            StatusCode::OK,
            &serde_json::to_value(ConnectorList { connectors }).unwrap_or_default(),
        ),
        Err(e) => store_unavailable(state, e),
    }
}

fn valid_connector_id(id: &str) -> bool {
    id.len() <= 64
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn revoke(state: &Arc<EdgeState>, id: String, req: Request<Incoming>) -> Response<BoxBody> {
    let (_, admin) = match admin(state, &req, "connectors revoke").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if !valid_connector_id(&id) {
        return api_error(
            StatusCode::BAD_REQUEST,
            Code::BadRequest,
            "not a connector id",
        );
    }
    let body: RevokeRequest = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state
        .registry
        .revoke(&id, &admin.subject, body.reason)
        .await
    {
        Ok(r) => {
            let dropped = state.pool.kill_connector(&id);
            info!(connector_id = %id, admin = %admin.subject, dropped, "revocation made");
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "revoked": r, "tunnels_dropped": dropped }),
            )
        }
        Err(e) => store_unavailable(state, e),
    }
}
