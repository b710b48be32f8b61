//! The connector's client towards one app's backend: plain HTTP, or HTTPS verified
//! against a CA bundle and/or SPKI pins; hyper-util's pooled client (keep-alive
//! connections per app); per-app timeout.
//!
//! Retries, on reused connections only: hyper-util sends a request again when the
//! reused connection it was queued on closed before the request went out, and a
//! bodiless idempotent request whose reused connection failed before any answer
//! (a keep-alive connection the backend had just closed) is sent once more. A
//! failure on a fresh connection is never retried (the backend saw the request and
//! gave no answer): `backend_error`. A connect failure is `backend_unreachable`, and
//! the edge may try another connector.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::{empty, BoxBody};
use crate::config::AppSettings;
use crate::denial::{Code, Denial};
use crate::pki::{self, PinnedVerifier, PIN_MISMATCH};

/// Why a backend request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The backend's key is outside the pinned set.
    #[error("backend certificate public key is not in the pinned set (spki_sha256)")]
    PinMismatch,
    /// The backend's certificate did not verify against the CA bundle.
    #[error("backend certificate not trusted: {0}")]
    Untrusted(String),
    /// No response headers within the app's timeout.
    #[error("backend did not answer within {0} ms")]
    Timeout(u64),
    /// HTTP-level failure.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// The backend settings cannot be used.
    #[error("backend settings unusable: {0}")]
    Settings(String),
}

impl BackendError {
    /// The gateway error the client sees.
    pub fn denial(&self, app: &str) -> Denial {
        let code = match self {
            BackendError::Unreachable(_) => Code::BackendUnreachable,
            BackendError::PinMismatch => Code::BackendPinMismatch,
            BackendError::Untrusted(_) => Code::BackendTlsUntrusted,
            BackendError::Timeout(_) => Code::BackendTimeout,
            BackendError::Protocol(_) => Code::BackendError,
            BackendError::Settings(_) => Code::BackendMisconfigured,
        };
        Denial::explained(code, format!("App `{app}`: {self}."))
    }
}

fn tls_error(e: &std::io::Error) -> BackendError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::General(m)) if m == PIN_MISMATCH => BackendError::PinMismatch,
        Some(rustls::Error::InvalidCertificate(c)) => BackendError::Untrusted(format!("{c:?}")),
        Some(other) => BackendError::Untrusted(other.to_string()),
        None => BackendError::Unreachable(e.to_string()),
    }
}

/// Dials one app's backend (its URL's host and port, whatever the request URI says).
#[derive(Clone)]
struct Dialer {
    authority: String,
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// A backend connection: plain or TLS, with the count of answers it gave.
struct Stream {
    io: Io,
    answered: Answered,
}

enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Responses a backend connection has given (carried as its `Connected` extra, so
/// a failed request tells whether its connection was a reused one).
#[derive(Clone, Default)]
struct Answered(Arc<AtomicU64>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.answered.clone())
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = Stream;
    type Error = BackendError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BackendError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BackendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = this.timeout;
            let ms = timeout.as_millis() as u64;
            let connect = async {
                let host = this.host.trim_start_matches('[').trim_end_matches(']');
                let tcp = TcpStream::connect((host, this.port))
                    .await
                    .map_err(|e| BackendError::Unreachable(format!("{}: {e}", this.authority)))?;
                let _ = tcp.set_nodelay(true);
                match &this.tls {
                    Some((connector, name)) => {
                        let tls = connector
                            .connect(name.clone(), tcp)
                            .await
                            .map_err(|e| tls_error(&e))?;
                        Ok(Io::Tls(Box::new(TokioIo::new(tls))))
                    }
                    None => Ok(Io::Plain(TokioIo::new(tcp))),
                }
            };
            let io = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| BackendError::Timeout(ms))??;
            Ok(Stream {
                io,
                answered: Answered::default(),
            })
        })
    }
}

/// A backend of one app.
pub struct Backend {
    /// The app's settings.
    pub app: AppSettings,
    authority: String,
    base_path: String,
    scheme: &'static str,
    client: hyper_util::client::legacy::Client<Dialer, BoxBody>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("app", &self.app.name)
            .finish_non_exhaustive()
    }
}

/// Idle keep-alive connections kept per app.
const POOL_MAX_IDLE: usize = 64;
/// How long an idle backend connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Counts an answer on the connection that gave it.
fn answered(resp: Response<Incoming>) -> Response<Incoming> {
    if let Some(a) = resp.extensions().get::<Answered>() {
        a.0.fetch_add(1, Ordering::Relaxed);
    }
    resp
}

/// Whether the connection a request failed on had answered before (a reused one).
fn reused(e: &hyper_util::client::legacy::Error) -> bool {
    let mut extras = http::Extensions::new();
    if let Some(c) = e.connect_info() {
        c.get_extras(&mut extras);
    }
    extras
        .get::<Answered>()
        .is_some_and(|a| a.0.load(Ordering::Relaxed) > 0)
}

/// The first [`BackendError`] in an error's chain.
fn backend_error(e: &(dyn std::error::Error + 'static)) -> Option<BackendError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<BackendError>() {
            return Some(b.clone());
        }
        cur = err.source();
    }
    None
}

