//! Host tests on the release `portcullis_cookie.wasm`: proxy cookies never
//! reach the app, app cookies are hardened, internal URLs become external ones
//! in headers and (streaming) bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_host_tests::{header_values, Action, Filter, Plugin};
use std::time::Instant;

const CONFIG: &str = r#"{
  "apps": [
    {
      "name": "wiki",
      "internal_url": "http://wiki.internal:8080/app",
      "external_url": "https://wiki.localhost:10443/",
      "set_cookie": { "secure": true, "http_only": true, "same_site": "Lax" },
      "body": { "enabled": true, "request_identity_encoding": true }
    },
    {
      "name": "plain",
      "internal_url": "http://plain.internal",
      "external_url": "https://plain.localhost"
    }
  ]
}"#;

fn plugin() -> Plugin {
    Plugin::load(Filter::Cookie, CONFIG).unwrap()
}

/// A request to `host` with the given extra headers; returns the stream id.
fn request(p: &mut Plugin, host: &str, extra: &[(&str, &str)]) -> u32 {
    let s = p.new_stream().unwrap();
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/page"),
        (":authority", host),
        (":scheme", "https"),
        ("x-request-id", "req-42"),
    ];
    headers.extend_from_slice(extra);
    assert_eq!(
        p.request_headers(s, &headers, true).unwrap(),
        Action::Continue
    );
    s
}

fn request_values(p: &Plugin, s: u32, name: &str) -> Vec<String> {
    header_values(&p.stream(s).request_headers, name)
}

