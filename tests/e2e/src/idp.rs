//! The real OpenID provider (`oidc-provider` on node, `tests/idp/server.mjs`) for end-to-end tests.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running provider, stopped on drop.
#[derive(Debug)]
pub struct Idp {
    child: Child,
    issuer: String,
    port: u16,
}

impl Idp {
    /// Starts the provider on a free port with the clients file `clients` (JSON text).
    pub fn start(clients: &str, dir: &Path) -> Result<Self> {
        Self::start_on(clients, dir, 0, None)
    }

    /// Starts the provider on `port` (0: a free one); with `keys_file`, its
    /// signing keys persist across restarts.
    pub fn start_on(
        clients: &str,
        dir: &Path,
        port: u16,
        keys_file: Option<&Path>,
    ) -> Result<Self> {
        let root = crate::repo_root();
        if !root.join("tests/idp/node_modules").exists() {
            bail!("tests/idp/node_modules is missing: run `make test` or scripts/setup.sh");
        }
        let config = dir.join("clients.json");
        std::fs::write(&config, clients)?;
        let mut cmd = Command::new("node");
        cmd.current_dir(&root)
            .args([
                "tests/idp/server.mjs",
                "--quiet",
                "--port",
                &port.to_string(),
                "--config",
            ])
            .arg(&config);
        if let Some(keys) = keys_file {
            cmd.arg("--keys-file").arg(keys);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting node tests/idp/server.mjs")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.trim().to_string());
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                bail!("the OpenID provider did not print READY within 30 s");
            }
        };
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| anyhow!("cannot read a port from issuer {issuer}"))?;
        Ok(Self {
            child,
            issuer,
            port,
        })
    }

    /// The issuer URL, e.g. `http://127.0.0.1:41234`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
