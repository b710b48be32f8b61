//! `portcullis render`: every example renders, every output passes
//! `envoy --mode validate` (which loads the real modules and runs each
//! filter's own configuration parser) after the render ran the core's
//! parsers; the demo's portcullis.yaml renders the demo's hand-written
//! configuration; what a stage would refuse is refused at render time, naming
//! the field of portcullis.yaml.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_cli::render::{render, Rendered};
use portcullis_cli::spec::{self, Layout};
use portcullis_e2e::envoy::{validate, TempDir};
use portcullis_e2e::repo_root;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["examples", "examples/providers"] {
        let Ok(entries) = std::fs::read_dir(repo_root().join(dir)) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn render_text(text: &str) -> Result<Rendered, spec::SpecError> {
    let spec = spec::parse(text)?;
    render(&spec, &repo_root())
}

fn demo_text() -> String {
    std::fs::read_to_string(repo_root().join("examples/portcullis.yaml")).unwrap()
}

/// Writes the render and runs `envoy --mode validate` on its envoy.yaml.
/// The variables the filters read from Envoy's environment get example
/// values (32-byte keys, which serve as secrets too): unset, the preauth
/// filter refuses its configuration and Envoy does not validate.
fn validate_render(r: &Rendered, name: &str) {
    for key in &r.env_keys {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, "RVhBTVBMRS1PTkxZLXJlcGxhY2UtdGhpcy1rZXktMDE=");
        }
    }
    let dir = TempDir::new("portcullis-render").unwrap();
    let files = portcullis_cli::write_render(r, dir.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("envoy.yaml")));
    let (ok, out) = validate(&dir.path().join("envoy.yaml")).unwrap();
    assert!(
        ok,
        "{name}: the rendered envoy.yaml does not validate:\n{out}"
    );
}

#[test]
fn every_example_renders_and_validates_in_envoy() {
    let examples = examples();
    assert!(
        examples
            .iter()
            .any(|p| p.ends_with("examples/portcullis.yaml")),
        "{examples:?}"
    );
    for path in examples {
        let r = portcullis_cli::render_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        validate_render(&r, &path.display().to_string());
    }
}

/// A bootstrap with each plugin configuration parsed from its string, and
/// the lists whose order carries no meaning sorted.
fn normalise_bootstrap(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str)
                    == Some("type.googleapis.com/google.protobuf.StringValue")
                {
                    if let Some(Value::String(text)) = m.get("value") {
                        let parsed: Value = serde_json::from_str(text).unwrap();
                        m.insert("value".into(), normalise_document(parsed));
                    }
                }
                for (_, x) in m.iter_mut() {
                    walk(x);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    if let Some(Value::Array(clusters)) = v.pointer_mut("/static_resources/clusters") {
        clusters.sort_by_key(|c| c["name"].as_str().unwrap_or_default().to_string());
    }
    v
}

/// A stage document (or an all-in-one one) with its app lists in id order.
fn normalise_document(mut v: Value) -> Value {
    fn sort_apps(v: &mut Value) {
        if let Some(Value::Array(apps)) = v.get_mut("apps") {
            apps.sort_by_key(|a| {
                a.get("id")
                    .or_else(|| a.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            });
        }
    }
    sort_apps(&mut v);
    for section in ["preauth", "cookie"] {
        if let Some(s) = v.get_mut(section) {
            sort_apps(s);
        }
    }
    v
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The hand-written bootstrap of the demo in `layout`: demo.yaml holds the
/// split layout until the all-in-one layout lands (then demo-split.yaml).
fn demo_bootstrap(layout: Layout) -> Option<PathBuf> {
    let dir = repo_root().join("envoy-configs");
    let all_in_one_landed = dir.join("demo-split.yaml").exists();
    match (layout, all_in_one_landed) {
        (Layout::Split, false) => Some(dir.join("demo.yaml")),
        (Layout::Split, true) => Some(dir.join("demo-split.yaml")),
        (Layout::AllInOne, true) => Some(dir.join("demo.yaml")),
        (Layout::AllInOne, false) => None,
    }
}

#[test]
fn the_demo_example_renders_the_demo_configuration() {
    let r = render_text(&demo_text()).unwrap();
    let path = demo_bootstrap(Layout::Split).unwrap();
    let want = normalise_bootstrap(yaml_file(&path));
    let got = normalise_bootstrap(r.envoy.clone());
    assert_eq!(
        got,
        want,
        "the render of examples/portcullis.yaml differs from {}:\nrendered:\n{}",
        path.display(),
        serde_yaml::to_string(&got).unwrap()
    );
    let mut want_edge: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("demo/edge.json")).unwrap())
            .unwrap();
    want_edge = normalise_document(want_edge);
    let got_edge = normalise_document(r.edge.clone().unwrap());
    assert_eq!(
        got_edge,
        want_edge,
        "the render's edge.json differs from demo/edge.json:\n{}",
        serde_json::to_string_pretty(&got_edge).unwrap()
    );
}

