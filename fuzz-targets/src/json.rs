//! Structure-aware JSON for the configuration targets: objects whose keys
//! come from the field names of every configuration schema, and values from
//! a list of the strings those fields take (URLs, keys, paths, CIDRs, enum
//! names), so that inputs get past the syntax and deep into validation.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// Field names of the filter and connector configurations.
pub const FIELDS: &[&str] = &[
    "acr",
    "address",
    "admin",
    "admin_groups",
    "admin_roles",
    "advertised_tunnel_addresses",
    "algorithms",
    "all",
    "allow_star",
    "allowed_algorithms",
    "amr",
    "app_header",
    "apps",
    "assignment",
    "assignments",
    "audience",
    "authorization_endpoint",
    "backend_ca_file",
    "backend_ca_pem",
    "backoff_initial",
    "backoff_initial_ms",
    "backoff_max",
    "backoff_max_ms",
    "bearer",
    "bearer_audience",
    "block",
    "body",
    "by_name",
    "cidrs",
    "claim_headers",
    "claims",
    "client_address",
    "client_auth",
    "client_cert_days",
    "client_id",
    "client_secret",
    "client_types",
    "clock_skew_seconds",
    "cluster",
    "conditions",
    "config_refresh",
    "config_refresh_seconds",
    "content_types",
    "cookie",
    "countries",
    "country_header",
    "default_app",
    "discovery",
    "domain",
    "drain",
    "drain_seconds",
    "dynamic",
    "edges",
    "enabled",
    "end_session_endpoint",
    "endpoints",
    "everyone",
    "exclude",
    "external_scheme",
    "external_url",
    "field",
    "grant",
    "group",
    "groups",
    "groups_claim",
    "hosts",
    "http_only",
    "id",
    "include",
    "internal_url",
    "issuer",
    "jwks_ca_file",
    "jwks_file",
    "jwks_refresh_seconds",
    "jwks_refresh_secs",
    "jwks_uri",
    "jwks_url",
    "keepalive",
    "keepalive_seconds",
    "leeway_seconds",
    "listen",
    "local",
    "local_listen",
    "locations",
    "map_path",
    "mapping",
    "matcher",
    "max_body_bytes",
    "max_concurrent_streams",
    "max_session_seconds",
    "max_session_secs",
    "methods",
    "metrics",
    "metrics_listen",
    "mfa",
    "mfa_acr",
    "mfa_amr",
    "mode",
    "name",
    "named",
    "named_locations",
    "names",
    "oidc",
    "on_invalid",
    "operator",
    "other_apps",
    "other_hosts",
    "paths",
    "persistent",
    "platforms",
    "policies",
    "policy_claims",
    "policy_groups",
    "post_logout_redirect_uri",
    "prefixes",
    "preserve_host",
    "proxy_cookies",
    "raw",
    "registration",
    "registration_listen",
    "renew_after",
    "renew_after_seconds",
    "renew_check",
    "renew_check_seconds",
    "request_identity_encoding",
    "require",
    "risk",
    "roles_claim",
    "same_site",
    "scopes",
    "sealer",
    "sealing_keys",
    "secure",
    "server_name",
    "server_names",
    "session",
    "set_cookie",
    "sign_in_claim",
    "sign_in_frequency",
    "sign_in_risk",
    "sign_in_risk_claim",
    "skew_secs",
    "state",
    "state_dir",
    "step_up",
    "step_up_acr",
    "step_up_cookie",
    "step_up_secure",
    "step_up_ttl",
    "tenant",
    "tenant_claim",
    "timeout_ms",
    "token_endpoint",
    "token_timeout_ms",
    "translate_headers",
    "trusted",
    "trusted_hops",
    "trusted_proxies",
    "ttl",
    "tunnel",
    "tunnel_listen",
    "tunnels_per_edge",
    "unauthenticated_paths",
    "user_claim",
    "user_risk",
    "user_risk_claim",
    "users",
    "values",
    "with_body",
    "x_robots_tag",
    "x_robots_tag_value",
    "xff_trusted_hops",
];

/// Values those fields take.
pub const STRINGS: &[&str] = &[
    "",
    "hr",
    "hr.localhost",
    "*.localhost",
    "https://idp.test",
    "http://127.0.0.1:9000",
    "https://hr.localhost/",
    "http://hr.internal:8080/app",
    "https://[::1]:8443/x",
    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
    "/public",
    "/",
    "//evil",
    "/.auth/login",
    "10.0.0.0/8",
    "::1/128",
    "0.0.0.0/0",
    "127.0.0.1:0",
    "RS256",
    "ES256",
    "EdDSA",
    "HS256",
    "none",
    "authenticate",
    "passthrough",
    "Lax",
    "Strict",
    "None",
    "rewrite",
    "drop",
    "client_secret_basic",
    "client_secret_post",
    "enabled",
    "disabled",
    "report_only",
    "block",
    "grant",
    "allow",
    "deny",
    "mfa",
    "pwd",
    "staff",
    "admins",
    "X-Forwarded-User",
    "x-portcullis-identity",
    "bad header\r\n",
    "text/html",
    "urn:portcullis:mfa",
    "sub",
    "email",
    "groups",
    "FR",
    "low",
    "high",
    "browser",
    "mobile",
    "windows",
    "macos",
    "idp",
    "/tmp/x.pem",
    "sha256//AAAA",
    "connector",
    "default",
];

/// A JSON value at most `depth` levels deep.
pub fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choice = if depth == 0 {
        u.int_in_range(0..=5)?
    } else {
        u.int_in_range(0..=7)?
    };
    Ok(match choice {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(u.arbitrary::<u32>()?)),
        3 => Value::Number(Number::from(u.arbitrary::<i64>()?)),
        4 => Value::String(u.arbitrary::<String>()?),
        5 => Value::String((*u.choose(STRINGS)?).to_string()),
        6 => {
            let n = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(u, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

/// A JSON object whose keys are (mostly) schema field names.
pub fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let n = u.int_in_range(0..=8)?;
    let mut map = Map::new();
    for _ in 0..n {
        let key = if u.ratio(9, 10)? {
            (*u.choose(FIELDS)?).to_string()
        } else {
            u.arbitrary::<String>()?
        };
        map.insert(key, value(u, depth)?);
    }
    Ok(map)
}

/// A configuration document: an object, usually with an `apps` list of objects.
pub fn document(data: &[u8]) -> Option<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let mut doc = object(&mut u, 3).ok()?;
    if u.ratio(3, 4).ok()? {
        let n = u.int_in_range(0..=3).ok()?;
        let mut apps = Vec::new();
        for _ in 0..n {
            apps.push(Value::Object(object(&mut u, 3).ok()?));
        }
        doc.insert("apps".into(), Value::Array(apps));
    }
    serde_json::to_vec(&Value::Object(doc)).ok()
}
