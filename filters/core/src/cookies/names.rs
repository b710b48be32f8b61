//! Which cookie names belong to the proxy.
//!
//! A name is the proxy's when, after removing a leading `__Host-` or
//! `__Secure-` (in any letter case, as browsers compare these prefixes), it
//! equals one of the configured names (themselves stripped of such a prefix) or
//! starts with one of the configured prefixes; both comparisons ignore ASCII
//! case. With the defaults (`__Host-portcullis`, prefix `portcullis`) this
//! covers the session cookie, `__Host-portcullis-state-<hash>`,
//! `portcullis-state-…`, and `__Secure-PORTCULLIS…` alike.

use crate::config::ConfigError;

/// The default proxy cookie name (the session cookie).
pub const DEFAULT_PROXY_COOKIE_NAME: &str = "__Host-portcullis";
/// The default proxy cookie name prefix (login state, chunks, affinity…).
pub const DEFAULT_PROXY_COOKIE_PREFIX: &str = "portcullis";

/// The configured proxy-owned cookie names and prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCookieNames {
    /// Exact names, lower case, without `__Host-`/`__Secure-`.
    names: Vec<String>,
    /// Name prefixes, lower case, without `__Host-`/`__Secure-`.
    prefixes: Vec<String>,
}

impl Default for ProxyCookieNames {
    fn default() -> Self {
        Self {
            names: vec![strip_cookie_prefix(DEFAULT_PROXY_COOKIE_NAME).to_ascii_lowercase()],
            prefixes: vec![DEFAULT_PROXY_COOKIE_PREFIX.to_string()],
        }
    }
}

/// True if `s` starts with `prefix`, ASCII case-insensitively.
fn starts_with_ignore_ascii_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Removes a leading `__Host-` or `__Secure-` (ASCII case-insensitive).
pub fn strip_cookie_prefix(name: &str) -> &str {
    for p in ["__host-", "__secure-"] {
        if starts_with_ignore_ascii_case(name, p) {
            // The prefix is ASCII, so its end is a character boundary.
            return name.get(p.len()..).unwrap_or(name);
        }
    }
    name
}

/// True for an RFC 6265 cookie-name (an RFC 9110 token).
pub fn is_cookie_name(name: &str) -> bool {
    const EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || EXTRA.contains(&b))
}

impl ProxyCookieNames {
    /// Validates configured names and prefixes. `field` is the configuration
    /// field holding them (errors name `field.names[i]` / `field.prefixes[i]`).
    pub fn new(field: &str, names: &[String], prefixes: &[String]) -> Result<Self, ConfigError> {
        let mut out = Self {
            names: Vec::new(),
            prefixes: Vec::new(),
        };
        for (i, n) in names.iter().enumerate() {
            let f = format!("{field}.names[{i}]");
            if !is_cookie_name(n) {
                return Err(ConfigError::new(
                    f,
                    format!("`{n}` is not a valid cookie name"),
                ));
            }
            let base = strip_cookie_prefix(n);
            if base.is_empty() {
                return Err(ConfigError::new(
                    f,
                    "must be more than a `__Host-`/`__Secure-` prefix",
                ));
            }
            out.names.push(base.to_ascii_lowercase());
        }
        for (i, p) in prefixes.iter().enumerate() {
            let f = format!("{field}.prefixes[{i}]");
            if !is_cookie_name(p) {
                return Err(ConfigError::new(
                    f,
                    format!("`{p}` is not a valid cookie name prefix"),
                ));
            }
            let base = strip_cookie_prefix(p);
            if base.is_empty() {
                return Err(ConfigError::new(
                    f,
                    "must be more than a `__Host-`/`__Secure-` prefix (it would match every cookie)",
                ));
            }
            out.prefixes.push(base.to_ascii_lowercase());
        }
        if out.names.is_empty() && out.prefixes.is_empty() {
            return Err(ConfigError::new(
                field,
                "at least one proxy cookie name or prefix is needed (the session cookie must never reach apps)",
            ));
        }
        Ok(out)
    }

    /// True when `name` (as found in a `Cookie` or `Set-Cookie` header) is
    /// one of the proxy's cookies. Surrounding whitespace *and control
    /// characters* are ignored: browsers trim only SP and HTAB (and drop a
    /// line with a control character), but other cookie parsers trim any
    /// whitespace (Python's `str.strip` removes `\x0c`, `\x1c`…`\x1f` and
    /// NBSP), so `"\x0c__Host-portcullis"` must count as ours too.
    pub fn is_proxy_cookie(&self, name: &str) -> bool {
        let base =
            strip_cookie_prefix(name.trim_matches(|c: char| c.is_whitespace() || c.is_control()));
        self.names.iter().any(|n| base.eq_ignore_ascii_case(n))
            || self
                .prefixes
                .iter()
                .any(|p| starts_with_ignore_ascii_case(base, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_session_state_and_variants() {
        let n = ProxyCookieNames::default();
        for name in [
            "__Host-portcullis",
            "__host-PORTCULLIS",
            "__Secure-portcullis",
            "__SECURE-portcullis-state-abc",
            "__Host-portcullis-state-0f3a",
            "portcullis-state-x",
            "portcullis",
            " portcullis ",
            "Portcullis-affinity",
        ] {
            assert!(n.is_proxy_cookie(name), "{name}");
        }
        for name in [
            "session",
            "__Host-session",
            "port",
            "my-portcullis",
            "__Host-",
            "",
            "__Host_portcullis",
        ] {
            assert!(!n.is_proxy_cookie(name), "{name}");
        }
        // Found by fuzzing (fuzz/regressions/set_cookie): names a lenient
        // parser trims to a proxy cookie are proxy cookies.
        for name in [
            "\x0c \x0c__Secure-portcullis_x",
            "\x0b__Host-portcullis",
            "__Host-portcullis\x1f",
            "\u{a0}portcullis-state",
            "\r\n__Host-portcullis",
        ] {
            assert!(n.is_proxy_cookie(name), "{name:?}");
        }
    }

    #[test]
    fn configured_names_and_prefixes() {
        let n = ProxyCookieNames::new(
            "proxy_cookies",
            &["__Host-gate".to_string()],
            &["gate_".to_string()],
        )
        .unwrap();
        assert!(n.is_proxy_cookie("__Host-gate"));
        assert!(n.is_proxy_cookie("gate"));
        assert!(n.is_proxy_cookie("__Secure-GATE_chunk1"));
        assert!(!n.is_proxy_cookie("gatekeeper"));
        assert!(!n.is_proxy_cookie("__Host-portcullis"));
    }

    #[test]
    fn bad_names_are_refused_with_their_field() {
        let e = ProxyCookieNames::new("proxy_cookies", &["a b".into()], &[]).unwrap_err();
        assert_eq!(e.field, "proxy_cookies.names[0]");
        let e = ProxyCookieNames::new("proxy_cookies", &[], &["ok".into(), "__Secure-".into()])
            .unwrap_err();
        assert_eq!(e.field, "proxy_cookies.prefixes[1]");
        let e = ProxyCookieNames::new("proxy_cookies", &[], &[]).unwrap_err();
        assert_eq!(e.field, "proxy_cookies");
    }
}
