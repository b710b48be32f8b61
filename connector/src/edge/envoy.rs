//! The listeners Envoy's upstream traffic arrives on (the Unix socket, mutual TLS,
//! or plain h2c TCP asked for by name), and the forwarding of each request down a
//! tunnel of the app's group.
//!
//! Retries: a request that never left the edge is retried on another tunnel; a
//! bodiless idempotent request whose tunnel failed mid-way, and a bodiless request
//! that the connector could not deliver to the backend (`backend_unreachable`: the
//! app never saw it), are retried on another connector. Up to 3 tries. Every
//! outcome is reported to the pool's outlier ejection.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{accept_loop, EdgeError, EdgeState};
use crate::body::{boxed, empty, BoxBody, OnDrop, Tracked};
use crate::denial::{Code, Denial, IntoResponse};
use crate::forwarding;
use crate::pki::{self, EdgeCa};
use crate::shutdown::Shutdown;

/// The listeners Envoy's upstream traffic may arrive on.
pub(super) struct EnvoyListeners {
    pub unix: Option<tokio::net::UnixListener>,
    pub mtls: Option<(TcpListener, TlsAcceptor)>,
    pub insecure: Option<TcpListener>,
}

/// Spawns the accept loops of Envoy's listeners into `tasks`.
pub(super) fn spawn_listeners(
    tasks: &mut JoinSet<()>,
    state: &Arc<EdgeState>,
    envoy: EnvoyListeners,
    graceful: &Arc<hyper_util::server::graceful::GracefulShutdown>,
    shutdown: &Shutdown,
) {
    if let Some(l) = envoy.insecure {
        tasks.spawn(accept_loop(l, shutdown.clone(), {
            let state = state.clone();
            let graceful = graceful.clone();
            move |tcp, peer| {
                let trusted = state.is_trusted(peer.ip());
                serve_envoy(state.clone(), tcp, peer.ip(), trusted, graceful.watcher())
            }
        }));
    }
    if let Some((l, tls)) = envoy.mtls {
        tasks.spawn(accept_loop(l, shutdown.clone(), {
            let state = state.clone();
            let graceful = graceful.clone();
            move |tcp, peer| {
                let state = state.clone();
                let tls = tls.clone();
                let watcher = graceful.watcher();
                async move {
                    let handshake = state.limits.handshake_timeout;
                    match tokio::time::timeout(handshake, tls.accept(tcp)).await {
                        // The client certificate chained to the Envoy client CA: this is Envoy.
                        Ok(Ok(stream)) => {
                            serve_envoy(state, stream, peer.ip(), true, watcher).await
                        }
                        Ok(Err(e)) => {
                            warn!(%peer, "Envoy listener refused a client at TLS: {e}");
                            state.metrics.error("envoy_client_certificate_refused");
                        }
                        Err(_) => state.metrics.limited("handshake_timeout"),
                    }
                }
            }
        }));
    }
    if let Some(l) = envoy.unix {
        let state = state.clone();
        let graceful = graceful.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = l.accept() => match accepted {
                        // Only processes the socket's file mode admits can connect: Envoy.
                        Ok((io, _)) => {
                            tokio::spawn(serve_envoy(
                                state.clone(),
                                io,
                                IpAddr::from([127, 0, 0, 1]),
                                true,
                                graceful.watcher(),
                            ));
                        }
                        Err(e) => {
                            warn!("accept on the Envoy socket: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
    }
}

/// Binds the Envoy socket with `mode`, replacing a stale socket file (never another file).
pub(super) fn bind_unix(
    path: &std::path::Path,
    mode: u32,
) -> Result<tokio::net::UnixListener, EdgeError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let err = |source: std::io::Error| EdgeError::BindUnix {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Bind, then narrow the mode before anything can be accepted.
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// The TLS acceptor of the mutual-TLS Envoy listener. Its client CA must not be
/// the connector CA (nor contain it): a connector certificate never passes.
pub(super) fn mtls_acceptor(
    files: &crate::config::EnvoyMtls,
    connector_ca: &EdgeCa,
) -> Result<TlsAcceptor, EdgeError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| EdgeError::Tls(format!("{}: {e}", p.display())))
    };
    let chain = pki::parse_certs_pem(&read(&files.cert_file)?)
        .map_err(|e| EdgeError::Tls(format!("envoy_mtls.cert_file: {e}")))?;
    let key = pki::parse_key_pem(&read(&files.key_file)?)
        .map_err(|_| EdgeError::Tls("envoy_mtls.key_file: no private key".into()))?;
    let cas = pki::parse_certs_pem(&read(&files.client_ca_file)?)
        .map_err(|e| EdgeError::Tls(format!("envoy_mtls.client_ca_file: {e}")))?;
    if cas.is_empty() {
        return Err(EdgeError::Tls(
            "envoy_mtls.client_ca_file: no certificate".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for c in cas {
        if c.as_ref() == connector_ca.cert_der.as_ref() {
            return Err(EdgeError::Tls(
                "envoy_mtls.client_ca_file holds the connector CA: connector certificates \
                 would pass as Envoy; use a CA of its own for Envoy's client certificate"
                    .into(),
            ));
        }
        roots.add(c).map_err(|e| EdgeError::Tls(e.to_string()))?;
    }
    let provider = pki::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| EdgeError::Tls(format!("envoy_mtls: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Serves Envoy's HTTP/1.1 or HTTP/2 on one connection.
async fn serve_envoy<I>(
    state: Arc<EdgeState>,
    io: I,
    peer: IpAddr,
    trusted: bool,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = state.max_request_headers;
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(forward(state, peer, trusted, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size((limit as usize).max(8192) + 16 * 1024);
    builder
        .http2()
        .max_concurrent_streams(1024)
        .max_header_list_size(limit);
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    let _ = watcher.watch(conn).await;
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A gateway error: counts towards ejecting the connector.
fn gateway_error(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The connector could not reach the backend: the app never saw the request.
fn undelivered(resp: &Response<Incoming>) -> bool {
    resp.status() == StatusCode::BAD_GATEWAY
        && resp
            .headers()
            .get(crate::ERROR_CODE_HEADER)
            .is_some_and(|v| v == "backend_unreachable")
}

/// Forwards one request from Envoy down a tunnel.
async fn forward(
    state: Arc<EdgeState>,
    peer: IpAddr,
    trusted: bool,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let dynamic = state.dynamic();
    let rid = forwarding::request_id(req.headers(), trusted);
    state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
    let deny = |state: &EdgeState, headers: &HeaderMap, d: Denial| {
        state.metrics.error(d.code());
        d.into_response(headers, &rid)
    };
    let app_name = req
        .headers()
        .get(&dynamic.app_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(app_name) = app_name else {
        let d = Denial::explained(
            Code::AppUnknown,
            format!("No `{}` header names the app.", dynamic.app_header),
        );
        return deny(&state, req.headers(), d);
    };
    let Some(app) = dynamic.apps.get(&app_name) else {
        let d = Denial::explained(Code::AppUnknown, format!("No published app `{app_name}`."));
        return deny(&state, req.headers(), d);
    };
    let (mut parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| app_name.clone());
    let client_headers = parts.headers.clone();
    let mut headers = std::mem::take(&mut parts.headers);
    forwarding::strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    forwarding::strip_proxy_cookies(&mut headers, &dynamic.proxy_cookies);
    let rules = dynamic.assertions.get(&app_name);
    let verdict = crate::identity::check(&state.verified, &app_name, rules, &client_headers).await;
    state.metrics.assertion(verdict.outcome());
    crate::identity::strip_identity(&mut headers, &dynamic.identity_headers);
    match (&verdict, rules) {
        (crate::identity::Verdict::Valid { claims, token, .. }, Some(rules)) => {
            crate::identity::set_identity(&mut headers, rules, claims, token);
        }
        (crate::identity::Verdict::Anonymous(why), Some(rules)) if rules.required() => {
            debug!(app = %app_name, why, "request without a valid assertion refused");
            let d = Denial::explained(
                Code::AssertionRequired,
                format!(
                    "App `{app_name}` takes only requests with a valid identity assertion ({why})."
                ),
            );
            return deny(&state, &client_headers, d);
        }
        _ => {}
    }
    headers.remove(&dynamic.app_header);
    if let Ok(v) = HeaderValue::from_str(&app_name) {
        headers.insert(crate::DEFAULT_APP_HEADER, v);
    }
    forwarding::edge_forwarded(&mut headers, peer, trusted, "http", Some(&host));
    forwarding::set_request_id(&mut headers, &rid);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let uri: Uri = match format!("http://{host}{pq}").parse() {
        Ok(u) => u,
        Err(_) => {
            let d = Denial::explained(Code::BadRequest, "The request's Host is not valid.");
            return deny(&state, &client_headers, d);
        }
    };
    let method = parts.method.clone();
    let bodiless = http_body::Body::is_end_stream(&body);
    let mut body: Option<BoxBody> =
        Some(Tracked::new(boxed(body), state.metrics.bytes_up_total.clone(), None).boxed_unsync());
    let mut tried = Vec::new();
    let mut avoid: Vec<String> = Vec::new();
    let group = app.group.clone();
    let outlier = &dynamic.outlier;
    let mut last_failure: Option<Response<BoxBody>> = None;
    let wait_until = tokio::time::Instant::now() + dynamic.connector_wait;
    for attempt in 0..3 {
        if state.draining.load(Ordering::Relaxed) {
            break;
        }
        let picked = match state.pool.pick(&group, &tried, &avoid) {
            Some(p) => Some(p),
            None => {
                state
                    .pool
                    .pick_or_wait(&group, &tried, &avoid, wait_until)
                    .await
            }
        };
        let Some(picked) = picked else {
            break;
        };
        tried.push(picked.id);
        let this_body = match body.take() {
            Some(b) => b,
            None if bodiless => empty(),
            None => break,
        };
        let mut up = Request::new(this_body);
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers.clone();
        picked.inflight.fetch_add(1, Ordering::Relaxed);
        state.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
        let guard = {
            let inflight = picked.inflight.clone();
            let metrics = state.metrics.clone();
            OnDrop::new(move || {
                inflight.fetch_sub(1, Ordering::Relaxed);
                metrics.streams_active.fetch_sub(1, Ordering::Relaxed);
            })
        };
        let mut sender = picked.sender;
        match sender.try_send_request(up).await {
            Ok(resp) => {
                picked.served.fetch_add(1, Ordering::Relaxed);
                let failed = gateway_error(resp.status());
                report(&state, outlier, &picked.connector, !failed);
                if failed && bodiless && undelivered(&resp) && attempt < 2 {
                    debug!(attempt, connector_id = %picked.connector, "backend unreachable from this connector; trying another");
                    avoid.push(picked.connector.clone());
                    let (parts, body) = resp.into_parts();
                    last_failure = Some(Response::from_parts(
                        parts,
                        Tracked::new(boxed(body), counter(&state), Some(Box::new(guard)))
                            .boxed_unsync(),
                    ));
                    continue;
                }
                let (parts, body) = resp.into_parts();
                let body = Tracked::new(boxed(body), counter(&state), Some(Box::new(guard)));
                return Response::from_parts(parts, body.boxed_unsync());
            }
            Err(mut e) => {
                drop(guard);
                report(&state, outlier, &picked.connector, false);
                let returned = e.take_message();
                debug!(
                    attempt,
                    tunnel = picked.id,
                    "tunnel request failed: {}",
                    e.error()
                );
                if let Some(r) = returned {
                    // Not sent: the body can be reused as is.
                    body = Some(r.into_body());
                    continue;
                }
                if bodiless && idempotent(&method) {
                    avoid.push(picked.connector.clone());
                    continue;
                }
                let d = Denial::explained(
                    Code::ConnectorUnavailable,
                    format!(
                        "The tunnel to the connector of app `{app_name}` failed: {}.",
                        e.error()
                    ),
                );
                return deny(&state, &client_headers, d);
            }
        }
    }
    if let Some(r) = last_failure {
        state.metrics.error("backend_unreachable");
        return r;
    }
    let d = Denial::explained(
        Code::ConnectorUnavailable,
        format!("No connector of group `{group}` is connected for app `{app_name}`."),
    );
    deny(&state, &client_headers, d)
}

fn report(state: &EdgeState, outlier: &crate::config::OutlierConfig, connector: &str, ok: bool) {
    if state
        .pool
        .report(connector, ok, outlier, &state.metrics.connectors_ejected)
    {
        state
            .metrics
            .ejections_total
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn counter(state: &EdgeState) -> Arc<AtomicU64> {
    state.metrics.bytes_down_total.clone()
}
