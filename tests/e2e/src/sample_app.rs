//! The sample app: a small HTTP/1.1 server (hyper) that shows what an app
//! behind Portcullis receives. `/headers` echoes the request headers and
//! cookies as JSON; `/1k` answers a fixed 1 KiB body (the benchmarks'
//! upstream); every other path answers a small HTML page. It counts requests
//! per path so tests can prove that some never reached it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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

fn respond(content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
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
) -> Response<Full<Bytes>> {
    let url = req.uri().to_string();
    let path = req.uri().path().to_string();
    if let Ok(mut h) = hits.lock() {
        *h.entry(path.clone()).or_default() += 1;
    }
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let mut response = match path.as_str() {
        "/1k" => respond("text/plain", "x".repeat(1023) + "\n"),
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

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
