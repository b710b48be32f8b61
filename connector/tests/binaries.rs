//! Tests of the real binaries: the connector never listens on any port (it only dials
//! out; checked in /proc/<pid>), SIGTERM drains, SIGHUP reloads the edge, errors are clear.
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
            vec!["run", "check", "fingerprint", "connectors"],
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

#[test]
fn clear_errors_for_missing_certificate_unreachable_edge_and_bad_config() {
    let bin = env!("CARGO_BIN_EXE_portcullis-connector");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // No connector.json at all.
    let state = dir.path().to_str().unwrap();
    let err = run(&["run", "--state-dir", state]);
    assert!(err.contains("connector.json"), "{err}");
    // A configuration but no certificate: not registered.
    std::fs::write(
        dir.path().join("connector.json"),
        format!(r#"{{"state_dir": "{state}", "edges": ["127.0.0.1:9"]}}"#),
    )
    .unwrap();
    let err = run(&["run", "--state-dir", state]);
    assert!(
        err.contains("not registered") && err.contains("cert.pem"),
        "{err}"
    );
    // A bad field is named.
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"state_dir": "/x", "edges": ["nohost"]}"#,
    )
    .unwrap();
    let err = run(&[
        "check",
        "--config",
        dir.path().join("bad.json").to_str().unwrap(),
    ]);
    assert!(err.contains("edges[0]"), "{err}");
    // Unreachable edge at registration.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run(&[
        "register",
        "--edge",
        &format!("https://127.0.0.1:{port}"),
        "--token",
        "x.y.z",
        "--state-dir",
        state,
        "--edge-ca",
        ca.to_str().unwrap(),
    ]);
    assert!(err.contains("edge unreachable"), "{err}");
}

