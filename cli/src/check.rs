//! `portcullis check`: the provider mistakes that would otherwise surface
//! as a hang and `keys_unavailable` after the first user signs in. It reads
//! the rendered preauth configuration with the filter's own parser, fetches
//! the discovery document and the JWKS through the address and TLS settings
//! of the cluster the filter calls, judges them with the filter's own
//! parsers, and prints what to register at the provider.

use crate::render::{ClusterInfo, Rendered, UrlTarget};
use portcullis_core::oidc::config::{
    ClientAuth, Endpoints, OidcSettings, PreauthConfig, ProviderMetadata,
};
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::login;
use portcullis_core::oidc::url::HttpUrl;
use portcullis_core::oidc::HttpCall;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Checked and right.
    Ok(String),
    /// Wrong: the filter would fail.
    Error(String),
    /// To do at the provider (register a URI), or for information.
    Note(String),
}

/// What `check` found, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    fn pass(&mut self, s: impl Into<String>) {
        self.findings.push(Finding::Ok(s.into()));
    }
    fn fail(&mut self, s: impl Into<String>) {
        self.findings.push(Finding::Error(s.into()));
    }
    fn note(&mut self, s: impl Into<String>) {
        self.findings.push(Finding::Note(s.into()));
    }

    /// No errors.
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| matches!(f, Finding::Error(_)))
    }

    /// The errors' texts.
    pub fn errors(&self) -> Vec<&str> {
        self.findings
            .iter()
            .filter_map(|f| match f {
                Finding::Error(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The report as printed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = match f {
                Finding::Ok(s) => writeln!(out, "ok     {s}"),
                Finding::Error(s) => writeln!(out, "ERROR  {s}"),
                Finding::Note(s) => writeln!(out, "       {s}"),
            };
        }
        let errors = self.errors().len();
        let _ = if errors == 0 {
            writeln!(out, "check passed")
        } else {
            writeln!(out, "check failed: {errors} error(s)")
        };
        out
    }
}

/// Whether `url`, called by the filter through `cluster`, reaches the host
/// it names with the right transport: `None` when it does, else why not.
pub fn endpoint_mismatch(name: &str, url: &HttpUrl, cluster: &ClusterInfo) -> Option<String> {
    let full = format!("{}://{}{}", url.scheme, url.authority, url.path_and_query);
    let target = match UrlTarget::parse(name, &full) {
        Ok(t) => t,
        Err(e) => return Some(e.to_string()),
    };
    if !cluster.routes.is_empty() {
        return match route_for(cluster, url) {
            Some(r) => endpoint_mismatch(name, url, r),
            None => Some(format!(
                "{name} {full} is on {}, a host the provider's cluster `{}` routes nowhere: add \
                 it to the provider's `endpoint_hosts`",
                target.address.authority(),
                cluster.name
            )),
        };
    }
    let Some(address) = &cluster.address else {
        return Some(format!(
            "{name} {full}: cluster `{}` is not a provider cluster",
            cluster.name
        ));
    };
    let served = match &cluster.tls {
        Some((sni, _)) => sni.as_str(),
        None => address.host.as_str(),
    };
    if target.address.host != served && target.address.host != address.host
        || target.address.port != address.port
    {
        return Some(format!(
            "{name} {full} is on {}, but the filter sends it to cluster `{}` ({}{}): give the \
             provider's `address` or use one host for discovery, token and keys",
            target.address.authority(),
            cluster.name,
            address.authority(),
            cluster
                .tls
                .as_ref()
                .map_or_else(String::new, |(sni, _)| format!(", TLS name {sni}"))
        ));
    }
    match (target.scheme.as_str(), &cluster.tls) {
        ("https", None) => Some(format!(
            "{name} {full} is https, but cluster `{}` has no TLS (its issuer is http://): the \
             filter's call would speak plain HTTP to a TLS port",
            cluster.name
        )),
        ("http", Some(_)) => Some(format!(
            "{name} {full} is plain http, but cluster `{}` speaks TLS",
            cluster.name
        )),
        _ => None,
    }
}

/// The cluster a routing provider cluster sends a call for `url` to (by its host and port).
pub fn route_for<'a>(cluster: &'a ClusterInfo, url: &HttpUrl) -> Option<&'a ClusterInfo> {
    let full = format!("{}://{}{}", url.scheme, url.authority, url.path_and_query);
    let target = UrlTarget::parse("url", &full).ok()?;
    cluster
        .routes
        .iter()
        .find(|r| r.address.as_ref() == Some(&target.address))
}

