//! The whole system, end to end: the demo stack (provider, apps on loopback,
//! edge, a registered connector dialling out, Envoy with all four stages, as the
//! all-in-one module and as four filters) on
//! free ports, driven by a real Chromium through `tests/browser/flows/system.mjs`:
//! sign-in, the app reached through the tunnel seeing identity headers and no
//! proxy cookie, step-up on `/admin`, denials, and robots.txt without sign-in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::http_request;
use portcullis_e2e::stack::{Layout, Ports, Stack, StackOptions};
use std::process::Command;

/// The demo's all-in-one layout: one Envoy filter, `portcullis.wasm`.
#[test]
fn the_whole_system_through_a_real_browser() {
    whole_system(Layout::AllInOne);
}

/// The split layout: one Envoy filter per stage, the identity in filter state.
#[test]
fn the_whole_system_through_a_real_browser_split_layout() {
    whole_system(Layout::Split);
}

fn whole_system(layout: Layout) {
    let stack = Stack::start(StackOptions {
        layout,
        ports: Ports::free().unwrap(),
        state_dir: None,
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports();
    let http = format!("127.0.0.1:{}", p.http);

    // Envoy has no route to the apps: only the tunnel reaches them.
    let config = std::fs::read_to_string(
        portcullis_e2e::repo_root()
            .join("envoy-configs")
            .join(layout.demo_config()),
    )
    .unwrap();
    assert!(!config.contains("port_value: 8081") && !config.contains("port_value: 8082"));

    let out = Command::new("node")
        .current_dir(portcullis_e2e::repo_root())
        .args([
            "tests/browser/flows/system.mjs",
            "--http",
            &p.http.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser flow failed:\n{}\n{stdout}\n--- envoy log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack
            .envoy_log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["app_headers"]["x-forwarded-user"], "u-alice");
    assert_eq!(
        summary["step_up"]["amr"],
        serde_json::json!(["pwd", "otp", "mfa"])
    );

    // A real sign-in delivered a signed identity assertion to the app, verifiable with the
    // app's published keys (fetched through Envoy, no session needed).
    let jwks = http_request(&http, "GET", "/.auth/jwks", &[("Host", "127.0.0.1")], b"").unwrap();
    assert_eq!(jwks.status, 200);
    let keys = portcullis_core::assertion::PublicKeySet::from_jwks(&jwks.body).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = portcullis_core::assertion::verify(
        summary["assertion"]
            .as_str()
            .expect("the app got an assertion"),
        &keys,
        &portcullis_core::assertion::Expected {
            issuer: "https://127.0.0.1",
            audience: "sample",
            skew_secs: 60,
            now,
        },
    )
    .unwrap();
    assert_eq!(claims.sub, "u-alice");
    // The README's backend example verifies it too (node, no dependency), against the JWKS URL.
    let mut node = Command::new("node")
        .current_dir(portcullis_e2e::repo_root())
        .args([
            "docs/examples/verify-assertion.mjs",
            &format!("http://{http}/.auth/jwks"),
            "https://127.0.0.1",
            "sample",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = node.stdin.take().unwrap();
        stdin
            .write_all(summary["assertion"].as_str().unwrap().as_bytes())
            .unwrap();
    }
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the README's example refused the assertion"
    );
    let by_node: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_node["sub"], "u-alice");
    let example = std::fs::read_to_string(
        portcullis_e2e::repo_root().join("docs/examples/verify-assertion.mjs"),
    )
    .unwrap();
    let readme = std::fs::read_to_string(portcullis_e2e::repo_root().join("README.md")).unwrap();
    let function = &example[example.find("export async function").unwrap()
        ..example.find("\nif (import.meta").unwrap()];
    let indented: Vec<String> = function
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("    {l}")
            }
        })
        .collect();
    assert!(
        readme.contains(&indented.join("\n")),
        "README shows docs/examples/verify-assertion.mjs's function verbatim"
    );

    // The attack: a local process speaks HTTP to the edge, names the admin app and
    // claims to be bob. No TCP port of the edge takes it (it has no plain listener for Envoy
    // any more), and over the Envoy socket itself the forged identity goes nowhere.
    let forged = [
        ("x-portcullis-app", "admin"),
        ("X-Forwarded-User", "u-bob"),
        ("X-Forwarded-Groups", "admins"),
        ("Accept", "application/json"),
    ];
    let ports = listening_ports(stack.edge_pid());
    assert!(!ports.is_empty());
    for port in ports {
        let addr = format!("127.0.0.1:{port}");
        if let Ok(r) = http_request(&addr, "GET", "/admin", &forged, b"") {
            assert!(
                !r.text().contains("admin app") && !r.text().contains("u-bob"),
                "port {port} of the edge took the forged request: {} {}",
                r.status,
                r.text()
            );
        }
    }
    let socket = stack.dir().join("edge/envoy.sock");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let admin = unix_request(&socket, "/admin", &forged);
    assert!(admin.starts_with("HTTP/1.1 401"), "{admin}");
    assert!(admin.contains("assertion_required"), "{admin}");
    let mut anonymous = forged;
    anonymous[0] = ("x-portcullis-app", "sample");
    let sample = unix_request(&socket, "/headers", &anonymous);
    assert!(sample.starts_with("HTTP/1.1 200"), "{sample}");
    assert!(!sample.contains("u-bob"), "{sample}");

    // A header over Envoy's limit: Envoy's own refusal names its cause.
    let big = "b".repeat(70 * 1024);
    let r = http_request(&http, "GET", "/", &[("x-big", &big)], b"").unwrap();
    assert_eq!(r.status, 431);
    assert!(
        r.text().contains("request_headers_too_large"),
        "{}",
        r.text()
    );

    // robots.txt never reached an app; the pages did, through the connector.
    let r = http_request(&http, "GET", "/robots.txt", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(stack.apps()[0].hits("/robots.txt"), 0);
    assert_eq!(stack.apps()[1].hits("/robots.txt"), 0);
    assert!(stack.apps()[0].hits("/headers") >= 1);
    assert!(stack.apps()[1].hits("/admin") >= 1);

    // The connector process listens on no TCP port: it only dials out.
    let listening = listening_inodes();
    let sockets = socket_inodes(stack.connector_pid());
    assert!(
        !sockets.is_empty(),
        "the connector has open sockets (its tunnels)"
    );
    assert!(
        sockets.iter().all(|i| !listening.contains(i)),
        "the connector listens on a port"
    );
    // …while the edge does (a control for the check above).
    assert!(socket_inodes(stack.edge_pid())
        .iter()
        .any(|i| listening.contains(i)));
}

/// An HTTP/1.1 request over a Unix socket; the whole raw response.
fn unix_request(path: &std::path::Path, target: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// TCP ports a process listens on.
fn listening_ports(pid: u32) -> Vec<u16> {
    let mine = socket_inodes(pid);
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && cols.get(9).is_some_and(|i| mine.iter().any(|m| m == i))
            {
                if let Some(port) = cols[1].rsplit(':').next() {
                    out.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
    }
    out
}

/// Inodes of TCP sockets in LISTEN state (state 0A), IPv4 and IPv6.
fn listening_inodes() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A") {
                if let Some(inode) = cols.get(9) {
                    out.push((*inode).to_string());
                }
            }
        }
    }
    out
}

/// Inodes of the sockets a process holds.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect()
}
