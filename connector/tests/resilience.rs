//! Failure detection: a failing connector is taken out of rotation, a silent one is
//! found within 10 s with the default liveness settings (and its idempotent
//! requests retried elsewhere), a busy one is never taken for a silent one, and a
//! connector whose edge never answers TLS keeps retrying and still stops at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt as _;

fn hello(b: &Backend) -> Vec<portcullis_connector::config::AppConfig> {
    vec![app("hello", "default", &format!("http://{}", b.addr))]
}

#[tokio::test]
async fn one_connector_of_three_answering_502_at_once_is_ejected_and_99_percent_succeed() {
    // Its backend unreachable from where it runs (the app never sees the request,
    // so reads are also retried elsewhere), or its backend failing (nothing may be
    // retried: only ejection keeps the requests away).
    for code in ["backend_unreachable", "backend_error"] {
        one_bad_connector_of_three(code).await;
    }
}

async fn one_bad_connector_of_three(code: &'static str) {
    let w = world(hello).await;
    let mut good = Vec::new();
    for name in ["good1", "good2"] {
        let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join(name), "default").await;
        cfg.tunnels_per_edge = 1;
        good.push(start_connector(&cfg).await);
    }
    // The third connector fails every request at once.
    let bad_dir = w.dir.path().join("bad");
    register(&w.edge, &w.idp, &bad_dir, "default").await;
    let _bad = fake_connector(w.edge.handle.tunnel_addr, &bad_dir, 502, code).await;
    wait_tunnels(&w.edge, 3).await;
    let client = client();
    let total = 1000;
    let workers = 6;
    let mut tasks = Vec::new();
    for wk in 0..workers {
        let client = client.clone();
        let addr = w.edge.local_addr();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut failed = Vec::new();
            for i in (wk..total).step_by(workers) {
                // Reads (retried when the connector never delivered them) and
                // writes with a body (never retried) alike.
                let r = http::Request::builder()
                    .uri(format!("http://{addr}/echo"))
                    .header("host", "hello.example.test")
                    .header("x-portcullis-app", "hello");
                let r = if i % 3 == 0 {
                    r.method("POST")
                        .body(portcullis_connector::body::full(format!("write {i}")))
                } else {
                    r.body(portcullis_connector::body::empty())
                }
                .unwrap();
                let (status, headers, _) = send(&client, r).await;
                if status == StatusCode::OK {
                    ok += 1;
                } else {
                    failed.push((i, status, headers.get("x-portcullis-error").cloned()));
                }
            }
            (ok, failed)
        }));
    }
    let mut ok = 0;
    let mut failed = Vec::new();
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        ok * 100 >= total * 99,
        "{code}: {ok}/{total} succeeded; failures {failed:?}"
    );
    let m = w.edge.handle.metrics();
    println!("{code}: {ok}/{total} succeeded");
    assert!(m.ejections_total.load(Ordering::Relaxed) >= 1);
    assert!(m.render().contains("portcullis_edge_connectors_ejected 1"));
    for c in good {
        c.stop().await;
    }
    w.edge.stop().await;
}

