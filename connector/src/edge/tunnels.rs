//! The tunnel listener (mutual TLS): ALPN `portcullis-tunnel/1` opens a tunnel
//! (the edge is the HTTP/2 client), ALPN `http/1.1` is the connectors' API
//! (`GET /v1/config`, `POST /v1/renew`).
//!
//! A connection counts as unauthenticated until its TLS handshake is done (a
//! per-source and a global cap, a handshake time-out); then as its connector's
//! (a per-connector and a global cap for tunnels). A revoked connector's tunnels
//! are refused, and dropped at once when the revocation becomes known; its API
//! calls are answered 403 `connector_revoked`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{read_json, EdgeState};
use crate::body::{BoxBody, OnDrop};
use crate::denial::{api_error, json_response, Code};
use crate::limits::Refused;
use crate::liveness::Watched;
use crate::pki::ConnectorIdentity;
use crate::registry::{unix_now, ConnectorRecord};
use crate::shutdown::Shutdown;
use crate::wire::{ConnectorView, RenewRequest, RenewResponse};
use crate::TUNNEL_ALPN;

/// Counts a connection as unauthenticated while alive (gauge).
pub(super) fn pending_gauge(state: &Arc<EdgeState>) -> impl Drop + Send + 'static {
    state
        .metrics
        .pending_connections
        .fetch_add(1, Ordering::Relaxed);
    let metrics = state.metrics.clone();
    OnDrop::new(move || {
        metrics.pending_connections.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Takes an unauthenticated place for `peer`, counting refusals.
pub(super) fn admit_pending(
    state: &Arc<EdgeState>,
    peer: SocketAddr,
) -> Option<crate::limits::Permit<std::net::IpAddr>> {
    let limiter = if state.limits.is_known_source(peer.ip()) {
        &state.limits.known_pending
    } else {
        &state.limits.pending
    };
    match limiter.try_acquire(peer.ip()) {
        Ok(p) => Some(p),
        Err(why) => {
            let limit = match why {
                Refused::Global => "pending_global",
                Refused::PerKey => "pending_per_source",
            };
            debug!(%peer, limit, "connection refused by a limit");
            state.metrics.limited(limit);
            None
        }
    }
}

/// One connection on the tunnel port.
pub(super) async fn connection(
    state: Arc<EdgeState>,
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Some(pending) = admit_pending(&state, peer) else {
        return;
    };
    let gauge = pending_gauge(&state);
    let stream = match tokio::time::timeout(state.limits.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%peer, "connector refused at TLS: {e}");
            state.metrics.error("client_certificate_refused");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake not finished in time");
            state.metrics.limited("handshake_timeout");
            return;
        }
    };
    drop((pending, gauge));
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(ConnectorIdentity::from_cert);
    let identity = match identity {
        Some(Ok(i)) => i,
        _ => {
            warn!(%peer, "connector certificate unreadable");
            state.metrics.error("client_certificate_refused");
            return;
        }
    };
    let tunnel = alpn.as_deref() == Some(TUNNEL_ALPN);
    if tunnel && state.registry.is_revoked(&identity.id) {
        warn!(%peer, connector_id = %identity.id, "revoked connector refused");
        state.metrics.error("connector_revoked");
        return;
    }
    if tunnel && state.draining.load(Ordering::Relaxed) {
        return;
    }
    state.limits.learn_source(peer.ip());
    let _permit = match state.limits.tunnels.try_acquire(identity.id.clone()) {
        Ok(p) => p,
        Err(why) => {
            let limit = match why {
                Refused::Global => "tunnels_global",
                Refused::PerKey => "tunnels_per_connector",
            };
            warn!(%peer, connector_id = %identity.id, limit, "tunnel refused by a limit");
            state.metrics.limited(limit);
            return;
        }
    };
    {
        let state = state.clone();
        let id = identity.id.clone();
        tokio::spawn(async move {
            if let Err(e) = state.registry.seen(&id, &peer.ip().to_string()).await {
                debug!(connector_id = %id, "registry: {e}");
            }
        });
    }
    if tunnel {
        drop(watcher);
        serve_tunnel(&state, stream, identity, peer).await;
    } else {
        let header_timeout = state.limits.header_read_timeout;
        let svc = service_fn(move |req| {
            let state = state.clone();
            let identity = identity.clone();
            async move { Ok::<_, Infallible>(connector_api(state, identity, req).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let _ = watcher.watch(conn).await;
    }
}

async fn serve_tunnel(
    state: &Arc<EdgeState>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    identity: ConnectorIdentity,
    peer: SocketAddr,
) {
    let dynamic = state.dynamic();
    let (watched, liveness) = Watched::new(stream);
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(dynamic.keepalive)
        .keep_alive_timeout(dynamic.ping_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_send_buf_size(256 * 1024)
        .max_frame_size(64 * 1024)
        .max_header_list_size(crate::TUNNEL_MAX_HEADER_LIST)
        .handshake::<_, BoxBody>(TokioIo::new(watched));
    let (sender, conn) = match tokio::time::timeout(state.limits.handshake_timeout, handshake).await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(%peer, "tunnel HTTP/2 handshake: {e}");
            state.metrics.error("tunnel_handshake");
            return;
        }
        Err(_) => {
            warn!(%peer, "tunnel HTTP/2 handshake not finished in time");
            state.metrics.error("tunnel_handshake");
            return;
        }
    };
    let registration = state.pool.insert(identity.clone(), sender);
    let id = registration.id;
    // Revoked between the check and now: drop it.
    if state.registry.is_revoked(&identity.id) {
        state.pool.kill_connector(&identity.id);
    }
    info!(tunnel = id, connector_id = %identity.id, group = %identity.group, %peer, "tunnel up");
    state.metrics.tunnels_up.fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .tunnel_connects_total
        .fetch_add(1, Ordering::Relaxed);
    // Keepalive pings make a live connector answer within interval + time-out; a
    // silent one is dead even if the HTTP/2 library's own bookkeeping misses it.
    let silence_limit = crate::liveness::silence_limit(dynamic.keepalive, dynamic.ping_timeout);
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(conn);
    let dead = loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    debug!(tunnel = id, "tunnel ended: {}", crate::error_chain(&e));
                }
                break false;
            }
            _ = registration.kill.killed() => {
                debug!(tunnel = id, "tunnel dropped");
                break true;
            }
            _ = watchdog.tick() => {
                let silent = liveness.silent_for();
                if silent > silence_limit {
                    warn!(tunnel = id, silent_ms = silent.as_millis() as u64, "no data from the connector; dropping the tunnel");
                    state.metrics.error("tunnel_dead_peer");
                    break true;
                }
            }
        }
    };
    if dead || registration.kill.is_killed() {
        // Dropped (revoked, dead, or the drain is over): HTTP/2's connection task
        // would keep the connection open for the streams still on it; cut it, so
        // they end now too.
        liveness.cut();
    }
    drop(registration);
    state.metrics.tunnels_up.fetch_sub(1, Ordering::Relaxed);
    info!(tunnel = id, connector_id = %identity.id, "tunnel down");
}

