//! Open-loop load at a fixed rate (see `portcullis_e2e::loadgen`):
//!
//! `loadgen URL RATE SECONDS CONNECTIONS [HEADER: VALUE]...`
//!
//! Prints one JSON object: requests scheduled and completed, errors (non-2xx
//! or failed), achieved rate, and latency percentiles in µs, measured from each
//! request's scheduled time.

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use portcullis_e2e::loadgen::{scheduled_offset, summarise};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

struct Target {
    addr: String,
    authority: String,
    path: String,
    headers: Vec<(String, String)>,
}

fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((authority.to_string(), path.to_string()))
}

/// One keep-alive connection serving scheduled requests until the queue ends.
async fn worker(
    target: Arc<Target>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    let mut sender = None;
    loop {
        let Some(due) = queue.lock().await.recv().await else {
            break;
        };
        if sender.is_none() {
            sender = match TcpStream::connect(&target.addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            Some(s)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
        }
        let Some(s) = sender.as_mut() else {
            errors += 1;
            continue;
        };
        let mut req = Request::get(&target.path);
        if !target
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            req = req.header("host", &target.authority);
        }
        for (k, v) in &target.headers {
            req = req.header(k, v);
        }
        let Ok(req) = req.body(Empty::<Bytes>::new()) else {
            errors += 1;
            continue;
        };
        let ok = match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        if ok {
            latencies.push(due.elapsed().as_micros() as u64);
        } else {
            errors += 1;
            sender = None;
        }
    }
    (latencies, errors)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: loadgen URL RATE SECONDS CONNECTIONS [HEADER: VALUE]...");
    }
    let (authority, path) = parse_url(&args[0])?;
    let rate: u64 = args[1].parse().context("RATE")?;
    let seconds: u64 = args[2].parse().context("SECONDS")?;
    let connections: usize = args[3].parse().context("CONNECTIONS")?;
    let headers = args[4..]
        .iter()
        .map(|h| {
            h.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .context("headers are `Name: value`")
        })
        .collect::<Result<Vec<_>>>()?;
    let target = Arc::new(Target {
        addr: authority.clone(),
        authority,
        path,
        headers,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Mutex::new(rx));
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| tokio::spawn(worker(Arc::clone(&target), Arc::clone(&queue))))
        .collect();
    let total = rate * seconds;
    // The schedule runs on its own thread with the OS's sleep, which is far
    // finer than tokio's 1 ms timer: the tool's own lateness would otherwise
    // count as latency.
    let start = Instant::now();
    let scheduler = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + scheduled_offset(i, rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    let (mut latencies, mut errors) = (Vec::new(), 0);
    // The workers end when the scheduler has sent the last request.
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        errors += e;
    }
    if scheduler.join().is_err() {
        bail!("the scheduler thread failed");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = summarise(&mut latencies);
    println!(
        "{}",
        serde_json::json!({
            "scheduled": total, "completed": s.count, "errors": errors,
            "rate": rate, "achieved_rate": s.count as f64 / elapsed,
            "p50_us": s.p50_us, "p90_us": s.p90_us, "p99_us": s.p99_us,
            "p999_us": s.p999_us, "max_us": s.max_us,
        })
    );
    Ok(())
}
