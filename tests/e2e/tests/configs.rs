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

/// The HTTP connection manager options the filters are built for: Envoy
/// normalises the path (`normalize_path`, `merge_slashes`) before any filter,
/// and keeps encoded slashes for the filters' path rule to refuse with
/// `ambiguous_path` (or to pass for an app that allows them). The core's
/// `path::normalize` reproduces exactly this (`path_differential.rs`).
const PATH_OPTIONS: [(&str, &str); 3] = [
    ("normalize_path", "true"),
    ("merge_slashes", "true"),
    ("path_with_escaped_slashes_action", "KEEP_UNCHANGED"),
];

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The keys and values of the block-style YAML map that holds line `at`
/// (the lines at the same indentation, up to the parent key on each side).
fn sibling_keys<'a>(lines: &[&'a str], at: usize) -> Vec<(&'a str, &'a str)> {
    let level = indent(lines[at]);
    let mut start = at;
    while start > 0 && (!is_content(lines[start - 1]) || indent(lines[start - 1]) >= level) {
        start -= 1;
    }
    let mut out = Vec::new();
    for line in &lines[start..] {
        if !is_content(line) {
            continue;
        }
        if indent(line) < level && !out.is_empty() {
            break;
        }
        if indent(line) == level {
            if let Some((k, v)) = line.trim().trim_start_matches("- ").split_once(':') {
                out.push((k.trim().trim_matches('"'), v.trim()));
            }
        }
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
    use portcullis_core::pipeline::PipelineConfig;
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
                "demo.yaml" | "demo-split.yaml" => "demo/edge.json",
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
                    // The all-in-one module: every section it has must know the app.
                    "portcullis" => {
                        let c = PipelineConfig::from_json(json.as_bytes()).unwrap();
                        c.preauth
                            .as_ref()
                            .is_none_or(|p| p.app_by_id(app).is_some())
                            && c.conditional_access
                                .as_ref()
                                .is_none_or(|p| p.app(app).is_some())
                            && c.cookie
                                .as_ref()
                                .is_none_or(|k| k.apps.iter().any(|a| a.name == *app))
                    }
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

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// Every HTTP connection manager the project ships (the Envoy configs under
/// `envoy-configs/`, and the one the Istio manifests patch) sets the path
/// options above, and Envoy Gateway's `ClientTrafficPolicy` asks for the
/// same; a config that drifts fails here.
#[test]
fn every_shipped_connection_manager_normalises_paths_as_the_filters_expect() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("envoy-configs"), &mut files);
    files.sort();
    let mut checked = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let name = file
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let mut managers = 0;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with("\"@type\"")
                && t.ends_with("http_connection_manager.v3.HttpConnectionManager")
            {
                let keys = sibling_keys(&lines, i);
                for (option, value) in PATH_OPTIONS {
                    let found = keys.iter().find(|(k, _)| *k == option).map(|(_, v)| *v);
                    assert_eq!(
                        found,
                        Some(value),
                        "{name}:{}: the connection manager must set `{option}: {value}`",
                        i + 1
                    );
                }
                managers += 1;
            }
        }
        // Every connection manager of an Envoy config is one of those (or a
        // YAML alias of one).
        if text.contains("static_resources:") {
            let named = lines
                .iter()
                .filter(|l| l.contains("name: envoy.filters.network.http_connection_manager"))
                .count();
            let aliased = lines
                .iter()
                .filter(|l| l.trim().starts_with("typed_config: *"))
                .count();
            assert_eq!(
                named,
                managers + aliased,
                "{name}: a connection manager without the path options"
            );
        }
        if managers > 0 {
            checked.push(name);
        }
    }
    // Istio: the gateway's connection manager is patched.
    assert!(
        checked
            .iter()
            .any(|f| f.starts_with("envoy-configs/istio/")),
        "no Istio manifest sets the path options: {checked:?}"
    );
    // Envoy Gateway: a ClientTrafficPolicy on the Gateway keeps encoded
    // slashes and merges slashes (it always sets normalize_path).
    let policy = std::fs::read_to_string(
        repo_root().join("envoy-configs/envoy-gateway/path-normalisation.yaml"),
    )
    .unwrap();
    assert!(policy.contains("kind: ClientTrafficPolicy"));
    assert!(policy.contains("escapedSlashesAction: KeepUnchanged"));
    assert!(policy.contains("disableMergeSlashes: false"));
    assert!(
        policy.contains("name: eg"),
        "it must target the Gateway `eg`"
    );
    for expected in [
        "envoy-configs/demo.yaml",
        "envoy-configs/demo-split.yaml",
        "envoy-configs/portcullis.yaml",
        "envoy-configs/compose.yaml",
        "envoy-configs/robots.yaml",
        "envoy-configs/preauth.yaml",
        "envoy-configs/conditional-access.yaml",
        "envoy-configs/cookie.yaml",
    ] {
        assert!(
            checked.iter().any(|f| f == expected),
            "{expected} was not checked"
        );
    }
}

#[test]
fn the_drift_check_sees_a_missing_option() {
    let text = std::fs::read_to_string(repo_root().join("envoy-configs/demo.yaml")).unwrap();
    let broken = text.replace("merge_slashes: true", "merge_slashes: false");
    let lines: Vec<&str> = broken.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim().ends_with("v3.HttpConnectionManager"))
        .unwrap();
    let keys = sibling_keys(&lines, at);
    assert!(keys.contains(&("merge_slashes", "false")));
    assert!(keys.contains(&("normalize_path", "true")));
    // Siblings only: not the keys of nested maps.
    assert!(keys.iter().any(|(k, _)| *k == "http_filters"));
    assert!(!keys
        .iter()
        .any(|(k, _)| *k == "routes" || *k == "virtual_hosts"));
}
