//! Table-driven tests of the policy language and the evaluator.

use super::config::*;
use super::eval::*;
use super::log::{decision_log, rfc3339};
use crate::identity::Identity;
use std::net::IpAddr;

const NOW: u64 = 1_800_000_000;

/// Parses a configuration. A test configuration without `apps` gets an entry
/// `{"users": ["*"]}` (every request, judged by the policies alone) for `hr`
/// and every app its policies, `hosts` and `default_app` name, so that the
/// tests of the policy language need not repeat the registry.
fn cfg(json: &str) -> PolicyConfig {
    let mut v: serde_json::Value =
        serde_json::from_str(if json.trim().is_empty() { "{}" } else { json }).unwrap();
    if v.get("apps").is_none() {
        let mut names = vec!["hr".to_string()];
        for p in v["policies"].as_array().into_iter().flatten() {
            for a in p["apps"].as_array().into_iter().flatten() {
                names.extend(a.as_str().filter(|a| *a != "*").map(str::to_string));
            }
        }
        for a in v["hosts"].as_object().into_iter().flat_map(|m| m.values()) {
            names.extend(a.as_str().map(str::to_string));
        }
        names.extend(v["default_app"].as_str().map(str::to_string));
        let apps: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .map(|n| (n, serde_json::json!({"users": ["*"]})))
            .collect();
        v["apps"] = apps.into();
    }
    PolicyConfig::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn user(sub: &str) -> Identity {
    Identity {
        sub: sub.into(),
        name: Some(format!("{sub}@corp.example")),
        email: Some(format!("{sub}.mail@corp.example")),
        amr: vec!["pwd".into()],
        acr: Some("urn:portcullis:pwd".into()),
        auth_time: Some(NOW - 60),
        iat: NOW - 60,
        exp: NOW + 3600,
        ..Identity::default()
    }
}

fn req<'a>(id: Option<&'a Identity>) -> Request<'a> {
    Request {
        app: "hr",
        identity: id,
        client: Some("198.51.100.7".parse().unwrap()),
        country: None,
        method: "GET",
        path: "/",
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
        browser: true,
        now: NOW,
        marker: None,
    }
}

fn code(e: &Evaluation<'_>) -> String {
    match &e.decision {
        Decision::Allow => "allow".into(),
        Decision::Deny { code, .. } => code.code(),
        Decision::StepUp(s) => format!(
            "step_up acr={} max_age={}",
            s.acr.as_deref().unwrap_or("-"),
            s.max_age.map_or("-".to_string(), |m| m.to_string())
        ),
    }
}

fn one_policy(extra: &str) -> PolicyConfig {
    cfg(&format!(
        r#"{{"named_locations": {{
              "office": {{"cidrs": ["10.0.0.0/8", "2001:db8:1::/48"], "trusted": true}},
              "sanctioned": {{"countries": ["kp", "IR"]}}
            }},
            "mfa": {{"step_up_acr": "urn:portcullis:mfa"}},
            "policies": [{{"name": "p", "apps": ["hr"], {extra}}}]}}"#
    ))
}

#[test]
fn each_condition_decides_whether_a_block_applies() {
    struct Case {
        conditions: &'static str,
        tweak: fn(&mut Request<'_>),
        blocked: bool,
    }
    fn none(_: &mut Request<'_>) {}
    let cases = [
        Case {
            conditions: r#"{"methods": ["post"]}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"methods": ["post"]}"#,
            tweak: |r| r.method = "POST",
            blocked: true,
        },
        Case {
            conditions: r#"{"paths": ["/admin"]}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"paths": ["/admin"]}"#,
            tweak: |r| r.path = "/admin/users",
            blocked: true,
        },
        Case {
            conditions: r#"{"paths": ["/admin"]}"#,
            tweak: |r| r.path = "/admin",
            blocked: true,
        },
        Case {
            conditions: r#"{"paths": ["/admin"]}"#,
            tweak: |r| r.path = "/administrator",
            blocked: false,
        },
        Case {
            conditions: r#"{"client_types": ["api"]}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"client_types": ["api"]}"#,
            tweak: |r| r.browser = false,
            blocked: true,
        },
        Case {
            conditions: r#"{"platforms": ["android", "ios"]}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"platforms": ["android", "ios"]}"#,
            tweak: |r| {
                r.user_agent = Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)")
            },
            blocked: true,
        },
        Case {
            conditions: r#"{"platforms": ["android"]}"#,
            tweak: |r| r.user_agent = Some("Mozilla/5.0 (Linux; Android 14; Pixel 8)"),
            blocked: true,
        },
        Case {
            conditions: r#"{"platforms": ["other"]}"#,
            tweak: |r| r.user_agent = None,
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["office"]}}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"locations": {"include": ["office"]}}"#,
            tweak: |r| r.client = Some("10.1.2.3".parse().unwrap()),
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["office"]}}"#,
            tweak: |r| r.client = Some("2001:db8:1:ff::9".parse().unwrap()),
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["office"]}}"#,
            tweak: |r| r.client = Some("2001:db8:2::9".parse().unwrap()),
            blocked: false,
        },
        Case {
            conditions: r#"{"locations": {"include": ["all"], "exclude": ["trusted"]}}"#,
            tweak: none,
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["all"], "exclude": ["trusted"]}}"#,
            tweak: |r| r.client = Some("::ffff:10.9.9.9".parse().unwrap()),
            blocked: false,
        },
        Case {
            conditions: r#"{"locations": {"include": ["all"], "exclude": ["trusted"]}}"#,
            tweak: |r| r.client = None,
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["sanctioned"]}}"#,
            tweak: |r| r.country = Some("ir"),
            blocked: true,
        },
        Case {
            conditions: r#"{"locations": {"include": ["sanctioned"]}}"#,
            tweak: |r| r.country = Some("FR"),
            blocked: false,
        },
        Case {
            conditions: r#"{"sign_in_risk": ["high"]}"#,
            tweak: none,
            blocked: false,
        },
        Case {
            conditions: r#"{"sign_in_risk": ["none"]}"#,
            tweak: none,
            blocked: true,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let config = one_policy(&format!(
            r#""conditions": {}, "grant": {{"block": true}}"#,
            c.conditions
        ));
        let id = user("alice");
        let mut r = req(Some(&id));
        (c.tweak)(&mut r);
        let e = evaluate(&config, &r);
        assert_eq!(
            matches!(e.decision, Decision::Deny { .. }),
            c.blocked,
            "case {i}: {} → {}",
            c.conditions,
            code(&e)
        );
    }
}

