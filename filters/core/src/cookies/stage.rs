//! The cookie stage: request head in, the app it belongs to and the header
//! edits (proxy cookies out, `Accept-Encoding: identity` for body
//! translation) out, or a refusal; response headers in, the `Set-Cookie` and
//! URL-header edits and the body plan out.

use super::{AppPolicy, BodyPlan, BodyRewriter, CookieFilterConfig, CookieHeaderAction};
use super::{SetCookieOutcome, SkipReason};
use crate::app::{self, Chosen};
use crate::pipeline::{HeaderEdit, LogLevel, LogLine, Reply, RequestHead};

/// The response headers that carry URLs and may be translated.
pub const URL_HEADERS: [&str; 4] = ["location", "content-location", "refresh", "link"];

/// What the stage decided for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieRequestPlan {
    /// Index of the request's app in `apps`, if any.
    pub app: Option<usize>,
    /// Request header edits.
    pub edits: Vec<HeaderEdit>,
    /// Answer with this instead of going on.
    pub reply: Option<Reply>,
    /// Lines to log.
    pub logs: Vec<LogLine>,
}

/// What the stage decided for the response headers.
#[derive(Debug)]
pub struct CookieResponsePlan {
    /// Response header edits.
    pub edits: Vec<HeaderEdit>,
    /// Translate the body with this rewriter (chunk by chunk).
    pub body: Option<BodyRewriter>,
    /// Lines to log.
    pub logs: Vec<LogLine>,
}

const PREFIX: &str = "portcullis-cookie";

/// Decides the request. `context` names the stream in log lines.
pub fn on_request(
    config: &CookieFilterConfig,
    head: &RequestHead,
    request_id: &str,
    context: u32,
) -> CookieRequestPlan {
    let authority = head
        .header(":authority")
        .or_else(|| head.header("host"))
        .unwrap_or("");
    let route = head.route();
    let mut plan = CookieRequestPlan {
        app: None,
        edits: Vec::new(),
        reply: None,
        logs: Vec::new(),
    };
    plan.app = match config.select(route, authority, head.path()) {
        Chosen::Route { app, .. } | Chosen::Host(app) => Some(app),
        Chosen::None => None,
        Chosen::UnknownRoute => {
            // Its cookies would go unhardened and its URLs untranslated.
            plan.logs.push(LogLine::new(
                LogLevel::Warn,
                format!(
                    "{PREFIX}: context {context} request {request_id}: refused with route_app_unknown: the route names {}, which no entry of `apps` names",
                    match route.id() {
                        Some(id) => format!("app `{id}`"),
                        None => "a value that is not an app id".to_string(),
                    }
                ),
            ));
            let d = app::route_app_unknown().render(request_id, head.header("accept"));
            plan.reply = Some(Reply {
                status: d.status,
                headers: d.headers,
                body: d.body.into_bytes(),
            });
            return plan;
        }
    };
    if !head.raw_cookies.is_empty() {
        let values: Vec<&[u8]> = head.raw_cookies.iter().map(Vec::as_slice).collect();
        match config.strip_request_cookies_bytes(&values).0 {
            CookieHeaderAction::Unchanged => {}
            CookieHeaderAction::Remove => plan.edits.push(HeaderEdit::Remove("cookie".into())),
            CookieHeaderAction::Replace(v) => {
                plan.edits.push(HeaderEdit::Remove("cookie".into()));
                plan.edits.push(HeaderEdit::Add("cookie".into(), v));
            }
        }
    }
    let app = plan.app.and_then(|i| config.apps.get(i));
    if app.is_some_and(AppPolicy::wants_identity_encoding) {
        plan.edits
            .push(HeaderEdit::set("accept-encoding", "identity"));
    }
    plan
}

fn values_of<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn replace(edits: &mut Vec<HeaderEdit>, name: &str, values: Vec<Vec<u8>>) {
    edits.push(HeaderEdit::Remove(name.to_string()));
    edits.extend(
        values
            .into_iter()
            .map(|v| HeaderEdit::Add(name.to_string(), v)),
    );
}

