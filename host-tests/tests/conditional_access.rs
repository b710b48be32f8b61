//! Host tests on the release `portcullis_conditional_access.wasm`: the filter
//! reads the preauth handoff and the downstream address, and answers allow,
//! deny or step-up as the policies say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_host_tests::{Action, Filter, FilterState, Plugin};

const NOW: u64 = 1_800_000_000;

const CONFIG: &str = r#"{
  "hosts": {"hr.localhost": "hr"},
  "mfa": {"step_up_acr": "urn:portcullis:mfa"},
  "client_address": {"xff_trusted_hops": 0},
  "named_locations": {"blocked-net": {"cidrs": ["203.0.113.0/24", "2001:db8:bad::/48"]}},
  "apps": {"hr": {"groups": ["staff"]}},
  "policies": [
    {"name": "admin-mfa", "apps": ["hr"], "conditions": {"paths": ["/admin"]}, "grant": {"mfa": true}},
    {"name": "no-bad-net", "apps": ["*"], "conditions": {"locations": {"include": ["blocked-net"]}}, "grant": {"block": true}},
    {"name": "audit-posts", "state": "report-only", "apps": ["hr"], "conditions": {"methods": ["POST"]}, "grant": {"block": true}}
  ]
}"#;

fn plugin(config: &str) -> Plugin {
    let p = Plugin::builder(Filter::ConditionalAccess)
        .config(config)
        .now_secs(NOW)
        .start()
        .unwrap();
    assert!(p.configured(), "{:?}", p.log_messages());
    p
}

/// The handoff JSON the preauth filter writes (contract of `oidc::handoff`).
fn handoff(sub: &str, groups: &[&str], amr: &[&str], iat: u64) -> String {
    serde_json::json!({
        "v": 1,
        "app": "hr",
        "identity": {"sub": sub, "groups": groups, "amr": amr, "iat": iat, "exp": NOW + 3600}
    })
    .to_string()
}

struct Call<'a> {
    identity: Option<String>,
    source: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

fn call(p: &mut Plugin, c: Call<'_>) -> (u32, Action) {
    let fs = FilterState::default();
    if let Some(id) = &c.identity {
        fs.set("portcullis_identity", id.as_bytes().to_vec());
    }
    let s = p.new_stream_with(fs).unwrap();
    p.set_stream_property(s, "source.address", c.source)
        .unwrap();
    let action = p.request_headers(s, &c.headers, true).unwrap();
    (s, action)
}

fn browser<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "hr.localhost"),
        (":scheme", "https"),
        ("accept", "text/html,application/xhtml+xml"),
        ("x-request-id", "rid-1"),
    ];
    h.extend_from_slice(extra);
    h
}

fn staff(amr: &[&str]) -> Option<String> {
    Some(handoff("alice", &["staff"], amr, NOW - 60))
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let p = Plugin::builder(Filter::ConditionalAccess)
        .config(r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["admin"]}}]}"#)
        .start()
        .unwrap();
    assert!(!p.configured());
    assert!(
        p.log_messages()
            .iter()
            .any(|m| m.contains("policies[0].conditions.paths[0]")),
        "{:?}",
        p.log_messages()
    );
}

#[test]
fn admin_path_steps_a_browser_up_and_leaves_other_paths_alone() {
    let mut p = plugin(CONFIG);
    let (_, action) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: browser("/home", &[]),
        },
    );
    assert_eq!(action, Action::Continue);

    let (s, action) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: browser("/admin/users?sort=name", &[]),
        },
    );
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/.auth/login?rd=%2Fadmin%2Fusers%3Fsort%3Dname&acr=urn%3Aportcullis%3Amfa")
    );
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with(&format!("__Host-portcullis-stepup={NOW}.")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("Max-Age=600")
    );
    assert_eq!(p.metric("portcullis_ca.app.hr.result.step_up"), Some(1));
    assert_eq!(p.metric("portcullis_ca.app.hr.result.allow"), Some(1));
}