#[tokio::test]
async fn edge_binary_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let port = || portcullis_e2e::free_port().unwrap();
    let mut file = edge_file(
        &dir.path().join("edge"),
        &idp.jwks_path,
        vec![app("a", "default", "http://127.0.0.1:9")],
    );
    file.listen.registration = format!("127.0.0.1:{}", port());
    file.listen.tunnel = format!("127.0.0.1:{}", port());
    let local = format!("127.0.0.1:{}", port());
    file.listen.insecure_envoy_h2c_tcp = Some(local.clone());
    file.listen.metrics = None;
    let path = dir.path().join("edge.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-edge"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client();
    let ask = |app: &str| {
        let client = client.clone();
        let r = http::Request::get(format!("http://{local}/"))
            .header("x-portcullis-app", app)
            .body(portcullis_connector::body::empty())
            .unwrap();
        async move {
            match client.request(r).await {
                Ok(resp) => resp
                    .headers()
                    .get("x-portcullis-error")
                    .map(|v| v.to_str().unwrap().to_string()),
                Err(_) => None,
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ask("a").await.as_deref() != Some("connector_unavailable") {
        assert!(std::time::Instant::now() < deadline, "edge did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ask("b").await.as_deref(), Some("app_unknown"));
    file.apps.push(app("b", "default", "http://127.0.0.1:9"));
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ask("b").await.as_deref() != Some("connector_unavailable") {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "edge did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
}

/// A child process stopped (and continued, if stopped) when the test ends, even by a
/// failed assertion.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(pid: u32) {
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

async fn exit_within(child: &mut std::process::Child, limit: Duration) -> Duration {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "exit status {s:?}");
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_stops_an_idle_edge_at_once_and_a_busy_one_when_its_requests_are_done() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let backend = start_backend("hello").await;
    let port = || portcullis_e2e::free_port().unwrap();
    let mut file = edge_file(
        &dir.path().join("edge"),
        &idp.jwks_path,
        vec![app("hello", "default", &format!("http://{}", backend.addr))],
    );
    let (reg, tunnel, local) = (port(), port(), port());
    file.listen.registration = format!("127.0.0.1:{reg}");
    file.listen.tunnel = format!("127.0.0.1:{tunnel}");
    file.listen.insecure_envoy_h2c_tcp = Some(format!("127.0.0.1:{local}"));
    file.listen.metrics = None;
    file.drain_seconds = 30;
    let path = dir.path().join("edge.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_portcullis-edge"))
            .args(["run", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let edge_url = format!("https://127.0.0.1:{reg}");
    let ca = dir.path().join("edge/connector-ca.pem");
    let up = |child: &mut std::process::Child| {
        let _ = child;
        async {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while tokio::net::TcpStream::connect(("127.0.0.1", reg))
                .await
                .is_err()
            {
                assert!(std::time::Instant::now() < deadline, "edge did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut child = spawn();
    up(&mut child).await;
    portcullis_connector::connector::register(&portcullis_connector::connector::RegisterOptions {
        edge_url,
        token: idp.admin_token(),
        state_dir: dir.path().join("c1"),
        group: None,
        trust: portcullis_connector::connector::EdgeTrust::CaFile(ca),
    })
    .await
    .unwrap();
    let mut cfg = portcullis_connector::config::ConnectorConfigFile::load(
        &dir.path().join("c1/connector.json"),
    )
    .unwrap();
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 200;
    let c = start_connector(&cfg).await;
    let client = client();
    let ask = |path: &str| {
        let client = client.clone();
        let r = http::Request::get(format!("http://127.0.0.1:{local}{path}"))
            .header("x-portcullis-app", "hello")
            .body(portcullis_connector::body::empty())
            .unwrap();
        async move {
            match client.request(r).await {
                Ok(resp) => resp.status().as_u16(),
                Err(_) => 0,
            }
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ask("/echo").await != 200 {
        assert!(std::time::Instant::now() < deadline, "no tunnel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle (tunnels up, Envoy's connection kept alive): SIGTERM stops it at once.
    sigterm(child.id());
    let took = exit_within(&mut child, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(3),
        "an idle edge took {took:?} (drain is 30 s)"
    );

    // Busy: the request in flight finishes, then the edge stops, well before 30 s.
    let mut child = spawn();
    up(&mut child).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ask("/echo").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connector did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = tokio::spawn(ask("/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(child.id());
    let took = exit_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(slow.await.unwrap(), 200, "the request in flight finished");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn sigterm_ends_a_connector_whose_edge_accepts_tcp_and_never_answers_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a = accepted.clone();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            if let Ok((s, _)) = mute.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                open.push(s);
            }
        }
    });
    // A registered connector's state, pointed at the mute edge.
    let w = world(|b| vec![app("hello", "default", &format!("http://{}", b.addr))]).await;
    let state = w.dir.path().join("c1");
    let mut cfg = register(&w.edge, &w.idp, &state, "default").await;
    w.edge.stop().await;
    cfg.edges = vec![addr.to_string()];
    cfg.connect_timeout_seconds = 1;
    cfg.backoff_max_ms = 500;
    let path = dir.path().join("connector.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_portcullis-connector"))
            .args(["run", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // It keeps trying (time-out, backoff, again), not 3 attempts and a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} attempts",
            accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(child.0.id());
    let took = exit_within(&mut child.0, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    held.abort();
}

#[test]
fn native_binaries_are_built_to_unwind_and_the_wasm_filters_to_abort() {
    let root = portcullis_e2e::repo_root();
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let section = |name: &str| -> String {
        let start = cargo.find(&format!("[profile.{name}]")).unwrap();
        let rest = &cargo[start + 1..];
        rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
    };
    // A panic in one task (one request, one tunnel) ends that task only.
    assert!(section("native").contains("panic = \"unwind\""));
    assert!(section("native").contains("inherits = \"release\""));
    // A panic in a filter still aborts its VM (the release profile serves wasm).
    assert!(section("release").contains("panic = \"abort\""));
    let build = std::fs::read_to_string(root.join("scripts/build.sh")).unwrap();
    assert!(build.contains("--profile native -p portcullis-connector"));
    let image = std::fs::read_to_string(root.join("docker/portcullis.Dockerfile")).unwrap();
    assert!(image.contains("--profile native"));
    assert!(!image.contains("target/release/portcullis-"));
    // The static binaries of `make dist` too.
    let dist = std::fs::read_to_string(root.join("scripts/dist.sh")).unwrap();
    assert!(dist.contains("--profile native --target x86_64-unknown-linux-musl"));
    // The test binaries themselves (debug) unwind: a panicking task is contained.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let joined = rt.block_on(async { tokio::spawn(async { panic!("one task") }).await });
    assert!(joined.unwrap_err().is_panic());
}

/// The soft and hard `Max open files` of `pid`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[3].to_string(), cols[4].to_string())
}

#[tokio::test]
async fn the_edge_raises_its_descriptor_limit_at_start_and_warns_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new(dir.path());
    let port = || portcullis_e2e::free_port().unwrap();
    for (limit, raised) in [("1024:8192", "8192"), ("1024:1024", "1024")] {
        let mut file = edge_file(
            &dir.path().join("edge"),
            &idp.jwks_path,
            vec![app("hello", "default", "http://127.0.0.1:9")],
        );
        let metrics = port();
        file.listen.registration = format!("127.0.0.1:{}", port());
        file.listen.tunnel = format!("127.0.0.1:{}", port());
        file.listen.insecure_envoy_h2c_tcp = None;
        file.listen.metrics = Some(format!("127.0.0.1:{metrics}"));
        let path = dir.path().join("edge.json");
        std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
        let log = dir.path().join(format!("edge-{raised}.log"));
        // systemd's default soft limit of 1,024, with a higher hard limit or not.
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={limit}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_portcullis-edge"))
            .args(["run", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while http_text(&format!("http://127.0.0.1:{metrics}/metrics"))
            .await
            .is_none()
        {
            assert!(std::time::Instant::now() < deadline, "edge did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (soft, hard) = open_files_limit(child.id());
        let text = std::fs::read_to_string(&log).unwrap();
        sigterm(child.id());
        exit_within(&mut child, Duration::from_secs(5)).await;
        assert_eq!((soft.as_str(), hard.as_str()), (raised, raised), "{limit}");
        let warned = text.contains("descriptor limit (RLIMIT_NOFILE) is low");
        assert_eq!(warned, raised == "1024", "{limit}: {text}");
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn a_connector_stopped_with_sigstop_is_dropped_within_10_s_and_its_reads_go_to_another() {
    // The edge and both connectors with the default liveness settings.
    let defaults: portcullis_connector::config::EdgeConfigFile =
        serde_json::from_value(serde_json::json!({
            "state_dir": "/x", "groups": ["default"],
            "admin": {"jwks_file": "/x", "issuer": "i", "audience": "a", "admin_roles": ["r"]}
        }))
        .unwrap();
    let w = world_with(
        |b| vec![app("hello", "default", &format!("http://{}", b.addr))],
        |f| {
            f.keepalive_seconds = defaults.keepalive_seconds;
            f.ping_timeout_seconds = defaults.ping_timeout_seconds;
        },
    )
    .await;
    let frozen_dir = w.dir.path().join("frozen");
    let _ = register(&w.edge, &w.idp, &frozen_dir, "default").await;
    let frozen = Reaped(
        Command::new(env!("CARGO_BIN_EXE_portcullis-connector"))
            .args(["run", "--state-dir"])
            .arg(&frozen_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_tunnels(&w.edge, 2).await;
    let frozen_tunnels: Vec<u64> = w.edge.handle.tunnels().iter().map(|t| t.id).collect();
    let mut live_cfg = register(&w.edge, &w.idp, &w.dir.path().join("live"), "default").await;
    let connector_defaults = portcullis_connector::config::ConnectorConfigFile::with_defaults(
        "/x".into(),
        vec![],
        "localhost".into(),
    );
    live_cfg.keepalive_seconds = connector_defaults.keepalive_seconds;
    live_cfg.ping_timeout_seconds = connector_defaults.ping_timeout_seconds;
    let live = start_connector(&live_cfg).await;
    wait_tunnels(&w.edge, 4).await;

    signal(frozen.0.id(), "-STOP");
    let t = std::time::Instant::now();
    let client = client();
    let mut reads = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let r = req(&w.edge, "hello", "/echo")
            .body(portcullis_connector::body::empty())
            .unwrap();
        reads.push(tokio::spawn(async move {
            let status = client.request(r).await.map(|r| r.status());
            (status.ok(), t.elapsed())
        }));
    }
    for r in reads {
        let (status, after) = r.await.unwrap();
        assert_eq!(
            status,
            Some(http::StatusCode::OK),
            "a read is retried elsewhere"
        );
        assert!(after < Duration::from_secs(10), "answered after {after:?}");
    }
    eventually(10, "the stopped connector's tunnels dropped", || {
        w.edge
            .handle
            .tunnels()
            .iter()
            .all(|x| !frozen_tunnels.contains(&x.id))
    })
    .await;
    // (by the edge's keepalive ping time-out, or its watchdog)
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "found after {:?}",
        t.elapsed()
    );
    drop(frozen);
    live.stop().await;
    w.edge.stop().await;
}
