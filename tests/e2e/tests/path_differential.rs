//! Differential test of the path rule against stock Envoy: a generated list
//! of a few thousand request paths (encodings, dots, slashes and backslashes,
//! `;`, case, control bytes, non-ASCII) goes once through an Envoy with the
//! path options of every shipped config (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action: KEEP_UNCHANGED`; `configs.rs` pins
//! them) and the real conditional-access module with a policy on `/admin`.
//!
//! For every path it checks:
//! - Envoy refuses it exactly when [`portcullis_core::path::normalize`] does;
//! - otherwise the path the filter judged (its decision log line), the path
//!   the router forwarded (the access log's `%REQ(:PATH)%`, and the
//!   `x-router-path` response header of the direct response) and
//!   `normalize` of the raw path are one and the same;
//! - the filter's answer is the core's: `ambiguous_path` when the rule
//!   refuses the path, `policy_blocked:admin` when it lies under `/admin`,
//!   else the route's own answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_core::path::{normalize, PathRules};
use portcullis_e2e::envoy::{http_request_raw, Envoy, EnvoyConfig};
use portcullis_e2e::free_port;
use std::collections::HashMap;
use std::time::Duration;

const CONFIG: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: ADMIN_PORT }
static_resources:
  listeners:
  - name: http
    address:
      socket_address: { address: 127.0.0.1, port_value: LISTEN_PORT }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ACCESS_LOG
              log_format:
                text_format_source:
                  inline_string: "%REQ(X-REQUEST-ID)%\t%RESPONSE_CODE%\t%REQ(:PATH)%\n"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "routed" } }
                response_headers_to_add:
                - header: { key: x-router-path, value: "%REQ(:PATH)%" }
          http_filters:
          - name: portcullis.conditional_access
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: portcullis_conditional_access
                root_id: portcullis_conditional_access
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: |
                    {
                      "default_app": "t",
                      "apps": {"t": {"users": ["*"]}},
                      "policies": [
                        {"name": "admin", "apps": ["t"], "conditions": {"paths": ["/admin"]},
                         "grant": {"block": true}}
                      ]
                    }
                vm_config:
                  vm_id: portcullis_conditional_access
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: target/wasm32-wasip1/release/portcullis_conditional_access.wasm
                failure_policy: FAIL_CLOSED
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

/// Pieces paths are made of: every family an attacker or a sloppy client uses.
const PIECES: &[&str] = &[
    "admin",
    "ADMIN",
    "Admin",
    "public",
    "a",
    "b",
    "x",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    ".%2e",
    "%2e.",
    "%2e%2e",
    "",
    ";",
    ";x",
    ";x=1",
    "..;",
    ".;",
    "%3b",
    "%3B",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%25",
    "%252f",
    "%2561",
    "%25u0041",
    "%41",
    "%61",
    "%7e",
    "%7E",
    "%2D",
    "%5f",
    "%20",
    "%09",
    "%0d",
    "%7f",
    "%00",
    "%",
    "%g",
    "%4",
    "%%30",
    "%%34%31",
    "%u0041",
    "~",
    "-",
    "_",
    "!",
    "$",
    "&",
    "'",
    "(",
    ")",
    "*",
    "+",
    ",",
    ":",
    "=",
    "@",
    "[",
    "]",
    "\"",
    "<",
    ">",
    "^",
    "`",
    "{",
    "|",
    "}",
    "%22",
    "%3C",
    "%c3%a9",
    "%C0%AF",
    "\u{e9}",
    " ",
    "\t",
    "#",
    "\u{7f}",
    "\u{1}",
    "robots.txt",
    ".auth",
    "login",
];

/// Beginnings that are, or look like, the protected `/admin`.
const ADMIN_STARTS: &[&str] = &[
    "admin", "ADMIN", "Admin", "%61dmin", "%41DMIN", "admin;x", "admin;", "x/..", "x/%2e%2e",
    "x/..;", ";", "admin.", "admin%2e", "adm%69n", "admin\\x", "admin%2f",
];