#[test]
fn api_clients_get_401_json_with_the_requirement() {
    let mut p = plugin(CONFIG);
    let (s, action) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: vec![
                (":method", "GET"),
                (":path", "/admin/api"),
                (":authority", "hr.localhost"),
                ("accept", "application/json"),
            ],
        },
    );
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("acr_values=\"urn:portcullis:mfa\""));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(body["acr_values"], "urn:portcullis:mfa");
    assert_eq!(body["policies"][0], "admin-mfa");
    assert_eq!(
        body["login"],
        "/.auth/login?rd=%2Fadmin%2Fapi&acr=urn%3Aportcullis%3Amfa"
    );
}

#[test]
fn a_step_up_that_comes_back_without_mfa_is_denied_and_mfa_passes() {
    let mut p = plugin(CONFIG);
    let (s, _) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: browser("/admin", &[]),
        },
    );
    let cookie = p.local_response(s).unwrap().header("set-cookie").unwrap();
    let marker = cookie.split(';').next().unwrap().to_string();

    // New session issued after the step-up was asked, still password only.
    let fresh_pwd = Some(handoff("alice", &["staff"], &["pwd"], NOW));
    let (s, action) = call(
        &mut p,
        Call {
            identity: fresh_pwd,
            source: "198.51.100.7:5000",
            headers: browser("/admin", &[("cookie", &marker)]),
        },
    );
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 403);
    let page = r.body_text();
    assert!(page.contains("mfa_required"), "{page}");
    assert!(page.contains("admin-mfa"), "{page}");
    assert!(page.contains("rid-1"), "{page}");

    // With MFA: through, and the marker is cleared on the response.
    let fresh_mfa = Some(handoff("alice", &["staff"], &["pwd", "otp", "mfa"], NOW));
    let (s, action) = call(
        &mut p,
        Call {
            identity: fresh_mfa,
            source: "198.51.100.7:5000",
            headers: browser("/admin", &[("cookie", &marker)]),
        },
    );
    assert_eq!(action, Action::Continue);
    p.response_headers(s, &[(":status", "200")], true).unwrap();
    let cleared = p.response_header(s, "set-cookie").unwrap();
    assert!(
        cleared.starts_with("__Host-portcullis-stepup=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[test]
fn users_outside_the_assignment_are_denied_not_assigned() {
    let mut p = plugin(CONFIG);
    let outsider = Some(handoff("mallory", &["guests"], &["pwd", "mfa"], NOW - 60));
    let (s, action) = call(
        &mut p,
        Call {
            identity: outsider,
            source: "198.51.100.7:5000",
            headers: vec![
                (":method", "GET"),
                (":path", "/"),
                (":authority", "hr.localhost"),
                ("accept", "application/json"),
                ("x-request-id", "rid-9"),
            ],
        },
    );
    assert_eq!(action, Action::Pause);
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 403);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "not_assigned");
    assert_eq!(body["request_id"], "rid-9");
    assert_eq!(p.metric("portcullis_ca.app.hr.result.deny"), Some(1));
    // Anonymous (no handoff) on an assigned app: sent to sign in.
    let (s, _) = call(
        &mut p,
        Call {
            identity: None,
            source: "198.51.100.7:5000",
            headers: browser("/x", &[]),
        },
    );
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/.auth/login?rd=%2Fx")
    );
}

#[test]
fn downstream_address_decides_location_ipv4_and_ipv6() {
    let mut p = plugin(CONFIG);
    for (source, blocked) in [
        ("203.0.113.50:4000", true),
        ("[2001:db8:bad::1]:4000", true),
        ("[2001:db8:900d::1]:4000", false),
        ("198.51.100.7:5000", false),
    ] {
        // A forged X-Forwarded-For is ignored with zero trusted hops.
        let (s, action) = call(
            &mut p,
            Call {
                identity: staff(&["mfa"]),
                source,
                headers: browser("/", &[("x-forwarded-for", "198.51.100.1")]),
            },
        );
        assert_eq!(action == Action::Pause, blocked, "{source}");
        if blocked {
            let r = p.local_response(s).unwrap();
            assert_eq!(r.status, 403);
            assert!(r.body_text().contains("location_blocked"));
        }
    }
}

