//! With the real OpenID provider (`tests/idp`, oidc-provider, on free ports):
//! stock Envoy runs from a rendered portcullis.yaml and signs a user in
//! (`portcullis render`, issue 17 point 2), and `portcullis check` finds the
//! provider mistakes that otherwise surface as a hang and `keys_unavailable`
//! (issue 17 point 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_cli::check::{check, endpoint_mismatch, Report};
use portcullis_cli::render::{render, Rendered};
use portcullis_cli::spec;
use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig, TempDir};
use portcullis_e2e::idp::Idp;
use portcullis_e2e::sample_app::SampleApp;
use portcullis_e2e::signin::sign_in;
use portcullis_e2e::{free_port, repo_root};

struct Ports {
    http: u16,
    admin: u16,
}

fn start_idp(dir: &TempDir, http: u16) -> Idp {
    let clients = serde_json::json!({
        "clients": [{
            "client_id": "portcullis-demo",
            "client_secret": "portcullis-demo-secret",
            "redirect_uris": [format!("http://127.0.0.1:{http}/.auth/callback")],
            "post_logout_redirect_uris": [format!("http://127.0.0.1:{http}/")],
        }]
    });
    Idp::start(&clients.to_string(), dir.path()).unwrap()
}

/// A portcullis.yaml with one app Envoy reaches directly.
fn config(ports: &Ports, issuer: &str, app: &str, provider_extra: &str) -> String {
    format!(
        r#"
admin: "127.0.0.1:{admin}"
listeners:
  http: "127.0.0.1:{http}"
providers:
  test:
    issuer: "{issuer}"
    client_id: portcullis-demo
    client_secret: portcullis-demo-secret
    scopes: [openid, profile, email]
{provider_extra}
sealing_keys: ["cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA="]
apps:
  - id: sample
    hosts: ["127.0.0.1", localhost]
    upstream: "http://{app}"
    access: {{ open: true }}
    post_logout_redirect_uri: /
"#,
        admin = ports.admin,
        http = ports.http,
    )
}

fn rendered(text: &str) -> Rendered {
    render(&spec::parse(text).unwrap(), &repo_root()).unwrap_or_else(|e| panic!("{e}"))
}

fn run_check(r: &Rendered) -> Report {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(r))
}

#[test]
fn stock_envoy_runs_a_rendered_config_and_signs_in_with_the_real_provider() {
    let dir = TempDir::new("portcullis-cli-e2e").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let app = SampleApp::start("127.0.0.1:0", "rendered").unwrap();
    let r = rendered(&config(&ports, idp.issuer(), &app.addr().to_string(), ""));
    let files = portcullis_cli::write_render(&r, dir.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("filters/preauth.json")));
    let text = std::fs::read_to_string(dir.path().join("envoy.yaml")).unwrap();
    let envoy = Envoy::start(&EnvoyConfig::from_text(text), ports.admin).unwrap();
    let addr = format!("127.0.0.1:{}", ports.http);
    let host = addr.clone();

    // robots first, without a session, and the app never sees it.
    let robots = http_request(&addr, "GET", "/robots.txt", &[("Host", &host)], b"").unwrap();
    assert_eq!(robots.status, 200);
    assert_eq!(robots.text(), "User-agent: *\nDisallow: /\n");
    // No session: to the provider, and nothing reached the app.
    let anon = http_request(
        &addr,
        "GET",
        "/headers",
        &[("Host", &host), ("Accept", "text/html")],
        b"",
    )
    .unwrap();
    assert_eq!(anon.status, 302, "{}", envoy.log());
    assert!(anon
        .header("location")
        .unwrap()
        .starts_with(&format!("{}/", idp.issuer())));
    assert_eq!(app.total_hits(), 0);

    let jar = sign_in(&addr, &host, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log()));
    let cookie = jar.header();
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[
            ("Host", &host),
            ("Accept", "text/html"),
            ("Cookie", &cookie),
            ("X-Forwarded-User", "mallory"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log());
    let seen: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let headers = &seen["headers"];
    // The client's own copy was dropped; the provider's subject came instead.
    assert_eq!(headers["x-forwarded-user"], "u-alice", "{seen}");
    assert_eq!(headers["x-forwarded-preferred-username"], "alice", "{seen}");
    assert!(
        headers.get("x-portcullis-jwt-assertion").is_some(),
        "{seen}"
    );
    assert!(!r.text().contains("__Host-portcullis"), "{seen}");
    assert_eq!(r.header("x-robots-tag"), Some("noindex, nofollow"));
}

