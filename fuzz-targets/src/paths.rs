//! Path normalisation, prefix matching and `rd` validation.

use crate::{split2, text};
use portcullis_core::{path, redirect};

/// `normalize` gives Envoy's normal form: it starts with `/`, has no query,
/// no `.` or `..` segment and no `//` (but the path `//` itself, as Envoy
/// leaves it); normalising it again gives it back, except where Envoy's own
/// normalisation is not idempotent (`%2e%2e;` becomes `..;`, which Envoy
/// resolves when it sees it raw), and the path rule refuses those. The path
/// rule never panics, and what it accepts is its own normal form with a key
/// that starts with `/`.
pub fn normalize(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let rules = path::PathRules::default();
    if let Ok(c) = rules.canonicalize(raw) {
        assert_eq!(
            path::normalize(c.as_written()).as_deref(),
            Ok(c.as_written())
        );
        assert!(c.key().starts_with('/'), "{raw:?} -> {:?}", c.key());
    }
    let Ok(n) = path::normalize(raw) else { return };
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    let again = path::normalize(&n);
    if again.as_deref() != Ok(&*n) {
        let dotted = n.split('/').any(|s| {
            let name = s.split(';').next().unwrap_or(s);
            s.contains(';') && (name == "." || name == "..")
        });
        assert!(dotted, "{raw:?} -> {n:?} -> {again:?}");
        assert!(rules.canonicalize(&n).is_err(), "{raw:?} -> {n:?}");
    }
    assert!(!n.contains(['?', '#']), "{raw:?} -> {n:?}");
    assert!(!n.contains("//") || n == "//", "{raw:?} -> {n:?}");
    for segment in n.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "{raw:?} -> {n:?}");
    }
    // Escaping (`"` is `%22`, as in Envoy) at most triples a byte.
    assert!(n.len() <= 3 * raw.len() + 1, "{raw:?} -> {n:?}");
}

/// `has_prefix` of normalised paths: a path is below itself and below `/`;
/// a match lies on a segment boundary of the path.
pub fn prefix(data: &[u8]) {
    let (a, b) = split2(data, b'\n');
    let (Some(a), Some(b)) = (text(a), text(b)) else {
        return;
    };
    let (Ok(p), Ok(q)) = (path::normalize(a), path::normalize(b)) else {
        return;
    };
    assert!(path::has_prefix(&p, &p), "{p:?}");
    assert!(path::has_prefix(&p, "/"), "{p:?}");
    if path::has_prefix(&p, &q) {
        let base = q.trim_end_matches('/');
        assert!(p.starts_with(base), "{p:?} under {q:?}");
        let rest = &p[base.len()..];
        assert!(
            rest.is_empty() || rest.starts_with('/'),
            "{p:?} under {q:?}"
        );
    }
    // Prefix matching is exact on case (the current API: case is kept).
    if path::has_prefix(&p, &q) && p != q && !q.ends_with('/') {
        assert!(p.len() > q.len());
    }
}

/// A valid `rd` is a relative path, and stays one after any number of
/// percent-decodings a browser or an app might apply (up to the four the
/// validator checks).
pub fn redirect(data: &[u8]) {
    let Some(rd) = text(data) else { return };
    let Ok(v) = redirect::validate(rd) else {
        return;
    };
    assert_eq!(v, rd);
    let mut form = v.as_bytes().to_vec();
    for _ in 0..4 {
        assert_eq!(form.first(), Some(&b'/'), "{rd:?}");
        assert!(!matches!(form.get(1), Some(b'/' | b'\\')), "{rd:?}");
        assert!(!form.contains(&b'\\'), "{rd:?}");
        assert!(!form.iter().any(|b| *b < 0x20 || *b == 0x7f), "{rd:?}");
        form = percent_decode(&form);
    }
    assert_eq!(redirect::or_root(Some(rd)), rd);
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}