#[test]
fn forwarded_for_is_read_through_trusted_hops_only() {
    let config = CONFIG.replace(r#""xff_trusted_hops": 0"#, r#""xff_trusted_hops": 1"#);
    let mut p = plugin(&config);
    let cases: &[(&str, Option<u32>)] = &[
        ("198.51.100.1, 203.0.113.9", Some(403)),
        ("203.0.113.9, 198.51.100.1", None),
        ("garbage", Some(400)),
    ];
    for (xff, want) in cases {
        let (s, _) = call(
            &mut p,
            Call {
                identity: staff(&["mfa"]),
                source: "10.0.0.2:1",
                headers: browser("/", &[("x-forwarded-for", xff)]),
            },
        );
        assert_eq!(p.local_response(s).map(|r| r.status), *want, "{xff}");
    }
    let (s, _) = call(
        &mut p,
        Call {
            identity: staff(&["mfa"]),
            source: "10.0.0.2:1",
            headers: browser("/", &[]),
        },
    );
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("client_address_invalid"));
}

#[test]
fn every_decision_is_logged_as_one_json_line_with_report_only_results() {
    let mut p = plugin(CONFIG);
    call(
        &mut p,
        Call {
            identity: staff(&["mfa"]),
            source: "198.51.100.7:5000",
            headers: vec![
                (":method", "POST"),
                (":path", "/form"),
                (":authority", "hr.localhost"),
                ("x-request-id", "rid-log"),
            ],
        },
    );
    let line = p
        .log_messages()
        .into_iter()
        .find(|m| m.contains("rid-log"))
        .expect("a decision line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"], "allow");
    assert_eq!(v["app"], "hr");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["client"], "198.51.100.7");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["report_only"][0]["name"], "audit-posts");
    assert_eq!(v["report_only"][0]["result"], "block");
    assert_eq!(v["time"], "2027-01-15T08:00:00Z");
}

#[test]
fn a_malformed_handoff_is_an_error_not_anonymous() {
    let mut p = plugin(CONFIG);
    let (s, action) = call(
        &mut p,
        Call {
            identity: Some("{not json".into()),
            source: "198.51.100.7:5000",
            headers: browser("/", &[]),
        },
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(p.local_response(s).unwrap().status, 500);
    let (s, action) = call(
        &mut p,
        Call {
            identity: staff(&["mfa"]),
            source: "198.51.100.7:5000",
            headers: browser("/a/%zz", &[]),
        },
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(p.local_response(s).unwrap().status, 400);
}

/// Deterministic cost in the test host: wasm fuel (about one unit per wasm
/// instruction, the same on any machine) per decision with 20 policies that all
/// apply, including the decision line. Measured 155,428 on 2026-11-22;
/// 154,563 on 2026-12-01 with the path-equivalence rule (issue 12), 159,019
/// with the route's app (issue 12) alone, 157,689 with both (+1.5%); the
/// budget allows 25% above that, so a regression fails here even when the
/// wall-clock benchmarks are too noisy to show it. Not a timing.
#[test]
fn cost_of_a_decision_with_twenty_policies() {
    let mut policies = Vec::new();
    for i in 0..20 {
        policies.push(format!(
            r#"{{"name": "p{i}", "apps": ["hr"], "assignments": {{"include": {{"groups": ["staff", "g{i}"]}}, "exclude": {{"users": ["x{i}"]}}}},
                "conditions": {{"paths": ["/app{i}", "/"], "methods": ["GET", "POST"], "locations": {{"include": ["all"], "exclude": ["office"]}}}},
                "grant": {{"require": "one", "mfa": true, "claims": {{"device": "ok"}}}}, "session": {{"sign_in_frequency": 86400}}}}"#
        ));
    }
    let config = format!(
        r#"{{"named_locations": {{"office": {{"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}}},
            "apps": {{"hr": {{"users": ["*"]}}}}, "policies": [{}]}}"#,
        policies.join(",")
    );
    let mut p = plugin(&config);
    let runs = 50u64;
    let before = p.fuel_consumed();
    let started = std::time::Instant::now();
    for _ in 0..runs {
        let (s, action) = call(
            &mut p,
            Call {
                identity: staff(&["pwd", "mfa"]),
                source: "198.51.100.7:5000",
                headers: browser("/app3/x", &[]),
            },
        );
        assert_eq!(action, Action::Continue);
        p.finish_stream(s).unwrap();
    }
    let per = (p.fuel_consumed() - before) / runs;
    let wall = started.elapsed().as_micros() / u128::from(runs);
    println!(
        "conditional access, 20 policies: {per} wasm fuel units per request \
         (filter callback incl. logging); {wall} µs wall per request in the test host \
         (stream creation included; informational only)"
    );
    const BUDGET: u64 = 194_000;
    assert!(per <= BUDGET, "{per} > {BUDGET}");
}

