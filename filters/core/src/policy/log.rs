//! The decision log: one JSON object per decision, on one line, for a SIEM.
//!
//! Fields: `time` (RFC 3339, UTC), `request_id`, `app`, `user` (subject or
//! null), `client` (address or null), `country`, `method`, `path`, `result`
//! (`allow` / `deny` / `step_up`), `code` (denials), `policy` (the deciding
//! policy), `unmet` (conditions not met), `step_up` (`acr`, `max_age`),
//! `policies` (each enforced policy for the app: `name`, `result`, `unmet`) and
//! `report_only` (the same for report-only policies: what they would have done).

use super::config::PolicyState;
use super::eval::{Decision, Evaluation, PolicyResult, Request, Unmet};
use serde::Serialize;
use std::net::IpAddr;

/// `YYYY-MM-DDThh:mm:ssZ` for Unix seconds.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "days <= u64::MAX / 86_400 (about 2.1e14) fits i64, and no step of the civil-from-days \
              computation goes past a few times that: nothing can overflow or divide by zero"
)]
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), valid for any u64 day count we can meet.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An unmet condition, written as its display form.
struct Text<T>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct PolicyLine<'a> {
    name: &'a str,
    result: &'static str,
    unmet: Vec<Text<Unmet<'a>>>,
}

#[derive(Serialize)]
struct StepUpLine<'a> {
    acr: Option<&'a str>,
    max_age: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    app: &'a str,
    user: Option<&'a str>,
    client: Option<Text<IpAddr>>,
    country: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    result: &'static str,
    code: Option<String>,
    policy: Option<&'a str>,
    unmet: Vec<Text<Unmet<'a>>>,
    step_up: Option<StepUpLine<'a>>,
    policies: Vec<PolicyLine<'a>>,
    report_only: Vec<PolicyLine<'a>>,
}

fn lines<'a>(results: &'a [PolicyResult<'a>], state: PolicyState) -> Vec<PolicyLine<'a>> {
    results
        .iter()
        .filter(|r| r.policy.state == state)
        .map(|r| PolicyLine {
            name: &r.policy.name,
            result: r.outcome.label(),
            unmet: r.outcome.unmet().iter().copied().map(Text).collect(),
        })
        .collect()
}

/// Builds the log line for `eval` of `req`.
pub fn decision_log(eval: &Evaluation<'_>, req: &Request<'_>, request_id: &str) -> String {
    let (code, policy, unmet, step_up) = match &eval.decision {
        Decision::Allow => (None, None, Vec::new(), None),
        Decision::Deny {
            code,
            policy,
            unmet,
        } => (
            Some(code.code()),
            policy.map(|p| p.name.as_str()),
            unmet.iter().copied().map(Text).collect(),
            None,
        ),
        Decision::StepUp(s) => (
            None,
            s.policies.first().map(|p| p.name.as_str()),
            s.unmet.iter().copied().map(Text).collect(),
            Some(StepUpLine {
                acr: s.acr.as_deref(),
                max_age: s.max_age,
            }),
        ),
    };
    let line = Line {
        time: rfc3339(req.now),
        request_id,
        app: req.app,
        user: req.identity.map(|i| i.sub.as_str()),
        client: req.client.map(Text),
        country: req.country,
        method: req.method,
        path: crate::path::strip_query(req.path),
        result: eval.decision.label(),
        code,
        policy,
        unmet,
        step_up,
        policies: lines(&eval.results, PolicyState::Enabled),
        report_only: lines(&eval.results, PolicyState::ReportOnly),
    };
    serde_json::to_string(&line).unwrap_or_default()
}
