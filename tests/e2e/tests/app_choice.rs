//! End-to-end on the whole demo system (stock Envoy, the real provider, the
//! edge and a connector, the two sample apps), issue 12:
//!
//! - point 2: every Host spelling (trailing dots, case, ports, absolute-form
//!   targets over HTTP/1.1, HTTP/2 `:authority` against a `host` header), with
//!   a session of each app: a request that reaches app X was judged with X's
//!   session and X's policies, never Y's. The sample apps' `/headers` echo says
//!   which app got the request and with which identity; conditional access's
//!   decision line for the same request id says which app it judged.
//! - point 5: what the app learns about the client is what Envoy saw: client
//!   copies of `X-Forwarded-Host`, `X-Real-IP`, `Forwarded`, `X-Original-URL`, …
//!   never arrive; `X-Forwarded-Host` and `X-Real-IP` are set from Envoy's view.
//!
//! Both on the all-in-one layout (`envoy-configs/demo.yaml`) and on the split
//! one (`envoy-configs/demo-split.yaml`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use portcullis_core::identity::Identity;
use portcullis_core::oidc::session::encode_identity;
use portcullis_core::seal::Sealer;
use portcullis_e2e::envoy::{http_request, HttpResponse};
use portcullis_e2e::stack::{Layout, Ports, Stack, StackOptions};
use std::io::{Read, Write};

/// The subject of the session minted for each app.
fn subject(app: &str) -> String {
    format!("u-{app}-session")
}

/// A session cookie for `app`, sealed as the preauth filter seals it.
fn session(stack: &Stack, app: &str) -> String {
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(stack.sealing_key())
        .unwrap()
        .try_into()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = Identity {
        sub: subject(app),
        groups: vec!["staff".into(), "admins".into()],
        amr: vec!["pwd".into(), "otp".into(), "mfa".into()],
        acr: Some("urn:portcullis:mfa".into()),
        auth_time: Some(now),
        iat: now,
        exp: now + 600,
        ..Identity::default()
    };
    // The seal's randomness: the 12-byte nonce and the 32-byte salt of format 2.
    let nonce: [u8; 44] =
        std::array::from_fn(|i| (now as u8).wrapping_add(i as u8) ^ app.len() as u8);
    let sealer = Sealer::new(&[key]).unwrap();
    let value = sealer
        .seal("__Host-portcullis", app, &encode_identity(&id), nonce)
        .unwrap();
    format!("__Host-portcullis={value}")
}

/// A raw HTTP/1.1 request (the request line and headers exactly as given).
fn raw(addr: &str, head: &str) -> HttpResponse {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        // The echo is small: one chunk.
        body.split_once("\r\n")
            .map(|(_, rest)| rest.rsplit_once("\r\n0\r\n").map_or(rest, |(b, _)| b))
            .unwrap_or("")
            .to_string()
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body: body.into_bytes(),
    }
}

/// An HTTP/2 (prior knowledge, cleartext) GET with `:authority` and,
/// separately, an optional `host` header.
fn h2(addr: &str, authority: &str, host: Option<&str>, path: &str, cookie: &str) -> HttpResponse {
    use http_body_util::BodyExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(format!("http://{authority}{path}"))
            .header("accept", "application/json")
            .header("cookie", cookie);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        HttpResponse {
            status,
            headers,
            body,
        }
    })
}

/// What happened to one request.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Portcullis answered (a denial or a sign-in redirect): no app saw it.
    Refused(u16),
    /// App `app` answered, having received identity `user` (if any).
    Reached { app: String, user: Option<String> },
}