/// Drops the tunnels of every connector revoked from now on (here or on another
/// replica, learnt from the store's feed).
pub(super) async fn drop_revoked(state: Arc<EdgeState>, shutdown: Shutdown) {
    let mut revoked = state.registry.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            got = revoked.recv() => match got {
                Ok(id) => {
                    state.metrics.revocations_total.fetch_add(1, Ordering::Relaxed);
                    state.pool.kill_connector(&id);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: check every tunnel against the set.
                    for t in state.pool.list() {
                        if state.registry.is_revoked(&t.connector_id) {
                            state.pool.kill_connector(&t.connector_id);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

fn revoked_answer(state: &EdgeState, id: &str) -> Response<BoxBody> {
    state.metrics.error("connector_revoked");
    api_error(
        StatusCode::FORBIDDEN,
        Code::ConnectorRevoked,
        &format!("connector {id} was revoked; register a new one"),
    )
}

async fn connector_api(
    state: Arc<EdgeState>,
    identity: ConnectorIdentity,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    if state.registry.is_revoked(&identity.id) {
        return revoked_answer(&state, &identity.id);
    }
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/v1/config") => {
            let dynamic = state.dynamic();
            let view = ConnectorView {
                connector_id: identity.id.clone(),
                group: identity.group.clone(),
                refresh_seconds: dynamic.config_refresh.as_secs(),
                apps: dynamic
                    .apps
                    .values()
                    .filter(|a| a.group == identity.group)
                    .cloned()
                    .collect(),
                proxy_cookies: dynamic.proxy_cookies_config.clone(),
            };
            state
                .metrics
                .config_pulls_total
                .fetch_add(1, Ordering::Relaxed);
            debug!(connector_id = %identity.id, apps = view.apps.len(), "configuration pulled");
            json_response(
                StatusCode::OK,
                &serde_json::to_value(view).unwrap_or_default(),
            )
        }
        (Method::POST, "/v1/renew") => renew(state, identity, req).await,
        _ => api_error(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "GET /v1/config or POST /v1/renew",
        ),
    }
}

async fn renew(
    state: Arc<EdgeState>,
    identity: ConnectorIdentity,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let body: RenewRequest = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let unavailable = |e: crate::store::StoreError| {
        warn!(connector_id = %identity.id, "renewal: store: {e}");
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::StoreUnavailable,
            "the edge cannot reach its shared store; try again later",
        )
    };
    // Fail closed: the store says whether this connector is still allowed.
    match state.registry.is_revoked_now(&identity.id).await {
        Ok(true) => return revoked_answer(&state, &identity.id),
        Ok(false) => {}
        Err(e) => return unavailable(e),
    }
    let dynamic = state.dynamic();
    let now = unix_now();
    let record = match state.registry.record(&identity.id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Issued before the registry existed: adopt it, its lifetime counted from now.
            let r = ConnectorRecord {
                id: identity.id.clone(),
                group: identity.group.clone(),
                serial: identity.serial.clone(),
                registered_at: now,
                registered_by: "adopted".into(),
                identity_expires_at: now + dynamic.max_lifetime.as_secs(),
            };
            info!(connector_id = %identity.id, "connector adopted into the registry at renewal");
            r
        }
        Err(e) => return unavailable(e),
    };
    let wanted = now + u64::from(dynamic.client_cert_days) * 86_400;
    let not_after = wanted.min(record.identity_expires_at);
    if not_after <= now + 3600 {
        state.metrics.error("identity_expired");
        return api_error(
            StatusCode::FORBIDDEN,
            Code::IdentityExpired,
            &format!(
                "connector {} reached the end of its identity (connector_max_lifetime_days); \
                 register it again",
                identity.id
            ),
        );
    }
    let cert = match state.ca.sign_connector_csr_until(
        &body.csr_pem,
        &identity.id,
        &identity.group,
        UNIX_EPOCH + Duration::from_secs(not_after),
        SystemTime::now(),
    ) {
        Ok(c) => c,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, Code::BadCsr, &e.to_string()),
    };
    let serial = crate::pki::parse_certs_pem(&cert)
        .ok()
        .and_then(|c| c.first().and_then(|c| ConnectorIdentity::from_cert(c).ok()))
        .map(|i| i.serial)
        .unwrap_or_default();
    let updated = ConnectorRecord { serial, ..record };
    if let Err(e) = state.registry.register(&updated).await {
        return unavailable(e);
    }
    state.metrics.renewals_total.fetch_add(1, Ordering::Relaxed);
    info!(connector_id = %identity.id, not_after, "certificate renewed");
    json_response(
        StatusCode::OK,
        &serde_json::to_value(RenewResponse {
            certificate_pem: cert,
        })
        .unwrap_or_default(),
    )
}
