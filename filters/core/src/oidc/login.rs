//! Starting a login: `state`, `nonce`, PKCE, the authorization URL and the
//! sealed login-state cookie bound to `state`.

use super::config::{OidcSettings, ProviderMetadata, LOGIN_STATE_TTL_SECS};
use crate::seal::SEAL_RANDOM_LEN;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Random bytes a login needs: state (16), nonce (16), PKCE verifier (32), seal nonce and salt (44).
pub const LOGIN_RANDOM_LEN: usize = 16 + 16 + 32 + SEAL_RANDOM_LEN;

/// What the login-state cookie carries across the round trip to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter.
    #[serde(rename = "s")]
    pub state: String,
    /// The `nonce` parameter.
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// The validated relative URL to return to.
    #[serde(rename = "r")]
    pub return_to: String,
    /// `acr_values` asked for (step-up), if any.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// `max_age` asked for (step-up), if any.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// When the login started, Unix seconds.
    #[serde(rename = "t")]
    pub issued_at: u64,
}

impl LoginState {
    /// A fresh login from `random` (at least [`LOGIN_RANDOM_LEN`] bytes; only the
    /// first 64 are used here).
    pub fn new(
        random: &[u8; LOGIN_RANDOM_LEN],
        return_to: &str,
        acr: Option<String>,
        max_age: Option<u64>,
        now: u64,
    ) -> LoginState {
        LoginState {
            state: URL_SAFE_NO_PAD.encode(&random[0..16]),
            nonce: URL_SAFE_NO_PAD.encode(&random[16..32]),
            verifier: URL_SAFE_NO_PAD.encode(&random[32..64]),
            return_to: return_to.to_string(),
            acr,
            max_age,
            issued_at: now,
        }
    }

    /// True while the login may still complete (≤ 10 minutes, not from the future).
    pub fn is_fresh(&self, now: u64) -> bool {
        now.saturating_add(60) >= self.issued_at
            && now <= self.issued_at.saturating_add(LOGIN_STATE_TTL_SECS)
    }

    /// Compact encoding for sealing.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes [`LoginState::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Option<LoginState> {
        serde_json::from_slice(bytes).ok()
    }
}

/// PKCE S256 challenge of a verifier.
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The login-state cookie name for `state`: the session cookie name plus
/// `-login-` and 8 hex digits of SHA-256(state), so parallel logins in several
/// tabs each keep their own cookie.
pub fn state_cookie_name(session_cookie: &str, state: &str) -> String {
    let [a, b, c, d, ..]: [u8; 32] = Sha256::digest(state.as_bytes()).into();
    format!("{session_cookie}-login-{a:02x}{b:02x}{c:02x}{d:02x}")
}

/// Most sign-ins a browser may have in flight at once (one login-state cookie
/// each, for tabs that sign in in parallel). A sign-in that finds this many
/// already clears them all: each is about 300 bytes in every request, and
/// without a bound a page that keeps starting sign-ins could push the browser
/// past its cookie limits (evicting the session) or the request past Envoy's
/// header limit.
pub const MAX_PENDING_LOGINS: usize = 4;