/// Decides the response headers (`headers`: names in any case, value bytes)
/// for the request's app (`app`, from [`on_request`]). `end_of_stream`: the
/// response has no body.
pub fn on_response_headers(
    config: &CookieFilterConfig,
    app: Option<usize>,
    headers: &[(String, Vec<u8>)],
    end_of_stream: bool,
    request_id: &str,
    context: u32,
) -> CookieResponsePlan {
    let mut plan = CookieResponsePlan {
        edits: Vec::new(),
        body: None,
        logs: Vec::new(),
    };
    let policy = app.and_then(|i| config.apps.get(i));
    let set_cookies = values_of(headers, "set-cookie");
    if !set_cookies.is_empty() {
        let mut out = Vec::with_capacity(set_cookies.len());
        let mut changed = false;
        for raw in &set_cookies {
            let text = String::from_utf8_lossy(raw);
            // A value that is not UTF-8 is only checked for a proxy name, never rewritten.
            let for_app = if matches!(text, std::borrow::Cow::Borrowed(_)) {
                policy
            } else {
                None
            };
            match config.apply_set_cookie(for_app, &text) {
                SetCookieOutcome::Unchanged => out.push(raw.to_vec()),
                SetCookieOutcome::Rewritten(v) => {
                    changed = true;
                    out.push(v.into_bytes());
                }
                SetCookieOutcome::Refused { name } => {
                    changed = true;
                    plan.logs.push(LogLine::new(
                        LogLevel::Warn,
                        format!(
                            "{PREFIX}: context {context} request {request_id}: refused a Set-Cookie from the app for the proxy's cookie name `{}`",
                            name.escape_debug()
                        ),
                    ));
                }
            }
        }
        if changed {
            replace(&mut plan.edits, "set-cookie", out);
        }
    }
    let Some(policy) = policy else {
        return plan;
    };
    for name in URL_HEADERS {
        let values = values_of(headers, name);
        if values.is_empty() {
            continue;
        }
        let mut changed = false;
        let out: Vec<Vec<u8>> = values
            .iter()
            .map(|raw| {
                let translated = std::str::from_utf8(raw)
                    .ok()
                    .and_then(|v| policy.translate_header(name, v));
                match translated {
                    Some(t) => {
                        changed = true;
                        t.into_bytes()
                    }
                    None => raw.to_vec(),
                }
            })
            .collect();
        if changed {
            replace(&mut plan.edits, name, out);
        }
    }
    if let Some(body) = policy.body.as_ref().filter(|_| !end_of_stream) {
        let one = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        match body.plan(
            one("content-type").as_deref(),
            one("content-encoding").as_deref(),
            one("content-length").as_deref(),
        ) {
            BodyPlan::Rewrite => {
                // The length changes as URLs are rewritten: send it chunked.
                plan.edits
                    .push(HeaderEdit::Remove("content-length".to_string()));
                plan.body = Some(body.rewriter());
            }
            BodyPlan::Skip(reason) => plan.logs.push(skip_line(reason, request_id, context)),
        }
    }
    plan
}

fn skip_line(reason: SkipReason, request_id: &str, context: u32) -> LogLine {
    LogLine::new(
        LogLevel::Debug,
        format!(
            "{PREFIX}: context {context} request {request_id}: body not translated ({reason:?})"
        ),
    )
}

/// Translates one body chunk; the log line when the size limit is first reached.
pub fn on_body_chunk(
    config: &CookieFilterConfig,
    app: Option<usize>,
    rewriter: &mut BodyRewriter,
    chunk: &[u8],
    end_of_stream: bool,
    request_id: &str,
    context: u32,
) -> (Option<Vec<u8>>, Option<LogLine>) {
    let Some(policy) = app
        .and_then(|i| config.apps.get(i))
        .and_then(|a| a.body.as_ref())
    else {
        return (None, None);
    };
    let was_limited = rewriter.limit_reached();
    let out = rewriter.push(&policy.matcher, chunk, end_of_stream);
    let line = (rewriter.limit_reached() && !was_limited).then(|| {
        LogLine::new(
            LogLevel::Warn,
            format!(
                "{PREFIX}: context {context} request {request_id}: body larger than max_body_bytes ({}); the rest passes untranslated",
                policy.max_body_bytes
            ),
        )
    });
    ((out != chunk).then_some(out), line)
}