#[tokio::test]
async fn a_silent_connector_is_dropped_within_10_s_by_default_and_its_reads_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    // The default liveness settings of both sides, as an operator gets them.
    let defaults: portcullis_connector::config::EdgeConfigFile =
        serde_json::from_value(serde_json::json!({
            "state_dir": "/x", "groups": ["default"],
            "admin": {"jwks_file": "/x", "issuer": "i", "audience": "a", "admin_roles": ["r"]}
        }))
        .unwrap();
    let mut file = edge_file(&dir.path().join("edge"), &idp.jwks_path, hello(&backend));
    file.keepalive_seconds = defaults.keepalive_seconds;
    file.ping_timeout_seconds = defaults.ping_timeout_seconds;
    let edge = start_edge(file).await;
    let connector_defaults = portcullis_connector::config::ConnectorConfigFile::with_defaults(
        "/x".into(),
        vec![],
        "localhost".into(),
    );
    let (relay, freeze) = freezable_relay(edge.handle.tunnel_addr).await;
    let mut frozen_cfg = register(&edge, &idp, &dir.path().join("frozen"), "default").await;
    frozen_cfg.edges = vec![relay.to_string()];
    frozen_cfg.keepalive_seconds = connector_defaults.keepalive_seconds;
    frozen_cfg.ping_timeout_seconds = connector_defaults.ping_timeout_seconds;
    let frozen = start_connector(&frozen_cfg).await;
    wait_tunnels(&edge, 2).await;
    let frozen_tunnels: Vec<u64> = edge.handle.tunnels().iter().map(|t| t.id).collect();
    let mut live_cfg = register(&edge, &idp, &dir.path().join("live"), "default").await;
    live_cfg.keepalive_seconds = connector_defaults.keepalive_seconds;
    live_cfg.ping_timeout_seconds = connector_defaults.ping_timeout_seconds;
    let live = start_connector(&live_cfg).await;
    wait_tunnels(&edge, 4).await;

    // SIGSTOP, as the network sees it: bytes stop, the sockets stay open.
    freeze.fetch_add(1, Ordering::SeqCst);
    let t = Instant::now();
    let client = client();
    let mut reads = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let r = req(&edge, "hello", "/echo")
            .body(portcullis_connector::body::empty())
            .unwrap();
        reads.push(tokio::spawn(async move {
            let resp = client.request(r).await.unwrap();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            (status, Instant::now())
        }));
    }
    for r in reads {
        let (status, at) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK, "a read is retried on a live tunnel");
        assert!(
            at.duration_since(t) < Duration::from_secs(10),
            "{:?}",
            at.duration_since(t)
        );
    }
    eventually(10, "the silent connector's tunnels dropped", || {
        edge.handle
            .tunnels()
            .iter()
            .all(|x| !frozen_tunnels.contains(&x.id))
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "found after {:?}",
        t.elapsed()
    );
    assert!(
        edge.handle.metrics().errors_with("tunnel_dead_peer") >= 1
            || t.elapsed() < Duration::from_secs(10)
    );
    frozen.handle.abort();
    live.stop().await;
    edge.stop().await;
}

#[tokio::test]
async fn a_busy_tunnel_with_a_slow_reader_is_never_taken_for_a_silent_one() {
    let w = world_with(hello, |f| {
        f.keepalive_seconds = 1;
        f.ping_timeout_seconds = 1;
    })
    .await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    cfg.keepalive_seconds = 1;
    cfg.ping_timeout_seconds = 1;
    cfg.tunnels_per_edge = 1;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 1).await;
    let client = client();
    // Several large downloads read slowly (flow control stalls the tunnel's
    // streams for seconds), and many small requests at once.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/bytes?n=16777216")
            .body(portcullis_connector::body::empty())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let resp = client.request(r).await.unwrap();
            let mut body = resp.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                n += frame.unwrap().data_ref().map(|d| d.len()).unwrap_or(0);
                if n % (4 << 20) < 65_536 {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                }
            }
            n
        }));
    }
    for _ in 0..200 {
        let (status, _, _) = get(&client, &w.edge, "hello", "/echo").await;
        assert_eq!(status, StatusCode::OK);
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 16 << 20);
    }
    assert_eq!(w.edge.handle.metrics().errors_with("tunnel_dead_peer"), 0);
    assert_eq!(c.handle.metrics().errors_with("tunnel_dead_peer"), 0);
    assert_eq!(w.edge.handle.tunnels().len(), 1);
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn a_connector_whose_edge_never_answers_tls_keeps_retrying_and_stops_at_once() {
    let w = world(hello).await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    w.edge.stop().await;
    // An "edge" that accepts TCP and never says a word.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.edges = vec![mute.local_addr().unwrap().to_string()];
    cfg.connect_timeout_seconds = 1;
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 200;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            if let Ok((s, _)) = mute.accept().await {
                open.push(s);
            }
        }
    });
    let c = start_connector(&cfg).await;
    let m = c.handle.metrics();
    eventually(8, "attempt after attempt", || {
        m.errors_with("tunnel_connect_failed") >= 6
    })
    .await;
    let t = Instant::now();
    c.trigger.trigger();
    tokio::time::timeout(Duration::from_secs(2), c.handle.wait())
        .await
        .expect("shutdown ends while dialling");
    assert!(t.elapsed() < Duration::from_secs(2));
    held.abort();
}

