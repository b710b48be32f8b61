//! Request-path normalisation, the only form in which reserved and
//! unauthenticated paths are compared.
//!
//! Steps, in order:
//! 1. cut the query (`?…`) and any fragment (`#…`; clients should not send one, but some do);
//! 2. decode percent-encodings of *unreserved* characters (`A–Z a–z 0–9 - . _ ~`) and
//!    upper-case the hex digits of every other encoding (`%2f` → `%2F`, which stays encoded,
//!    so an encoded slash never becomes a separator);
//! 3. merge runs of `/`;
//! 4. remove `.` and `..` segments (RFC 3986 §5.2.4), never climbing above the root.
//!
//! Letter case and `;` parameters are kept: `/ROBOTS.TXT` and `/robots.txt;x` are other paths.

use std::fmt;

/// Why a request path could not be normalised. Such a request matches no reserved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty or does not start with `/` (asterisk or absolute form).
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A control character, space, or byte outside ASCII.
    InvalidCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "path does not start with `/`",
            PathError::BadPercentEncoding => "malformed percent-encoding",
            PathError::InvalidCharacter => "invalid character in path",
        })
    }
}

impl std::error::Error for PathError {}

/// Returns the path part of a `:path` value: everything before the first `?` or `#`.
pub fn strip_query(raw: &str) -> &str {
    match raw.find(['?', '#']) {
        Some(i) => &raw[..i],
        None => raw,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises a request `:path` (see the module documentation).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let path = strip_query(raw);
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    // Step 2: percent-decoding of unreserved characters.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(PathError::BadPercentEncoding);
            };
            let value = hi * 16 + lo;
            if is_unreserved(value) {
                decoded.push(char::from(value));
            } else {
                decoded.push('%');
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else if b <= 0x20 || b >= 0x7f {
            return Err(PathError::InvalidCharacter);
        } else {
            decoded.push(char::from(b));
            i += 1;
        }
    }
    // Steps 3 and 4: split on '/', dropping empty and '.' segments, popping on '..'.
    let trailing_slash = decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || decoded == "/";
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// True when `path` (normalised) is `prefix` or lies below it on a segment
/// boundary: prefix `/public` matches `/public` and `/public/x` but not `/publicity`.
/// A prefix ending in `/` matches everything below it.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix) || path == prefix.trim_end_matches('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).unwrap()
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/robots.txt"), "/robots.txt");
        assert_eq!(n("/a/b/"), "/a/b/");
    }

    #[test]
    fn query_and_fragment_are_cut() {
        assert_eq!(n("/robots.txt?x=1"), "/robots.txt");
        assert_eq!(n("/robots.txt?"), "/robots.txt");
        assert_eq!(n("/admin#/robots.txt"), "/admin");
        assert_eq!(n("/a?b#c"), "/a");
    }

    #[test]
    fn unreserved_percent_encodings_are_decoded() {
        assert_eq!(n("/%72obots.txt"), "/robots.txt");
        assert_eq!(n("/robots%2Etxt"), "/robots.txt");
        assert_eq!(n("/robots%2etxt"), "/robots.txt");
        assert_eq!(n("/%7Euser"), "/~user");
    }

    #[test]
    fn reserved_percent_encodings_stay_encoded_with_upper_hex() {
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/%2F%2Fevil"), "/%2F%2Fevil");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a%3Bx"), "/a%3Bx");
    }

    #[test]
    fn duplicate_slashes_are_merged() {
        assert_eq!(n("//robots.txt"), "/robots.txt");
        assert_eq!(n("/a///b"), "/a/b");
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/robots.txt/../admin"), "/admin");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/../../robots.txt"), "/robots.txt");
        assert_eq!(n("/x/%2e%2e/robots.txt"), "/robots.txt");
        assert_eq!(n("/x/.%2E/robots.txt"), "/robots.txt");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn case_and_parameters_are_kept() {
        assert_eq!(n("/ROBOTS.TXT"), "/ROBOTS.TXT");
        assert_eq!(n("/robots.txt;x"), "/robots.txt;x");
    }

    #[test]
    fn malformed_paths_are_errors() {
        assert_eq!(normalize(""), Err(PathError::NotOriginForm));
        assert_eq!(normalize("*"), Err(PathError::NotOriginForm));
        assert_eq!(
            normalize("http://x/robots.txt"),
            Err(PathError::NotOriginForm)
        );
        assert_eq!(normalize("/a%"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a b"), Err(PathError::InvalidCharacter));
        assert_eq!(normalize("/a\tb"), Err(PathError::InvalidCharacter));
        assert_eq!(normalize("/é"), Err(PathError::InvalidCharacter));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(has_prefix("/public", "/public"));
        assert!(has_prefix("/public/x", "/public"));
        assert!(!has_prefix("/publicity", "/public"));
        assert!(has_prefix("/public/x", "/public/"));
        assert!(has_prefix("/public", "/public/"));
        assert!(!has_prefix("/publicx", "/public/"));
        assert!(has_prefix("/anything", "/"));
    }
}
