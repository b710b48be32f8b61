//! The connector: registers once with an admin token, then dials every edge address
//! (N mutual-TLS tunnels each), serves HTTP/2 on those outbound connections, forwards
//! requests to the apps' backends, keeps its configuration cached, and renews its
//! certificate over mutual TLS. It never listens (unless `/metrics` is switched on).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::body::{boxed, empty, full, BoxBody, OnDrop, Tracked};
use crate::config::{ConnectorConfigFile, ConnectorSettings};
use crate::denial::{Code, Denial, IntoResponse};
use crate::forwarding;
use crate::liveness::{Liveness, Watched};
use crate::metrics::Metrics;
use crate::pki::{self, ConnectorIdentity, PkiError};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::wire::{ConnectorView, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse};
use crate::{API_ALPN, DEFAULT_APP_HEADER, REQUEST_ID_HEADER, TUNNEL_ALPN};

/// Files in the connector's state directory.
pub mod files {
    /// Private key and certificate chain in one PEM file (mode 0600), replaced in
    /// one atomic step so a crash never leaves a key without its certificate.
    pub const IDENTITY: &str = "identity.pem";
    /// Private key of connectors registered before `identity.pem` (read if
    /// `identity.pem` is missing; removed at the first renewal).
    pub const KEY: &str = "key.pem";
    /// Client certificate of such connectors.
    pub const CERT: &str = "cert.pem";
    /// The edge's connector CA (trust anchor for the tunnel listener).
    pub const EDGE_CA: &str = "edge-ca.pem";
    /// Cached configuration.
    pub const CACHE: &str = "config-cache.json";
    /// Connector configuration written by `register`.
    pub const CONFIG: &str = "connector.json";
}

/// Why the connector failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Not registered yet, or files missing.
    #[error(
        "not registered: {0} (run `portcullis-connector register --edge URL --token TOKEN` first)"
    )]
    NotRegistered(String),
    /// The stored certificate has expired.
    #[error("the connector certificate expired at {0:?}; register again")]
    CertificateExpired(SystemTime),
    /// Certificate or key problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The edge could not be reached.
    #[error("edge unreachable at {addr}: {reason}")]
    EdgeUnreachable {
        /// Address dialled.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The edge answered with an error.
    #[error("edge refused: {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Denial code.
        code: String,
        /// Reason.
        message: String,
    },
    /// Invalid options or a bad answer.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectorError + '_ {
    move |source| ConnectorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the connector trusts the edge's registration endpoint.
#[derive(Debug, Clone)]
pub enum EdgeTrust {
    /// A PEM file with the edge's connector CA certificate.
    CaFile(PathBuf),
    /// SHA-256 fingerprint (hex) of the edge's CA certificate.
    Fingerprint(String),
}

/// Options of `portcullis-connector register`.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    /// Registration URL, e.g. `https://127.0.0.1:8441`.
    pub edge_url: String,
    /// Admin token (JWT).
    pub token: String,
    /// Where to store key, certificate, CA and `connector.json`.
    pub state_dir: PathBuf,
    /// Group to join (default: the edge's first group).
    pub group: Option<String>,
    /// How to trust the edge.
    pub trust: EdgeTrust,
}