#[test]
fn risk_levels_come_from_configured_claims() {
    let config = cfg(
        r#"{"risk": {"sign_in_claim": "sirisk", "user_claim": "urisk"},
        "policies": [
          {"name": "si", "apps": ["*"], "conditions": {"sign_in_risk": ["high"]}, "grant": {"block": true}},
          {"name": "ur", "apps": ["*"], "conditions": {"user_risk": ["medium", "high"]}, "grant": {"mfa": true}}
        ]}"#,
    );
    let cases: &[(&str, &str, &str)] = &[
        ("sirisk", "low", "allow"),
        ("sirisk", "HIGH", "risk_too_high"),
        ("sirisk", "bogus", "risk_too_high"),
        ("urisk", "low", "allow"),
        ("urisk", "medium", "step_up acr=mfa max_age=-"),
        ("sign_in_risk", "high", "allow"),
    ];
    for (claim, value, want) in cases {
        let mut id = user("alice");
        id.claims.insert(claim.to_string(), value.to_string());
        assert_eq!(
            code(&evaluate(&config, &req(Some(&id)))),
            *want,
            "{claim}={value}"
        );
    }
}

#[test]
fn grant_controls_all_and_one() {
    struct Case {
        grant: &'static str,
        amr: &'static [&'static str],
        acr: &'static str,
        device: Option<&'static str>,
        want: &'static str,
    }
    let cases = [
        Case {
            grant: r#"{"mfa": true}"#,
            amr: &["pwd"],
            acr: "x",
            device: None,
            want: "step_up acr=urn:portcullis:mfa max_age=-",
        },
        Case {
            grant: r#"{"mfa": true}"#,
            amr: &["pwd", "otp"],
            acr: "x",
            device: None,
            want: "allow",
        },
        Case {
            grant: r#"{"mfa": true}"#,
            amr: &["hwk"],
            acr: "x",
            device: None,
            want: "allow",
        },
        Case {
            grant: r#"{"acr": ["gold", "platinum"]}"#,
            amr: &[],
            acr: "silver",
            device: None,
            want: "step_up acr=gold platinum max_age=-",
        },
        Case {
            grant: r#"{"acr": ["gold", "platinum"]}"#,
            amr: &[],
            acr: "platinum",
            device: None,
            want: "allow",
        },
        Case {
            grant: r#"{"claims": {"device_compliant": "true"}}"#,
            amr: &[],
            acr: "x",
            device: Some("true"),
            want: "allow",
        },
        Case {
            grant: r#"{"claims": {"device_compliant": "true"}}"#,
            amr: &[],
            acr: "x",
            device: Some("false"),
            want: "policy_blocked:p",
        },
        Case {
            grant: r#"{"claims": {"device_compliant": "true"}}"#,
            amr: &[],
            acr: "x",
            device: None,
            want: "policy_blocked:p",
        },
        Case {
            grant: r#"{"mfa": true, "claims": {"device_compliant": "true"}}"#,
            amr: &["mfa"],
            acr: "x",
            device: None,
            want: "policy_blocked:p",
        },
        Case {
            grant: r#"{"mfa": true, "claims": {"device_compliant": "true"}}"#,
            amr: &["pwd"],
            acr: "x",
            device: Some("true"),
            want: "step_up acr=urn:portcullis:mfa max_age=-",
        },
        Case {
            grant: r#"{"require": "one", "mfa": true, "claims": {"device_compliant": "true"}}"#,
            amr: &["pwd"],
            acr: "x",
            device: Some("true"),
            want: "allow",
        },
        Case {
            grant: r#"{"require": "one", "mfa": true, "claims": {"device_compliant": "true"}}"#,
            amr: &["mfa"],
            acr: "x",
            device: None,
            want: "allow",
        },
        Case {
            grant: r#"{"require": "one", "mfa": true, "claims": {"device_compliant": "true"}}"#,
            amr: &["pwd"],
            acr: "x",
            device: None,
            want: "step_up acr=urn:portcullis:mfa max_age=-",
        },
        Case {
            grant: r#"{"require": "one", "claims": {"a": "1", "b": "2"}}"#,
            amr: &["pwd"],
            acr: "x",
            device: None,
            want: "policy_blocked:p",
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let config = one_policy(&format!(r#""grant": {}"#, c.grant));
        let mut id = user("alice");
        id.amr = c.amr.iter().map(|s| s.to_string()).collect();
        id.acr = Some(c.acr.into());
        if let Some(d) = c.device {
            id.claims.insert("device_compliant".into(), d.into());
        }
        assert_eq!(
            code(&evaluate(&config, &req(Some(&id)))),
            c.want,
            "case {i}: {}",
            c.grant
        );
    }
}

#[test]
fn sign_in_frequency_uses_auth_time_then_iat() {
    let config = one_policy(r#""session": {"sign_in_frequency": 3600}"#);
    let cases: &[(Option<u64>, u64, &str)] = &[
        (Some(NOW - 3600), NOW - 10, "allow"),
        (Some(NOW - 3601), NOW - 10, "step_up acr=- max_age=3600"),
        (None, NOW - 100, "allow"),
        (None, NOW - 7200, "step_up acr=- max_age=3600"),
        (Some(NOW + 50), NOW, "allow"),
    ];
    for (auth_time, iat, want) in cases {
        let mut id = user("alice");
        id.auth_time = *auth_time;
        id.iat = *iat;
        assert_eq!(
            code(&evaluate(&config, &req(Some(&id)))),
            *want,
            "{auth_time:?}"
        );
    }
}

#[test]
fn assignments_include_and_exclude_with_exclude_winning() {
    let config = cfg(r#"{"policies": [{"name": "p", "apps": ["hr"],
        "assignments": {"include": {"users": ["alice", "Bob@Corp.Example"], "groups": ["contractors"]},
                        "exclude": {"users": ["carol.mail@corp.example"], "groups": ["break-glass"]}},
        "grant": {"block": true}}]}"#);
    let cases: &[(&str, &[&str], bool)] = &[
        ("alice", &[], true),
        ("ALICE", &[], false),
        ("bob", &[], true),
        ("dave", &[], false),
        ("dave", &["contractors"], true),
        ("dave", &["Contractors"], false),
        ("alice", &["break-glass"], false),
        ("carol", &["contractors"], false),
    ];
    for (sub, groups, blocked) in cases {
        let mut id = user(sub);
        id.groups = groups.iter().map(|g| g.to_string()).collect();
        let e = evaluate(&config, &req(Some(&id)));
        assert_eq!(
            e.decision != Decision::Allow,
            *blocked,
            "{sub} {groups:?}: {}",
            code(&e)
        );
    }
    // Named assignments never cover an anonymous request.
    assert_eq!(code(&evaluate(&config, &req(None))), "allow");
}

#[test]
fn app_assignment_refuses_everyone_else() {
    let config = cfg(
        r#"{"apps": {"hr": {"groups": ["hr-staff"], "users": ["root"]}, "other": {"users": ["*"]}},
        "policies": [{"name": "p", "apps": ["other"], "grant": {"block": true}}]}"#,
    );
    let mut staff = user("alice");
    staff.groups = vec!["hr-staff".into()];
    assert_eq!(code(&evaluate(&config, &req(Some(&staff)))), "allow");
    assert_eq!(code(&evaluate(&config, &req(Some(&user("root"))))), "allow");
    let e = evaluate(&config, &req(Some(&user("mallory"))));
    assert_eq!(code(&e), "not_assigned");
    let d = e.decision.denial().unwrap();
    assert_eq!(d.code(), "not_assigned");
    assert_eq!(d.status(), 403);
    // Anonymous: sign in first.
    assert_eq!(
        code(&evaluate(&config, &req(None))),
        "step_up acr=- max_age=-"
    );
    // Policies are indexed per app: `other` is blocked, `hr` is not touched by it.
    let mut r = req(Some(&staff));
    r.app = "other";
    assert_eq!(code(&evaluate(&config, &r)), "policy_blocked:p");
    // An app without an entry is refused, signed in or not: it is not
    // judged by the `*` policies alone (a misspelt id would open it).
    for id in [Some(&staff), None] {
        for app in ["unknown", "", "HR"] {
            let mut r = req(id);
            r.app = app;
            let e = evaluate(&config, &r);
            assert_eq!(code(&e), "not_assigned", "{app}");
            assert_eq!(e.decision.denial().unwrap().status(), 403);
        }
    }
}

