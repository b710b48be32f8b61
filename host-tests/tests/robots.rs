//! Host tests on the release `portcullis_robots.wasm`: every rule of the robots filter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_host_tests::{Action, Filter, Plugin};

const BODY: &str = "User-agent: *\nDisallow: /\n";

fn get(p: &mut Plugin, method: &str, path: &str) -> (u32, Action) {
    let s = p.new_stream().unwrap();
    let action = p
        .request_headers(
            s,
            &[
                (":method", method),
                (":path", path),
                (":authority", "app.example.com"),
                (":scheme", "https"),
            ],
            true,
        )
        .unwrap();
    (s, action)
}

#[test]
fn serves_robots_txt_locally_on_any_host() {
    let mut p = Plugin::load(Filter::Robots, "").unwrap();
    for host in ["app.example.com", "other.localhost", "127.0.0.1:10000"] {
        let s = p.new_stream().unwrap();
        let action = p
            .request_headers(
                s,
                &[
                    (":method", "GET"),
                    (":path", "/robots.txt"),
                    (":authority", host),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            action,
            Action::Pause,
            "the request must not go on to the upstream"
        );
        let r = p.local_response(s).expect("a local response");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            r.header("x-robots-tag").as_deref(),
            Some("noindex, nofollow")
        );
        assert_eq!(r.body_text(), BODY);
        p.finish_stream(s).unwrap();
    }
}

#[test]
fn head_gets_no_body() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    let (s, action) = get(&mut p, "HEAD", "/robots.txt");
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn normalised_forms_are_served_and_query_ignored() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    for path in [
        "/robots.txt?x=1",
        "//robots.txt",
        "/a/../robots.txt",
        "/%72obots.txt",
        "/./robots.txt",
        // The path rule: case and `;` parameters do not make another path.
        "/ROBOTS.TXT",
        "/Robots.Txt",
        "/robots.txt;x",
        "/;/robots.txt",
    ] {
        let (s, action) = get(&mut p, "GET", path);
        assert_eq!(action, Action::Pause, "{path}");
        assert_eq!(p.local_response(s).unwrap().body_text(), BODY, "{path}");
    }
}

#[test]
fn look_alikes_and_other_methods_reach_the_app() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    for (method, path) in [
        ("GET", "/robots.txt/../admin"),
        ("GET", "/admin#/robots.txt"),
        ("GET", "/robots.txt/"),
        // Refused by the path rule: not answered here; preauth and
        // conditional access refuse them (`ambiguous_path`).
        ("GET", "/robots.txt."),
        ("GET", "/robots.txt%20"),
        ("GET", "/robots%2etxt%2f"),
        ("GET", "/"),
        ("POST", "/robots.txt"),
        ("DELETE", "/robots.txt"),
        ("GET", "/robots.txt%"),
    ] {
        let (s, action) = get(&mut p, method, path);
        assert_eq!(action, Action::Continue, "{method} {path}");
        assert!(p.local_response(s).is_none(), "{method} {path}");
    }
}

#[test]
fn x_robots_tag_is_set_on_every_response_and_not_weakened_by_the_app() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    let (s, _) = get(&mut p, "GET", "/");
    let action = p
        .response_headers(
            s,
            &[
                (":status", "200"),
                ("x-robots-tag", "all"),
                ("content-type", "text/html"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(action, Action::Continue);
    let tags: Vec<_> =
        portcullis_host_tests::header_values(&p.stream(s).response_headers, "x-robots-tag");
    assert_eq!(tags, vec!["noindex, nofollow".to_string()]);
    assert_eq!(
        p.response_header(s, "content-type").as_deref(),
        Some("text/html")
    );
}

#[test]
fn x_robots_tag_can_be_configured_or_turned_off() {
    let mut p = Plugin::load(
        Filter::Robots,
        r#"{"x_robots_tag_value": "noindex, noarchive"}"#,
    )
    .unwrap();
    let (s, _) = get(&mut p, "GET", "/");
    p.response_headers(s, &[(":status", "200")], true).unwrap();
    assert_eq!(
        p.response_header(s, "x-robots-tag").as_deref(),
        Some("noindex, noarchive")
    );

    let mut p = Plugin::load(Filter::Robots, r#"{"x_robots_tag": false}"#).unwrap();
    let (s, _) = get(&mut p, "GET", "/");
    p.response_headers(s, &[(":status", "200")], true).unwrap();
    assert_eq!(p.response_header(s, "x-robots-tag"), None);
    let (s, _) = get(&mut p, "GET", "/robots.txt");
    assert_eq!(p.local_response(s).unwrap().header("x-robots-tag"), None);
}

#[test]
fn invalid_configuration_is_refused_with_the_field_named() {
    for (config, field) in [
        (r#"{"x_robots_tags": true}"#, "x_robots_tags"),
        (r#"{"x_robots_tag": "yes"}"#, "x_robots_tag"),
        (r#"{"x_robots_tag_value": "a\r\nb"}"#, "x_robots_tag_value"),
        (r#"[1]"#, "JSON object"),
        (r#"{"#, "EOF"),
    ] {
        let p = Plugin::builder(Filter::Robots)
            .config(config)
            .start()
            .unwrap();
        assert!(!p.configured(), "{config} must be refused");
        let logs = p.log_messages().join("\n");
        assert!(logs.contains(field), "log must name `{field}`: {logs}");
    }
}

#[test]
fn garbage_requests_never_trap() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    let s = p.new_stream().unwrap();
    // No :path or :method at all.
    assert_eq!(p.request_headers(s, &[], true).unwrap(), Action::Continue);
    for path in [
        "",
        "*",
        "%",
        "/\u{7f}",
        "/robots.txt\u{0}",
        &"/".repeat(10_000),
    ] {
        let (_, action) = get(&mut p, "GET", path);
        assert_eq!(action, Action::Continue, "{path:?}");
    }
}

#[test]
fn non_utf8_header_values_never_trap() {
    let mut p = Plugin::load(Filter::Robots, "{}").unwrap();
    let s = p.new_stream().unwrap();
    let headers = vec![
        (":method".to_string(), b"GET".to_vec()),
        (":path".to_string(), b"/robots.txt\xff".to_vec()),
    ];
    assert_eq!(
        p.request_headers_raw(s, headers, true).unwrap(),
        Action::Continue
    );
    assert!(p.local_response(s).is_none());
}

#[test]
fn missing_module_names_the_build_command() {
    let err = Plugin::builder_from_path("/nonexistent/portcullis_robots.wasm")
        .start()
        .unwrap_err()
        .to_string();
    assert!(err.contains("make build"), "{err}");
}