/// Sends a call for `url` through `cluster` as Envoy would: to the cluster's
/// address (the cluster of the URL's host for a routing cluster), with TLS
/// when the cluster has it, `Host` the URL's; `call` gives the filter's own
/// method, headers and body (a GET without). Returns the status and the body
/// (at most 1 MiB).
async fn send(
    url: &HttpUrl,
    cluster: &ClusterInfo,
    call: Option<&HttpCall>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::BodyExt as _;
    use portcullis_connector::backend::Backend;
    use portcullis_connector::config::AppSettings;
    let cluster = if cluster.routes.is_empty() {
        cluster
    } else {
        route_for(cluster, url).ok_or_else(|| {
            format!(
                "cluster `{}` routes no call to {}",
                cluster.name, url.authority
            )
        })?
    };
    let Some(address) = &cluster.address else {
        return Err(format!("cluster `{}` has no address", cluster.name));
    };
    let (internal_url, ca_pem) = match &cluster.tls {
        // The server name is the one Envoy sends and verifies.
        Some((sni, ca)) => (
            format!("https://{sni}:{}", address.port),
            Some(std::fs::read_to_string(ca).map_err(|e| format!("{ca}: {e}"))?),
        ),
        None => (format!("http://{}", address.authority()), None),
    };
    let backend = Backend::new(AppSettings {
        name: "portcullis-check".into(),
        group: String::new(),
        internal_url,
        timeout_ms: 10_000,
        backend_ca_pem: ca_pem,
        spki_sha256: Vec::new(),
        preserve_host: false,
    })
    .map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .uri(url.path_and_query.as_str())
        .header(http::header::HOST, url.authority.as_str());
    let body = match call {
        None => {
            req = req
                .method("GET")
                .header(http::header::ACCEPT, "application/json");
            Vec::new()
        }
        Some(call) => {
            for (name, value) in &call.headers {
                match name.as_str() {
                    ":method" => req = req.method(value.as_str()),
                    n if n.starts_with(':') => {}
                    n => req = req.header(n, value.as_str()),
                }
            }
            call.body.clone()
        }
    };
    let req = req
        .body(portcullis_connector::body::full(body))
        .map_err(|e| e.to_string())?;
    let resp = backend.send(req, None).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}

/// A GET of `url` through `cluster` that must succeed.
async fn fetch(url: &HttpUrl, cluster: &ClusterInfo) -> Result<Vec<u8>, String> {
    match send(url, cluster, None).await? {
        (status, body) if (200..300).contains(&status) => Ok(body),
        (status, _) => Err(format!("status {status}")),
    }
}

/// Whether the token endpoint accepts the client, asked the way the filter
/// asks, with a code that cannot be valid: `invalid_grant` means the client
/// authenticated (only the code was refused), `invalid_client` that the
/// secret, the id or the method is wrong.
async fn check_client(
    report: &mut Report,
    s: &OidcSettings,
    m: &ProviderMetadata,
    cluster: &ClusterInfo,
    redirect: &str,
) {
    let call = portcullis_core::oidc::token::token_request(
        s,
        m,
        "portcullis-check-made-up-code",
        "portcullis-check-verifier-000000000000000000000000000",
        redirect,
    );
    let url = url_text(&m.token_endpoint);
    match send(&m.token_endpoint, cluster, Some(&call)).await {
        Err(e) => report.fail(format!("token_endpoint {url}: {e}")),
        Ok((status, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
            let description = v
                .get("error_description")
                .and_then(|e| e.as_str())
                .map_or_else(String::new, |d| format!(" ({d})"));
            match error {
                "invalid_grant" => report.pass(format!(
                    "token_endpoint {url} authenticates client `{}` ({}: a made-up code was \
                     refused with invalid_grant, as it must be)",
                    s.client_id,
                    client_auth_name(s.client_auth)
                )),
                "invalid_client" | "unauthorized_client" => report.fail(format!(
                    "token_endpoint {url} refuses client `{}` with {error}{description}: check \
                     client_id, client_secret and client_auth ({})",
                    s.client_id,
                    client_auth_name(s.client_auth)
                )),
                _ => report.note(format!(
                    "token_endpoint {url} answered {status} `{error}`{description} to a made-up \
                     code: the client could not be checked"
                )),
            }
        }
    }
}

fn client_auth_name(a: ClientAuth) -> &'static str {
    match a {
        ClientAuth::ClientSecretBasic => "client_secret_basic",
        ClientAuth::ClientSecretPost => "client_secret_post",
        ClientAuth::None => "public client",
    }
}