/// Reads the outcome, and checks the invariant of point 2 for it: an app
/// reached with an identity got its own app's session, and conditional
/// access judged that app.
fn judge(stack: &Stack, what: &str, r: &HttpResponse) -> Outcome {
    let echo: Option<serde_json::Value> = serde_json::from_slice(&r.body)
        .ok()
        .filter(|v: &serde_json::Value| v.get("app").is_some() && v.get("headers").is_some());
    let Some(echo) = echo else {
        assert_ne!(
            r.status,
            200,
            "{what}: 200 without the app's echo: {}",
            r.text()
        );
        return Outcome::Refused(r.status);
    };
    let app = match echo["app"].as_str().unwrap() {
        "Portcullis sample app" => "sample",
        "Portcullis admin app" => "admin",
        other => panic!("{what}: unknown app {other}"),
    };
    let headers = &echo["headers"];
    let user = headers["x-forwarded-user"].as_str().map(str::to_string);
    if let Some(u) = &user {
        assert_eq!(
            *u,
            subject(app),
            "{what}: app `{app}` received another app's session"
        );
    }
    // Conditional access judged the same app for this request.
    let rid = headers["x-request-id"].as_str().unwrap().to_string();
    let needle = format!("\"request_id\":\"{rid}\"");
    let mut line = None;
    for _ in 0..50 {
        line = stack
            .envoy_log()
            .lines()
            .find(|l| l.contains(&needle) && l.contains("\"result\""))
            .map(str::to_string);
        if line.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let line = line.unwrap_or_else(|| panic!("{what}: no decision line for {rid}"));
    let v: serde_json::Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(
        v["app"], app,
        "{what}: conditional access judged another app"
    );
    Outcome::Reached {
        app: app.to_string(),
        user,
    }
}

#[test]
fn every_host_spelling_is_judged_as_the_app_it_is_routed_to() {
    every_host_spelling(Layout::AllInOne);
}

#[test]
fn every_host_spelling_is_judged_as_the_app_it_is_routed_to_split_layout() {
    every_host_spelling(Layout::Split);
}

fn every_host_spelling(layout: Layout) {
    let stack = Stack::start(StackOptions {
        layout,
        ports: Ports::free().unwrap(),
        state_dir: None,
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports().http;
    let addr = format!("127.0.0.1:{p}");
    let sessions = [
        ("admin", session(&stack, "admin")),
        ("sample", session(&stack, "sample")),
    ];
    let both = format!("{}; {}", sessions[0].1, sessions[1].1);
    let reached = |app: &str, user: &str| Outcome::Reached {
        app: app.into(),
        user: Some(subject(user)),
    };

    // Host header spellings over HTTP/1.1, and what each is routed to with
    // today's routes: an app, "none" (no virtual host names an app: preauth
    // answers 404 unknown_host), or "any" (only the invariant is checked).
    let spellings: Vec<(String, &str)> = vec![
        (format!("admin.localhost:{p}"), "admin"),
        ("admin.localhost".into(), "admin"),
        (format!("ADMIN.LocalHost:{p}"), "admin"),
        (format!("admin.localhost:{}", p + 1), "admin"),
        // Envoy strips one trailing dot (strip_trailing_host_dot) and routes to admin.
        (format!("admin.localhost.:{p}"), "admin"),
        ("admin.localhost.".into(), "admin"),
        // What is left after that matches no virtual host and no app.
        (format!("admin.localhost..:{p}"), "none"),
        ("admin.localhost..".into(), "none"),
        (format!("Admin.Localhost...:{p}"), "none"),
        (format!("127.0.0.1:{p}"), "sample"),
        (format!("localhost:{p}"), "sample"),
        (format!("127.0.0.1.:{p}"), "sample"),
        (format!("localhost..:{p}"), "none"),
        ("evil.example".into(), "none"),
        // `admin.localhost:*` is a prefix wildcard in Envoy: this is routed to
        // admin, then refused by the edge (no valid authority).
        ("admin.localhost:evil".into(), "any"),
        (format!("admin.localhost:{p}.evil"), "any"),
    ];
    let both_session = ("both", both.clone());
    for (host, routed) in &spellings {
        for (owner, cookie) in sessions.iter().chain([&both_session]) {
            let what = format!("Host {host}, {owner} session");
            let r = http_request(
                &addr,
                "GET",
                "/headers",
                &[
                    ("Host", host),
                    ("accept", "application/json"),
                    ("cookie", cookie),
                ],
                b"",
            )
            .unwrap();
            let got = judge(&stack, &what, &r);
            match *routed {
                "any" => {}
                "none" => assert_eq!(got, Outcome::Refused(404), "{what}"),
                app if *owner == "both" || owner == &app => {
                    assert_eq!(got, reached(app, app), "{what}")
                }
                // Another app's session opens nowhere but at its own app.
                _ => assert_eq!(got, Outcome::Refused(401), "{what}"),
            }
        }
    }

    // Two Host headers: Envoy joins them (`admin.localhost:P,127.0.0.1:P`),
    // which its prefix wildcard `admin.localhost:*` routes to admin; judged
    // as admin, and refused upstream for its invalid authority.
    let r = raw(
        &addr,
        &format!(
            "GET /headers HTTP/1.1\r\nHost: admin.localhost:{p}\r\nHost: 127.0.0.1:{p}\r\n\
             accept: application/json\r\ncookie: {both}\r\nconnection: close\r\n\r\n"
        ),
    );
    assert!(
        matches!(judge(&stack, "two Host headers", &r), Outcome::Refused(_)),
        "{}",
        r.text()
    );

    // Absolute-form targets: Envoy routes on the URL's authority, and so do the filters.
    for (target, host, routed) in [
        (
            format!("http://admin.localhost:{p}/headers"),
            format!("127.0.0.1:{p}"),
            Some("admin"),
        ),
        (
            format!("http://127.0.0.1:{p}/headers"),
            format!("admin.localhost:{p}"),
            Some("sample"),
        ),
        (
            format!("http://admin.localhost.:{p}/headers"),
            format!("127.0.0.1:{p}"),
            Some("admin"),
        ),
        (
            format!("http://admin.localhost..:{p}/headers"),
            format!("admin.localhost:{p}"),
            None,
        ),
    ] {
        for (owner, cookie) in &sessions {
            let what = format!("GET {target} with Host {host}, {owner} session");
            let r = raw(
                &addr,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {host}\r\naccept: application/json\r\n\
                     cookie: {cookie}\r\nconnection: close\r\n\r\n"
                ),
            );
            let got = judge(&stack, &what, &r);
            match routed {
                Some(app) if *owner == app => assert_eq!(got, reached(app, app), "{what}"),
                Some(_) => assert_eq!(got, Outcome::Refused(401), "{what}"),
                None => assert_eq!(got, Outcome::Refused(404), "{what}"),
            }
        }
    }

    // HTTP/2: `:authority` against a separate `host` header (hyper and h2
    // send it as given). Envoy routes on `:authority`, and so do the filters.
    for (authority, host, routed) in [
        (format!("admin.localhost:{p}"), None, "admin"),
        (
            format!("admin.localhost..:{p}"),
            Some(format!("admin.localhost:{p}")),
            "none",
        ),
        (
            format!("127.0.0.1:{p}"),
            Some(format!("admin.localhost:{p}")),
            "sample",
        ),
        (
            format!("admin.localhost:{p}"),
            Some(format!("127.0.0.1:{p}")),
            "admin",
        ),
        (
            format!("admin.localhost.:{p}"),
            Some(format!("127.0.0.1:{p}")),
            "admin",
        ),
        (format!("admin.localhost..:{p}"), None, "none"),
    ] {
        for (owner, cookie) in sessions.iter().chain([&both_session]) {
            let what = format!("HTTP/2 :authority {authority}, host {host:?}, {owner} session");
            let r = h2(&addr, &authority, host.as_deref(), "/headers", cookie);
            let got = judge(&stack, &what, &r);
            match routed {
                "none" => assert_eq!(got, Outcome::Refused(404), "{what}"),
                app if *owner == "both" || owner == &app => {
                    assert_eq!(got, reached(app, app), "{what}")
                }
                _ => assert_eq!(got, Outcome::Refused(401), "{what}"),
            }
        }
    }
}

#[test]
fn the_app_learns_about_the_client_what_envoy_saw() {
    what_envoy_saw(Layout::AllInOne);
}

#[test]
fn the_app_learns_about_the_client_what_envoy_saw_split_layout() {
    what_envoy_saw(Layout::Split);
}

fn what_envoy_saw(layout: Layout) {
    let stack = Stack::start(StackOptions {
        layout,
        ports: Ports::free().unwrap(),
        state_dir: None,
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports().http;
    let addr = format!("127.0.0.1:{p}");
    let spoofed = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "203.0.113.66"),
        (
            "Forwarded",
            "for=203.0.113.66;host=evil.example;proto=https",
        ),
        ("X-Forwarded-Port", "8443"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Original-Host", "evil.example"),
        ("X-Client-IP", "203.0.113.66"),
        ("True-Client-IP", "203.0.113.66"),
        ("X-HTTP-Method-Override", "DELETE"),
    ];
    for (app, host) in [
        ("sample", format!("127.0.0.1:{p}")),
        ("admin", format!("admin.localhost:{p}")),
    ] {
        let cookie = session(&stack, app);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Host", &host),
            ("accept", "application/json"),
            ("cookie", &cookie),
        ];
        headers.extend_from_slice(&spoofed);
        let r = http_request(&addr, "GET", "/headers", &headers, b"").unwrap();
        assert_eq!(r.status, 200, "{app}: {}", r.text());
        let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let got = &echo["headers"];
        assert_eq!(got["x-forwarded-user"], subject(app).as_str());
        assert_eq!(got["x-forwarded-host"], host.as_str(), "{app}: {got}");
        assert_eq!(got["x-real-ip"], "127.0.0.1", "{app}: {got}");
        for (name, _) in &spoofed[2..] {
            let lower = name.to_ascii_lowercase();
            assert!(
                got.get(&lower).is_none(),
                "{app}: {name} reached the app: {got}"
            );
        }
        assert_eq!(echo["url"], "/headers");
        assert_eq!(echo["method"], "GET");
    }
}
