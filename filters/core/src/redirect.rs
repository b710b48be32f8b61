//! Validation of return addresses (`rd`, the original URL kept across a login).
//!
//! Only relative URLs of the app's own origin are accepted: a path that starts
//! with exactly one `/`. Every form a browser could read as another origin is
//! refused, in raw and in percent-encoded form (checked at each decoding level):
//! `//evil`, `/\evil`, `/%2F%2Fevil`, `/%5Cevil`, `https:evil`, `/\t/evil`
//! (browsers drop tabs and newlines), CR/LF and any other control character.
//! Each form is checked again after its dot segments are resolved as a
//! browser resolves them: `/..//evil` is `//evil` to the browser, and to any
//! app or proxy that later writes the path it lands on into a `Location`.

use std::fmt;

/// Longest return address accepted.
pub const MAX_REDIRECT_LEN: usize = 2048;

/// Decoding levels checked: `%252F` is `%2F` after one decoding, `/` after two.
const DECODE_LEVELS: usize = 4;

/// Why a return address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectError {
    /// Empty or longer than [`MAX_REDIRECT_LEN`].
    BadLength,
    /// Does not start with a single `/` (absolute URL, scheme, `//host`, `/\host`).
    NotRelative,
    /// Contains a control character, a space, a backslash or a byte outside
    /// printable ASCII (raw or percent-encoded).
    BadCharacter,
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedirectError::BadLength => "return address is empty or too long",
            RedirectError::NotRelative => "return address is not a relative path",
            RedirectError::BadCharacter => "return address contains a forbidden character",
        })
    }
}

impl std::error::Error for RedirectError {}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// One level of percent-decoding (malformed escapes are left as they are).
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            if let [h, l, after @ ..] = tail {
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    out.push(h << 4 | l);
                    rest = after;
                    continue;
                }
            }
        }
        out.push(b);
        rest = tail;
    }
    out
}

/// Checks one (raw or decoded) form of the address.
fn check_form(form: &[u8]) -> Result<(), RedirectError> {
    if form.first() != Some(&b'/') {
        return Err(RedirectError::NotRelative);
    }
    if matches!(form.get(1), Some(b'/') | Some(b'\\')) {
        return Err(RedirectError::NotRelative);
    }
    // Control characters anywhere (browsers strip TAB/CR/LF, which could turn
    // `/\t/evil` into `//evil`; CR/LF would split headers).
    if form.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(RedirectError::BadCharacter);
    }
    // Backslashes are slashes to browsers: refuse them anywhere.
    if form.contains(&b'\\') {
        return Err(RedirectError::BadCharacter);
    }
    Ok(())
}

/// Checks one form, then the same form with its path's dot segments
/// resolved (the query and fragment are not resolved by browsers).
fn check_resolved(form: &[u8]) -> Result<(), RedirectError> {
    check_form(form)?;
    // The path: up to the first `?` or `#` (split yields at least one piece).
    let path = form
        .split(|&b| b == b'?' || b == b'#')
        .next()
        .unwrap_or_default();
    let resolved = crate::path::resolve_like_a_browser(path).ok_or(RedirectError::BadCharacter)?;
    check_form(&resolved)
}

/// Validates a return address and returns it unchanged when it is a safe
/// relative URL of the app's own origin.
pub fn validate(rd: &str) -> Result<&str, RedirectError> {
    if rd.is_empty() || rd.len() > MAX_REDIRECT_LEN {
        return Err(RedirectError::BadLength);
    }
    // The raw form: printable ASCII only (no space, no control, no non-ASCII).
    if !rd.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        // Still classify `https:evil`-style input as not relative first.
        if !rd.starts_with('/') {
            return Err(RedirectError::NotRelative);
        }
        return Err(RedirectError::BadCharacter);
    }
    let mut form = rd.as_bytes().to_vec();
    check_resolved(&form)?;
    for _ in 0..DECODE_LEVELS {
        let next = percent_decode(&form);
        if next == form {
            break;
        }
        check_resolved(&next)?;
        form = next;
    }
    Ok(rd)
}

/// The return address to use: `rd` when valid, `/` otherwise.
pub fn or_root(rd: Option<&str>) -> &str {
    rd.and_then(|r| validate(r).ok()).unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_accepted() {
        for ok in [
            "/",
            "/app",
            "/a/b?x=1&y=2",
            "/search?u=https://example.com//x",
            "/a#frag",
            "/a%20b",
            "/caf%C3%A9",
            "/a/%2E%2E/b",
        ] {
            assert_eq!(validate(ok), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn protocol_relative_and_backslash_forms_are_refused() {
        for bad in ["//evil", "//evil.com/x", "/\\evil", "\\\\evil", "\\/evil"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoded_variants_are_refused() {
        for bad in [
            "/%2F%2Fevil",
            "/%2f%2fevil",
            "/%2Fevil",
            "/%5Cevil",
            "/%5cevil",
            "/%252F%252Fevil",
            "/%25252Fevil",
            "/%09/evil",
            "/%0d%0aSet-Cookie:x=1",
            "/a%00b",
            "/a%5Cb",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forms_that_resolve_to_another_origin_are_refused() {
        for bad in [
            "/..//evil.com",
            "/../..//evil.com",
            "/.//evil.com",
            "/x/..//evil.com",
            "/x/../..//evil.com/path?q=1",
            "/%2e%2e//evil.com",
            "/%2E%2e//evil.com",
            "/.%2e//evil.com",
            "/%2e//evil.com",
            "/..%2f%2fevil.com",
            "/%2e%2e%2f%2fevil.com",
            "/%252e%252e//evil.com",
            "/x/%2e%2e/%2e%2e//evil.com",
            "/..%252f%252fevil.com",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        // The query and fragment are not paths: slashes there are fine.
        for ok in ["/a?next=/..//x", "/a#/..//x", "/a/../b", "/../b", "/x/./y"] {
            assert_eq!(validate(ok), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn schemes_and_absolute_urls_are_refused() {
        for bad in [
            "https:evil",
            "https://evil.com",
            "javascript:alert(1)",
            "http:/evil",
            "evil",
            "?x",
            "",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert_eq!(validate("https:evil"), Err(RedirectError::NotRelative));
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "/\t/evil",
            "/\r\nLocation: //evil",
            "/a\nb",
            "/a\rb",
            "/a\u{0}b",
            "/a\u{7f}b",
            "/a b",
            "/caf\u{e9}",
        ] {
            assert_eq!(validate(bad), Err(RedirectError::BadCharacter), "{bad:?}");
        }
        assert!(validate("\t//evil").is_err());
    }

    #[test]
    fn length_is_capped() {
        let long = format!("/{}", "a".repeat(MAX_REDIRECT_LEN));
        assert_eq!(validate(&long), Err(RedirectError::BadLength));
    }

    #[test]
    fn or_root_falls_back() {
        assert_eq!(or_root(Some("/x")), "/x");
        assert_eq!(or_root(Some("//evil")), "/");
        assert_eq!(or_root(None), "/");
    }
}
