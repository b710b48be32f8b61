//! End-to-end against a second OpenID provider, not `oidc-provider`: django-oauth-toolkit
//! (`tests/idp-django`), with stock Envoy running `envoy-configs/preauth.yaml` pointed at it, the
//! sample app, and headless Chromium driven by `tests/browser/flows/second-provider.mjs`:
//! sign-in with PKCE, identity headers at the app, RP-initiated logout at the provider's
//! `end_session_endpoint`, and the provider refusing a code without the filter's verifier.
//! Back-channel logout is not built in Portcullis yet; the toolkit has no sender for it either.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig, TempDir};
use portcullis_e2e::free_port;
use portcullis_e2e::idp_django::DjangoIdp;
use portcullis_e2e::sample_app::SampleApp;
use std::process::Command;

#[test]
fn a_user_signs_in_and_out_at_django_oauth_toolkit() {
    let dir = TempDir::new("portcullis-second-provider").unwrap();
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let app_url = format!("http://127.0.0.1:{listen}");
    let clients = serde_json::json!({
        "clients": [{
            "client_id": "portcullis-demo",
            "client_secret": "portcullis-demo-secret",
            "redirect_uris": [format!("{app_url}/.auth/callback")],
            "post_logout_redirect_uris": [format!("{app_url}/")],
        }]
    });
    let idp = DjangoIdp::start(&clients.to_string(), dir.path()).unwrap();
    let app = SampleApp::start("127.0.0.1:0", "second provider e2e").unwrap();
    // The same shipped config as the oidc-provider test, with the ports, the issuer (which
    // carries a path here: /o) and a post-logout URI (the app's root, registered above).
    let config = EnvoyConfig::from_repo("preauth.yaml")
        .unwrap()
        .port(10000, listen)
        .unwrap()
        .port(9901, admin)
        .unwrap()
        .port(8081, app.addr().port())
        .unwrap()
        .port(9000, idp.port())
        .unwrap()
        .replace(
            "\"http://127.0.0.1:9000\"",
            &format!("\"{}\"", idp.issuer()),
        )
        .unwrap()
        .replace(
            "\"external_scheme\": \"http\",",
            "\"external_scheme\": \"http\", \"post_logout_redirect_uri\": \"/\",",
        )
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();

    // Without a session nothing reaches the app: the filter sends the browser to the toolkit.
    let r = http_request(
        &format!("127.0.0.1:{listen}"),
        "GET",
        "/headers",
        &[("Accept", "text/html")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 302, "{}", envoy.log());
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{}/authorize/?", idp.issuer())),
        "{location}"
    );
    assert_eq!(app.total_hits(), 0);

    let out = Command::new("node")
        .current_dir(portcullis_e2e::repo_root())
        .args([
            "tests/browser/flows/second-provider.mjs",
            "--app",
            &app_url,
            "--issuer",
            idp.issuer(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = envoy.log();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        out.status.success(),
        "browser flow failed:\n{stderr}\n{stdout}\n--- envoy log (tail) ---\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        summary["identity_headers"]["x-forwarded-email"],
        "alice@example.com"
    );
    assert_eq!(summary["logout"]["returned_to"], format!("{app_url}/"));
    assert!(app.hits("/headers") >= 2);
    println!("{summary}");
}
