//! The second OpenID provider of the test suite: django-oauth-toolkit
//! (`tests/idp-django/server.py`, installed into `.tools/venv` by `scripts/setup.sh`).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running django-oauth-toolkit provider, stopped on drop.
#[derive(Debug)]
pub struct DjangoIdp {
    child: Child,
    issuer: String,
    port: u16,
}

/// The Python that has the provider's packages: `$PORTCULLIS_OP_PYTHON`, else `.tools/venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("PORTCULLIS_OP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join(".tools/venv/bin/python"))
}

impl DjangoIdp {
    /// Starts the provider on a free port with the clients file `clients` (JSON text, the
    /// format of `tests/idp`); its state lives in `dir`.
    pub fn start(clients: &str, dir: &Path) -> Result<Self> {
        let root = crate::repo_root();
        let python = python();
        let ok = Command::new(&python)
            .args(["-c", "import django, oauth2_provider"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!(
                "{} cannot import django-oauth-toolkit: run scripts/setup.sh (make test does)",
                python.display()
            );
        }
        let config = dir.join("op-clients.json");
        std::fs::write(&config, clients)?;
        let state = dir.join("op-state");
        let port = crate::free_port()?;
        let mut child = Command::new(&python)
            .current_dir(&root)
            .args(["tests/idp-django/server.py", "--quiet", "--port"])
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting tests/idp-django/server.py")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = tx.send(issuer.trim().to_string());
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("django-oauth-toolkit did not print READY within 60 s");
            }
        };
        Ok(Self {
            child,
            issuer,
            port,
        })
    }

    /// The issuer URL, e.g. `http://127.0.0.1:41234/o`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DjangoIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
