//! In-process end-to-end tests: edge + connector + sample app on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

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
        .header(
            "cookie",
            "__Host-portcullis=secret; theme=dark; portcullis_state=x; PORTCULLIS-x=y",
        )
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
    // No identity assertion for this app: identity headers never travel.
    assert!(h.get("x-forwarded-user").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "hello.example.test");
    assert_eq!(h["host"], w.backend.addr.to_string());
    assert!(h.get("x-portcullis-app").is_none());
    assert_eq!(w.backend.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    c.stop().await;
    w.edge.stop().await;
}

async fn register_with(
    w: &World,
    token: String,
    dir: &std::path::Path,
) -> Result<(), (u16, String)> {
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
        (
            "bad signature",
            other_idp.admin_token(),
            401,
            "token_invalid_signature",
        ),
        (
            "expired",
            w.idp.token_with(
                json!({"tid": TENANT, "roles": ["Connector.Admin"]}),
                -3600,
                AUDIENCE,
            ),
            401,
            "token_expired",
        ),
        (
            "wrong tenant",
            w.idp.token_with(
                json!({"tid": "tenant-b", "roles": ["Connector.Admin"]}),
                600,
                AUDIENCE,
            ),
            403,
            "tenant_mismatch",
        ),
        (
            "not admin",
            w.idp.token_with(
                json!({"tid": TENANT, "roles": ["Reader"], "groups": ["staff"]}),
                600,
                AUDIENCE,
            ),
            403,
            "not_admin",
        ),
        (
            "wrong audience",
            w.idp.token_with(
                json!({"tid": TENANT, "roles": ["Connector.Admin"]}),
                600,
                "someone-else",
            ),
            401,
            "audience_mismatch",
        ),
        ("garbage", "not-a-jwt".into(), 401, "token_malformed"),
    ];
    for (what, token, status, code) in cases {
        let dir = w
            .dir
            .path()
            .join(format!("refused-{}", what.replace(' ', "-")));
        let got = register_with(&w, token, &dir).await;
        assert_eq!(got, Err((status, code.to_string())), "{what}");
        assert!(
            !dir.join("identity.pem").exists(),
            "{what}: nothing may be issued"
        );
    }
    // Admin by group instead of role.
    let dir = w.dir.path().join("ok-group");
    let token = w.idp.token_with(
        json!({"tid": TENANT, "groups": ["connector-admins"]}),
        600,
        AUDIENCE,
    );
    assert_eq!(register_with(&w, token, &dir).await, Ok(()));
    // Admin by role; key and certificate are private.
    let dir = w.dir.path().join("ok-role");
    assert_eq!(register_with(&w, w.idp.admin_token(), &dir).await, Ok(()));
    use std::os::unix::fs::PermissionsExt;
    let f = "identity.pem";
    let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{f}");
    let pem = std::fs::read_to_string(dir.join(f)).unwrap();
    assert!(
        pem.contains("PRIVATE KEY") && pem.contains("CERTIFICATE"),
        "key and certificate in one file"
    );
    let der = portcullis_connector::pki::parse_certs_pem(&pem)
        .unwrap()
        .remove(0);
    let id = portcullis_connector::pki::ConnectorIdentity::from_cert(&der).unwrap();
    assert!(id.id.starts_with("c-"));
    assert_eq!(id.group, "default");
    let m = w.edge.handle.metrics().render();
    assert!(
        m.contains("portcullis_edge_registrations_total{result=\"ok\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_edge_registrations_total{result=\"not_admin\"} 1"),
        "{m}"
    );
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
    let resp = register(&opts(&w.edge.handle.ca_fingerprint, "fp-ok"))
        .await
        .unwrap();
    assert_eq!(resp.group, "other");
    let bad = "00".repeat(32);
    match register(&opts(&bad, "fp-bad")).await {
        Err(ConnectorError::EdgeUnreachable { reason, .. }) => {
            assert!(reason.contains("fingerprint"), "{reason}")
        }
        other => panic!("expected a TLS refusal, got {other:?}"),
    }
    w.edge.stop().await;
}

