//! The edge service: connector CA, registration, mutual-TLS tunnel listener, the
//! connectors' API (configuration, renewal), and the local listener that sends Envoy's
//! upstream traffic down the least-loaded live tunnel of the app's connector group.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::body::{boxed, empty, BoxBody, OnDrop, Tracked};
use crate::config::{AppSettings, EdgeConfigFile, EdgeDynamic, EdgeSettings};
use crate::denial::{api_error, json_response, Denial};
use crate::liveness::Watched;
use crate::metrics::Metrics;
use crate::pki::{self, ConnectorIdentity, EdgeCa, PkiError};
use crate::shutdown::Shutdown;
use crate::token::AdminTokenVerifier;
use crate::{API_ALPN, REQUEST_ID_HEADER, TUNNEL_ALPN};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// CA or server certificate problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The Envoy socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    BindUnix {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Registration request body (`POST /v1/register`, bearer admin token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// PEM CSR of the connector's new key.
    pub csr_pem: String,
    /// Group to join (default: the first configured group).
    #[serde(default)]
    pub group: Option<String>,
}

/// Registration answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Assigned connector id.
    pub connector_id: String,
    /// Group.
    pub group: String,
    /// Signed client certificate, PEM.
    pub certificate_pem: String,
    /// Connector CA certificate (trust anchor of the tunnel listener), PEM.
    pub ca_pem: String,
    /// Tunnel addresses to dial.
    pub tunnel_addresses: Vec<String>,
}

/// Renewal request body (`POST /v1/renew` over mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM CSR of the new key.
    pub csr_pem: String,
}

/// Renewal answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    /// New certificate, PEM.
    pub certificate_pem: String,
}

/// Configuration a connector pulls (`GET /v1/config` over mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorView {
    /// The connector's id.
    pub connector_id: String,
    /// Its group.
    pub group: String,
    /// Suggested refresh interval, seconds.
    pub refresh_seconds: u64,
    /// Apps of the group.
    pub apps: Vec<AppSettings>,
}

/// A live tunnel as tests and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Tunnel number (per edge process).
    pub id: u64,
    /// Connector id.
    pub connector_id: String,
    /// Group.
    pub group: String,
    /// Serial of the client certificate presented.
    pub cert_serial: String,
    /// Streams in flight.
    pub inflight: usize,
    /// Streams served since it opened.
    pub served: u64,
}

struct Tunnel {
    identity: ConnectorIdentity,
    sender: http2::SendRequest<BoxBody>,
    inflight: Arc<AtomicUsize>,
    served: Arc<AtomicU64>,
}

struct EdgeState {
    dynamic: RwLock<Arc<EdgeDynamic>>,
    verifier: RwLock<Arc<AdminTokenVerifier>>,
    ca: EdgeCa,
    tunnels: Mutex<BTreeMap<u64, Tunnel>>,
    next_tunnel: AtomicU64,
    metrics: Arc<Metrics>,
    advertised: Vec<String>,
    verified: crate::identity::VerifiedCache,
    max_request_headers: u32,
}

