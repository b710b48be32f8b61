//! Side-by-side measurement: direct connection vs edge + tunnel + connector.
//!
//! `cargo run --profile native -p portcullis-connector --example tunnel_bench`
//!
//! Everything runs on loopback. The edge and the sample app run in this process; the
//! connector runs in a child process (this same binary, `--as-connector`), so its memory
//! (VmRSS from /proc) is its own. Env: `BENCH_MIB` (download/upload size, default 512),
//! `BENCH_REQUESTS` (sequential requests for latency, default 2000), `BENCH_STREAMS`
//! (concurrent streams, default 1000).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwt_simple::prelude::*;
use portcullis_connector::body::{boxed, empty, full, BoxBody};
use portcullis_connector::config::{
    AdminConfig, AppConfig, ConnectorConfigFile, EdgeConfigFile, EdgeListen,
};
use portcullis_connector::connector::{self, EdgeTrust, RegisterOptions};
use portcullis_connector::{edge, Shutdown};

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, BoxBody>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn query(req: &Request<Incoming>, key: &str) -> u64 {
    portcullis_e2e::query_u64(req.uri().query(), key)
}

async fn app(req: Request<Incoming>) -> Response<BoxBody> {
    match req.uri().path() {
        "/bytes" => {
            let n = query(&req, "n");
            let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
            let stream = futures_util::stream::unfold(0u64, move |off| {
                let chunk = chunk.clone();
                async move {
                    if off >= n {
                        return None;
                    }
                    let len = (n - off).min(chunk.len() as u64) as usize;
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..len))),
                        off + len as u64,
                    ))
                }
            });
            Response::new(boxed(StreamBody::new(stream)))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(f)) = body.frame().await {
                n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0);
            }
            Response::new(full(n.to_string()))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms"))).await;
            Response::new(full("ok"))
        }
        _ => Response::new(full("ok")),
    }
}

async fn start_app() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(
                        |r| async move { Ok::<_, Infallible>(app(r).await) },
                    );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn request(base: &str, path: &str, via_edge: bool) -> Request<BoxBody> {
    let mut r = Request::get(format!("{base}{path}"));
    if via_edge {
        r = r.header("x-portcullis-app", "bench");
    }
    r.body(empty()).unwrap_or_default()
}

async fn latency(
    client: &Client,
    base: &str,
    via_edge: bool,
    n: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n + 100 {
        let t = Instant::now();
        let resp = client.request(request(base, "/small", via_edge)).await?;
        let _ = resp.into_body().collect().await?;
        if i >= 100 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    Ok((pct(0.5), pct(0.99), mean))
}

async fn download(client: &Client, base: &str, via_edge: bool, n: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let resp = client
        .request(request(base, &format!("/bytes?n={n}"), via_edge))
        .await?;
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        got += f?.data_ref().map(|d| d.len() as u64).unwrap_or(0);
    }
    if got != n {
        return Err(anyhow!("short download: {got} of {n}"));
    }
    Ok(n as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64)
}

async fn upload(client: &Client, base: &str, via_edge: bool, n: u64) -> anyhow::Result<f64> {
    let chunk = Bytes::from(vec![0xa5; 64 * 1024]);
    let stream = futures_util::stream::unfold(0u64, move |off| {
        let chunk = chunk.clone();
        async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(chunk.len() as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..len))),
                off + len as u64,
            ))
        }
    });
    let mut r = Request::post(format!("{base}/upload"));
    if via_edge {
        r = r.header("x-portcullis-app", "bench");
    }
    let t = Instant::now();
    let resp = client
        .request(r.body(boxed(StreamBody::new(stream)))?)
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    if body != n.to_string().as_bytes() {
        return Err(anyhow!("upload count mismatch"));
    }
    Ok(n as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64)
}

