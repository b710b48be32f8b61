//! The whole system on one machine: the OpenID provider, two sample apps that
//! listen on loopback only, the edge service, a connector registered with an
//! admin token and dialling out to the edge, and Envoy with all four filters
//! (`envoy-configs/demo.yaml`). `make demo` runs it on the fixed ports of
//! DESIGN.md; the whole-system test runs it on free ports.

use crate::envoy::{Envoy, EnvoyConfig, TempDir};
use crate::idp::Idp;
use crate::sample_app::SampleApp;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ports the stack uses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Envoy HTTP.
    pub http: u16,
    /// Envoy HTTPS.
    pub https: u16,
    /// Envoy admin.
    pub envoy_admin: u16,
    /// OpenID provider.
    pub idp: u16,
    /// Edge: connector registration (HTTPS).
    pub edge_registration: u16,
    /// Edge: connector tunnels (mTLS).
    pub edge_tunnel: u16,
    /// Edge: Prometheus metrics.
    pub edge_metrics: u16,
    /// Sample app "sample".
    pub app_sample: u16,
    /// Sample app "admin".
    pub app_admin: u16,
}

impl Ports {
    /// The demo's fixed ports (DESIGN.md: 10000, 10443, 9901, 9000).
    pub fn demo() -> Self {
        Self {
            http: 10000,
            https: 10443,
            envoy_admin: 9901,
            idp: 9000,
            edge_registration: 8441,
            edge_tunnel: 8442,
            edge_metrics: 9102,
            app_sample: 8081,
            app_admin: 8082,
        }
    }

    /// Free ports for a test.
    pub fn free() -> Result<Self> {
        let p = crate::free_port;
        Ok(Self {
            http: p()?,
            https: p()?,
            envoy_admin: p()?,
            idp: 0,
            edge_registration: p()?,
            edge_tunnel: p()?,
            edge_metrics: p()?,
            app_sample: p()?,
            app_admin: p()?,
        })
    }
}

/// Where the native binaries are: `$PORTCULLIS_BIN_DIR`, else the newer of
/// `target/native` (`scripts/build.sh`, panic = "unwind") and `target/debug`
/// (`cargo test`) that has them, so a stale build is never picked over a fresh one.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("PORTCULLIS_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let target = crate::repo_root().join("target");
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    for profile in ["native", "debug"] {
        let dir = target.join(profile);
        let (edge, connector) = (
            dir.join("portcullis-edge"),
            dir.join("portcullis-connector"),
        );
        if edge.exists() && connector.exists() {
            let built = std::fs::metadata(&edge)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if found.as_ref().is_none_or(|(t, _)| built > *t) {
                found = Some((built, dir));
            }
        }
    }
    match found {
        Some((_, dir)) => Ok(dir),
        None => bail!("portcullis-edge / portcullis-connector not built: run `make build` (or `cargo build -p portcullis-connector --bins`)"),
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = cmd
            .current_dir(crate::repo_root())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} did not stop on SIGTERM; killed", self.name);
    }
}

/// Options for [`Stack::start`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Ports.
    pub ports: Ports,
    /// Where state and logs go (kept after the stack stops when given).
    pub state_dir: Option<PathBuf>,
    /// Extra redirect-URI host names to register with the provider.
    pub extra_hosts: Vec<String>,
    /// Also open the edge's plain h2c TCP listener for Envoy on this port
    /// (`insecure_envoy_h2c_tcp`, for the tunnel benchmarks' load generator).
    pub insecure_edge_tcp: Option<u16>,
    /// How Envoy runs the filters.
    pub layout: Layout,
}

/// How Envoy runs the four stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// One filter, `portcullis.wasm` (`envoy-configs/demo.yaml`).
    #[default]
    AllInOne,
    /// One filter per stage (`envoy-configs/demo-split.yaml`).
    Split,
}

impl Layout {
    /// The Envoy config of the demo in this layout (under `envoy-configs/`).
    pub fn demo_config(self) -> &'static str {
        match self {
            Layout::AllInOne => "demo.yaml",
            Layout::Split => "demo-split.yaml",
        }
    }

    /// Parses `all-in-one` or `split`.
    pub fn parse(text: &str) -> Result<Layout> {
        match text {
            "all-in-one" => Ok(Layout::AllInOne),
            "split" => Ok(Layout::Split),
            other => bail!("unknown layout `{other}` (all-in-one or split)"),
        }
    }
}