impl EdgeState {
    fn dynamic(&self) -> Arc<EdgeDynamic> {
        match self.dynamic.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn verifier(&self) -> Arc<AdminTokenVerifier> {
        match self.verifier.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Least-loaded live tunnel of `group`, not in `exclude`.
    #[allow(clippy::type_complexity)]
    fn pick(
        &self,
        group: &str,
        exclude: &[u64],
    ) -> Option<(
        u64,
        http2::SendRequest<BoxBody>,
        Arc<AtomicUsize>,
        Arc<AtomicU64>,
    )> {
        let mut tunnels = self.tunnels.lock().ok()?;
        tunnels.retain(|_, t| !t.sender.is_closed());
        tunnels
            .iter()
            .filter(|(id, t)| {
                t.identity.group == group && !exclude.contains(id) && t.sender.is_ready()
            })
            .min_by_key(|(_, t)| t.inflight.load(Ordering::Relaxed))
            .map(|(id, t)| (*id, t.sender.clone(), t.inflight.clone(), t.served.clone()))
    }
}

/// A running edge: bound addresses, CA fingerprint, reload and inspection.
pub struct EdgeHandle {
    /// Registration (HTTPS) address.
    pub registration_addr: SocketAddr,
    /// Tunnel (mutual TLS) address.
    pub tunnel_addr: SocketAddr,
    /// Unix socket for Envoy (HTTP/1.1 and h2c), if configured.
    pub envoy_socket: Option<std::path::PathBuf>,
    /// Mutual-TLS address for Envoy, if configured.
    pub envoy_mtls_addr: Option<SocketAddr>,
    /// Plain h2c TCP address for Envoy, if asked for by name (`insecure_envoy_h2c_tcp`).
    pub insecure_tcp_addr: Option<SocketAddr>,
    /// Metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Connector CA certificate, PEM.
    pub ca_pem: String,
    /// SHA-256 fingerprint (hex) of the CA certificate.
    pub ca_fingerprint: String,
    state: Arc<EdgeState>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EdgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeHandle")
            .field("registration_addr", &self.registration_addr)
            .field("tunnel_addr", &self.tunnel_addr)
            .field("envoy_socket", &self.envoy_socket)
            .field("envoy_mtls_addr", &self.envoy_mtls_addr)
            .field("insecure_tcp_addr", &self.insecure_tcp_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl EdgeHandle {
    /// Applies a new configuration file's apps, groups, token rules and timings; listen
    /// addresses and the state directory need a restart. Tunnels stay up.
    pub fn reload(
        &self,
        file: &EdgeConfigFile,
    ) -> Result<(), portcullis_core::config::ConfigError> {
        let settings = file.validate()?;
        let verifier = AdminTokenVerifier::new(settings.dynamic.admin.clone());
        if let Ok(mut d) = self.state.dynamic.write() {
            *d = Arc::new(settings.dynamic);
        }
        if let Ok(mut v) = self.state.verifier.write() {
            *v = verifier;
        }
        info!("configuration reloaded");
        Ok(())
    }

    /// The live tunnels.
    pub fn tunnels(&self) -> Vec<TunnelInfo> {
        let Ok(tunnels) = self.state.tunnels.lock() else {
            return Vec::new();
        };
        tunnels
            .iter()
            .filter(|(_, t)| !t.sender.is_closed())
            .map(|(id, t)| TunnelInfo {
                id: *id,
                connector_id: t.identity.id.clone(),
                group: t.identity.group.clone(),
                cert_serial: t.identity.serial.clone(),
                inflight: t.inflight.load(Ordering::Relaxed),
                served: t.served.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The edge's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Signs a connector certificate with arbitrary validity (for tests of refusals).
    pub fn ca(&self) -> &EdgeCa {
        &self.state.ca
    }

    /// The local HTTP address of Envoy's listener for tests: the insecure TCP one.
    pub fn local_url(&self) -> Option<String> {
        self.insecure_tcp_addr.map(|a| format!("http://{a}"))
    }

    /// Waits until the edge has drained and stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EdgeError::Bind { addr, source })
}

fn local(l: &TcpListener) -> Result<SocketAddr, EdgeError> {
    l.local_addr().map_err(|source| EdgeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Starts the edge: loads or creates the CA, binds every listener, and returns at once.
pub async fn start(settings: EdgeSettings, shutdown: Shutdown) -> Result<EdgeHandle, EdgeError> {
    let ca = EdgeCa::load_or_create(&settings.state_dir)?;
    let (chain, key) = ca.issue_server_cert(&settings.server_names)?;
    let provider = pki::provider();

    let mut reg_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    reg_tls.alpn_protocols = vec![API_ALPN.to_vec()];

    let mut roots = RootCertStore::empty();
    roots
        .add(ca.cert_der.clone())
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| EdgeError::Tls(e.to_string()))?;
    let mut tunnel_tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
    tunnel_tls.alpn_protocols = vec![TUNNEL_ALPN.to_vec(), API_ALPN.to_vec()];

    let reg_listener = bind(settings.registration_listen).await?;
    let tunnel_listener = bind(settings.tunnel_listen).await?;
    let envoy_unix = match &settings.envoy_socket {
        Some((path, mode)) => Some(bind_unix(path, *mode)?),
        None => None,
    };
    let envoy_mtls = match &settings.envoy_mtls {
        Some((addr, files)) => Some((bind(*addr).await?, envoy_mtls_acceptor(files, &ca)?)),
        None => None,
    };
    let insecure_listener = match settings.insecure_envoy_h2c_tcp {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let metrics_listener = match settings.metrics_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let registration_addr = local(&reg_listener)?;
    let tunnel_addr = local(&tunnel_listener)?;
    let envoy_mtls_addr = match &envoy_mtls {
        Some((l, _)) => Some(local(l)?),
        None => None,
    };
    let insecure_tcp_addr = match &insecure_listener {
        Some(l) => Some(local(l)?),
        None => None,
    };
    if let Some(a) = insecure_tcp_addr {
        warn!(
            addr = %a,
            "INSECURE: Envoy's listener is plain h2c on TCP (insecure_envoy_h2c_tcp): any process \
             that reaches it can send requests as Envoy; use envoy_socket or envoy_mtls"
        );
    }
    let envoy_socket = settings.envoy_socket.as_ref().map(|(p, _)| p.clone());
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(local(l)?),
        None => None,
    };
    let advertised = if settings.advertised_tunnel_addresses.is_empty() {
        vec![tunnel_addr.to_string()]
    } else {
        settings.advertised_tunnel_addresses.clone()
    };
    let verifier = AdminTokenVerifier::new(settings.dynamic.admin.clone());
    let state = Arc::new(EdgeState {
        dynamic: RwLock::new(Arc::new(settings.dynamic)),
        verifier: RwLock::new(verifier),
        ca,
        tunnels: Mutex::new(BTreeMap::new()),
        next_tunnel: AtomicU64::new(1),
        metrics: Arc::new(Metrics::new("portcullis_edge")),
        advertised,
        verified: crate::identity::VerifiedCache::default(),
        max_request_headers: settings.max_request_headers,
    });
    let ca_pem = state.ca.cert_pem.clone();
    let ca_fingerprint = state.ca.fingerprint();
    info!(%registration_addr, %tunnel_addr, ?envoy_socket, ?envoy_mtls_addr, ?insecure_tcp_addr, ?metrics_addr, ca_fingerprint = %ca_fingerprint, "edge listening");

    let task = tokio::spawn(serve_all(
        state.clone(),
        reg_listener,
        TlsAcceptor::from(Arc::new(reg_tls)),
        tunnel_listener,
        TlsAcceptor::from(Arc::new(tunnel_tls)),
        EnvoyListeners {
            unix: envoy_unix,
            mtls: envoy_mtls,
            insecure: insecure_listener,
        },
        metrics_listener,
        shutdown,
    ));
    Ok(EdgeHandle {
        registration_addr,
        tunnel_addr,
        envoy_socket,
        envoy_mtls_addr,
        insecure_tcp_addr,
        metrics_addr,
        ca_pem,
        ca_fingerprint,
        state,
        task,
    })
}

/// Starts the edge and runs it until `shutdown` fires and requests have drained.
pub async fn run(settings: EdgeSettings, shutdown: Shutdown) -> Result<(), EdgeError> {
    start(settings, shutdown).await?.wait().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_all(
    state: Arc<EdgeState>,
    reg_listener: TcpListener,
    reg_tls: TlsAcceptor,
    tunnel_listener: TcpListener,
    tunnel_tls: TlsAcceptor,
    envoy: EnvoyListeners,
    metrics_listener: Option<TcpListener>,
    shutdown: Shutdown,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = JoinSet::new();
    tasks.spawn(accept_loop(reg_listener, shutdown.clone(), {
        let state = state.clone();
        let graceful = graceful.clone();
        move |tcp, peer| {
            let state = state.clone();
            let tls = reg_tls.clone();
            let watcher = graceful.watcher();
            async move {
                let Ok(stream) = tls
                    .accept(tcp)
                    .await
                    .map_err(|e| debug!(%peer, "registration TLS: {e}"))
                else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(registration(state, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = watcher.watch(conn).await;
            }
        }
    }));
    tasks.spawn(accept_loop(tunnel_listener, shutdown.clone(), {
        let state = state.clone();
        let graceful = graceful.clone();
        move |tcp, peer| {
            let state = state.clone();
            let tls = tunnel_tls.clone();
            let watcher = graceful.watcher();
            async move { tunnel_connection(state, tls, tcp, peer, watcher).await }
        }
    }));
    if let Some(l) = envoy.insecure {
        tasks.spawn(accept_loop(l, shutdown.clone(), {
            let state = state.clone();
            let graceful = graceful.clone();
            move |tcp, peer| {
                let trusted = state.dynamic().trusted_proxies.contains(&peer.ip());
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
                    match tls.accept(tcp).await {
                        // The client certificate chained to the Envoy client CA: this is Envoy.
                        Ok(stream) => serve_envoy(state, stream, peer.ip(), true, watcher).await,
                        Err(e) => {
                            warn!(%peer, "Envoy listener refused a client at TLS: {e}");
                            state.metrics.error("envoy_client_certificate_refused");
                        }
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
    if let Some(l) = metrics_listener {
        tasks.spawn(accept_loop(l, shutdown.clone(), {
            let metrics = state.metrics.clone();
            move |tcp, _peer| serve_metrics(metrics.clone(), tcp)
        }));
    }
    shutdown.wait().await;
    info!("edge shutting down: draining requests");
    let drain = state.dynamic().drain;
    while tasks.join_next().await.is_some() {}
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(drain, graceful.shutdown())
                .await
                .is_err()
            {
                warn!("drain period over; closing remaining connections");
            }
        }
        Err(_) => warn!("connections still referenced; not waiting for them"),
    }
    if let Ok(mut t) = state.tunnels.lock() {
        t.clear();
    }
    info!("edge stopped");
}

/// The listeners Envoy's upstream traffic may arrive on.
struct EnvoyListeners {
    unix: Option<tokio::net::UnixListener>,
    mtls: Option<(TcpListener, TlsAcceptor)>,
    insecure: Option<TcpListener>,
}

/// Binds the Envoy socket with `mode`, replacing a stale socket file (never another file).
fn bind_unix(path: &std::path::Path, mode: u32) -> Result<tokio::net::UnixListener, EdgeError> {
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
fn envoy_mtls_acceptor(
    files: &crate::config::EnvoyMtls,
    connector_ca: &EdgeCa,
) -> Result<TlsAcceptor, EdgeError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| EdgeError::Tls(format!("{}: {e}", p.display())))
    };
    let chain = pki::parse_certs_pem(&read(&files.cert_file)?)
        .map_err(|e| EdgeError::Tls(format!("envoy_mtls.cert_file: {e}")))?;
    let key = rustls_pemfile::private_key(&mut read(&files.key_file)?.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| EdgeError::Tls("envoy_mtls.key_file: no private key".into()))?;
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

/// Accepts connections until shutdown; each one is handled by `handle` in its own task.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handle(tcp, peer));
                }
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves `GET /metrics` on one connection.
pub(crate) async fn serve_metrics(metrics: Arc<Metrics>, tcp: TcpStream) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        async move {
            let resp = if req.uri().path() == "/metrics" {
                let mut r = Response::new(crate::body::full(metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            } else {
                api_error(StatusCode::NOT_FOUND, "not_found", "only /metrics here")
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<BoxBody>> {
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad_request",
                "body too large or unreadable",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("invalid JSON body: {e}"),
        )
    })
}

fn new_connector_id() -> String {
    let bytes: [u8; 8] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("c-{hex}")
}

async fn registration(state: Arc<EdgeState>, req: Request<Incoming>) -> Response<BoxBody> {
    if req.uri().path() != "/v1/register" {
        return api_error(StatusCode::NOT_FOUND, "not_found", "use POST /v1/register");
    }
    if req.method() != Method::POST {
        return api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let Some(token) = token else {
        state.metrics.registration("token_missing");
        return api_error(
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "send the admin token as `Authorization: Bearer <token>`",
        );
    };
    let body: RegisterRequest = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let admin = match state.verifier().verify(&token).await {
        Ok(a) => a,
        Err(refusal) => {
            warn!(
                code = refusal.code,
                "registration refused: {}", refusal.message
            );
            state.metrics.registration(refusal.code);
            let status = if refusal.code == "not_admin" || refusal.code == "tenant_mismatch" {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            return api_error(status, refusal.code, &refusal.message);
        }
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
            "unknown_group",
            &format!("no connector group `{group}`"),
        );
    }
    let id = new_connector_id();
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
            return api_error(StatusCode::BAD_REQUEST, "bad_csr", &e.to_string());
        }
    };
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

async fn tunnel_connection(
    state: Arc<EdgeState>,
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let stream = match tls.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, "connector refused at TLS: {e}");
            state.metrics.error("client_certificate_refused");
            return;
        }
    };
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
    if alpn.as_deref() == Some(TUNNEL_ALPN) {
        let dynamic = state.dynamic();
        let (watched, liveness) = Watched::new(stream);
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(dynamic.keepalive)
            .keep_alive_timeout(dynamic.keepalive)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_send_buf_size(256 * 1024)
            .max_frame_size(64 * 1024)
            .max_header_list_size(crate::TUNNEL_MAX_HEADER_LIST)
            .handshake::<_, BoxBody>(TokioIo::new(watched))
            .await;
        let (sender, conn) = match handshake {
            Ok(x) => x,
            Err(e) => {
                warn!(%peer, "tunnel HTTP/2 handshake: {e}");
                state.metrics.error("tunnel_handshake");
                return;
            }
        };
        let id = state.next_tunnel.fetch_add(1, Ordering::Relaxed);
        info!(tunnel = id, connector_id = %identity.id, group = %identity.group, %peer, "tunnel up");
        if let Ok(mut t) = state.tunnels.lock() {
            t.insert(
                id,
                Tunnel {
                    identity: identity.clone(),
                    sender,
                    inflight: Arc::new(AtomicUsize::new(0)),
                    served: Arc::new(AtomicU64::new(0)),
                },
            );
        }
        state.metrics.tunnels_up.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .tunnel_connects_total
            .fetch_add(1, Ordering::Relaxed);
        // Keepalive pings make a live connector answer every interval; a silent one is dead.
        let silence_limit = crate::liveness::silence_limit(dynamic.keepalive);
        let mut watchdog =
            tokio::time::interval((dynamic.keepalive / 2).max(Duration::from_millis(100)));
        tokio::pin!(conn);
        loop {
            tokio::select! {
                res = &mut conn => {
                    if let Err(e) = res {
                        debug!(tunnel = id, "tunnel ended: {}", crate::error_chain(&e));
                    }
                    break;
                }
                _ = watchdog.tick() => {
                    let silent = liveness.silent_for();
                    if silent > silence_limit {
                        warn!(tunnel = id, silent_ms = silent.as_millis() as u64, "no data from the connector; dropping the tunnel");
                        state.metrics.error("tunnel_dead_peer");
                        break;
                    }
                }
            }
        }
        if let Ok(mut t) = state.tunnels.lock() {
            t.remove(&id);
        }
        state.metrics.tunnels_up.fetch_sub(1, Ordering::Relaxed);
        info!(tunnel = id, connector_id = %identity.id, "tunnel down");
    } else {
        let svc = service_fn(move |req| {
            let state = state.clone();
            let identity = identity.clone();
            async move { Ok::<_, Infallible>(connector_api(state, identity, req).await) }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let _ = watcher.watch(conn).await;
    }
}

async fn connector_api(
    state: Arc<EdgeState>,
    identity: ConnectorIdentity,
    req: Request<Incoming>,
) -> Response<BoxBody> {
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
        (Method::POST, "/v1/renew") => {
            let body: RenewRequest = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let days = state.dynamic().client_cert_days;
            match state.ca.sign_connector_csr(
                &body.csr_pem,
                &identity.id,
                &identity.group,
                days,
                SystemTime::now(),
            ) {
                Ok(cert) => {
                    state.metrics.renewals_total.fetch_add(1, Ordering::Relaxed);
                    info!(connector_id = %identity.id, "certificate renewed");
                    json_response(
                        StatusCode::OK,
                        &serde_json::to_value(RenewResponse {
                            certificate_pem: cert,
                        })
                        .unwrap_or_default(),
                    )
                }
                Err(e) => api_error(StatusCode::BAD_REQUEST, "bad_csr", &e.to_string()),
            }
        }
        _ => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GET /v1/config or POST /v1/renew",
        ),
    }
}

/// Hop-by-hop headers never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
];

/// Whether a cookie name belongs to the proxy (never forwarded to apps).
pub fn is_proxy_cookie(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n.starts_with("__host-portcullis")
        || n.starts_with("__secure-portcullis")
        || n.starts_with("portcullis")
}

/// Removes the proxy's cookies from `Cookie` headers (all of them, any case).
pub fn strip_proxy_cookies(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| !is_proxy_cookie(c.split('=').next().unwrap_or("")))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

fn request_id(headers: &HeaderMap, trusted: bool) -> String {
    if trusted {
        if let Some(v) = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
            if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
                return v.to_string();
            }
        }
    }
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn append_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    default_proto: &str,
    host: Option<&str>,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let xfp = HeaderName::from_static("x-forwarded-proto");
    let xfh = HeaderName::from_static("x-forwarded-host");
    let prior: Vec<String> = if trusted {
        headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    let proto = if trusted {
        headers
            .get(&xfp)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    let fhost = if trusted {
        headers
            .get(&xfh)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    headers.remove(&xff);
    headers.remove(&xfp);
    headers.remove(&xfh);
    headers.remove("forwarded");
    let mut chain = prior;
    chain.push(peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(xff, v);
    }
    if let Ok(v) = HeaderValue::from_str(proto.as_deref().unwrap_or(default_proto)) {
        headers.insert(xfp, v);
    }
    if let Some(h) = fhost.as_deref().or(host) {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(xfh, v);
        }
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Forwards one request from Envoy down a tunnel.
async fn forward(
    state: Arc<EdgeState>,
    peer: IpAddr,
    trusted: bool,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let dynamic = state.dynamic();
    let rid = request_id(req.headers(), trusted);
    state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
    let deny = |state: &EdgeState, headers: &HeaderMap, d: Denial| {
        state.metrics.error(&d.code);
        d.into_response(headers, &rid)
    };
    let app_name = req
        .headers()
        .get(&dynamic.app_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(app_name) = app_name else {
        let d = Denial::new(
            StatusCode::NOT_FOUND,
            "app_unknown",
            format!("No `{}` header names the app.", dynamic.app_header),
        );
        return deny(&state, req.headers(), d);
    };
    let Some(app) = dynamic.apps.get(&app_name) else {
        let d = Denial::new(
            StatusCode::NOT_FOUND,
            "app_unknown",
            format!("No published app `{app_name}`."),
        );
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
    let connection_listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .map(|s| s.to_string())
        .chain(connection_listed)
    {
        headers.remove(h.as_str());
    }
    strip_proxy_cookies(&mut headers);
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
            let d = Denial::new(
                StatusCode::UNAUTHORIZED,
                "assertion_required",
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
    append_forwarded(&mut headers, peer, trusted, "http", Some(&host));
    if let Ok(v) = HeaderValue::from_str(&rid) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let uri: Uri = match format!("http://{host}{pq}").parse() {
        Ok(u) => u,
        Err(_) => {
            let d = Denial::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "The request's Host is not valid.",
            );
            return deny(&state, &client_headers, d);
        }
    };
    let method = parts.method.clone();
    let bodiless = http_body::Body::is_end_stream(&body);
    let mut body: Option<BoxBody> =
        Some(Tracked::new(boxed(body), state_counter(&state, true), None).boxed_unsync());
    let mut tried = Vec::new();
    let group = app.group.clone();
    for attempt in 0..3 {
        let Some((tid, mut sender, inflight, served)) = state.pick(&group, &tried) else {
            break;
        };
        tried.push(tid);
        let this_body = match body.take() {
            Some(b) => b,
            None if bodiless => empty(),
            None => break,
        };
        let mut up = Request::new(this_body);
        *up.method_mut() = method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers.clone();
        inflight.fetch_add(1, Ordering::Relaxed);
        state.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
        let guard = {
            let inflight = inflight.clone();
            let metrics = state.metrics.clone();
            OnDrop::new(move || {
                inflight.fetch_sub(1, Ordering::Relaxed);
                metrics.streams_active.fetch_sub(1, Ordering::Relaxed);
            })
        };
        match sender.try_send_request(up).await {
            Ok(resp) => {
                served.fetch_add(1, Ordering::Relaxed);
                let (parts, body) = resp.into_parts();
                let body = Tracked::new(
                    boxed(body),
                    state_counter(&state, false),
                    Some(Box::new(guard)),
                );
                return Response::from_parts(parts, body.boxed_unsync());
            }
            Err(mut e) => {
                drop(guard);
                let returned = e.take_message();
                debug!(
                    attempt,
                    tunnel = tid,
                    "tunnel request failed: {}",
                    e.error()
                );
                if let Some(r) = returned {
                    // Not sent: the body can be reused as is.
                    body = Some(r.into_body());
                    continue;
                }
                if bodiless && idempotent(&method) {
                    continue;
                }
                let d = Denial::new(
                    StatusCode::BAD_GATEWAY,
                    "connector_unavailable",
                    format!(
                        "The tunnel to the connector of app `{app_name}` failed: {}.",
                        e.error()
                    ),
                );
                return deny(&state, &client_headers, d);
            }
        }
    }
    let d = Denial::new(
        StatusCode::BAD_GATEWAY,
        "connector_unavailable",
        format!("No connector of group `{group}` is connected for app `{app_name}`."),
    );
    deny(&state, &client_headers, d)
}

fn state_counter(state: &EdgeState, up: bool) -> Arc<AtomicU64> {
    if up {
        state.metrics.bytes_up_total.clone()
    } else {
        state.metrics.bytes_down_total.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_cookies_are_removed_in_any_case_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis=a; theme=dark"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("PortCullis_state=b;lang=en; __Secure-portcullis-x=c"),
        );
        strip_proxy_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "theme=dark; lang=en");
        let mut only = HeaderMap::new();
        only.insert(
            header::COOKIE,
            HeaderValue::from_static("__host-PORTCULLIS=a"),
        );
        strip_proxy_cookies(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn forwarded_headers_are_kept_only_from_trusted_peers() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        let mut untrusted = h.clone();
        append_forwarded(&mut untrusted, peer, false, "http", Some("app.test"));
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.9");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "app.test");
        append_forwarded(&mut h, peer, true, "http", Some("app.test"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.test");
    }

    #[test]
    fn request_id_is_taken_only_from_trusted_peers_and_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h, true).len(), 32);
    }
}
