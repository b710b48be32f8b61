//! Internal ↔ external URL mapping for one published app, and the
//! translation of URL-carrying response headers (`Location`,
//! `Content-Location`, `Refresh`, `Link`).
//!
//! A URL is translated only when it really points at the app's internal URL:
//! same scheme (case-insensitive), same host (ASCII case-insensitive; IDN hosts
//! compared as their `xn--` A-labels), same port (default ports filled in:
//! `http` 80, `https` 443), no userinfo (so `http://internal@evil/` is left
//! alone), and a path inside the internal path prefix on a segment boundary
//! (`/app` covers `/app` and `/app/x`, never `/application`). Anything else is
//! left exactly as it was.

use crate::config::ConfigError;

/// A URL scheme the proxy publishes or reaches apps with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The scheme as written in URLs (lower case).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The default port of the scheme.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// One side of an app's publication: scheme, host, port and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The scheme.
    pub scheme: Scheme,
    /// The host, ASCII lower case (IDN as `xn--` A-labels; IPv6 in brackets).
    pub host: String,
    /// The port (the scheme's default when the URL had none).
    pub port: u16,
    /// The path prefix without a trailing slash: `""` for the root, else e.g. `/app`.
    pub base: String,
}

impl Endpoint {
    /// Parses a configured base URL such as `https://wiki.example.com:8443/app/`.
    /// Only `http` and `https`, no userinfo, no query or fragment. `field` names
    /// the configuration field in errors.
    pub fn parse(field: &str, url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::new(field, format!("`{url}` {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("is not an absolute URL (scheme://host[:port][/path])"))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| bad("must use http or https"))?;
        let (authority, path) = rest
            .find('/')
            .and_then(|i| rest.split_at_checked(i))
            .unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad("must not contain userinfo"));
        }
        if path.contains(['?', '#']) || authority.contains(['?', '#']) {
            return Err(bad("must not contain a query or fragment"));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| bad("has an invalid host or port"))?;
        let host = host_to_ascii(host).ok_or_else(|| bad("has an invalid host name"))?;
        let port = match port {
            Some(p) => p,
            None => scheme.default_port(),
        };
        if !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'"' && b != b'<' && b != b'>')
        {
            return Err(bad(
                "has characters in its path that must be percent-encoded",
            ));
        }
        let base = path.trim_end_matches('/');
        if base.contains("//") || base.split('/').any(|s| s == "." || s == "..") {
            return Err(bad(
                "must have a normalised path (no `//`, `.` or `..` segments)",
            ));
        }
        Ok(Self {
            scheme,
            host,
            port,
            base: base.to_string(),
        })
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://authority`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// Splits `host[:port]` (IPv6 as `[...]`). An empty port (`host:`) counts as
/// absent, as in the URL standard. Returns `None` for a malformed authority.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        // `[`, the inside and `]`.
        let host = authority.get(..inside.len().saturating_add(2))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// Lower-cases a host and turns Unicode labels into `xn--` A-labels
/// (punycode). Returns `None` for characters no host name may hold.
pub fn host_to_ascii(host: &str) -> Option<String> {
    if host.starts_with('[') {
        let inner = host.strip_prefix('[')?.strip_suffix(']')?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        return Some(host.to_ascii_lowercase());
    }
    let mut out = String::with_capacity(host.len());
    for (i, label) in host.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if label.is_empty() {
            return None;
        }
        if label.is_ascii() {
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return None;
            }
            out.push_str(&label.to_ascii_lowercase());
        } else {
            let lower: Vec<char> = label.chars().flat_map(char::to_lowercase).collect();
            if lower
                .iter()
                .any(|c| c.is_whitespace() || c.is_control() || "/?#@:[]\\%".contains(*c))
            {
                return None;
            }
            out.push_str("xn--");
            out.push_str(&punycode_encode(&lower)?);
        }
    }
    Some(out)
}

