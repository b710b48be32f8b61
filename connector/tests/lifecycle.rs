//! Connector lifecycle: the registry of issued connectors, revocation (admin API
//! and `portcullis-edge connectors`), persisted across restarts and agreed by two
//! edge processes on one Redis, and the absolute lifetime of an identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use portcullis_connector::connector::Stopped;

fn hello(b: &Backend) -> Vec<portcullis_connector::config::AppConfig> {
    vec![app("hello", "default", &format!("http://{}", b.addr))]
}

fn csr() -> serde_json::Value {
    let (_, csr) = portcullis_connector::pki::new_key_and_csr("t").unwrap();
    serde_json::json!({ "csr_pem": csr })
}

#[tokio::test]
async fn a_revoked_connector_loses_its_tunnels_within_a_second_and_copies_of_its_key_are_refused() {
    let w = world(hello).await;
    let dir = w.dir.path().join("c1");
    let cfg = register(&w.edge, &w.idp, &dir, "default").await;
    // The attacker's copy of the connector's state, taken before it is deleted.
    let copy = w.dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["identity.pem", "edge-ca.pem"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let id = c.handle.connector_id();
    let admin = admin_endpoint(&w.edge);

    // The registry knows it: group, serial, when and from where it was seen.
    let list = admin.list_connectors(&w.idp.admin_token()).await.unwrap();
    let entry = list.connectors.iter().find(|e| e.id == id).unwrap();
    assert_eq!(entry.group, "default");
    assert_eq!(entry.serial, c.handle.cert_serial());
    assert_eq!(entry.registered_by.as_deref(), Some("admin@tenant-a"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let entry = loop {
        let list = admin.list_connectors(&w.idp.admin_token()).await.unwrap();
        let entry = list.connectors.into_iter().find(|e| e.id == id).unwrap();
        if entry.last_address.is_some() || Instant::now() > deadline {
            break entry;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry.last_address.as_deref(), Some("127.0.0.1"));
    assert!(entry.first_seen.is_some() && entry.last_seen.is_some());
    assert!(entry.revoked.is_none());

    // The admin API takes only an admin's token.
    let not_admin = w.idp.token_with(
        serde_json::json!({"tid": TENANT, "roles": ["Reader"]}),
        600,
        AUDIENCE,
    );
    match admin.revoke_connector(&not_admin, &id, None).await {
        Err(portcullis_connector::connector::ConnectorError::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "not_admin"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.edge.handle.tunnels().len(), 2);

    // Revoke: every tunnel of it is gone within a second.
    let t = Instant::now();
    admin
        .revoke_connector(&w.idp.admin_token(), &id, Some("state copied".into()))
        .await
        .unwrap();
    eventually(1, "the revoked connector's tunnels dropped", || {
        w.edge.handle.tunnels().is_empty()
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // The copied key: no configuration, no renewal, no tunnel.
    let tunnel = w.edge.handle.tunnel_addr;
    let (status, body) = connector_api_call(tunnel, &copy, Method::GET, "/v1/config", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("connector_revoked"))
    );
    let (status, body) =
        connector_api_call(tunnel, &copy, Method::POST, "/v1/renew", Some(csr())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("connector_revoked"))
    );
    let fake = fake_connector(tunnel, &copy, 200, "none").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.edge.handle.tunnels().is_empty(),
        "no tunnel for a revoked connector"
    );
    assert!(fake.is_finished(), "the edge closed the copy's tunnel");

    // The connector itself learns it at its next pull and stops.
    let (status, _, body) = get(&client(), &w.edge, "hello", "/echo").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    let list = admin.list_connectors(&w.idp.admin_token()).await.unwrap();
    let entry = list.connectors.iter().find(|e| e.id == id).unwrap();
    let r = entry.revoked.as_ref().unwrap();
    assert_eq!(
        (r.by.as_str(), r.reason.as_deref()),
        ("admin@tenant-a", Some("state copied"))
    );
    assert!(w.edge.handle.metrics().errors_with("connector_revoked") >= 3);
    c.trigger.trigger();
    let stopped = tokio::time::timeout(Duration::from_secs(10), c.handle.wait())
        .await
        .unwrap();
    assert!(matches!(stopped, Stopped::Shutdown | Stopped::Revoked(_)));
    w.edge.stop().await;
}

#[tokio::test]
async fn the_connector_stops_when_its_configuration_pull_says_revoked() {
    let w = world(hello).await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    cfg.config_refresh_seconds = Some(1);
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    admin_endpoint(&w.edge)
        .revoke_connector(&w.idp.admin_token(), &c.handle.connector_id(), None)
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), c.handle.wait())
        .await
        .expect("the connector stops by itself");
    assert!(matches!(stopped, Stopped::Revoked(_)), "{stopped:?}");
    w.edge.stop().await;
}

#[tokio::test]
async fn revocation_survives_an_edge_restart_with_the_embedded_store() {
    let w = world(hello).await;
    let dir = w.dir.path().join("c1");
    let cfg = register(&w.edge, &w.idp, &dir, "default").await;
    let id = {
        let c = start_connector(&cfg).await;
        wait_tunnels(&w.edge, 2).await;
        let id = c.handle.connector_id();
        c.stop().await;
        id
    };
    admin_endpoint(&w.edge)
        .revoke_connector(&w.idp.admin_token(), &id, None)
        .await
        .unwrap();
    let file = w.edge.file.clone();
    w.edge.stop().await;
    // The stopped edge's last tasks may hold the embedded database a moment longer.
    let edge = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (trigger, shutdown) = portcullis_connector::Shutdown::new();
            match portcullis_connector::edge::start(file.validate().unwrap(), shutdown).await {
                Ok(handle) => {
                    break Edge {
                        handle,
                        trigger,
                        file,
                    }
                }
                Err(e) if Instant::now() < deadline && e.to_string().contains("already open") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (status, body) = connector_api_call(
        edge.handle.tunnel_addr,
        &dir,
        Method::GET,
        "/v1/config",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("connector_revoked"))
    );
    let _fake = fake_connector(edge.handle.tunnel_addr, &dir, 200, "none").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(edge.handle.tunnels().is_empty());
    edge.stop().await;
}

#[tokio::test]
async fn renewal_never_extends_an_identity_past_its_absolute_lifetime() {
    let w = world_with(hello, |f| {
        f.client_cert_days = 30;
        f.connector_max_lifetime_days = 45;
    })
    .await;
    let dir = w.dir.path().join("c1");
    register(&w.edge, &w.idp, &dir, "default").await;
    let tunnel = w.edge.handle.tunnel_addr;
    let not_after = |pem: &str| {
        let der = portcullis_connector::pki::parse_certs_pem(pem)
            .unwrap()
            .remove(0);
        portcullis_connector::pki::ConnectorIdentity::from_cert(&der)
            .unwrap()
            .not_after
    };
    let registered = std::time::SystemTime::now();
    let (status, body) =
        connector_api_call(tunnel, &dir, Method::POST, "/v1/renew", Some(csr())).await;
    assert_eq!(status, 200, "{body}");
    let end = not_after(body["certificate_pem"].as_str().unwrap());
    // 30 days from now, within the 45-day identity.
    // (The edge counts in whole seconds.)
    let thirty = Duration::from_secs(30 * 86_400);
    assert!(
        end + Duration::from_secs(2) >= registered + thirty
            && end <= std::time::SystemTime::now() + thirty,
        "a 30-day certificate: {:?} after the request",
        end.duration_since(registered)
    );
    // Near the identity's end: the certificate stops there; past it: refused.
    let registry = w.edge.handle.registry();
    let id = {
        let both = std::fs::read_to_string(dir.join("identity.pem")).unwrap();
        let der = portcullis_connector::pki::parse_certs_pem(&both)
            .unwrap()
            .remove(0);
        portcullis_connector::pki::ConnectorIdentity::from_cert(&der)
            .unwrap()
            .id
    };
    let mut record = registry.record(&id).await.unwrap().unwrap();
    let now = portcullis_connector::registry::unix_now();
    record.identity_expires_at = now + 5 * 86_400;
    registry.register(&record).await.unwrap();
    let (status, body) =
        connector_api_call(tunnel, &dir, Method::POST, "/v1/renew", Some(csr())).await;
    assert_eq!(status, 200, "{body}");
    let end = not_after(body["certificate_pem"].as_str().unwrap());
    let secs = end.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(secs <= now + 5 * 86_400, "cut at the identity's end");
    record.identity_expires_at = now + 60;
    registry.register(&record).await.unwrap();
    let (status, body) =
        connector_api_call(tunnel, &dir, Method::POST, "/v1/renew", Some(csr())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("identity_expired")),
        "{body}"
    );
    w.edge.stop().await;
}

// ------------------------------------------------------------ two edge processes, one Redis

struct EdgeProc {
    child: std::process::Child,
    config: std::path::PathBuf,
    tunnel: std::net::SocketAddr,
    registration: u16,
    metrics: u16,
    log: std::path::PathBuf,
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {}\n{log}", self.log.display());
        }
    }
}

