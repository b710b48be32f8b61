//! Every conditional-access configuration embedded in `envoy-configs/*.yaml`
//! must be a valid policy configuration (example configs are fixtures).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::policy::PolicyConfig;
use std::path::Path;

/// The `value: |` blocks of the filter entries that load the conditional-access module.
fn embedded_configs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    // Split into filter entries at `- name:` lines.
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- name:"))
        .map(|(i, _)| i)
        .collect();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let entry = &lines[start..end];
        if !entry
            .iter()
            .any(|l| l.contains("portcullis_conditional_access.wasm"))
        {
            continue;
        }
        let Some(v) = entry.iter().position(|l| l.trim() == "value: |") else {
            continue;
        };
        let base = indent(entry[v]);
        let body: Vec<&str> = entry[v + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > base)
            .copied()
            .collect();
        out.push(body.join("\n"));
    }
    out
}

#[test]
fn envoy_configs_hold_valid_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envoy-configs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("no {}", dir.display());
    };
    let mut checked = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let yaml = std::fs::read_to_string(&path).unwrap();
        for json in embedded_configs(&yaml) {
            if let Err(e) = PolicyConfig::from_json(json.as_bytes()) {
                panic!("{}: {e}\n{json}", path.display());
            }
            checked += 1;
        }
    }
    println!("{checked} conditional-access configurations checked");
    assert!(
        checked > 0,
        "expected at least one conditional-access config under envoy-configs/"
    );
}

#[test]
fn the_extractor_finds_the_block_and_a_bad_one_fails() {
    let yaml = "
        - name: portcullis.conditional_access
          typed_config:
            value:
              config:
                configuration:
                  value: |
                    {\"policies\": [{\"name\": \"x\", \"apps\": [\"*\"], \"grant\": {\"block\": true}, \"oops\": 1}]}
                vm_config:
                  code: { local: { filename: target/portcullis_conditional_access.wasm } }
        - name: envoy.filters.http.router
";
    let found = embedded_configs(yaml);
    assert_eq!(found.len(), 1);
    let e = PolicyConfig::from_json(found[0].as_bytes()).unwrap_err();
    assert_eq!(e.field, "policies[0].oops");
}