#[test]
fn an_open_app_admits_every_signed_in_user_and_star_admits_everyone() {
    let config = cfg(
        r#"{"apps": {"wiki": {"open": true}, "public": {"users": ["*"]}},
        "policies": [{"name": "no-post", "apps": ["*"], "conditions": {"methods": ["POST"]}, "grant": {"block": true}}]}"#,
    );
    let dave = user("dave");
    let mut r = req(Some(&dave));
    r.app = "wiki";
    assert_eq!(code(&evaluate(&config, &r)), "allow");
    r.method = "POST";
    assert_eq!(code(&evaluate(&config, &r)), "policy_blocked:no-post");
    // `open` is every *signed-in* user: anonymous requests sign in first.
    let mut anon = req(None);
    anon.app = "wiki";
    assert_eq!(code(&evaluate(&config, &anon)), "step_up acr=- max_age=-");
    // `users: ["*"]` keeps its meaning: everyone, signed in or not.
    anon.app = "public";
    assert_eq!(code(&evaluate(&config, &anon)), "allow");
}

#[test]
fn the_issues_typos_do_not_load() {
    // `apps` names `my-app` where the preauth app (and the policies) say `myapp`:
    // `myapp` would have been judged by `*` policies only.
    let cases: &[(&str, &str)] = &[
        (
            r#"{"apps": {"my-app": {"groups": ["staff"]}},
                "policies": [{"name": "p", "apps": ["myapp"], "grant": {"mfa": true}}]}"#,
            "policies[0].apps[0]",
        ),
        (
            r#"{"apps": {"myapp": {"groups": ["staff"]}},
                "policies": [{"name": "p", "apps": ["*", "my-app"], "grant": {"mfa": true}}]}"#,
            "policies[0].apps[1]",
        ),
        (
            r#"{"apps": {"myapp": {"groups": ["staff"]}},
                "policies": [{"name": "p", "state": "disabled", "apps": ["my-app"], "grant": {"mfa": true}}]}"#,
            "policies[0].apps[0]",
        ),
        (
            r#"{"policies": [{"name": "p", "apps": ["myapp"], "grant": {"mfa": true}}]}"#,
            "policies[0].apps[0]",
        ),
        (
            r#"{"apps": {"myapp": {"open": true}}, "hosts": {"myapp.example.com": "my-app"}}"#,
            "hosts.myapp.example.com",
        ),
        (
            r#"{"apps": {"myapp": {"open": true}}, "default_app": "my-app"}"#,
            "default_app",
        ),
        (
            r#"{"apps": {"myapp": {"open": true}}, "hosts": {"myapp.example.com.": "myapp"}}"#,
            "hosts.myapp.example.com.",
        ),
        (r#"{"apps": {"myapp": {}}}"#, "apps.myapp"),
        (r#"{"apps": {"myapp": {"open": false}}}"#, "apps.myapp"),
        (
            r#"{"apps": {"myapp": {"open": true, "groups": ["staff"]}}}"#,
            "apps.myapp.open",
        ),
        (r#"{"apps": {"my app": {"open": true}}}"#, "apps.my app"),
    ];
    for (json, field) in cases {
        let e = PolicyConfig::from_json(json.as_bytes()).expect_err(json);
        assert_eq!(e.field, *field, "{json}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn block_wins_over_step_up_and_report_only_never_changes_the_outcome() {
    let config = cfg(r#"{"policies": [
        {"name": "needs-mfa", "apps": ["*"], "grant": {"mfa": true}},
        {"name": "watch", "state": "report-only", "apps": ["*"], "grant": {"block": true}},
        {"name": "off", "state": "disabled", "apps": ["*"], "grant": {"block": true}},
        {"name": "no-post", "apps": ["hr"], "conditions": {"methods": ["POST"]}, "grant": {"block": true}}
    ]}"#);
    let id = user("alice");
    let e = evaluate(&config, &req(Some(&id)));
    assert_eq!(code(&e), "step_up acr=mfa max_age=-");
    let names: Vec<(&str, &str)> = e
        .results
        .iter()
        .map(|r| (r.policy.name.as_str(), r.outcome.label()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("needs-mfa", "step_up"),
            ("watch", "block"),
            ("no-post", "not_applicable")
        ]
    );
    let mut r = req(Some(&id));
    r.method = "POST";
    let e = evaluate(&config, &r);
    assert_eq!(code(&e), "policy_blocked:no-post");
    let Decision::Deny { policy, unmet, .. } = &e.decision else {
        unreachable!()
    };
    assert_eq!(policy.unwrap().name, "no-post");
    assert_eq!(unmet, &vec![Unmet::Block]);
    // Report-only alone: allowed, but logged as a block.
    let config = cfg(
        r#"{"policies": [{"name": "watch", "state": "report-only", "apps": ["*"], "grant": {"block": true}}]}"#,
    );
    let e = evaluate(&config, &req(Some(&id)));
    assert_eq!(e.decision, Decision::Allow);
    let log: serde_json::Value =
        serde_json::from_str(&decision_log(&e, &req(Some(&id)), "rid-1")).unwrap();
    assert_eq!(log["result"], "allow");
    assert_eq!(log["report_only"][0]["name"], "watch");
    assert_eq!(log["report_only"][0]["result"], "block");
    assert_eq!(log["policies"].as_array().unwrap().len(), 0);
}

#[test]
fn step_ups_merge_and_build_the_login_url() {
    let config = cfg(
        r#"{"mfa": {"step_up_acr": "urn:portcullis:mfa"}, "policies": [
        {"name": "a", "apps": ["*"], "grant": {"mfa": true}, "session": {"sign_in_frequency": 600}},
        {"name": "b", "apps": ["*"], "grant": {"acr": ["gold"]}, "session": {"sign_in_frequency": 30}}
    ]}"#,
    );
    let mut id = user("alice");
    id.auth_time = Some(NOW - 100);
    let e = evaluate(&config, &req(Some(&id)));
    let Decision::StepUp(s) = &e.decision else {
        panic!("{}", code(&e))
    };
    assert_eq!(s.acr.as_deref(), Some("urn:portcullis:mfa gold"));
    assert_eq!(s.max_age, Some(30));
    assert_eq!(
        s.unmet,
        vec![Unmet::Mfa, Unmet::Acr, Unmet::SignInFrequency]
    );
    assert_eq!(
        s.login_url("/admin/x?a=1&b=2"),
        "/.auth/login?rd=%2Fadmin%2Fx%3Fa%3D1%26b%3D2&acr=urn%3Aportcullis%3Amfa%20gold&max_age=30"
    );
    let body: serde_json::Value = serde_json::from_str(&s.json_body("/x", "rid")).unwrap();
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(body["acr_values"], "urn:portcullis:mfa gold");
    assert_eq!(body["max_age"], 30);
    assert_eq!(body["policies"][1], "b");
    assert!(s
        .www_authenticate()
        .contains("acr_values=\"urn:portcullis:mfa gold\""));
}

