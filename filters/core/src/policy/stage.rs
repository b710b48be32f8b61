//! The conditional-access stage: one request head (and the identity handed
//! over by preauth) in, a plan out — continue (and whether to clear the
//! step-up marker on the response), or a local reply (denial, or the step-up
//! redirect / 401). Decision log lines and the counter to bump are part of
//! the plan; the host adapter only carries it out.

use super::address::{client_address, AddressError};
use super::config::AppRefusal;
use super::eval::{cookie_value, is_browser};
use super::log::decision_log;
use super::{evaluate, Decision, PolicyConfig, Request, StepUpMarker};
use crate::app;
use crate::denial::{Code, Denial};
use crate::oidc::handoff::{Handoff, HandoffError};
use crate::pipeline::{LogLevel, LogLine, Reply, RequestHead};

/// The outcome of a decision, for the `portcullis_ca.app.<app>.result.<r>` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaResult {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Step-up asked.
    StepUp,
}

impl CaResult {
    /// Every result, in the order of [`CaResult::index`].
    pub const ALL: [CaResult; 3] = [CaResult::Allow, CaResult::Deny, CaResult::StepUp];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CaResult::Allow => "allow",
            CaResult::Deny => "deny",
            CaResult::StepUp => "step_up",
        }
    }

    /// Position in [`CaResult::ALL`].
    pub fn index(self) -> usize {
        match self {
            CaResult::Allow => 0,
            CaResult::Deny => 1,
            CaResult::StepUp => 2,
        }
    }
}

/// The counter name of `app`'s `result` (characters outside `[A-Za-z0-9_-]`
/// become `_`; no app is `_none`).
pub fn metric_name(app: &str, result: CaResult) -> String {
    let safe: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let app = if safe.is_empty() { "_none" } else { &safe };
    format!("portcullis_ca.app.{app}.result.{}", result.label())
}

/// What the stage decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPlan {
    /// Answer with this instead of going on.
    pub reply: Option<Reply>,
    /// Going on with a satisfied step-up: clear the marker on the response
    /// (add [`PolicyConfig::clear_marker_cookie`] as a `Set-Cookie`).
    pub clear_marker: bool,
    /// Lines to log.
    pub logs: Vec<LogLine>,
    /// The counter to bump, if any: app id (empty: none) and result.
    pub count: Option<(String, CaResult)>,
}

/// The identity the stage gets from preauth.
#[derive(Debug, Clone, Copy)]
pub enum HandedOver<'a> {
    /// No identity (anonymous, passthrough).
    None,
    /// A signed-in user for an app.
    Identity(&'a Handoff),
    /// The filter-state value could not be read.
    Invalid(HandoffError),
}

fn reply(denial: &Denial, request_id: &str, accept: Option<&str>) -> Reply {
    let d = denial.render(request_id, accept);
    Reply {
        status: d.status,
        headers: d.headers,
        body: d.body.into_bytes(),
    }
}