/// Header values need not be UTF-8: reading them must never trap the VM.
#[test]
fn non_utf8_header_values_never_trap() {
    let mut p = plugin(CONFIG);
    let fs = FilterState::default();
    fs.set("portcullis_identity", staff(&["pwd"]).unwrap().into_bytes());
    let s = p.new_stream_with(fs).unwrap();
    p.set_stream_property(s, "source.address", "198.51.100.7:5000")
        .unwrap();
    let headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), b"/".to_vec()),
        (":authority".into(), b"hr.localhost".to_vec()),
        ("accept".into(), b"text/html".to_vec()),
        ("user-agent".into(), b"Mozilla/5.0 \xff\xfe".to_vec()),
        ("x-request-id".into(), b"rid-\xe9".to_vec()),
    ];
    let a = p.request_headers_raw(s, headers, true).unwrap();
    assert_eq!(a, Action::Continue, "{:?}", p.log_messages());
    // The VM is still alive for the next request.
    let (_, a) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: browser("/", &[]),
        },
    );
    assert_eq!(a, Action::Continue);
}

/// The decision log follows Envoy's log level: at `warn` the line is not even
/// formatted, and the decision is the same.
#[test]
fn decision_lines_follow_the_hosts_log_level() {
    for (level, logged) in [(2u32, true), (3u32, false)] {
        let mut p = Plugin::builder(Filter::ConditionalAccess)
            .config(CONFIG)
            .now_secs(NOW)
            .log_level(level)
            .start()
            .unwrap();
        assert!(p.configured());
        let (_, a) = call(
            &mut p,
            Call {
                identity: staff(&["pwd"]),
                source: "198.51.100.7:5000",
                headers: browser("/", &[]),
            },
        );
        assert_eq!(a, Action::Continue);
        let lines = p
            .log_messages()
            .into_iter()
            .filter(|m| m.contains("\"request_id\":\"rid-1\""))
            .count();
        assert_eq!(lines, usize::from(logged), "level {level}");
    }
}

