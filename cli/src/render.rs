//! `portcullis render`: from a [`Spec`] to the Envoy bootstrap, the stages'
//! configurations and the edge's, each judged by its own parser before
//! anything is written.

use crate::origins::Origins;
use crate::spec::{
    App, Layout, Spec, SpecError, APP_COOKIE_FIELDS, APP_PREAUTH_FIELDS, PROVIDER_FIELDS,
};
use portcullis_core::config::ConfigError;
use portcullis_core::cookies::CookieFilterConfig;
use portcullis_core::oidc::config::PreauthConfig;
use portcullis_core::policy::PolicyConfig;
use portcullis_core::robots::RobotsConfig;
use serde_json::{json, Map, Value};
use sha2::Digest as _;
use std::collections::BTreeSet;
use std::path::Path;

/// Where the `.wasm` modules are by default (relative to Envoy's working directory).
pub const DEFAULT_MODULES: &str = "target/wasm32-wasip1/release";
/// Envoy's admin address by default.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// The CA bundle TLS clusters verify with by default.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The Envoy cluster of the edge service.
pub const EDGE_CLUSTER: &str = "portcullis_edge";
/// The header the edge reads the app from (its `app_header`).
pub const EDGE_APP_HEADER: &str = "x-portcullis-app";

/// A `host:port` Envoy connects to or listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[::1]:10000` for IPv6).
    pub fn parse(field: &str, text: &str) -> Result<HostPort, SpecError> {
        let bad = || SpecError::new(field, format!("`{text}` is not a `host:port` address"));
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
            (h, p)
        } else {
            text.rsplit_once(':').ok_or_else(bad)?
        };
        if host.is_empty() || host.contains(':') && !text.starts_with('[') {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// True when the host is an IP literal (a STATIC cluster), not a name (STRICT_DNS).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// `host:port` as written in a URL.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A URL's scheme and address (for clusters and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// Host and port (the scheme's default when the URL has none).
    pub address: HostPort,
}

impl UrlTarget {
    /// Parses an absolute `http(s)` URL.
    pub fn parse(field: &str, url: &str) -> Result<UrlTarget, SpecError> {
        let parsed = portcullis_core::oidc::url::HttpUrl::parse(url)
            .map_err(|e| SpecError::new(field, format!("`{url}`: {e}")))?;
        let default_port = if parsed.scheme == "https" { 443 } else { 80 };
        let authority = &parsed.authority;
        let has_port = match authority.strip_prefix('[') {
            Some(rest) => rest.contains("]:"),
            None => authority.contains(':'),
        };
        let address = if has_port {
            HostPort::parse(field, authority)?
        } else {
            HostPort {
                host: authority
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase(),
                port: default_port,
            }
        };
        Ok(UrlTarget {
            scheme: parsed.scheme,
            address,
        })
    }
}

/// One Envoy cluster the render defines (what `portcullis check` compares
/// the provider's endpoints with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Where it connects (`None` for a Unix socket).
    pub address: Option<HostPort>,
    /// TLS: (server name sent and verified, CA bundle).
    pub tls: Option<(String, String)>,
    /// For a provider whose endpoints span several hosts: the cluster is an
    /// internal listener that sends each call to the cluster of its host
    /// (these), and answers 404 for any other host.
    pub routes: Vec<ClusterInfo>,
}

/// Everything `portcullis render` writes.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The layout rendered.
    pub layout: Layout,
    /// The Envoy bootstrap.
    pub envoy: Value,
    /// The robots stage's configuration.
    pub robots: Value,
    /// The preauth stage's configuration.
    pub preauth: Value,
    /// The conditional-access stage's configuration.
    pub conditional_access: Value,
    /// The cookie stage's configuration.
    pub cookie: Value,
    /// The edge's configuration (`edge.json`), when an app goes through connectors.
    pub edge: Option<Value>,
    /// Environment variables the filters read (Envoy passes them from its own
    /// environment: `vm_config.environment_variables.host_env_keys`).
    pub env_keys: Vec<String>,
    /// The clusters defined.
    pub clusters: Vec<ClusterInfo>,
    /// Listener origins users reach: (`http` or `https`, port).
    pub listeners: Vec<(String, u16)>,
}

