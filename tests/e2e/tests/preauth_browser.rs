//! End-to-end: stock Envoy with `envoy-configs/preauth.yaml`, the real OpenID
//! provider (oidc-provider), the sample app, and a real headless Chromium
//! driven by `tests/browser/flows/preauth.mjs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::{http_request, Envoy, EnvoyConfig, TempDir};
use portcullis_e2e::free_port;
use portcullis_e2e::idp::Idp;
use portcullis_e2e::sample_app::SampleApp;
use std::process::Command;

#[test]
fn a_user_signs_in_through_a_real_browser() {
    let dir = TempDir::new("portcullis-preauth-e2e").unwrap();
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
    let idp = Idp::start(&clients.to_string(), dir.path()).unwrap();
    let app = SampleApp::start("127.0.0.1:0", "preauth e2e").unwrap();
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
        .replace("http://127.0.0.1:9000", idp.issuer())
        .unwrap();
    let envoy = Envoy::start(&config, admin).unwrap();

    // Without a session nothing reaches the app.
    let r = http_request(
        &format!("127.0.0.1:{listen}"),
        "GET",
        "/headers",
        &[("Accept", "text/html")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 302, "{}", envoy.log());
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{}/auth?", idp.issuer())));
    assert_eq!(app.total_hits(), 0);

    let out = Command::new("node")
        .current_dir(portcullis_e2e::repo_root())
        .args([
            "tests/browser/flows/preauth.mjs",
            "--app",
            &app_url,
            "--issuer",
            idp.issuer(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stderr}\n{stdout}\n--- envoy log (tail) ---\n{}",
        envoy
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["identity_headers"]["x-forwarded-user"], "u-alice");
    assert!(app.hits("/headers") >= 3);
    println!("{summary}");
}