fn response_values(p: &Plugin, s: u32, name: &str) -> Vec<String> {
    header_values(&p.stream(s).response_headers, name)
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let p = Plugin::builder(Filter::Cookie)
        .config(r#"{"apps": [{"internal_url": "http://a", "external_url": "https://b", "set_cookie": {"same_site": "Loose"}}]}"#)
        .start()
        .unwrap();
    assert!(!p.configured());
    assert!(
        p.log_messages()
            .iter()
            .any(|m| m.contains("apps[0].set_cookie.same_site")),
        "{:?}",
        p.log_messages()
    );
}

#[test]
fn proxy_cookies_are_removed_from_every_cookie_header() {
    let mut p = plugin();
    let s = request(
        &mut p,
        "wiki.localhost:10443",
        &[
            ("cookie", "a=1; __Host-portcullis=SEALED; b=\"x y\""),
            ("cookie", "__Host-portcullis-state-0f=S; c="),
        ],
    );
    assert_eq!(request_values(&p, s, "cookie"), vec!["a=1; b=\"x y\"; c="]);
    // Other headers are untouched.
    assert_eq!(request_values(&p, s, "x-request-id"), vec!["req-42"]);

    // Only proxy cookies: the header goes away. Also on hosts with no app.
    let s = request(
        &mut p,
        "unknown.localhost",
        &[("cookie", "__Host-portcullis=x; portcullis-state-1=y")],
    );
    assert!(request_values(&p, s, "cookie").is_empty());

    // No proxy cookie: left exactly as it was, several headers included.
    let s = request(
        &mut p,
        "plain.localhost",
        &[("cookie", "a=1;b=2"), ("cookie", "c=3")],
    );
    assert_eq!(request_values(&p, s, "cookie"), vec!["a=1;b=2", "c=3"]);
}

#[test]
fn identity_encoding_is_requested_only_when_configured() {
    let mut p = plugin();
    let s = request(&mut p, "wiki.localhost", &[("accept-encoding", "gzip, br")]);
    assert_eq!(request_values(&p, s, "accept-encoding"), vec!["identity"]);
    let s = request(
        &mut p,
        "plain.localhost",
        &[("accept-encoding", "gzip, br")],
    );
    assert_eq!(request_values(&p, s, "accept-encoding"), vec!["gzip, br"]);
}

#[test]
fn set_cookies_are_hardened_and_proxy_names_refused_and_logged() {
    let mut p = plugin();
    let s = request(&mut p, "wiki.localhost", &[]);
    p.response_headers(
        s,
        &[
            (":status", "302"),
            ("set-cookie", "sid=abc; Path=/app; Domain=wiki.internal"),
            ("set-cookie", "__Host-portcullis=forged; Path=/; Secure"),
            (
                "set-cookie",
                "theme=dark; Secure; HttpOnly; SameSite=Strict",
            ),
            ("location", "http://wiki.internal:8080/app/login?next=%2F"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        response_values(&p, s, "set-cookie"),
        vec![
            "sid=abc; Path=/; Domain=wiki.localhost; SameSite=Lax; Secure; HttpOnly",
            "theme=dark; Secure; HttpOnly; SameSite=Strict",
        ]
    );
    assert_eq!(
        response_values(&p, s, "location"),
        vec!["https://wiki.localhost:10443/login?next=%2F"]
    );
    assert_eq!(response_values(&p, s, ":status"), vec!["302"]);
    let logs = p.log_messages();
    assert!(
        logs.iter()
            .any(|m| m.contains("req-42") && m.contains("__Host-portcullis")),
        "{logs:?}"
    );

    // Without an app the proxy names are still refused; other cookies pass untouched.
    let s = request(&mut p, "unknown.localhost", &[]);
    p.response_headers(
        s,
        &[
            (":status", "200"),
            ("set-cookie", "__secure-PORTCULLIS=x"),
            ("set-cookie", "a=1"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(response_values(&p, s, "set-cookie"), vec!["a=1"]);
}

#[test]
fn url_headers_are_translated_and_others_left_alone() {
    let mut p = plugin();
    let s = request(&mut p, "wiki.localhost", &[]);
    p.response_headers(
        s,
        &[
            (":status", "200"),
            ("content-location", "http://WIKI.internal:8080/app/a"),
            ("refresh", "5; url=http://wiki.internal:8080/app/b"),
            ("link", "<http://wiki.internal:8080/app/s.css>; rel=preload, <https://cdn.example/x.js>; rel=preload"),
            ("link", "<http://wiki.internal:8080/application>; rel=next"),
            ("x-other", "http://wiki.internal:8080/app/c"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        response_values(&p, s, "content-location"),
        vec!["https://wiki.localhost:10443/a"]
    );
    assert_eq!(
        response_values(&p, s, "refresh"),
        vec!["5; url=https://wiki.localhost:10443/b"]
    );
    assert_eq!(
        response_values(&p, s, "link"),
        vec![
            "<https://wiki.localhost:10443/s.css>; rel=preload, <https://cdn.example/x.js>; rel=preload",
            "<http://wiki.internal:8080/application>; rel=next",
        ]
    );
    assert_eq!(
        response_values(&p, s, "x-other"),
        vec!["http://wiki.internal:8080/app/c"]
    );

    // Userinfo does not fool it; relative paths map because the prefixes differ.
    let s = request(&mut p, "wiki.localhost", &[]);
    p.response_headers(
        s,
        &[
            (":status", "302"),
            ("location", "http://wiki.internal:8080@evil/app"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        response_values(&p, s, "location"),
        vec!["http://wiki.internal:8080@evil/app"]
    );
    let s = request(&mut p, "wiki.localhost", &[]);
    p.response_headers(s, &[(":status", "302"), ("location", "/app/x")], true)
        .unwrap();
    assert_eq!(response_values(&p, s, "location"), vec!["/x"]);
}

const PAGE: &str = concat!(
    "<html><a href=\"http://wiki.internal:8080/app/x\">x</a>",
    "<img src=//wiki.internal:8080/app/i.png>",
    "<script>u=\"http:\\/\\/wiki.internal:8080\\/app\\/api\"</script>",
    "<a href=\"http://wiki.internal:8080/application\">no</a></html>"
);
const PAGE_OUT: &str = concat!(
    "<html><a href=\"https://wiki.localhost:10443/x\">x</a>",
    "<img src=//wiki.localhost:10443/i.png>",
    "<script>u=\"https:\\/\\/wiki.localhost:10443\\/api\"</script>",
    "<a href=\"http://wiki.internal:8080/application\">no</a></html>"
);

/// Sends `chunks` as the response body of a fresh wiki stream; returns what the client got.
fn body_through(p: &mut Plugin, headers: &[(&str, &str)], chunks: &[&[u8]]) -> (u32, Vec<u8>) {
    let s = request(p, "wiki.localhost", &[]);
    assert_eq!(
        p.response_headers(s, headers, false).unwrap(),
        Action::Continue
    );
    for (i, c) in chunks.iter().enumerate() {
        let action = p.response_body(s, c, i + 1 == chunks.len()).unwrap();
        assert_eq!(action, Action::Continue, "every chunk streams on");
    }
    (s, p.stream(s).response_body_out.clone())
}

#[test]
fn body_is_rewritten_while_streaming_across_every_split() {
    let mut p = plugin();
    let len = PAGE.len().to_string();
    let headers = [
        (":status", "200"),
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", len.as_str()),
    ];
    let input = PAGE.as_bytes();
    for cut in 0..=input.len() {
        let (s, out) = body_through(&mut p, &headers, &[&input[..cut], &input[cut..]]);
        assert_eq!(String::from_utf8(out).unwrap(), PAGE_OUT, "split at {cut}");
        assert!(response_values(&p, s, "content-length").is_empty());
    }
    // Many small chunks and an empty last one.
    let mut chunks: Vec<&[u8]> = input.chunks(7).collect();
    chunks.push(b"");
    let (_, out) = body_through(&mut p, &headers, &chunks);
    assert_eq!(String::from_utf8(out).unwrap(), PAGE_OUT);
}

#[test]
fn compressed_other_types_and_other_apps_pass_unchanged() {
    let mut p = plugin();
    let len = PAGE.len().to_string();
    for headers in [
        vec![
            (":status", "200"),
            ("content-type", "text/html"),
            ("content-encoding", "gzip"),
            ("content-length", len.as_str()),
        ],
        vec![
            (":status", "200"),
            ("content-type", "image/svg+xml"),
            ("content-length", len.as_str()),
        ],
    ] {
        let (s, out) = body_through(&mut p, &headers, &[PAGE.as_bytes()]);
        assert_eq!(out, PAGE.as_bytes());
        assert_eq!(response_values(&p, s, "content-length"), vec![len.clone()]);
    }
    // Body translation is off by default (the plain app).
    let s = request(&mut p, "plain.localhost", &[]);
    p.response_headers(
        s,
        &[(":status", "200"), ("content-type", "text/html")],
        false,
    )
    .unwrap();
    p.response_body(s, b"<a href=\"http://plain.internal/\">", true)
        .unwrap();
    assert_eq!(
        p.stream(s).response_body_out,
        b"<a href=\"http://plain.internal/\">"
    );
}

#[test]
fn non_ascii_and_odd_headers_pass_without_trapping() {
    let mut p = plugin();
    let s = request(
        &mut p,
        "WIKI.localhost",
        &[("cookie", "x=\u{fc}; ;; __Host-portcullis=1; =; garbage")],
    );
    assert_eq!(
        request_values(&p, s, "cookie"),
        vec!["x=\u{fc}; =; garbage"]
    );
    p.response_headers(
        s,
        &[
            (":status", "302"),
            ("set-cookie", "n=\u{fc}; Path=/app/\u{e9}"),
            ("set-cookie", ";;;"),
            ("location", "http://wiki.internal:8080/app/\u{e9}"),
            ("refresh", "url="),
            ("link", "<"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        response_values(&p, s, "location"),
        vec!["https://wiki.localhost:10443/\u{e9}"]
    );
    assert_eq!(response_values(&p, s, "refresh"), vec!["url="]);
    assert_eq!(response_values(&p, s, "set-cookie").len(), 2);
}

#[test]
fn body_throughput_in_the_test_host() {
    // Correctness on a 1 MiB page; the MB/s figure is printed, not asserted.
    let row = concat!(
        "<tr><td><a href=\"http://wiki.internal:8080/app/page/42?x=1\">Page</a></td>",
        "<td><img src=\"//wiki.internal:8080/app/img/a.png\" alt=\"\"></td>",
        "<td>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod</td>",
        "<td><a href=\"https://cdn.example.com/lib.js\">cdn</a></td></tr>\n",
    );
    let rows = (1024 * 1024) / row.len() + 1;
    let page = row.repeat(rows);
    let expected = page
        .replace(
            "http://wiki.internal:8080/app",
            "https://wiki.localhost:10443",
        )
        .replace("//wiki.internal:8080/app", "//wiki.localhost:10443");
    let mut p = plugin();
    let chunks: Vec<&[u8]> = page.as_bytes().chunks(16 * 1024).collect();
    let headers = [(":status", "200"), ("content-type", "text/html")];
    let start = Instant::now();
    let (_, out) = body_through(&mut p, &headers, &chunks);
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out == expected.as_bytes(),
        "the 1 MiB page was not translated as expected"
    );
    println!(
        "cookie filter in the test host: {} bytes in 16 KiB chunks, {:.1} MB/s",
        page.len(),
        page.len() as f64 / 1e6 / secs
    );
}

/// Issue 12, point 2: the cookie filter judges the app the route names. Its
/// cookies are hardened and its URLs translated under that app's policy, a
/// Host spelling Envoy routed elsewhere gets no app's, and a route naming an
/// app without an entry is refused (its cookies would go unhardened).
#[test]
fn the_route_chooses_the_cookie_policy() {
    let mut p = plugin();
    let send = |p: &mut Plugin, route: Option<&str>, host: &str| {
        let s = p.new_stream().unwrap();
        if let Some(app) = route {
            p.set_route_app(s, app).unwrap();
        }
        let headers = [
            (":method", "GET"),
            (":path", "/page"),
            (":authority", host),
            (":scheme", "https"),
            ("x-request-id", "req-7"),
        ];
        let a = p.request_headers(s, &headers, true).unwrap();
        (s, a)
    };
    let respond = |p: &mut Plugin, s: u32| {
        p.response_headers(
            s,
            &[
                (":status", "302"),
                ("location", "http://plain.internal/next"),
                ("set-cookie", "sid=1; Path=/"),
            ],
            false,
        )
        .unwrap();
    };
    // Routed to `plain` while the Host names `wiki`: plain's mapping applies.
    let (s, a) = send(&mut p, Some("plain"), "wiki.localhost:10443");
    assert_eq!(a, Action::Continue);
    respond(&mut p, s);
    assert_eq!(
        response_values(&p, s, "location"),
        ["https://plain.localhost/next"]
    );
    // A trailing dot Envoy left names no app (the old filter stripped it).
    let (s, a) = send(&mut p, None, "plain.localhost.");
    assert_eq!(a, Action::Continue);
    respond(&mut p, s);
    assert_eq!(
        response_values(&p, s, "location"),
        ["http://plain.internal/next"]
    );
    // A route naming an app without an entry is refused.
    let (s, a) = send(&mut p, Some("plian"), "plain.localhost");
    assert_eq!(a, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.body_text().contains("route_app_unknown"));
}
