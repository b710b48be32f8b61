//! Identity travels only with its proof: the edge checks the identity assertion and
//! strips identity headers otherwise; only Envoy can reach the Envoy-facing listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_connector::body::{empty, full};
use portcullis_connector::config::{AssertionConfig, EnvoyMtls};
use portcullis_core::assertion::{AssertionSigner, SigningKey, ASSERTION_HEADER};
use portcullis_core::identity::Identity;

const ISS: &str = "https://hello.example.com";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signer(seed: u8, audience: &str) -> AssertionSigner {
    AssertionSigner::new(
        vec![SigningKey::from_seed([seed; 32]).unwrap()],
        ISS.into(),
        audience.into(),
        300,
    )
    .unwrap()
}

fn bob() -> Identity {
    Identity {
        sub: "u-bob".into(),
        name: Some("bob".into()),
        email: Some("bob@example.com".into()),
        groups: vec!["admins".into(), "staff".into()],
        iat: now(),
        exp: now() + 3600,
        ..Identity::default()
    }
}

fn assertion_config(jwks: Option<serde_json::Value>, url: Option<String>) -> AssertionConfig {
    AssertionConfig {
        issuer: ISS.into(),
        audience: None,
        jwks_url: url,
        jwks_host: None,
        jwks_ca_file: None,
        jwks,
        required: false,
        clock_skew_seconds: 60,
        jwks_refresh_seconds: 300,
        claim_headers: None,
    }
}

fn inline(s: &AssertionSigner) -> Option<serde_json::Value> {
    Some(serde_json::from_slice(s.jwks()).unwrap())
}

/// Headers the app received for a request to `app` carrying `extra`.
async fn seen_by_app(w: &World, app: &str, extra: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut r = req(&w.edge, app, "/echo").header("accept", "application/json");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    let (status, _, body) = send(&client(), r.body(empty()).unwrap()).await;
    let v = if status == 200 {
        json(&body)["headers"].clone()
    } else {
        json(&body)
    };
    (status.as_u16(), v)
}

const FORGED: &[(&str, &str)] = &[
    ("x-forwarded-user", "u-bob"),
    ("X-Forwarded-Groups", "admins"),
    ("x_forwarded_email", "bob@example.com"),
    ("x-portcullis-identity", "forged"),
];

