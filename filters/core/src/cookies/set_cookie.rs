//! Response side: the per-app policy applied to each `Set-Cookie` of the app.
//!
//! - A `Set-Cookie` for one of the proxy's own names is refused (the caller
//!   drops the header and logs the name).
//! - `Secure`, `HttpOnly` and `SameSite` are added where configured; nothing
//!   the app set is removed or weakened (`SameSite` only ever becomes
//!   stricter: `None` < `Lax` < `Strict`; a resulting `SameSite=None` always
//!   carries `Secure`, as browsers require).
//! - A `Domain` naming the internal host (or a parent domain of it) is
//!   rewritten to the external host, or dropped (host-only cookie).
//! - A `Path` under the internal path prefix is mapped to the external prefix
//!   (not for `__Host-` cookies, whose `Path` must stay `/`).
//!
//! A cookie that needs no change is reported as such so that the caller can
//! leave the header byte-for-byte.

use super::names::ProxyCookieNames;
use super::url::UrlMapping;

/// A `SameSite` value; the order is from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SameSite {
    /// `SameSite=None` (sent on cross-site requests; needs `Secure`).
    None,
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=Strict`.
    Strict,
}

impl SameSite {
    /// The attribute value as written in `Set-Cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }

    /// Parses an attribute value, ignoring case; `None` for an unknown value.
    pub fn parse(s: &str) -> Option<Self> {
        [SameSite::None, SameSite::Lax, SameSite::Strict]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What to do with a `Domain` attribute that names the internal host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainPolicy {
    /// Replace it with the external host.
    Rewrite,
    /// Remove it, which makes the cookie host-only on the external host.
    Drop,
}

/// The per-app `Set-Cookie` hardening policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookiePolicy {
    /// Add `Secure` when missing.
    pub secure: bool,
    /// Add `HttpOnly` when missing.
    pub http_only: bool,
    /// Require at least this `SameSite` value.
    pub same_site: Option<SameSite>,
    /// What to do with an internal `Domain`.
    pub domain: DomainPolicy,
    /// Map a `Path` under the internal prefix to the external prefix.
    pub map_path: bool,
}

/// The outcome of the policy for one `Set-Cookie` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetCookieOutcome {
    /// Keep the header exactly as the app sent it.
    Unchanged,
    /// Replace the header with this value.
    Rewritten(String),
    /// Drop the header: the app tried to set a proxy cookie (name for the log).
    Refused {
        /// The cookie name the app used.
        name: String,
    },
}