#[test]
fn check_passes_against_the_real_provider_and_prints_the_uris_to_register() {
    let dir = TempDir::new("portcullis-cli-check").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let r = rendered(&config(&ports, idp.issuer(), "127.0.0.1:1", ""));
    let report = run_check(&r);
    let text = report.text();
    assert!(report.ok(), "{text}");
    assert!(
        text.contains(&format!("issuer is exactly `{}`", idp.issuer())),
        "{text}"
    );
    assert!(text.contains("jwks_uri"), "{text}");
    assert!(text.contains("through cluster `oidc_test`"), "{text}");
    assert!(
        text.contains("authenticates client `portcullis-demo` (client_secret_basic"),
        "{text}"
    );
    // The URIs to register carry the listener's port.
    assert!(
        text.contains(&format!(
            "redirect URI     http://127.0.0.1:{}/.auth/callback",
            ports.http
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "redirect URI     http://localhost:{}/.auth/callback",
            ports.http
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "post-logout URI  http://127.0.0.1:{}/",
            ports.http
        )),
        "{text}"
    );
}

#[test]
fn check_names_an_issuer_with_a_trailing_slash() {
    let dir = TempDir::new("portcullis-cli-check").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let wrong = format!("{}/", idp.issuer());
    let r = rendered(&config(&ports, &wrong, "127.0.0.1:1", ""));
    let report = run_check(&r);
    assert!(!report.ok());
    let errors = report.errors().join("\n");
    assert!(errors.contains("trailing slash"), "{errors}");
    assert!(
        errors.contains(&format!(
            "set the provider's `issuer` to `{}`",
            idp.issuer()
        )),
        "{errors}"
    );
}

#[test]
fn check_names_a_provider_that_does_not_answer() {
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let nobody = free_port().unwrap();
    let r = rendered(&config(
        &ports,
        &format!("http://127.0.0.1:{nobody}"),
        "127.0.0.1:1",
        "",
    ));
    let report = run_check(&r);
    let errors = report.errors().join("\n");
    assert!(
        errors.contains("discovery http://127.0.0.1:")
            && errors.contains("through cluster `oidc_test`"),
        "{errors}"
    );
}

#[test]
fn check_names_endpoints_off_the_cluster_and_https_endpoints_without_tls() {
    let dir = TempDir::new("portcullis-cli-check").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let issuer = idp.issuer().to_string();
    // Explicit endpoints: the token endpoint on another host, the keys over https.
    let extra = format!(
        "    discovery: false\n    authorization_endpoint: \"{issuer}/auth\"\n    token_endpoint: \
         \"http://oauth2.example.com/token\"\n    jwks_uri: \"https://127.0.0.1:{}/jwks\"\n",
        idp.port()
    );
    let r = rendered(&config(&ports, &issuer, "127.0.0.1:1", &extra));
    let report = run_check(&r);
    let errors = report.errors().join("\n");
    assert!(
        errors.contains("token_endpoint http://oauth2.example.com/token is on oauth2.example.com:80, but the filter sends it to cluster `oidc_test`"),
        "{errors}"
    );
    assert!(
        errors.contains("jwks_uri") && errors.contains("has no TLS"),
        "{errors}"
    );
    // The same comparison, alone: the cluster's own host and scheme pass.
    let cluster = r.clusters.iter().find(|c| c.name == "oidc_test").unwrap();
    let url = portcullis_core::oidc::url::HttpUrl::parse(&format!("{issuer}/jwks")).unwrap();
    assert_eq!(endpoint_mismatch("jwks_uri", &url, cluster), None);
}