#[tokio::test]
async fn forged_identity_headers_without_an_assertion_never_reach_the_app() {
    let good = signer(1, "hello");
    let w = world(|b| {
        let mut a = app("hello", "default", &format!("http://{}", b.addr));
        a.assertion = Some(assertion_config(inline(&good), None));
        let plain = app("plain", "default", &format!("http://{}", b.addr));
        vec![a, plain]
    })
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;

    // The issue's attack: a local process names the app and claims to be bob.
    for app in ["hello", "plain"] {
        let (status, h) = seen_by_app(&w, app, FORGED).await;
        assert_eq!(status, 200);
        for name in [
            "x-forwarded-user",
            "x-forwarded-groups",
            "x-forwarded-email",
            "x_forwarded_email",
            "x-portcullis-identity",
        ] {
            assert!(h.get(name).is_none(), "{app}: {name} reached the app: {h}");
        }
    }
    let m = w.edge.handle.metrics();
    assert_eq!(m.assertions_with("missing"), 1);
    assert_eq!(m.assertions_with("not_configured"), 1);

    // A valid assertion: identity comes from its claims, forged copies are replaced.
    let token = good.sign(&good.claims_for(&bob(), &[], now()));
    let mut with = vec![(ASSERTION_HEADER, token.as_str())];
    with.extend([
        ("x-forwarded-user", "u-mallory"),
        ("x-forwarded-email", "m@evil"),
    ]);
    let (status, h) = seen_by_app(&w, "hello", &with).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-forwarded-user"], "u-bob");
    assert_eq!(h["x-forwarded-email"], "bob@example.com");
    assert_eq!(h["x-forwarded-groups"], "admins,staff");
    assert_eq!(h["x-forwarded-preferred-username"], "bob");
    assert_eq!(
        h[ASSERTION_HEADER],
        token.as_str(),
        "apps may verify it themselves"
    );
    // The same value again costs no verification.
    let _ = seen_by_app(&w, "hello", &with).await;
    assert_eq!(
        (m.assertions_with("valid"), m.assertions_with("cached")),
        (1, 1)
    );

    // Every bad assertion: identity stripped, the request flows anonymously.
    let mut expired_claims = good.claims_for(&bob(), &[], now() - 1000);
    expired_claims.exp = now() - 200;
    let kid = good.keys()[0].kid().to_string();
    let claims_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&good.claims_for(&bob(), &[], now())).unwrap());
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let cases = [
        ("assertion_expired", good.sign(&expired_claims)),
        ("assertion_audience", {
            let other = signer(1, "admin");
            other.sign(&other.claims_for(&bob(), &[], now()))
        }),
        ("assertion_unknown_key", {
            let stranger = signer(2, "hello");
            stranger.sign(&stranger.claims_for(&bob(), &[], now()))
        }),
        ("assertion_signature", {
            // Another key's signature under the good key's kid.
            let stranger = signer(2, "hello");
            let t = stranger.sign(&stranger.claims_for(&bob(), &[], now()));
            let (_, rest) = t.split_once('.').unwrap();
            format!(
                "{}.{rest}",
                b64(&format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"JWT"}}"#))
            )
        }),
        (
            "assertion_algorithm",
            format!("{}.{claims_b64}.", b64(r#"{"alg":"none"}"#)),
        ),
        (
            "assertion_algorithm",
            format!(
                "{}.{claims_b64}.{}",
                b64(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#)),
                b64("x")
            ),
        ),
        ("assertion_malformed", "garbage".to_string()),
    ];
    for (code, token) in &cases {
        let mut with = vec![(ASSERTION_HEADER, token.as_str())];
        with.extend_from_slice(FORGED);
        let (status, h) = seen_by_app(&w, "hello", &with).await;
        assert_eq!(status, 200, "{code}");
        assert!(h.get("x-forwarded-user").is_none(), "{code}: {h}");
        assert!(h.get(ASSERTION_HEADER).is_none(), "{code}: {h}");
        assert!(m.assertions_with(code) >= 1, "{code}: {}", m.render());
    }
    c.stop().await;
    w.edge.stop().await;
}

#[tokio::test]
async fn an_app_that_requires_an_assertion_refuses_requests_without_one() {
    let good = signer(1, "hello");
    let w = world(|b| {
        let mut a = app("hello", "default", &format!("http://{}", b.addr));
        let mut rules = assertion_config(inline(&good), None);
        rules.required = true;
        a.assertion = Some(rules);
        vec![a]
    })
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let (status, body) = seen_by_app(&w, "hello", FORGED).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "assertion_required");
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert_eq!(
        w.backend.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the app"
    );
    let token = good.sign(&good.claims_for(&bob(), &[], now()));
    let (status, h) = seen_by_app(&w, "hello", &[(ASSERTION_HEADER, &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-forwarded-user"], "u-bob");
    c.stop().await;
    w.edge.stop().await;
}

/// A JWKS server whose document the test can change.
async fn jwks_server(doc: Arc<Mutex<Vec<u8>>>, hits: Arc<Mutex<u32>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (doc, hits) = (doc.clone(), hits.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |r: http::Request<hyper::body::Incoming>| {
                    let (doc, hits) = (doc.clone(), hits.clone());
                    async move {
                        assert_eq!(r.uri().path(), "/.auth/jwks");
                        assert_eq!(r.headers()["host"], "hello.example.com");
                        *hits.lock().unwrap() += 1;
                        let body = doc.lock().unwrap().clone();
                        Ok::<_, Infallible>(http::Response::new(full(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn keys_come_from_the_published_jwks_and_an_unknown_kid_refetches_at_a_limited_rate() {
    let old = signer(1, "hello");
    let doc = Arc::new(Mutex::new(old.jwks().to_vec()));
    let hits = Arc::new(Mutex::new(0));
    let jwks = jwks_server(doc.clone(), hits.clone()).await;
    let w = world(|b| {
        let mut a = app("hello", "default", &format!("http://{}", b.addr));
        let mut rules = assertion_config(None, Some(format!("http://{jwks}/.auth/jwks")));
        rules.jwks_host = Some("hello.example.com".into());
        a.assertion = Some(rules);
        vec![a]
    })
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    let token = old.sign(&old.claims_for(&bob(), &[], now()));
    let (_, h) = seen_by_app(&w, "hello", &[(ASSERTION_HEADER, &token)]).await;
    assert_eq!(h["x-forwarded-user"], "u-bob");
    assert_eq!(*hits.lock().unwrap(), 1);
    // Rotation: preauth now signs with a new key its JWKS publishes. Within the
    // refetch interval the edge does not ask again (an attacker's unknown kids
    // cannot make it hammer the JWKS); the request flows anonymously.
    let new = AssertionSigner::new(
        vec![
            SigningKey::from_seed([3; 32]).unwrap(),
            SigningKey::from_seed([1; 32]).unwrap(),
        ],
        ISS.into(),
        "hello".into(),
        300,
    )
    .unwrap();
    *doc.lock().unwrap() = new.jwks().to_vec();
    let token = new.sign(&new.claims_for(&bob(), &[], now()));
    for _ in 0..3 {
        let (_, h) = seen_by_app(&w, "hello", &[(ASSERTION_HEADER, &token)]).await;
        assert!(h.get("x-forwarded-user").is_none());
    }
    assert_eq!(*hits.lock().unwrap(), 1);
    c.stop().await;
    w.edge.stop().await;
}

async fn unix_get(path: &std::path::Path, app: &str) -> Result<u16, String> {
    let io = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let r = http::Request::get("/echo")
        .header("host", "hello.example.com")
        .header("x-portcullis-app", app)
        .body(empty())
        .unwrap();
    let resp = send.send_request(r).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[tokio::test]
async fn envoys_listener_is_a_unix_socket_by_default_and_tcp_only_by_name() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = world_with(
        |b| vec![app("hello", "default", &format!("http://{}", b.addr))],
        |f| f.listen.insecure_envoy_h2c_tcp = None,
    )
    .await;
    // No TCP listener for Envoy; the socket is in the state directory, mode 0660.
    assert!(w.edge.handle.insecure_tcp_addr.is_none());
    let sock = w.edge.handle.envoy_socket.clone().unwrap();
    assert_eq!(sock, w.edge.file.state_dir.join("envoy.sock"));
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    assert_eq!(unix_get(&sock, "hello").await, Ok(200));
    // The old `listen.local` is refused, naming the field; modes open to others too.
    let mut f = w.edge.file.clone();
    f.listen.local = Some("127.0.0.1:8080".into());
    assert_eq!(f.validate().unwrap_err().field, "listen.local");
    let mut f = w.edge.file.clone();
    f.listen.envoy_socket_mode = Some("0666".into());
    assert_eq!(f.validate().unwrap_err().field, "listen.envoy_socket_mode");
    // Plain TCP only when asked for by that name.
    let mut f = w.edge.file.clone();
    f.listen.insecure_envoy_h2c_tcp = Some("127.0.0.1:0".into());
    let s = f.validate().unwrap();
    assert!(s.insecure_envoy_h2c_tcp.is_some() && s.envoy_socket.is_none());
    c.stop().await;
    w.edge.stop().await;
}

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn test_ca(name: &str) -> TestCa {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = p.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn leaf(ca: &TestCa, name: &str, server: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    p.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn tls_get(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<(&str, &str)>,
) -> Result<u16, String> {
    let provider = portcullis_connector::pki::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in portcullis_connector::pki::parse_certs_pem(server_ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                portcullis_connector::pki::parse_certs_pem(cert).unwrap(),
                portcullis_connector::pki::parse_key_pem(key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("edge.envoy.test".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let r = http::Request::get("http://hello.example.com/echo")
        .header("x-portcullis-app", "hello")
        .body(empty())
        .unwrap();
    let resp = send.send_request(r).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

#[tokio::test]
async fn the_mtls_listener_admits_envoys_certificate_and_no_connectors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("envoy client CA");
    let (server_cert, server_key) = leaf(&ca, "edge.envoy.test", true);
    let (envoy_cert, envoy_key) = leaf(&ca, "envoy", false);
    let write = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let files = EnvoyMtls {
        address: "127.0.0.1:0".into(),
        cert_file: write("server.pem", &server_cert),
        key_file: write("server-key.pem", &server_key),
        client_ca_file: write("ca.pem", &ca.pem),
    };
    let w = world_with(
        |b| vec![app("hello", "default", &format!("http://{}", b.addr))],
        |f| {
            f.listen.insecure_envoy_h2c_tcp = None;
            f.listen.envoy_mtls = Some(files.clone());
        },
    )
    .await;
    assert!(w.edge.handle.envoy_socket.is_none() && w.edge.handle.insecure_tcp_addr.is_none());
    let addr = w.edge.handle.envoy_mtls_addr.unwrap();
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;
    assert_eq!(
        tls_get(addr, &ca.pem, Some((&envoy_cert, &envoy_key))).await,
        Ok(200)
    );
    // Without a client certificate, or with a connector's: refused at TLS.
    assert!(tls_get(addr, &ca.pem, None).await.is_err());
    let (conn_key, csr) = portcullis_connector::pki::new_key_and_csr("c-test").unwrap();
    let conn_cert = w
        .edge
        .handle
        .ca()
        .sign_connector_csr(&csr, "c-test", "default", 30, SystemTime::now())
        .unwrap();
    assert!(tls_get(addr, &ca.pem, Some((&conn_cert, &conn_key)))
        .await
        .is_err());
    assert!(
        w.edge
            .handle
            .metrics()
            .errors_with("envoy_client_certificate_refused")
            >= 2
    );
    c.stop().await;
    let state_dir = w.edge.file.state_dir.clone();
    let mut file = w.edge.file.clone();
    w.edge.stop().await;
    // An edge whose Envoy client CA is the connector CA does not start.
    file.listen.envoy_mtls = Some(EnvoyMtls {
        client_ca_file: state_dir.join(portcullis_connector::pki::CA_CERT_FILE),
        ..files
    });
    let (_t, shutdown) = portcullis_connector::Shutdown::new();
    let err = portcullis_connector::edge::start(file.validate().unwrap(), shutdown)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connector CA"), "{err}");
}
