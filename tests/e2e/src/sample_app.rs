//! The sample app: a small HTTP/1.1 server (hyper) that shows what an app
//! behind Portcullis receives. `/headers` echoes the request headers and
//! cookies as JSON; `/1k` answers a fixed 1 KiB body (the benchmarks'
//! upstream); `/bytes?n=N` streams N bytes (at most 1 GiB), `/upload` counts
//! the bytes of the request body as it streams in, `/slow?ms=M` answers after
//! M ms (at most 60 s) — the tunnel benchmarks' bulk and concurrency
//! endpoints; every other path answers a small HTML page. It counts requests
//! per path so tests can prove that some never reached it.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest body `/bytes` streams.
const MAX_BYTES: u64 = 1 << 30;
/// Longest delay `/slow` takes.
const MAX_SLOW_MS: u64 = 60_000;

type Hits = Arc<Mutex<BTreeMap<String, u64>>>;

/// A running sample app; stopped on drop.
#[derive(Debug)]
pub struct SampleApp {
    addr: SocketAddr,
    hits: Hits,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SampleApp {
    /// Starts the app on `addr` (use port 0 for a free port) with `name` shown in its pages.
    pub fn start(addr: &str, name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let hits: Hits = Arc::default();
        let name: Arc<str> = Arc::from(name);
        let internal: Arc<str> = Arc::from(format!("http://{addr}"));
        runtime.spawn(serve(listener, Arc::clone(&hits), name, internal));
        Ok(Self {
            addr,
            hits,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests reached `path` (query excluded).
    pub fn hits(&self, path: &str) -> u64 {
        self.hits
            .lock()
            .map(|h| h.get(path).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// How many requests reached the app in all.
    pub fn total_hits(&self) -> u64 {
        self.hits.lock().map(|h| h.values().sum()).unwrap_or(0)
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, hits: Hits, name: Arc<str>, internal: Arc<str>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (hits, name, internal) = (Arc::clone(&hits), Arc::clone(&name), Arc::clone(&internal));
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (hits, name, internal) =
                    (Arc::clone(&hits), Arc::clone(&name), Arc::clone(&internal));
                async move { Ok::<_, Infallible>(handle(req, &hits, &name, &internal).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type AppBody = BoxBody<Bytes, Infallible>;

fn respond(content_type: &str, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    hits: &Mutex<BTreeMap<String, u64>>,
    name: &str,
    internal: &str,
) -> Response<AppBody> {
    let url = req.uri().to_string();
    let path = req.uri().path().to_string();
    if let Ok(mut h) = hits.lock() {
        *h.entry(path.clone()).or_default() += 1;
    }
    let (parts, mut body) = req.into_parts();
    let mut received = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    let mut response = match path.as_str() {
        "/1k" => respond("text/plain", "x".repeat(1023) + "\n"),
        "/upload" => respond("text/plain", format!("{received}\n")),
        "/bytes" => {
            let n = crate::query_u64(parts.uri.query(), "n").min(MAX_BYTES);
            let mut r = Response::new(Repeat::new(n).boxed());
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut()
                .insert("content-length", hyper::header::HeaderValue::from(n));
            r
        }
        "/slow" => {
            let ms = crate::query_u64(parts.uri.query(), "ms").min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            respond("text/plain", "ok\n")
        }
        // What an app behind a proxy typically does wrong: redirects to its internal
        // URL and sets cookies for its internal host, without protections.
        "/redirect" => {
            let mut r = respond("text/plain", "moved\n");
            *r.status_mut() = hyper::StatusCode::FOUND;
            if let Ok(v) = format!("{internal}/landing?from=redirect").parse() {
                r.headers_mut().insert("location", v);
            }
            r
        }
        "/set-cookies" => {
            let host = internal.trim_start_matches("http://").split(':').next().unwrap_or("");
            let mut r = respond("text/plain", "cookies set\n");
            for c in [
                format!("app_session=s1; Path=/; Domain={host}"),
                "app_pref=dark; Path=/".to_string(),
                "__Host-portcullis=forged; Path=/; Secure".to_string(),
            ] {
                if let Ok(v) = c.parse() {
                    r.headers_mut().append("set-cookie", v);
                }
            }
            r
        }
        "/links" => respond(
            "text/html; charset=utf-8",
            format!("<!doctype html><a href=\"{internal}/a\">a</a> <img src=\"{internal}/b.png\"> <a href=\"https://example.org/\">x</a>\n"),
        ),
        "/headers" => {
            let mut headers = serde_json::Map::new();
            let mut cookies = serde_json::Map::new();
            for (key, value) in &parts.headers {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                if key == "cookie" {
                    for pair in value.split(';') {
                        let (k, v) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
                        cookies.insert(k.to_string(), serde_json::Value::String(v.to_string()));
                    }
                }
                match headers.get_mut(key.as_str()) {
                    Some(serde_json::Value::String(existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&value);
                    }
                    _ => {
                        headers.insert(key.to_string(), serde_json::Value::String(value));
                    }
                }
            }
            let doc = serde_json::json!({
                "app": name,
                "method": parts.method.as_str(),
                "url": url,
                "headers": headers,
                "cookies": cookies,
            });
            respond("application/json", serde_json::to_string_pretty(&doc).unwrap_or_default())
        }
        _ => respond(
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><title>{name}</title></head><body>\
                 <h1>{name}</h1><p>You reached the app at <code>{}</code>.</p>\
                 <p>See <a href=\"/headers\">/headers</a> for what the app receives.</p></body></html>\n",
                html_escape(&url)
            ),
        ),
    };
    // The app's own, weaker robots tag: the robots filter must replace it.
    response.headers_mut().insert(
        "x-robots-tag",
        hyper::header::HeaderValue::from_static("all"),
    );
    response
}

/// A body of `left` bytes sent in 64 KiB frames of one shared buffer.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Repeat {
    fn new(len: u64) -> Self {
        Self {
            left: len,
            chunk: Bytes::from(vec![b'z'; 64 * 1024]),
        }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        self.left -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::http_request;

    #[test]
    fn bulk_and_slow_endpoints() {
        let app = SampleApp::start("127.0.0.1:0", "t").unwrap();
        let addr = app.addr().to_string();
        let r = http_request(&addr, "GET", "/bytes?n=200000", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000);
        assert!(r.body.iter().all(|b| *b == b'z'));
        let r = http_request(&addr, "GET", "/bytes", &[], b"").unwrap();
        assert!(r.body.is_empty());
        let r = http_request(&addr, "POST", "/upload", &[], &[1u8; 70_000]).unwrap();
        assert_eq!(r.text().trim(), "70000");
        let started = std::time::Instant::now();
        let r = http_request(&addr, "GET", "/slow?ms=50", &[], b"").unwrap();
        assert_eq!(r.text().trim(), "ok");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(crate::query_u64(Some("n=5&ms=x"), "ms"), 0);
        assert_eq!(crate::query_u64(Some("a=1&n=5"), "n"), 5);
    }

    #[test]
    fn bytes_are_capped() {
        assert_eq!(Repeat::new(0).size_hint().exact(), Some(0));
        let app = SampleApp::start("127.0.0.1:0", "t").unwrap();
        let addr = app.addr().to_string();
        // Only the head: a body that large is not read here.
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /bytes?n=99999999999 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-length: {MAX_BYTES}")),
            "{head}"
        );
    }
}
