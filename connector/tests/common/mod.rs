//! Test fixtures: an admin-token issuer (ES256 JWKS), edge and connector builders on
//! port 0, a sample backend, and an HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwt_simple::prelude::*;
use portcullis_connector::body::{boxed, full, BoxBody};
use portcullis_connector::config::{
    AdminConfig, AppConfig, ConnectorConfigFile, EdgeConfigFile, EdgeListen,
};
use portcullis_connector::connector::{self, ConnectorHandle, EdgeTrust, RegisterOptions};
use portcullis_connector::edge::{self, EdgeHandle};
use portcullis_connector::{Shutdown, ShutdownTrigger};
use serde_json::json;
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "portcullis-edge";
pub const TENANT: &str = "tenant-a";

/// Signs admin tokens and publishes the JWKS.
pub struct Idp {
    pub key: ES256KeyPair,
    pub jwks_path: PathBuf,
}

impl Idp {
    pub fn new(dir: &Path) -> Self {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, json!({ "keys": [jwk] }).to_string()).unwrap();
        Self { key, jwks_path }
    }

    /// A token with the given custom claims, valid for `valid` (negative: already expired).
    pub fn token_with(&self, custom: serde_json::Value, valid_secs: i64, aud: &str) -> String {
        let custom: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(custom).unwrap();
        let mut claims =
            Claims::with_custom_claims(custom, jwt_simple::prelude::Duration::from_secs(600))
                .with_issuer(ISSUER)
                .with_audience(aud)
                .with_subject("admin@tenant-a")
                .with_jwt_id(format!("{:032x}", rand_u128()));
        let now = Clock::now_since_epoch().as_secs() as i64;
        claims.expires_at = Some(UnixTimeStamp::from_secs((now + valid_secs) as u64));
        if valid_secs < 0 {
            claims.issued_at = Some(UnixTimeStamp::from_secs((now + valid_secs - 600) as u64));
            claims.invalid_before = claims.issued_at;
        }
        self.key.sign(claims).unwrap()
    }

    /// A valid admin token.
    pub fn admin_token(&self) -> String {
        self.token_with(
            json!({ "tid": TENANT, "roles": ["Connector.Admin"] }),
            600,
            AUDIENCE,
        )
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    (u128::from(h.finish()) << 64)
        | u128::from(
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        )
}

pub fn app(name: &str, group: &str, url: &str) -> AppConfig {
    AppConfig {
        name: name.into(),
        group: group.into(),
        internal_url: url.into(),
        timeout_ms: 5_000,
        backend_ca_file: None,
        spki_sha256: Vec::new(),
        preserve_host: false,
        assertion: None,
    }
}

pub fn edge_file(state: &Path, jwks: &Path, apps: Vec<AppConfig>) -> EdgeConfigFile {
    EdgeConfigFile {
        state_dir: state.to_path_buf(),
        listen: EdgeListen {
            registration: "127.0.0.1:0".into(),
            tunnel: "127.0.0.1:0".into(),
            // Most tests speak to the edge as Envoy over TCP: asked for by name.
            insecure_envoy_h2c_tcp: Some("127.0.0.1:0".into()),
            metrics: Some("127.0.0.1:0".into()),
            ..EdgeListen::default()
        },
        server_names: vec!["localhost".into(), "127.0.0.1".into()],
        advertised_tunnel_addresses: Vec::new(),
        app_header: "x-portcullis-app".into(),
        trusted_proxies: vec!["127.0.0.1".into()],
        proxy_cookies: Default::default(),
        store: Default::default(),
        limits: Default::default(),
        outlier: Default::default(),
        admin: AdminConfig {
            jwks_file: Some(jwks.to_path_buf()),
            jwks_url: None,
            jwks_ca_file: None,
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            tenant_claim: "tid".into(),
            tenant: Some(TENANT.into()),
            roles_claim: "roles".into(),
            admin_roles: vec!["Connector.Admin".into()],
            groups_claim: "groups".into(),
            admin_groups: vec!["connector-admins".into()],
            leeway_seconds: 30,
            registrations_per_token: 1,
        },
        groups: vec!["default".into(), "other".into()],
        apps,
        client_cert_days: 365,
        connector_max_lifetime_days: 730,
        config_refresh_seconds: 300,
        keepalive_seconds: 5,
        ping_timeout_seconds: 3,
        drain_seconds: 5,
        connector_wait_ms: 0,
        max_request_headers_kb: 96,
        identity_headers: Vec::new(),
    }
}

