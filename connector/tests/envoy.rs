//! End to end with stock Envoy: Envoy → (h2c on the edge's Unix socket) edge → tunnel →
//! connector → sample app.
//! Envoy comes from `ENVOY_BIN` (default /work/main/.tools/venv/bin/envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    portcullis_e2e::free_port().unwrap()
}

/// `$ENVOY_BIN` or the project's virtualenv (the same lookup as the end-to-end tests).
fn envoy_bin() -> PathBuf {
    portcullis_e2e::envoy::envoy_bin().unwrap()
}

fn bootstrap(listen: u16, admin: u16, edge: &std::path::Path) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: hello
              domains: ["hello.localhost", "hello.localhost:*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: portcullis_edge, timeout: 30s }}
                request_headers_to_add:
                - header: {{ key: x-portcullis-app, value: hello }}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: portcullis_edge
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: portcullis_edge
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe: {{ path: {edge} }}
"#,
        edge = edge.display()
    )
}

#[tokio::test]
async fn stock_envoy_to_edge_to_connector_to_sample_app() {
    let bin = envoy_bin();
    let w = world_with(
        |b| vec![app("hello", "default", &format!("http://{}", b.addr))],
        |file| {
            file.listen.insecure_envoy_h2c_tcp = None;
            file.listen.envoy_socket = Some(file.state_dir.join("envoy.sock"));
        },
    )
    .await;
    let cfg = register(&w.edge, &w.idp, &w.dir.path().join("c1"), "default").await;
    let c = start_connector(&cfg).await;
    wait_tunnels(&w.edge, 2).await;

    let (listen, admin) = (free_port(), free_port());
    let yaml = w.dir.path().join("envoy.yaml");
    std::fs::write(
        &yaml,
        bootstrap(listen, admin, w.edge.handle.envoy_socket.as_ref().unwrap()),
    )
    .unwrap();
    let base_id = 1000 + rand::random::<u32>() % 50_000;
    let _envoy = KillOnDrop(
        Command::new(&bin)
            .arg("-c")
            .arg(&yaml)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--concurrency",
                "1",
                "--disable-hot-restart",
            ])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let client = client();
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http::Request::get(&ready)
            .body(portcullis_connector::body::empty())
            .unwrap();
        if let Ok(resp) = client.request(r).await {
            if resp.status() == 200 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "Envoy not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let through_envoy = |path: &str| {
        http::Request::get(format!("http://127.0.0.1:{listen}{path}"))
            .header("host", "hello.localhost")
            .header("cookie", "__Host-portcullis=sealed; lang=en")
            .header("accept", "application/json")
            .body(portcullis_connector::body::empty())
            .unwrap()
    };
    let (status, _, body) = send(&client, through_envoy("/echo?via=envoy")).await;
    assert_eq!(status, 200, "{body:?}");
    let v = json(&body);
    assert_eq!(v["app"], "hello");
    assert_eq!(v["uri"], "/echo?via=envoy");
    let h = &v["headers"];
    assert_eq!(
        h["cookie"], "lang=en",
        "the session cookie never reaches the app"
    );
    assert!(
        h["x-request-id"].as_str().unwrap().len() >= 16,
        "Envoy's request id is passed on"
    );
    assert_eq!(h["x-forwarded-host"], "hello.localhost");
    let xff = h["x-forwarded-for"].as_str().unwrap();
    // Envoy appends the client's address, the edge appends Envoy's, the connector the edge's.
    let hops: Vec<&str> = xff.split(", ").collect();
    assert_eq!(hops.len(), 3, "{xff}");
    assert_eq!(&hops[1..], ["127.0.0.1", "127.0.0.1"], "{xff}");
    // A 30 KiB header (under Envoy's 60 KiB limit) reaches the app through the
    // edge's listener, the tunnel and the connector (the edge's HTTP/2 side used
    // to refuse anything over 16 KiB).
    let big = "b".repeat(30 * 1024);
    let mut r = through_envoy("/echo");
    r.headers_mut().insert("x-big", big.parse().unwrap());
    let (status, _, body) = send(&client, r).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        json(&body)["headers"]["x-big"].as_str().map(str::len),
        Some(big.len())
    );
    // A 1 MiB download through the whole chain.
    let (status, _, body) = send(&client, through_envoy("/bytes?n=1048576")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1 << 20);

    // Without a live connector, Envoy passes the edge's 502 connector_unavailable on.
    c.stop().await;
    wait_tunnels(&w.edge, 0).await;
    let (status, headers, body) = send(&client, through_envoy("/echo")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-portcullis-error"], "connector_unavailable");
    assert_eq!(json(&body)["error"], "connector_unavailable");
    w.edge.stop().await;
}