/// Issue 12, point 3: a configuration naming an app that `apps` does not
/// define does not load, and the log names the field.
#[test]
fn a_misspelt_app_id_does_not_load() {
    for (config, field) in [
        (
            r#"{"apps": {"my-app": {"groups": ["staff"]}},
                "policies": [{"name": "p", "apps": ["myapp"], "grant": {"mfa": true}}]}"#,
            "policies[0].apps[0]",
        ),
        (
            r#"{"apps": {"myapp": {"groups": ["staff"]}}, "hosts": {"myapp.localhost": "my-app"}}"#,
            "hosts.myapp.localhost",
        ),
        (r#"{"apps": {"myapp": {}}}"#, "apps.myapp"),
    ] {
        let p = Plugin::builder(Filter::ConditionalAccess)
            .config(config)
            .start()
            .unwrap();
        assert!(!p.configured(), "{config}");
        assert!(
            p.log_messages().iter().any(|m| m.contains(field)),
            "{field}: {:?}",
            p.log_messages()
        );
    }
}

fn routed_call(
    p: &mut Plugin,
    route_app: Option<&str>,
    identity: Option<String>,
    host: &str,
) -> (u32, Action) {
    let fs = FilterState::default();
    if let Some(id) = &identity {
        fs.set("portcullis_identity", id.as_bytes().to_vec());
    }
    let s = p.new_stream_with(fs).unwrap();
    if let Some(app) = route_app {
        p.set_route_app(s, app).unwrap();
    }
    p.set_stream_property(s, "source.address", "198.51.100.7:5000")
        .unwrap();
    let mut h = browser("/", &[]);
    h.retain(|(k, _)| *k != ":authority");
    h.push((":authority", host));
    let a = p.request_headers(s, &h, true).unwrap();
    (s, a)
}

/// Issue 12, points 2 and 3: the app judged is the route's; an app without an
/// entry is `not_assigned` (it used to be judged by `*` policies alone), and
/// an identity handed over for another app is refused.
#[test]
fn the_route_app_is_judged_and_unknown_apps_are_not_assigned() {
    let mut p = plugin(CONFIG);
    // Status and whether the denial page names `code`.
    let denied = |p: &Plugin, s: u32, code: &str| {
        let r = p.local_response(s).expect("a denial");
        (r.status, r.body_text().contains(code))
    };
    let dave = || Some(handoff("dave", &[], &["pwd"], NOW - 60));
    // Routed to hr: dave (not in staff) is not assigned, whatever the Host.
    let (s, a) = routed_call(&mut p, Some("hr"), dave(), "evil.example");
    assert_eq!(a, Action::Pause);
    assert_eq!(denied(&p, s, "not_assigned"), (403, true));
    // A Host spelling the hosts map does not list, without route metadata:
    // no app, so not_assigned, for anonymous requests too.
    for host in ["hr.localhost.", "hr.localhost.:10000", "HR.LOCALHOST..:1"] {
        let (s, a) = routed_call(&mut p, None, None, host);
        assert_eq!(a, Action::Pause, "{host}");
        assert_eq!(denied(&p, s, "not_assigned"), (403, true), "{host}");
    }
    // The route names an app without an entry: not_assigned, even for staff.
    let wiki_staff = serde_json::json!({
        "v": 1, "app": "wiki",
        "identity": {"sub": "alice", "groups": ["staff"], "amr": ["pwd", "mfa"], "iat": NOW - 60, "exp": NOW + 3600}
    })
    .to_string();
    let (s, a) = routed_call(&mut p, Some("wiki"), Some(wiki_staff), "wiki.localhost");
    assert_eq!(a, Action::Pause);
    assert_eq!(denied(&p, s, "not_assigned"), (403, true));
    assert!(p
        .log_messages()
        .iter()
        .any(|m| m.contains("`wiki` has no entry in `apps`")));
    assert_eq!(p.metric("portcullis_ca.app.wiki.result.deny"), Some(1));
    // hr's identity on a request routed to another app: app_mismatch.
    let (s, a) = routed_call(&mut p, Some("wiki"), staff(&["pwd", "mfa"]), "hr.localhost");
    assert_eq!(a, Action::Pause);
    assert_eq!(denied(&p, s, "app_mismatch"), (500, true));
    // A route value that is not an app id: route_app_unknown.
    let (s, a) = routed_call(&mut p, Some("h r"), staff(&["pwd", "mfa"]), "hr.localhost");
    assert_eq!(a, Action::Pause);
    assert_eq!(denied(&p, s, "route_app_unknown"), (500, true));
    // The control: staff routed to hr pass.
    let (s, a) = routed_call(&mut p, Some("hr"), staff(&["pwd"]), "hr.localhost");
    assert_eq!(a, Action::Continue, "{:?}", p.local_response(s));
}