/// RFC 3492 punycode encoding of one label (without the `xn--` prefix).
#[allow(
    clippy::arithmetic_side_effects,
    reason = "RFC 3492's encoder: delta and n are checked against overflow as the RFC requires; \
              the rest is bounded (m >= n by the filter, h < the label's length, t < BASE, \
              bias and k stay within a few times BASE for a label's worth of digits)"
)]
fn punycode_encode(input: &[char]) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    fn adapt(delta: u32, points: u32, first: bool) -> u32 {
        let mut delta = if first { delta / 700 } else { delta / 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + 38)
    }
    fn digit(d: u32) -> char {
        // d < 36 by construction.
        let b = if d < 26 {
            b'a' + d as u8
        } else {
            b'0' + (d - 26) as u8
        };
        b as char
    }
    let mut out: String = input.iter().filter(|c| c.is_ascii()).collect();
    let basic = out.len() as u32;
    if basic > 0 {
        out.push('-');
    }
    let (mut n, mut delta, mut bias, mut h) = (128u32, 0u32, 72u32, basic);
    let total = input.len() as u32;
    while h < total {
        let m = input.iter().map(|&c| c as u32).filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(h + 1)?)?;
        n = m;
        for &c in input {
            let c = c as u32;
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        TMIN
                    } else if k >= bias + TMAX {
                        TMAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    out.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit(q));
                bias = adapt(delta, h + 1, h == basic);
                delta = 0;
                h += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n = n.checked_add(1)?;
    }
    Some(out)
}

/// True for bytes that continue a host, port or path segment: after a match,
/// the next byte must not be one of these (so `/app` does not match
/// `/application` and `internal` does not match `internal.evil` or `internal@evil`).
pub(crate) fn is_continuation(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'@'
                | b':'
                | b'!'
                | b'$'
                | b'&'
                | b'*'
                | b'+'
                | b'='
        )
}

/// How one app is published: its internal URL and its external URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlMapping {
    /// Where the app really lives (as the app sees itself).
    pub internal: Endpoint,
    /// Where users reach it through the proxy.
    pub external: Endpoint,
}

