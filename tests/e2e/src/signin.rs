//! Signing in through the demo provider without a browser: the app's own
//! redirect to the provider, the provider's login form (and one-time code
//! page when asked), the callback through Envoy, and the session cookie the
//! preauth filter sets. Plain HTTP/1.1 requests, one cookie jar per origin.

use crate::envoy::{http_request, HttpResponse};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;

/// Cookies by name (attributes ignored; an empty or expired value removes one).
#[derive(Debug, Default, Clone)]
pub struct CookieJar(BTreeMap<String, String>);

impl CookieJar {
    /// Takes the `Set-Cookie` headers of a response.
    pub fn store(&mut self, response: &HttpResponse) {
        for line in response.headers_named("set-cookie") {
            let pair = line.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let expired = line
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.trim().is_empty() {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// The `Cookie` header value.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether a cookie of that name is held.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// `http://host[:port]/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// The `action` of the form with id `form_id` in a provider page.
fn form_action(html: &str, form_id: &str) -> Option<String> {
    let at = html.find(&format!("<form id=\"{form_id}\""))?;
    let rest = &html[at..];
    let start = rest.find("action=\"")? + "action=\"".len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].replace("&amp;", "&"))
}

/// Signs `user` in at the app Envoy serves on `envoy` (`127.0.0.1:port`)
/// for the host `host` (`admin.localhost:port`), through the provider's
/// pages, and returns the app's cookie jar holding the session.
/// `otp` answers the one-time code page if the provider shows one.
pub fn sign_in(
    envoy: &str,
    host: &str,
    user: &str,
    password: &str,
    otp: Option<&str>,
) -> Result<CookieJar> {
    let mut app = CookieJar::default();
    let mut idp = CookieJar::default();
    let html = [("Accept", "text/html")];
    let r = http_request(envoy, "GET", "/", &[("Host", host), html[0]], b"")?;
    app.store(&r);
    if r.status != 302 {
        bail!("the app did not send the browser to sign in: {}", r.status);
    }
    let mut next = r
        .header("location")
        .context("no Location to the provider")?
        .to_string();
    let app_origin = format!("http://{host}");
    let mut form: Option<(String, String)> = None;
    for _ in 0..20 {
        if let Some(path) = next.strip_prefix(&app_origin) {
            // Back at the app: the callback, through Envoy.
            let cookie = app.header();
            let r = http_request(
                envoy,
                "GET",
                path,
                &[("Host", host), html[0], ("Cookie", &cookie)],
                b"",
            )?;
            app.store(&r);
            if r.status != 302 || !app.has("__Host-portcullis") {
                bail!(
                    "the callback did not set a session ({}): {}",
                    r.status,
                    r.text()
                );
            }
            return Ok(app);
        }
        let (addr, path) = split_url(&next)?;
        let cookie = idp.header();
        let r = match form.take() {
            Some((action, body)) => http_request(
                &addr,
                "POST",
                &action,
                &[
                    ("Cookie", &cookie),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                body.as_bytes(),
            )?,
            None => http_request(&addr, "GET", &path, &[("Cookie", &cookie), html[0]], b"")?,
        };
        idp.store(&r);
        if (300..400).contains(&r.status) {
            let location = r.header("location").context("redirect without Location")?;
            next = if location.starts_with('/') {
                format!("http://{addr}{location}")
            } else {
                location.to_string()
            };
            continue;
        }
        let page = r.text();
        if let Some(action) = form_action(&page, "login-form") {
            form = Some((action, format!("username={user}&password={password}")));
        } else if let Some(action) = form_action(&page, "otp-form") {
            let code = otp.context("the provider asks for a one-time code")?;
            form = Some((action, format!("otp={code}")));
        } else {
            bail!("unexpected provider page ({}): {}", r.status, page);
        }
        // The form posts to the provider's own origin.
        next = format!("http://{addr}/");
    }
    bail!("the sign-in did not finish")
}
