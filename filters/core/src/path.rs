//! The path-equivalence rule: which request paths are the same path, and
//! which are refused because backends could read them as another one. Every
//! path decision of every filter goes through it: conditional-access path
//! conditions, preauth's unauthenticated prefixes and reserved `/.auth/*`
//! paths, and `robots.txt`.
//!
//! [`PathRules::canonicalize`] turns a request `:path` into a
//! [`CanonicalPath`] or a [`PathRefusal`], in three steps:
//!
//! 1. **Envoy's normal form.** [`normalize`] does to the path exactly what
//!    Envoy's HTTP connection manager does with `normalize_path: true`,
//!    `merge_slashes: true` and `path_with_escaped_slashes_action:
//!    KEEP_UNCHANGED`, as measured on Envoy 1.40 by
//!    `tests/e2e/tests/path_differential.rs`): a `.` or `..` segment in raw
//!    dots with `;` parameters loses them (`..;x` is `..`); then RFC 3986
//!    normalisation by Chromium's URL canonicaliser: `\` becomes `/`; escapes of
//!    letters, digits, `-`, `.`, `_` and `~` are decoded; `"`, `<`, `>`, `^`,
//!    `` ` ``, `{`, `|` and `}` are escaped; other escapes are kept as written
//!    (`%2f` stays `%2f`); `.` and `..` segments (also spelled `%2e`) are
//!    resolved; last, runs of `/` are merged. A `:path` that is not already in
//!    this form is refused ([`PathRefusal::NotNormalised`]): behind an Envoy
//!    configured as the shipped configs are, the filters only ever see normal
//!    forms, and a filter behind an Envoy that does not normalise must not
//!    judge one path while the app receives another.
//! 2. **Refusals.** A path some backend could read as another path is refused
//!    (`ambiguous_path`, 400) before any policy runs: an encoded `/` or `\`
//!    (`%2F`, `%5C`), an encoded `;` (`%3B`), a double encoding (`%25`
//!    followed by two hex digits or `u`), an encoded control character, a
//!    segment ending in `.` or a space (Windows servers drop them), a `.` or
//!    `..` segment hidden behind `;` parameters (`..;` is `..` to Tomcat), and
//!    a `%` that does not start an escape (`%u0041` is `A` to IIS).
//! 3. **The matching key.** Letter case is folded, `;` parameters are cut
//!    from every segment (as Tomcat, Jetty and Spring do), segments left
//!    empty are dropped, and escapes of printable characters other than
//!    `%`, `/`, `\` and `;` are decoded (`%21` is `!`).
//!
//! Each refusal and each equivalence can be loosened per app by a switch of
//! [`PathRules`] whose name says what it does; a malformed escape and a
//! path that is not in normal form are always refused.
//!
//! Decisions that restrict (a policy condition applies, a reserved path is
//! served by the filter) compare keys: [`CanonicalPath::is_under`]. A decision
//! that opens a path without a session compares both the key and the path as
//! written ([`CanonicalPath::is_under_as_written`]), so that a prefix opens
//! only what lies below it under every reading: `/PUBLIC/x` is not opened by
//! the prefix `/public` (a case-sensitive backend serves another page there).

use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Why a request path is refused. Every refusal is answered `ambiguous_path`
/// (400) by the filters ([`crate::denial::Denial::AmbiguousPath`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// The path is empty or does not start with `/` (asterisk or absolute form).
    NotOriginForm,
    /// A byte Envoy refuses in a path (a control character, a space, `#`, a
    /// byte outside ASCII, or `%00`).
    InvalidCharacter,
    /// The path is not in Envoy's normal form (Envoy did not normalise it:
    /// `normalize_path` or `merge_slashes` is off).
    NotNormalised,
    /// A `%` not followed by two hex digits.
    MalformedEncoding,
    /// An encoded `/` or `\` (`%2F`, `%5C`).
    EncodedSlash,
    /// An encoded `;` (`%3B`).
    EncodedSemicolon,
    /// A double encoding: `%25` followed by two hex digits or by `u`.
    DoubleEncoding,
    /// An encoded control character (`%01`–`%1F`, `%7F`).
    EncodedControl,
    /// A segment that ends in `.` or in a space (`%20`).
    TrailingDotOrSpace,
    /// A `.` or `..` segment with `;` parameters (`..;`, `.;x`).
    DotSegmentWithParameters,
}

