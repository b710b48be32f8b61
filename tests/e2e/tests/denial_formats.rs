//! End-to-end on stock Envoy (the demo system, `envoy-configs/demo.yaml`): a
//! filter's denial (`unknown_host`, from preauth) and the edge's
//! (`connector_unavailable`, after the connector stops) answer the same
//! format for the same `Accept` header, the one `Format::negotiate` of the
//! core picks, with the same fields (code, sentence, request id).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use portcullis_core::denial::Format;
use portcullis_e2e::envoy::{http_request, HttpResponse};
use portcullis_e2e::signin::sign_in;
use portcullis_e2e::stack::{Ports, Stack, StackOptions};

const ACCEPTS: &[Option<&str>] = &[
    None,
    Some("application/json, text/html"),
    Some("text/html, application/json"),
    Some("text/html;q=0.5, application/json"),
    Some("application/json;q=0.5, text/html"),
    Some("application/*"),
    Some("*/*"),
    Some("text/html;q=0, */*"),
    Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
];

/// The format a denial was answered in, after checking its fields.
fn format_of(r: &HttpResponse, code: &str, what: &str) -> Format {
    let ct = r.header("content-type").unwrap_or("").to_string();
    let body = r.text();
    if ct.starts_with("application/json") {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], code, "{what}: {body}");
        assert_eq!(v["code"], code, "{what}: {body}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert!(
            v["request_id"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        Format::Json
    } else {
        assert!(ct.starts_with("text/html"), "{what}: {ct}");
        assert!(
            body.contains(&format!("Error code: <code>{code}</code>")),
            "{what}: {body}"
        );
        assert!(body.contains("Request id: <code>"), "{what}: {body}");
        Format::Html
    }
}

#[test]
fn a_filter_denial_and_an_edge_denial_answer_the_same_format() {
    let stack = Stack::start(StackOptions {
        layout: Default::default(),
        ports: Ports::free().unwrap(),
        state_dir: None,
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports();
    let envoy = format!("127.0.0.1:{}", p.http);
    let host = format!("admin.localhost:{}", p.http);
    let jar = sign_in(&envoy, &host, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.envoy_log()));
    let cookie = jar.header();
    let nowhere = format!("nowhere.localhost:{}", p.http);

    // The connector stops: the edge has no tunnel for the app any more.
    let pid = stack.connector_pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let app = |accept: Option<&str>| {
        let mut h = vec![("Host", host.as_str()), ("Cookie", cookie.as_str())];
        if let Some(a) = accept {
            h.push(("Accept", a));
        }
        http_request(&envoy, "GET", "/reports", &h, b"").unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app(Some("application/json"));
        if r.header("x-portcullis-error") == Some("connector_unavailable") {
            break;
        }
        assert!(Instant::now() < deadline, "still {} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }

    for &accept in ACCEPTS {
        let what = format!("Accept {accept:?}");
        let mut h = vec![("Host", nowhere.as_str())];
        if let Some(a) = accept {
            h.push(("Accept", a));
        }
        let filter = http_request(&envoy, "GET", "/", &h, b"").unwrap();
        assert_eq!(filter.status, 404, "{what}: {}", filter.text());
        let edge = app(accept);
        assert_eq!(edge.status, 502, "{what}: {}", edge.text());
        assert_eq!(
            edge.header("x-portcullis-error"),
            Some("connector_unavailable")
        );
        let from_filter = format_of(&filter, "unknown_host", &what);
        let from_edge = format_of(&edge, "connector_unavailable", &what);
        assert_eq!(from_filter, from_edge, "{what}");
        assert_eq!(from_filter, Format::negotiate(accept), "{what}");
    }
}
