//! In-process end-to-end tests: edge + connector + sample app on port 0.

mod common;

use common::*;
use http::StatusCode;

fn hello(b: &Backend) -> Vec<portcullis_connector::config::AppConfig> {
    vec![app("hello", "default", &format!("http://{}", b.addr))]
}

#[tokio::test]
async fn request_goes_through_the_tunnel_with_forwarded_headers_and_no_proxy_cookie() {
    let w = world(hello).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    let r = req(&w.edge, "hello", "/echo?x=1")
        .header("cookie", "__Host-portcullis=secret; theme=dark; portcullis_state=x; PORTCULLIS-x=y")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "rid-123")
        .header("x-forwarded-user", "alice")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let (status, _, body) = send(&client, r).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let v = json(&body);
    let h = &v["headers"];
    assert_eq!(v["uri"], "/echo?x=1");
    assert_eq!(h["cookie"], "theme=dark");
    assert_eq!(h["x-request-id"], "rid-123");
    assert_eq!(h["x-forwarded-user"], "alice");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "hello.example.test");
    assert_eq!(h["host"], w.backend.addr.to_string());
    assert!(h.get("x-portcullis-app").is_none());
    assert_eq!(w.backend.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    c.stop().await;
    w.edge.stop().await;
}

async fn register_with(w: &World, token: String, dir: &std::path::Path) -> Result<(), (u16, String)> {
    use portcullis_connector::connector::{register, ConnectorError, EdgeTrust, RegisterOptions};
    match register(&RegisterOptions {
        edge_url: w.edge.register_url(),
        token,
        state_dir: dir.to_path_buf(),
        group: None,
        trust: EdgeTrust::CaFile(w.edge.ca_file()),
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(ConnectorError::Refused { status, code, .. }) => Err((status, code)),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn registration_is_allowed_for_an_admin_and_refused_with_a_reason_otherwise() {
    use serde_json::json;
    let w = world(hello).await;
    let other_idp = Idp::new(&w.dir.path().join("other-idp").tap_mkdir());
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad signature", other_idp.admin_token(), 401, "token_invalid_signature"),
        (
            "expired",
            w.idp.token_with(json!({"tid": TENANT, "roles": ["Connector.Admin"]}), -3600, AUDIENCE),
            401,
            "token_expired",
        ),
        (
            "wrong tenant",
            w.idp.token_with(json!({"tid": "tenant-b", "roles": ["Connector.Admin"]}), 600, AUDIENCE),
            403,
            "tenant_mismatch",
        ),
        (
            "not admin",
            w.idp.token_with(json!({"tid": TENANT, "roles": ["Reader"], "groups": ["staff"]}), 600, AUDIENCE),
            403,
            "not_admin",
        ),
        (
            "wrong audience",
            w.idp.token_with(json!({"tid": TENANT, "roles": ["Connector.Admin"]}), 600, "someone-else"),
            401,
            "audience_mismatch",
        ),
        ("garbage", "not-a-jwt".into(), 401, "token_malformed"),
    ];
    for (what, token, status, code) in cases {
        let dir = w.dir.path().join(format!("refused-{}", what.replace(' ', "-")));
        let got = register_with(&w, token, &dir).await;
        assert_eq!(got, Err((status, code.to_string())), "{what}");
        assert!(!dir.join("cert.pem").exists(), "{what}: nothing may be issued");
    }
    // Admin by group instead of role.
    let dir = w.dir.path().join("ok-group");
    let token = w.idp.token_with(json!({"tid": TENANT, "groups": ["connector-admins"]}), 600, AUDIENCE);
    assert_eq!(register_with(&w, token, &dir).await, Ok(()));
    // Admin by role; key and certificate are private.
    let dir = w.dir.path().join("ok-role");
    assert_eq!(register_with(&w, w.idp.admin_token(), &dir).await, Ok(()));
    use std::os::unix::fs::PermissionsExt;
    for f in ["key.pem", "cert.pem"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let der = portcullis_connector::pki::parse_certs_pem(&pem).unwrap().remove(0);
    let id = portcullis_connector::pki::ConnectorIdentity::from_cert(&der).unwrap();
    assert!(id.id.starts_with("c-"));
    assert_eq!(id.group, "default");
    let m = w.edge.handle.metrics().render();
    assert!(m.contains("portcullis_edge_registrations_total{result=\"ok\"} 2"), "{m}");
    assert!(m.contains("portcullis_edge_registrations_total{result=\"not_admin\"} 1"), "{m}");
    w.edge.stop().await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[tokio::test]
async fn registration_by_ca_fingerprint_and_wrong_fingerprint_refused() {
    use portcullis_connector::connector::{register, ConnectorError, EdgeTrust, RegisterOptions};
    let w = world(hello).await;
    let opts = |fp: &str, dir: &str| RegisterOptions {
        edge_url: w.edge.register_url(),
        token: w.idp.admin_token(),
        state_dir: w.dir.path().join(dir),
        group: Some("other".into()),
        trust: EdgeTrust::Fingerprint(fp.into()),
    };
    let resp = register(&opts(&w.edge.handle.ca_fingerprint, "fp-ok")).await.unwrap();
    assert_eq!(resp.group, "other");
    let bad = "00".repeat(32);
    match register(&opts(&bad, "fp-bad")).await {
        Err(ConnectorError::EdgeUnreachable { reason, .. }) => assert!(reason.contains("fingerprint"), "{reason}"),
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    w.edge.stop().await;
}

/// Opens a TLS connection to the tunnel listener with `cert`/`key` and asks for the configuration.
async fn api_call_with(edge: &Edge, chain_pem: &str, key_pem: &str) -> Result<u16, String> {
    use portcullis_connector::pki;
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki::parse_certs_pem(&edge.handle.ca_pem).unwrap().remove(0)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pki::parse_certs_pem(chain_pem).unwrap(), pki::parse_key_pem(key_pem).unwrap())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(edge.handle.tunnel_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, portcullis_connector::body::BoxBody>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let r = http::Request::get("/v1/config")
        .header("host", "localhost")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let resp = sender
        .send_request(r)
        .await
        .map_err(|e| portcullis_connector::error_chain(&e))?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn client_certificates_from_another_ca_or_expired_are_refused() {
    use std::time::{Duration, SystemTime};
    let w = world(hello).await;
    // A valid certificate from the edge's CA works.
    let (key_pem, csr) = portcullis_connector::pki::new_key_and_csr("t").unwrap();
    let ca = w.edge.handle.ca();
    let good = ca.sign_connector_csr(&csr, "c-test", "default", 1, SystemTime::now()).unwrap();
    assert_eq!(api_call_with(&w.edge, &good, &key_pem).await, Ok(200));
    // Expired, though from the right CA.
    let now = SystemTime::now();
    let expired = ca
        .sign_with_validity(&csr, "c-test", "default", now - Duration::from_secs(7200), now - Duration::from_secs(3600))
        .unwrap();
    let err = api_call_with(&w.edge, &expired, &key_pem).await.unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    // Another CA with the same names.
    let other_dir = w.dir.path().join("other-ca");
    let other = portcullis_connector::pki::EdgeCa::load_or_create(&other_dir).unwrap();
    let foreign = other.sign_connector_csr(&csr, "c-test", "default", 1, now).unwrap();
    let err = api_call_with(&w.edge, &foreign, &key_pem).await.unwrap_err();
    // Same CA name, different key: the signature check fails (DecryptError alert).
    assert!(err.contains("UnknownCA") || err.contains("DecryptError"), "{err}");
    let m = w.edge.handle.metrics();
    assert_eq!(m.errors_with("client_certificate_refused"), 2);
    // The connector itself refuses to start with an expired certificate.
    let cdir = w.dir.path().join("cexp");
    let cfg = register(&w.edge, &w.idp, &cdir, "default").await;
    std::fs::write(cdir.join("cert.pem"), &expired).unwrap();
    std::fs::write(cdir.join("key.pem"), &key_pem).unwrap();
    let (_t, s) = portcullis_connector::Shutdown::new();
    match portcullis_connector::connector::start(cfg.validate().unwrap(), s).await {
        Err(portcullis_connector::connector::ConnectorError::CertificateExpired(_)) => {}
        other => panic!("expected CertificateExpired, got {:?}", other.map(|_| ())),
    }
    w.edge.stop().await;
}

#[tokio::test]
async fn group_without_live_connector_answers_502_connector_unavailable() {
    let w = world(|b| {
        vec![
            app("hello", "default", &format!("http://{}", b.addr)),
            app("lonely", "other", &format!("http://{}", b.addr)),
        ]
    })
    .await;
    let client = client();
    let r = req(&w.edge, "lonely", "/")
        .header("accept", "application/json")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let (status, headers, body) = send(&client, r).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-portcullis-error"], "connector_unavailable");
    let v = json(&body);
    assert_eq!(v["error"], "connector_unavailable");
    assert!(v["request_id"].as_str().unwrap().len() >= 16);
    // HTML for browsers.
    let r = req(&w.edge, "lonely", "/")
        .header("accept", "text/html")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let (status, headers, body) = send(&client, r).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("connector_unavailable"));
    // Unknown app.
    let (status, headers, _) = get(&client, &w.edge, "nope", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-portcullis-error"], "app_unknown");
    w.edge.stop().await;
}

#[tokio::test]
async fn backend_timeout_answers_504_with_its_own_code() {
    let w = world(|b| {
        let mut a = app("hello", "default", &format!("http://{}", b.addr));
        a.timeout_ms = 300;
        vec![a]
    })
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    let (status, headers, _) = get(&client, &w.edge, "hello", "/slow?ms=3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-portcullis-error"], "backend_timeout");
    let (status, _, _) = get(&client, &w.edge, "hello", "/slow?ms=10").await;
    assert_eq!(status, StatusCode::OK);
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn metrics_endpoints_report_tunnels_and_requests() {
    let w = world(hello).await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    cfg.metrics_listen = Some("127.0.0.1:0".into());
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    let (status, _, _) = get(&client, &w.edge, "hello", "/bytes?n=1000").await;
    assert_eq!(status, StatusCode::OK);
    let scrape = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let r = http::Request::get(format!("http://{addr}/metrics"))
                .body(portcullis_connector::body::empty())
                .unwrap();
            String::from_utf8(send(&client, r).await.2.to_vec()).unwrap()
        }
    };
    let m = scrape(w.edge.handle.metrics_addr.unwrap()).await;
    assert!(m.contains("portcullis_edge_tunnels_up 2"), "{m}");
    assert!(m.contains("portcullis_edge_requests_total 1"), "{m}");
    assert!(m.contains("portcullis_edge_bytes_down_total 1000"), "{m}");
    assert!(m.contains("portcullis_edge_registrations_total{result=\"ok\"} 1"), "{m}");
    let m = scrape(c.handle.metrics_addr.unwrap()).await;
    assert!(m.contains("portcullis_connector_tunnels_up 2"), "{m}");
    assert!(m.contains("portcullis_connector_bytes_down_total 1000"), "{m}");
    assert!(m.contains("portcullis_connector_config_pulls_total"), "{m}");
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn reload_keeps_tunnels_and_an_unknown_app_is_fetched_on_demand() {
    let w = world(hello).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    eventually(10, "first config", || c.handle.config().is_some()).await;
    let before: Vec<u64> = w.edge.handle.tunnels().iter().map(|t| t.id).collect();
    let mut file = w.edge.file.clone();
    file.apps.push(app("second", "default", &format!("http://{}", w.backend.addr)));
    // A bad file is refused with the field named, and nothing changes.
    let mut bad = file.clone();
    bad.apps[1].group = "missing".into();
    let err = w.edge.handle.reload(&bad).unwrap_err();
    assert_eq!(err.field, "apps[1].group");
    w.edge.handle.reload(&file).unwrap();
    let client = client();
    let (status, _, body) = get(&client, &w.edge, "second", "/echo").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let after: Vec<u64> = w.edge.handle.tunnels().iter().map(|t| t.id).collect();
    assert_eq!(before, after, "tunnels must survive a reload");
    assert!(c.handle.config().unwrap().apps.iter().any(|a| a.name == "second"));
    c.stop().await;
    w.edge.stop().await;
}
