//! The exposed ports under abuse: admin tokens are single-use (or have a quota),
//! registration is rate-limited per source and capped in concurrency, and with a
//! descriptor limit of 1,024 a flood of idle sockets, half-open TLS handshakes and
//! partial headers neither locks out real connectors nor Envoy, and is cut by the
//! time-outs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use portcullis_connector::connector::{
    register as register_connector, ConnectorError, EdgeTrust, RegisterOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn hello(b: &Backend) -> Vec<portcullis_connector::config::AppConfig> {
    vec![app("hello", "default", &format!("http://{}", b.addr))]
}

async fn register_token(w: &World, token: &str, name: &str) -> Result<(), (u16, String)> {
    match register_connector(&RegisterOptions {
        edge_url: w.edge.register_url(),
        token: token.to_string(),
        state_dir: w.dir.path().join(name),
        group: None,
        trust: EdgeTrust::CaFile(w.edge.ca_file()),
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(ConnectorError::Refused { status, code, .. }) => Err((status, code)),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn an_admin_token_registers_one_connector_or_its_configured_quota() {
    let w = world(hello).await;
    let token = w.idp.admin_token();
    assert_eq!(register_token(&w, &token, "a1").await, Ok(()));
    for i in 0..3 {
        assert_eq!(
            register_token(&w, &token, &format!("again{i}")).await,
            Err((403, "token_used".to_string()))
        );
    }
    assert!(!w.dir.path().join("again0/identity.pem").exists());
    assert_eq!(w.edge.handle.metrics().registrations_with("ok"), 1);
    w.edge.stop().await;

    let w = world_with(hello, |f| f.admin.registrations_per_token = 3).await;
    let token = w.idp.admin_token();
    for i in 0..3 {
        assert_eq!(register_token(&w, &token, &format!("q{i}")).await, Ok(()));
    }
    assert_eq!(
        register_token(&w, &token, "q3").await,
        Err((403, "token_used".to_string()))
    );
    // A token without jti is counted by its hash.
    let claims = jwt_simple::prelude::Claims::with_custom_claims(
        serde_json::from_value::<serde_json::Map<String, serde_json::Value>>(
            serde_json::json!({"tid": TENANT, "roles": ["Connector.Admin"]}),
        )
        .unwrap(),
        jwt_simple::prelude::Duration::from_secs(600),
    )
    .with_issuer(ISSUER)
    .with_audience(AUDIENCE);
    use jwt_simple::prelude::ECDSAP256KeyPairLike as _;
    let no_jti = w.idp.key.sign(claims).unwrap();
    for i in 0..3 {
        assert_eq!(register_token(&w, &no_jti, &format!("h{i}")).await, Ok(()));
    }
    assert_eq!(
        register_token(&w, &no_jti, "h3").await,
        Err((403, "token_used".to_string()))
    );
    w.edge.stop().await;
}

/// Sends `n` requests (bad tokens) on one keep-alive TLS connection per worker;
/// returns the count of each status.
async fn flood(
    edge: &Edge,
    workers: usize,
    per_worker: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let addr = edge.handle.registration_addr;
        let ca = edge.ca_file();
        tasks.push(tokio::spawn(async move {
            let mut counts = std::collections::BTreeMap::new();
            let mut roots = rustls::RootCertStore::empty();
            for c in
                portcullis_connector::pki::parse_certs_pem(&std::fs::read_to_string(ca).unwrap())
                    .unwrap()
            {
                roots.add(c).unwrap();
            }
            let config =
                rustls::ClientConfig::builder_with_provider(portcullis_connector::pki::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                _,
                portcullis_connector::body::BoxBody,
            >(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
            tokio::spawn(conn);
            for _ in 0..per_worker {
                let req = http::Request::post("/v1/register")
                    .header("host", "localhost")
                    .header("authorization", "Bearer not.a.jwt")
                    .body(portcullis_connector::body::full("{\"csr_pem\":\"x\"}"))
                    .unwrap();
                sender.ready().await.unwrap();
                let resp = sender.send_request(req).await.unwrap();
                *counts.entry(resp.status().as_u16()).or_insert(0) += 1;
                use http_body_util::BodyExt as _;
                let _ = resp.into_body().collect().await;
            }
            counts
        }));
    }
    let mut all = std::collections::BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

#[tokio::test]
async fn a_registration_flood_from_one_source_is_rate_limited() {
    let w = world(hello).await;
    let t = Instant::now();
    let counts = flood(&w.edge, 10, 100).await;
    let processed = counts.get(&401).copied().unwrap_or(0);
    let limited = counts.get(&429).copied().unwrap_or(0);
    assert_eq!(processed + limited, 1000, "{counts:?}");
    // A burst of 20, then 1 a second.
    let allowed = 20 + t.elapsed().as_secs() as usize + 2;
    assert!(
        processed <= allowed,
        "{processed} processed in {:?}: {counts:?}",
        t.elapsed()
    );
    let m = w.edge.handle.metrics();
    assert_eq!(m.limited_with("registration_rate") as usize, limited);
    assert!(m
        .render()
        .contains("portcullis_edge_limited_total{limit=\"registration_rate\"}"));
    w.edge.stop().await;
}

#[tokio::test]
async fn registrations_beyond_the_concurrency_cap_are_refused_at_once() {
    let w = world_with(hello, |f| {
        f.limits.max_concurrent_registrations = 2;
        f.limits.registrations_per_minute_per_source = 6000;
    })
    .await;
    // Two registrations whose bodies never finish hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_to(
            w.edge.handle.registration_addr,
            &w.edge.ca_file(),
            "127.0.0.1",
        )
        .await;
        let head = format!(
            "POST /v1/register HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n{{",
            w.idp.admin_token()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        w.edge
            .handle
            .metrics()
            .registrations_in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        register_token(&w, &w.idp.admin_token(), "third").await,
        Err((503, "registration_busy".to_string()))
    );
    assert_eq!(
        w.edge
            .handle
            .metrics()
            .limited_with("registration_concurrency"),
        1
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        register_token(&w, &w.idp.admin_token(), "fourth").await,
        Ok(())
    );
    w.edge.stop().await;
}

/// A TLS client connection to `addr` from `source`, trusting `ca`.
async fn tls_to(
    addr: SocketAddr,
    ca: &std::path::Path,
    source: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_to(addr, ca, source).await.unwrap()
}

async fn try_tls_to(
    addr: SocketAddr,
    ca: &std::path::Path,
    source: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in
        portcullis_connector::pki::parse_certs_pem(&std::fs::read_to_string(ca).unwrap()).unwrap()
    {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(portcullis_connector::pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = connect_from(source, addr).await.ok()?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .ok()
}

async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{source}:0").parse().unwrap())?;
    s.connect(addr).await
}

/// The first bytes of a real TLS ClientHello (the rest never comes).
fn partial_client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(portcullis_connector::pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out.truncate(out.len() / 2);
    out
}

/// Whether the peer closed `s` (EOF or reset) within `wait`.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// GET through the edge's Unix socket for Envoy.
async fn via_envoy_socket(path: &std::path::Path) -> Result<u16, String> {
    let io = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        portcullis_connector::body::BoxBody,
    >(hyper_util::rt::TokioIo::new(io))
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/echo")
        .header("host", "hello.example.test")
        .header("x-portcullis-app", "hello")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

async fn metric(port: u16, name: &str) -> Option<u64> {
    let text = http_text(&format!("http://127.0.0.1:{port}/metrics")).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The edge's handshake and header-read time-outs in the flood test (5 s by default).
const FLOOD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the flood waits for the edge to close a slow connection.
const FLOOD_GRACE: Duration = Duration::from_secs(4);

/// What the flood saw.
#[derive(Debug, Default)]
struct FloodReport {
    /// Connections opened (the edge accepted the TCP connection).
    opened: usize,
    /// The longest a connection stayed open before the edge closed it.
    longest_held: Duration,
    /// Connections still open when the flood stopped, after the grace period.
    left_open: usize,
}

/// Slow and idle connections kept up by one task each: when the edge closes one,
/// the task opens another (after a short pause), until stopped.
struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, Duration, bool)>>,
}

#[derive(Clone, Copy)]
enum Slow {
    /// TCP connected, never a byte.
    Idle,
    /// Half a TLS ClientHello.
    HalfHandshake,
    /// TLS done, half a request head.
    PartialHeaders,
}

impl Flood {
    async fn start(tunnel: SocketAddr, registration: SocketAddr, ca: &std::path::Path) -> Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut plan = Vec::new();
        plan.extend((0..1_100).map(|i| (Slow::Idle, tunnel, format!("127.0.1.{}", 1 + i / 10))));
        plan.extend((0..100).map(|i| {
            (
                Slow::HalfHandshake,
                tunnel,
                format!("127.0.2.{}", 1 + i / 10),
            )
        }));
        plan.extend((0..100).map(|i| {
            (
                Slow::PartialHeaders,
                registration,
                format!("127.0.3.{}", 1 + i / 10),
            )
        }));
        plan.extend((0..50).map(|i| (Slow::Idle, registration, format!("127.0.4.{}", 1 + i / 10))));
        let hello = Arc::new(partial_client_hello());
        let mut tasks = Vec::new();
        for (kind, addr, source) in plan {
            let (stop, hello, ca) = (stop.clone(), hello.clone(), ca.to_path_buf());
            tasks.push(tokio::spawn(async move {
                let (mut opened, mut longest) = (0usize, Duration::ZERO);
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return (opened, longest, false);
                    }
                    let mut idle: Option<tokio::net::tcp::OwnedWriteHalf> = None;
                    let conn: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = match kind {
                        Slow::Idle => connect_from(&source, addr).await.ok().map(|s| {
                            let (r, w) = s.into_split();
                            idle = Some(w);
                            Box::new(r) as _
                        }),
                        Slow::HalfHandshake => match connect_from(&source, addr).await {
                            Ok(mut s) => {
                                let _ = s.write_all(&hello).await;
                                Some(Box::new(s) as _)
                            }
                            Err(_) => None,
                        },
                        Slow::PartialHeaders => match try_tls_to(addr, &ca, &source).await {
                            Some(mut tls) => {
                                let _ = tls
                                    .write_all(b"POST /v1/register HTTP/1.1\r\nhost: localhost\r\ncontent-")
                                    .await;
                                let _ = tls.flush().await;
                                Some(Box::new(tls) as _)
                            }
                            None => None,
                        },
                    };
                    let Some(mut conn) = conn else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    opened += 1;
                    let since = Instant::now();
                    // Held until the edge closes it, or the flood stops.
                    let mut buf = [0u8; 512];
                    let stopped_open = loop {
                        match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                            Ok(Ok(0)) | Ok(Err(_)) => break false,
                            Ok(Ok(_)) => {}
                            Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break true,
                            Err(_) => {}
                        }
                    };
                    if stopped_open {
                        // Does the edge still close this one? An idle connection the
                        // edge never accepted (the accept queue overflowed in a burst
                        // and the kernel dropped its last handshake packet) looks
                        // open from here forever: one byte makes the kernel settle
                        // it (reset, or handed to the edge, whose time-out closes it).
                        if let Some(s) = idle.as_mut() {
                            let _ = s.write_all(&hello[..1]).await;
                        }
                        let closed = closed_by_peer(&mut conn, FLOOD_GRACE).await;
                        longest = longest.max(since.elapsed());
                        return (opened, longest, !closed);
                    }
                    let held = since.elapsed();
                    longest = longest.max(held);
                    // Cut by a time-out: at once again. Refused at once: a pause, so
                    // the test's own machine is not flooded by reconnections.
                    let pause = if held >= FLOOD_TIMEOUT / 2 { 20 } else { 500 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }));
        }
        // Let every slot open its first connection, and the first time-outs strike.
        tokio::time::sleep(FLOOD_TIMEOUT + Duration::from_millis(500)).await;
        Flood { stop, tasks }
    }

    /// Stops re-opening; waits [`FLOOD_GRACE`] for the edge to close what is open.
    async fn stop(self) -> FloodReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut r = FloodReport::default();
        for t in self.tasks {
            let (opened, longest, open) = t.await.unwrap();
            r.opened += opened;
            r.longest_held = r.longest_held.max(longest);
            r.left_open += usize::from(open);
        }
        r
    }
}

#[tokio::test]
async fn with_1024_descriptors_a_flood_of_idle_and_slow_connections_locks_out_neither_connectors_nor_envoy(
) {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    let port = || portcullis_e2e::free_port().unwrap();
    let (reg_port, tunnel_port, metrics_port) = (port(), port(), port());
    let mut file = edge_file(&dir.path().join("edge"), &idp.jwks_path, hello(&backend));
    let socket = dir.path().join("envoy.sock");
    file.listen.registration = format!("127.0.0.1:{reg_port}");
    file.listen.tunnel = format!("127.0.0.1:{tunnel_port}");
    file.listen.metrics = Some(format!("127.0.0.1:{metrics_port}"));
    file.listen.insecure_envoy_h2c_tcp = None;
    file.listen.envoy_socket = Some(socket.clone());
    file.limits.handshake_timeout_ms = FLOOD_TIMEOUT.as_millis() as u64;
    file.limits.header_read_timeout_ms = FLOOD_TIMEOUT.as_millis() as u64;
    file.admin.registrations_per_token = 10;
    // Fewer unauthenticated places than the flood's 1,350 connections (the default
    // would be 256 here), so the flood keeps them all taken.
    file.limits.max_pending_connections = Some(64);
    let config = dir.path().join("edge.json");
    std::fs::write(&config, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
    // systemd's default: 1,024 descriptors, soft and hard.
    let mut edge = std::process::Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_portcullis-edge"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut edge);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(metrics_port, "portcullis_edge_tunnels_up")
        .await
        .is_none()
    {
        assert!(Instant::now() < deadline, "edge did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reg_addr: SocketAddr = format!("127.0.0.1:{reg_port}").parse().unwrap();
    let tunnel_addr: SocketAddr = format!("127.0.0.1:{tunnel_port}").parse().unwrap();
    let ca = dir.path().join("edge/connector-ca.pem");
    let reg = |name: &str| RegisterOptions {
        edge_url: format!("https://127.0.0.1:{reg_port}"),
        token: idp.admin_token(),
        state_dir: dir.path().join(name),
        group: None,
        trust: EdgeTrust::CaFile(ca.clone()),
    };
    register_connector(&reg("c1")).await.unwrap();
    let mut cfg = portcullis_connector::config::ConnectorConfigFile::load(
        &dir.path().join("c1/connector.json"),
    )
    .unwrap();
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 300;
    let c = start_connector(&cfg).await;
    let wait_up = |n: u64, secs: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while metric(metrics_port, "portcullis_edge_tunnels_up").await != Some(n) {
            assert!(Instant::now() < deadline, "{n} tunnels");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_up(2, 20).await;
    assert_eq!(via_envoy_socket(&socket).await, Ok(200));

    // The flood, from other sources (127.0.1.1 and up, ten connections each), kept
    // up the whole time: every connection the edge closes is opened again. 1,100
    // idle TCP connections to the tunnel port, 100 half-open TLS handshakes there,
    // 100 partial-header and 50 idle connections on the registration port.
    let t0 = Instant::now();
    let flood = Flood::start(tunnel_addr, reg_addr, &ca).await;
    println!("flood opened in {:?}", t0.elapsed());

    // Meanwhile: Envoy is served at once, a connector restarted gets its tunnels
    // back, and a new one registers (from the address connectors use, whose
    // budget the flood cannot take) and connects.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(
            via_envoy_socket(&socket).await,
            Ok(200),
            "Envoy served during the flood"
        );
        slowest = slowest.max(t.elapsed());
    }
    c.stop().await;
    wait_up(0, 10).await;
    let t = Instant::now();
    let c = start_connector(&cfg).await;
    wait_up(2, 10).await;
    let back = t.elapsed();
    register_connector(&reg("c2")).await.unwrap();
    let mut cfg2 = portcullis_connector::config::ConnectorConfigFile::load(
        &dir.path().join("c2/connector.json"),
    )
    .unwrap();
    cfg2.backoff_initial_ms = 50;
    let c2 = start_connector(&cfg2).await;
    wait_up(4, 10).await;
    println!("during the flood: slowest Envoy request {slowest:?}, connector back in {back:?}");
    // Without the caps the edge runs out of descriptors: Envoy waits for seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "an Envoy request took {slowest:?} during the flood"
    );
    assert_eq!(via_envoy_socket(&socket).await, Ok(200));

    // The edge cut every slow connection by its time-outs (2 s here; 5 s by
    // default): none was held longer, and the last ones close too.
    let report = flood.stop().await;
    println!("flood: {report:?}");
    assert!(report.opened >= 1_350, "{report:?}");
    assert_eq!(
        report.left_open, 0,
        "connections the edge left open: {report:?}"
    );
    assert!(
        report.longest_held < FLOOD_GRACE,
        "a slow connection lived {:?}: {report:?}",
        report.longest_held
    );
    assert_eq!(
        metric(metrics_port, "portcullis_edge_pending_connections").await,
        Some(0)
    );
    let text = http_text(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap();
    assert!(
        text.contains("limited_total{limit=\"handshake_timeout\"}"),
        "{text}"
    );
    assert!(
        text.contains("limited_total{limit=\"pending_global\"}"),
        "{text}"
    );
    c.stop().await;
    c2.stop().await;
}