/// Applies the proxy-name check and, when the request's app is known, its
/// policy to one `Set-Cookie` value.
pub fn apply_set_cookie(
    names: &ProxyCookieNames,
    app: Option<(&SetCookiePolicy, &UrlMapping)>,
    value: &str,
) -> SetCookieOutcome {
    let mut parts = value.split(';');
    let first = parts.next().unwrap_or_default().trim_matches([' ', '\t']);
    let name = first
        .split_once('=')
        .map_or(first, |(n, _)| n)
        .trim_matches([' ', '\t']);
    if names.is_proxy_cookie(name) {
        return SetCookieOutcome::Refused {
            name: name.to_string(),
        };
    }
    let Some((policy, mapping)) = app else {
        return SetCookieOutcome::Unchanged;
    };
    let host_prefixed = name
        .as_bytes()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"__host-"));
    let ext_host_is_ip = mapping.external.host.starts_with('[')
        || mapping
            .external
            .host
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.');

    let mut attrs: Vec<String> = Vec::new();
    let mut changed = false;
    let (mut has_secure, mut has_http_only) = (false, false);
    let mut same_site_attrs: u32 = 0;
    let mut app_same_site: Option<SameSite> = None;
    for attr in parts {
        let attr = attr.trim_matches([' ', '\t']);
        if attr.is_empty() {
            changed = true;
            continue;
        }
        let (aname, aval) = match attr.split_once('=') {
            Some((n, v)) => (n.trim_matches([' ', '\t']), v.trim_matches([' ', '\t'])),
            None => (attr, ""),
        };
        if aname.eq_ignore_ascii_case("secure") {
            has_secure = true;
        } else if aname.eq_ignore_ascii_case("httponly") {
            has_http_only = true;
        } else if aname.eq_ignore_ascii_case("samesite") {
            same_site_attrs = same_site_attrs.saturating_add(1);
            // Browsers use the last one; an unknown value counts as unset.
            app_same_site = SameSite::parse(aval);
            if policy.same_site.is_some() {
                // Re-added below with the final value.
                continue;
            }
        } else if aname.eq_ignore_ascii_case("domain") {
            let domain = aval.trim_start_matches('.').to_ascii_lowercase();
            let internal = &mapping.internal.host;
            let is_internal = !domain.is_empty()
                && (domain == *internal
                    || internal
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.')));
            if is_internal {
                changed = true;
                if policy.domain == DomainPolicy::Rewrite && !ext_host_is_ip {
                    attrs.push(format!("Domain={}", mapping.external.host));
                }
                continue;
            }
        } else if aname.eq_ignore_ascii_case("path")
            && policy.map_path
            && !host_prefixed
            && aval.starts_with('/')
            && !aval.contains(['?', '#'])
        {
            if let Some(mapped) = mapping.map_path(aval).filter(|m| m != aval) {
                changed = true;
                attrs.push(format!("Path={mapped}"));
                continue;
            }
        }
        attrs.push(attr.to_string());
    }
    if let Some(wanted) = policy.same_site {
        let final_value = app_same_site.map_or(wanted, |a| a.max(wanted));
        // Unless the app's single attribute already says it, this is a change.
        if !(same_site_attrs == 1 && app_same_site == Some(final_value)) {
            changed = true;
        }
        attrs.push(format!("SameSite={}", final_value.as_str()));
        if final_value == SameSite::None && !has_secure {
            attrs.push("Secure".to_string());
            has_secure = true;
            changed = true;
        }
    }
    if policy.secure && !has_secure {
        attrs.push("Secure".to_string());
        changed = true;
    }
    if policy.http_only && !has_http_only {
        attrs.push("HttpOnly".to_string());
        changed = true;
    }
    if !changed {
        return SetCookieOutcome::Unchanged;
    }
    let mut out = String::with_capacity(value.len().saturating_add(32));
    out.push_str(first);
    for a in &attrs {
        out.push_str("; ");
        out.push_str(a);
    }
    SetCookieOutcome::Rewritten(out)
}

#[cfg(test)]
mod tests {
    use super::super::url::Endpoint;
    use super::*;

    fn mapping(internal: &str, external: &str) -> UrlMapping {
        UrlMapping {
            internal: Endpoint::parse("i", internal).unwrap(),
            external: Endpoint::parse("e", external).unwrap(),
        }
    }

    fn policy() -> SetCookiePolicy {
        SetCookiePolicy {
            secure: true,
            http_only: true,
            same_site: Some(SameSite::Lax),
            domain: DomainPolicy::Rewrite,
            map_path: true,
        }
    }

    fn apply(p: &SetCookiePolicy, m: &UrlMapping, v: &str) -> SetCookieOutcome {
        apply_set_cookie(&ProxyCookieNames::default(), Some((p, m)), v)
    }

    fn rewritten(s: &str) -> SetCookieOutcome {
        SetCookieOutcome::Rewritten(s.to_string())
    }

    #[test]
    fn protections_are_added() {
        let m = mapping("http://app.internal:8080", "https://ext.example");
        assert_eq!(
            apply(&policy(), &m, "sid=abc"),
            rewritten("sid=abc; SameSite=Lax; Secure; HttpOnly")
        );
        assert_eq!(
            apply(&policy(), &m, "sid=\"a b\"; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Max-Age=60"),
            rewritten("sid=\"a b\"; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Max-Age=60; SameSite=Lax; Secure; HttpOnly")
        );
    }