async fn as_connector(config: &str) -> anyhow::Result<()> {
    let settings = ConnectorConfigFile::load(std::path::Path::new(config))?.validate()?;
    let (_trigger, shutdown) = Shutdown::new();
    connector::run(settings, shutdown).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--as-connector") {
        return as_connector(args.get(2).context("config path")?).await;
    }
    let mib = env_u64("BENCH_MIB", 512);
    let n_req = env_u64("BENCH_REQUESTS", 2000);
    let streams = env_u64("BENCH_STREAMS", 1000);
    let dir = tempfile::tempdir()?;
    let app_addr = start_app().await?;

    // Admin token issuer.
    let key = ES256KeyPair::generate().with_key_id("bench");
    let jwks = format!("{{\"keys\":[{}]}}", key.public_key().to_jwk());
    std::fs::write(dir.path().join("jwks.json"), jwks)?;
    let mut custom = serde_json::Map::new();
    custom.insert("tid".into(), "bench".into());
    custom.insert("roles".into(), serde_json::json!(["admin"]));
    let token = key.sign(
        Claims::with_custom_claims(custom, jwt_simple::prelude::Duration::from_mins(10))
            .with_issuer("bench-idp")
            .with_audience("portcullis-edge"),
    )?;

    let file = EdgeConfigFile {
        state_dir: dir.path().join("edge"),
        listen: EdgeListen {
            registration: "127.0.0.1:0".into(),
            tunnel: "127.0.0.1:0".into(),
            // The load generator speaks plain HTTP/1.1 over TCP: asked for by name.
            insecure_envoy_h2c_tcp: Some("127.0.0.1:0".into()),
            metrics: None,
            ..EdgeListen::default()
        },
        server_names: vec!["127.0.0.1".into()],
        advertised_tunnel_addresses: Vec::new(),
        app_header: "x-portcullis-app".into(),
        trusted_proxies: vec!["127.0.0.1".into()],
        proxy_cookies: Default::default(),
        store: Default::default(),
        limits: Default::default(),
        outlier: Default::default(),
        admin: AdminConfig {
            jwks_file: Some(dir.path().join("jwks.json")),
            jwks_url: None,
            jwks_ca_file: None,
            issuer: "bench-idp".into(),
            audience: "portcullis-edge".into(),
            tenant_claim: "tid".into(),
            tenant: Some("bench".into()),
            roles_claim: "roles".into(),
            admin_roles: vec!["admin".into()],
            groups_claim: "groups".into(),
            admin_groups: Vec::new(),
            leeway_seconds: 60,
            registrations_per_token: 1,
        },
        groups: vec!["default".into()],
        apps: vec![AppConfig {
            name: "bench".into(),
            group: "default".into(),
            internal_url: format!("http://{app_addr}"),
            timeout_ms: 60_000,
            backend_ca_file: None,
            spki_sha256: Vec::new(),
            preserve_host: false,
            assertion: None,
        }],
        client_cert_days: 365,
        connector_max_lifetime_days: 730,
        config_refresh_seconds: 300,
        keepalive_seconds: 5,
        ping_timeout_seconds: 3,
        drain_seconds: 5,
        connector_wait_ms: 2_000,
        max_request_headers_kb: 96,
        identity_headers: Vec::new(),
    };
    let (trigger, shutdown) = Shutdown::new();
    let edge = edge::start(file.validate()?, shutdown).await?;
    let state = dir.path().join("connector");
    connector::register(&RegisterOptions {
        edge_url: format!("https://127.0.0.1:{}", edge.registration_addr.port()),
        token,
        state_dir: state.clone(),
        group: None,
        trust: EdgeTrust::Fingerprint(edge.ca_fingerprint.clone()),
    })
    .await?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--as-connector")
        .arg(state.join("connector.json"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.tunnels().len() < 2 {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(anyhow!("tunnels did not come up"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client: Client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    let direct = format!("http://{app_addr}");
    let tunnel = edge.local_url().ok_or_else(|| anyhow!("no TCP listener"))?;
    let _ = client.request(request(&tunnel, "/small", true)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(pid);

    println!("portcullis tunnel bench (loopback, release build; connector in its own process)");
    let (d50, d99, dmean) = latency(&client, &direct, false, n_req).await?;
    let (t50, t99, tmean) = latency(&client, &tunnel, true, n_req).await?;
    println!("latency, {n_req} sequential small GETs (µs):");
    println!("  direct  p50 {d50:8.1}  p99 {d99:8.1}  mean {dmean:8.1}");
    println!("  tunnel  p50 {t50:8.1}  p99 {t99:8.1}  mean {tmean:8.1}");
    println!(
        "  added   p50 {:8.1}  p99 {:8.1}  mean {:8.1}",
        t50 - d50,
        t99 - d99,
        tmean - dmean
    );
    let n = mib << 20;
    let dd = download(&client, &direct, false, n).await?;
    let td = download(&client, &tunnel, true, n).await?;
    let du = upload(&client, &direct, false, n).await?;
    let tu = upload(&client, &tunnel, true, n).await?;
    println!("throughput, {mib} MiB single stream (MiB/s):");
    println!(
        "  download  direct {dd:8.1}  tunnel {td:8.1}  ({:.0}%)",
        td / dd * 100.0
    );
    println!(
        "  upload    direct {du:8.1}  tunnel {tu:8.1}  ({:.0}%)",
        tu / du * 100.0
    );

    // Concurrent streams held open by a slow backend.
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let client = client.clone();
        let r = request(&tunnel, "/slow?ms=4000", true);
        tasks.push(tokio::spawn(async move {
            match client.request(r).await {
                Ok(resp) => resp.status().is_success(),
                Err(_) => false,
            }
        }));
    }
    let mut peak_inflight = 0;
    let mut peak_rss = 0;
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let inflight: usize = edge.tunnels().iter().map(|t| t.inflight).sum();
        peak_inflight = peak_inflight.max(inflight);
        peak_rss = peak_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    println!("connector memory (VmRSS):");
    println!(
        "  2 idle tunnels:                 {:6.1} MiB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  {streams} concurrent streams:       {:6.1} MiB  (peak {peak_inflight} streams in flight, {ok}/{streams} ok)",
        peak_rss as f64 / 1024.0
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    trigger.trigger();
    edge.wait().await;
    Ok(())
}
