//! Every Envoy config under `envoy-configs/` passes `envoy --mode validate`;
//! a broken one fails; the apps its routes name are known to its filters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{validate, TempDir};
use portcullis_e2e::repo_root;

fn envoy_configs() -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(repo_root().join("envoy-configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && is_envoy_bootstrap(p))
        .collect();
    out.sort();
    out
}

/// Envoy bootstraps have `static_resources:`; Kubernetes manifests do not.
fn is_envoy_bootstrap(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .unwrap()
        .contains("static_resources:")
}

#[test]
fn every_envoy_config_validates() {
    let configs = envoy_configs();
    assert!(!configs.is_empty());
    for path in configs {
        let (ok, out) = validate(&path).unwrap();
        assert!(ok, "{} does not validate:\n{out}", path.display());
    }
}

#[test]
fn a_broken_config_fails_validation() {
    let dir = TempDir::new("portcullis-validate").unwrap();
    let text = std::fs::read_to_string(repo_root().join("envoy-configs/robots.yaml")).unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("cluster: app", "cluster: no_such_cluster"),
    )
    .unwrap();
    let (ok, _) = validate(&broken).unwrap();
    assert!(!ok);
    let bad_plugin = dir.path().join("bad-plugin.yaml");
    std::fs::write(
        &bad_plugin,
        text.replace("\"x_robots_tag\": true", "\"x_robots_tag\": 1"),
    )
    .unwrap();
    let (ok, out) = validate(&bad_plugin).unwrap();
    assert!(!ok);
    assert!(out.contains("x_robots_tag"), "{out}");
}

/// The plugin configurations of a bootstrap: (module file stem, JSON), taken
/// from each `value: |` block and the `.wasm` file named after it.
fn plugin_configs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "value: |" {
            continue;
        }
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .copied()
            .collect();
        let rest = lines[i + 1 + body.len()..].join("\n");
        let Some(at) = rest.find(".wasm") else {
            continue;
        };
        let stem = rest[..at].rsplit('/').next().unwrap().to_string();
        out.push((stem, body.join("\n")));
    }
    out
}

/// The app ids the routes of a bootstrap name (`portcullis: { app: <id> }`).
fn route_apps(text: &str) -> Vec<String> {
    text.split("portcullis: { app: ")
        .skip(1)
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

/// Issue 12, point 3, for the shipped configs: every app a route names is
/// known to every filter of the same config (a route naming an app a filter
/// lacks would be refused at request time), the header the edge reads is
/// derived from the same metadata, and the edge publishes the app.
#[test]
fn every_route_app_is_known_to_every_filter_and_the_edge() {
    use portcullis_core::cookies::CookieFilterConfig;
    use portcullis_core::oidc::config::PreauthConfig;
    use portcullis_core::policy::PolicyConfig;
    let mut checked = 0;
    for path in envoy_configs() {
        let text = std::fs::read_to_string(&path).unwrap();
        let apps = route_apps(&text);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if text.contains("x-portcullis-app") {
            let set = text.matches("key: x-portcullis-app, value: ").count();
            let derived = text
                .matches(r#"key: x-portcullis-app, value: "%METADATA(ROUTE:portcullis:app)%""#)
                .count();
            assert!(
                set > 0 && set == derived,
                "{name}: x-portcullis-app must come from the route's metadata"
            );
            let edge = match name.as_str() {
                "demo.yaml" => "demo/edge.json",
                "compose.yaml" => "docker/edge.json",
                other => panic!("{other}: which edge config serves it?"),
            };
            let edge: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(repo_root().join(edge)).unwrap())
                    .unwrap();
            for app in &apps {
                assert!(
                    edge["apps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["name"] == app.as_str()),
                    "{name}: the edge does not publish `{app}`"
                );
            }
        }
        for (filter, json) in plugin_configs(&text) {
            for app in &apps {
                let known = match filter.as_str() {
                    "portcullis_preauth" => PreauthConfig::from_json(json.as_bytes())
                        .unwrap()
                        .app_by_id(app)
                        .is_some(),
                    "portcullis_conditional_access" => PolicyConfig::from_json(json.as_bytes())
                        .unwrap()
                        .app(app)
                        .is_some(),
                    "portcullis_cookie" => CookieFilterConfig::from_json(json.as_bytes())
                        .unwrap()
                        .apps
                        .iter()
                        .any(|a| a.name == *app),
                    _ => true,
                };
                assert!(
                    known,
                    "{name}: {filter} does not know the route's app `{app}`"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} checks");
}
