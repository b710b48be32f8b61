//! The small part of URL handling the filter needs: absolute `http(s)` URLs
//! split into scheme, authority and path, and form (`x-www-form-urlencoded`)
//! encoding and decoding.

use std::fmt;

/// An absolute `http` or `https` URL without fragment or user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, lower-case host.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

/// Why a URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlError(&'static str);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UrlError {}

impl HttpUrl {
    /// Parses `http(s)://authority[/path][?query]`.
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        if !text.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(UrlError(
                "URL contains spaces, control or non-ASCII characters",
            ));
        }
        let (scheme, rest) = if let Some(r) = text.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = text.strip_prefix("http://") {
            ("http", r)
        } else {
            return Err(UrlError("URL must start with http:// or https://"));
        };
        if text.contains('#') {
            return Err(UrlError("URL must not have a fragment"));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest
            .split_at_checked(end)
            .ok_or(UrlError("URL has no valid host"))?;
        if authority.is_empty() || authority.contains('@') || authority.contains('\\') {
            return Err(UrlError("URL has no valid host"));
        }
        let path_and_query = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        Ok(HttpUrl {
            scheme: scheme.to_string(),
            authority: authority.to_ascii_lowercase(),
            path_and_query,
        })
    }

    /// This URL with `params` appended to its query, form-encoded.
    pub fn with_query(&self, params: &[(&str, &str)]) -> String {
        let mut out = self.to_string();
        if !params.is_empty() {
            out.push(if self.path_and_query.contains('?') {
                '&'
            } else {
                '?'
            });
            out.push_str(&form_encode(params));
        }
        out
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }
}

/// Percent-encodes everything but unreserved characters (`A–Z a–z 0–9 - . _ ~`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Both nibbles are below 16: each `get` finds its digit.
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.extend(HEX.get(usize::from(b >> 4)).map(|&d| char::from(d)));
            out.extend(HEX.get(usize::from(b & 15)).map(|&d| char::from(d)));
        }
    }
    out
}

/// `k1=v1&k2=v2`, every key and value percent-encoded.
pub fn form_encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Decodes one form component (`+` is a space). `None` if malformed or not UTF-8.
pub fn form_decode(text: &str) -> Option<String> {
    let mut rest = text.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let [h, l, after @ ..] = rest else {
                    return None;
                };
                out.push(hex(*h)? << 4 | hex(*l)?);
                rest = after;
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded query parameters of a `:path` (malformed pairs are skipped).
pub fn query_params(path: &str) -> Vec<(String, String)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

/// The first value of query parameter `name`.
pub fn query_param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u = HttpUrl::parse("https://IdP.example:8443/oauth2/token?x=1").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "idp.example:8443");
        assert_eq!(u.path_and_query, "/oauth2/token?x=1");
        assert_eq!(u.to_string(), "https://idp.example:8443/oauth2/token?x=1");
        assert_eq!(HttpUrl::parse("http://h").unwrap().path_and_query, "/");
        assert_eq!(HttpUrl::parse("http://h?a").unwrap().path_and_query, "/?a");
        for bad in [
            "ftp://h",
            "http://",
            "http://u@h/",
            "http://h/#f",
            "http://h/ x",
            "/x",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_are_appended_encoded() {
        let u = HttpUrl::parse("http://h/auth?tenant=a").unwrap();
        assert_eq!(
            u.with_query(&[("redirect_uri", "https://x/.auth/callback"), ("scope", "openid email")]),
            "http://h/auth?tenant=a&redirect_uri=https%3A%2F%2Fx%2F.auth%2Fcallback&scope=openid%20email"
        );
    }

    #[test]
    fn query_params_decode() {
        let p = query_params("/.auth/callback?code=a%2Bb&state=x+y&flag&bad=%zz");
        assert_eq!(query_param(&p, "code").as_deref(), Some("a+b"));
        assert_eq!(query_param(&p, "state").as_deref(), Some("x y"));
        assert_eq!(query_param(&p, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&p, "bad"), None);
        assert!(query_params("/x").is_empty());
    }
}
