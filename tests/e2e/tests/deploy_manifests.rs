//! The Kubernetes manifests under `envoy-configs/{istio,envoy-gateway}/` (Istio `WasmPlugin`s, the Envoy
//! Gateway `EnvoyExtensionPolicy`) carry the filters' configurations: each one
//! must be accepted by the filter's own parser, as Envoy would when the mesh
//! loads it. The configurations are written as JSON inside the YAML (after
//! `pluginConfig:` or `config:`), so they are extracted without a YAML parser;
//! `scripts/check_deploy.py` checks that YAML reads them as the same JSON, and the
//! schema of the resources around them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::config::ConfigError;
use portcullis_e2e::repo_root;
use std::path::{Path, PathBuf};

/// The four filters, by the names the manifests give them (`name: portcullis-<filter>`).
const FILTERS: [&str; 4] = ["robots", "preauth", "conditional-access", "cookie"];

/// A filter configuration found in a manifest.
#[derive(Debug)]
struct Embedded {
    filter: &'static str,
    line: usize,
    json: String,
}

/// The environment variables a manifest hands to the filters (`env.hostKeys` of
/// an `EnvoyExtensionPolicy`'s wasm entry): `scripts/check_deploy.py` checks
/// that the gateway's Envoy sets each from a Secret of the manifests.
fn host_keys(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("hostKeys:"))
        .flat_map(|list| {
            list.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|k| k.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|k| !k.is_empty())
        .collect()
}

/// Parses with the filter's own parser; a secret read from a variable the
/// manifest passes to the filter stands in as a well-formed 32-byte key, any
/// other variable is unset (the filter would refuse to load).
fn parse(filter: &str, json: &str, passed: &[String]) -> Result<(), ConfigError> {
    use base64::Engine as _;
    let bytes = json.as_bytes();
    let env = |name: &str| {
        passed.iter().any(|k| k == name).then(|| {
            let mut key = format!("{name:-<32}").into_bytes();
            key.truncate(32);
            base64::engine::general_purpose::STANDARD.encode(key)
        })
    };
    match filter {
        "robots" => portcullis_core::robots::RobotsConfig::from_json(bytes).map(drop),
        "preauth" => {
            portcullis_core::oidc::config::PreauthConfig::from_json_with_env(bytes, &env).map(drop)
        }
        "conditional-access" => portcullis_core::policy::PolicyConfig::from_json(bytes).map(drop),
        "cookie" => portcullis_core::cookies::CookieFilterConfig::from_json(bytes).map(drop),
        "all-in-one" => portcullis_core::pipeline::PipelineConfig::from_json(bytes).map(drop),
        other => panic!("unknown filter {other}"),
    }
}

/// The JSON value starting at `text[start]` (a `{`), up to its matching `}`.
fn json_object(text: &str, start: usize) -> Option<&str> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[start..].char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..=start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The filter a line names (`name: portcullis-<filter>`), if any.
fn names_filter(line: &str) -> Option<&'static str> {
    let value = line
        .trim_start()
        .trim_start_matches("- ")
        .strip_prefix("name:")?
        .trim();
    let filter = value.strip_prefix("portcullis-")?;
    FILTERS
        .iter()
        .copied()
        .chain(std::iter::once("all-in-one"))
        .find(|f| *f == filter)
}

/// Every `pluginConfig: {…}` / `config: {…}` of a manifest, with the filter
/// named by the closest `name: portcullis-<filter>` line above it.
fn embedded(text: &str) -> Vec<Embedded> {
    let mut out = Vec::new();
    let mut filter = None;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with("---") {
            filter = None;
        }
        if let Some(f) = names_filter(line) {
            filter = Some(f);
        }
        let trimmed = line.trim_start();
        for key in ["pluginConfig:", "config:"] {
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('{') {
                    let start = offset + line.find('{').unwrap();
                    let json = json_object(text, start)
                        .unwrap_or_else(|| panic!("line {}: unterminated JSON", n + 1));
                    let filter = filter.unwrap_or_else(|| {
                        panic!("line {}: no `name: portcullis-<filter>` above", n + 1)
                    });
                    out.push(Embedded {
                        filter,
                        line: n + 1,
                        json: json.to_string(),
                    });
                }
            }
        }
        offset += line.len();
    }
    out
}

fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for dir in ["istio", "envoy-gateway", "kubernetes"] {
        walk(&repo_root().join("envoy-configs").join(dir), &mut out);
    }
    out.sort();
    out
}

#[test]
fn every_filter_configuration_in_the_manifests_is_valid() {
    let mut seen = Vec::new();
    for path in manifests() {
        let text = std::fs::read_to_string(&path).unwrap();
        for e in embedded(&text) {
            serde_json::from_str::<serde_json::Value>(&e.json)
                .unwrap_or_else(|err| panic!("{}:{}: not JSON: {err}", path.display(), e.line));
            if let Err(err) = parse(e.filter, &e.json, &host_keys(&text)) {
                panic!(
                    "{}:{}: the {} filter refuses its configuration: {err}\n{}",
                    path.display(),
                    e.line,
                    e.filter,
                    e.json
                );
            }
            seen.push((path.clone(), e.filter));
        }
    }
    for dir in ["istio", "envoy-gateway"] {
        for filter in FILTERS.iter().copied().chain(std::iter::once("all-in-one")) {
            assert!(
                seen.iter()
                    .any(|(p, f)| *f == filter && p.parent().unwrap().ends_with(dir)),
                "envoy-configs/{dir}: no configuration for the {filter} filter"
            );
        }
    }
}

/// Envoy Gateway runs the wasm extensions of a policy in list order: it must
/// be the order of the design.
#[test]
fn the_envoy_gateway_policy_lists_the_filters_in_chain_order() {
    let text =
        std::fs::read_to_string(repo_root().join("envoy-configs/envoy-gateway/portcullis.yaml"))
            .unwrap();
    let order: Vec<&str> = embedded(&text).iter().map(|e| e.filter).collect();
    assert_eq!(order, FILTERS);
}

#[test]
fn a_broken_configuration_is_caught() {
    let text =
        std::fs::read_to_string(repo_root().join("envoy-configs/istio/wasmplugins.yaml")).unwrap();
    let found = embedded(&text);
    assert_eq!(
        found.iter().map(|e| e.filter).collect::<Vec<_>>(),
        FILTERS,
        "one WasmPlugin per filter, in chain order"
    );
    // An unknown field and a bad value, each named by the parser.
    let preauth = found.iter().find(|e| e.filter == "preauth").unwrap();
    let broken = preauth
        .json
        .replacen("\"id\": \"hr\"", "\"id\": \"hr\", \"oops\": 1", 1);
    assert_ne!(broken, preauth.json);
    let err = parse("preauth", &broken, &[]).unwrap_err();
    assert_eq!(err.field, "apps[0].oops");
    let cookie = found.iter().find(|e| e.filter == "cookie").unwrap();
    let broken = cookie
        .json
        .replacen("\"same_site\": \"Lax\"", "\"same_site\": \"Sometimes\"", 1);
    assert_ne!(broken, cookie.json);
    assert!(parse("cookie", &broken, &[]).is_err());
    // A secret read from a variable the manifest does not pass is refused, named.
    let text =
        std::fs::read_to_string(repo_root().join("envoy-configs/envoy-gateway/portcullis.yaml"))
            .unwrap();
    let preauth = embedded(&text)
        .into_iter()
        .find(|e| e.filter == "preauth")
        .unwrap();
    let passed = host_keys(&text);
    assert!(
        passed.iter().any(|k| k == "PORTCULLIS_HR_CLIENT_SECRET"),
        "{passed:?}"
    );
    parse("preauth", &preauth.json, &passed).unwrap();
    let fewer: Vec<String> = passed
        .iter()
        .filter(|k| *k != "PORTCULLIS_HR_SEALING_KEY")
        .cloned()
        .collect();
    let err = parse("preauth", &preauth.json, &fewer).unwrap_err();
    assert_eq!(err.field, "apps[0].sealing_keys[0].env");
    // The extractor needs a filter name above a configuration.
    let orphan = "spec:\n  pluginConfig: {\"a\": 1}\n";
    assert!(std::panic::catch_unwind(|| embedded(orphan)).is_err());
    let nested = "- name: portcullis-robots\n  config: {\"x\": \"}\\\"{\", \"y\": {\"z\": 1}}\n";
    assert_eq!(
        embedded(nested)[0].json,
        "{\"x\": \"}\\\"{\", \"y\": {\"z\": 1}}"
    );
}