fn client_config(
    roots: RootCertStore,
    verifier: Option<Arc<dyn rustls::client::danger::ServerCertVerifier>>,
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    alpn: &[u8],
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match verifier {
        Some(v) => builder.dangerous().with_custom_certificate_verifier(v),
        None => builder.with_root_certificates(roots),
    };
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Default time allowed to each step of an edge call (registration).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP connect and TLS handshake to the edge, each within `step`.
async fn edge_tls(
    addr: &str,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    step: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = tokio::time::timeout(step, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("TCP connect not done within {step:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        step,
        tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    .map_err(|_| format!("TLS handshake not done within {step:?}"))?
    .map_err(|e| format!("TLS: {e}"))
}

/// One HTTP/1.1 request over TLS to `addr`; the answer's status and body (≤ 1 MiB).
/// Each step (connect, handshake, answer, body) has `step` at most.
#[allow(clippy::too_many_arguments)]
async fn tls_request(
    addr: &str,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
    step: Duration,
) -> Result<(StatusCode, Bytes), ConnectorError> {
    let unreachable = |reason: String| ConnectorError::EdgeUnreachable {
        addr: addr.to_string(),
        reason,
    };
    let tls = edge_tls(addr, server_name, config, step)
        .await
        .map_err(unreachable)?;
    let (mut sender, conn) = tokio::time::timeout(
        step,
        hyper::client::conn::http1::handshake::<_, BoxBody>(TokioIo::new(tls)),
    )
    .await
    .map_err(|_| unreachable("HTTP handshake timed out".into()))?
    .map_err(|e| unreachable(crate::error_chain(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr)
        .header(header::ACCEPT, "application/json");
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(b)),
        None => req.body(empty()),
    }
    .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
    let resp = tokio::time::timeout(step, sender.send_request(req))
        .await
        .map_err(|_| unreachable(format!("no answer within {step:?}")))?
        .map_err(|e| unreachable(format!("request failed: {}", crate::error_chain(&e))))?;
    let status = resp.status();
    let collect = http_body_util::Limited::new(resp.into_body(), 1 << 20).collect();
    let bytes = tokio::time::timeout(step, collect)
        .await
        .map_err(|_| unreachable(format!("answer body not received within {step:?}")))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((status, bytes))
}

fn refused(status: StatusCode, body: &[u8]) -> ConnectorError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ConnectorError::Refused {
        status: status.as_u16(),
        code: v
            .get("error")
            .and_then(|c| c.as_str())
            .unwrap_or("edge_error")
            .to_string(),
        message: v
            .get("message")
            .and_then(|c| c.as_str())
            .unwrap_or("no reason given")
            .to_string(),
    }
}

/// The edge's registration port (also its admin API), as a client reaches it.
#[derive(Debug, Clone)]
pub struct EdgeEndpoint {
    addr: String,
    host: String,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl EdgeEndpoint {
    /// `url` is `https://host:port`; the edge is trusted as `trust` says.
    pub fn new(url: &str, trust: &EdgeTrust) -> Result<Self, ConnectorError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ConnectorError::Invalid(format!("--edge {url} is not a URL")))?;
        if uri.scheme_str() != Some("https") {
            return Err(ConnectorError::Invalid(
                "--edge must be an https:// URL".into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| ConnectorError::Invalid("--edge has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ConnectorError::Invalid(format!("bad edge host {host}")))?;
        let config = match trust {
            EdgeTrust::CaFile(path) => {
                let pem = std::fs::read_to_string(path).map_err(io_err(path))?;
                let mut roots = RootCertStore::empty();
                for c in pki::parse_certs_pem(&pem)? {
                    roots.add(c).map_err(PkiError::from)?;
                }
                client_config(roots, None, None, API_ALPN)?
            }
            EdgeTrust::Fingerprint(fp) => client_config(
                RootCertStore::empty(),
                Some(Arc::new(pki::CaFingerprintVerifier::new(fp))),
                None,
                API_ALPN,
            )?,
        };
        Ok(Self {
            addr,
            host,
            server_name,
            config: Arc::new(config),
        })
    }

    /// One admin-API call with `token`: the answer's JSON, or the edge's refusal.
    pub async fn admin_call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ConnectorError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, bytes) = tls_request(
            &self.addr,
            self.server_name.clone(),
            self.config.clone(),
            method,
            path,
            Some(token),
            body,
            STEP_TIMEOUT,
        )
        .await?;
        if status != StatusCode::OK {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Invalid(format!("bad answer from the edge: {e}")))
    }

    /// `GET /v1/connectors`.
    pub async fn list_connectors(
        &self,
        token: &str,
    ) -> Result<crate::wire::ConnectorList, ConnectorError> {
        let v = self
            .admin_call(token, Method::GET, "/v1/connectors", None)
            .await?;
        serde_json::from_value(v)
            .map_err(|e| ConnectorError::Invalid(format!("bad answer from the edge: {e}")))
    }

    /// `POST /v1/connectors/<id>/revoke`.
    pub async fn revoke_connector(
        &self,
        token: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<serde_json::Value, ConnectorError> {
        let body = serde_json::to_value(crate::wire::RevokeRequest { reason })
            .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
        self.admin_call(
            token,
            Method::POST,
            &format!("/v1/connectors/{id}/revoke"),
            Some(body),
        )
        .await
    }
}

/// Registers with the edge: makes a key pair and CSR, presents the admin token, stores
/// key and certificate (0600), the edge CA and a `connector.json` (if none exists).
pub async fn register(opts: &RegisterOptions) -> Result<RegisterResponse, ConnectorError> {
    let endpoint = EdgeEndpoint::new(&opts.edge_url, &opts.trust)?;
    let (addr, host, server_name, config) = (
        endpoint.addr.clone(),
        endpoint.host.clone(),
        endpoint.server_name.clone(),
        endpoint.config.clone(),
    );
    let (key_pem, csr_pem) = pki::new_key_and_csr("portcullis-connector")?;
    let body = serde_json::to_vec(&RegisterRequest {
        csr_pem,
        group: opts.group.clone(),
    })
    .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
    let (status, bytes) = tls_request(
        &addr,
        server_name,
        config,
        Method::POST,
        "/v1/register",
        Some(&opts.token),
        Some(body),
        STEP_TIMEOUT,
    )
    .await?;
    if status != StatusCode::OK {
        return Err(refused(status, &bytes));
    }
    let resp: RegisterResponse = serde_json::from_slice(&bytes)
        .map_err(|e| ConnectorError::Invalid(format!("bad registration answer: {e}")))?;
    let dir = &opts.state_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_identity(dir, &key_pem, &resp.certificate_pem)?;
    std::fs::write(dir.join(files::EDGE_CA), &resp.ca_pem)
        .map_err(io_err(&dir.join(files::EDGE_CA)))?;
    let cfg_path = dir.join(files::CONFIG);
    if !cfg_path.exists() {
        let cfg =
            ConnectorConfigFile::with_defaults(dir.clone(), resp.tunnel_addresses.clone(), host);
        let text = serde_json::to_string_pretty(&cfg)
            .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
        std::fs::write(&cfg_path, text).map_err(io_err(&cfg_path))?;
    }
    info!(connector_id = %resp.connector_id, group = %resp.group, "registered");
    Ok(resp)
}

/// Replaces the key and certificate in one atomic step (`identity.pem`, mode 0600),
/// then removes the files of the older layout.
fn write_identity(dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), ConnectorError> {
    let mut both = String::with_capacity(key_pem.len() + cert_pem.len() + 1);
    both.push_str(key_pem.trim_end());
    both.push('\n');
    both.push_str(cert_pem);
    pki::write_private(&dir.join(files::IDENTITY), both.as_bytes())?;
    for old in [files::KEY, files::CERT] {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}

/// The connector's current certificate and the TLS configurations built from it.
struct Identity {
    info: ConnectorIdentity,
    tunnel_tls: Arc<ClientConfig>,
    api_tls: Arc<ClientConfig>,
}

fn load_identity(
    dir: &Path,
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
) -> Result<Identity, ConnectorError> {
    let read = |name: &str| -> Result<String, ConnectorError> {
        let p = dir.join(name);
        std::fs::read_to_string(&p)
            .map_err(|e| ConnectorError::NotRegistered(format!("{}: {e}", p.display())))
    };
    let (cert_pem, key_pem) = match (cert_pem, key_pem) {
        (Some(c), Some(k)) => (c.to_string(), k.to_string()),
        _ if dir.join(files::IDENTITY).exists() => {
            let both = read(files::IDENTITY)?;
            (both.clone(), both)
        }
        _ => (read(files::CERT)?, read(files::KEY)?),
    };
    let ca_pem = read(files::EDGE_CA)?;
    let chain = pki::parse_certs_pem(&cert_pem)?;
    let first = chain
        .first()
        .ok_or_else(|| ConnectorError::NotRegistered("cert.pem holds no certificate".into()))?;
    let info = ConnectorIdentity::from_cert(first)?;
    let key = pki::parse_key_pem(&key_pem)?;
    let mut roots = RootCertStore::empty();
    for c in pki::parse_certs_pem(&ca_pem)? {
        roots.add(c).map_err(PkiError::from)?;
    }
    let tunnel_tls = client_config(
        roots.clone(),
        None,
        Some((chain.clone(), key.clone_key())),
        TUNNEL_ALPN,
    )?;
    let api_tls = client_config(roots, None, Some((chain, key)), API_ALPN)?;
    Ok(Identity {
        info,
        tunnel_tls: Arc::new(tunnel_tls),
        api_tls: Arc::new(api_tls),
    })
}

/// A clock (tests inject one to age certificates).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

struct ConnState {
    settings: ConnectorSettings,
    identity: RwLock<Arc<Identity>>,
    generation: watch::Sender<u64>,
    backends: RwLock<Arc<BTreeMap<String, Arc<Backend>>>>,
    view: RwLock<Option<ConnectorView>>,
    refresh: Notify,
    refreshed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    clock: Clock,
    last_on_demand: Mutex<Option<Instant>>,
    proxy_cookies: RwLock<Arc<portcullis_core::cookies::ProxyCookieNames>>,
    /// Set when the edge said this connector is revoked: everything stops.
    revoked: Mutex<Option<String>>,
    stop: ShutdownTrigger,
}

impl ConnState {
    fn identity(&self) -> Arc<Identity> {
        match self.identity.read() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn backend(&self, app: &str) -> Option<Arc<Backend>> {
        match self.backends.read() {
            Ok(b) => b.get(app).cloned(),
            Err(p) => p.into_inner().get(app).cloned(),
        }
    }

    fn apply_view(&self, view: ConnectorView) {
        let mut map = BTreeMap::new();
        for app in &view.apps {
            // Reuse a backend (and its pool) when its settings did not change.
            let existing = self.backend(&app.name).filter(|b| &b.app == app);
            match existing {
                Some(b) => {
                    map.insert(app.name.clone(), b);
                }
                None => match Backend::new(app.clone()) {
                    Ok(b) => {
                        map.insert(app.name.clone(), b);
                    }
                    Err(e) => warn!(app = %app.name, "backend settings unusable: {e}"),
                },
            }
        }
        if let Ok(mut b) = self.backends.write() {
            *b = Arc::new(map);
        }
        match view.proxy_cookies.validate("proxy_cookies") {
            Ok(names) => {
                if let Ok(mut p) = self.proxy_cookies.write() {
                    *p = Arc::new(names);
                }
            }
            Err(e) => warn!("proxy cookie names from the edge unusable, keeping the old ones: {e}"),
        }
        if let Ok(mut v) = self.view.write() {
            *v = Some(view);
        }
        self.refreshed.send_modify(|n| *n += 1);
    }

    async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ConnectorError> {
        let identity = self.identity();
        let mut last = None;
        for addr in &self.settings.edges {
            match tls_request(
                addr,
                self.settings.server_name.clone(),
                identity.api_tls.clone(),
                method.clone(),
                path,
                None,
                body.clone(),
                self.settings.connect_timeout,
            )
            .await
            {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectorError::Invalid("no edge address".into())))
    }

    async fn pull_config(&self) -> Result<ConnectorView, ConnectorError> {
        let (status, bytes) = self.api(Method::GET, "/v1/config", None).await?;
        if status != StatusCode::OK {
            return Err(refused(status, &bytes));
        }
        let view: ConnectorView = serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Invalid(format!("bad configuration: {e}")))?;
        self.metrics
            .config_pulls_total
            .fetch_add(1, Ordering::Relaxed);
        let cache = self.settings.state_dir.join(files::CACHE);
        if let Ok(text) = serde_json::to_vec_pretty(&view) {
            let tmp = cache.with_extension("tmp");
            if std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, &cache))
                .is_err()
            {
                warn!("cannot write configuration cache {}", cache.display());
            }
        }
        self.apply_view(view.clone());
        Ok(view)
    }

    async fn renew(&self) -> Result<(), ConnectorError> {
        let (key_pem, csr_pem) = pki::new_key_and_csr("portcullis-connector")?;
        let body = serde_json::to_vec(&RenewRequest { csr_pem })
            .map_err(|e| ConnectorError::Invalid(e.to_string()))?;
        let (status, bytes) = self.api(Method::POST, "/v1/renew", Some(body)).await?;
        if status != StatusCode::OK {
            return Err(refused(status, &bytes));
        }
        let resp: RenewResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ConnectorError::Invalid(format!("bad renewal answer: {e}")))?;
        let new = load_identity(
            &self.settings.state_dir,
            Some(&resp.certificate_pem),
            Some(&key_pem),
        )?;
        write_identity(&self.settings.state_dir, &key_pem, &resp.certificate_pem)?;
        info!(serial = %new.info.serial, "certificate renewed; rolling tunnels over");
        if let Ok(mut i) = self.identity.write() {
            *i = Arc::new(new);
        }
        self.metrics.renewals_total.fetch_add(1, Ordering::Relaxed);
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }
}

/// Why a connector stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was asked for (and streams drained).
    Shutdown,
    /// The edge refused it as revoked (`connector_revoked`): register a new one.
    Revoked(String),
}

/// A running connector.
pub struct ConnectorHandle {
    state: Arc<ConnState>,
    /// Metrics listener address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ConnectorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorHandle").finish_non_exhaustive()
    }
}

