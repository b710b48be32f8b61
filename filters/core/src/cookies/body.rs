//! Body link translation: a streaming rewriter that replaces the app's
//! internal absolute URLs with external ones as the body passes in chunks.
//!
//! The matcher is built once per app at configuration time. It recognises
//! three spellings of the internal URL (scheme and host ASCII
//! case-insensitive, path prefix exact):
//!
//! - absolute: `http://app.internal:8080/app…`
//! - protocol-relative: `//app.internal:8080/app…`
//! - JSON-escaped: `http:\/\/app.internal:8080\/app…`
//!
//! with the same rules as header translation: default ports may be written or
//! left out, the URL must not continue the host (`app.internal.evil`,
//! `app.internal@evil`) or the last prefix segment (`/application`), and an
//! absolute form must not be the tail of a longer scheme (`xhttp://…`). Only
//! the matched scheme/host/port/prefix is replaced; the rest of the URL passes
//! as it was.
//!
//! Streaming: [`BodyRewriter::push`] takes each chunk and returns the bytes to
//! send on. When a chunk ends in the middle of a possible match, only that
//! tail is held back (the carry-over, always shorter than
//! [`BodyMatcher::max_carry`] + 1 bytes) and processed with the next chunk; the output is
//! the same for every way of splitting a body into chunks.

use super::url::{is_continuation, UrlMapping};

/// How a form decides on the byte before its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookbehind {
    /// `scheme://…`: must not follow a scheme character.
    Scheme,
    /// `//host…`: must not follow a scheme character, `:`, `/` or `\`.
    SchemeRelative,
}

/// One spelling of the internal URL and its replacement.
#[derive(Debug, Clone)]
struct Form {
    /// `scheme://host` or `//host` (lower case), compared case-insensitively.
    anchor: Vec<u8>,
    lookbehind: Lookbehind,
    /// The internal port; an absent or empty port means `default_port`.
    port: u16,
    default_port: u16,
    /// The internal path prefix as spelled in this form, compared exactly.
    base: Vec<u8>,
    /// What replaces `anchor[:port]base`.
    replacement: Vec<u8>,
}

/// The precomputed matcher of one app's internal URL.
#[derive(Debug, Clone)]
pub struct BodyMatcher {
    forms: Vec<Form>,
    /// Bytes that may start a form (both letter cases).
    starts: [bool; 256],
    /// The longest number of bytes a match decision may need to look at.
    longest: usize,
}

/// The outcome of trying a form at one position.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    Match(usize, usize),
    NoMatch,
    NeedMore,
}

fn is_scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

impl BodyMatcher {
    /// Builds the matcher for `mapping` (done once, at configuration time).
    pub fn new(mapping: &UrlMapping) -> Self {
        let int = &mapping.internal;
        let ext = &mapping.external;
        let scheme = int.scheme.as_str();
        let replacement = format!("{}{}", ext.origin(), ext.base);
        let mut forms = vec![
            Form {
                anchor: format!("{scheme}://{}", int.host).into_bytes(),
                lookbehind: Lookbehind::Scheme,
                port: int.port,
                default_port: int.scheme.default_port(),
                base: int.base.as_bytes().to_vec(),
                replacement: replacement.as_bytes().to_vec(),
            },
            Form {
                anchor: format!("{scheme}:\\/\\/{}", int.host).into_bytes(),
                lookbehind: Lookbehind::Scheme,
                port: int.port,
                default_port: int.scheme.default_port(),
                base: int.base.replace('/', "\\/").into_bytes(),
                replacement: replacement.replace('/', "\\/").into_bytes(),
            },
        ];
        forms.push(Form {
            anchor: format!("//{}", int.host).into_bytes(),
            lookbehind: Lookbehind::SchemeRelative,
            port: int.port,
            default_port: int.scheme.default_port(),
            base: int.base.as_bytes().to_vec(),
            replacement: format!("//{}{}", ext.authority(), ext.base).into_bytes(),
        });
        let mut starts = [false; 256];
        for f in &forms {
            if let Some(&b) = f.anchor.first() {
                for b in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                    // 256 entries: every byte has one.
                    if let Some(s) = starts.get_mut(usize::from(b)) {
                        *s = true;
                    }
                }
            }
        }
        // anchor, `:` and up to five port digits, the prefix, one boundary byte.
        let longest = forms
            .iter()
            .map(|f| {
                f.anchor
                    .len()
                    .saturating_add(f.base.len())
                    .saturating_add(7)
            })
            .max()
            .unwrap_or(0);
        Self {
            forms,
            starts,
            longest,
        }
    }

    /// The most bytes a [`BodyRewriter`] ever holds back between chunks.
    pub fn max_carry(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    /// Tries every form, in order, at `data[i]`; `prev` is the input byte
    /// before it. The first form that matches or cannot yet decide wins, so
    /// the result never depends on where the chunks were split.
    fn attempt(&self, data: &[u8], i: usize, prev: Option<u8>, eof: bool) -> Attempt {
        for (k, f) in self.forms.iter().enumerate() {
            let blocked = match (prev, f.lookbehind) {
                (None, _) => false,
                (Some(p), Lookbehind::Scheme) => is_scheme_char(p),
                (Some(p), Lookbehind::SchemeRelative) => {
                    is_scheme_char(p) || matches!(p, b':' | b'/' | b'\\')
                }
            };
            if blocked {
                continue;
            }
            match f.attempt(data, i, eof) {
                Attempt::NoMatch => {}
                Attempt::Match(len, _) => return Attempt::Match(len, k),
                Attempt::NeedMore => return Attempt::NeedMore,
            }
        }
        Attempt::NoMatch
    }
}