/// The running system; everything stops on drop (in reverse order).
#[derive(Debug)]
pub struct Stack {
    // Field order is drop order: Envoy first, then connector, edge, apps, provider.
    envoy: Envoy,
    connector: Proc,
    edge: Proc,
    apps: Vec<SampleApp>,
    idp: Idp,
    ports: Ports,
    dir: PathBuf,
    sealing_key: String,
    _temp: Option<TempDir>,
}

fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut ok: F) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

fn random_key() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    Ok(out)
}

impl Stack {
    /// Starts everything and waits until a request can go Envoy → edge → connector → app.
    pub fn start(opts: StackOptions) -> Result<Self> {
        let root = crate::repo_root();
        let (temp, dir) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = TempDir::new("portcullis-stack")?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let mut ports = opts.ports;
        let bins = bin_dir()?;

        // 1. The OpenID provider, with the redirect URIs of this stack's ports.
        let mut hosts = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "admin.localhost".to_string(),
        ];
        hosts.extend(opts.extra_hosts.iter().cloned());
        let mut redirects = Vec::new();
        let mut logouts = Vec::new();
        for host in &hosts {
            for (scheme, port) in [("http", ports.http), ("https", ports.https)] {
                redirects.push(format!("{scheme}://{host}:{port}/.auth/callback"));
                logouts.push(format!("{scheme}://{host}:{port}/"));
            }
        }
        let clients = serde_json::json!({
            "tenant": "portcullis-demo",
            "audiences": ["portcullis-edge"],
            "clients": [{
                "client_id": "portcullis-demo",
                "client_secret": "portcullis-demo-secret",
                "redirect_uris": redirects,
                "post_logout_redirect_uris": logouts,
            }]
        });
        let idp = Idp::start_on(
            &clients.to_string(),
            &dir,
            ports.idp,
            Some(&dir.join("idp-jwks.json")),
        )?;
        ports.idp = idp.port();

        // 2. The apps: loopback only, and nothing in Envoy's config points at them.
        let apps = vec![
            SampleApp::start(
                &format!("127.0.0.1:{}", ports.app_sample),
                "Portcullis sample app",
            )?,
            SampleApp::start(
                &format!("127.0.0.1:{}", ports.app_admin),
                "Portcullis admin app",
            )?,
        ];