/// Renders `spec` (read from a file in `base_dir`, against which `{file: ..}`
/// secrets are resolved) and runs every output through its own parser.
pub fn render(spec: &Spec, base_dir: &Path) -> Result<Rendered, SpecError> {
    let mut origins = Origins::default();
    let mut env_keys = BTreeSet::new();
    let http = spec
        .listeners
        .http
        .as_deref()
        .map(|a| HostPort::parse("listeners.http", a))
        .transpose()?;
    let https = spec
        .listeners
        .https
        .as_ref()
        .map(|l| HostPort::parse("listeners.https.address", &l.address))
        .transpose()?;
    if http.is_none() && https.is_none() {
        return Err(SpecError::new(
            "listeners",
            "give `http`, `https` or both: Envoy would listen nowhere",
        ));
    }
    let mut listeners = Vec::new();
    if let Some(h) = &http {
        listeners.push(("http".to_string(), h.port));
    }
    if let Some(h) = &https {
        listeners.push(("https".to_string(), h.port));
    }
    if spec.apps.is_empty() {
        return Err(SpecError::new("apps", "publishes no app"));
    }

    // Apps: ids and hosts unique (Envoy refuses duplicate domains; the stages, duplicate ids).
    let mut ids = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for (i, app) in spec.apps.iter().enumerate() {
        if !ids.insert(app.id.as_str()) {
            return Err(SpecError::new(
                format!("apps[{i}].id"),
                format!("`{}` is the id of an earlier app", app.id),
            ));
        }
        if app.hosts.is_empty() {
            return Err(SpecError::new(
                format!("apps[{i}].hosts"),
                "names no host: Envoy would route nothing to the app",
            ));
        }
        for (j, h) in app.hosts.iter().enumerate() {
            if !hosts.insert(h.to_ascii_lowercase()) {
                return Err(SpecError::new(
                    format!("apps[{i}].hosts[{j}]"),
                    format!("`{h}` is a host of an earlier app"),
                ));
            }
        }
    }

    // Providers and their clusters.
    let mut clusters_json = Vec::new();
    let mut internal_listeners = Vec::new();
    let mut clusters = Vec::new();
    let used: BTreeSet<String> = spec
        .apps
        .iter()
        .enumerate()
        .filter(|(_, a)| !is_passthrough(a))
        .map(|(i, a)| provider_of(spec, i, a))
        .collect::<Result<_, _>>()?;
    for name in &used {
        let Some(p) = spec.providers.get(name) else {
            continue;
        };
        let field = format!("providers.{name}");
        for key in p.settings.keys() {
            if !PROVIDER_FIELDS.contains(&key.as_str()) {
                return Err(SpecError::new(
                    format!("{field}.{key}"),
                    format!(
                        "unknown provider field (known: issuer, cluster, address, tls, endpoint_hosts, \
                         client_id, client_secret, {})",
                        PROVIDER_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let issuer = UrlTarget::parse(&format!("{field}.issuer"), &p.issuer)?;
        let address = match &p.address {
            Some(a) => HostPort::parse(&format!("{field}.address"), a)?,
            None => issuer.address.clone(),
        };
        let tls = if issuer.scheme == "https" {
            let t = p.tls.clone().unwrap_or_default();
            Some((
                t.sni.unwrap_or_else(|| issuer.address.host.clone()),
                t.ca_file.unwrap_or_else(|| SYSTEM_CA_BUNDLE.to_string()),
            ))
        } else {
            if p.tls.is_some() {
                return Err(SpecError::new(
                    format!("{field}.tls"),
                    "the issuer is http://: no TLS would be used (make the issuer https://)",
                ));
            }
            None
        };
        let cluster = provider_cluster(name, p);
        if p.endpoint_hosts.is_empty() {
            clusters_json.push(cluster_json(&cluster, &address, tls.as_ref()));
            clusters.push(ClusterInfo {
                name: cluster,
                address: Some(address),
                tls,
                routes: Vec::new(),
            });
            continue;
        }
        // One cluster per host, behind an internal listener that routes by host.
        let mut routes = vec![ClusterInfo {
            name: format!("{cluster}_{}", cluster_safe(&issuer.address.authority())),
            address: Some(address),
            tls,
            routes: Vec::new(),
        }];
        for (j, h) in p.endpoint_hosts.iter().enumerate() {
            let f = format!("{field}.endpoint_hosts[{j}]");
            let with_port = if h.contains(':') && !h.ends_with(']') {
                h.clone()
            } else {
                format!("{h}:{}", if issuer.scheme == "https" { 443 } else { 80 })
            };
            let a = HostPort::parse(&f, &with_port)?;
            if routes.iter().any(|r| r.address.as_ref() == Some(&a)) {
                return Err(SpecError::new(f, "is the issuer's host or an earlier one"));
            }
            let tls = (issuer.scheme == "https").then(|| {
                let ca = p
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_file.clone())
                    .unwrap_or_else(|| SYSTEM_CA_BUNDLE.to_string());
                (a.host.clone(), ca)
            });
            routes.push(ClusterInfo {
                name: format!("{cluster}_{}", cluster_safe(&a.authority())),
                address: Some(a),
                tls,
                routes: Vec::new(),
            });
        }
        let router = format!("{cluster}_router");
        let mut vhosts = Vec::new();
        for r in &routes {
            let Some(a) = &r.address else { continue };
            clusters_json.push(cluster_json(&r.name, a, r.tls.as_ref()));
            let default = if issuer.scheme == "https" { 443 } else { 80 };
            let mut domains = vec![json!(a.authority())];
            if a.port == default {
                domains.push(json!(a.host));
            }
            vhosts.push(json!({
                "name": r.name,
                "domains": domains,
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": r.name, "timeout": "15s"}}]
            }));
        }
        vhosts.push(json!({
            "name": "other",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "No endpoint of this provider is on this host.\n"}}}]
        }));
        internal_listeners.push(json!({
            "name": router,
            "internal_listener": {},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": router,
                    "route_config": {"virtual_hosts": vhosts},
                    "http_filters": [router_filter()]
                }
            }]}]
        }));
        clusters_json.push(json!({
            "name": cluster,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "envoy_internal_address": {"server_listener_name": router}
                }}}]}]
            }
        }));
        clusters.push(ClusterInfo {
            name: cluster,
            address: None,
            tls: None,
            routes,
        });
    }
    for name in spec.providers.keys() {
        if !used.contains(name) {
            return Err(SpecError::new(
                format!("providers.{name}"),
                "no app uses this provider",
            ));
        }
    }

    // The stages' documents.
    let robots = spec.robots.clone().unwrap_or_else(|| json!({}));
    let mut preauth_apps = Vec::new();
    let mut ca_apps = Map::new();
    let mut ca_policies = Vec::new();
    let mut cookie_apps = Vec::new();
    let mut edge_apps = Vec::new();
    let mut vhosts = Vec::new();
    let default_external = match (&https, &http) {
        (Some(h), _) => ("https", h.port),
        (None, Some(h)) => ("http", h.port),
        (None, None) => ("https", 443),
    };
    for (i, app) in spec.apps.iter().enumerate() {
        let at = format!("apps[{i}]");
        let mut preauth_only = Map::new();
        let mut cookie_only = Map::new();
        let mut provider_overrides = Map::new();
        for (key, value) in &app.settings {
            if APP_PREAUTH_FIELDS.contains(&key.as_str()) {
                preauth_only.insert(key.clone(), value.clone());
            } else if APP_COOKIE_FIELDS.contains(&key.as_str()) {
                cookie_only.insert(key.clone(), value.clone());
            } else if PROVIDER_FIELDS.contains(&key.as_str()) {
                provider_overrides.insert(key.clone(), value.clone());
            } else {
                return Err(SpecError::new(
                    format!("{at}.{key}"),
                    format!(
                        "unknown app field (known: id, hosts, mode, provider, sealing_keys, \
                         external_url, upstream, upstream_ca_file, connector, access, policies, {}, {}, {})",
                        APP_PREAUTH_FIELDS.join(", "),
                        APP_COOKIE_FIELDS.join(", "),
                        PROVIDER_FIELDS.join(", ")
                    ),
                ));
            }
        }

        // preauth
        let pi = preauth_apps.len();
        let pre = format!("apps[{pi}]");
        let mut entry = Map::new();
        entry.insert("id".into(), json!(app.id));
        origins.add("preauth", &format!("{pre}.id"), &format!("{at}.id"));
        entry.insert("hosts".into(), json!(app.hosts));
        origins.add("preauth", &format!("{pre}.hosts"), &format!("{at}.hosts"));
        origins.add("preauth", &pre, &at);
        if let Some(mode) = &app.mode {
            entry.insert("mode".into(), json!(mode));
            origins.add("preauth", &format!("{pre}.mode"), &format!("{at}.mode"));
        }
        if is_passthrough(app) {
            if app.provider.is_some() || app.sealing_keys.is_some() {
                return Err(SpecError::new(
                    format!("{at}.provider"),
                    "a passthrough app signs nobody in: remove `provider` and `sealing_keys`",
                ));
            }
            for (key, value) in preauth_only.iter().chain(provider_overrides.iter()) {
                entry.insert(key.clone(), value.clone());
                origins.add("preauth", &format!("{pre}.{key}"), &format!("{at}.{key}"));
            }
        } else {
            let pname = provider_of(spec, i, app)?;
            let p = spec.providers.get(&pname).ok_or_else(|| {
                SpecError::new(
                    format!("{at}.provider"),
                    format!("`{pname}` is not a key of `providers`"),
                )
            })?;
            let pf = format!("providers.{pname}");
            entry.insert("issuer".into(), json!(p.issuer));
            origins.add("preauth", &format!("{pre}.issuer"), &format!("{pf}.issuer"));
            entry.insert("cluster".into(), json!(provider_cluster(&pname, p)));
            origins.add(
                "preauth",
                &format!("{pre}.cluster"),
                &format!("{pf}.cluster"),
            );
            entry.insert("client_id".into(), json!(p.client_id));
            origins.add(
                "preauth",
                &format!("{pre}.client_id"),
                &format!("{pf}.client_id"),
            );
            if let Some(secret) = &p.client_secret {
                let field = format!("{pf}.client_secret");
                entry.insert(
                    "client_secret".into(),
                    secret_value(&field, secret, base_dir, &mut env_keys)?,
                );
                origins.add("preauth", &format!("{pre}.client_secret"), &field);
            }
            for (key, value) in &p.settings {
                entry.insert(key.clone(), value.clone());
                origins.add("preauth", &format!("{pre}.{key}"), &format!("{pf}.{key}"));
            }
            let (keys, keys_field) = match &app.sealing_keys {
                Some(k) => (k, format!("{at}.sealing_keys")),
                None => (&spec.sealing_keys, "sealing_keys".to_string()),
            };
            let mut sealing = Vec::new();
            for (k, key) in keys.iter().enumerate() {
                sealing.push(secret_value(
                    &format!("{keys_field}[{k}]"),
                    key,
                    base_dir,
                    &mut env_keys,
                )?);
            }
            entry.insert("sealing_keys".into(), Value::Array(sealing));
            origins.add("preauth", &format!("{pre}.sealing_keys"), &keys_field);
            for (key, value) in preauth_only.iter().chain(provider_overrides.iter()) {
                entry.insert(key.clone(), value.clone());
                origins.add("preauth", &format!("{pre}.{key}"), &format!("{at}.{key}"));
            }
        }
        preauth_apps.push(Value::Object(entry));

        // conditional access
        let access = app.access.clone().ok_or_else(|| {
            SpecError::new(
                format!("{at}.access"),
                "is required: who may use the app (`{open: true}` for every signed-in user, \
                 `{groups: [..]}`, `{users: [..]}`); without it every request is `not_assigned`",
            )
        })?;
        ca_apps.insert(app.id.clone(), access);
        origins.add(
            "conditional_access",
            &format!("apps.{}", app.id),
            &format!("{at}.access"),
        );
        for (k, policy) in app.policies.iter().enumerate() {
            if policy.contains_key("apps") {
                return Err(SpecError::new(
                    format!("{at}.policies[{k}].apps"),
                    "a policy under an app is that app's: put policies of several apps under \
                     `conditional_access.policies`",
                ));
            }
            let mut p = policy.clone();
            p.insert("apps".into(), json!([app.id]));
            origins.add(
                "conditional_access",
                &format!("policies[{}]", ca_policies.len()),
                &format!("{at}.policies[{k}]"),
            );
            ca_policies.push(Value::Object(p));
        }

        // upstream: direct, or through a connector group
        let (internal_url, route) =
            match (&app.upstream, &app.connector) {
                (Some(_), Some(_)) => return Err(SpecError::new(
                    format!("{at}.upstream"),
                    "give `upstream` (Envoy reaches the app) or `connector` (a connector group \
                     does), not both",
                )),
                (None, None) => {
                    return Err(SpecError::new(
                        format!("{at}.upstream"),
                        "give `upstream` (a URL Envoy reaches the app at) or `connector` (its \
                     connector group and internal URL)",
                    ))
                }
                (Some(url), None) => {
                    let field = format!("{at}.upstream");
                    let target = UrlTarget::parse(&field, url)?;
                    let name = format!("app_{}", cluster_safe(&app.id));
                    let tls = (target.scheme == "https").then(|| {
                        (
                            target.address.host.clone(),
                            app.upstream_ca_file
                                .clone()
                                .unwrap_or_else(|| SYSTEM_CA_BUNDLE.to_string()),
                        )
                    });
                    if tls.is_none() && app.upstream_ca_file.is_some() {
                        return Err(SpecError::new(
                            format!("{at}.upstream_ca_file"),
                            "the upstream is http://: no TLS would be used",
                        ));
                    }
                    clusters_json.push(cluster_json(&name, &target.address, tls.as_ref()));
                    clusters.push(ClusterInfo {
                        name: name.clone(),
                        address: Some(target.address.clone()),
                        tls,
                        routes: Vec::new(),
                    });
                    origins.add("cookie", &format!("apps[{i}].internal_url"), &field);
                    (url.clone(), direct_route(&app.id, &name))
                }
                (None, Some(conn)) => {
                    let field = format!("{at}.connector");
                    if spec.edge.is_none() {
                        return Err(SpecError::new(
                            field,
                            "an app reached through a connector needs the `edge` section",
                        ));
                    }
                    let internal = conn
                        .get("internal_url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            SpecError::new(
                                format!("{field}.internal_url"),
                                "is required: the URL the connector reaches the app at",
                            )
                        })?
                        .to_string();
                    if conn.contains_key("name") {
                        return Err(SpecError::new(
                            format!("{field}.name"),
                            "is the app's `id`: leave it out",
                        ));
                    }
                    let mut edge_app = Map::new();
                    edge_app.insert("name".into(), json!(app.id));
                    let first_host = app
                        .hosts
                        .iter()
                        .find(|h| !h.starts_with("*."))
                        .cloned()
                        .unwrap_or_default();
                    let scheme = preauth_only
                        .get("external_scheme")
                        .and_then(Value::as_str)
                        .unwrap_or("https");
                    let issuer = preauth_only
                        .get("assertion")
                        .and_then(|a| a.get("issuer"))
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("{scheme}://{first_host}"), str::to_string);
                    let jwks_url = match (&http, &https) {
                        (Some(h), _) => format!("http://{}/.auth/jwks", loopback_if_any(h)),
                        (None, Some(h)) => format!("https://{}/.auth/jwks", loopback_if_any(h)),
                        (None, None) => String::new(),
                    };
                    let mut assertion = Map::new();
                    assertion.insert("issuer".into(), json!(issuer));
                    assertion.insert("jwks_url".into(), json!(jwks_url));
                    assertion.insert("jwks_host".into(), json!(first_host));
                    edge_app.insert("assertion".into(), Value::Object(assertion));
                    for (key, value) in conn {
                        merge(&mut edge_app, key, value);
                    }
                    origins.add("edge", &format!("apps[{}]", edge_apps.len()), &field);
                    origins.add(
                        "cookie",
                        &format!("apps[{i}].internal_url"),
                        &format!("{field}.internal_url"),
                    );
                    edge_apps.push(Value::Object(edge_app));
                    (internal, edge_route(&app.id))
                }
            };

        // cookie
        let external_url = match &app.external_url {
            Some(u) => {
                origins.add(
                    "cookie",
                    &format!("apps[{i}].external_url"),
                    &format!("{at}.external_url"),
                );
                u.clone()
            }
            None => {
                let host = app
                    .hosts
                    .iter()
                    .find(|h| !h.starts_with("*."))
                    .ok_or_else(|| {
                        SpecError::new(
                            format!("{at}.external_url"),
                            "is required when every host has a wildcard",
                        )
                    })?;
                let (scheme, port) = default_external;
                let default = if scheme == "https" { 443 } else { 80 };
                if port == default {
                    format!("{scheme}://{host}")
                } else {
                    format!("{scheme}://{host}:{port}")
                }
            }
        };
        let mut c = Map::new();
        c.insert("name".into(), json!(app.id));
        c.insert("internal_url".into(), json!(internal_url));
        c.insert("external_url".into(), json!(external_url));
        for (key, value) in cookie_only {
            origins.add(
                "cookie",
                &format!("apps[{i}].{key}"),
                &format!("{at}.{key}"),
            );
            c.insert(key, value);
        }
        origins.add("cookie", &format!("apps[{i}]"), &at);
        cookie_apps.push(Value::Object(c));

        let mut domains = Vec::new();
        for h in &app.hosts {
            domains.push(json!(h));
            domains.push(json!(format!("{h}:*")));
        }
        vhosts.push(json!({"name": app.id, "domains": domains, "routes": [route]}));
    }
    vhosts.push(json!({
        "name": "other",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "No application is published on this host name.\n"}}}]
    }));

    let preauth = json!({"other_hosts": "deny", "apps": preauth_apps});
    let mut ca = spec.conditional_access.clone();
    if ca.contains_key("apps") {
        return Err(SpecError::new(
            "conditional_access.apps",
            "comes from the apps' `access`: leave it out",
        ));
    }
    for (k, p) in ca
        .get("policies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        origins.add(
            "conditional_access",
            &format!("policies[{}]", ca_policies.len()),
            &format!("conditional_access.policies[{k}]"),
        );
        ca_policies.push(p.clone());
    }
    ca.insert("apps".into(), Value::Object(ca_apps));
    if !ca_policies.is_empty() {
        ca.insert("policies".into(), Value::Array(ca_policies));
    } else {
        ca.remove("policies");
    }
    origins.add("conditional_access", "", "conditional_access");
    let conditional_access = Value::Object(ca);
    let mut cookie = spec.cookie.clone();
    if cookie.contains_key("apps") {
        return Err(SpecError::new(
            "cookie.apps",
            "comes from the apps: leave it out",
        ));
    }
    cookie.insert("apps".into(), Value::Array(cookie_apps));
    origins.add("cookie", "", "cookie");
    let cookie = Value::Object(cookie);
    origins.add("robots", "", "robots");

    // The edge.
    let edge = match &spec.edge {
        None => None,
        Some(e) => {
            if edge_apps.is_empty() {
                return Err(SpecError::new(
                    "edge",
                    "no app goes through a connector (`apps[].connector`)",
                ));
            }
            let mut config = e.config.clone();
            if config.contains_key("apps") {
                return Err(SpecError::new(
                    "edge.config.apps",
                    "comes from the apps' `connector`: leave it out",
                ));
            }
            match (&e.socket, &e.address) {
                (Some(socket), None) => {
                    let listen = config
                        .entry("listen")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .ok_or_else(|| SpecError::new("edge.config.listen", "must be a map"))?;
                    match listen.get("envoy_socket") {
                        None => {
                            listen.insert("envoy_socket".into(), json!(socket));
                        }
                        Some(s) if s.as_str() == Some(socket.as_str()) => {}
                        Some(_) => {
                            return Err(SpecError::new(
                                "edge.config.listen.envoy_socket",
                                "differs from `edge.socket`: Envoy would dial another socket than the edge listens on",
                            ))
                        }
                    }
                    clusters_json.push(edge_cluster_json(json!({"pipe": {"path": socket}})));
                }
                (None, Some(addr)) => {
                    let a = HostPort::parse("edge.address", addr)?;
                    let listen = config
                        .entry("listen")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .ok_or_else(|| SpecError::new("edge.config.listen", "must be a map"))?;
                    listen
                        .entry("insecure_envoy_h2c_tcp")
                        .or_insert_with(|| json!(addr));
                    clusters_json.push(edge_cluster_json(
                        json!({"socket_address": {"address": a.host, "port_value": a.port}}),
                    ));
                }
                _ => return Err(SpecError::new(
                    "edge",
                    "give `socket` (the edge's Unix socket for Envoy) or `address`, one of them",
                )),
            }
            clusters.push(ClusterInfo {
                name: EDGE_CLUSTER.into(),
                address: None,
                tls: None,
                routes: Vec::new(),
            });
            if !config.contains_key("groups") {
                let groups: BTreeSet<String> = edge_apps
                    .iter()
                    .filter_map(|a| a.get("group").and_then(Value::as_str).map(str::to_string))
                    .collect();
                config.insert("groups".into(), json!(groups));
            }
            config.insert("apps".into(), Value::Array(edge_apps));
            origins.add("edge", "", "edge.config");
            Some(Value::Object(config))
        }
    };
    if edge.is_none() && spec.apps.iter().any(|a| a.connector.is_some()) {
        return Err(SpecError::new(
            "edge",
            "is required: an app goes through a connector",
        ));
    }

    // Every cluster name once (a provider's `cluster` may not take an app's or the edge's).
    let mut names = BTreeSet::new();
    for c in clusters_json.iter().filter_map(|c| c["name"].as_str()) {
        if !names.insert(c) {
            let field = spec
                .providers
                .iter()
                .find(|(_, p)| p.cluster.as_deref() == Some(c))
                .map_or_else(
                    || "providers".to_string(),
                    |(n, _)| format!("providers.{n}.cluster"),
                );
            return Err(SpecError::new(
                field,
                format!("`{c}` is the name of another cluster of the render"),
            ));
        }
    }
    let env_keys: Vec<String> = env_keys.into_iter().collect();
    let modules = spec.modules.as_deref().unwrap_or(DEFAULT_MODULES);
    let stages = Stages {
        robots: &robots,
        preauth: &preauth,
        conditional_access: &conditional_access,
        cookie: &cookie,
    };
    let http_filters = match spec.layout {
        Layout::Split => split_filters(modules, &stages, &env_keys),
        Layout::AllInOne => all_in_one_filters(modules, &stages, &env_keys),
    };
    let hcm = hcm_json(vhosts, http_filters);
    let mut listeners_json = Vec::new();
    if let Some(h) = &http {
        listeners_json.push(json!({
            "name": "http",
            "address": {"socket_address": {"address": h.host, "port_value": h.port}},
            "filter_chains": [{"filters": [hcm.clone()]}]
        }));
    }
    if let (Some(h), Some(l)) = (&https, &spec.listeners.https) {
        listeners_json.push(json!({
            "name": "https",
            "address": {"socket_address": {"address": h.host, "port_value": h.port}},
            "filter_chains": [{
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {"tls_certificates": [{
                            "certificate_chain": {"filename": l.certificate},
                            "private_key": {"filename": l.private_key}
                        }]}
                    }
                },
                "filters": [hcm.clone()]
            }]
        }));
    }
    let admin = HostPort::parse("admin", spec.admin.as_deref().unwrap_or(DEFAULT_ADMIN))?;
    let has_internal = !internal_listeners.is_empty();
    listeners_json.extend(internal_listeners);
    let mut envoy = json!({
        "admin": {"address": {"socket_address": {"address": admin.host, "port_value": admin.port}}},
        "static_resources": {"listeners": listeners_json, "clusters": clusters_json}
    });
    if let (true, Value::Object(m)) = (has_internal, &mut envoy) {
        m.insert(
            "bootstrap_extensions".into(),
            json!([{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}
            }]),
        );
    }

    let rendered = Rendered {
        layout: spec.layout,
        envoy,
        robots,
        preauth,
        conditional_access,
        cookie,
        edge,
        env_keys,
        clusters,
        listeners,
    };
    check_stages(&rendered, &origins)?;
    Ok(rendered)
}