/// Opens a TLS connection to the tunnel listener with `cert`/`key` and asks for the configuration.
async fn api_call_with(edge: &Edge, chain_pem: &str, key_pem: &str) -> Result<u16, String> {
    use portcullis_connector::pki;
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki::parse_certs_pem(&edge.handle.ca_pem).unwrap().remove(0))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pki::parse_certs_pem(chain_pem).unwrap(),
            pki::parse_key_pem(key_pem).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(edge.handle.tunnel_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        portcullis_connector::body::BoxBody,
    >(hyper_util::rt::TokioIo::new(tls))
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
    let good = ca
        .sign_connector_csr(&csr, "c-test", "default", 1, SystemTime::now())
        .unwrap();
    assert_eq!(api_call_with(&w.edge, &good, &key_pem).await, Ok(200));
    // Expired, though from the right CA.
    let now = SystemTime::now();
    let expired = ca
        .sign_with_validity(
            &csr,
            "c-test",
            "default",
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let err = api_call_with(&w.edge, &expired, &key_pem)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    // Another CA with the same names.
    let other_dir = w.dir.path().join("other-ca");
    let other = portcullis_connector::pki::EdgeCa::load_or_create(&other_dir).unwrap();
    let foreign = other
        .sign_connector_csr(&csr, "c-test", "default", 1, now)
        .unwrap();
    let err = api_call_with(&w.edge, &foreign, &key_pem)
        .await
        .unwrap_err();
    // Same CA name, different key: the signature check fails (DecryptError alert).
    assert!(
        err.contains("UnknownCA") || err.contains("DecryptError"),
        "{err}"
    );
    let m = w.edge.handle.metrics();
    assert_eq!(m.errors_with("client_certificate_refused"), 2);
    // The connector itself refuses to start with an expired certificate.
    let cdir = w.dir.path().join("cexp");
    let cfg = register(&w.edge, &w.idp, &cdir, "default").await;
    // The layout of older connectors (key.pem, cert.pem) is still read.
    std::fs::remove_file(cdir.join("identity.pem")).unwrap();
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
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
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
    assert!(
        m.contains("portcullis_edge_registrations_total{result=\"ok\"} 1"),
        "{m}"
    );
    let m = scrape(c.handle.metrics_addr.unwrap()).await;
    assert!(m.contains("portcullis_connector_tunnels_up 2"), "{m}");
    assert!(
        m.contains("portcullis_connector_bytes_down_total 1000"),
        "{m}"
    );
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
    file.apps.push(app(
        "second",
        "default",
        &format!("http://{}", w.backend.addr),
    ));
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
    assert!(c
        .handle
        .config()
        .unwrap()
        .apps
        .iter()
        .any(|a| a.name == "second"));
    c.stop().await;
    w.edge.stop().await;
}

/// An HTTPS sample app whose certificate is issued by a fresh CA; returns (addr, ca_pem, leaf_spki_pin_b64).
async fn start_tls_backend(
    dir: &std::path::Path,
) -> (std::net::SocketAddr, std::path::PathBuf, String) {
    use base64::Engine as _;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::sync::Arc;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("backend CA {}", rand::random::<u32>()),
    );
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_path = dir.join("backend-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let pin = portcullis_connector::pki::spki_sha256(leaf.der()).unwrap();
    let pin = base64::engine::general_purpose::STANDARD.encode(pin);
    let server = rustls::ServerConfig::builder_with_provider(portcullis_connector::pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let svc = hyper::service::service_fn(move |req| {
                    let hits = hits.clone();
                    async move { Ok::<_, std::convert::Infallible>(sample_app(req, "tls", hits).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca_path, pin)
}

#[tokio::test]
async fn https_backends_pinned_or_ca_verified_are_accepted_and_others_refused() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (addr, ca_path, pin) = start_tls_backend(dir.path()).await;
    let (_, other_ca, _) = start_tls_backend(&dir.path().join("x").tap_mkdir()).await;
    let url = format!("https://{addr}");
    let wrong_pin = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let mut pinned = app("pinned", "default", &url);
    pinned.spki_sha256 = vec![pin.clone()];
    let mut unpinned = app("unpinned", "default", &url);
    unpinned.spki_sha256 = vec![wrong_pin.clone()];
    let mut by_ca = app("by-ca", "default", &url);
    by_ca.backend_ca_file = Some(ca_path.clone());
    let mut wrong_ca = app("wrong-ca", "default", &url);
    wrong_ca.backend_ca_file = Some(other_ca);
    let mut ca_and_wrong_pin = app("ca-and-wrong-pin", "default", &url);
    ca_and_wrong_pin.backend_ca_file = Some(ca_path);
    ca_and_wrong_pin.spki_sha256 = vec![wrong_pin];
    let w = world(|_| vec![pinned, unpinned, by_ca, wrong_ca, ca_and_wrong_pin]).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    for (name, status, code) in [
        ("pinned", 200, None),
        ("by-ca", 200, None),
        ("unpinned", 502, Some("backend_pin_mismatch")),
        ("ca-and-wrong-pin", 502, Some("backend_pin_mismatch")),
        ("wrong-ca", 502, Some("backend_tls_untrusted")),
    ] {
        let r = req(&w.edge, name, "/echo")
            .header("accept", "application/json")
            .body(portcullis_connector::body::empty())
            .unwrap();
        let (s, headers, body) = send(&client, r).await;
        assert_eq!(s.as_u16(), status, "{name}: {body:?}");
        if let Some(code) = code {
            assert_eq!(headers["x-portcullis-error"], code, "{name}");
            let v = json(&body);
            assert_eq!(v["error"], code);
            assert!(v["message"].as_str().unwrap().contains(name), "{v}");
        } else {
            assert_eq!(json(&body)["app"], "tls");
        }
    }
    // An https backend with neither CA nor pins is refused at configuration time.
    let mut f = w.edge.file.clone();
    f.apps.push(app("naked", "default", &url));
    let err = f.validate().unwrap_err();
    assert_eq!(err.field, "apps[5].spki_sha256");
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn config_is_cached_and_served_while_the_edge_is_down_then_tunnels_reconnect_after_edge_restart(
) {
    let w = world(hello).await;
    let cdir = w.dir.path().join("c1");
    let cfg = register(&w.edge, &w.idp, &cdir, "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    eventually(10, "config", || c.handle.config().is_some()).await;
    assert!(cdir.join("config-cache.json").exists());
    let view = c.handle.config().unwrap();
    assert_eq!(view.group, "default");
    assert_eq!(view.apps.len(), 1);
    assert_eq!(view.apps[0].name, "hello");
    c.stop().await;

    // Edge goes down; the connector (re)starts from its cache.
    let mut file = w.edge.file.clone();
    let h = &w.edge.handle;
    file.listen.registration = h.registration_addr.to_string();
    file.listen.tunnel = h.tunnel_addr.to_string();
    file.listen.insecure_envoy_h2c_tcp = h.insecure_tcp_addr.map(|a| a.to_string());
    w.edge.stop().await;
    let c = start_connector(&cfg).await;
    assert_eq!(
        c.handle.config().as_ref(),
        Some(&view),
        "served from cache at start"
    );
    let m = c.handle.metrics();
    eventually(10, "failed pulls and dials", || {
        m.errors_with("config_pull_failed") >= 1 && m.errors_with("tunnel_connect_failed") >= 2
    })
    .await;
    assert_eq!(
        c.handle.config().as_ref(),
        Some(&view),
        "cache kept while the edge is unreachable"
    );

    // Edge comes back on the same addresses with the same CA: tunnels reconnect.
    let edge = start_edge(file).await;
    wait_tunnels(&edge, 2).await;
    let client = client();
    let (status, _, body) = get(&client, &edge, "hello", "/echo").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    c.stop().await;
    edge.stop().await;
}

#[tokio::test]
async fn renewal_switches_certificates_without_dropping_open_streams() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};
    let w = world(hello).await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    cfg.renew_after_seconds = 30 * 86_400;
    cfg.renew_check_seconds = 1;
    // Injected clock: the test moves time forward to age the certificate.
    let offset = Arc::new(AtomicU64::new(0));
    let clock = {
        let offset = offset.clone();
        Arc::new(move || SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst)))
    };
    let (trigger, shutdown) = portcullis_connector::Shutdown::new();
    let c =
        portcullis_connector::connector::start_with_clock(cfg.validate().unwrap(), shutdown, clock)
            .await
            .unwrap();
    wait_tunnels(&w.edge, 2).await;
    let old_serial = c.cert_serial();
    assert!(w
        .edge
        .handle
        .tunnels()
        .iter()
        .all(|t| t.cert_serial == old_serial));
    let client = client();
    // Open streams: a slow download (3 s) and an upload, both in flight during renewal.
    let drip = {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/drip?chunks=30&ms=100")
            .body(portcullis_connector::body::empty())
            .unwrap();
        tokio::spawn(async move { send(&client, r).await })
    };
    let upload = {
        let client = client.clone();
        let body = throttled_pattern(8 << 20, 64 * 1024, Duration::from_millis(20));
        let r = req(&w.edge, "hello", "/upload")
            .method("POST")
            .body(body)
            .unwrap();
        tokio::spawn(async move { send(&client, r).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    offset.store(31 * 86_400, Ordering::SeqCst);
    let m = c.metrics();
    eventually(10, "renewal", || {
        m.renewals_total.load(Ordering::Relaxed) == 1
    })
    .await;
    offset.store(0, Ordering::SeqCst);
    let new_serial = c.cert_serial();
    assert_ne!(new_serial, old_serial);
    // New tunnels carry the new certificate; the old ones drain and go.
    eventually(10, "tunnels on the new certificate", || {
        let t = w.edge.handle.tunnels();
        t.len() == 2 && t.iter().all(|t| t.cert_serial == new_serial)
    })
    .await;
    let (status, _, body) = drip.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 30 * 5, "the open download completed");
    let (status, _, body) = upload.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["bytes"], 8 << 20);
    assert_eq!(v["pattern_ok"], true);
    let (status, _, _) = get(&client, &w.edge, "hello", "/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m.renewals_total.load(Ordering::Relaxed), 1);
    assert_eq!(
        w.edge
            .handle
            .metrics()
            .renewals_total
            .load(Ordering::Relaxed),
        1
    );
    // The stored certificate is the new one.
    let pem = std::fs::read_to_string(w.dir.path().join("c1/identity.pem")).unwrap();
    let der = portcullis_connector::pki::parse_certs_pem(&pem)
        .unwrap()
        .remove(0);
    assert_eq!(
        portcullis_connector::pki::ConnectorIdentity::from_cert(&der)
            .unwrap()
            .serial,
        new_serial
    );
    trigger.trigger();
    c.wait().await;
    w.edge.stop().await;
}

/// `n` pattern bytes in `chunk`-sized pieces, one every `pause`.
fn throttled_pattern(
    n: u64,
    chunk: u64,
    pause: std::time::Duration,
) -> portcullis_connector::body::BoxBody {
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= n {
            return None;
        }
        tokio::time::sleep(pause).await;
        let len = (n - off).min(chunk) as usize;
        let v: Vec<u8> = (0..len).map(|i| ((off + i as u64) % 251) as u8).collect();
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(v))),
            off + len as u64,
        ))
    });
    portcullis_connector::body::boxed(http_body_util::StreamBody::new(stream))
}