impl ConnectorHandle {
    /// The connector id from its certificate.
    pub fn connector_id(&self) -> String {
        self.state.identity().info.id.clone()
    }

    /// Serial (hex) of the certificate in use.
    pub fn cert_serial(&self) -> String {
        self.state.identity().info.serial.clone()
    }

    /// End of validity of the certificate in use.
    pub fn cert_not_after(&self) -> SystemTime {
        self.state.identity().info.not_after
    }

    /// The configuration in use (pulled or cached).
    pub fn config(&self) -> Option<ConnectorView> {
        self.state.view.read().ok().and_then(|v| v.clone())
    }

    /// The connector's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Waits until the connector has drained and stopped, and says why.
    pub async fn wait(self) -> Stopped {
        let _ = self.task.await;
        let revoked = self.state.revoked.lock().ok().and_then(|r| r.clone());
        match revoked {
            Some(why) => Stopped::Revoked(why),
            None => Stopped::Shutdown,
        }
    }

    /// Stops at once, without draining (tests: a crashed connector).
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Starts the connector with the system clock.
pub async fn start(
    settings: ConnectorSettings,
    shutdown: Shutdown,
) -> Result<ConnectorHandle, ConnectorError> {
    start_with_clock(settings, shutdown, Arc::new(SystemTime::now)).await
}

/// Starts the connector and runs it until `shutdown` fires and streams have drained.
pub async fn run(settings: ConnectorSettings, shutdown: Shutdown) -> Result<(), ConnectorError> {
    match start(settings, shutdown).await?.wait().await {
        Stopped::Shutdown => Ok(()),
        Stopped::Revoked(why) => Err(ConnectorError::Refused {
            status: 403,
            code: "connector_revoked".into(),
            message: why,
        }),
    }
}

/// Starts the connector with `clock` deciding certificate age.
pub async fn start_with_clock(
    settings: ConnectorSettings,
    shutdown: Shutdown,
    clock: Clock,
) -> Result<ConnectorHandle, ConnectorError> {
    let identity = load_identity(&settings.state_dir, None, None)?;
    if identity.info.not_after <= clock() {
        return Err(ConnectorError::CertificateExpired(identity.info.not_after));
    }
    let metrics_listener = match settings.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(io_err(Path::new("metrics_listen")))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let (generation, _) = watch::channel(0u64);
    let (refreshed, _) = watch::channel(0u64);
    // Our own stop signal: the caller's shutdown, or a revocation.
    let (stop, stopping) = Shutdown::new();
    let state = Arc::new(ConnState {
        identity: RwLock::new(Arc::new(identity)),
        generation,
        backends: RwLock::new(Arc::new(BTreeMap::new())),
        view: RwLock::new(None),
        refresh: Notify::new(),
        refreshed,
        metrics: Arc::new(Metrics::new("portcullis_connector")),
        clock,
        last_on_demand: Mutex::new(None),
        proxy_cookies: RwLock::new(Arc::new(
            portcullis_core::cookies::ProxyCookieNames::default(),
        )),
        revoked: Mutex::new(None),
        stop,
        settings,
    });
    let cache = state.settings.state_dir.join(files::CACHE);
    if let Ok(bytes) = std::fs::read(&cache) {
        match serde_json::from_slice::<ConnectorView>(&bytes) {
            Ok(view) => {
                info!(apps = view.apps.len(), "configuration loaded from cache");
                state.apply_view(view);
            }
            Err(e) => warn!("ignoring unreadable configuration cache: {e}"),
        }
    }
    info!(connector_id = %state.identity().info.id, edges = ?state.settings.edges, "connector starting");
    {
        let state = state.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            state.stop.trigger();
        });
    }
    let task = tokio::spawn(run_all(state.clone(), metrics_listener, stopping));
    Ok(ConnectorHandle {
        state,
        metrics_addr,
        task,
    })
}