    #[test]
    fn nothing_the_app_set_is_removed_or_weakened() {
        let m = mapping("http://app.internal:8080", "https://ext.example");
        // Already hardened: byte-for-byte unchanged (attribute case kept).
        assert_eq!(
            apply(&policy(), &m, "a=1; secure; HTTPONLY; samesite=lax"),
            SetCookieOutcome::Unchanged
        );
        // Strict stays Strict when Lax is configured.
        assert_eq!(
            apply(&policy(), &m, "a=1; Secure; HttpOnly; SameSite=Strict"),
            SetCookieOutcome::Unchanged
        );
        // None is raised to Lax.
        assert_eq!(
            apply(&policy(), &m, "a=1; SameSite=None; Secure; HttpOnly"),
            rewritten("a=1; Secure; HttpOnly; SameSite=Lax")
        );
        // An unknown value counts as unset; duplicates collapse to the final value.
        assert_eq!(
            apply(&policy(), &m, "a=1; SameSite=bogus; Secure; HttpOnly"),
            rewritten("a=1; Secure; HttpOnly; SameSite=Lax")
        );
        assert_eq!(
            apply(
                &policy(),
                &m,
                "a=1; SameSite=Strict; SameSite=None; Secure; HttpOnly"
            ),
            rewritten("a=1; Secure; HttpOnly; SameSite=Lax")
        );
        // A policy that asks for less keeps what the app set.
        let weak = SetCookiePolicy {
            secure: false,
            http_only: false,
            same_site: Some(SameSite::None),
            ..policy()
        };
        assert_eq!(
            apply(&weak, &m, "a=1; SameSite=Strict; Path=/"),
            SetCookieOutcome::Unchanged
        );
        // SameSite=None always gets Secure.
        assert_eq!(
            apply(&weak, &m, "a=1"),
            rewritten("a=1; SameSite=None; Secure")
        );
        // No policy at all: untouched, even without protections.
        let none = SetCookiePolicy {
            secure: false,
            http_only: false,
            same_site: None,
            ..policy()
        };
        assert_eq!(
            apply(&none, &m, "a=1; SameSite=None"),
            SetCookieOutcome::Unchanged
        );
    }

    #[test]
    fn internal_domains_are_rewritten_or_dropped() {
        let m = mapping("http://app.corp.internal:8080", "https://ext.example");
        let p = SetCookiePolicy {
            secure: false,
            http_only: false,
            same_site: None,
            ..policy()
        };
        assert_eq!(
            apply(&p, &m, "a=1; Domain=app.corp.internal"),
            rewritten("a=1; Domain=ext.example")
        );
        assert_eq!(
            apply(&p, &m, "a=1; domain=.APP.corp.internal; Path=/"),
            rewritten("a=1; Domain=ext.example; Path=/")
        );
        assert_eq!(
            apply(&p, &m, "a=1; Domain=corp.internal"),
            rewritten("a=1; Domain=ext.example")
        );
        assert_eq!(
            apply(&p, &m, "a=1; Domain=ext.example"),
            SetCookieOutcome::Unchanged
        );
        assert_eq!(
            apply(&p, &m, "a=1; Domain=p.corp.internal"),
            SetCookieOutcome::Unchanged
        );
        assert_eq!(
            apply(&p, &m, "a=1; Domain=rp.corp.internal"),
            SetCookieOutcome::Unchanged
        );
        let drop = SetCookiePolicy {
            domain: DomainPolicy::Drop,
            ..p.clone()
        };
        assert_eq!(
            apply(&drop, &m, "a=1; Domain=app.corp.internal; Path=/"),
            rewritten("a=1; Path=/")
        );
        // An IP external host cannot be a Domain: dropped.
        let ip = mapping("http://app.corp.internal", "https://127.0.0.1:10443");
        assert_eq!(
            apply(&p, &ip, "a=1; Domain=app.corp.internal"),
            rewritten("a=1")
        );
    }