#[tokio::test]
async fn two_connectors_share_load_and_killing_one_loses_no_new_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let w = world(hello).await;
    let cfg1 = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let cfg2 = register(&w.edge, &w.idp, &w.dir.path().join("c2"), "default").await;
    let c1 = start_connector(&cfg1).await;
    let c2 = start_connector(&cfg2).await;
    wait_tunnels(&w.edge, 4).await;
    let id1 = c1.handle.connector_id();
    let client = client();
    // Steady traffic from 8 workers; each records failures of requests started after the kill.
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let after_ok = Arc::new(AtomicU64::new(0));
    let after_failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, killed, stop, ok, failed) = (
            client.clone(),
            killed.clone(),
            stop.clone(),
            after_ok.clone(),
            after_failed.clone(),
        );
        let url = format!("http://{}/slow?ms=5", w.edge.local_addr());
        let r = move || {
            http::Request::get(&url)
                .header("x-portcullis-app", "hello")
                .body(portcullis_connector::body::empty())
                .unwrap()
        };
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let started_after_kill = killed.load(Ordering::SeqCst);
                let status = client
                    .request(r())
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if started_after_kill {
                    if status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let served_by = |edge: &Edge| {
        let mut by = std::collections::BTreeMap::<String, u64>::new();
        for t in edge.handle.tunnels() {
            *by.entry(t.connector_id).or_default() += t.served;
        }
        by
    };
    let by = served_by(&w.edge);
    assert_eq!(by.len(), 2, "both connectors serve: {by:?}");
    let total: u64 = by.values().sum();
    for (id, n) in &by {
        assert!(
            *n * 5 >= total,
            "{id} served {n} of {total}: load is not shared"
        );
    }
    // Kill connector 1 abruptly (no drain).
    c1.handle.abort();
    killed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for wk in workers {
        wk.await.unwrap();
    }
    assert!(after_ok.load(Ordering::Relaxed) > 50, "traffic continued");
    assert_eq!(
        after_failed.load(Ordering::Relaxed),
        0,
        "no request started after the kill was lost"
    );
    let left = served_by(&w.edge);
    assert!(
        !left.contains_key(&id1),
        "the killed connector's tunnels are gone: {left:?}"
    );
    c2.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn keepalive_pings_detect_a_dead_peer_and_the_connector_reconnects() {
    use std::sync::atomic::Ordering;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    let mut file = edge_file(
        &dir.path().join("edge"),
        &idp.jwks_path,
        vec![app("hello", "default", &format!("http://{}", backend.addr))],
    );
    file.keepalive_seconds = 1;
    let edge = start_edge(file).await;
    let (relay, epoch) = freezable_relay(edge.handle.tunnel_addr).await;
    let mut cfg = register(&edge, &idp, &dir.path().join("c1"), "default").await;
    cfg.edges = vec![relay.to_string()];
    cfg.keepalive_seconds = 1;
    let c = start_connector(&cfg).await;
    wait_tunnels(&edge, 2).await;
    eventually(10, "config pulled", || c.handle.config().is_some()).await;
    let before: Vec<u64> = edge.handle.tunnels().iter().map(|t| t.id).collect();
    // The path goes silent: no FIN, no RST. Only keepalive pings can notice.
    epoch.fetch_add(1, Ordering::SeqCst);
    eventually(10, "dead tunnels dropped and replaced", || {
        let now: Vec<u64> = edge.handle.tunnels().iter().map(|t| t.id).collect();
        now.len() == 2 && now.iter().all(|id| !before.contains(id))
    })
    .await;
    let client = client();
    let (status, _, body) = get(&client, &edge, "hello", "/echo").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(
        c.handle
            .metrics()
            .tunnel_connects_total
            .load(Ordering::Relaxed)
            >= 4
    );
    c.stop().await;
    edge.stop().await;
}

#[tokio::test]
async fn the_configured_proxy_cookie_names_are_stripped_on_both_sides_and_cidrs_are_trusted() {
    let w = world_with(hello, |f| {
        // The cookie filter's names, not the defaults; Envoy's pod network as a CIDR.
        f.proxy_cookies = serde_json::from_value(serde_json::json!({
            "names": ["__Host-gate"], "prefixes": ["gate-"]
        }))
        .unwrap();
        f.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    eventually(10, "config pulled", || c.handle.config().is_some()).await;
    assert_eq!(
        c.handle.config().unwrap().proxy_cookies.names,
        Some(vec!["__Host-gate".to_string()]),
        "the connector strips the same names"
    );
    let r = req(&w.edge, "hello", "/echo")
        .header(
            "cookie",
            "__Host-gate=session; gate-state-1=x; portcullis=app-owned; theme=dark",
        )
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .body(portcullis_connector::body::empty())
        .unwrap();
    let (status, _, body) = send(&client(), r).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let h = &json(&body)["headers"];
    assert_eq!(h["cookie"], "portcullis=app-owned; theme=dark");
    assert!(
        h.get("x-hop").is_none(),
        "a header named by Connection is hop-by-hop: {h}"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1, 127.0.0.1");
    c.stop().await;
    w.edge.stop().await;
}

/// A backend that closes every keep-alive connection right after its answer,
/// without saying so (`Connection: close` absent): the pooled connection is dead
/// when it is reused.
async fn start_closing_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicU64::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            n.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                // Close without a word.
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn a_reused_backend_connection_found_closed_is_retried_and_no_request_fails() {
    let (addr, conns) = start_closing_backend().await;
    let w = world(|_| vec![app("hello", "default", &format!("http://{addr}"))]).await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    for i in 0..30 {
        let (status, _, body) = get(&client, &w.edge, "hello", "/x").await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
        // Every other time, let the backend close the connection the pool keeps.
        if i % 2 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        }
    }
    assert!(conns.load(std::sync::atomic::Ordering::Relaxed) >= 15);
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn a_fresh_backend_connection_that_fails_is_not_retried() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncReadExt;
    // A backend that reads each request and closes without an answer: the app
    // saw the request, so it must not see it twice.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(AtomicU64::new(0));
    let n = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let n = n.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                n.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let w = world(|_| vec![app("hello", "default", &format!("http://{addr}"))]).await;
    let mut cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    cfg.tunnels_per_edge = 1;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 1).await;
    let (status, headers, body) = get(&client(), &w.edge, "hello", "/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(headers["x-portcullis-error"], "backend_error");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the GET was sent once");
    c.stop().await;
    w.edge.stop().await;
}