#[test]
fn a_step_up_that_comes_back_unsatisfied_is_denied_not_looped() {
    let config = one_policy(r#""grant": {"mfa": true}"#);
    let id = user("alice"); // iat = NOW - 60, amr pwd
    let first = evaluate(&config, &req(Some(&id)));
    let Decision::StepUp(s) = &first.decision else {
        panic!()
    };
    let marker = s.marker(NOW - 120);
    assert_eq!(StepUpMarker::parse(&marker.value()), Some(marker));
    // A session issued after the step-up was asked, still without MFA: denied.
    let mut r = req(Some(&id));
    r.marker = Some(marker);
    let e = evaluate(&config, &r);
    assert_eq!(code(&e), "mfa_required");
    let d = e.decision.denial().unwrap();
    assert_eq!(d.status(), 403);
    assert!(d.sentence().contains("policy `p`"), "{}", d.sentence());
    assert!(d.sentence().contains("mfa"));
    // The old session (user came back without finishing): step up again.
    r.marker = Some(s.marker(NOW - 30));
    assert!(matches!(
        evaluate(&config, &r).decision,
        Decision::StepUp(_)
    ));
    // A marker for other policies does not count.
    r.marker = Some(StepUpMarker {
        started: NOW - 120,
        fingerprint: !s.fingerprint,
    });
    assert!(matches!(
        evaluate(&config, &r).decision,
        Decision::StepUp(_)
    ));
    // With MFA the marker does not matter.
    let mut strong = user("alice");
    strong.amr.push("mfa".into());
    let mut r = req(Some(&strong));
    r.marker = Some(marker);
    assert_eq!(evaluate(&config, &r).decision, Decision::Allow);
    // Acr-only step-up that fails: policy_blocked.
    let config = one_policy(r#""grant": {"acr": ["gold"]}"#);
    let Decision::StepUp(s) = evaluate(&config, &req(Some(&id))).decision else {
        panic!()
    };
    let mut r = req(Some(&id));
    r.marker = Some(s.marker(NOW - 60));
    assert_eq!(code(&evaluate(&config, &r)), "policy_blocked:p");
}

#[test]
fn anonymous_requests_are_sent_to_sign_in() {
    let config = one_policy(r#""grant": {"claims": {"device_compliant": "true"}}"#);
    let e = evaluate(&config, &req(None));
    let Decision::StepUp(s) = &e.decision else {
        panic!("{}", code(&e))
    };
    assert_eq!(s.unmet[0], Unmet::SignIn);
    let config = one_policy(r#""grant": {"block": true}"#);
    assert_eq!(code(&evaluate(&config, &req(None))), "policy_blocked:p");
}

#[test]
fn block_codes_name_location_and_risk() {
    let config = one_policy(
        r#""conditions": {"locations": {"include": ["sanctioned"]}}, "grant": {"block": true}"#,
    );
    let id = user("alice");
    let mut r = req(Some(&id));
    r.country = Some("KP");
    let e = evaluate(&config, &r);
    assert_eq!(code(&e), "location_blocked");
    let d = e.decision.denial().unwrap();
    assert_eq!(d.code(), "location_blocked");
    assert!(d.sentence().contains("policy `p`"));
    let config = one_policy(r#""conditions": {"user_risk": ["none"]}, "grant": {"block": true}"#);
    assert_eq!(code(&evaluate(&config, &req(Some(&id)))), "risk_too_high");
}

#[test]
fn configuration_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"polices": []}"#, "polices"),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "extra": 1}]}"#,
            "policies[0].extra",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"]}]}"#,
            "policies[0]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": [], "grant": {"block": true}}]}"#,
            "policies[0].apps",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "A B", "apps": ["x"], "grant": {"block": true}}]}"#,
            "policies[0].name",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}}, {"name": "a", "apps": ["x"], "grant": {"block": true}}]}"#,
            "policies[1].name",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "state": "on", "apps": ["x"], "grant": {"block": true}}]}"#,
            "policies[0].state",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true, "mfa": true}}]}"#,
            "policies[0].grant",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {}}]}"#,
            "policies[0].grant",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"locations": {"include": ["all", "moon"]}}}]}"#,
            "policies[0].conditions.locations.include[1]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"platforms": ["windows", "beos"]}}]}"#,
            "policies[0].conditions.platforms[1]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["/a/../b"]}}]}"#,
            "policies[0].conditions.paths[0]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["admin"]}}]}"#,
            "policies[0].conditions.paths[0]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"methods": ["G T"]}}]}"#,
            "policies[0].conditions.methods[0]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"sign_in_risk": []}}]}"#,
            "policies[0].conditions.sign_in_risk",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "assignments": {"exclude": {"users": ["*"]}}}]}"#,
            "policies[0].assignments.exclude.users[0]",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "assignments": {"include": {}}}]}"#,
            "policies[0].assignments.include",
        ),
        (
            r#"{"apps": {"x": {"open": true}}, "policies": [{"name": "a", "apps": ["x"], "session": {"sign_in_frequency": 0}}]}"#,
            "policies[0].session.sign_in_frequency",
        ),
        (
            r#"{"named_locations": {"office": {"cidrs": ["10.0.0.0/8", "10.1.0.0/8"]}}}"#,
            "named_locations.office.cidrs[1]",
        ),
        (
            r#"{"named_locations": {"office": {"cidrs": ["2001:db8::/129"]}}}"#,
            "named_locations.office.cidrs[0]",
        ),
        (
            r#"{"named_locations": {"office": {"countries": ["FRA"]}}}"#,
            "named_locations.office.countries[0]",
        ),
        (
            r#"{"named_locations": {"office": {}}}"#,
            "named_locations.office",
        ),
        (
            r#"{"named_locations": {"trusted": {"countries": ["FR"]}}}"#,
            "named_locations.trusted",
        ),
        (r#"{"apps": {"hr": {}}}"#, "apps.hr"),
        (r#"{"country_header": "bad header"}"#, "country_header"),
        (
            r#"{"client_address": {"xff_trusted_hops": 300}}"#,
            "client_address.xff_trusted_hops",
        ),
        (
            r#"{"client_address": {"on_invalid": "trust"}}"#,
            "client_address.on_invalid",
        ),
        (r#"{"step_up": {"secure": false}}"#, "step_up.secure"),
        (r#"{"step_up": {"ttl": 5}}"#, "step_up.ttl"),
        (r#"{"mfa": {"amr": []}}"#, "mfa.amr"),
    ];
    for (json, field) in cases {
        let e = PolicyConfig::from_json(json.as_bytes()).expect_err(json);
        assert_eq!(e.field, *field, "{json}: {e}");
    }
}

#[test]
fn indexing_keeps_config_order_and_drops_disabled() {
    let config = cfg(r#"{"policies": [
        {"name": "a", "apps": ["hr"], "grant": {"mfa": true}},
        {"name": "b", "state": "disabled", "apps": ["*"], "grant": {"block": true}},
        {"name": "c", "apps": ["*"], "state": "report-only", "grant": {"mfa": true}},
        {"name": "d", "apps": ["crm", "hr"], "grant": {"mfa": true}}
    ]}"#);
    let names = |app: &str| -> Vec<String> {
        config
            .app(app)
            .unwrap()
            .policies
            .iter()
            .map(|&i| config.policies[i].name.clone())
            .collect()
    };
    assert_eq!(names("hr"), ["a", "c", "d"]);
    assert_eq!(names("crm"), ["c", "d"]);
    assert!(config.app("elsewhere").is_none());
    // An empty configuration defines no app: nothing is allowed.
    let empty = PolicyConfig::from_json(b"").unwrap();
    assert_eq!(code(&evaluate(&empty, &req(None))), "not_assigned");
}

#[test]
fn helpers() {
    assert!(is_browser(
        Some("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        None
    ));
    assert!(is_browser(Some("TEXT/HTML"), None));
    assert!(!is_browser(Some("text/html"), Some("XMLHttpRequest")));
    assert!(!is_browser(Some("application/json"), None));
    assert!(!is_browser(Some("text/htmlx"), None));
    assert!(!is_browser(None, None));
    let uas: &[(Option<&str>, Platform)] = &[
        (
            Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
            Platform::Windows,
        ),
        (
            Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)"),
            Platform::Macos,
        ),
        (
            Some("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)"),
            Platform::Ios,
        ),
        (Some("Mozilla/5.0 (Linux; Android 14)"), Platform::Android),
        (
            Some("Mozilla/5.0 (X11; Ubuntu; Linux x86_64)"),
            Platform::Linux,
        ),
        (Some("curl/8.5.0"), Platform::Other),
        (Some(""), Platform::Other),
        (None, Platform::Other),
    ];
    for (ua, want) in uas {
        assert_eq!(platform(*ua), *want, "{ua:?}");
    }
    assert_eq!(risk_level(None), RiskLevel::None);
    assert_eq!(risk_level(Some("Medium")), RiskLevel::Medium);
    assert_eq!(risk_level(Some("??")), RiskLevel::High);
    assert_eq!(
        cookie_value(
            "a=1; __Host-portcullis-stepup=12.0000abcd; b=2",
            "__Host-portcullis-stepup"
        ),
        Some("12.0000abcd")
    );
    assert_eq!(cookie_value("a=1", "b"), None);
    for bad in [
        "",
        "12",
        "x.0000abcd",
        "12.abc",
        "12.0000abcg",
        "1.2.3",
        "-1.00000000",
    ] {
        assert_eq!(StepUpMarker::parse(bad), None, "{bad:?}");
    }
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    let config = cfg("{}");
    let m = StepUpMarker {
        started: 5,
        fingerprint: 0xabc,
    };
    assert_eq!(
        config.marker_cookie(&m),
        "__Host-portcullis-stepup=5.00000abc; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
    );
    assert!(config.clear_marker_cookie().contains("Max-Age=0"));
}

#[test]
fn decision_log_has_every_field() {
    let config = one_policy(r#""grant": {"mfa": true}"#);
    let id = user("alice");
    let mut r = req(Some(&id));
    r.client = Some("2001:db8::5".parse::<IpAddr>().unwrap());
    r.path = "/admin";
    let e = evaluate(&config, &r);
    let line = decision_log(&e, &r, "req-42");
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "2027-01-15T08:00:00Z");
    assert_eq!(v["request_id"], "req-42");
    assert_eq!(v["app"], "hr");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["client"], "2001:db8::5");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/admin");
    assert_eq!(v["result"], "step_up");
    assert_eq!(v["policy"], "p");
    assert_eq!(v["unmet"][0], "mfa");
    assert_eq!(v["step_up"]["acr"], "urn:portcullis:mfa");
    assert_eq!(v["policies"][0]["name"], "p");
    assert_eq!(v["policies"][0]["result"], "step_up");
    assert!(v["report_only"].as_array().unwrap().is_empty());
    let anon = decision_log(&evaluate(&config, &req(None)), &req(None), "r");
    let v: serde_json::Value = serde_json::from_str(&anon).unwrap();
    assert!(v["user"].is_null());
    assert_eq!(v["unmet"][0], "sign_in");
}

#[test]
fn the_app_comes_from_the_route_then_the_host_and_the_handoff_must_agree() {
    use crate::app::RouteApp::{Absent, Invalid, Named};
    let config = cfg(
        r#"{"hosts": {"hr.localhost": "hr", "[::1]": "v6"}, "default_app": "fallback",
            "apps": {"hr": {"open": true}, "crm": {"open": true}, "v6": {"open": true}, "fallback": {"open": true}}}"#,
    );
    let pick = |route, handed_over, host| config.select_app(route, handed_over, host);
    // The route wins over the Host; the hosts map is only the fallback.
    assert_eq!(pick(Named("crm"), None, "hr.localhost"), Ok("crm"));
    assert_eq!(pick(Absent, None, "HR.localhost:10000"), Ok("hr"));
    assert_eq!(pick(Absent, None, "[::1]:443"), Ok("v6"));
    assert_eq!(pick(Absent, None, "other"), Ok("fallback"));
    // Trailing dots are not removed: no entry, so `default_app` (or nothing).
    assert_eq!(pick(Absent, None, "hr.localhost."), Ok("fallback"));
    assert_eq!(pick(Absent, None, "hr.localhost.:10000"), Ok("fallback"));
    // A handed-over identity must be for the app the request goes to.
    assert_eq!(pick(Named("crm"), Some("crm"), "x"), Ok("crm"));
    assert_eq!(
        pick(Named("crm"), Some("hr"), "crm.localhost"),
        Err(AppRefusal::Mismatch)
    );
    assert_eq!(
        pick(Absent, Some("crm"), "hr.localhost"),
        Err(AppRefusal::Mismatch)
    );
    assert_eq!(pick(Absent, Some("crm"), "crm.localhost"), Ok("crm"));
    assert_eq!(
        pick(Invalid, None, "hr.localhost"),
        Err(AppRefusal::RouteInvalid)
    );
    // A route naming an app without an entry is judged as that app: refused.
    assert_eq!(pick(Named("nope"), None, "hr.localhost"), Ok("nope"));
    let alice = user("alice");
    let mut r = req(Some(&alice));
    r.app = "nope";
    assert_eq!(code(&evaluate(&config, &r)), "not_assigned");
    let none = PolicyConfig::from_json(br#"{"apps": {"hr": {"open": true}}}"#).unwrap();
    assert_eq!(none.select_app(Absent, None, "other"), Ok(""));
    let e = PolicyConfig::from_json(
        br#"{"apps": {"hr": {"open": true}}, "hosts": {"hr.localhost:80": "hr"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "hosts.hr.localhost:80");
}

#[test]
fn groups_and_claims_the_preauth_filter_must_keep() {
    let config = cfg(r#"{"apps": {"hr": {"groups": ["staff"]}}, "policies": [
        {"name": "a", "apps": ["*"], "assignments": {"include": {"groups": ["eng", "staff"]}, "exclude": {"groups": ["bg"]}},
         "conditions": {"user_risk": ["high"]}, "grant": {"claims": {"device_compliant": "true"}}},
        {"name": "b", "apps": ["*"], "conditions": {"sign_in_risk": ["high"]}, "grant": {"block": true}}
    ]}"#);
    assert_eq!(config.groups_named(), ["bg", "eng", "staff"]);
    assert_eq!(
        config.claims_named(),
        ["device_compliant", "sign_in_risk", "user_risk"]
    );
}

#[test]
fn a_partial_step_up_is_denied_after_one_round_trip() {
    // Two policies ask at once; the provider delivers MFA but not `gold`:
    // the remaining one was already asked for, so deny rather than redirect again.
    let config = cfg(r#"{"policies": [
        {"name": "needs-mfa", "apps": ["*"], "grant": {"mfa": true}},
        {"name": "needs-gold", "apps": ["*"], "grant": {"acr": ["gold"]}}
    ]}"#);
    let id = user("alice");
    let Decision::StepUp(both) = evaluate(&config, &req(Some(&id))).decision else {
        panic!()
    };
    assert_eq!(both.policies.len(), 2);
    assert_eq!(
        both.fingerprint.count_ones(),
        2,
        "distinct bits for these names"
    );
    let mut back = user("alice");
    back.amr.push("mfa".into());
    back.iat = NOW;
    let mut r = req(Some(&back));
    r.marker = Some(both.marker(NOW - 30));
    assert_eq!(code(&evaluate(&config, &r)), "policy_blocked:needs-gold");
    // Without the marker the same request is stepped up (no memory of the attempt).
    r.marker = None;
    assert_eq!(code(&evaluate(&config, &r)), "step_up acr=gold max_age=-");
}