/// The example with `from` replaced by `to` (once, and it must be there).
fn mutated(from: &str, to: &str) -> String {
    let text = demo_text();
    assert!(text.contains(from), "the example has no `{from}`");
    text.replacen(from, to, 1)
}

#[test]
fn what_a_stage_refuses_is_refused_at_render_naming_the_field() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (from, to, field of portcullis.yaml, words of the message)
        (
            "    scopes: [openid, profile, email]\n",
            "    scopes: [openid, profile, email]\n    clock_skew_seconds: 301\n",
            "providers.demo.clock_skew_seconds",
            "at most 300",
        ),
        (
            "issuer: http://127.0.0.1:9000     #",
            "issuer: ftp://127.0.0.1:9000     #",
            "providers.demo.issuer",
            "http",
        ),
        (
            "sealing_keys: [\"cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA=\"]",
            "sealing_keys: [\"c2hvcnQ=\"]",
            "sealing_keys[0]",
            "32",
        ),
        (
            "    access: { groups: [staff] }\n",
            "",
            "apps[0].access",
            "is required",
        ),
        (
            "    access: { open: true }\n",
            "    access: { open: true, colour: red }\n",
            "apps[1].access.colour",
            "unknown field",
        ),
        (
            "        grant: { mfa: true }\n",
            "        grant: { mfa: yes-please }\n",
            "apps[0].policies[0].grant.mfa",
            "",
        ),
        (
            "    set_cookie: { http_only: true, same_site: Lax }\n\n",
            "    set_cookie: { http_only: true, same_site: Loose }\n\n",
            "apps[0].set_cookie.same_site",
            "",
        ),
        (
            "    policy_groups: [staff, admins]\n    access: { open: true }",
            "    policy_groups: [staff, admins]\n    colour: red\n    access: { open: true }",
            "apps[1].colour",
            "unknown app field",
        ),
        (
            "    cluster: oidc_provider\n",
            "    cluster: oidc_provider\n    hosts: [x]\n",
            "providers.demo.hosts",
            "unknown provider field",
        ),
        (
            "  mfa: { step_up_acr: \"urn:portcullis:mfa\" }",
            "  mfa: { step_up_acr: \"urn:portcullis:mfa\", colour: red }",
            "conditional_access.mfa.colour",
            "unknown field",
        ),
        (
            "      max_tunnels_per_connector: 256\n",
            "      max_tunnels_per_connector: 256\n      colour: red\n",
            "edge.config.limits.colour",
            "unknown field",
        ),
        (
            "timeout_ms: 30000, assertion: { required: true } }",
            "timeout_ms: 30000, assertion: { required: true }, colour: red }",
            "apps[0].connector.colour",
            "unknown field",
        ),
        (
            "  - id: sample\n    hosts: [\"127.0.0.1\", localhost]",
            "  - id: sample\n    hosts: [\"127.0.0.1\", admin.localhost]",
            "apps[1].hosts[1]",
            "earlier app",
        ),
        (
            "    cluster: oidc_provider\n",
            "    cluster: portcullis_edge\n",
            "providers.demo.cluster",
            "another cluster",
        ),
        (
            "  http: 127.0.0.1:10000\n",
            "  http: 127.0.0.1:10000\n  ftp: 127.0.0.1:21\n",
            "listeners.ftp",
            "unknown field",
        ),
        (
            "    hosts: [admin.localhost]\n",
            "    hosts: [admin.localhost.]\n",
            "apps[0].hosts[0]",
            "trailing dot",
        ),
        (
            "    connector: { group: default, internal_url: \"http://127.0.0.1:8081\", timeout_ms: 30000 }\n",
            "",
            "apps[1].upstream",
            "connector",
        ),
    ];
    for (from, to, field, words) in cases {
        let e = match render_text(&mutated(from, to)) {
            Ok(_) => panic!("rendered with `{to}` instead of `{from}`"),
            Err(e) => e,
        };
        assert_eq!(e.field, *field, "`{to}`: {e}");
        assert!(e.message.contains(words), "`{to}`: {e}");
    }
}