impl PathRefusal {
    /// The [`PathRules`] switch that would accept such a path, if there is one.
    pub fn switch(&self) -> Option<&'static str> {
        match self {
            PathRefusal::EncodedSlash => Some("allow_encoded_slash"),
            PathRefusal::EncodedSemicolon => Some("allow_encoded_semicolon"),
            PathRefusal::DoubleEncoding => Some("allow_double_encoding"),
            PathRefusal::EncodedControl => Some("allow_encoded_control"),
            PathRefusal::TrailingDotOrSpace => Some("allow_trailing_dot_or_space"),
            PathRefusal::DotSegmentWithParameters => Some("keep_path_parameters"),
            PathRefusal::NotOriginForm
            | PathRefusal::InvalidCharacter
            | PathRefusal::NotNormalised
            | PathRefusal::MalformedEncoding => None,
        }
    }
}

impl fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRefusal::NotOriginForm => "the path does not start with `/`",
            PathRefusal::InvalidCharacter => "the path holds a character not allowed in paths",
            PathRefusal::NotNormalised => "the path is not normalised",
            PathRefusal::MalformedEncoding => "the path holds a `%` that starts no escape",
            PathRefusal::EncodedSlash => "the path holds an encoded `/` or `\\`",
            PathRefusal::EncodedSemicolon => "the path holds an encoded `;`",
            PathRefusal::DoubleEncoding => "the path is encoded twice (`%25`)",
            PathRefusal::EncodedControl => "the path holds an encoded control character",
            PathRefusal::TrailingDotOrSpace => "a path segment ends in `.` or a space",
            PathRefusal::DotSegmentWithParameters => {
                "a `.` or `..` segment is hidden behind `;` parameters"
            }
        })
    }
}

impl std::error::Error for PathRefusal {}

/// An app's path-equivalence rule: the defaults are the strict rule; each
/// switch loosens one part of it. Written in an app's configuration as
/// `"path_rules": {...}` (unknown fields refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRules {
    /// Compare letter case exactly (default: `/ADMIN` is `/admin`, as on
    /// Windows servers). Only ASCII letters are folded.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Treat `;` as an ordinary character (default: `;` parameters at the end
    /// of a segment are ignored, as Tomcat, Jetty and Spring ignore them:
    /// `/admin;x` is `/admin`).
    #[serde(default)]
    pub keep_path_parameters: bool,
    /// Accept `%2F` and `%5C` (default: refused). They stay part of their
    /// segment when matching: only for apps that do not decode them.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Accept `%3B` (default: refused); it stays an ordinary character.
    #[serde(default)]
    pub allow_encoded_semicolon: bool,
    /// Accept `%25` followed by hex digits (default: refused): only for apps
    /// that decode once.
    #[serde(default)]
    pub allow_double_encoding: bool,
    /// Accept encoded control characters such as `%09` (default: refused).
    #[serde(default)]
    pub allow_encoded_control: bool,
    /// Accept segments ending in `.` or a space (default: refused): only for
    /// apps that do not drop them, as Windows servers do.
    #[serde(default)]
    pub allow_trailing_dot_or_space: bool,
}

/// A request path that passed the rule: as written (Envoy's normal form,
/// without the query) and its matching key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    path: &'a str,
    key: Cow<'a, str>,
    case_sensitive: bool,
}

impl CanonicalPath<'_> {
    /// The path as received, without the query (in Envoy's normal form).
    pub fn as_written(&self) -> &str {
        self.path
    }

    /// The matching key (see the module documentation).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// True when the key is `reserved` (a path written in lower case, such as
    /// `/.auth/login`): the filter's own pages are matched on the key.
    pub fn is(&self, reserved: &str) -> bool {
        self.key == reserved
    }

    /// True when the path lies under `prefix` under the rule (segment
    /// boundaries; see [`has_prefix`]): for decisions that restrict.
    pub fn is_under(&self, prefix: &PathPrefix) -> bool {
        has_prefix(&self.key, prefix.key(self.case_sensitive))
    }

    /// True when the path lies under `prefix` both under the rule and as
    /// written: for decisions that open a path.
    pub fn is_under_as_written(&self, prefix: &PathPrefix) -> bool {
        has_prefix(self.path, &prefix.literal) && self.is_under(prefix)
    }
}

/// A configured path prefix, checked and canonicalised at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    literal: String,
    exact: String,
    folded: String,
}