/// The client secret and the sealing key from Envoy's environment (issue 17
/// point 7): the render names the variables in `host_env_keys`, the filter
/// reads them through WASI's environment, and a sign-in works; without them
/// Envoy refuses the configuration, naming the variable.
#[test]
fn secrets_from_envoys_environment_sign_in_and_a_missing_one_refuses_the_config() {
    let dir = TempDir::new("portcullis-cli-env").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let app = SampleApp::start("127.0.0.1:0", "rendered").unwrap();
    let text = config(&ports, idp.issuer(), &app.addr().to_string(), "")
        .replace(
            "client_secret: portcullis-demo-secret",
            "client_secret: { env: PORTCULLIS_E2E_CLIENT_SECRET }",
        )
        .replace(
            r#"sealing_keys: ["cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA="]"#,
            "sealing_keys: [{ env: PORTCULLIS_E2E_SEALING_KEY }]",
        );
    let r = rendered(&text);
    assert_eq!(
        r.env_keys,
        ["PORTCULLIS_E2E_CLIENT_SECRET", "PORTCULLIS_E2E_SEALING_KEY"]
    );
    // Neither secret is in anything the render wrote.
    portcullis_cli::write_render(&r, dir.path()).unwrap();
    let envoy_yaml = std::fs::read_to_string(dir.path().join("envoy.yaml")).unwrap();
    assert!(!envoy_yaml.contains("portcullis-demo-secret"));
    assert!(envoy_yaml.contains("host_env_keys"), "{envoy_yaml}");
    let config = EnvoyConfig::from_text(envoy_yaml);

    // Unset: the filter refuses the configuration, and Envoy does not start.
    let refused = Envoy::start(&config, ports.admin).unwrap_err().to_string();
    assert!(
        refused.contains("PORTCULLIS_E2E_CLIENT_SECRET") && refused.contains("is not set"),
        "{refused}"
    );

    // Set in Envoy's environment (a Kubernetes Secret mounted as variables).
    // Only this test sets these names.
    std::env::set_var("PORTCULLIS_E2E_CLIENT_SECRET", "portcullis-demo-secret");
    std::env::set_var(
        "PORTCULLIS_E2E_SEALING_KEY",
        "ZW52aXJvbm1lbnQtc2VhbGluZy1rZXktMDAwMDAwMDA=",
    );
    let envoy = Envoy::start(&config, ports.admin).unwrap();
    let addr = format!("127.0.0.1:{}", ports.http);
    // The provider accepted the secret from the environment at the token endpoint.
    let jar = sign_in(&addr, &addr, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log()));
    let cookie = jar.header();
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[
            ("Host", &addr),
            ("Accept", "text/html"),
            ("Cookie", &cookie),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", envoy.log());
    assert!(r.text().contains("u-alice"), "{}", r.text());
}

/// A provider whose token endpoint and keys are on another host than its
/// issuer (as Google's are): with `endpoint_hosts`, the provider's cluster
/// routes each of the filter's calls by its host, and a user signs in
/// through stock Envoy (issue 17 point 4). Here the other host is
/// `localhost:<port>` for the provider at `127.0.0.1:<port>`.
#[test]
fn a_provider_whose_endpoints_span_hosts_signs_in_through_the_host_router() {
    let dir = TempDir::new("portcullis-cli-hosts").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let app = SampleApp::start("127.0.0.1:0", "rendered").unwrap();
    let idp_addr = format!("127.0.0.1:{}", idp.port());
    let doc = http_request(
        &idp_addr,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        b"",
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc.text()).unwrap();
    let other_host = |key: &str| {
        doc[key].as_str().unwrap().replace(
            &format!("//{idp_addr}"),
            &format!("//localhost:{}", idp.port()),
        )
    };
    let explicit = format!(
        "    discovery: false\n    authorization_endpoint: \"{}\"\n    token_endpoint: \"{}\"\n    jwks_uri: \"{}\"\n",
        doc["authorization_endpoint"].as_str().unwrap(),
        other_host("token_endpoint"),
        other_host("jwks_uri"),
    );
    assert!(
        explicit.contains("token_endpoint: \"http://localhost:"),
        "{explicit}"
    );

    // Without endpoint_hosts, check says the filter would send them to the wrong place.
    let single = rendered(&config(
        &ports,
        idp.issuer(),
        &app.addr().to_string(),
        &explicit,
    ));
    let errors = run_check(&single).errors().join("\n");
    assert!(
        errors.contains("token_endpoint http://localhost:"),
        "{errors}"
    );
    assert!(errors.contains("jwks_uri http://localhost:"), "{errors}");

    let routed_extra = format!(
        "{explicit}    endpoint_hosts: [\"localhost:{}\"]\n",
        idp.port()
    );
    let r = rendered(&config(
        &ports,
        idp.issuer(),
        &app.addr().to_string(),
        &routed_extra,
    ));
    let report = run_check(&r);
    assert!(report.ok(), "{}", report.text());
    portcullis_cli::write_render(&r, dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("envoy.yaml")).unwrap();
    assert!(text.contains("envoy_internal_address"), "{text}");
    let envoy = Envoy::start(&EnvoyConfig::from_text(text), ports.admin).unwrap();
    let addr = format!("127.0.0.1:{}", ports.http);
    let jar = sign_in(&addr, &addr, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log()));
    let cookie = jar.header();
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[
            ("Host", &addr),
            ("Accept", "text/html"),
            ("Cookie", &cookie),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", envoy.log());
    assert!(r.text().contains("u-alice"), "{}", r.text());
    // The calls went through the per-host cluster of localhost.
    let stats = http_request(
        &format!("127.0.0.1:{}", ports.admin),
        "GET",
        "/stats?filter=oidc_test_localhost",
        &[],
        b"",
    )
    .unwrap()
    .text();
    let sent = stats
        .lines()
        .find(|l| l.contains("upstream_rq_completed"))
        .and_then(|l| l.rsplit(": ").next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        sent >= 2,
        "token and keys through oidc_test_localhost_*: {stats}"
    );
}