#[test]
fn a_direct_upstream_and_an_https_provider_get_clusters_with_verified_tls() {
    let text = r#"
listeners: { http: "127.0.0.1:10000" }
providers:
  corp:
    issuer: https://login.example.com/tenant/v2.0
    client_id: portcullis
    client_secret: s3cret
sealing_keys: ["cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA="]
apps:
  - id: wiki
    hosts: [wiki.example.com]
    upstream: https://wiki.internal.example.com:8443
    access: { open: true }
"#;
    let r = render_text(text).unwrap();
    let clusters = r.envoy["static_resources"]["clusters"].as_array().unwrap();
    let by_name = |n: &str| clusters.iter().find(|c| c["name"] == n).unwrap();
    for (name, host, port) in [
        ("oidc_corp", "login.example.com", 443),
        ("app_wiki", "wiki.internal.example.com", 8443),
    ] {
        let c = by_name(name);
        assert_eq!(c["type"], "STRICT_DNS");
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(ep["address"], host);
        assert_eq!(ep["port_value"], port);
        let tls = &c["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], host);
        let v = &tls["common_tls_context"]["validation_context"];
        assert_eq!(
            v["trusted_ca"]["filename"],
            "/etc/ssl/certs/ca-certificates.crt"
        );
        assert_eq!(
            v["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            host
        );
    }
    let route = &r.envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "app_wiki");
    assert_eq!(
        route["metadata"]["filter_metadata"]["portcullis"]["app"],
        "wiki"
    );
    assert_eq!(
        r.cookie["apps"][0]["external_url"],
        "http://wiki.example.com:10000"
    );
    assert!(r.edge.is_none());
    validate_render(&r, "direct upstream");
}

#[test]
fn an_unset_variable_fails_envoy_validation_naming_it() {
    let text = std::fs::read_to_string(repo_root().join("examples/providers/keycloak.yaml"))
        .unwrap()
        .replace(
            "PORTCULLIS_KEYCLOAK_CLIENT_SECRET",
            "PORTCULLIS_TEST_NEVER_SET",
        );
    let r = render_text(&text).unwrap();
    assert!(r.env_keys.iter().any(|k| k == "PORTCULLIS_TEST_NEVER_SET"));
    let dir = TempDir::new("portcullis-render").unwrap();
    portcullis_cli::write_render(&r, dir.path()).unwrap();
    std::env::set_var(
        "PORTCULLIS_SEALING_KEY",
        "RVhBTVBMRS1PTkxZLXJlcGxhY2UtdGhpcy1rZXktMDE=",
    );
    let (ok, out) = validate(&dir.path().join("envoy.yaml")).unwrap();
    assert!(!ok);
    assert!(out.contains("PORTCULLIS_TEST_NEVER_SET"), "{out}");
}

#[test]
fn a_provider_on_several_hosts_gets_a_cluster_per_host_behind_a_host_router() {
    let r =
        portcullis_cli::render_file(&repo_root().join("examples/providers/google.yaml")).unwrap();
    let provider = r.clusters.iter().find(|c| c.name == "oidc_google").unwrap();
    let hosts: Vec<String> = provider
        .routes
        .iter()
        .map(|c| c.address.as_ref().unwrap().authority())
        .collect();
    assert_eq!(
        hosts,
        [
            "accounts.google.com:443",
            "oauth2.googleapis.com:443",
            "www.googleapis.com:443"
        ]
    );
    assert!(provider
        .routes
        .iter()
        .all(|c| c.tls.as_ref().unwrap().0 == c.address.as_ref().unwrap().host));
    // Google's real endpoints are each reached through their own host's cluster.
    use portcullis_cli::check::endpoint_mismatch;
    use portcullis_core::oidc::url::HttpUrl;
    for url in [
        "https://accounts.google.com/.well-known/openid-configuration",
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v3/certs",
    ] {
        assert_eq!(
            endpoint_mismatch("e", &HttpUrl::parse(url).unwrap(), provider),
            None,
            "{url}"
        );
    }
    let other = HttpUrl::parse("https://evil.example.com/token").unwrap();
    assert!(endpoint_mismatch("token_endpoint", &other, provider)
        .unwrap()
        .contains("endpoint_hosts"));
    // Without endpoint_hosts, one cluster: the token endpoint is off it.
    let text = std::fs::read_to_string(repo_root().join("examples/providers/google.yaml"))
        .unwrap()
        .replace(
            "    endpoint_hosts: [oauth2.googleapis.com, www.googleapis.com]\n",
            "",
        );
    let single = render_text(&text).unwrap();
    let c = single
        .clusters
        .iter()
        .find(|c| c.name == "oidc_google")
        .unwrap();
    let token = HttpUrl::parse("https://oauth2.googleapis.com/token").unwrap();
    assert!(endpoint_mismatch("token_endpoint", &token, c)
        .unwrap()
        .contains("is on oauth2.googleapis.com:443"));
    // The router refuses hosts it does not list (a 404 catch-all, never a forward).
    let listeners = r.envoy["static_resources"]["listeners"].as_array().unwrap();
    let router = listeners
        .iter()
        .find(|l| l["name"] == "oidc_google_router")
        .unwrap();
    let vhosts = router["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["virtual_hosts"]
        .as_array()
        .unwrap();
    assert_eq!(vhosts.last().unwrap()["domains"][0], "*");
    assert_eq!(
        vhosts.last().unwrap()["routes"][0]["direct_response"]["status"],
        404
    );
}

#[test]
fn the_provider_examples_render_their_providers() {
    let want = [
        (
            "entra-id.yaml",
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0",
        ),
        ("keycloak.yaml", "https://keycloak.example.com/realms/corp"),
        ("google.yaml", "https://accounts.google.com"),
        ("okta.yaml", "https://example.okta.com/oauth2/default"),
        ("auth0.yaml", "https://example.us.auth0.com/"),
        ("dex.yaml", "https://dex.example.com/dex"),
    ];
    for (file, issuer) in want {
        let r = portcullis_cli::render_file(&repo_root().join("examples/providers").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert_eq!(r.preauth["apps"][0]["issuer"], issuer, "{file}");
        // Every provider is https: its clusters verify TLS.
        for c in r.clusters.iter().filter(|c| c.name.starts_with("oidc_")) {
            let all: Vec<_> = if c.routes.is_empty() {
                vec![c]
            } else {
                c.routes.iter().collect()
            };
            assert!(all.iter().all(|c| c.tls.is_some()), "{file}: {c:?}");
        }
    }
    // The file secret is read at render time.
    let r = portcullis_cli::render_file(&repo_root().join("examples/providers/dex.yaml")).unwrap();
    assert_eq!(
        r.preauth["apps"][0]["client_secret"],
        "EXAMPLE-ONLY-dex-client-secret"
    );
}

/// The all-in-one layout: one filter (`portcullis.wasm`) whose document holds
/// a section per stage, each exactly the split layout's document for that
/// stage. Once the all-in-one module has landed (envoy-configs/demo-split.yaml
/// exists beside demo.yaml), the render also equals demo.yaml and validates
/// in Envoy with the real module.
#[test]
fn the_all_in_one_layout_holds_each_stages_document_as_its_section() {
    let split = render_text(&demo_text()).unwrap();
    let text = format!("layout: all-in-one\n{}", demo_text());
    let one = render_text(&text).unwrap();
    let filters = one.envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array()
        .unwrap();
    assert_eq!(filters.len(), 2, "portcullis and the router");
    let config = &filters[0]["typed_config"]["config"];
    assert_eq!(config["root_id"], "portcullis");
    assert_eq!(config["vm_config"]["vm_id"], "portcullis");
    assert_eq!(
        config["vm_config"]["code"]["local"]["filename"],
        "target/wasm32-wasip1/release/portcullis.wasm"
    );
    assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    let doc: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(doc["robots"], split.robots);
    assert_eq!(doc["preauth"], split.preauth);
    assert_eq!(doc["conditional_access"], split.conditional_access);
    assert_eq!(doc["cookie"], split.cookie);
    assert_eq!(
        doc.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["conditional_access", "cookie", "preauth", "robots"]
    );
    if let Some(path) = demo_bootstrap(Layout::AllInOne) {
        assert_eq!(
            normalise_bootstrap(one.envoy.clone()),
            normalise_bootstrap(yaml_file(&path)),
            "the all-in-one render differs from {}",
            path.display()
        );
        validate_render(&one, "all-in-one");
    }
}