/// The stages' documents, borrowed for the filter chain.
struct Stages<'a> {
    robots: &'a Value,
    preauth: &'a Value,
    conditional_access: &'a Value,
    cookie: &'a Value,
}

fn is_passthrough(app: &App) -> bool {
    app.mode.as_deref() == Some("passthrough")
}

fn provider_of(spec: &Spec, i: usize, app: &App) -> Result<String, SpecError> {
    match &app.provider {
        Some(p) => Ok(p.clone()),
        None if spec.providers.len() == 1 => {
            Ok(spec.providers.keys().next().cloned().unwrap_or_default())
        }
        None => Err(SpecError::new(
            format!("apps[{i}].provider"),
            format!(
                "is required: {} providers are defined",
                spec.providers.len()
            ),
        )),
    }
}

fn provider_cluster(name: &str, p: &crate::spec::Provider) -> String {
    p.cluster
        .clone()
        .unwrap_or_else(|| format!("oidc_{}", cluster_safe(name)))
}

fn cluster_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn loopback_if_any(h: &HostPort) -> String {
    match h.host.as_str() {
        "0.0.0.0" => format!("127.0.0.1:{}", h.port),
        "::" => format!("[::1]:{}", h.port),
        _ => h.authority(),
    }
}

/// Sets `key` in `map`, merging maps one level deep (`assertion: {required: true}`
/// keeps the derived `issuer` and `jwks_url`).
fn merge(map: &mut Map<String, Value>, key: &str, value: &Value) {
    match (map.get_mut(key), value) {
        (Some(Value::Object(have)), Value::Object(add)) => {
            for (k, v) in add {
                have.insert(k.clone(), v.clone());
            }
        }
        _ => {
            map.insert(key.to_string(), value.clone());
        }
    }
}

