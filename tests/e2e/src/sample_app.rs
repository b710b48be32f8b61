//! The sample app: a tiny HTTP server that shows what an app behind Portcullis
//! receives. `/headers` echoes the request headers and cookies as JSON; every
//! other path answers a small HTML page. It counts requests per path so tests
//! can prove that some never reached it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tiny_http::{Header, Response, Server};

/// A running sample app.
pub struct SampleApp {
    addr: SocketAddr,
    hits: Arc<Mutex<BTreeMap<String, u64>>>,
    server: Arc<Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl SampleApp {
    /// Starts the app on `addr` (use port 0 for a free port) with `name` shown in its pages.
    pub fn start(addr: &str, name: &str) -> anyhow::Result<Self> {
        let server = Arc::new(Server::http(addr).map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("not an IP listener"))?;
        let hits: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        // A few handler threads, so the app is never the bottleneck of a benchmark.
        let threads = (0..4)
            .map(|_| {
                let (server, hits, stop, name) = (
                    Arc::clone(&server),
                    Arc::clone(&hits),
                    Arc::clone(&stop),
                    name.to_string(),
                );
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        handle(request, &hits, &name);
                    }
                })
            })
            .collect();
        Ok(Self {
            addr,
            hits,
            server,
            stop,
            threads,
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

impl std::fmt::Debug for SampleApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleApp")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn handle(mut request: tiny_http::Request, hits: &Mutex<BTreeMap<String, u64>>, name: &str) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    if let Ok(mut h) = hits.lock() {
        *h.entry(path.clone()).or_default() += 1;
    }
    let mut body_in = Vec::new();
    let _ = std::io::Read::read_to_end(request.as_reader(), &mut body_in);
    let response = if path == "/1k" {
        // A fixed 1 KiB body: the benchmark's upstream.
        Response::from_string("x".repeat(1023) + "\n")
            .add_header(header("content-type", "text/plain"))
    } else if path == "/headers" {
        let mut headers = serde_json::Map::new();
        let mut cookies = serde_json::Map::new();
        for h in request.headers() {
            let key = h.field.as_str().as_str().to_ascii_lowercase();
            let value = h.value.as_str().to_string();
            if key == "cookie" {
                for pair in value.split(';') {
                    let (k, v) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
                    cookies.insert(k.to_string(), serde_json::Value::String(v.to_string()));
                }
            }
            match headers.get_mut(&key) {
                Some(serde_json::Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(key, serde_json::Value::String(value));
                }
            }
        }
        let doc = serde_json::json!({
            "app": name,
            "method": request.method().as_str(),
            "url": url,
            "headers": headers,
            "cookies": cookies,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        Response::from_string(text).add_header(header("content-type", "application/json"))
    } else {
        let page = format!(
            "<!doctype html><html><head><title>{name}</title></head><body>\
             <h1>{name}</h1><p>You reached the app at <code>{}</code>.</p>\
             <p>See <a href=\"/headers\">/headers</a> for what the app receives.</p></body></html>\n",
            html_escape(&url)
        );
        Response::from_string(page).add_header(header("content-type", "text/html; charset=utf-8"))
    };
    let response = response.add_header(header("x-robots-tag", "all"));
    let _ = request.respond(response);
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

trait OptionalHeader {
    fn add_header(self, h: Option<Header>) -> Self;
}

impl<R: std::io::Read> OptionalHeader for Response<R> {
    fn add_header(self, h: Option<Header>) -> Self {
        match h {
            Some(h) => Response::with_header(self, h),
            None => self,
        }
    }
}
