//! The whole system on free ports, for scripts (`scripts/bench.py`'s tunnel
//! scenarios): `portcullis-stack STATE_DIR` starts what `make demo` starts,
//! prints one JSON line with its ports, issuer, state directory and the edge's
//! and connector's process ids, and runs until SIGTERM or Ctrl-C. The edge also
//! opens its plain h2c TCP listener for Envoy (`insecure_envoy_h2c_tcp`, reported
//! as `edge_insecure_tcp`), on loopback, for the benchmarks' load generator.
//! `PORTCULLIS_LAYOUT=split` runs Envoy with one filter per stage
//! (`envoy-configs/demo-split.yaml`) instead of the all-in-one module.

use portcullis_e2e::stack::{Layout, Ports, Stack, StackOptions};
use std::io::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let Some(state_dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: portcullis-stack STATE_DIR");
    };
    let layout = match std::env::var("PORTCULLIS_LAYOUT") {
        Ok(v) => Layout::parse(&v)?,
        Err(_) => Layout::default(),
    };
    let insecure = portcullis_e2e::free_port()?;
    let stack = Stack::start(StackOptions {
        layout,
        insecure_edge_tcp: Some(insecure),
        ports: Ports::free()?,
        state_dir: Some(state_dir),
        extra_hosts: Vec::new(),
    })?;
    let p = stack.ports();
    let line = serde_json::json!({
        "issuer": stack.issuer(),
        "dir": stack.dir(),
        "edge_pid": stack.edge_pid(),
        "connector_pid": stack.connector_pid(),
        "ports": {
            "http": p.http, "https": p.https, "envoy_admin": p.envoy_admin, "idp": p.idp,
            "edge_registration": p.edge_registration, "edge_tunnel": p.edge_tunnel,
            "edge_insecure_tcp": insecure, "edge_metrics": p.edge_metrics,
            "app_sample": p.app_sample, "app_admin": p.app_admin,
        },
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    portcullis_e2e::stack::wait_for_shutdown()?;
    drop(stack);
    Ok(())
}