/// A wrong client secret: the token endpoint, asked as the filter asks with a
/// made-up code, refuses the client, and `check` says so with the provider's
/// error (instead of a first user's `token_exchange_failed`).
#[test]
fn check_names_a_client_secret_the_provider_refuses() {
    let dir = TempDir::new("portcullis-cli-check").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let text = config(&ports, idp.issuer(), "127.0.0.1:1", "").replace(
        "client_secret: portcullis-demo-secret",
        "client_secret: not-the-secret",
    );
    let report = run_check(&rendered(&text));
    let errors = report.errors().join("\n");
    assert!(
        errors.contains("refuses client `portcullis-demo` with invalid_client"),
        "{}",
        report.text()
    );
    // The discovery, keys and URIs are still reported.
    assert!(report.text().contains("redirect URI"), "{}", report.text());
}

/// The quick start with the `portcullis` binary itself: `portcullis render`
/// and `portcullis check` on a portcullis.yaml file, then stock Envoy on the
/// rendered envoy.yaml, and a user signs in with the real provider.
#[test]
fn the_portcullis_command_renders_checks_and_envoy_serves_its_output() {
    let dir = TempDir::new("portcullis-cli-bin").unwrap();
    let ports = Ports {
        http: free_port().unwrap(),
        admin: free_port().unwrap(),
    };
    let idp = start_idp(&dir, ports.http);
    let app = SampleApp::start("127.0.0.1:0", "rendered").unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        config(&ports, idp.issuer(), &app.addr().to_string(), ""),
    )
    .unwrap();
    let out = dir.path().join("rendered");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let render = std::process::Command::new(bin)
        .current_dir(repo_root())
        .args(["render", "-c"])
        .arg(&file)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&render.stdout);
    assert!(
        render.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&render.stderr)
    );
    for f in ["envoy.yaml", "filters/preauth.json", "filters/cookie.json"] {
        assert!(said.contains(f), "{said}");
    }
    let check = std::process::Command::new(bin)
        .current_dir(repo_root())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("check passed"), "{said}");
    assert!(
        said.contains(&format!("http://127.0.0.1:{}/.auth/callback", ports.http)),
        "{said}"
    );
    // A wrong issuer: check exits 1.
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        config(&ports, &format!("{}/", idp.issuer()), "127.0.0.1:1", ""),
    )
    .unwrap();
    let failed = std::process::Command::new(bin)
        .args(["check", "-c"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("trailing slash"));

    let text = std::fs::read_to_string(out.join("envoy.yaml")).unwrap();
    let envoy = Envoy::start(&EnvoyConfig::from_text(text), ports.admin).unwrap();
    let addr = format!("127.0.0.1:{}", ports.http);
    let jar = sign_in(&addr, &addr, "alice", "alice-password", None)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log()));
    let cookie = jar.header();
    let r = http_request(
        &addr,
        "GET",
        "/headers",
        &[
            ("Host", &addr),
            ("Accept", "text/html"),
            ("Cookie", &cookie),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", envoy.log());
    assert!(r.text().contains("u-alice"), "{}", r.text());
}