impl PathPrefix {
    /// The prefix as configured.
    pub fn as_written(&self) -> &str {
        &self.literal
    }

    /// Its matching key under a case-sensitive or case-insensitive rule.
    pub fn key(&self, case_sensitive: bool) -> &str {
        if case_sensitive {
            &self.exact
        } else {
            &self.folded
        }
    }
}

/// Returns the path part of a `:path` value: everything before the first `?`
/// (or `#`: Envoy refuses a fragment; see [`normalize`]).
pub fn strip_query(raw: &str) -> &str {
    // split yields at least one piece.
    raw.split(['?', '#']).next().unwrap_or(raw)
}

/// The bytes before the first `stop` (all of them if there is none).
fn before(bytes: &[u8], stop: u8) -> &[u8] {
    // split yields at least one piece.
    bytes.split(|&b| b == stop).next().unwrap_or(bytes)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The value of the escape `%XY` starting at `bytes[i]`, if it is one.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..)? {
        [b'%', hi, lo, ..] => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The two upper-case hex digits of `b` (both nibbles are below 16: each
/// `get` finds its digit).
fn hex_digits(b: u8) -> impl Iterator<Item = u8> {
    [usize::from(b >> 4), usize::from(b & 15)]
        .into_iter()
        .filter_map(|n| HEX_UPPER.get(n).copied())
}

/// How Envoy's normalisation treats a byte (the character table of
/// Chromium's path canonicaliser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied; kept escaped when escaped.
    Pass,
    /// Copied; decoded when escaped (letters, digits, `-`, `_`, `~`).
    Unescape,
    /// Escaped (`"`, `<`, `>`, `^`, ...; controls and non-ASCII too, which
    /// Envoy's codecs refuse before).
    Escape,
    /// `.`: dot segments.
    Dot,
    /// `\`: a slash.
    Backslash,
    /// `%`: an escape (or a lone `%`, kept).
    Percent,
    /// NUL: refused.
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'.' => Class::Dot,
        b'\\' => Class::Backslash,
        b'%' => Class::Percent,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        _ => Class::Escape,
    }
}

/// Bytes Envoy's HTTP codecs refuse in a path before any normalisation.
fn refused_by_envoy(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || b == b'#'
}