/// The distinct login-state cookie names (see [`state_cookie_name`]) in the
/// request's `Cookie` headers.
pub fn pending_login_cookies(headers: &[(String, String)], session_cookie: &str) -> Vec<String> {
    let prefix = format!("{session_cookie}-login-");
    let mut names: Vec<String> = Vec::new();
    for (_, value) in headers
        .iter()
        .filter(|(h, _)| h.eq_ignore_ascii_case("cookie"))
    {
        for pair in value.split(';') {
            let name = pair.split('=').next().unwrap_or("").trim();
            if name
                .strip_prefix(prefix.as_str())
                .is_some_and(|digits| digits.len() == 8)
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The authorization URL the browser is sent to.
pub fn authorization_url(
    settings: &OidcSettings,
    metadata: &ProviderMetadata,
    login: &LoginState,
    redirect_uri: &str,
) -> String {
    let scope = settings.scopes.join(" ");
    let challenge = code_challenge(&login.verifier);
    let max_age = login.max_age.map(|m| m.to_string());
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &settings.client_id),
        ("redirect_uri", redirect_uri),
        ("scope", &scope),
        ("state", &login.state),
        ("nonce", &login.nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    if let Some(acr) = &login.acr {
        params.push(("acr_values", acr));
    }
    if let Some(m) = &max_age {
        params.push(("max_age", m));
    }
    if login.acr.is_some() || login.max_age.is_some() {
        // Step-up: make the provider authenticate the user again.
        params.push(("prompt", "login"));
    }
    metadata.authorization_endpoint.with_query(&params)
}

/// The redirect URI: `<scheme>://<host>/.auth/callback` (see [`external_origin`]).
pub fn redirect_uri(
    settings: &OidcSettings,
    host: &str,
    forwarded_proto: Option<&str>,
) -> Option<String> {
    Some(format!(
        "{}/.auth/callback",
        external_origin(settings, host, forwarded_proto)?
    ))
}

/// The app's external origin `<scheme>://<host>`. The scheme is the
/// configured one, else `x-forwarded-proto` (`http`/`https` only), else `https`.
/// `None` when `host` is not a plausible host name.
pub fn external_origin(
    settings: &OidcSettings,
    host: &str,
    forwarded_proto: Option<&str>,
) -> Option<String> {
    if host.is_empty()
        || host.len() > 255
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let scheme = match (&settings.external_scheme, forwarded_proto) {
        (Some(s), _) => s.as_str(),
        (None, Some(p)) if p.eq_ignore_ascii_case("http") => "http",
        _ => "https",
    };
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::config::tests::minimal;
    use crate::oidc::config::PreauthConfig;
    use crate::oidc::url::{query_param, query_params, HttpUrl};

    fn settings() -> OidcSettings {
        PreauthConfig::from_json(minimal().as_bytes())
            .unwrap()
            .apps
            .remove(0)
            .oidc
            .unwrap()
    }

    fn metadata() -> ProviderMetadata {
        ProviderMetadata {
            authorization_endpoint: HttpUrl::parse("http://127.0.0.1:9000/auth").unwrap(),
            token_endpoint: HttpUrl::parse("http://127.0.0.1:9000/token").unwrap(),
            jwks_uri: HttpUrl::parse("http://127.0.0.1:9000/jwks").unwrap(),
            end_session_endpoint: None,
        }
    }

    #[test]
    fn pkce_matches_rfc7636_example() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn authorization_url_has_everything() {
        let s = settings();
        let mut random = [0u8; LOGIN_RANDOM_LEN];
        for (i, b) in random.iter_mut().enumerate() {
            *b = i as u8;
        }
        let login = LoginState::new(&random, "/x?y=1", None, None, 100);
        let uri = redirect_uri(&s, "HR.localhost:10443", None).unwrap();
        assert_eq!(uri, "https://hr.localhost:10443/.auth/callback");
        let url = authorization_url(&s, &metadata(), &login, &uri);
        assert!(url.starts_with("http://127.0.0.1:9000/auth?"));
        let p = query_params(&url[url.find('?').unwrap()..]);
        let get = |k| query_param(&p, k);
        assert_eq!(get("response_type").as_deref(), Some("code"));
        assert_eq!(get("client_id").as_deref(), Some("portcullis"));
        assert_eq!(get("redirect_uri").as_deref(), Some(uri.as_str()));
        assert_eq!(get("scope").as_deref(), Some("openid profile email"));
        assert_eq!(get("state"), Some(login.state.clone()));
        assert_eq!(get("nonce"), Some(login.nonce.clone()));
        assert_eq!(get("code_challenge"), Some(code_challenge(&login.verifier)));
        assert_eq!(get("code_challenge_method").as_deref(), Some("S256"));
        assert_eq!(get("prompt"), None);
        assert_ne!(login.state, login.nonce);
        assert_eq!(login.verifier.len(), 43);
    }

    #[test]
    fn step_up_asks_for_acr_max_age_and_prompt() {
        let s = settings();
        let login = LoginState::new(
            &[3; LOGIN_RANDOM_LEN],
            "/",
            Some("mfa".into()),
            Some(0),
            100,
        );
        let url = authorization_url(&s, &metadata(), &login, "https://h/.auth/callback");
        let p = query_params(&url[url.find('?').unwrap()..]);
        assert_eq!(query_param(&p, "acr_values").as_deref(), Some("mfa"));
        assert_eq!(query_param(&p, "max_age").as_deref(), Some("0"));
        assert_eq!(query_param(&p, "prompt").as_deref(), Some("login"));
    }

    #[test]
    fn redirect_uri_scheme_and_host() {
        let mut s = settings();
        assert_eq!(
            redirect_uri(&s, "h", Some("http")).unwrap(),
            "http://h/.auth/callback"
        );
        assert_eq!(
            redirect_uri(&s, "h", Some("javascript")).unwrap(),
            "https://h/.auth/callback"
        );
        s.external_scheme = Some("https".into());
        assert_eq!(
            redirect_uri(&s, "h", Some("http")).unwrap(),
            "https://h/.auth/callback"
        );
        assert!(redirect_uri(&s, "evil.com/x", None).is_none());
        assert!(redirect_uri(&s, "", None).is_none());
        assert!(redirect_uri(&s, "a@b", None).is_none());
    }

    #[test]
    fn state_cookie_names_differ_per_state_and_state_round_trips() {
        let a = state_cookie_name("__Host-portcullis", "s1");
        let b = state_cookie_name("__Host-portcullis", "s2");
        assert_ne!(a, b);
        assert!(a.starts_with("__Host-portcullis-login-"));
        assert_eq!(a.len(), "__Host-portcullis-login-".len() + 8);
        let login = LoginState::new(&[5; LOGIN_RANDOM_LEN], "/", Some("x".into()), None, 7);
        assert_eq!(LoginState::decode(&login.encode()).unwrap(), login);
        assert!(login.is_fresh(7 + 600));
        assert!(!login.is_fresh(7 + 601));
        assert!(LoginState::decode(b"{}").is_none());
    }
}