#[tokio::test]
async fn a_request_waits_for_the_only_connector_to_come_back() {
    let w = world_with(hello, |f| f.connector_wait_ms = 3_000).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    c.handle.abort();
    eventually(5, "tunnels gone", || w.edge.handle.tunnels().is_empty()).await;
    let client = client();
    let asked = {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/echo")
            .body(portcullis_connector::body::empty())
            .unwrap();
        tokio::spawn(async move { client.request(r).await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = start_connector(&cfg).await;
    assert_eq!(asked.await.unwrap(), StatusCode::OK);
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn shutdown_tells_envoy_goaway_finishes_what_is_in_flight_and_closes_the_tunnels() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let w = world_with(hello, |f| f.drain_seconds = 30).await;
    let dir = w.dir.path().join("c1");
    register(&w.edge, &w.idp, &dir, "default").await;
    // A tunnel served by hand (`/slow` answers after a second), to see how the
    // edge ends it.
    let tcp = tokio::net::TcpStream::connect(w.edge.handle.tunnel_addr)
        .await
        .unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(connector_tls(&dir, portcullis_connector::TUNNEL_ALPN))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
    let tunnel = tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
            TokioIo::new(tls),
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    portcullis_connector::body::full("ok"),
                ))
            }),
        ),
    );
    wait_tunnels(&w.edge, 1).await;
    // Envoy's side: one HTTP/2 connection.
    let tcp = tokio::net::TcpStream::connect(w.edge.local_addr())
        .await
        .unwrap();
    let (envoy, envoy_conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        portcullis_connector::body::BoxBody,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    let envoy_conn = tokio::spawn(envoy_conn);
    let ask = |path: &str| {
        let mut envoy = envoy.clone();
        let r = http::Request::get(format!("http://hello.example.test{path}"))
            .header("x-portcullis-app", "hello")
            .body(portcullis_connector::body::empty())
            .unwrap();
        async move { envoy.send_request(r).await.map(|r| r.status()) }
    };
    assert_eq!(ask("/echo").await.unwrap(), StatusCode::OK);
    let slow = tokio::spawn(ask("/slow"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    w.edge.trigger.trigger();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Envoy was told GOAWAY: a new request on its connection is refused at the
    // HTTP/2 level (Envoy retries it on another edge), not answered with an error.
    match ask("/echo").await {
        Err(e) => println!("new request refused: {e}"),
        Ok(status) => panic!("a new request was answered {status} during the drain"),
    }
    // What was in flight finishes; then the tunnel and Envoy's connection end
    // cleanly and the edge stops, long before the 30 s drain.
    assert_eq!(slow.await.unwrap().unwrap(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(3), tunnel)
        .await
        .expect("the tunnel ends")
        .unwrap();
    assert!(ended.is_ok(), "the tunnel ended with an error: {ended:?}");
    let ended = tokio::time::timeout(Duration::from_secs(3), envoy_conn)
        .await
        .expect("Envoy's connection ends")
        .unwrap();
    assert!(
        ended.is_ok(),
        "Envoy's connection ended with an error: {ended:?}"
    );
    tokio::time::timeout(Duration::from_secs(3), w.edge.handle.wait())
        .await
        .expect("the edge stops once nothing is in flight");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
