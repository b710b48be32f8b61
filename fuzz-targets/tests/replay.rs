//! Replays every committed fuzz input on stable Rust: the seed corpus and
//! minimised corpus of each target (`fuzz/corpus/<target>/`) and every input
//! that once broke a property (`fuzz/regressions/<target>/`). A regression
//! case of a bug that is not fixed yet lives in `fuzz/regressions-open/` and
//! is replayed only by the ignored test below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_fuzz_targets::TARGETS;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for t in TARGETS {
        for f in files(&fuzz_dir().join(kind).join(t.name)) {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| (t.run)(&data));
            assert!(r.is_ok(), "{}: {} breaks a property", t.name, f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn every_corpus_input_passes() {
    let n = replay("corpus");
    println!("{n} corpus inputs replayed");
    assert!(n >= TARGETS.len());
}

#[test]
fn every_regression_case_passes() {
    println!("{} regression cases replayed", replay("regressions"));
}

/// Bugs found by fuzzing in code that is being fixed elsewhere: run with
/// `cargo test -p portcullis-fuzz-targets --test replay -- --ignored`.
#[test]
#[ignore = "open bugs, see fuzz/README.md"]
fn open_regression_cases() {
    println!("{} open cases replayed", replay("regressions-open"));
}

#[test]
fn every_target_has_a_cargo_fuzz_wrapper_and_a_seed_corpus() {
    let wrappers: BTreeSet<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    let names: BTreeSet<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(wrappers, names, "fuzz/fuzz_targets/*.rs and TARGETS differ");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for t in TARGETS {
        assert!(
            !files(&fuzz_dir().join("corpus").join(t.name)).is_empty(),
            "{} has no seed corpus",
            t.name
        );
        let wrapper = std::fs::read_to_string(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{}.rs", t.name)),
        )
        .unwrap();
        assert!(
            wrapper.contains(&format!("portcullis_fuzz_targets::target(\"{}\")", t.name)),
            "{} wrapper calls another target",
            t.name
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "{} missing from fuzz/Cargo.toml",
            t.name
        );
    }
}
