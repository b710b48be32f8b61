//! Every Envoy config under `envoy-configs/` passes `envoy --mode validate`;
//! a broken one fails.
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