        // 3. The edge service.
        let mut edge_cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("demo/edge.json"))?)?;
        edge_cfg["state_dir"] = dir.join("edge").to_string_lossy().into_owned().into();
        edge_cfg["listen"] = serde_json::json!({
            "registration": format!("127.0.0.1:{}", ports.edge_registration),
            "tunnel": format!("127.0.0.1:{}", ports.edge_tunnel),
            "envoy_socket": dir.join("edge/envoy.sock").to_string_lossy(),
            "envoy_socket_mode": "0600",
            "metrics": format!("127.0.0.1:{}", ports.edge_metrics),
        });
        if let Some(port) = opts.insecure_edge_tcp {
            edge_cfg["listen"]["insecure_envoy_h2c_tcp"] = format!("127.0.0.1:{port}").into();
        }
        edge_cfg["admin"]["jwks_url"] = format!("{}/jwks", idp.issuer()).into();
        edge_cfg["admin"]["issuer"] = idp.issuer().to_string().into();
        edge_cfg["apps"][0]["internal_url"] =
            format!("http://127.0.0.1:{}", ports.app_sample).into();
        edge_cfg["apps"][1]["internal_url"] =
            format!("http://127.0.0.1:{}", ports.app_admin).into();
        for app in [0, 1] {
            edge_cfg["apps"][app]["assertion"]["jwks_url"] =
                format!("http://127.0.0.1:{}/.auth/jwks", ports.http).into();
        }
        let edge_file = dir.join("edge.json");
        std::fs::write(&edge_file, serde_json::to_string_pretty(&edge_cfg)?)?;
        let edge = Proc::spawn(
            "portcullis-edge",
            Command::new(bins.join("portcullis-edge"))
                .args(["run", "--config"])
                .arg(&edge_file),
            &dir.join("edge.log"),
        )?;
        let metrics = format!("127.0.0.1:{}", ports.edge_metrics);
        wait_for("the edge service", Duration::from_secs(20), || {
            crate::envoy::http_request(&metrics, "GET", "/metrics", &[], b"")
                .is_ok_and(|r| r.status == 200)
        })?;

        // 4. Register a connector with an admin's token, then run it.
        let token = Command::new("node")
            .current_dir(&root)
            .args([
                "tests/idp/admin-token.mjs",
                "--issuer",
                idp.issuer(),
                "--user",
                "carol",
                "--password",
                "carol-password",
            ])
            .output()?;
        if !token.status.success() {
            bail!("admin token: {}", String::from_utf8_lossy(&token.stderr));
        }
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, String::from_utf8_lossy(&token.stdout).trim())?;
        let fingerprint = Command::new(bins.join("portcullis-edge"))
            .args(["fingerprint", "--config"])
            .arg(&edge_file)
            .output()?;
        let fingerprint = String::from_utf8_lossy(&fingerprint.stdout)
            .trim()
            .to_string();
        let connector_dir = dir.join("connector");
        if !connector_dir.join("connector.json").exists() {
            let out = Command::new(bins.join("portcullis-connector"))
                .current_dir(&root)
                .args([
                    "register",
                    "--edge",
                    &format!("https://127.0.0.1:{}", ports.edge_registration),
                ])
                .arg("--token-file")
                .arg(&token_file)
                .arg("--state-dir")
                .arg(&connector_dir)
                .args(["--edge-fingerprint", &fingerprint])
                .output()?;
            if !out.status.success() {
                bail!(
                    "connector registration failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let connector = Proc::spawn(
            "portcullis-connector",
            Command::new(bins.join("portcullis-connector"))
                .arg("run")
                .arg("--state-dir")
                .arg(&connector_dir),
            &dir.join("connector.log"),
        )?;
        wait_for("a connector tunnel", Duration::from_secs(20), || {
            crate::envoy::http_request(&metrics, "GET", "/metrics", &[], b"").is_ok_and(|r| {
                r.text().lines().any(|l| {
                    l.starts_with("portcullis_edge_tunnels_up") && !l.trim_end().ends_with(" 0")
                })
            })
        })?;

        // 5. Envoy with the whole chain and a fresh sealing key.
        let sealing_key = random_key()?;
        let config = EnvoyConfig::from_repo(opts.layout.demo_config())?
            .port(10000, ports.http)?
            .port(10443, ports.https)?
            .port(9901, ports.envoy_admin)?
            .port(9000, ports.idp)?
            .replace(
                ".demo/edge/envoy.sock",
                &dir.join("edge/envoy.sock").to_string_lossy(),
            )?
            .replace("http://127.0.0.1:9000", idp.issuer())?
            .replace("cG9ydGN1bGxpcy1kZW1vLWtleS0wMDAwMDAwMDAwMDA=", &sealing_key)?
            .replace(
                "http://127.0.0.1:8081",
                &format!("http://127.0.0.1:{}", ports.app_sample),
            )?
            .replace(
                "http://127.0.0.1:8082",
                &format!("http://127.0.0.1:{}", ports.app_admin),
            )?
            .replace(
                "https://127.0.0.1:10443",
                &format!("https://127.0.0.1:{}", ports.https),
            )?
            .replace(
                "https://admin.localhost:10443",
                &format!("https://admin.localhost:{}", ports.https),
            )?;
        let envoy = Envoy::start_logged(&config, ports.envoy_admin, &dir.join("envoy.log"))?;

        let stack = Self {
            envoy,
            connector,
            edge,
            apps,
            idp,
            ports,
            dir,
            sealing_key,
            _temp: temp,
        };
        // Ready when /robots.txt is served (Envoy) and an unauthenticated page
        // request is sent to the provider (preauth has its documents).
        let http = format!("127.0.0.1:{}", stack.ports.http);
        wait_for(
            "Envoy with the filter chain",
            Duration::from_secs(20),
            || {
                crate::envoy::http_request(&http, "GET", "/", &[("Accept", "text/html")], b"")
                    .is_ok_and(|r| r.status == 302)
            },
        )
        .map_err(|e| anyhow!("{e}; envoy log:\n{}", stack.envoy.log()))?;
        Ok(stack)
    }

    /// The ports in use.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The provider's issuer URL.
    pub fn issuer(&self) -> &str {
        self.idp.issuer()
    }

    /// The sealing key of this stack's sessions (base64), for tests that mint
    /// session cookies as the preauth filter would.
    pub fn sealing_key(&self) -> &str {
        &self.sealing_key
    }

    /// The sample apps ("sample", "admin").
    pub fn apps(&self) -> &[SampleApp] {
        &self.apps
    }

    /// Where state and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Envoy's log so far.
    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    /// The connector's process id (to check it listens on nothing).
    pub fn connector_pid(&self) -> u32 {
        self.connector.child.id()
    }

    /// The edge's process id.
    pub fn edge_pid(&self) -> u32 {
        self.edge.child.id()
    }
}

/// Blocks until Ctrl-C or SIGTERM (for the binaries that run a stack in the foreground).
pub fn wait_for_shutdown() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