fn url_text(u: &HttpUrl) -> String {
    format!("{}://{}{}", u.scheme, u.authority, u.path_and_query)
}

/// Checks every provider the rendered apps use, and lists the URIs to register.
pub async fn check(r: &Rendered) -> Report {
    let mut report = Report::default();
    let text = crate::render::document_text(&r.preauth);
    // Variables unset here stand in, and the secret they hold is not tried.
    let unset: Vec<&String> = r
        .env_keys
        .iter()
        .filter(|k| std::env::var_os(k).is_none())
        .collect();
    for k in &unset {
        report.note(format!(
            "{k} is not set here: what it holds is not checked (Envoy's filter refuses to load \
             without it)"
        ));
    }
    let config = match PreauthConfig::from_json_with_env(text.as_bytes(), &|name| {
        Some(crate::render::render_time_env(name))
    }) {
        Ok(c) => c,
        Err(e) => {
            report.fail(format!("the preauth configuration does not load: {e}"));
            return report;
        }
    };
    let mut seen = BTreeSet::new();
    for (i, app) in config.apps.iter().enumerate() {
        let Some(s) = &app.oidc else {
            report.note(format!("app `{}`: passthrough, no provider", app.id));
            continue;
        };
        let secret_unset = r.preauth["apps"][i]["client_secret"]["env"]
            .as_str()
            .is_some_and(|n| unset.iter().any(|k| k.as_str() == n));
        let redirect = origins(r, &app.hosts, s)
            .first()
            .and_then(|(origin, authority)| {
                let scheme = origin.split("://").next().unwrap_or("https");
                login::redirect_uri(s, authority, Some(scheme))
            })
            .unwrap_or_default();
        if seen.insert((s.issuer.clone(), s.cluster.clone(), s.client_id.clone())) {
            let client = (!secret_unset).then_some(redirect.as_str());
            check_provider(&mut report, r, s, client).await;
        }
    }
    for app in &config.apps {
        if let Some(s) = &app.oidc {
            uris(&mut report, r, &app.id, &app.hosts, s);
        }
    }
    report
}

