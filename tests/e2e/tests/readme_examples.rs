//! Every configuration example in the documentation is one that a test loads:
//! - a `json` block holding a filter configuration (an object with `apps` or
//!   `policies`) is accepted by that filter's own parser; other `json` blocks
//!   (log lines) must at least be JSON;
//! - a `yaml` block is a verbatim excerpt of a config under `envoy-configs/`,
//!   each of which `tests/configs.rs` validates with Envoy or
//!   `scripts/check_deploy.py` checks, or of a `portcullis.yaml` under
//!   `examples/`, each of which `cli/tests/render.rs` renders and validates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::config::ConfigError;
use portcullis_e2e::repo_root;
use std::path::{Path, PathBuf};

const DOCS: [&str; 8] = [
    "README.md",
    "cli/README.md",
    "docs/deploy.md",
    "connector/README.md",
    "filters/preauth/README.md",
    "filters/conditional-access/README.md",
    "filters/cookie/README.md",
    "filters/robots/README.md",
];

/// The fenced blocks of a Markdown file: (info string, first line number, body).
fn blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) => out.push(block),
                None => open = Some((rest.trim().to_string(), i + 2, String::new())),
            }
        } else if let Some((_, _, body)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert!(open.is_none(), "unterminated code block");
    out
}

fn parse_filter_config(doc: &str, json: &str) -> Result<(), ConfigError> {
    let bytes = json.as_bytes();
    if doc.contains("preauth") {
        portcullis_core::oidc::config::PreauthConfig::from_json(bytes).map(drop)
    } else if doc.contains("conditional-access") {
        portcullis_core::policy::PolicyConfig::from_json(bytes).map(drop)
    } else if doc.contains("cookie") {
        portcullis_core::cookies::CookieFilterConfig::from_json(bytes).map(drop)
    } else if doc.contains("robots") {
        portcullis_core::robots::RobotsConfig::from_json(bytes).map(drop)
    } else {
        panic!(
            "{doc}: a filter configuration outside a filter's README: say which filter it is for"
        )
    }
}

fn envoy_config_files() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root().join("envoy-configs"), &mut out);
    walk(&repo_root().join("examples"), &mut out);
    out
}

#[test]
fn every_configuration_example_in_the_docs_is_loaded() {
    let configs = envoy_config_files();
    let (mut filter_configs, mut yaml_excerpts) = (0, 0);
    for doc in DOCS {
        let path = repo_root().join(doc);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (info, line, body) in blocks(&text) {
            match info.as_str() {
                "json" => {
                    let value: serde_json::Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("{doc}:{line}: not JSON: {e}"));
                    // A decision log line carries a request id; a configuration never does.
                    let log_line = value.get("request_id").is_some();
                    if !log_line && (value.get("apps").is_some() || value.get("policies").is_some())
                    {
                        parse_filter_config(doc, &body).unwrap_or_else(|e| {
                            panic!("{doc}:{line}: the filter refuses this example: {e}")
                        });
                        filter_configs += 1;
                    }
                }
                "yaml" => {
                    assert!(
                        configs.iter().any(|(_, c)| c.contains(&body)),
                        "{doc}:{line}: this YAML is not an excerpt of any config under envoy-configs/ or examples/"
                    );
                    yaml_excerpts += 1;
                }
                _ => {}
            }
        }
    }
    // The preauth README's full example and the connector README's cluster.
    assert!(filter_configs >= 1, "no filter configuration example found");
    assert!(yaml_excerpts >= 1, "no Envoy excerpt found");
}

#[test]
fn a_broken_example_is_caught() {
    let text = std::fs::read_to_string(repo_root().join("filters/preauth/README.md")).unwrap();
    let (_, _, body) = blocks(&text)
        .into_iter()
        .find(|(info, _, body)| info == "json" && body.contains("\"apps\""))
        .unwrap();
    let broken = body.replace("\"clock_skew_seconds\": 60", "\"clock_skew_seconds\": 6000");
    assert_ne!(broken, body, "the example sets clock_skew_seconds: 60");
    let err = parse_filter_config("filters/preauth/README.md", &broken).unwrap_err();
    assert!(err.to_string().contains("clock_skew_seconds"), "{err}");
}