/// Decides one request. `log_decisions`: format the JSON decision log line
/// (false when the host would drop it: formatting it is most of a decision's cost).
pub fn on_request(
    config: &PolicyConfig,
    head: &RequestHead,
    request_id: &str,
    handed_over: HandedOver<'_>,
    now: u64,
    log_decisions: bool,
) -> CaPlan {
    let accept = head.header("accept");
    let prefix = "portcullis-conditional-access";
    let deny = |denial: &Denial, app: &str, logs: Vec<LogLine>| CaPlan {
        reply: Some(reply(denial, request_id, accept)),
        clear_marker: false,
        logs,
        count: Some((app.to_string(), CaResult::Deny)),
    };
    let handoff = match handed_over {
        HandedOver::None => None,
        HandedOver::Identity(h) => Some(h),
        HandedOver::Invalid(e) => {
            let mut plan = deny(
                &Denial::from(Code::IdentityHandoffInvalid),
                "",
                vec![LogLine::new(
                    LogLevel::Error,
                    format!("{prefix}: [{request_id}] {e}"),
                )],
            );
            // A broken handoff is not a decision: not counted.
            plan.count = None;
            return plan;
        }
    };
    let raw_path = head.path();
    let method = head.method();
    let host = head.authority();
    let route = head.route();
    let handed_app = handoff.map(|h| h.app.as_str());
    let app = match config.select_app(route, handed_app, host) {
        Ok(app) => app,
        Err(refusal) => {
            let (denial, why) = match refusal {
                AppRefusal::RouteInvalid => (
                    app::route_app_unknown(),
                    "the route's portcullis.app metadata is not an app id".to_string(),
                ),
                AppRefusal::Mismatch => (
                    app::app_mismatch(),
                    format!(
                        "the identity was handed over for app `{}`, the request goes to {}",
                        handed_app.unwrap_or(""),
                        match route.id() {
                            Some(id) => format!("app `{id}` (route)"),
                            None => format!("another app (Host `{}`)", host.escape_debug()),
                        }
                    ),
                ),
            };
            let line = LogLine::new(
                LogLevel::Warn,
                format!(
                    "{prefix}: [{request_id}] refused with {}: {why}",
                    denial.public_code()
                ),
            );
            return deny(&denial, "", vec![line]);
        }
    };
    let mut logs = Vec::new();
    if config.app(app).is_none() {
        logs.push(LogLine::new(
            LogLevel::Warn,
            format!(
                "{prefix}: [{request_id}] app `{}` has no entry in `apps`: not_assigned",
                app.escape_debug()
            ),
        ));
    }
    let xff = head.joined("x-forwarded-for");
    let client = match client_address(
        &config.address,
        head.source_address.as_deref(),
        xff.as_deref(),
    ) {
        Ok(ip) => Some(ip),
        Err(AddressError::NoDownstream) => None,
        Err(e) => {
            logs.push(LogLine::new(
                LogLevel::Warn,
                format!("{prefix}: [{request_id}] {e}"),
            ));
            return deny(&Denial::from(Code::ClientAddressInvalid), app, logs);
        }
    };
    let country = config
        .country_header
        .as_deref()
        .and_then(|h| head.header(h));
    let marker = head
        .header("cookie")
        .and_then(|c| cookie_value(c, &config.step_up_cookie))
        .and_then(StepUpMarker::parse);
    let req = Request {
        app,
        identity: handoff.map(|h| &h.identity),
        client,
        country,
        method,
        path: raw_path,
        user_agent: head.header("user-agent"),
        browser: is_browser(accept, head.header("x-requested-with")),
        now,
        marker,
    };
    let eval = evaluate(config, &req);
    if log_decisions {
        logs.push(LogLine::new(
            LogLevel::Info,
            decision_log(&eval, &req, request_id),
        ));
    }
    let result = match &eval.decision {
        Decision::Allow => CaResult::Allow,
        Decision::Deny { .. } => CaResult::Deny,
        Decision::StepUp(_) => CaResult::StepUp,
    };
    let answer = match &eval.decision {
        Decision::Allow => None,
        Decision::Deny { .. } => {
            let d = eval
                .decision
                .denial()
                .unwrap_or_else(|| Denial::PolicyBlocked(String::new()));
            Some(reply(&d, request_id, accept))
        }
        Decision::StepUp(step) => {
            let mut headers = vec![
                ("cache-control".to_string(), "no-store".to_string()),
                (
                    "set-cookie".to_string(),
                    config.marker_cookie(&step.marker(now)),
                ),
            ];
            if req.browser {
                headers.push(("location".to_string(), step.login_url(raw_path)));
                Some(Reply {
                    status: 302,
                    headers,
                    body: Vec::new(),
                })
            } else {
                headers.push(("www-authenticate".to_string(), step.www_authenticate()));
                headers.push(("content-type".to_string(), "application/json".to_string()));
                Some(Reply {
                    status: 401,
                    headers,
                    body: step.json_body(raw_path, request_id).into_bytes(),
                })
            }
        }
    };
    CaPlan {
        clear_marker: answer.is_none() && marker.is_some(),
        reply: answer,
        logs,
        count: Some((app.to_string(), result)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    const NOW: u64 = 1_800_000_000;

    fn config() -> PolicyConfig {
        PolicyConfig::from_json(
            br#"{"mfa": {"step_up_acr": "urn:portcullis:mfa"},
                 "apps": {"hr": {"users": ["*"]}},
                 "hosts": {"hr.example": "hr"},
                 "policies": [{"name": "mfa", "apps": ["hr"], "conditions": {"paths": ["/admin"]},
                               "grant": {"mfa": true}}]}"#,
        )
        .unwrap()
    }

    fn head(path: &str, accept: &str, cookie: Option<&str>) -> RequestHead {
        let mut raw = vec![
            (":method".to_string(), b"GET".to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":authority".to_string(), b"hr.example".to_vec()),
            ("accept".to_string(), accept.as_bytes().to_vec()),
        ];
        if let Some(c) = cookie {
            raw.push(("cookie".to_string(), c.as_bytes().to_vec()));
        }
        let mut h = RequestHead::from_raw(raw);
        h.source_address = Some("198.51.100.7:4000".into());
        h
    }

    fn alice() -> Handoff {
        Handoff {
            v: 1,
            app: "hr".into(),
            identity: Identity {
                sub: "alice".into(),
                amr: vec!["pwd".into()],
                auth_time: Some(NOW - 60),
                iat: NOW - 60,
                exp: NOW + 3600,
                ..Identity::default()
            },
        }
    }

    #[test]
    fn step_up_replies_come_from_the_core() {
        let c = config();
        let id = alice();
        let browser = on_request(
            &c,
            &head("/admin", "text/html", None),
            "r1",
            HandedOver::Identity(&id),
            NOW,
            true,
        );
        let r = browser.reply.unwrap();
        assert_eq!(r.status, 302);
        assert!(r
            .header("location")
            .unwrap()
            .starts_with("/.auth/login?rd=%2Fadmin&acr="));
        assert!(r.header("set-cookie").unwrap().contains("Max-Age="));
        assert_eq!(browser.count, Some(("hr".to_string(), CaResult::StepUp)));
        assert_eq!(browser.logs.len(), 1);

        let api = on_request(
            &c,
            &head("/admin", "application/json", None),
            "r2",
            HandedOver::Identity(&id),
            NOW,
            false,
        );
        assert!(
            api.logs.is_empty(),
            "no decision line when the host drops it"
        );
        let r = api.reply.unwrap();
        assert_eq!(r.status, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_user_authentication"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "step_up_required");
        assert_eq!(body["request_id"], "r2");
    }

    #[test]
    fn allowed_requests_go_on_and_denials_and_refusals_reply() {
        let c = config();
        let id = alice();
        let ok = on_request(
            &c,
            &head("/", "text/html", Some("portcullis_stepup=1")),
            "r",
            HandedOver::Identity(&id),
            NOW,
            false,
        );
        assert!(ok.reply.is_none());
        assert_eq!(ok.count, Some(("hr".to_string(), CaResult::Allow)));

        let mut other = alice();
        other.app = "wiki".into();
        let mismatch = on_request(
            &c,
            &head("/", "application/json", None),
            "r",
            HandedOver::Identity(&other),
            NOW,
            false,
        );
        let r = mismatch.reply.unwrap();
        assert!(String::from_utf8_lossy(&r.body).contains("app_mismatch"));
        assert_eq!(mismatch.count, Some((String::new(), CaResult::Deny)));

        let broken = on_request(
            &c,
            &head("/", "application/json", None),
            "r",
            HandedOver::Invalid(HandoffError::Malformed),
            NOW,
            false,
        );
        assert_eq!(broken.reply.unwrap().status, 500);
        assert_eq!(broken.count, None);
    }

    #[test]
    fn metric_names_are_sanitised() {
        assert_eq!(
            metric_name("a.b", CaResult::Allow),
            "portcullis_ca.app.a_b.result.allow"
        );
        assert_eq!(
            metric_name("", CaResult::Deny),
            "portcullis_ca.app._none.result.deny"
        );
    }
}