/// The length of a dot at `i` (`.` or `%2e`/`%2E`), or 0.
fn dot_at(input: &[u8], i: usize) -> usize {
    match input.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

fn is_slash(b: Option<&u8>) -> bool {
    matches!(b, Some(b'/' | b'\\'))
}

/// What a dot that follows a slash is: (`None` = part of a name,
/// `Some((up, consumed))` = a `.` or `..` segment, with the number of input
/// bytes it takes after the first dot).
fn dot_segment(input: &[u8], after_dot: usize) -> Option<(bool, usize)> {
    if after_dot == input.len() {
        return Some((false, 0));
    }
    if is_slash(input.get(after_dot)) {
        return Some((false, 1));
    }
    let second = dot_at(input, after_dot);
    if second > 0 {
        let after = after_dot.saturating_add(second);
        if after == input.len() {
            return Some((true, second));
        }
        if is_slash(input.get(after)) {
            return Some((true, second.saturating_add(1)));
        }
    }
    None
}

/// Drops the last segment of `out` (which ends in `/`), never the first `/`.
fn back_up(out: &mut Vec<u8>) {
    let Some(last) = out.len().checked_sub(1) else {
        return;
    };
    // Up to the `/` before the last byte; the first byte is always kept.
    let keep = out
        .get(..last)
        .and_then(|head| head.iter().rposition(|&b| b == b'/'))
        .map_or(1, |at| at.saturating_add(1));
    out.truncate(keep);
}

/// After an escape was decoded within two bytes of an earlier lone `%`: if
/// that `%` now starts a valid escape, it is written `%25`, so that the
/// output cannot be decoded into something the input was not (Chromium's
/// nested-escape rule, which Envoy inherits).
#[allow(
    clippy::arithmetic_side_effects,
    reason = "cursor arithmetic: positions are below the input's length (at most isize::MAX), \
              steps add a few bytes and subtract only what was checked to be there"
)]
fn fix_nested_escape(input: &[u8], next: usize, lone_percent: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let Some(&last) = out.last() else {
        return;
    };
    let append_next = lone_percent + 2 == len;
    if append_next {
        match input.get(next) {
            Some(&b) if b < 0x80 => out.push(b),
            _ => return,
        }
    }
    let digits = lone_percent + 1..lone_percent + 3;
    if let (Some(_), Some(&[first_digit, _])) =
        (escape_at(out, lone_percent), out.get(digits.clone()))
    {
        if !append_next {
            out.push(first_digit);
        }
        // The escape is in `out` (escape_at found it): the digits are there.
        if let Some(d) = out.get_mut(digits) {
            d.copy_from_slice(b"25");
        }
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

/// Envoy's `normalize_path` (Chromium's path canonicaliser) on a path part
/// that starts with `/`. `Err` where Envoy refuses the request (`%00`).
#[allow(
    clippy::arithmetic_side_effects,
    reason = "cursor arithmetic: positions are below the input's length (at most isize::MAX), \
              steps add a few bytes and subtract only what was checked to be there"
)]
fn canonicalize_like_envoy(input: &[u8]) -> Result<Vec<u8>, PathRefusal> {
    let mut out = Vec::with_capacity(input.len() + 8);
    let mut lone_percent: Option<usize> = None;
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match class(b) {
            Class::Pass | Class::Unescape => out.push(b),
            Class::Dot | Class::Percent if dot_at(input, i) > 0 => {
                let len = dot_at(input, i);
                if out.last() == Some(&b'/') {
                    match dot_segment(input, i + len) {
                        None => {
                            out.push(b'.');
                            i += len - 1;
                        }
                        Some((up, consumed)) => {
                            if up {
                                back_up(&mut out);
                            }
                            i += len + consumed - 1;
                        }
                    }
                } else {
                    out.push(b'.');
                    i += len - 1;
                }
            }
            Class::Dot => out.push(b'.'),
            Class::Backslash => out.push(b'/'),
            Class::Percent => match escape_at(input, i) {
                Some(value) => {
                    i += 2;
                    match class(value) {
                        Class::Unescape => {
                            out.push(value);
                            if let Some(p) = lone_percent {
                                if p + 3 >= out.len() {
                                    fix_nested_escape(input, i + 1, p, &mut out);
                                }
                            }
                        }
                        Class::Invalid => return Err(PathRefusal::InvalidCharacter),
                        // The escape as it was (escape_at read these three bytes).
                        _ => out.extend_from_slice(
                            input.get(i - 2..=i).ok_or(PathRefusal::MalformedEncoding)?,
                        ),
                    }
                }
                None => {
                    lone_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            Class::Invalid => return Err(PathRefusal::InvalidCharacter),
            Class::Escape => {
                out.push(b'%');
                out.extend(hex_digits(b));
            }
        }
        i += 1;
    }
    Ok(out)
}

/// How a browser resolves the dot segments of a path (`\\` as `/`, `%2e` as
/// `.`): Chromium's canonicaliser again, for [`crate::redirect`]. `None` for
/// a path holding `%00`.
pub(crate) fn resolve_like_a_browser(path: &[u8]) -> Option<Vec<u8>> {
    canonicalize_like_envoy(path).ok()
}

/// Envoy's `merge_slashes`: when the path holds `//`, its non-empty segments
/// joined by `/`, with a leading `/` and a trailing `/` when the path had
/// them (so `//` stays `//`, as in Envoy).
fn merge_slashes(path: Vec<u8>) -> Vec<u8> {
    if !path.windows(2).any(|w| w == b"//") {
        return path;
    }
    let mut out = Vec::with_capacity(path.len());
    if path.first() == Some(&b'/') {
        out.push(b'/');
    }
    let mut first = true;
    for segment in path.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        if !first {
            out.push(b'/');
        }
        out.extend_from_slice(segment);
        first = false;
    }
    if path.last() == Some(&b'/') {
        out.push(b'/');
    }
    out
}

/// Whether a `/`-separated segment is a `.` or `..` written with raw dots,
/// possibly followed by `;` parameters.
fn is_dot_segment_with_or_without_parameters(segment: &[u8]) -> bool {
    let name = before(segment, b';');
    name == b"." || name == b".."
}

/// True when `path` is certainly its own normal form: only bytes Envoy
/// copies unchanged, no `//`, no `.` or `..` segment (with or without `;`
/// parameters).
fn is_plainly_normal(path: &[u8]) -> bool {
    if !path
        .iter()
        .all(|&b| matches!(class(b), Class::Pass | Class::Unescape | Class::Dot))
    {
        return false;
    }
    !path.windows(2).any(|w| w == b"//")
        && !path
            .split(|&b| b == b'/')
            .any(is_dot_segment_with_or_without_parameters)
}