impl Form {
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the data's length (at most isize::MAX), \
                  steps add a byte or a match's length, and a port has at most five digits"
    )]
    fn attempt(&self, data: &[u8], i: usize, eof: bool) -> Attempt {
        // Running out of data mid-pattern: undecided, unless the body has ended.
        let short = if eof {
            Attempt::NoMatch
        } else {
            Attempt::NeedMore
        };
        let mut j = i;
        for &a in &self.anchor {
            match data.get(j) {
                None => return short,
                Some(b) if b.to_ascii_lowercase() == a => j += 1,
                Some(_) => return Attempt::NoMatch,
            }
        }
        let port = match data.get(j) {
            None if !eof => return Attempt::NeedMore,
            None => {
                return if self.base.is_empty() && self.port == self.default_port {
                    Attempt::Match(j - i, 0)
                } else {
                    Attempt::NoMatch
                };
            }
            Some(b':') => {
                j += 1;
                let start = j;
                let mut value: u32 = 0;
                loop {
                    match data.get(j) {
                        None if !eof => return Attempt::NeedMore,
                        Some(d) if d.is_ascii_digit() => {
                            if j - start == 5 {
                                return Attempt::NoMatch;
                            }
                            value = value * 10 + u32::from(d - b'0');
                            j += 1;
                        }
                        _ => break,
                    }
                }
                if j == start {
                    u32::from(self.default_port)
                } else {
                    value
                }
            }
            Some(_) => u32::from(self.default_port),
        };
        if port != u32::from(self.port) {
            return Attempt::NoMatch;
        }
        for &b in &self.base {
            match data.get(j) {
                None => return short,
                Some(&x) if x == b => j += 1,
                Some(_) => return Attempt::NoMatch,
            }
        }
        match data.get(j) {
            None if !eof => Attempt::NeedMore,
            Some(&b) if is_continuation(b) => Attempt::NoMatch,
            _ => Attempt::Match(j - i, 0),
        }
    }
}

/// The streaming state of one response body.
#[derive(Debug, Clone)]
pub struct BodyRewriter {
    /// Input bytes held back because they may start a match.
    carry: Vec<u8>,
    /// The input byte just before `carry` (or before the next chunk).
    prev: Option<u8>,
    /// Input bytes seen so far.
    seen: u64,
    /// Translate at most this many input bytes; the rest passes unchanged.
    limit: u64,
    limit_reached: bool,
    rewrites: u64,
}

impl BodyRewriter {
    /// A rewriter for one body; after `limit` input bytes it stops
    /// translating and passes the rest unchanged.
    pub fn new(limit: u64) -> Self {
        Self {
            carry: Vec::new(),
            prev: None,
            seen: 0,
            limit,
            limit_reached: false,
            rewrites: 0,
        }
    }