const SEPARATORS: &[&str] = &["/", "/", "/", "//", "\\", "/./", "/../"];

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn generated_paths() -> Vec<String> {
    let mut out = Vec::new();
    // Every printable byte raw, and every byte escaped (both hex cases), in
    // the middle and at the end of a segment.
    for b in 0x21u8..0x7f {
        if b != b'?' {
            let c = char::from(b);
            out.push(format!("/a{c}b"));
            out.push(format!("/admin{c}"));
        }
    }
    for b in 0u8..=255 {
        out.push(format!("/a%{b:02x}b"));
        out.push(format!("/admin%{b:02X}"));
    }
    // The spellings of issue 12.
    for p in [
        "/ADMIN",
        "/Admin",
        "/aDmIn/",
        "/%41dmin",
        "/ADMIN%2f",
        "/admin;x",
        "/admin;",
        "/admin;/x",
        "/;/admin",
        "/admin..;/",
        "/%2e%2e;/admin",
        "/admin%3b",
        "/admin%2f",
        "/admin%2F",
        "/%2fadmin",
        "/x/..%2fadmin",
        "/%2561dmin",
        "/admin.",
        "/admin%2e",
        "/admin%20",
        "/admin%09",
    ] {
        out.push(p.to_string());
    }
    let mut rng = Rng(0x5eed_0f9a_7c3d_2b1e);
    while out.len() < 4000 {
        let mut p = String::from(if rng.below(8) == 0 { "//" } else { "/" });
        // A third start like the protected path.
        if rng.below(3) == 0 {
            p.push_str(ADMIN_STARTS[rng.below(ADMIN_STARTS.len())]);
            p.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
        }
        for i in 0..1 + rng.below(5) {
            if i > 0 {
                p.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
            }
            for _ in 0..1 + rng.below(3) {
                p.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        if rng.below(6) == 0 {
            p.push('/');
        }
        // A space or tab at the end would only separate the request target
        // from the HTTP version: not a path byte.
        let p = p.trim_end_matches([' ', '\t']).to_string();
        let mut p = p;
        if rng.below(10) == 0 {
            p.push_str("?q=/../x%2F");
        }
        out.push(p);
    }
    out
}

/// What one raw request got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    router_path: Option<String>,
    body: String,
}

fn send(addr: &str, id: usize, path: &str) -> Answer {
    let request_id = format!("path-{id}");
    let r = http_request_raw(
        addr,
        "GET",
        path.as_bytes(),
        &[
            ("Host", "t"),
            ("Accept", "application/json"),
            ("x-request-id", &request_id),
        ],
    )
    .unwrap_or_else(|e| panic!("{path:?}: {e}"));
    Answer {
        status: r.status,
        router_path: r.header("x-router-path").map(str::to_string),
        body: r.text(),
    }
}

/// The path each request's decision log line names, by request id.
fn judged_paths(log: &str) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for line in log.lines() {
        let Some(start) = line.find("{\"time\":") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[start..]) else {
            continue;
        };
        let id = v["request_id"].as_str().unwrap_or_default().to_string();
        let path = v["path"].as_str().unwrap_or_default().to_string();
        let code = v["code"].as_str().unwrap_or("allow").to_string();
        out.insert(id, (path, code));
    }
    out
}

#[test]
fn the_core_normalises_every_path_as_envoy_does() {
    let paths = generated_paths();
    let (listen, admin) = (free_port().unwrap(), free_port().unwrap());
    let dir = portcullis_e2e::envoy::TempDir::new("portcullis-paths").unwrap();
    let access_log = dir.path().join("access.log");
    let config = EnvoyConfig::from_text(
        CONFIG
            .replace("ADMIN_PORT", &admin.to_string())
            .replace("LISTEN_PORT", &listen.to_string())
            .replace("ACCESS_LOG", &access_log.to_string_lossy()),
    );
    let envoy = Envoy::start(&config, admin).unwrap();
    let addr = format!("127.0.0.1:{listen}");
    let answers: Vec<Answer> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| send(&addr, i, p))
        .collect();
    // Envoy writes its access log in the background: wait for every line.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut log_text = String::new();
    while std::time::Instant::now() < deadline {
        log_text = std::fs::read_to_string(&access_log).unwrap_or_default();
        if log_text.lines().count() >= paths.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let judged = judged_paths(&envoy.log());
    let routed: HashMap<String, (u16, String)> = log_text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let id = f.next()?.to_string();
            let code = f.next()?.parse().ok()?;
            Some((id, (code, f.next()?.to_string())))
        })
        .collect();

    let rules = PathRules::default();
    let admin_prefix = rules.prefix("/admin").unwrap();
    let (mut refused, mut ambiguous, mut blocked, mut allowed) = (0, 0, 0, 0);
    for (i, (raw, answer)) in paths.iter().zip(&answers).enumerate() {
        let id = format!("path-{i}");
        let has_query = raw.contains('?');
        let query = raw.find('?').map_or("", |q| &raw[q..]);
        let core = normalize(raw);
        let Some((judged_path, code)) = judged.get(&id) else {
            // Envoy refused it before any filter.
            assert_eq!(answer.status, 400, "{raw:?}: {answer:?}");
            if !has_query {
                assert!(
                    core.is_err(),
                    "{raw:?}: Envoy refused it, the core gave {core:?}"
                );
            }
            refused += 1;
            continue;
        };
        let core = core.unwrap_or_else(|e| panic!("{raw:?}: Envoy took it, the core refused: {e}"));
        // The filter judged exactly what the core computes...
        assert_eq!(judged_path, &core, "{raw:?}: filter vs core");
        // ...and the router forwarded the same path (with the query as sent).
        let (status, router) = routed.get(&id).unwrap_or_else(|| {
            panic!(
                "{raw:?}: no access log line for {id} ({} lines)",
                routed.len()
            )
        });
        assert_eq!(*router, format!("{core}{query}"), "{raw:?}: router vs core");
        assert_eq!(*status, answer.status, "{raw:?}");
        // The decision is the core's.
        match rules.canonicalize(&core) {
            Err(_) => {
                assert_eq!(code, "ambiguous_path", "{raw:?}");
                assert_eq!(answer.status, 400, "{raw:?}");
                assert!(answer.body.contains("ambiguous_path"), "{raw:?}");
                ambiguous += 1;
            }
            Ok(p) if p.is_under(&admin_prefix) => {
                assert_eq!(code, "policy_blocked:admin", "{raw:?}");
                assert_eq!(answer.status, 403, "{raw:?}");
                blocked += 1;
            }
            Ok(_) => {
                assert_eq!(code, "allow", "{raw:?}: {answer:?}");
                assert_eq!(answer.status, 200, "{raw:?}");
                assert_eq!(
                    answer.router_path.as_deref(),
                    Some(format!("{core}{query}").as_str()),
                    "{raw:?}"
                );
                allowed += 1;
            }
        }
    }
    println!(
        "{} paths: {refused} refused by Envoy, {ambiguous} ambiguous_path, {blocked} under /admin, {allowed} routed",
        paths.len()
    );
    // The list covers every outcome.
    assert!(refused > 100 && ambiguous > 500 && blocked > 100 && allowed > 500);
}