pub struct Edge {
    pub handle: EdgeHandle,
    pub trigger: ShutdownTrigger,
    pub file: EdgeConfigFile,
}

pub async fn start_edge(file: EdgeConfigFile) -> Edge {
    let (trigger, shutdown) = Shutdown::new();
    let handle = edge::start(file.validate().unwrap(), shutdown)
        .await
        .unwrap();
    Edge {
        handle,
        trigger,
        file,
    }
}

impl Edge {
    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle.wait().await;
    }
    /// The edge's (insecure, test-only) TCP listener for Envoy.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.handle
            .insecure_tcp_addr
            .expect("insecure_envoy_h2c_tcp is set in tests")
    }
    pub fn register_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.handle.registration_addr.port())
    }
    pub fn ca_file(&self) -> PathBuf {
        self.file
            .state_dir
            .join(portcullis_connector::pki::CA_CERT_FILE)
    }
}

/// Registers a connector (state in `dir`) and returns its configuration file, tuned for tests.
pub async fn register(edge: &Edge, idp: &Idp, dir: &Path, group: &str) -> ConnectorConfigFile {
    connector::register(&RegisterOptions {
        edge_url: edge.register_url(),
        token: idp.admin_token(),
        state_dir: dir.to_path_buf(),
        group: Some(group.into()),
        trust: EdgeTrust::CaFile(edge.ca_file()),
    })
    .await
    .unwrap();
    let mut cfg = ConnectorConfigFile::load(&dir.join("connector.json")).unwrap();
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 500;
    cfg.keepalive_seconds = 2;
    cfg.drain_seconds = 5;
    cfg
}

pub struct Conn {
    pub handle: ConnectorHandle,
    pub trigger: ShutdownTrigger,
}

pub async fn start_connector(cfg: &ConnectorConfigFile) -> Conn {
    let (trigger, shutdown) = Shutdown::new();
    let handle = connector::start(cfg.validate().unwrap(), shutdown)
        .await
        .unwrap();
    Conn { handle, trigger }
}

impl Conn {
    pub async fn stop(self) {
        self.trigger.trigger();
        self.handle.wait().await;
    }
}

/// Waits until `cond` holds (polling), or panics after `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the edge has `n` tunnels.
pub async fn wait_tunnels(edge: &Edge, n: usize) {
    eventually(15, &format!("{n} tunnels"), || {
        edge.handle.tunnels().len() == n
    })
    .await;
}

// ------------------------------------------------------------ sample backend

fn query_u64(req: &Request<Incoming>, key: &str) -> u64 {
    portcullis_e2e::query_u64(req.uri().query(), key)
}

/// A stream of `n` bytes in 64 KiB chunks (pattern byte = offset % 251).
pub fn pattern_body(n: u64) -> BoxBody {
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= n {
            return None;
        }
        let len = (n - off).min(64 * 1024) as usize;
        let chunk: Vec<u8> = (0..len).map(|i| ((off + i as u64) % 251) as u8).collect();
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
            off + len as u64,
        ))
    });
    boxed(StreamBody::new(stream))
}

/// Sample app: `/echo` (request as JSON), `/bytes?n=` (n bytes), `/upload` (counts the
/// body and checks its pattern), `/slow?ms=`, `/drip?chunks=&ms=` (slow stream).
pub async fn sample_app(
    req: Request<Incoming>,
    name: &'static str,
    hits: Arc<AtomicU64>,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::Relaxed);
    match req.uri().path() {
        "/bytes" => {
            let n = query_u64(&req, "n");
            Response::builder()
                .header("content-length", n.to_string())
                .body(pattern_body(n))
                .unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut count = 0u64;
            let mut ok = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Response::builder()
                        .status(500)
                        .body(full("body error"))
                        .unwrap();
                };
                if let Some(d) = frame.data_ref() {
                    for (i, b) in d.iter().enumerate() {
                        if *b != ((count + i as u64) % 251) as u8 {
                            ok = false;
                        }
                    }
                    count += d.len() as u64;
                }
            }
            Response::new(full(
                json!({ "bytes": count, "pattern_ok": ok }).to_string(),
            ))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms"))).await;
            Response::new(full("slow done"))
        }
        "/drip" => {
            let chunks = query_u64(&req, "chunks");
            let ms = query_u64(&req, "ms");
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"tick\n"))),
                    i + 1,
                ))
            });
            Response::new(boxed(StreamBody::new(stream)))
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            let body = json!({
                "app": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(body.to_string()))
                .unwrap()
        }
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the sample app on a loopback port (HTTP/1.1).
pub async fn start_backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(sample_app(req, name, h).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Backend { addr, hits, task }
}