/// A secret as the preauth stage reads it: inline text stays, `{file: PATH}`
/// is read now (relative to `portcullis.yaml`), `{env: NAME}` stays for the
/// filter to read from its environment, which Envoy fills from its own.
fn secret_value(
    field: &str,
    value: &Value,
    base_dir: &Path,
    env_keys: &mut BTreeSet<String>,
) -> Result<Value, SpecError> {
    let Value::Object(map) = value else {
        return Ok(value.clone());
    };
    if map.len() == 1 {
        if let Some(Value::String(path)) = map.get("file") {
            let full = base_dir.join(path);
            let text = std::fs::read_to_string(&full).map_err(|e| {
                SpecError::new(format!("{field}.file"), format!("{}: {e}", full.display()))
            })?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.file"),
                    format!("{} is empty", full.display()),
                ));
            }
            return Ok(json!(text));
        }
        if let Some(Value::String(name)) = map.get("env") {
            env_keys.insert(name.clone());
            return Ok(value.clone());
        }
    }
    Err(SpecError::new(
        field,
        "must be the value itself, `{env: NAME}` (read by the filter from its environment) or \
         `{file: PATH}` (read at render time)",
    ))
}

fn cluster_json(name: &str, address: &HostPort, tls: Option<&(String, String)>) -> Value {
    let mut c = json!({
        "name": name,
        "type": if address.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": address.host, "port_value": address.port
            }}}}]}]
        }
    });
    if let (false, Value::Object(map)) = (address.is_ip(), &mut c) {
        // A name with an IPv4 address is tried there first (hosts without IPv6 routes).
        map.insert("dns_lookup_family".into(), json!("V4_PREFERRED"));
    }
    if let (Some((sni, ca)), Value::Object(map)) = (tls, &mut c) {
        let san_type = if sni.parse::<std::net::IpAddr>().is_ok() {
            "IP_ADDRESS"
        } else {
            "DNS"
        };
        map.insert(
            "transport_socket".into(),
            json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": sni,
                    "common_tls_context": {"validation_context": {
                        "trusted_ca": {"filename": ca},
                        "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": sni}}]
                    }}
                }
            }),
        );
    }
    c
}

