//! `make demo`: the whole system in the foreground on the ports of DESIGN.md;
//! Ctrl-C (or SIGTERM) stops everything it started. State and logs go to `.demo/`.

use portcullis_e2e::stack::{Layout, Ports, Stack, StackOptions};

fn main() -> anyhow::Result<()> {
    // `--layout split` (`make demo LAYOUT=split`): one filter per stage.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layout = match args.as_slice() {
        [] => Layout::default(),
        [flag, value] if flag == "--layout" => Layout::parse(value)?,
        _ => anyhow::bail!("usage: portcullis-demo [--layout all-in-one|split]"),
    };
    let root = portcullis_e2e::repo_root();
    let state_dir = root.join(".demo");
    println!("[demo] starting the provider, the apps, the edge, a connector and Envoy…");
    let stack = Stack::start(StackOptions {
        layout,
        ports: Ports::demo(),
        state_dir: Some(state_dir.clone()),
        insecure_edge_tcp: None,
        extra_hosts: Vec::new(),
    })?;
    let p = stack.ports();
    println!(
        r#"
Portcullis demo is running (state and logs in {dir}):

  Sample app (default host)   http://127.0.0.1:{http}/   and   https://127.0.0.1:{https}/
      /headers                shows the headers and cookies the app receives (identity yes, session cookie no)
      /.auth/me               your identity as Portcullis sees it;   /.auth/logout signs you out
  Admin app                   http://admin.localhost:{http}/   (assigned to the group "staff")
      /admin                  requires multi-factor authentication: a password-only session is stepped up
  robots.txt                  http://127.0.0.1:{http}/robots.txt  (no sign-in; never reaches an app)

  OpenID provider             {issuer}
  Users (password = <name>-password, one-time code 123456):
      alice   staff                          password only (cannot do MFA: /admin is refused)
      erin    staff                          password; asked for the code when a step-up needs it
      bob     staff, admins                  always password + code
      dave    no groups                      not assigned to the admin app
      carol   portcullis-connector-admins    may register connectors (the demo registered one with her token)

  Path of a request: Envoy :{http}/:{https} (robots → preauth → conditional-access → cookie, {filters})
      → edge {edge} (Unix socket) → connector tunnel (mTLS, dialled out to :{tunnel}) → app on 127.0.0.1:{a1}/{a2}
  Envoy admin http://127.0.0.1:{admin}/   edge metrics http://127.0.0.1:{metrics}/metrics

Press Ctrl-C to stop."#,
        dir = state_dir.display(),
        filters = match layout {
            Layout::AllInOne => "one filter: portcullis.wasm, envoy-configs/demo.yaml",
            Layout::Split => "one filter each, envoy-configs/demo-split.yaml",
        },
        http = p.http,
        https = p.https,
        issuer = stack.issuer(),
        edge = stack.dir().join("edge/envoy.sock").display(),
        tunnel = p.edge_tunnel,
        a1 = p.app_sample,
        a2 = p.app_admin,
        admin = p.envoy_admin,
        metrics = p.edge_metrics,
    );
    portcullis_e2e::stack::wait_for_shutdown()?;
    println!("\n[demo] stopping…");
    drop(stack);
    println!("[demo] stopped");
    Ok(())
}
