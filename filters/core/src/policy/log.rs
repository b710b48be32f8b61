//! The decision log: one JSON object per decision, on one line, for a SIEM.
//!
//! Fields: `time` (RFC 3339, UTC), `request_id`, `app`, `user` (subject or
//! null), `client` (address or null), `country`, `method`, `path`, `result`
//! (`allow` / `deny` / `step_up`), `code` (denials), `policy` (the deciding
//! policy), `unmet` (conditions not met), `step_up` (`acr`, `max_age`),
//! `policies` (each enforced policy for the app: `name`, `result`, `unmet`) and
//! `report_only` (the same for report-only policies: what they would have done).

use super::config::PolicyState;
use super::eval::{Decision, Evaluation, PolicyResult, Request};
use serde_json::{json, Value};

/// `YYYY-MM-DDThh:mm:ssZ` for Unix seconds.
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

fn result_json(r: &PolicyResult<'_>) -> Value {
    let unmet: Vec<String> = r.outcome.unmet().iter().map(|u| u.to_string()).collect();
    json!({"name": r.policy.name, "result": r.outcome.label(), "unmet": unmet})
}

/// Builds the log line for `eval` of `req`.
pub fn decision_log(eval: &Evaluation<'_>, req: &Request<'_>, request_id: &str) -> String {
    let (code, policy, unmet, step_up) = match &eval.decision {
        Decision::Allow => (None, None, Vec::new(), Value::Null),
        Decision::Deny {
            code,
            policy,
            unmet,
        } => (
            Some(code.code()),
            policy.map(|p| p.name.as_str()),
            unmet.iter().map(|u| u.to_string()).collect(),
            Value::Null,
        ),
        Decision::StepUp(s) => (
            None,
            s.policies.first().map(|p| p.name.as_str()),
            s.unmet.iter().map(|u| u.to_string()).collect(),
            json!({"acr": s.acr, "max_age": s.max_age}),
        ),
    };
    let enforced: Vec<Value> = eval
        .results
        .iter()
        .filter(|r| r.policy.state == PolicyState::Enabled)
        .map(result_json)
        .collect();
    let report_only: Vec<Value> = eval
        .results
        .iter()
        .filter(|r| r.policy.state == PolicyState::ReportOnly)
        .map(result_json)
        .collect();
    json!({
        "time": rfc3339(req.now),
        "request_id": request_id,
        "app": req.app,
        "user": req.identity.map(|i| i.sub.as_str()),
        "client": req.client.map(|c| c.to_string()),
        "country": req.country,
        "method": req.method,
        "path": req.path,
        "result": eval.decision.label(),
        "code": code,
        "policy": policy,
        "unmet": unmet,
        "step_up": step_up,
        "policies": enforced,
        "report_only": report_only,
    })
    .to_string()
}
