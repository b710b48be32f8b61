//! The edge service: connector CA, registration and the admin API
//! ([`registration`]), the mutual-TLS tunnel listener and the connectors' API
//! ([`tunnels`]), the pool of live tunnels with outlier ejection ([`pool`]), and
//! the listeners that send Envoy's upstream traffic down the tunnels ([`envoy`]).
//! What replicas share (the connector registry, revocations, token uses) lives in
//! the [`crate::store`].

pub mod envoy;
pub mod pool;
pub mod registration;
pub mod tunnels;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::body::BoxBody;
use crate::config::{EdgeConfigFile, EdgeDynamic, EdgeSettings, LimitsConfig};
use crate::denial::{api_error, Code};
use crate::limits::{ConnLimiter, RateLimiter};
use crate::metrics::Metrics;
use crate::pki::{self, EdgeCa, PkiError};
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::token::AdminTokenVerifier;
use crate::{API_ALPN, TUNNEL_ALPN};

pub use crate::wire::{
    ConnectorList, ConnectorView, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse,
    RevokeRequest,
};
pub use pool::TunnelInfo;

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
    /// The shared store could not be opened or read.
    #[error("shared store: {0}")]
    Store(#[from] StoreError),
}

/// The limits in force, with the caps worked out from the descriptor limit.
#[derive(Debug)]
pub(crate) struct Limits {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Unauthenticated connections (TLS handshakes, registration port), by source.
    pub pending: Arc<ConnLimiter<IpAddr>>,
    /// The same for sources a connector authenticated from lately: a budget of
    /// their own, so a flood from elsewhere cannot keep connectors out.
    pub known_pending: Arc<ConnLimiter<IpAddr>>,
    /// Sources a connector authenticated from (bounded).
    pub known: std::sync::Mutex<std::collections::HashMap<IpAddr, std::time::Instant>>,
    /// Authenticated connections (tunnels, API calls), by connector id.
    pub tunnels: Arc<ConnLimiter<String>>,
    pub rate: RateLimiter,
    pub registrations: Arc<tokio::sync::Semaphore>,
}

/// Sources remembered as known connector addresses.
const KNOWN_SOURCES: usize = 10_000;

impl Limits {
    /// Remembers that a connector authenticated from `ip`.
    pub fn learn_source(&self, ip: IpAddr) {
        let mut known = match self.known.lock() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        if known.len() >= KNOWN_SOURCES && !known.contains_key(&ip) {
            if let Some(oldest) = known.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) {
                known.remove(&oldest);
            }
        }
        known.insert(ip, std::time::Instant::now());
    }

    /// Whether a connector authenticated from `ip` lately.
    pub fn is_known_source(&self, ip: IpAddr) -> bool {
        self.known
            .lock()
            .map(|k| k.contains_key(&ip))
            .unwrap_or(false)
    }

    /// Caps left unset take a share of the descriptor limit `nofile`: a quarter for
    /// unauthenticated connections, half for tunnels; the last quarter stays for
    /// Envoy's connections, backends, the store and files.
    fn new(l: &LimitsConfig, nofile: u64) -> Self {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX).max(64);
        let pending = l.max_pending_connections.unwrap_or((nofile / 4).max(16));
        let tunnels = l.max_tunnels.unwrap_or((nofile / 2).max(16));
        Self {
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            pending: ConnLimiter::new(pending, l.max_pending_per_source),
            known_pending: ConnLimiter::new(
                (pending / 4).max(16),
                l.max_pending_per_source.saturating_mul(4),
            ),
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
            tunnels: ConnLimiter::new(tunnels, l.max_tunnels_per_connector),
            rate: RateLimiter::per_minute(l.registrations_per_minute_per_source),
            registrations: Arc::new(tokio::sync::Semaphore::new(l.max_concurrent_registrations)),
        }
    }
}

pub(crate) struct EdgeState {
    dynamic: RwLock<Arc<EdgeDynamic>>,
    verifier: RwLock<Arc<AdminTokenVerifier>>,
    pub(crate) ca: EdgeCa,
    pub(crate) pool: pool::TunnelPool,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) advertised: Vec<String>,
    pub(crate) verified: crate::identity::VerifiedCache,
    pub(crate) max_request_headers: u32,
    pub(crate) registry: Arc<Registry>,
    pub(crate) limits: Limits,
    /// Set once shutdown began: no tunnel is picked or accepted.
    pub(crate) draining: AtomicBool,
}

impl EdgeState {
    pub(crate) fn dynamic(&self) -> Arc<EdgeDynamic> {
        match self.dynamic.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn verifier(&self) -> Arc<AdminTokenVerifier> {
        match self.verifier.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn is_trusted(&self, peer: IpAddr) -> bool {
        self.dynamic()
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer))
    }
}

/// A running edge: bound addresses, CA fingerprint, reload and inspection.
pub struct EdgeHandle {
    /// Registration (HTTPS) address; also the admin API.
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
    /// addresses, limits, the store and the state directory need a restart. Tunnels stay up.
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
        self.state.pool.list()
    }

    /// The edge's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The connector registry (shared store).
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
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

