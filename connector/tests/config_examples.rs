//! The example configurations parse and validate; bad ones fail naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use portcullis_connector::config::{ConnectorConfigFile, EdgeConfigFile};

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn example_edge_config_is_valid() {
    let file = EdgeConfigFile::load(&example("edge.json")).unwrap();
    let s = file.validate().unwrap();
    // Envoy reaches the edge over a Unix socket; no plain h2c on TCP.
    assert!(s.envoy_socket.is_some());
    assert!(s.insecure_envoy_h2c_tcp.is_none());
    assert_eq!(s.dynamic.app_header.as_str(), "x-portcullis-app");
    assert_eq!(s.dynamic.apps["hello"].group, "default");
}

#[test]
fn example_connector_config_is_valid() {
    let s = ConnectorConfigFile::load(&example("connector.json"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.tunnels_per_edge, 2);
    assert_eq!(s.renew_after.as_secs(), 180 * 86_400);
    assert!(
        s.metrics_listen.is_none(),
        "the connector does not listen by default"
    );
}

fn edge_error(mutate: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("edge.json")).unwrap()).unwrap();
    mutate(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    match EdgeConfigFile::parse(&bytes).and_then(|f| f.validate().map(|_| ())) {
        Ok(()) => panic!("accepted: {v}"),
        Err(e) => e.field,
    }
}

#[test]
fn bad_edge_configs_name_the_field() {
    assert_eq!(
        edge_error(|v| v["listen"]["local"] = "nowhere".into()),
        "listen.local"
    );
    assert_eq!(
        edge_error(|v| v["apps"][0]["group"] = "ghost".into()),
        "apps[0].group"
    );
    assert_eq!(
        edge_error(|v| v["apps"][0]["internal_url"] = "ftp://x".into()),
        "apps[0].internal_url"
    );
    assert_eq!(
        edge_error(|v| v["apps"][0]["spki_sha256"] = serde_json::json!(["short"])),
        "apps[0].spki_sha256[0]"
    );
    assert_eq!(
        edge_error(|v| v["apps"][0]["colour"] = "red".into()),
        "apps[0].colour"
    );
    assert_eq!(
        edge_error(|v| v["admin"]["leeway_seconds"] = 600.into()),
        "admin.leeway_seconds"
    );
    assert_eq!(
        edge_error(|v| {
            v["admin"]["admin_roles"] = serde_json::json!([]);
            v["admin"]["admin_groups"] = serde_json::json!([]);
        }),
        "admin.admin_roles"
    );
    assert_eq!(
        edge_error(|v| v["groups"] = serde_json::json!([])),
        "groups"
    );
    assert_eq!(
        edge_error(|v| v["app_header"] = "bad header".into()),
        "app_header"
    );
}

#[test]
fn bad_connector_configs_name_the_field() {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("connector.json")).unwrap()).unwrap();
    let field = |mutate: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        mutate(&mut v);
        ConnectorConfigFile::parse(&serde_json::to_vec(&v).unwrap())
            .and_then(|f| f.validate().map(|_| ()))
            .unwrap_err()
            .field
    };
    assert_eq!(
        field(&|v| v["edges"] = serde_json::json!(["nohost"])),
        "edges[0]"
    );
    assert_eq!(
        field(&|v| v["tunnels_per_edge"] = 0.into()),
        "tunnels_per_edge"
    );
    assert_eq!(
        field(&|v| v["metrics_listen"] = "0.0.0.0:9103".into()),
        "metrics_listen"
    );
    assert_eq!(
        field(&|v| v["tunels_per_edge"] = 3.into()),
        "tunels_per_edge"
    );
}