    /// True once the body grew past the limit (translation stopped there).
    pub fn limit_reached(&self) -> bool {
        self.limit_reached
    }

    /// How many URLs were rewritten so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// The bytes currently held back.
    pub fn carry_len(&self) -> usize {
        self.carry.len()
    }

    /// Feeds one chunk and returns the bytes to send on in its place. With
    /// `end_of_stream` everything held back is released.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the data's length (at most isize::MAX), \
                  steps add a byte or a match's length, and a port has at most five digits"
    )]
    pub fn push(&mut self, matcher: &BodyMatcher, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.limit_reached || self.seen > self.limit {
            self.limit_reached = true;
            let mut out = std::mem::take(&mut self.carry);
            out.extend_from_slice(chunk);
            return out;
        }
        let joined;
        let data: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(chunk);
            joined = v;
            &joined
        };
        let mut out = Vec::with_capacity(data.len() + data.len() / 16);
        let mut emitted = 0;
        let mut i = 0;
        // Invariant: emitted <= i < data.len() in the loop, so the `get`s
        // below always find their bytes.
        while let Some(&b) = data.get(i) {
            // 256 entries: every byte has one (a missing one would only cost an attempt).
            if !matcher.starts.get(usize::from(b)).copied().unwrap_or(true) {
                i += 1;
                continue;
            }
            let prev = match i.checked_sub(1) {
                None => self.prev,
                Some(before) => data.get(before).copied(),
            };
            match matcher.attempt(data, i, prev, end_of_stream) {
                Attempt::NoMatch => i += 1,
                Attempt::Match(len, k) => {
                    out.extend_from_slice(data.get(emitted..i).unwrap_or_default());
                    if let Some(f) = matcher.forms.get(k) {
                        out.extend_from_slice(&f.replacement);
                    }
                    self.rewrites = self.rewrites.saturating_add(1);
                    i += len.max(1);
                    emitted = i;
                }
                Attempt::NeedMore => {
                    out.extend_from_slice(data.get(emitted..i).unwrap_or_default());
                    self.carry = data.get(i..).unwrap_or_default().to_vec();
                    self.prev = prev;
                    return out;
                }
            }
        }
        out.extend_from_slice(data.get(emitted..).unwrap_or_default());
        if let Some(&last) = data.last() {
            self.prev = Some(last);
        }
        out
    }
}

/// Why a body is passed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Body translation is off for the app (the default).
    Disabled,
    /// The content type is not one of the configured ones.
    ContentType,
    /// The body is compressed (`Content-Encoding` other than `identity`).
    Encoded,
    /// `Content-Length` is above the configured limit.
    TooLarge,
}

/// Whether a response body is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// Translate it (and remove `Content-Length`, since the length changes).
    Rewrite,
    /// Pass it unchanged.
    Skip(SkipReason),
}

/// The per-app body translation settings.
#[derive(Debug, Clone)]
pub struct BodyPolicy {
    /// Media types (lower case, without parameters) that are translated.
    pub content_types: Vec<String>,
    /// Translate at most this many bytes of a body.
    pub max_body_bytes: u64,
    /// Ask the app for `Accept-Encoding: identity` so bodies can be translated.
    pub request_identity_encoding: bool,
    /// The precomputed matcher of the app's internal URL.
    pub matcher: BodyMatcher,
}

impl BodyPolicy {
    /// Decides from the response headers whether the body is translated.
    pub fn plan(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        content_length: Option<&str>,
    ) -> BodyPlan {
        let media = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if !self.content_types.contains(&media) {
            return BodyPlan::Skip(SkipReason::ContentType);
        }
        if let Some(enc) = content_encoding {
            if enc
                .split(',')
                .map(|e| e.trim())
                .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
            {
                return BodyPlan::Skip(SkipReason::Encoded);
            }
        }
        if let Some(len) = content_length.and_then(|l| l.trim().parse::<u64>().ok()) {
            if len > self.max_body_bytes {
                return BodyPlan::Skip(SkipReason::TooLarge);
            }
        }
        BodyPlan::Rewrite
    }

    /// A fresh rewriter for one body under this policy.
    pub fn rewriter(&self) -> BodyRewriter {
        BodyRewriter::new(self.max_body_bytes)
    }
}