/// Starts the edge: loads or creates the CA, opens the shared store, binds every
/// listener, and returns at once.
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

    let store = Store::open(&settings.store, settings.store_timeout).await?;
    let registry = Registry::open(store).await?;

    let reg_listener = bind(settings.registration_listen).await?;
    let tunnel_listener = bind(settings.tunnel_listen).await?;
    let envoy_unix = match &settings.envoy_socket {
        Some((path, mode)) => Some(envoy::bind_unix(path, *mode)?),
        None => None,
    };
    let envoy_mtls = match &settings.envoy_mtls {
        Some((addr, files)) => Some((bind(*addr).await?, envoy::mtls_acceptor(files, &ca)?)),
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
    let nofile = crate::limits::nofile_limit();
    let limits = Limits::new(&settings.limits, nofile);
    if nofile < 4096 {
        warn!(
            nofile,
            "the descriptor limit (RLIMIT_NOFILE) is low; raise it (systemd: LimitNOFILE=65536): \
             at most {} unauthenticated connections and {} tunnels are accepted",
            limits.pending.global(),
            limits.tunnels.global()
        );
    }
    let verifier = AdminTokenVerifier::new(settings.dynamic.admin.clone());
    let state = Arc::new(EdgeState {
        dynamic: RwLock::new(Arc::new(settings.dynamic)),
        verifier: RwLock::new(verifier),
        ca,
        pool: pool::TunnelPool::default(),
        metrics: Arc::new(Metrics::new("portcullis_edge")),
        advertised,
        verified: crate::identity::VerifiedCache::default(),
        max_request_headers: settings.max_request_headers,
        registry,
        limits,
        draining: AtomicBool::new(false),
    });
    let ca_pem = state.ca.cert_pem.clone();
    let ca_fingerprint = state.ca.fingerprint();
    info!(%registration_addr, %tunnel_addr, ?envoy_socket, ?envoy_mtls_addr, ?insecure_tcp_addr,
        ?metrics_addr, ca_fingerprint = %ca_fingerprint, store = state.registry.store().kind(),
        nofile, max_pending = state.limits.pending.global(), max_tunnels = state.limits.tunnels.global(),
        "edge listening");

    let task = tokio::spawn(serve_all(
        state.clone(),
        Listeners {
            registration: (reg_listener, TlsAcceptor::from(Arc::new(reg_tls))),
            tunnel: (tunnel_listener, TlsAcceptor::from(Arc::new(tunnel_tls))),
            envoy: envoy::EnvoyListeners {
                unix: envoy_unix,
                mtls: envoy_mtls,
                insecure: insecure_listener,
            },
            metrics: metrics_listener,
        },
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

struct Listeners {
    registration: (TcpListener, TlsAcceptor),
    tunnel: (TcpListener, TlsAcceptor),
    envoy: envoy::EnvoyListeners,
    metrics: Option<TcpListener>,
}

async fn serve_all(state: Arc<EdgeState>, listeners: Listeners, shutdown: Shutdown) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = JoinSet::new();
    let (reg_listener, reg_tls) = listeners.registration;
    tasks.spawn(accept_loop(reg_listener, shutdown.clone(), {
        let state = state.clone();
        let graceful = graceful.clone();
        move |tcp, peer| {
            registration::connection(
                state.clone(),
                reg_tls.clone(),
                tcp,
                peer,
                graceful.watcher(),
            )
        }
    }));
    let (tunnel_listener, tunnel_tls) = listeners.tunnel;
    tasks.spawn(accept_loop(tunnel_listener, shutdown.clone(), {
        let state = state.clone();
        let graceful = graceful.clone();
        move |tcp, peer| {
            tunnels::connection(
                state.clone(),
                tunnel_tls.clone(),
                tcp,
                peer,
                graceful.watcher(),
            )
        }
    }));
    envoy::spawn_listeners(&mut tasks, &state, listeners.envoy, &graceful, &shutdown);
    if let Some(l) = listeners.metrics {
        tasks.spawn(accept_loop(l, shutdown.clone(), {
            let metrics = state.metrics.clone();
            move |tcp, _peer| serve_metrics(metrics.clone(), tcp)
        }));
    }
    tasks.spawn(state.registry.clone().follow(shutdown.clone()));
    tasks.spawn(tunnels::drop_revoked(state.clone(), shutdown.clone()));

    shutdown.wait().await;
    info!("edge shutting down: GOAWAY to the tunnels, draining requests in flight");
    state.draining.store(true, Ordering::Relaxed);
    let drain = state.dynamic().drain;
    let deadline = tokio::time::Instant::now() + drain;
    while tasks.join_next().await.is_some() {}
    // Forget every tunnel: once its streams in flight are done, HTTP/2 sends GOAWAY
    // and closes it, and its connector dials another edge.
    state.pool.close_all();
    let connections = async {
        match Arc::try_unwrap(graceful) {
            Ok(graceful) => graceful.shutdown().await,
            Err(_) => warn!("connections still referenced; not waiting for them"),
        }
    };
    let tunnels_done = state.pool.wait_empty();
    let drained = tokio::time::timeout_at(deadline, async {
        tokio::join!(connections, tunnels_done);
    })
    .await;
    if drained.is_err() {
        warn!("drain period over; closing remaining connections");
    }
    state.pool.kill_all();
    info!("edge stopped");
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
                api_error(StatusCode::NOT_FOUND, Code::NotFound, "only /metrics here")
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<BoxBody>> {
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::BadRequest,
                "body too large or unreadable",
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        if let Ok(v) = serde_json::from_slice(b"{}") {
            return Ok(v);
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            Code::BadRequest,
            &format!("invalid JSON body: {e}"),
        )
    })
}