impl UrlMapping {
    /// Maps a path that lies under the internal prefix to the external one;
    /// `None` when the path is outside the internal prefix. `rest` may carry a
    /// query and fragment after the path.
    pub fn map_path(&self, path_and_more: &str) -> Option<String> {
        let rest = path_and_more.strip_prefix(self.internal.base.as_str())?;
        if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
            return None;
        }
        let mut out = String::with_capacity(
            self.external
                .base
                .len()
                .saturating_add(rest.len())
                .saturating_add(1),
        );
        out.push_str(&self.external.base);
        if !rest.starts_with('/') && self.external.base.is_empty() {
            out.push('/');
        }
        out.push_str(rest);
        Some(out)
    }

    /// Translates an absolute (`scheme://…`) or protocol-relative (`//…`) URL
    /// that points at the internal URL into the external one. `None` when the
    /// URL points elsewhere (it must then be left unchanged).
    pub fn translate_absolute(&self, url: &str) -> Option<String> {
        let (scheme_relative, after) = if let Some(after) = url.strip_prefix("//") {
            (true, after)
        } else {
            let (scheme, rest) = url.split_once(':')?;
            let scheme = Scheme::parse(scheme)?;
            if scheme != self.internal.scheme {
                return None;
            }
            (false, rest.strip_prefix("//")?)
        };
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, path_and_more) = after.split_at(end);
        if authority.contains(['@', '\\']) || authority.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return None;
        }
        let (host, port) = split_host_port(authority)?;
        if !host.eq_ignore_ascii_case(&self.internal.host) {
            return None;
        }
        if port.unwrap_or(self.internal.scheme.default_port()) != self.internal.port {
            return None;
        }
        let path = self.map_path(path_and_more)?;
        let ext = &self.external;
        Some(if scheme_relative {
            format!("//{}{}", ext.authority(), path)
        } else {
            format!("{}{}", ext.origin(), path)
        })
    }

    /// Translates a relative reference: an absolute path (`/app/x`) is mapped
    /// only when the app is published under a different path prefix; other
    /// relative references are left alone. `None` means unchanged.
    pub fn translate_relative(&self, url: &str) -> Option<String> {
        if self.internal.base == self.external.base
            || !url.starts_with('/')
            || url.starts_with("//")
            || url.starts_with("/\\")
        {
            return None;
        }
        self.map_path(url)
    }

    /// Translates a `Location` or `Content-Location` value. `None` means unchanged.
    pub fn translate_location(&self, value: &str) -> Option<String> {
        let url = value.trim();
        if url.starts_with('/') && !url.starts_with("//") {
            self.translate_relative(url)
        } else {
            self.translate_absolute(url)
        }
    }

    /// Translates the URL of a `Refresh` value (`5; url=http://…`, quotes
    /// allowed, `url=` optional). `None` means unchanged.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the value's length (at most isize::MAX) \
                  and steps add a byte or the length of what was found after the position"
    )]
    pub fn translate_refresh(&self, value: &str) -> Option<String> {
        let (_, after) = value.split_once([';', ','])?;
        let trimmed = after.trim_start_matches([' ', '\t']);
        let mut start = value.len() - trimmed.len();
        if let Some((_, rest)) = trimmed
            .split_at_checked(3)
            .filter(|(url, rest)| url.eq_ignore_ascii_case("url") && !rest.is_empty())
        {
            let rest = rest.trim_start_matches([' ', '\t']);
            if let Some(rest) = rest.strip_prefix('=') {
                let rest = rest.trim_start_matches([' ', '\t']);
                start = value.len() - rest.len();
            }
        }
        // start and end are suffix lengths and ASCII quotes away from
        // boundaries: each `get` succeeds (None would leave the value as it is).
        let url_part = value.get(start..)?;
        let end = if let Some(q) = url_part.chars().next().filter(|c| *c == '\'' || *c == '"') {
            start += 1;
            let quoted = value.get(start..)?;
            start + quoted.find(q).unwrap_or(quoted.len())
        } else {
            start + url_part.trim_end().len()
        };
        let translated = self.translate_location(value.get(start..end)?)?;
        Some(format!(
            "{}{}{}",
            value.get(..start)?,
            translated,
            value.get(end..)?
        ))
    }

    /// Translates every `<url>` of a `Link` value (several links separated by
    /// commas; quoted parameter values are skipped). `None` means unchanged.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "cursor arithmetic: positions are below the value's length (at most isize::MAX) \
                  and steps add a byte or the length of what was found after the position"
    )]
    pub fn translate_link(&self, value: &str) -> Option<String> {
        let bytes = value.as_bytes();
        let mut out = String::with_capacity(value.len() + 16);
        let mut copied = 0;
        let mut changed = false;
        let mut i = 0;
        let mut quoted = false;
        // i is at ASCII bytes (`<`) and copied just after one (`>`): each
        // `get` succeeds (None would leave the value as it is).
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'<' if !quoted => {
                    if let Some((inner, _)) = value.get(i + 1..).and_then(|v| v.split_once('>')) {
                        let len = inner.len();
                        if let Some(t) = self.translate_location(inner) {
                            out.push_str(value.get(copied..=i)?);
                            out.push_str(&t);
                            copied = i + 1 + len;
                            changed = true;
                        }
                        i += len + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if !changed {
            return None;
        }
        out.push_str(value.get(copied..)?);
        Some(out)
    }

    /// Translates a response header by name (case-insensitive): `location`,
    /// `content-location`, `refresh` and `link`. `None` means unchanged (also
    /// for every other header).
    pub fn translate_header(&self, name: &str, value: &str) -> Option<String> {
        if name.eq_ignore_ascii_case("location") || name.eq_ignore_ascii_case("content-location") {
            self.translate_location(value)
        } else if name.eq_ignore_ascii_case("refresh") {
            self.translate_refresh(value)
        } else if name.eq_ignore_ascii_case("link") {
            self.translate_link(value)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(internal: &str, external: &str) -> UrlMapping {
        UrlMapping {
            internal: Endpoint::parse("internal_url", internal).unwrap(),
            external: Endpoint::parse("external_url", external).unwrap(),
        }
    }

    #[test]
    fn endpoints_parse_and_normalise() {
        let e = Endpoint::parse("f", "HTTPS://Wiki.Example.COM:443/app/").unwrap();
        assert_eq!(e.scheme, Scheme::Https);
        assert_eq!(e.host, "wiki.example.com");
        assert_eq!(e.port, 443);
        assert_eq!(e.base, "/app");
        assert_eq!(e.origin(), "https://wiki.example.com");
        let e = Endpoint::parse("f", "http://10.0.0.5:8080").unwrap();
        assert_eq!((e.port, e.base.as_str()), (8080, ""));
        assert_eq!(e.origin(), "http://10.0.0.5:8080");
        let e = Endpoint::parse("f", "http://[::1]:8080/").unwrap();
        assert_eq!(e.host, "[::1]");
        for bad in [
            "wiki.example.com",
            "ftp://x/",
            "http://user@x/",
            "http://x/?q",
            "http://x:99999/",
            "http://x:8o/",
            "http://:80/",
            "http://a b/",
            "http://x/a/../b",
            "http://x//a",
        ] {
            let e = Endpoint::parse("apps[0].internal_url", bad).unwrap_err();
            assert_eq!(e.field, "apps[0].internal_url", "{bad}");
        }
    }

    #[test]
    fn idn_hosts_become_a_labels() {
        assert_eq!(
            host_to_ascii("Bücher.Example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(host_to_ascii("MÜNCHEN.de").unwrap(), "xn--mnchen-3ya.de");
        assert_eq!(host_to_ascii("例え.jp").unwrap(), "xn--r8jz45g.jp");
        let e = m("http://bücher.internal/", "https://ext.example/");
        assert_eq!(
            e.translate_location("http://XN--BCHER-KVA.internal/x")
                .as_deref(),
            Some("https://ext.example/x")
        );
    }

    #[test]
    fn absolute_urls_are_translated_with_default_ports_and_case() {
        let m = m("http://App.Internal/app", "https://ext.example:8443/");
        let t = |u: &str| m.translate_location(u);
        assert_eq!(
            t("http://app.internal/app/x?y#z").as_deref(),
            Some("https://ext.example:8443/x?y#z")
        );
        assert_eq!(
            t("HTTP://APP.INTERNAL:80/app").as_deref(),
            Some("https://ext.example:8443/")
        );
        assert_eq!(
            t("http://app.internal:/app/").as_deref(),
            Some("https://ext.example:8443/")
        );
        assert_eq!(
            t("http://app.internal/app?x").as_deref(),
            Some("https://ext.example:8443/?x")
        );
        assert_eq!(
            t("//app.internal/app/x").as_deref(),
            Some("//ext.example:8443/x")
        );
        // Other ports, schemes, hosts and look-alike prefixes stay.
        assert_eq!(t("http://app.internal:8080/app/x"), None);
        assert_eq!(t("https://app.internal/app/x"), None);
        assert_eq!(t("http://app.internal/application"), None);
        assert_eq!(t("http://app.internal/"), None);
        assert_eq!(t("http://app.internal.evil/app"), None);
        assert_eq!(t("http://evil.app.internal/app"), None);
        // Userinfo must not fool it, in either direction.
        assert_eq!(t("http://app.internal@evil/app"), None);
        assert_eq!(t("http://app.internal:80@evil/app"), None);
        assert_eq!(t("http://user@app.internal/app"), None);
        assert_eq!(t("http://app.internal\\@evil/app"), None);
        assert_eq!(t("http://evil\\@app.internal/app"), None);
        assert_eq!(t("javascript:alert(1)"), None);
        assert_eq!(t("mailto:a@app.internal"), None);
    }

    #[test]
    fn https_internal_default_port_and_root_mapping() {
        let m = m("https://app.internal", "https://ext.example/pub");
        let t = |u: &str| m.translate_location(u);
        assert_eq!(
            t("https://app.internal").as_deref(),
            Some("https://ext.example/pub")
        );
        assert_eq!(
            t("https://app.internal:443/a/b").as_deref(),
            Some("https://ext.example/pub/a/b")
        );
        assert_eq!(
            t("https://app.internal?q=1").as_deref(),
            Some("https://ext.example/pub?q=1")
        );
        assert_eq!(t("http://app.internal/"), None);
        // Relative paths are mapped because the prefixes differ.
        assert_eq!(t("/a/b").as_deref(), Some("/pub/a/b"));
        assert_eq!(t("/").as_deref(), Some("/pub/"));
        assert_eq!(t("a/b"), None);
        assert_eq!(t("//evil/x"), None);
    }

    #[test]
    fn relative_paths_map_only_under_a_different_prefix() {
        let same = m("http://app.internal/app", "https://ext.example/app");
        assert_eq!(same.translate_location("/app/x"), None);
        assert_eq!(
            same.translate_location("http://app.internal/app/x")
                .as_deref(),
            Some("https://ext.example/app/x")
        );
        let diff = m("http://app.internal/app", "https://ext.example");
        assert_eq!(diff.translate_location("/app/x").as_deref(), Some("/x"));
        assert_eq!(diff.translate_location("/app").as_deref(), Some("/"));
        assert_eq!(diff.translate_location("/app?q").as_deref(), Some("/?q"));
        assert_eq!(diff.translate_location("/application"), None);
        assert_eq!(diff.translate_location("/other"), None);
        assert_eq!(diff.translate_location("/\\evil"), None);
        assert_eq!(diff.translate_location("../app"), None);
    }

    #[test]
    fn refresh_headers() {
        let m = m("http://app.internal:8080", "https://ext.example");
        let t = |u: &str| m.translate_refresh(u);
        assert_eq!(
            t("5; url=http://app.internal:8080/x").as_deref(),
            Some("5; url=https://ext.example/x")
        );
        assert_eq!(
            t("0;URL='http://APP.internal:8080/x' ").as_deref(),
            Some("0;URL='https://ext.example/x' ")
        );
        assert_eq!(
            t("0, url = \"http://app.internal:8080\"").as_deref(),
            Some("0, url = \"https://ext.example/\"")
        );
        assert_eq!(
            t("3; http://app.internal:8080/y").as_deref(),
            Some("3; https://ext.example/y")
        );
        assert_eq!(t("5"), None);
        assert_eq!(t("5; url=http://other/"), None);
        assert_eq!(t("5; url=/x"), None);
        assert_eq!(
            m.translate_header("Refresh", "1;url=http://app.internal:8080/")
                .as_deref(),
            Some("1;url=https://ext.example/")
        );
    }

    #[test]
    fn link_headers_with_several_links() {
        let m = m("http://app.internal/app", "https://ext.example");
        let v = "<http://app.internal/app/style.css>; rel=preload; as=style, <https://cdn.example/x.js>; rel=preload, <http://app.internal/app/next>; rel=\"next\"; title=\"a <b>\"";
        assert_eq!(
            m.translate_link(v).as_deref(),
            Some("<https://ext.example/style.css>; rel=preload; as=style, <https://cdn.example/x.js>; rel=preload, <https://ext.example/next>; rel=\"next\"; title=\"a <b>\"")
        );
        assert_eq!(
            m.translate_link("</app/x>; rel=next").as_deref(),
            Some("</x>; rel=next")
        );
        assert_eq!(
            m.translate_link("<https://cdn.example/>; rel=preconnect"),
            None
        );
        assert_eq!(m.translate_link("<http://app.internal/app"), None);
        assert_eq!(
            m.translate_header("LINK", "<http://app.internal/app/a>")
                .as_deref(),
            Some("<https://ext.example/a>")
        );
        assert_eq!(
            m.translate_header("content-location", "http://app.internal/app/a")
                .as_deref(),
            Some("https://ext.example/a")
        );
        assert_eq!(
            m.translate_header("x-other", "http://app.internal/app/a"),
            None
        );
    }
}