impl ConnState {
    /// The edge refused this connector as revoked: stop everything.
    fn revoked(&self, message: &str) {
        let first = match self.revoked.lock() {
            Ok(mut r) => r.replace(message.to_string()).is_none(),
            Err(_) => false,
        };
        if first {
            tracing::error!(
                connector_id = %self.identity().info.id,
                "the edge revoked this connector ({message}); stopping. Register a new one."
            );
            self.metrics.error("connector_revoked");
        }
        self.stop.trigger();
    }

    /// Looks at a failed API call: a revocation stops the connector.
    fn check_revoked(&self, e: &ConnectorError) {
        if let ConnectorError::Refused { code, message, .. } = e {
            if code == "connector_revoked" {
                self.revoked(message);
            }
        }
    }
}

async fn run_all(
    state: Arc<ConnState>,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: Shutdown,
) {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(config_loop(state.clone(), shutdown.clone()));
    tasks.spawn(renew_loop(state.clone(), shutdown.clone()));
    for edge in state.settings.edges.clone() {
        for slot in 0..state.settings.tunnels_per_edge {
            tasks.spawn(tunnel_slot(
                state.clone(),
                edge.clone(),
                slot,
                shutdown.clone(),
            ));
        }
    }
    if let Some(l) = metrics_listener {
        let metrics = state.metrics.clone();
        tasks.spawn(crate::edge::accept_loop(
            l,
            shutdown.clone(),
            move |tcp, _| crate::edge::serve_metrics(metrics.clone(), tcp),
        ));
    }
    let ended = tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => true,
        _ = shutdown.wait() => false,
    };
    if !ended {
        // Shutdown always ends: streams get `drain`, and then a second more.
        let limit = state.settings.drain + Duration::from_secs(1);
        let drained =
            tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("drain period over; stopping what is left");
            tasks.abort_all();
        }
    }
    info!("connector stopped");
}