/// The spellings of the issue (as Envoy hands them over): a condition on
/// `/admin` applies to each (step-up), or the path is refused before any
/// policy (`ambiguous_path`). None is allowed without the step-up.
#[test]
fn a_path_condition_covers_every_spelling_or_the_path_is_refused() {
    let config = one_policy(r#""conditions": {"paths": ["/admin"]}, "grant": {"mfa": true}"#);
    let id = user("alice");
    for raw in [
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
        let seen = crate::path::normalize(raw).unwrap();
        let mut r = req(Some(&id));
        r.path = &seen;
        let e = evaluate(&config, &r);
        let c = code(&e);
        assert!(
            c == "step_up acr=urn:portcullis:mfa max_age=-" || c == "ambiguous_path",
            "{raw:?} -> {seen}: {c}"
        );
        if c == "ambiguous_path" {
            // Refused before any policy ran.
            assert!(e.results.is_empty());
            let d = e.decision.denial().unwrap();
            assert_eq!(d.status(), 400);
            assert_eq!(d.code(), "ambiguous_path");
        }
    }
    // Other paths are not covered; a path Envoy did not normalise is refused.
    for (path, expected) in [
        ("/administrator", "allow"),
        ("/x/admin", "allow"),
        ("/x/../admin", "ambiguous_path"),
        ("/admin?x=1", "step_up acr=urn:portcullis:mfa max_age=-"),
    ] {
        let mut r = req(Some(&id));
        r.path = path;
        assert_eq!(code(&evaluate(&config, &r)), expected, "{path}");
    }
}

#[test]
fn an_app_loosens_its_path_rule_by_name() {
    let config = cfg(r#"{"apps": {
              "hr": {"users": ["*"], "path_rules": {"case_sensitive": true, "allow_encoded_slash": true}},
              "wiki": {"users": ["*"]}
            },
            "policies": [{"name": "p", "apps": ["hr", "wiki"], "conditions": {"paths": ["/admin"]},
                          "grant": {"block": true}}]}"#);
    let id = user("alice");
    let run = |app: &'static str, path: &'static str| {
        let mut r = req(Some(&id));
        r.app = app;
        r.path = path;
        code(&evaluate(&config, &r))
    };
    assert_eq!(run("hr", "/admin"), "policy_blocked:p");
    assert_eq!(run("hr", "/ADMIN"), "allow");
    assert_eq!(run("hr", "/a%2Fb"), "allow");
    assert_eq!(run("hr", "/admin%2Fb"), "allow");
    assert_eq!(run("hr", "/admin;x"), "policy_blocked:p");
    assert_eq!(run("hr", "/a%3Bb"), "ambiguous_path");
    // Another app keeps the strict rule.
    assert_eq!(run("wiki", "/ADMIN"), "policy_blocked:p");
    assert_eq!(run("wiki", "/a%2Fb"), "ambiguous_path");
    // An app without an entry is refused before its path is looked at.
    assert_eq!(run("other", "/a%2Fb"), "not_assigned");
}