    #[test]
    fn paths_are_mapped_on_segment_boundaries() {
        let m = mapping("http://app.internal/app", "https://ext.example");
        let p = SetCookiePolicy {
            secure: false,
            http_only: false,
            same_site: None,
            ..policy()
        };
        assert_eq!(apply(&p, &m, "a=1; Path=/app"), rewritten("a=1; Path=/"));
        assert_eq!(
            apply(&p, &m, "a=1; Path=/app/x; HttpOnly"),
            rewritten("a=1; Path=/x; HttpOnly")
        );
        assert_eq!(
            apply(&p, &m, "a=1; Path=/application"),
            SetCookieOutcome::Unchanged
        );
        assert_eq!(apply(&p, &m, "a=1; Path=/"), SetCookieOutcome::Unchanged);
        assert_eq!(
            apply(&p, &m, "__Host-a=1; Path=/app; Secure"),
            SetCookieOutcome::Unchanged
        );
        let pub_ = mapping("http://app.internal", "https://ext.example/pub");
        assert_eq!(
            apply(&p, &pub_, "a=1; Path=/"),
            rewritten("a=1; Path=/pub/")
        );
        let off = SetCookiePolicy {
            map_path: false,
            ..p.clone()
        };
        assert_eq!(
            apply(&off, &m, "a=1; Path=/app"),
            SetCookieOutcome::Unchanged
        );
    }

    #[test]
    fn proxy_names_behind_control_characters_are_refused() {
        // Found by fuzzing (fuzz/regressions/set_cookie/ff-space-ff-secure-proxy-name):
        // passed with hardening attributes, and a parser that trims \x0c stores it
        // as the proxy's `__Secure-portcullis_x`.
        let names = ProxyCookieNames::default();
        for value in [
            "\x0c \x0c__Secure-portcullis_x=1",
            "\x0b__Host-portcullis=e; Path=/",
        ] {
            assert!(
                matches!(
                    apply_set_cookie(&names, None, value),
                    SetCookieOutcome::Refused { .. }
                ),
                "{value:?}"
            );
        }
    }

    #[test]
    fn proxy_names_are_refused_even_without_an_app() {
        let names = ProxyCookieNames::default();
        for v in [
            "__Host-portcullis=forged; Path=/; Secure",
            "__SECURE-portcullis=x",
            "__host-PORTCULLIS-state-1=x",
            " portcullis-state-abc = x ; Max-Age=0",
            "__Host-portcullis",
        ] {
            let out = apply_set_cookie(&names, None, v);
            assert!(
                matches!(out, SetCookieOutcome::Refused { .. }),
                "{v}: {out:?}"
            );
        }
        assert_eq!(
            apply_set_cookie(&names, None, "__Host-portcullis=x"),
            SetCookieOutcome::Refused {
                name: "__Host-portcullis".into()
            }
        );
        assert_eq!(
            apply_set_cookie(&names, None, "sid=1"),
            SetCookieOutcome::Unchanged
        );
        assert_eq!(
            apply_set_cookie(&names, None, ""),
            SetCookieOutcome::Unchanged
        );
    }

    #[test]
    fn garbage_never_panics() {
        let m = mapping("http://app.internal/app", "https://ext.example");
        for v in [
            ";;;",
            "=",
            "a=1;;",
            "a=1; Domain=",
            "a=1; Path",
            "a=1; SameSite",
            "é=ü; Path=/app/é",
            "a=1; Domain=.",
        ] {
            let _ = apply(&policy(), &m, v);
        }
        assert_eq!(
            apply(&policy(), &m, "a=1;; Secure; HttpOnly; SameSite=Lax"),
            rewritten("a=1; Secure; HttpOnly; SameSite=Lax")
        );
    }
}