fn edge_cluster_json(address: Value) -> Value {
    json!({
        "name": EDGE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {
            "cluster_name": EDGE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        },
        "circuit_breakers": {"thresholds": [{"max_retries": 1024}]}
    })
}

fn edge_route(app: &str) -> Value {
    json!({
        "match": {"prefix": "/"},
        "route": {
            "cluster": EDGE_CLUSTER,
            "timeout": "60s",
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream",
                "num_retries": 8,
                "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}
            }
        },
        "metadata": {"filter_metadata": {"portcullis": {"app": app}}},
        "request_headers_to_add": [{
            "header": {"key": EDGE_APP_HEADER, "value": "%METADATA(ROUTE:portcullis:app)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
        }]
    })
}

fn direct_route(app: &str, cluster: &str) -> Value {
    json!({
        "match": {"prefix": "/"},
        "route": {"cluster": cluster, "timeout": "60s"},
        "metadata": {"filter_metadata": {"portcullis": {"app": app}}}
    })
}

fn wasm_filter(filter: &str, id: &str, file: &str, config: &Value, env_keys: &[String]) -> Value {
    let mut vm = json!({
        "vm_id": id,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": file}}
    });
    if !env_keys.is_empty() {
        if let Value::Object(m) = &mut vm {
            m.insert(
                "environment_variables".into(),
                json!({"host_env_keys": env_keys}),
            );
        }
    }
    json!({
        "name": filter,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": id,
                "root_id": id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": document_text(config)
                },
                "vm_config": vm,
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// A stage's document as the filter receives it.
pub fn document_text(config: &Value) -> String {
    serde_json::to_string_pretty(config).unwrap_or_default()
}

fn router_filter() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    }})
}