#[test]
fn path_prefixes_are_checked_under_the_rules_of_the_apps_they_judge() {
    let bad = [
        (
            r#"{"apps": {"x": {"users": ["*"]}},
                "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["/a;b"]}}]}"#,
            "policies[0].conditions.paths[0]",
        ),
        (
            r#"{"apps": {"x": {"users": ["*"]}},
                "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["/ok", "/a%2fb"]}}]}"#,
            "policies[0].conditions.paths[1]",
        ),
        (
            // `*` judges every app of the registry: y keeps the strict rule.
            r#"{"apps": {"x": {"users": ["*"], "path_rules": {"allow_encoded_slash": true}}, "y": {"open": true}},
                "policies": [{"name": "a", "apps": ["*"], "grant": {"block": true}, "conditions": {"paths": ["/a%2fb"]}}]}"#,
            "policies[0].conditions.paths[0]",
        ),
        (
            r#"{"apps": {"x": {"users": ["*"], "path_rules": {"nope": true}}}}"#,
            "apps.x.path_rules.nope",
        ),
    ];
    for (json, field) in bad {
        let e = PolicyConfig::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{json}: {e}");
    }
    // Loosened for every app of the registry, `*` accepts it: requests for
    // apps without an entry are refused before any policy.
    cfg(
        r#"{"apps": {"x": {"users": ["*"], "path_rules": {"allow_encoded_slash": true}}},
            "policies": [{"name": "a", "apps": ["*"], "grant": {"block": true}, "conditions": {"paths": ["/a%2fb"]}}]}"#,
    );
    // Loosened for every app the policy names: accepted.
    cfg(
        r#"{"apps": {"x": {"users": ["*"], "path_rules": {"allow_encoded_slash": true, "keep_path_parameters": true}}},
            "policies": [{"name": "a", "apps": ["x"], "grant": {"block": true}, "conditions": {"paths": ["/a%2fb", "/c;d"]}}]}"#,
    );
}
