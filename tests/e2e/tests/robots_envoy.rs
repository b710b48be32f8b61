//! End-to-end: stock Envoy with `envoy-configs/robots.yaml` in front of the sample app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig};
use portcullis_e2e::free_port;
use portcullis_e2e::sample_app::SampleApp;
use std::time::Duration;

const BODY: &str = "User-agent: *\nDisallow: /\n";

fn start(config: EnvoyConfig) -> (Envoy, SampleApp, String) {
    let app = SampleApp::start("127.0.0.1:0", "robots e2e").unwrap();
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let config = config
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap()
        .port(8081, app.addr().port())
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();
    (envoy, app, format!("127.0.0.1:{listen}"))
}

#[test]
fn robots_requests_are_answered_by_the_filter_and_never_reach_the_app() {
    let (envoy, app, addr) = start(EnvoyConfig::from_repo("robots.yaml").unwrap());

    for target in ["/robots.txt", "/robots.txt?x=1"] {
        for host in ["app.example.com", "other.localhost"] {
            let r = http_request(&addr, "GET", target, &[("Host", host)], b"").unwrap();
            assert_eq!(r.status, 200, "{target} on {host}: {}", envoy.log());
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(r.text(), BODY);
            assert_eq!(r.header("x-robots-tag"), Some("noindex, nofollow"));
        }
    }
    let r = http_request(&addr, "HEAD", "/robots.txt", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD must carry no body");
    assert_eq!(
        app.hits("/robots.txt"),
        0,
        "a robots request reached the app"
    );
    assert_eq!(app.total_hits(), 0);

    // The app is reached for everything else, and its responses get X-Robots-Tag
    // (replacing the app's own `all`).
    let r = http_request(&addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("robots e2e"));
    assert_eq!(r.headers_named("x-robots-tag"), vec!["noindex, nofollow"]);
    assert_eq!(app.hits("/"), 1);

    // Every spelling of the path under the path rule is answered too (no
    // app sees it, so answering more spellings is harmless).
    for target in [
        "/ROBOTS.TXT",
        "/robots.txt;x",
        "/%72obots.txt",
        "//robots.txt",
    ] {
        let r = http_request(&addr, "GET", target, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.text(), BODY, "{target}");
    }
    assert_eq!(app.total_hits(), 1);

    // Look-alikes go to the app. (Envoy's own path normalisation turns
    // /robots.txt/../admin into /admin before any filter runs.)
    for (target, app_path) in [
        ("/robots.txt/", "/robots.txt/"),
        ("/robots.txt.bak", "/robots.txt.bak"),
        ("/robots.txt/../admin", "/admin"),
    ] {
        let before = app.hits(app_path);
        let r = http_request(&addr, "GET", target, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{target}");
        assert_ne!(r.text(), BODY, "{target} must not be served as robots.txt");
        assert_eq!(
            app.hits(app_path),
            before + 1,
            "{target} should reach the app"
        );
    }
    let r = http_request(&addr, "POST", "/robots.txt", &[], b"x=1").unwrap();
    assert_ne!(r.text(), BODY);
    assert_eq!(app.hits("/robots.txt"), 1, "only the POST reached the app");
}

#[test]
fn without_the_filter_robots_txt_reaches_the_app() {
    // The control experiment: the same config without the robots filter. If this
    // passes while the test above fails, the filter (not Envoy) does the work.
    let text = EnvoyConfig::from_repo("robots.yaml")
        .unwrap()
        .text()
        .to_string();
    let start_at = text.find("          - name: portcullis.robots").unwrap();
    let end_at = text
        .find("          - name: envoy.filters.http.router")
        .unwrap();
    let without = format!("{}{}", &text[..start_at], &text[end_at..]);
    let (_envoy, app, addr) = start(EnvoyConfig::from_text(without));
    let r = http_request(&addr, "GET", "/robots.txt", &[], b"").unwrap();
    assert_ne!(r.text(), BODY);
    assert_eq!(app.hits("/robots.txt"), 1);
}

#[test]
fn envoy_refuses_an_invalid_plugin_configuration_naming_the_field() {
    let config = EnvoyConfig::from_repo("robots.yaml")
        .unwrap()
        .replace(r#""x_robots_tag": true"#, r#""x_robots_tagg": true"#)
        .unwrap();
    let (admin, listen) = (free_port().unwrap(), free_port().unwrap());
    let config = config
        .port(9901, admin)
        .unwrap()
        .port(10000, listen)
        .unwrap();
    let err = Envoy::start(&config, admin).unwrap_err().to_string();
    assert!(err.contains("Envoy exited"), "{err}");
    assert!(err.contains("field `x_robots_tagg`"), "{err}");
    let _ = Duration::from_secs(0);
}
