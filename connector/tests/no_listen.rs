//! The connector binary never listens on any port: it only dials out. Runs the real
//! binary against an in-process edge and inspects /proc/<pid>. Also: SIGTERM drains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Socket inodes of `pid` in `state` (hex, e.g. `0A` = LISTEN, `01` = ESTABLISHED).
fn sockets_in_state(pid: u32, state: &str) -> HashSet<u64> {
    let mut out = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == state {
                out.insert(cols[9].parse().unwrap());
            }
        }
    }
    out
}

fn socket_fds(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn connector_process_never_listens_and_drains_on_sigterm() {
    let w = world(|b| vec![app("hello", "default", &format!("http://{}", b.addr))]).await;
    let state = w.dir.path().join("c1");
    let _ = register(&w.edge, &w.idp, &state, "default").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-connector"))
        .args(["run", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_tunnels(&w.edge, 2).await;
    let client = client();
    let (status, _, _) = get(&client, &w.edge, "hello", "/echo").await;
    assert_eq!(status, 200);

    let fds = socket_fds(pid);
    let listening: HashSet<u64> = sockets_in_state(pid, "0A")
        .intersection(&fds)
        .copied()
        .collect();
    let established: HashSet<u64> = sockets_in_state(pid, "01")
        .intersection(&fds)
        .copied()
        .collect();
    assert!(
        listening.is_empty(),
        "the connector listens on sockets {listening:?}"
    );
    assert!(
        established.len() >= 2,
        "expected the outbound tunnels among {fds:?}"
    );

    // SIGTERM: graceful drain, clean exit, tunnels gone.
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connector did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    wait_tunnels(&w.edge, 0).await;
    w.edge.stop().await;
}

#[test]
fn every_subcommand_has_help() {
    for (bin, subs) in [
        (
            env!("CARGO_BIN_EXE_portcullis-connector"),
            vec!["register", "run", "check"],
        ),
        (
            env!("CARGO_BIN_EXE_portcullis-edge"),
            vec!["run", "check", "fingerprint"],
        ),
    ] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(out.status.success());
        for sub in subs {
            let out = Command::new(bin).args([sub, "--help"]).output().unwrap();
            assert!(out.status.success(), "{bin} {sub} --help");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("Usage"),
                "{bin} {sub}"
            );
        }
    }
}