async fn check_provider(report: &mut Report, r: &Rendered, s: &OidcSettings, client: Option<&str>) {
    let Some(cluster) = r.clusters.iter().find(|c| c.name == s.cluster) else {
        report.fail(format!(
            "provider {}: cluster `{}` is not defined by the render",
            s.issuer, s.cluster
        ));
        return;
    };
    let metadata: ProviderMetadata = match &s.endpoints {
        Endpoints::Explicit(m) => {
            report.pass(format!(
                "provider {}: endpoints given, no discovery",
                s.issuer
            ));
            (**m).clone()
        }
        Endpoints::Discover(url) => {
            if let Some(why) = endpoint_mismatch("discovery", url, cluster) {
                report.fail(why);
                return;
            }
            let body = match fetch(url, cluster).await {
                Ok(b) => b,
                Err(e) => {
                    report.fail(format!(
                        "discovery {} through cluster `{}`: {e}",
                        url_text(url),
                        cluster.name
                    ));
                    return;
                }
            };
            match parse_discovery(&body, &s.issuer) {
                Ok(m) => {
                    report.pass(format!(
                        "discovery {}: issuer is exactly `{}`",
                        url_text(url),
                        s.issuer
                    ));
                    m
                }
                Err(e) => {
                    let named = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("issuer").and_then(|i| i.as_str()).map(str::to_string));
                    match named {
                        Some(n)
                            if n != s.issuer
                                && n.trim_end_matches('/') == s.issuer.trim_end_matches('/') =>
                        {
                            report.fail(format!(
                                "issuer mismatch: the provider's issuer is `{n}`, the configured \
                                 one `{}`: they differ only by a trailing slash, and the filter \
                                 compares them exactly (every token would be refused); set the \
                                 provider's `issuer` to `{n}`",
                                s.issuer
                            ));
                        }
                        Some(n) if n != s.issuer => report.fail(format!(
                            "issuer mismatch: the provider's issuer is `{n}`, the configured one \
                             `{}` (compared exactly)",
                            s.issuer
                        )),
                        _ => report.fail(format!("discovery {}: {e}", url_text(url))),
                    }
                    return;
                }
            }
        }
    };
    let mut through_cluster = true;
    for (name, url) in [
        ("token_endpoint", &metadata.token_endpoint),
        ("jwks_uri", &metadata.jwks_uri),
    ] {
        match endpoint_mismatch(name, url, cluster) {
            None => report.pass(format!(
                "{name} {} is reached through cluster `{}`",
                url_text(url),
                cluster.name
            )),
            Some(why) => {
                through_cluster = false;
                report.fail(why);
            }
        }
    }
    report.note(format!(
        "authorization_endpoint {} (opened by the browser)",
        url_text(&metadata.authorization_endpoint)
    ));
    if let Some(e) = &metadata.end_session_endpoint {
        report.note(format!(
            "end_session_endpoint {} (opened by the browser)",
            url_text(e)
        ));
    }
    if !through_cluster {
        return;
    }
    match fetch(&metadata.jwks_uri, cluster).await {
        Err(e) => report.fail(format!(
            "jwks_uri {} through cluster `{}`: {e}",
            url_text(&metadata.jwks_uri),
            cluster.name
        )),
        Ok(body) => match KeySet::parse(&body) {
            Err(e) => report.fail(format!("jwks_uri {}: {e}", url_text(&metadata.jwks_uri))),
            Ok(keys) => {
                let usable: Vec<&str> = s
                    .algorithms
                    .iter()
                    .filter(|a| keys.keys.iter().any(|k| k.key.supports(**a)))
                    .map(|a| a.name())
                    .collect();
                if usable.is_empty() {
                    report.fail(format!(
                        "jwks_uri {}: none of its {} key(s) verifies an allowed algorithm ({})",
                        url_text(&metadata.jwks_uri),
                        keys.keys.len(),
                        s.algorithms
                            .iter()
                            .map(|a| a.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                } else {
                    report.pass(format!(
                        "jwks_uri {}: {} key(s), for {}",
                        url_text(&metadata.jwks_uri),
                        keys.keys.len(),
                        usable.join(", ")
                    ));
                }
            }
        },
    }
    match client {
        Some(redirect) => check_client(report, s, &metadata, cluster, redirect).await,
        None => report.note(format!(
            "client `{}`: its secret comes from a variable not set here, so the token endpoint \
             was not asked",
            s.client_id
        )),
    }
}

/// The origins users reach the app at: each host without a wildcard on each
/// listener, as the browser writes them (no port for 80 and 443).
fn origins(r: &Rendered, hosts: &[String], s: &OidcSettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for host in hosts.iter().filter(|h| !h.starts_with("*.")) {
        for (scheme, port) in &r.listeners {
            let default = if scheme == "https" { 443 } else { 80 };
            let authority = if *port == default {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            if let Some(origin) = login::external_origin(s, &authority, Some(scheme)) {
                if !out.iter().any(|(o, _)| *o == origin) {
                    out.push((origin, authority));
                }
            }
        }
    }
    out
}

fn uris(report: &mut Report, r: &Rendered, id: &str, hosts: &[String], s: &OidcSettings) {
    report.note(format!(
        "app `{id}`: register at the provider for client `{}`:",
        s.client_id
    ));
    for (origin, authority) in origins(r, hosts, s) {
        let scheme = origin.split("://").next().unwrap_or("https");
        if let Some(uri) = login::redirect_uri(s, &authority, Some(scheme)) {
            report.note(format!("  redirect URI     {uri}"));
        }
        match &s.post_logout_redirect_uri {
            Some(p) if p.starts_with('/') => {
                report.note(format!("  post-logout URI  {origin}{p}"));
            }
            Some(p) => report.note(format!("  post-logout URI  {p}")),
            None => report.note(format!(
                "  post-logout URI  none (set `post_logout_redirect_uri: /` for the provider to \
                 send users back to {origin}/)"
            )),
        }
    }
    if hosts.iter().any(|h| h.starts_with("*.")) {
        report.note("  and the same for each name the wildcard hosts stand for");
    }
}
