//! Which app a request belongs to: one decision shared by the router and
//! every filter.
//!
//! The app a filter judges must be the app Envoy routes the request to. The
//! route says so itself: every route of a published app carries
//! `metadata: {filter_metadata: {portcullis: {app: <id>}}}`, and the filters
//! read it through the proxy-wasm property [`ROUTE_APP_PROPERTY`]. Envoy
//! resolves the route before the first HTTP filter runs, and returns the leaf
//! of that path as the raw string (checked against Envoy 1.40; a missing
//! route or key is "not found"). The header the edge needs,
//! `x-portcullis-app`, is derived from the same metadata by the route
//! (`%METADATA(ROUTE:portcullis:app)%`), so there is one source.
//!
//! Where routes cannot carry metadata (Istio, Envoy Gateway), the fallback is
//! the `Host` as Envoy has canonicalised it before routing: the filters
//! compare [`host_name`] (port removed, ASCII lower case) with the configured
//! host names exactly. Nothing else is removed: a Host with a trailing dot
//! that Envoy did not strip (`strip_trailing_host_dot` strips one) matches no
//! app and falls under `other_hosts`.
//!
//! When the route names an app, the route wins over the Host. A route naming
//! an app that a filter does not know, or a value that is not an app id, is
//! refused ([`route_app_unknown`]), never passed.

use crate::denial::{Code, Denial};

/// The proxy-wasm property path of the app id in the route's metadata.
pub const ROUTE_APP_PROPERTY: [&str; 5] = [
    "xds",
    "route_metadata",
    "filter_metadata",
    ROUTE_METADATA_NAMESPACE,
    "app",
];

/// The `filter_metadata` namespace of Portcullis's route metadata.
pub const ROUTE_METADATA_NAMESPACE: &str = "portcullis";

/// Longest app id accepted anywhere.
pub const MAX_APP_ID_LEN: usize = 128;

/// True when `id` is an app id: 1 to [`MAX_APP_ID_LEN`] letters, digits,
/// `-`, `_` or `.` (the one syntax every filter and the route metadata use).
pub fn is_app_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_APP_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What the route says about the request's app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteApp<'a> {
    /// The route names no app (no route, or no `portcullis.app` in its
    /// metadata): the Host decides.
    Absent,
    /// The route names this app id.
    Named(&'a str),
    /// The route's value is not an app id (empty, not a string, bad
    /// characters): refused.
    Invalid,
}

impl<'a> RouteApp<'a> {
    /// Reads the value of [`ROUTE_APP_PROPERTY`] (`None`: not found).
    pub fn from_property(value: Option<&'a [u8]>) -> RouteApp<'a> {
        match value {
            None => RouteApp::Absent,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(id) if is_app_id(id) => RouteApp::Named(id),
                _ => RouteApp::Invalid,
            },
        }
    }

    /// The app id the route names, if it names a valid one.
    pub fn id(&self) -> Option<&'a str> {
        match self {
            RouteApp::Named(id) => Some(id),
            _ => None,
        }
    }
}

/// The host name the filters compare with configured hosts: the authority
/// without its port, in ASCII lower case. A trailing dot is kept.
/// IPv6 literals keep their brackets (`[::1]:443` → `[::1]`).
pub fn host_name(authority: &str) -> String {
    strip_port(authority.trim()).to_ascii_lowercase()
}

/// `host[:port]` → `host` (IPv6 literals in brackets are kept whole; a
/// colon not followed by digits only is not a port).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.split_once(']') {
            Some((inside, _)) => host.get(..=inside.len()).unwrap_or(host),
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// How a filter found the request's app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen<T> {
    /// The route named it. `host_choice` is what the Host alone would have
    /// chosen: when it differs, the route still wins (filters log it).
    Route {
        /// The app.
        app: T,
        /// The Host-based choice, for the log.
        host_choice: Option<T>,
    },
    /// The route names no app; the Host chose this one.
    Host(T),
    /// Neither the route nor the Host names an app: `other_hosts`.
    None,
    /// The route names an app this filter does not know, or its value is
    /// not an app id: refuse with [`route_app_unknown`].
    UnknownRoute,
}

