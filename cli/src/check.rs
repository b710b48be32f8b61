//! `portcullis check`: the provider mistakes that would otherwise surface
//! as a hang and `keys_unavailable` after the first user signs in. It reads
//! the rendered preauth configuration with the filter's own parser, fetches
//! the discovery document and the JWKS through the address and TLS settings
//! of the cluster the filter calls, judges them with the filter's own
//! parsers, and prints what to register at the provider.

use crate::render::{ClusterInfo, Rendered, UrlTarget};
use portcullis_core::oidc::config::{Endpoints, OidcSettings, PreauthConfig, ProviderMetadata};
use portcullis_core::oidc::jwks::{parse_discovery, KeySet};
use portcullis_core::oidc::login;
use portcullis_core::oidc::url::HttpUrl;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

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

/// Fetches `url` through `cluster` as the filter's call does: to the
/// cluster's address, with TLS when the cluster has it, `Host` the URL's.
async fn fetch(url: &HttpUrl, cluster: &ClusterInfo) -> Result<Vec<u8>, String> {
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
    let (scheme, ca) = match &cluster.tls {
        Some((sni, ca)) => ("https", Some((sni.clone(), ca.clone()))),
        None => ("http", None),
    };
    let connect = match &ca {
        // The server name is the one Envoy sends and verifies.
        Some((sni, _)) => format!("{sni}:{}", address.port),
        None => address.authority(),
    };
    let target = format!("{scheme}://{connect}{}", url.path_and_query);
    portcullis_connector::backend::fetch_url_as(
        &target,
        ca.as_ref().map(|(_, f)| Path::new(f.as_str())),
        Some(&url.authority),
    )
    .await
    .map_err(|e| e.to_string())
}

fn url_text(u: &HttpUrl) -> String {
    format!("{}://{}{}", u.scheme, u.authority, u.path_and_query)
}

/// Checks every provider the rendered apps use, and lists the URIs to register.
pub async fn check(r: &Rendered) -> Report {
    let mut report = Report::default();
    let text = crate::render::document_text(&r.preauth);
    let config = match PreauthConfig::from_json(text.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            report.fail(format!("the preauth configuration does not load: {e}"));
            return report;
        }
    };
    let mut seen = BTreeSet::new();
    for app in &config.apps {
        let Some(s) = &app.oidc else {
            report.note(format!("app `{}`: passthrough, no provider", app.id));
            continue;
        };
        if seen.insert((s.issuer.clone(), s.cluster.clone())) {
            check_provider(&mut report, r, s).await;
        }
    }
    for app in &config.apps {
        if let Some(s) = &app.oidc {
            uris(&mut report, r, &app.id, &app.hosts, s);
        }
    }
    report
}

async fn check_provider(report: &mut Report, r: &Rendered, s: &OidcSettings) {
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
