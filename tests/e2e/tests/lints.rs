//! The core and every filter crate deny, outside tests, the lints that keep
//! a filter from panicking on an index, a string slice or an `unreachable!`,
//! and from overflowing silently (issue 14 point 6). The lints live in each
//! crate's `lib.rs` (Cargo does not combine `[lints] workspace = true` with
//! lints of the crate's own), so `scripts/test.sh`'s clippy step (`-D
//! warnings`, native and wasm32) fails on any new finding; this test fails if
//! the deny itself is removed or weakened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

const LINTS: [&str; 4] = [
    "clippy::indexing_slicing",
    "clippy::string_slice",
    "clippy::unreachable",
    "clippy::arithmetic_side_effects",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every crate under `filters/` (the core and the filters).
fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("filters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("Cargo.toml").is_file() && d.join("src/lib.rs").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The crate-level attributes (`#![...]`) of a source file, whitespace removed.
fn inner_attributes(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("#![") {
        let attr = &rest[at..];
        let mut depth = 0usize;
        let mut end = attr.len();
        for (i, c) in attr.char_indices() {
            match c {
                '[' | '(' => depth += 1,
                ']' | ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(attr[..end].split_whitespace().collect());
        rest = &attr[end..];
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_core_and_every_filter_deny_the_panic_and_overflow_lints_outside_tests() {
    let crates = crates();
    for name in [
        "core",
        "preauth",
        "conditional-access",
        "cookie",
        "robots",
        "proxy-wasm-host",
        "portcullis",
    ] {
        assert!(
            crates.iter().any(|c| c.ends_with(name)),
            "filters/{name} is missing"
        );
    }
    for dir in &crates {
        let lib = dir.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).unwrap();
        let attrs = inner_attributes(&source);
        let deny = attrs
            .iter()
            .find(|a| a.starts_with("#![deny(clippy::"))
            .unwrap_or_else(|| panic!("{} has no #![deny(clippy::...)]", lib.display()));
        for lint in LINTS {
            assert!(
                deny.contains(lint),
                "{} does not deny {lint}",
                lib.display()
            );
        }
        // Allowed again only under cfg(test), nowhere else at crate level.
        for a in &attrs {
            if a.starts_with("#![cfg_attr(test,") {
                continue;
            }
            for lint in LINTS {
                assert!(
                    !(a.contains(lint) && (a.contains("allow(") || a.contains("warn("))),
                    "{} weakens {lint} at crate level: {a}",
                    lib.display()
                );
            }
        }
        // The workspace lints (unwrap, expect, panic, ...) still apply.
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest: String = manifest.split_whitespace().collect();
        assert!(
            manifest.contains("[lints]workspace=true"),
            "{}/Cargo.toml does not use the workspace lints",
            dir.display()
        );
    }
}

#[test]
fn every_allow_of_those_lints_gives_its_reason() {
    for dir in crates() {
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in files {
            let source: String = std::fs::read_to_string(&file)
                .unwrap()
                .split_whitespace()
                .collect();
            let mut rest = source.as_str();
            while let Some(at) = rest.find("#[allow(") {
                let attr = &rest[at..];
                let end = attr.find(")]").map_or(attr.len(), |e| e + 2);
                let attr = &attr[..end];
                if LINTS.iter().any(|l| attr.contains(l)) {
                    assert!(
                        attr.contains("reason="),
                        "{}: an allow without a reason: {attr}",
                        file.display()
                    );
                }
                rest = &rest[at + end..];
            }
            for lint in LINTS {
                let module_allow = format!("#![allow({lint}");
                assert!(
                    !source.contains(&module_allow),
                    "{}: {lint} allowed for a whole module; allow it on the item, with the reason",
                    file.display()
                );
            }
        }
    }
}