fn split_filters(modules: &str, s: &Stages<'_>, env_keys: &[String]) -> Vec<Value> {
    let m = modules.trim_end_matches('/');
    vec![
        wasm_filter(
            "portcullis.robots",
            "portcullis_robots",
            &format!("{m}/portcullis_robots.wasm"),
            s.robots,
            &[],
        ),
        wasm_filter(
            "portcullis.preauth",
            "portcullis_preauth",
            &format!("{m}/portcullis_preauth.wasm"),
            s.preauth,
            env_keys,
        ),
        wasm_filter(
            "portcullis.conditional_access",
            "portcullis_conditional_access",
            &format!("{m}/portcullis_conditional_access.wasm"),
            s.conditional_access,
            &[],
        ),
        wasm_filter(
            "portcullis.cookie",
            "portcullis_cookie",
            &format!("{m}/portcullis_cookie.wasm"),
            s.cookie,
            &[],
        ),
        router_filter(),
    ]
}

/// The all-in-one document: a section per stage, each in that stage's own schema.
pub fn all_in_one_document(r: &Rendered) -> Value {
    json!({
        "robots": r.robots,
        "preauth": r.preauth,
        "conditional_access": r.conditional_access,
        "cookie": r.cookie,
    })
}

fn all_in_one_filters(modules: &str, s: &Stages<'_>, env_keys: &[String]) -> Vec<Value> {
    let m = modules.trim_end_matches('/');
    let doc = json!({
        "robots": s.robots,
        "preauth": s.preauth,
        "conditional_access": s.conditional_access,
        "cookie": s.cookie,
    });
    vec![
        wasm_filter(
            "portcullis",
            "portcullis",
            &format!("{m}/portcullis.wasm"),
            &doc,
            env_keys,
        ),
        router_filter(),
    ]
}