// ------------------------------------------------------------ client

pub type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A request to the edge's local listener for `app`.
pub fn req(edge: &Edge, app: &str, path: &str) -> http::request::Builder {
    Request::get(format!("http://{}{}", edge.local_addr(), path))
        .header("host", format!("{app}.example.test"))
        .header("x-portcullis-app", app)
}

/// Sends and collects: status, headers, body.
pub async fn send(client: &Client, req: Request<BoxBody>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

pub async fn get(
    client: &Client,
    edge: &Edge,
    app: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    send(
        client,
        req(edge, app, path)
            .body(portcullis_connector::body::empty())
            .unwrap(),
    )
    .await
}

/// The body of a plain GET, if it answered 200.
pub async fn http_text(url: &str) -> Option<String> {
    let req = Request::get(url)
        .body(portcullis_connector::body::empty())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client().request(req))
        .await
        .ok()?
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(bytes.to_vec()).ok()
}

pub fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

/// A quick world: idp, edge with app `hello` (group `default`) on a backend, one connector.
pub struct World {
    pub dir: tempfile::TempDir,
    pub idp: Idp,
    pub edge: Edge,
    pub backend: Backend,
}

pub async fn world(apps: impl FnOnce(&Backend) -> Vec<AppConfig>) -> World {
    world_with(apps, |_| {}).await
}

/// [`world`] with the edge's configuration changed by `tweak` first.
pub async fn world_with(
    apps: impl FnOnce(&Backend) -> Vec<AppConfig>,
    tweak: impl FnOnce(&mut EdgeConfigFile),
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    let apps = apps(&backend);
    let mut file = edge_file(&dir.path().join("edge"), &idp.jwks_path, apps);
    tweak(&mut file);
    let edge = start_edge(file).await;
    World {
        dir,
        idp,
        edge,
        backend,
    }
}

// ------------------------------------------------------------ raw tunnel peers

/// A TCP relay whose existing connections can be frozen (bytes stop, sockets stay open):
/// a peer that died without closing. Connections made after a freeze flow normally.
pub async fn freezable_relay(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let epoch = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let e = epoch.clone();
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let born = e.load(Ordering::SeqCst);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(ri) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(ro), Box::new(wi)),
            ] {
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if e.load(Ordering::SeqCst) != born {
                            // Frozen: swallow everything, never close.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, epoch)
}

/// The TLS client configuration of the connector registered in `dir` (its
/// `identity.pem` and `edge-ca.pem`), offering `alpn`.
pub fn connector_tls(dir: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use portcullis_connector::pki;
    let both = std::fs::read_to_string(dir.join("identity.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in
        pki::parse_certs_pem(&std::fs::read_to_string(dir.join("edge-ca.pem")).unwrap()).unwrap()
    {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pki::parse_certs_pem(&both).unwrap(),
            pki::parse_key_pem(&both).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// One call to the connectors' API (`GET /v1/config`, `POST /v1/renew`) with the
/// identity of the connector registered in `dir`: status and JSON answer.
pub async fn connector_api_call(
    tunnel_addr: SocketAddr,
    dir: &Path,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let tcp = tokio::net::TcpStream::connect(tunnel_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(connector_tls(dir, b"http/1.1"))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, BoxBody>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(match body {
            Some(b) => full(b.to_string()),
            None => portcullis_connector::body::empty(),
        })
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// A connector that is not one: it opens a tunnel with the identity registered in
/// `dir` and answers every request with `respond` (status, denial code).
pub async fn fake_connector(
    tunnel_addr: SocketAddr,
    dir: &Path,
    status: u16,
    code: &'static str,
) -> tokio::task::JoinHandle<()> {
    let config = connector_tls(dir, portcullis_connector::TUNNEL_ALPN);
    let tcp = tokio::net::TcpStream::connect(tunnel_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<Incoming>| async move {
            // Read the request whole, as a connector does before its backend fails.
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("x-portcullis-error", code)
                    .body(full(format!("{{\"error\":\"{code}\"}}")))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    })
}

/// The admin API of `edge` (registration port), trusted by its CA file.
pub fn admin_endpoint(edge: &Edge) -> portcullis_connector::connector::EdgeEndpoint {
    portcullis_connector::connector::EdgeEndpoint::new(
        &edge.register_url(),
        &EdgeTrust::CaFile(edge.ca_file()),
    )
    .unwrap()
}