/// Envoy's first step of `normalize_path` (since its 2026 path-parameter
/// fixes): a `/`-separated segment that is `.` or `..` in raw dots followed
/// by `;` parameters loses the parameters (`..;x` is `..`, as Tomcat reads
/// it). Escaped dots (`%2e%2e;`) are left alone, and so is a segment that
/// reaches up to a `\` (`a\..;` is one segment here).
fn drop_dot_segment_parameters(path: &[u8]) -> Cow<'_, [u8]> {
    if !path.contains(&b';') {
        return Cow::Borrowed(path);
    }
    let mut out = Vec::with_capacity(path.len());
    for (i, segment) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if is_dot_segment_with_or_without_parameters(segment) {
            out.extend_from_slice(before(segment, b';'));
        } else {
            out.extend_from_slice(segment);
        }
    }
    Cow::Owned(out)
}

/// What Envoy makes of a request `:path` with `normalize_path`, `merge_slashes`
/// and `KEEP_UNCHANGED`: the path part (the query is cut off) in Envoy's
/// normal form. `Err` where Envoy refuses the request.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathRefusal> {
    // split yields at least one piece.
    let path = raw.split('?').next().unwrap_or(raw);
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRefusal::NotOriginForm);
    }
    if bytes.iter().any(|&b| refused_by_envoy(b)) {
        return Err(PathRefusal::InvalidCharacter);
    }
    if is_plainly_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let out = merge_slashes(canonicalize_like_envoy(&drop_dot_segment_parameters(
        bytes,
    ))?);
    // Only ASCII can come out: non-ASCII input was refused above, and every
    // escape written is ASCII.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathRefusal::InvalidCharacter)
}

/// Whether `name` (a segment or its name before `;`) ends in `.` or `%20`.
fn ends_in_dot_or_space(name: &[u8]) -> bool {
    name.last() == Some(&b'.') || name.ends_with(b"%20")
}