impl<T: Copy> Chosen<T> {
    /// The app, however it was chosen.
    pub fn app(&self) -> Option<T> {
        match self {
            Chosen::Route { app, .. } | Chosen::Host(app) => Some(*app),
            Chosen::None | Chosen::UnknownRoute => None,
        }
    }
}

/// The shared rule: the route's app when it names one (looked up with
/// `by_id`), else the Host's (`by_host`).
pub fn choose<T: Copy>(
    route: RouteApp<'_>,
    by_id: impl FnOnce(&str) -> Option<T>,
    by_host: impl FnOnce() -> Option<T>,
) -> Chosen<T> {
    match route {
        RouteApp::Named(id) => match by_id(id) {
            Some(app) => Chosen::Route {
                app,
                host_choice: by_host(),
            },
            None => Chosen::UnknownRoute,
        },
        RouteApp::Invalid => Chosen::UnknownRoute,
        RouteApp::Absent => match by_host() {
            Some(app) => Chosen::Host(app),
            None => Chosen::None,
        },
    }
}

/// The denial for a route that names an app the filter does not know
/// (`route_app_unknown`, 500: the proxy's configuration is wrong).
pub fn route_app_unknown() -> Denial {
    Denial::from(Code::RouteAppUnknown)
}

/// The denial for a handed-over identity of another app than the one the
/// request goes to (`app_mismatch`, 500: the proxy's filters disagree).
pub fn app_mismatch() -> Denial {
    Denial::from(Code::AppMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_values_are_app_ids_or_invalid() {
        assert_eq!(RouteApp::from_property(None), RouteApp::Absent);
        assert_eq!(
            RouteApp::from_property(Some(b"admin")),
            RouteApp::Named("admin")
        );
        for bad in [
            &b""[..],
            b"ad min",
            b"admin\n",
            b"\xff",
            // A number in the metadata arrives as 8 bytes of a double.
            &5.0f64.to_le_bytes(),
            &[b'a'; MAX_APP_ID_LEN + 1],
        ] {
            assert_eq!(RouteApp::from_property(Some(bad)), RouteApp::Invalid);
        }
    }

    #[test]
    fn host_names_lose_the_port_and_case_only() {
        assert_eq!(host_name("Admin.Localhost:10000"), "admin.localhost");
        assert_eq!(host_name("admin.localhost."), "admin.localhost.");
        assert_eq!(host_name("admin.localhost.:10000"), "admin.localhost.");
        assert_eq!(host_name("admin.localhost..:1"), "admin.localhost..");
        assert_eq!(host_name("[::1]:443"), "[::1]");
        assert_eq!(host_name("a:b"), "a:b");
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
    }

    #[test]
    fn the_route_wins_and_unknown_route_apps_are_refused() {
        let apps = ["sample", "admin"];
        let by_id = |id: &str| apps.iter().position(|a| *a == id);
        assert_eq!(
            choose(RouteApp::Named("sample"), by_id, || Some(1)),
            Chosen::Route {
                app: 0,
                host_choice: Some(1)
            }
        );
        assert_eq!(
            choose(RouteApp::Named("nope"), by_id, || Some(1)),
            Chosen::UnknownRoute
        );
        assert_eq!(
            choose(RouteApp::Invalid, by_id, || Some(1)),
            Chosen::UnknownRoute
        );
        assert_eq!(choose(RouteApp::Absent, by_id, || Some(1)), Chosen::Host(1));
        assert_eq!(choose(RouteApp::Absent, by_id, || None), Chosen::None);
        assert_eq!(route_app_unknown().code(), "route_app_unknown");
        assert_eq!(app_mismatch().status(), 500);
    }
}