async fn config_loop(state: Arc<ConnState>, shutdown: Shutdown) {
    let mut failures = 0u32;
    loop {
        let pulled = tokio::select! {
            _ = shutdown.wait() => return,
            r = state.pull_config() => r,
        };
        let wait = match pulled {
            Ok(view) => {
                failures = 0;
                debug!(apps = view.apps.len(), "configuration pulled");
                state
                    .settings
                    .config_refresh
                    .unwrap_or(Duration::from_secs(view.refresh_seconds.max(1)))
            }
            Err(e) => {
                state.check_revoked(&e);
                failures += 1;
                state.metrics.error("config_pull_failed");
                let cached = state.view.read().map(|v| v.is_some()).unwrap_or(false);
                warn!(cached, "configuration pull failed: {e}");
                backoff(&state.settings, failures)
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = state.refresh.notified() => {}
        }
    }
}

/// Whether the certificate should be renewed now: older than `renew_after`, or
/// past two thirds of its validity (a certificate cut short by the identity's
/// absolute lifetime).
fn renewal_due(info: &ConnectorIdentity, now: SystemTime, renew_after: Duration) -> bool {
    let age = now.duration_since(info.not_before).unwrap_or_default();
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    age >= renew_after || age >= life / 3 * 2
}

async fn renew_loop(state: Arc<ConnState>, shutdown: Shutdown) {
    let mut failures = 0u32;
    loop {
        let identity = state.identity();
        let now = (state.clock)();
        let mut wait = state.settings.renew_check;
        if renewal_due(&identity.info, now, state.settings.renew_after) {
            let age = now
                .duration_since(identity.info.not_before)
                .unwrap_or_default();
            info!(
                age_s = age.as_secs(),
                "certificate due for renewal; renewing"
            );
            let renewed = tokio::select! {
                _ = shutdown.wait() => return,
                r = state.renew() => r,
            };
            match renewed {
                Ok(()) => failures = 0,
                Err(e) => {
                    state.check_revoked(&e);
                    failures += 1;
                    state.metrics.error("renewal_failed");
                    warn!("certificate renewal failed: {e}");
                    wait = wait.min(backoff(&state.settings, failures));
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Capped exponential backoff with jitter (between half and all of the capped delay).
fn backoff(settings: &ConnectorSettings, failures: u32) -> Duration {
    let exp = settings
        .backoff_initial
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(settings.backoff_max);
    let ms = capped.as_millis() as u64;
    let jittered = ms / 2 + rand::random_range(0..=ms / 2 + 1);
    Duration::from_millis(jittered.max(1))
}

/// The service a tunnel serves: every request goes to [`handle`].
#[derive(Clone)]
struct TunnelService {
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for TunnelService {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(handle(state, peer, req).await) })
    }
}

type TunnelConn = Pin<
    Box<
        hyper::server::conn::http2::Connection<
            TokioIo<Watched<tokio_rustls::client::TlsStream<TcpStream>>>,
            TunnelService,
            TokioExecutor,
        >,
    >,
>;

/// Dials one tunnel: TCP, TLS and the first HTTP/2 bytes each within
/// `connect_timeout`, so an edge that accepts and never answers cannot hang it.
async fn dial(state: &Arc<ConnState>, edge: &str) -> Result<(TunnelConn, Liveness), String> {
    let identity = state.identity();
    let s = &state.settings;
    let tls = edge_tls(
        edge,
        s.server_name.clone(),
        identity.tunnel_tls.clone(),
        s.connect_timeout,
    )
    .await?;
    let peer = tls.get_ref().0.peer_addr().map_err(|e| e.to_string())?;
    if tls.get_ref().1.alpn_protocol() != Some(TUNNEL_ALPN) {
        return Err("the edge did not agree to the tunnel protocol (ALPN)".into());
    }
    let (watched, liveness) = Watched::new(tls);
    let handler = TunnelService {
        state: state.clone(),
        peer,
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(s.keepalive)
        .keep_alive_timeout(s.ping_timeout)
        .max_concurrent_streams(s.max_concurrent_streams)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_send_buf_size(256 * 1024)
        .max_frame_size(64 * 1024)
        .max_header_list_size(crate::TUNNEL_MAX_HEADER_LIST)
        .serve_connection(TokioIo::new(watched), handler);
    Ok((Box::pin(conn), liveness))
}

fn retire(mut conn: TunnelConn, drain: Duration) {
    tokio::spawn(async move {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(drain, conn).await;
    });
}

/// A tunnel that lived less than this before closing counts as a failure (so a
/// refused or flapping tunnel backs off instead of redialling at once).
const SHORT_LIVED: Duration = Duration::from_secs(5);

async fn tunnel_slot(state: Arc<ConnState>, edge: String, slot: usize, shutdown: Shutdown) {
    let mut failures = 0u32;
    let mut old: Option<TunnelConn> = None;
    let mut generation = state.generation.subscribe();
    loop {
        if shutdown.is_triggered() {
            if let Some(o) = old.take() {
                retire(o, state.settings.drain);
            }
            return;
        }
        generation.borrow_and_update();
        let dialled = tokio::select! {
            _ = shutdown.wait() => continue,
            d = dial(&state, &edge) => d,
        };
        let (mut conn, liveness) = match dialled {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                state.metrics.error("tunnel_connect_failed");
                let wait = backoff(&state.settings, failures);
                warn!(%edge, slot, retry_ms = wait.as_millis() as u64, "tunnel: {e}");
                tokio::select! {
                    _ = shutdown.wait() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        let up_at = Instant::now();
        state.metrics.tunnels_up.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .tunnel_connects_total
            .fetch_add(1, Ordering::Relaxed);
        info!(%edge, slot, "tunnel up");
        let _down = OnDrop::new({
            let m = state.metrics.clone();
            move || {
                m.tunnels_up.fetch_sub(1, Ordering::Relaxed);
            }
        });
        let retire_at = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(retire_at);
        // Our keepalive pings make a live edge answer within interval + time-out;
        // silence longer than that means the edge or the path is dead.
        let silence_limit =
            crate::liveness::silence_limit(state.settings.keepalive, state.settings.ping_timeout);
        let mut watchdog = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    let silent = liveness.silent_for();
                    if silent > silence_limit {
                        warn!(%edge, slot, silent_ms = silent.as_millis() as u64, "no data from the edge; dropping the tunnel");
                        state.metrics.error("tunnel_dead_peer");
                        failures += 1;
                        break;
                    }
                }
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        warn!(%edge, slot, "tunnel closed: {}", crate::error_chain(&e));
                    } else {
                        info!(%edge, slot, "tunnel closed by the edge");
                    }
                    failures = if up_at.elapsed() < SHORT_LIVED { failures + 1 } else { 1 };
                    let wait = backoff(&state.settings, failures);
                    tokio::select! {
                        _ = shutdown.wait() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    break;
                }
                _ = &mut retire_at, if old.is_some() => {
                    failures = 0;
                    if let Some(o) = old.take() {
                        retire(o, state.settings.drain);
                    }
                }
                changed = generation.changed() => {
                    if changed.is_ok() {
                        // New certificate: dial a fresh tunnel, then retire this one.
                        if let Some(o) = old.take() {
                            retire(o, state.settings.drain);
                        }
                        old = Some(conn);
                        break;
                    }
                }
                _ = shutdown.wait() => {
                    if let Some(o) = old.take() {
                        retire(o, state.settings.drain);
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(state.settings.drain, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

async fn handle(
    state: Arc<ConnState>,
    edge_peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let rid = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
    let app_name = req
        .headers()
        .get(DEFAULT_APP_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut backend = state.backend(&app_name);
    if backend.is_none() && !app_name.is_empty() {
        backend = refresh_for(&state, &app_name).await;
    }
    let Some(backend) = backend else {
        state.metrics.error("app_unknown");
        return Denial::explained(
            Code::AppUnknown,
            format!("The connector does not serve app `{app_name}`."),
        )
        .into_response(req.headers(), &rid);
    };
    let (parts, body) = req.into_parts();
    // An error page needs only `Accept`: no copy of every header for each stream.
    let mut client_headers = http::HeaderMap::new();
    if let Some(accept) = parts.headers.get(header::ACCEPT) {
        client_headers.insert(header::ACCEPT, accept.clone());
    }
    let mut headers = parts.headers;
    forwarding::strip_hop_by_hop(&mut headers);
    headers.remove(DEFAULT_APP_HEADER);
    let names = match state.proxy_cookies.read() {
        Ok(n) => n.clone(),
        Err(p) => p.into_inner().clone(),
    };
    forwarding::strip_proxy_cookies(&mut headers, &names);
    let ext_host = parts.uri.authority().map(|a| a.to_string());
    // The edge is authenticated (mutual TLS): its X-Forwarded-* chain is trusted.
    forwarding::connector_forwarded(&mut headers, edge_peer.ip(), ext_host.as_deref());
    let host = if backend.app.preserve_host {
        ext_host.unwrap_or_else(|| backend.authority().to_string())
    } else {
        backend.authority().to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let body_done = if http_body::Body::is_end_stream(&body) {
        None
    } else {
        Some(tokio::sync::oneshot::channel::<()>())
    };
    let (done_guard, body_done): (Option<Box<dyn Send>>, _) = match body_done {
        Some((tx, rx)) => (
            Some(Box::new(OnDrop::new(move || {
                let _ = tx.send(());
            }))),
            Some(rx),
        ),
        None => (None, None),
    };
    let mut up = Request::new(
        Tracked::new(
            boxed(body),
            state.metrics.bytes_up_total.clone(),
            done_guard,
        )
        .boxed_unsync(),
    );
    *up.method_mut() = parts.method;
    *up.headers_mut() = headers;
    match backend.backend_path(pq).parse() {
        Ok(u) => *up.uri_mut() = u,
        Err(_) => {
            return Denial::explained(Code::BadRequest, "The request path is not valid.")
                .into_response(&client_headers, &rid)
        }
    }
    state.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
    let guard = {
        let m = state.metrics.clone();
        OnDrop::new(move || {
            m.streams_active.fetch_sub(1, Ordering::Relaxed);
        })
    };
    match backend.send(up, body_done).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            forwarding::strip_hop_by_hop(&mut parts.headers);
            let body = Tracked::new(
                boxed(body),
                state.metrics.bytes_down_total.clone(),
                Some(Box::new(guard)),
            );
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => {
            let denial = e.denial(&backend.app.name);
            warn!(app = %backend.app.name, request_id = %rid, code = %denial.public_code(), "backend failed: {e}");
            state.metrics.error(denial.code());
            denial.into_response(&client_headers, &rid)
        }
    }
}

/// Asks for a configuration refresh (at most every 2 s) and waits up to 5 s for `app`.
async fn refresh_for(state: &Arc<ConnState>, app: &str) -> Option<Arc<Backend>> {
    let mut refreshed = state.refreshed.subscribe();
    refreshed.borrow_and_update();
    let allowed = match state.last_on_demand.lock() {
        Ok(mut last) => {
            let ok = last
                .map(|t| t.elapsed() >= Duration::from_secs(2))
                .unwrap_or(true);
            if ok {
                *last = Some(Instant::now());
            }
            ok
        }
        Err(_) => false,
    };
    if allowed {
        debug!(app, "unknown app: refreshing configuration");
        state.refresh.notify_one();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), refreshed.changed()).await;
    state.backend(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let file = ConnectorConfigFile::with_defaults(
            "/tmp/x".into(),
            vec!["127.0.0.1:1".into()],
            "localhost".into(),
        );
        let s = ConnectorConfigFile {
            backoff_initial_ms: 100,
            backoff_max_ms: 2_000,
            ..file
        }
        .validate()
        .unwrap();
        for failures in 1..=40u32 {
            let nominal = (100u64 << (failures - 1).min(16)).min(2_000);
            for _ in 0..50 {
                let d = backoff(&s, failures).as_millis() as u64;
                assert!(
                    d >= nominal / 2 && d <= nominal + 1,
                    "failures {failures}: {d} ms vs {nominal}"
                );
            }
        }
        let samples: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff(&s, 5).as_millis()).collect();
        assert!(samples.len() > 5, "jitter spreads reconnects");
    }
}