impl PathRules {
    /// Applies the rule to a request `:path` (the query is ignored): the
    /// path and its matching key, or why it is refused.
    pub fn canonicalize<'a>(&self, raw: &'a str) -> Result<CanonicalPath<'a>, PathRefusal> {
        // split yields at least one piece.
        let path = raw.split('?').next().unwrap_or(raw);
        let normal = normalize(path)?;
        // The rule's refusals first, so that they name the cause; then a
        // path Envoy would still change is refused too (Envoy leaves
        // `%2e%2e;` as `..;`, which it resolves when it sees it raw).
        let key = self.key(path)?;
        if normal != path {
            return Err(PathRefusal::NotNormalised);
        }
        Ok(CanonicalPath {
            path,
            key,
            case_sensitive: self.case_sensitive,
        })
    }

    /// The refusals and the matching key of a path in normal form.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the input's length (at most isize::MAX), \
                  steps add a few bytes and subtract only what was checked to be there"
    )]
    fn key<'a>(&self, path: &'a str) -> Result<Cow<'a, str>, PathRefusal> {
        let bytes = path.as_bytes();
        let mut copy = false;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let value = escape_at(bytes, i).ok_or(PathRefusal::MalformedEncoding)?;
                match value {
                    b'/' | b'\\' if !self.allow_encoded_slash => {
                        return Err(PathRefusal::EncodedSlash)
                    }
                    b';' if !self.allow_encoded_semicolon => {
                        return Err(PathRefusal::EncodedSemicolon)
                    }
                    b'%' if !self.allow_double_encoding
                        && (matches!(bytes.get(i + 3), Some(b'u' | b'U'))
                            || (bytes.get(i + 3).copied().and_then(hex_value).is_some()
                                && bytes.get(i + 4).copied().and_then(hex_value).is_some())) =>
                    {
                        return Err(PathRefusal::DoubleEncoding)
                    }
                    0x00..=0x1f | 0x7f if !self.allow_encoded_control => {
                        return Err(PathRefusal::EncodedControl)
                    }
                    _ => {}
                }
                copy = true;
                i += 3;
                continue;
            }
            if b.is_ascii_uppercase() && !self.case_sensitive {
                copy = true;
            }
            i += 1;
        }
        // A path in normal form starts with `/`.
        let segments = || path.strip_prefix('/').unwrap_or(path).split('/');
        let count = segments().count();
        for (n, segment) in segments().enumerate() {
            let s = segment.as_bytes();
            let name = self.name(s);
            if name.len() < s.len() {
                // Parameters are cut: the key differs from the path.
                copy = true;
                if name == b"." || name == b".." {
                    return Err(PathRefusal::DotSegmentWithParameters);
                }
            } else if name.is_empty() && n + 1 < count {
                copy = true;
            }
            // (A `.` or `..` segment itself is no name: it is left to the
            // normal-form check.)
            if !self.allow_trailing_dot_or_space
                && s != b"."
                && s != b".."
                && (ends_in_dot_or_space(s) || ends_in_dot_or_space(name))
            {
                return Err(PathRefusal::TrailingDotOrSpace);
            }
        }
        if !copy {
            return Ok(Cow::Borrowed(path));
        }
        let mut out = String::with_capacity(path.len());
        for segment in segments() {
            let name = self.name(segment.as_bytes());
            if name.is_empty() {
                continue;
            }
            out.push('/');
            self.push_key(name, &mut out);
        }
        if out.is_empty() || path.ends_with('/') {
            out.push('/');
        }
        Ok(Cow::Owned(out))
    }

    /// A segment's name: up to its first `;` unless parameters are kept.
    fn name<'s>(&self, segment: &'s [u8]) -> &'s [u8] {
        if self.keep_path_parameters {
            return segment;
        }
        before(segment, b';')
    }

    /// Appends a segment name to the key: escapes of printable characters
    /// decoded (but `%`, `/`, `\`, `;`), other escapes in upper-case hex,
    /// letters folded unless the rule is case-sensitive.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the input's length (at most isize::MAX), \
                  steps add a few bytes and subtract only what was checked to be there"
    )]
    fn push_key(&self, name: &[u8], out: &mut String) {
        let fold = |b: u8| {
            if self.case_sensitive {
                b
            } else {
                b.to_ascii_lowercase()
            }
        };
        let mut i = 0;
        while let Some(&b) = name.get(i) {
            match escape_at(name, i) {
                Some(v)
                    if (0x21..0x7f).contains(&v) && !matches!(v, b'%' | b'/' | b'\\' | b';') =>
                {
                    out.push(char::from(fold(v)));
                    i += 3;
                }
                Some(v) => {
                    out.push('%');
                    out.extend(hex_digits(v).map(char::from));
                    i += 3;
                }
                None => {
                    out.push(char::from(fold(b)));
                    i += 1;
                }
            }
        }
    }

    /// Checks a configured path prefix under this rule and canonicalises it.
    /// It must be a path in normal form that the rule accepts, without a
    /// query, and without `;` unless parameters are kept (a prefix with
    /// parameters would never match). The message names what is wrong.
    pub fn prefix(&self, text: &str) -> Result<PathPrefix, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        if text.contains(['?', '#']) {
            return Err(format!("`{text}`: a path prefix has no query or fragment"));
        }
        match normalize(text) {
            Ok(n) if n == text => {}
            Ok(n) => return Err(format!("`{text}` is not in normal form (write `{n}`)")),
            Err(e) => return Err(format!("`{text}`: {e}")),
        }
        if !self.keep_path_parameters && text.contains(';') {
            return Err(format!(
                "`{text}`: `;` parameters are ignored when paths are compared, so this prefix \
                 would never match (write it without them, or set `keep_path_parameters`)"
            ));
        }
        self.key(text)
            .map_err(|e| format!("`{text}`: {e}, which the path rule refuses in every request"))?;
        let exact = PathRules {
            case_sensitive: true,
            ..*self
        }
        .key(text)
        .map_err(|e| format!("`{text}`: {e}"))?
        .into_owned();
        let folded = PathRules {
            case_sensitive: false,
            ..*self
        }
        .key(text)
        .map_err(|e| format!("`{text}`: {e}"))?
        .into_owned();
        Ok(PathPrefix {
            literal: text.to_string(),
            exact,
            folded,
        })
    }
}

/// True when `path` is `prefix` or lies below it on a segment boundary:
/// prefix `/public` matches `/public` and `/public/x` but not `/publicity`.
/// A prefix ending in `/` matches everything below it (and the path without
/// the slash).
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
mod tests;