impl Backend {
    /// Builds the client for `app`.
    pub fn new(app: AppSettings) -> Result<Arc<Self>, BackendError> {
        let uri: Uri = app
            .internal_url
            .parse()
            .map_err(|_| BackendError::Settings("internal_url".into()))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| BackendError::Settings("internal_url has no host".into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let base_path = uri.path().trim_end_matches('/').to_string();
        let tls = if https {
            let roots = match &app.backend_ca_pem {
                Some(pem) => {
                    pki::parse_certs_pem(pem).map_err(|e| BackendError::Settings(e.to_string()))?
                }
                None => Vec::new(),
            };
            let pins = app
                .spki_sha256
                .iter()
                .filter_map(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
                .filter_map(|b| <[u8; 32]>::try_from(b).ok())
                .collect();
            let verifier = PinnedVerifier::new(roots, pins)
                .map_err(|e| BackendError::Settings(e.to_string()))?;
            let mut config = rustls::ClientConfig::builder_with_provider(pki::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| BackendError::Settings(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name =
                ServerName::try_from(bare).map_err(|e| BackendError::Settings(e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let dialer = Dialer {
            authority: authority.clone(),
            host,
            port,
            timeout: Duration::from_millis(app.timeout_ms),
            tls,
        };
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(dialer);
        Ok(Arc::new(Self {
            app,
            authority,
            base_path,
            scheme: if https { "https" } else { "http" },
            client,
        }))
    }

    /// The `Host` the backend expects (its URL's authority).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path on the backend for a request path (`base_path` + `path_and_query`).
    pub fn backend_path(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base_path, path_and_query)
    }

    /// Sends `req` (origin-form URI, headers ready) and waits for the response headers.
    /// The app's timeout covers connecting and, once the request body has been sent
    /// (`body_done` fires or is dropped; `None` = no body), the wait for the response
    /// headers — a long upload is not cut short. The response body streams afterwards.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<BoxBody>,
        body_done: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, BackendError> {
        let timeout = Duration::from_millis(self.app.timeout_ms);
        let timed_out = || BackendError::Timeout(self.app.timeout_ms);
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        *req.uri_mut() = format!("{}://{}{pq}", self.scheme, self.authority)
            .parse()
            .map_err(|_| BackendError::Settings("request path".into()))?;
        // A bodiless idempotent request can be sent again as it is.
        let again = (body_done.is_none() && idempotent(req.method())).then(|| {
            let mut r = Request::new(empty());
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            r
        });
        let client = self.client.clone();
        let fut = async move {
            let classify = |e: &hyper_util::client::legacy::Error| match backend_error(e) {
                Some(b) => Err(b),
                None if e.is_connect() => Err(BackendError::Unreachable(crate::error_chain(e))),
                None => Ok(BackendError::Protocol(crate::error_chain(e))),
            };
            match client.request(req).await {
                Ok(r) => Ok(answered(r)),
                Err(e) => {
                    // A reused connection that failed before any answer (one the
                    // backend had just closed): once more for a request that may be
                    // repeated. A fresh connection's failure is the backend's answer.
                    let failed = classify(&e)?;
                    match again {
                        Some(r) if reused(&e) => match client.request(r).await {
                            Ok(r) => Ok(answered(r)),
                            Err(e) => Err(match classify(&e) {
                                Ok(b) | Err(b) => b,
                            }),
                        },
                        _ => Err(failed),
                    }
                }
            }
        };
        tokio::pin!(fut);
        if let Some(done) = body_done {
            tokio::select! {
                r = &mut fut => return r,
                _ = done => {}
            }
        }
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| timed_out())?
    }
}

/// A one-shot GET of `url` (http, or https verified against `ca_file`), body whole
/// (at most 1 MiB). Used for the JWKS.
pub async fn fetch_url(url: &str, ca_file: Option<&Path>) -> Result<Vec<u8>, BackendError> {
    fetch_url_as(url, ca_file, None).await
}

/// [`fetch_url`] with another `Host` than the URL's (e.g. an app's name in front
/// of Envoy's address).
pub async fn fetch_url_as(
    url: &str,
    ca_file: Option<&Path>,
    host: Option<&str>,
) -> Result<Vec<u8>, BackendError> {
    let ca_pem = match ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| BackendError::Settings(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| BackendError::Settings("bad URL".into()))?;
    let app = AppSettings {
        name: "jwks".into(),
        group: String::new(),
        internal_url: format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        ),
        timeout_ms: 10_000,
        backend_ca_pem: ca_pem,
        spki_sha256: Vec::new(),
        preserve_host: false,
    };
    let backend = Backend::new(app)?;
    let req = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, host.unwrap_or(backend.authority()))
        .header(http::header::ACCEPT, "application/json")
        .body(empty())
        .map_err(|e| BackendError::Settings(e.to_string()))?;
    let resp = backend.send(req, None).await?;
    if !resp.status().is_success() {
        return Err(BackendError::Protocol(format!("status {}", resp.status())));
    }
    let limited = http_body_util::Limited::new(resp.into_body(), 1 << 20);
    let bytes: Bytes = limited
        .collect()
        .await
        .map_err(|e| BackendError::Protocol(e.to_string()))?
        .to_bytes();
    Ok(bytes.to_vec())
}
