//! Request side: the proxy's own cookies are removed from `Cookie` before the
//! app sees the request.
//!
//! The header is split on `;` exactly as browsers and servers do (a quoted
//! value cannot hide a `;`: cookie values may not contain one, so a server
//! would split there too). Each piece is trimmed of spaces and tabs; a piece
//! without `=` is judged by its whole text, because many servers read it as a
//! name with an empty value. Every piece that is not the proxy's is kept
//! byte-for-byte; empty pieces are dropped; the kept pieces are joined with
//! `"; "`.

use super::names::ProxyCookieNames;

/// The result of cleaning the request's `Cookie` header(s); `V` is the
/// header value type (`String`, or `Vec<u8>` for raw header bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieHeaderAction<V = String> {
    /// No proxy cookie was present: leave the header(s) exactly as they are.
    Unchanged,
    /// Replace all `Cookie` headers by this one value.
    Replace(V),
    /// Nothing is left: remove the `Cookie` header(s).
    Remove,
}

/// Removes the proxy's cookies from the values of every `Cookie` header of a
/// request (HTTP/2 may send several). Returns what to do with the header and
/// how many cookies were removed.
pub fn strip_proxy_cookies(
    names: &ProxyCookieNames,
    values: &[&str],
) -> (CookieHeaderAction, usize) {
    let raw: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let (action, removed) = strip_proxy_cookies_bytes(names, &raw);
    let action = match action {
        CookieHeaderAction::Unchanged => CookieHeaderAction::Unchanged,
        CookieHeaderAction::Remove => CookieHeaderAction::Remove,
        // Split at ASCII bytes only, so valid UTF-8 stays valid.
        CookieHeaderAction::Replace(v) => {
            CookieHeaderAction::Replace(String::from_utf8_lossy(&v).into_owned())
        }
    };
    (action, removed)
}

/// [`strip_proxy_cookies`] on raw header bytes (values need not be UTF-8;
/// bytes of kept cookies are copied unchanged).
pub fn strip_proxy_cookies_bytes(
    names: &ProxyCookieNames,
    values: &[&[u8]],
) -> (CookieHeaderAction<Vec<u8>>, usize) {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed: usize = 0;
    for value in values {
        for piece in value.split(|&b| b == b';') {
            let piece = trim_ows(piece);
            if piece.is_empty() {
                continue;
            }
            // Up to the first `=` (split yields at least one piece).
            let name = piece.split(|&b| b == b'=').next().unwrap_or(piece);
            // Our names are ASCII. Bytes outside printable ASCII at either end
            // (controls, obs-text such as a Latin-1 NBSP) are trimmed first, as
            // a lenient parser behind us would; what is left must be UTF-8.
            let name = trim_non_token_edges(name);
            let ours = std::str::from_utf8(name).is_ok_and(|n| names.is_proxy_cookie(n));
            if ours {
                removed = removed.saturating_add(1);
            } else {
                kept.push(piece);
            }
        }
    }
    let action = if removed == 0 {
        CookieHeaderAction::Unchanged
    } else if kept.is_empty() {
        CookieHeaderAction::Remove
    } else {
        CookieHeaderAction::Replace(kept.join(&b"; "[..]))
    };
    (action, removed)
}

fn trim_non_token_edges(mut s: &[u8]) -> &[u8] {
    let outside = |b: u8| b <= 0x20 || b >= 0x7f;
    while let [b, rest @ ..] = s {
        if !outside(*b) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., b] = s {
        if !outside(*b) {
            break;
        }
        s = rest;
    }
    s
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(values: &[&str]) -> (CookieHeaderAction, usize) {
        strip_proxy_cookies(&ProxyCookieNames::default(), values)
    }

    fn replaced(s: &str) -> CookieHeaderAction {
        CookieHeaderAction::Replace(s.to_string())
    }

    #[test]
    fn only_proxy_cookies_are_removed_and_the_rest_kept_byte_for_byte() {
        assert_eq!(
            strip(&["a=1; __Host-portcullis=SEALED; b=\"x y\"; c="]),
            (replaced("a=1; b=\"x y\"; c="), 1)
        );
        assert_eq!(
            strip(&["__Host-portcullis=s;portcullis-state-ab=t;theme=dark;;  lang=en-GB ;"]),
            (replaced("theme=dark; lang=en-GB"), 2)
        );
        assert_eq!(
            strip(&["a=%7B%22k%22%3A1%7D; b==x=="]),
            (CookieHeaderAction::Unchanged, 0)
        );
    }

    #[test]
    fn header_is_removed_when_nothing_is_left() {
        assert_eq!(
            strip(&["__Host-portcullis=a"]),
            (CookieHeaderAction::Remove, 1)
        );
        assert_eq!(
            strip(&["__Host-portcullis=a; ;", "portcullis-state-x=1"]),
            (CookieHeaderAction::Remove, 2)
        );
    }

    #[test]
    fn duplicates_case_variants_and_several_headers() {
        assert_eq!(
            strip(&[
                "sid=1; __Host-portcullis=a; __Host-portcullis=b",
                "sid=2; __SECURE-Portcullis=c",
                "__host-portcullis-state-0a=d; x"
            ]),
            (replaced("sid=1; sid=2; x"), 4)
        );
    }

    #[test]
    fn nameless_garbage_and_quoted_semicolons() {
        // A piece without `=` that spells a proxy name is removed (servers read it as a name).
        assert_eq!(strip(&["__Host-portcullis; a=1"]), (replaced("a=1"), 1));
        // A quoted value cannot hide a proxy cookie behind a `;`.
        assert_eq!(
            strip(&["a=\"x;__Host-portcullis=y\"; b=2"]),
            (replaced("a=\"x; b=2"), 1)
        );
        // Whitespace around the name does not help either.
        assert_eq!(
            strip(&["a=1;\t __Host-portcullis =v"]),
            (replaced("a=1"), 1)
        );
        // Garbage that is not ours passes unchanged.
        assert_eq!(
            strip(&["=; ==; \u{7f}garbage"]),
            (CookieHeaderAction::Unchanged, 0)
        );
        assert_eq!(strip(&[""]), (CookieHeaderAction::Unchanged, 0));
        assert_eq!(strip(&[]), (CookieHeaderAction::Unchanged, 0));
    }

    #[test]
    fn raw_bytes_are_kept_byte_for_byte() {
        let names = ProxyCookieNames::default();
        let (action, removed) =
            strip_proxy_cookies_bytes(&names, &[b"a=\xff\xfe; __Host-portcullis=x", b"\x80=1;b=2"]);
        assert_eq!(removed, 1);
        assert_eq!(
            action,
            CookieHeaderAction::Replace(b"a=\xff\xfe; \x80=1; b=2".to_vec())
        );
    }

    /// A proxy cookie whose name a lenient parser behind us would trim to
    /// ours (control bytes, Latin-1 NBSP at an edge) never reaches the app.
    #[test]
    fn names_with_control_or_obs_text_edges_are_still_ours() {
        let names = ProxyCookieNames::default();
        let (action, removed) = strip_proxy_cookies_bytes(
            &names,
            &[b"a=1; \x0c__Host-portcullis=x; \xa0__Host-portcullis=y; __Host-portcullis\x1f=z"],
        );
        assert_eq!(removed, 3);
        assert_eq!(action, CookieHeaderAction::Replace(b"a=1".to_vec()));
    }
}