fn hcm_json(vhosts: Vec<Value>, http_filters: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "strip_trailing_host_dot": true,
            "stat_prefix": "ingress",
            "local_reply_config": {"mappers": [
                {
                    "filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 431, "runtime_key": "portcullis.local_reply.431"}}}},
                    "body_format_override": {"json_format": {
                        "error": "request_headers_too_large",
                        "message": "The request's headers are larger than this proxy accepts.",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "request_id": "%REQ(X-REQUEST-ID)%"
                    }}
                },
                {
                    "filter": {"response_flag_filter": {}},
                    "body_format_override": {"json_format": {
                        "error": "envoy:%RESPONSE_FLAGS%",
                        "message": "The proxy could not complete the request.",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "request_id": "%REQ(X-REQUEST-ID)%"
                    }}
                }
            ]},
            "use_remote_address": true,
            "normalize_path": true,
            "merge_slashes": true,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "route_config": {"virtual_hosts": vhosts},
            "http_filters": http_filters
        }
    })
}

/// Runs each rendered document through the parser its stage (and the edge)
/// runs at load, and names the `portcullis.yaml` field behind a refusal.
fn check_stages(r: &Rendered, origins: &Origins) -> Result<(), SpecError> {
    let bytes = |v: &Value| document_text(v).into_bytes();
    let map = |doc: &str, e: ConfigError| origins.translate(doc, &e.field, &e.message);
    RobotsConfig::from_json(&bytes(&r.robots)).map_err(|e| map("robots", e))?;
    PreauthConfig::from_json_with_env(&bytes(&r.preauth), &|name| Some(render_time_env(name)))
        .map_err(|e| map("preauth", e))?;
    PolicyConfig::from_json(&bytes(&r.conditional_access))
        .map_err(|e| map("conditional_access", e))?;
    CookieFilterConfig::from_json(&bytes(&r.cookie)).map_err(|e| map("cookie", e))?;
    // The all-in-one module's own parser on its one document (when every variable it reads
    // is set here: the sections were judged above either way).
    if r.layout == Layout::AllInOne && r.env_keys.iter().all(|k| std::env::var_os(k).is_some()) {
        portcullis_core::pipeline::PipelineConfig::from_json(&bytes(&all_in_one_document(r)))
            .map_err(|e| {
                let (section, field) = e.field.split_once('.').unwrap_or((e.field.as_str(), ""));
                origins.translate(section, field, &e.message)
            })?;
    }
    if let Some(edge) = &r.edge {
        let file = portcullis_connector::config::EdgeConfigFile::parse(&bytes(edge))
            .map_err(|e| origins.translate("edge", &e.field, &e.message))?;
        file.validate()
            .map_err(|e| origins.translate("edge", &e.field, &e.message))?;
    }
    Ok(())
}

/// What a variable the filter will read from its environment stands for
/// while rendering: its value here when it is set (so a wrong one is refused
/// now), else a well-formed stand-in of its own (a 32-byte key, in base64, that
/// serves as a secret too) so that the rest of the document is judged. Where
/// Envoy runs, the filter refuses the configuration, naming the variable, if
/// it is unset there.
pub fn render_time_env(name: &str) -> String {
    use base64::Engine as _;
    std::env::var(name).unwrap_or_else(|_| {
        let digest = sha2::Sha256::digest(format!("portcullis render stand-in {name}"));
        base64::engine::general_purpose::STANDARD.encode(digest)
    })
}