/// The spellings of the issue, raw and as Envoy forwards them (after
/// `normalize_path` and `merge_slashes`): the condition on `/admin` asks for
/// the step-up, or the path is refused before any policy (`ambiguous_path`,
/// with the request id). None goes on without MFA.
#[test]
fn every_spelling_of_a_path_condition_steps_up_or_is_refused() {
    let mut p = plugin(CONFIG);
    for path in [
        "/admin",
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
        "/..;/admin",
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
        "/x/../admin",
        "//admin",
        "/admin\\x",
    ] {
        let (s, action) = call(
            &mut p,
            Call {
                identity: staff(&["pwd"]),
                source: "198.51.100.7:5000",
                headers: browser(path, &[]),
            },
        );
        assert_eq!(action, Action::Pause, "{path} went on without MFA");
        let r = p.local_response(s).unwrap();
        match r.status {
            302 => assert!(
                r.header("location")
                    .unwrap()
                    .ends_with("&acr=urn%3Aportcullis%3Amfa"),
                "{path}"
            ),
            400 => {
                assert!(r.body_text().contains("ambiguous_path"), "{path}");
                assert!(r.body_text().contains("rid-1"), "{path}");
            }
            other => panic!("{path}: {other} {}", r.body_text()),
        }
    }
    // JSON for API clients, counted as a denial.
    let mut h = browser("/admin%2f", &[]);
    h.retain(|(n, _)| *n != "accept");
    h.push(("accept", "application/json"));
    let (s, _) = call(
        &mut p,
        Call {
            identity: staff(&["pwd"]),
            source: "198.51.100.7:5000",
            headers: h,
        },
    );
    let r = p.local_response(s).unwrap();
    assert_eq!(r.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "ambiguous_path");
    assert_eq!(v["request_id"], "rid-1");
    assert!(p.metric("portcullis_ca.app.hr.result.deny").unwrap_or(0) >= 1);
}

#[test]
fn an_app_loosens_its_path_rule_by_name() {
    let config = CONFIG.replace(
        r#""apps": {"hr": {"groups": ["staff"]}}"#,
        r#""apps": {"hr": {"groups": ["staff"], "path_rules": {"allow_encoded_slash": true, "case_sensitive": true}}}"#,
    );
    let mut p = plugin(&config);
    for (path, status) in [
        ("/x%2fy", None),
        ("/ADMIN", None),
        ("/admin%2fx", None),
        ("/admin;x", Some(302)),
        ("/x%3b", Some(400)),
    ] {
        let (s, action) = call(
            &mut p,
            Call {
                identity: staff(&["pwd"]),
                source: "198.51.100.7:5000",
                headers: browser(path, &[]),
            },
        );
        match status {
            None => assert_eq!(action, Action::Continue, "{path}"),
            Some(st) => assert_eq!(p.local_response(s).unwrap().status, st, "{path}"),
        }
    }
    let p = Plugin::builder(Filter::ConditionalAccess)
        .config(CONFIG.replace(
            r#""apps": {"hr": {"groups": ["staff"]}}"#,
            r#""apps": {"hr": {"groups": ["staff"], "path_rules": {"case_insensitive": true}}}"#,
        ))
        .start()
        .unwrap();
    assert!(!p.configured());
    assert!(
        p.log_messages()
            .iter()
            .any(|m| m.contains("apps.hr.path_rules.case_insensitive")),
        "{:?}",
        p.log_messages()
    );
}
