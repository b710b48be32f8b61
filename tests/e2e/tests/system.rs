//! The whole system, end to end: the demo stack (provider, apps on loopback,
//! edge, a registered connector dialling out, Envoy with all four filters) on
//! free ports, driven by a real Chromium through `tests/browser/flows/system.mjs`:
//! sign-in, the app reached through the tunnel seeing identity headers and no
//! proxy cookie, step-up on `/admin`, denials, and robots.txt without sign-in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::envoy::http_request;
use portcullis_e2e::stack::{Ports, Stack, StackOptions};
use std::process::Command;

#[test]
fn the_whole_system_through_a_real_browser() {
    let stack = Stack::start(StackOptions {
        ports: Ports::free().unwrap(),
        state_dir: None,
        extra_hosts: Vec::new(),
    })
    .unwrap();
    let p = stack.ports();
    let http = format!("127.0.0.1:{}", p.http);

    // Envoy has no route to the apps: only the tunnel reaches them.
    let config =
        std::fs::read_to_string(portcullis_e2e::repo_root().join("envoy-configs/demo.yaml"))
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