fn edge_process(
    dir: &std::path::Path,
    name: &str,
    idp: &Idp,
    backend: &Backend,
    redis_url: &str,
) -> EdgeProc {
    let port = || portcullis_e2e::free_port().unwrap();
    let (registration, tunnel, metrics) = (port(), port(), port());
    let mut file = edge_file(&dir.join("edge-state"), &idp.jwks_path, hello(backend));
    file.listen.registration = format!("127.0.0.1:{registration}");
    file.listen.tunnel = format!("127.0.0.1:{tunnel}");
    file.listen.metrics = Some(format!("127.0.0.1:{metrics}"));
    file.store = serde_json::from_value(serde_json::json!({
        "backend": "redis", "url": redis_url, "prefix": "lifecycle"
    }))
    .unwrap();
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-edge"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    EdgeProc {
        child,
        config,
        tunnel: format!("127.0.0.1:{tunnel}").parse().unwrap(),
        registration,
        metrics,
        log: log_path,
    }
}

async fn tunnels_up(metrics_port: u16) -> Option<u64> {
    let text = http_text(&format!("http://127.0.0.1:{metrics_port}/metrics")).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_edge_tunnels_up "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_tunnels_up(metrics_port: u16, n: u64, secs: u64) -> Duration {
    let t = Instant::now();
    loop {
        if tunnels_up(metrics_port).await == Some(n) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{n} tunnels on :{metrics_port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_edge_processes_on_one_redis_agree_on_a_revocation_made_with_the_cli() {
    let redis = portcullis_e2e::redis::Redis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    let a = edge_process(dir.path(), "edge-a", &idp, &backend, &redis.url());
    let b = edge_process(dir.path(), "edge-b", &idp, &backend, &redis.url());
    wait_tunnels_up(a.metrics, 0, 20).await;
    wait_tunnels_up(b.metrics, 0, 20).await;
    // Register at edge A; the connector dials both.
    let cdir = dir.path().join("c1");
    portcullis_connector::connector::register(&portcullis_connector::connector::RegisterOptions {
        edge_url: format!("https://127.0.0.1:{}", a.registration),
        token: idp.admin_token(),
        state_dir: cdir.clone(),
        group: None,
        trust: portcullis_connector::connector::EdgeTrust::CaFile(
            dir.path().join("edge-state/connector-ca.pem"),
        ),
    })
    .await
    .unwrap();
    let mut cfg =
        portcullis_connector::config::ConnectorConfigFile::load(&cdir.join("connector.json"))
            .unwrap();
    cfg.edges = vec![a.tunnel.to_string(), b.tunnel.to_string()];
    cfg.tunnels_per_edge = 1;
    cfg.backoff_initial_ms = 50;
    let c = start_connector(&cfg).await;
    wait_tunnels_up(a.metrics, 1, 20).await;
    wait_tunnels_up(b.metrics, 1, 20).await;
    // Edge B knows the connector registered at A (one registry).
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, idp.admin_token()).unwrap();
    let cli = |edge: &EdgeProc, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-edge"))
            .arg("connectors")
            .args(args)
            .arg("--config")
            .arg(&edge.config)
            .arg("--token-file")
            .arg(&token_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&b, &["list"]);
    let id = c.handle.connector_id();
    assert!(
        listed.contains(&id) && listed.contains("127.0.0.1"),
        "{listed}"
    );
    // Revoke with the CLI at A: B drops its tunnel within a second too.
    let t = Instant::now();
    let out = cli(&a, &["revoke", &id, "--reason", "test"]);
    assert!(out.contains(&id), "{out}");
    wait_tunnels_up(a.metrics, 0, 1).await;
    wait_tunnels_up(b.metrics, 0, 1).await;
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let json: serde_json::Value = serde_json::from_str(&cli(&b, &["list", "--json"])).unwrap();
    let entry = json["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["revoked"]["reason"], "test");
    // Both refuse the connector from now on, and keep doing so after a restart.
    let (status, body) = connector_api_call(b.tunnel, &cdir, Method::GET, "/v1/config", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("connector_revoked"))
    );
    drop(b);
    let b = edge_process(dir.path(), "edge-b2", &idp, &backend, &redis.url());
    wait_tunnels_up(b.metrics, 0, 20).await;
    let (status, _) = connector_api_call(b.tunnel, &cdir, Method::GET, "/v1/config", None).await;
    assert_eq!(status, 403);
    c.trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.handle.wait()).await;
}

#[tokio::test]
async fn a_revoked_connectors_streams_in_flight_end_within_a_second() {
    let w = world(hello).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    // A long answer in flight (headers after 5 s), and a long download read slowly.
    let client = client();
    let slow = {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/slow?ms=5000")
            .body(portcullis_connector::body::empty())
            .unwrap();
        tokio::spawn(async move {
            match client.request(r).await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                    (Some(status), body.is_ok())
                }
                Err(_) => (None, false),
            }
        })
    };
    let download = {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/bytes?n=67108864")
            .body(portcullis_connector::body::empty())
            .unwrap();
        tokio::spawn(async move {
            let resp = client.request(r).await.unwrap();
            let mut body = resp.into_body();
            loop {
                match http_body_util::BodyExt::frame(&mut body).await {
                    Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    admin_endpoint(&w.edge)
        .revoke_connector(&w.idp.admin_token(), &c.handle.connector_id(), None)
        .await
        .unwrap();
    // The download in flight is cut with the tunnel, within a second.
    let finished = tokio::time::timeout(Duration::from_secs(2), download)
        .await
        .expect("the download ended at the revocation")
        .unwrap();
    assert!(!finished, "the revoked connector's download completed");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The answer it was preparing never arrives (the read waits for another
    // connector of the group, there is none: 502).
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the slow request ended")
        .unwrap();
    assert_eq!(status, Some(StatusCode::BAD_GATEWAY));
    c.trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.handle.wait()).await;
    w.edge.stop().await;
}
