//! The evaluator: one request, the app's indexed policies, one decision.
//!
//! Rules, in order:
//! 1. An app the configuration does not define is refused (`not_assigned`).
//!    A path the app's path rule refuses is refused (`ambiguous_path`).
//!    Every defined app has an assignment (users, groups, `open` for every
//!    signed-in user, or `*` for everyone): whoever it does not cover is
//!    refused (`not_assigned`); an anonymous request is sent to sign in first.
//! 2. Every enforced policy that applies (app, assignments with exclude winning,
//!    all conditions) must be satisfied. A `block` wins over everything else;
//!    then an unmet control that no sign-in can fix (a claim) denies with
//!    `policy_blocked:<name>`; then missing MFA / `acr` / a fresh enough sign-in
//!    becomes one step-up that asks for all of them at once.
//! 3. Report-only policies are judged the same way and reported, never enforced.
//!
//! Step-up loop guard: when the filter answers with a step-up it also sets a
//! short-lived marker cookie holding `<now>.<fingerprint>`, where the
//! fingerprint is a 32-bit set of the policies that asked (one bit per policy
//! name, by hash). If a later request carries a marker whose set covers every
//! policy that now asks for a step-up, and its session was issued at or after
//! the marker's time (`Identity::iat ≥ started`: the user did sign in again),
//! those policies are still unmet although they were asked for, so the provider could not satisfy them:
//! the request is denied (`mfa_required`, or `policy_blocked:<name>`) instead of
//! being redirected again. An old session (the user came back without
//! finishing) is simply stepped up again. The marker is not secret: forging it
//! can only turn one's own step-up into a denial.

use super::config::{
    ClientType, Grant, Location, LocationSet, Operator, Platform, Policy, PolicyConfig,
    PolicyState, Principals, RiskLevel,
};
use crate::denial::{Code, Denial};
use crate::identity::Identity;
use crate::path::{CanonicalPath, PathRefusal};
use std::fmt;
use std::net::IpAddr;

/// Everything the evaluator looks at for one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The app id.
    pub app: &'a str,
    /// The signed-in user, if any.
    pub identity: Option<&'a Identity>,
    /// The client address ([`super::address::client_address`]); `None` if unknown.
    pub client: Option<IpAddr>,
    /// The country from the trusted geo-IP header, if any.
    pub country: Option<&'a str>,
    /// The HTTP method.
    pub method: &'a str,
    /// The request's `:path` as received (a query is ignored): the app's
    /// path rule ([`crate::path`]) judges it before any policy.
    pub path: &'a str,
    /// The `User-Agent` header.
    pub user_agent: Option<&'a str>,
    /// Whether the client is a browser ([`is_browser`]).
    pub browser: bool,
    /// Now, Unix seconds.
    pub now: u64,
    /// The step-up marker the request carries, if any.
    pub marker: Option<StepUpMarker>,
}

/// The step-up marker: when a step-up was asked and for which policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUpMarker {
    /// When the step-up was asked (Unix seconds).
    pub started: u64,
    /// [`StepUp::fingerprint`] of the step-up.
    pub fingerprint: u32,
}

impl StepUpMarker {
    /// Reads a cookie value `<started>.<fingerprint as 8 hex digits>`.
    pub fn parse(value: &str) -> Option<StepUpMarker> {
        let (t, f) = value.split_once('.')?;
        if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) || f.len() != 8 {
            return None;
        }
        Some(StepUpMarker {
            started: t.parse().ok()?,
            fingerprint: u32::from_str_radix(f, 16).ok()?,
        })
    }

    /// The cookie value.
    pub fn value(&self) -> String {
        format!("{}.{:08x}", self.started, self.fingerprint)
    }
}

/// A condition or control that was not met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet<'c> {
    /// The user is not assigned to the app.
    Assignment,
    /// The request needs a signed-in user.
    SignIn,
    /// The policy blocks.
    Block,
    /// No `amr` value counts as multi-factor authentication.
    Mfa,
    /// The `acr` is not one of the accepted values.
    Acr,
    /// A claim does not have the required value.
    Claim(&'c str),
    /// The last sign-in is older than the sign-in frequency.
    SignInFrequency,
}

impl Unmet<'_> {
    /// True when a new sign-in at the provider can fix it.
    pub fn steppable(&self) -> bool {
        matches!(
            self,
            Unmet::SignIn | Unmet::Mfa | Unmet::Acr | Unmet::SignInFrequency
        )
    }
}

impl fmt::Display for Unmet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Assignment => f.write_str("assignment"),
            Unmet::SignIn => f.write_str("sign_in"),
            Unmet::Block => f.write_str("block"),
            Unmet::Mfa => f.write_str("mfa"),
            Unmet::Acr => f.write_str("acr"),
            Unmet::Claim(c) => write!(f, "claim:{c}"),
            Unmet::SignInFrequency => f.write_str("sign_in_frequency"),
        }
    }
}

/// How one policy judged the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'c> {
    /// Its apps, assignments or conditions do not cover the request.
    NotApplicable,
    /// It applies and is satisfied.
    Satisfied,
    /// It applies and blocks.
    Blocked,
    /// It applies; a new sign-in could satisfy it.
    StepUp(Vec<Unmet<'c>>),
    /// It applies and cannot be satisfied by signing in again.
    Unmet(Vec<Unmet<'c>>),
}

impl<'c> Outcome<'c> {
    /// `not_applicable`, `satisfied`, `block`, `step_up` or `unmet`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::NotApplicable => "not_applicable",
            Outcome::Satisfied => "satisfied",
            Outcome::Blocked => "block",
            Outcome::StepUp(_) => "step_up",
            Outcome::Unmet(_) => "unmet",
        }
    }

    /// The unmet conditions (`block` for a block).
    pub fn unmet(&self) -> &[Unmet<'c>] {
        match self {
            Outcome::StepUp(u) | Outcome::Unmet(u) => u,
            Outcome::Blocked => &[Unmet::Block],
            _ => &[],
        }
    }
}

/// One policy's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult<'c> {
    /// The policy.
    pub policy: &'c Policy,
    /// What it found.
    pub outcome: Outcome<'c>,
}

/// The stable code of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode<'c> {
    /// `policy_blocked:<name>`.
    PolicyBlocked(&'c str),
    /// `not_assigned`.
    NotAssigned,
    /// `location_blocked` (a blocking policy with a location condition).
    LocationBlocked,
    /// `risk_too_high` (a blocking policy with a risk condition).
    RiskTooHigh,
    /// `mfa_required` (a step-up that came back without MFA).
    MfaRequired,
    /// `ambiguous_path`: the app's path rule refused the path, before any policy.
    AmbiguousPath(PathRefusal),
}

impl DenyCode<'_> {
    /// The code as on the denial page.
    pub fn code(&self) -> String {
        match self {
            DenyCode::PolicyBlocked(n) => format!("policy_blocked:{n}"),
            DenyCode::NotAssigned => "not_assigned".into(),
            DenyCode::LocationBlocked => "location_blocked".into(),
            DenyCode::RiskTooHigh => "risk_too_high".into(),
            DenyCode::MfaRequired => "mfa_required".into(),
            DenyCode::AmbiguousPath(_) => "ambiguous_path".into(),
        }
    }
}

/// What to ask the provider for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp<'c> {
    /// `acr_values` (space-separated, most wanted first), if any.
    pub acr: Option<String>,
    /// `max_age` in seconds, if any.
    pub max_age: Option<u64>,
    /// The policies that asked (empty for a plain sign-in).
    pub policies: Vec<&'c Policy>,
    /// What they found missing.
    pub unmet: Vec<Unmet<'c>>,
    /// The set of policies that asked (bit `fnv1a(name) % 32` each), for the loop guard.
    pub fingerprint: u32,
}

/// The evaluator's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'c> {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny {
        /// The stable code.
        code: DenyCode<'c>,
        /// The policy that refused, if one did.
        policy: Option<&'c Policy>,
        /// What was not met.
        unmet: Vec<Unmet<'c>>,
    },
    /// Send the user to sign in again with stronger or fresher authentication.
    StepUp(StepUp<'c>),
}

/// A decision and every policy result behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<'c> {
    /// The enforced verdict.
    pub decision: Decision<'c>,
    /// Results of enforced and report-only policies for the app, in config order.
    pub results: Vec<PolicyResult<'c>>,
}

// ---------------------------------------------------------------- request helpers

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let Some(&first) = n.first() else {
        return true;
    };
    h.windows(n.len()).any(|w| {
        w.first().is_some_and(|c| c.eq_ignore_ascii_case(&first)) && w.eq_ignore_ascii_case(n)
    })
}

/// The device platform named by a `User-Agent` (heuristic, order matters:
/// Android before Linux, iOS before macOS since iOS agents say "like Mac OS X").
pub fn platform(user_agent: Option<&str>) -> Platform {
    let Some(ua) = user_agent else {
        return Platform::Other;
    };
    if contains_ignore_case(ua, "android") {
        Platform::Android
    } else if contains_ignore_case(ua, "iphone")
        || contains_ignore_case(ua, "ipad")
        || contains_ignore_case(ua, "ipod")
    {
        Platform::Ios
    } else if contains_ignore_case(ua, "windows") {
        Platform::Windows
    } else if contains_ignore_case(ua, "macintosh") || contains_ignore_case(ua, "mac os x") {
        Platform::Macos
    } else if contains_ignore_case(ua, "linux")
        || contains_ignore_case(ua, "x11")
        || contains_ignore_case(ua, "cros")
    {
        Platform::Linux
    } else {
        Platform::Other
    }
}

/// A browser: `Accept` names `text/html` and there is no `X-Requested-With`.
pub fn is_browser(accept: Option<&str>, x_requested_with: Option<&str>) -> bool {
    x_requested_with.is_none()
        && accept.is_some_and(|a| {
            a.split(',').any(|item| {
                item.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("text/html")
            })
        })
}

/// The risk level a claim value names; a missing claim is `None`, an unknown value `High`.
pub fn risk_level(value: Option<&str>) -> RiskLevel {
    match value {
        None => RiskLevel::None,
        Some(v) if v.eq_ignore_ascii_case("none") || v.is_empty() => RiskLevel::None,
        Some(v) if v.eq_ignore_ascii_case("low") => RiskLevel::Low,
        Some(v) if v.eq_ignore_ascii_case("medium") => RiskLevel::Medium,
        Some(_) => RiskLevel::High,
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'h>(cookie_header: &'h str, name: &str) -> Option<&'h str> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// A 32-bit set of names: bit `fnv1a(name) % 32` for each.
fn fingerprint<'c>(names: impl Iterator<Item = &'c str>) -> u32 {
    names.fold(0, |set, n| {
        let h = n.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        set | (1 << (h % 32))
    })
}

// ---------------------------------------------------------------- evaluation

fn principal_matches(p: &Principals, identity: Option<&Identity>) -> bool {
    if p.everyone {
        return true;
    }
    let Some(id) = identity else {
        return false;
    };
    if p.signed_in {
        return true;
    }
    p.users.iter().any(|u| {
        *u == id.sub
            || id
                .name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(u))
            || id
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(u))
    }) || p.groups.iter().any(|g| id.groups.iter().any(|ig| ig == g))
}

fn in_location(loc: &Location, req: &Request<'_>) -> bool {
    req.client
        .is_some_and(|ip| loc.cidrs.iter().any(|c| c.contains(ip)))
        || req.country.is_some_and(|c| {
            loc.countries
                .iter()
                .any(|k| k.eq_ignore_ascii_case(c.trim()))
        })
}

fn in_set(set: &LocationSet, locations: &[Location], req: &Request<'_>) -> bool {
    set.all
        || (set.trusted && locations.iter().any(|l| l.trusted && in_location(l, req)))
        || set
            .named
            .iter()
            .any(|&i| locations.get(i).is_some_and(|l| in_location(l, req)))
}

/// Per-request values computed once.
struct Facts<'a> {
    /// The path under the app's rule.
    path: CanonicalPath<'a>,
    user_agent: Option<&'a str>,
    /// Computed on first use: most policies have no platform condition.
    platform: std::cell::Cell<Option<Platform>>,
    client_type: ClientType,
    sign_in_risk: RiskLevel,
    user_risk: RiskLevel,
}

impl Facts<'_> {
    fn platform(&self) -> Platform {
        match self.platform.get() {
            Some(p) => p,
            None => {
                let p = platform(self.user_agent);
                self.platform.set(Some(p));
                p
            }
        }
    }
}

fn applies(cfg: &PolicyConfig, p: &Policy, req: &Request<'_>, facts: &Facts<'_>) -> bool {
    if !principal_matches(&p.include, req.identity)
        || (!p.exclude.is_empty() && principal_matches(&p.exclude, req.identity))
    {
        return false;
    }
    let c = &p.conditions;
    if let Some(m) = &c.methods {
        if !m.iter().any(|m| m.eq_ignore_ascii_case(req.method)) {
            return false;
        }
    }
    if let Some(paths) = &c.paths {
        if !paths.iter().any(|pre| facts.path.is_under(pre)) {
            return false;
        }
    }
    if c.client_types
        .is_some_and(|m| !m.has(facts.client_type as u8))
        || c.platforms.is_some_and(|m| !m.has(facts.platform() as u8))
        || c.sign_in_risk
            .is_some_and(|m| !m.has(facts.sign_in_risk as u8))
        || c.user_risk.is_some_and(|m| !m.has(facts.user_risk as u8))
    {
        return false;
    }
    if let Some(l) = &c.locations {
        if !in_set(&l.include, &cfg.locations, req) || in_set(&l.exclude, &cfg.locations, req) {
            return false;
        }
    }
    true
}

fn has_mfa(cfg: &PolicyConfig, id: Option<&Identity>) -> bool {
    id.is_some_and(|id| id.amr.iter().any(|a| cfg.mfa_amr.contains(a)))
}

fn has_acr(accepted: &[String], id: Option<&Identity>) -> bool {
    id.and_then(|id| id.acr.as_deref())
        .is_some_and(|a| accepted.iter().any(|x| x == a))
}

fn has_claim(id: Option<&Identity>, k: &str, v: &str) -> bool {
    id.and_then(|id| id.claims.get(k)).is_some_and(|x| x == v)
}

fn fresh_enough(p: &Policy, req: &Request<'_>) -> bool {
    p.sign_in_frequency.is_none_or(|freq| {
        req.identity
            .is_some_and(|id| req.now.saturating_sub(id.auth_time.unwrap_or(id.iat)) <= freq)
    })
}

/// The common case without allocating: every control met.
fn satisfied(cfg: &PolicyConfig, p: &Policy, req: &Request<'_>) -> bool {
    let id = req.identity;
    let grant_ok = match &p.grant {
        Grant::Block => false,
        Grant::None => true,
        Grant::Require {
            operator,
            mfa,
            acr,
            claims,
        } => {
            let mut results = [
                (*mfa).then(|| has_mfa(cfg, id)),
                (!acr.is_empty()).then(|| has_acr(acr, id)),
            ]
            .into_iter()
            .flatten()
            .chain(claims.iter().map(|(k, v)| has_claim(id, k, v)));
            match operator {
                Operator::All => results.all(|ok| ok),
                Operator::One => results.any(|ok| ok),
            }
        }
    };
    grant_ok && fresh_enough(p, req)
}

fn judge<'c>(cfg: &'c PolicyConfig, p: &'c Policy, req: &Request<'_>) -> Outcome<'c> {
    if satisfied(cfg, p, req) {
        return Outcome::Satisfied;
    }
    let mut unmet = Vec::new();
    let anonymous = req.identity.is_none();
    let id = req.identity;
    match &p.grant {
        Grant::Block => return Outcome::Blocked,
        Grant::None => {}
        Grant::Require {
            operator,
            mfa,
            acr,
            claims,
        } => {
            let mfa_ok = has_mfa(cfg, id);
            let acr_ok = has_acr(acr, id);
            let mut any_met = false;
            if *mfa {
                if mfa_ok {
                    any_met = true;
                } else {
                    unmet.push(Unmet::Mfa);
                }
            }
            if !acr.is_empty() {
                if acr_ok {
                    any_met = true;
                } else {
                    unmet.push(Unmet::Acr);
                }
            }
            for (k, v) in claims {
                if has_claim(id, k, v) {
                    any_met = true;
                } else {
                    unmet.push(Unmet::Claim(k));
                }
            }
            if *operator == Operator::One && any_met {
                unmet.clear();
            }
            if !unmet.is_empty() && !anonymous {
                let fixable = match operator {
                    Operator::All => unmet.iter().all(Unmet::steppable),
                    Operator::One => unmet.iter().any(Unmet::steppable),
                };
                if !fixable {
                    return Outcome::Unmet(unmet);
                }
            }
        }
    }
    if !fresh_enough(p, req) {
        unmet.push(Unmet::SignInFrequency);
    }
    if unmet.is_empty() {
        Outcome::Satisfied
    } else {
        if anonymous {
            unmet.insert(0, Unmet::SignIn);
        }
        Outcome::StepUp(unmet)
    }
}

fn block_code(p: &Policy) -> DenyCode<'_> {
    let c = &p.conditions;
    if c.sign_in_risk.is_some() || c.user_risk.is_some() {
        DenyCode::RiskTooHigh
    } else if c.locations.is_some() {
        DenyCode::LocationBlocked
    } else {
        DenyCode::PolicyBlocked(&p.name)
    }
}

fn push_acr(acr: &mut Option<String>, value: &str) {
    match acr {
        Some(list) => {
            if !list.split(' ').any(|x| x == value) {
                list.push(' ');
                list.push_str(value);
            }
        }
        None => *acr = Some(value.to_string()),
    }
}

/// Evaluates `req` against the configuration.
pub fn evaluate<'c>(cfg: &'c PolicyConfig, req: &Request<'_>) -> Evaluation<'c> {
    let Some(index) = cfg.app(req.app) else {
        // No entry: nobody is assigned, and signing in cannot change that.
        return Evaluation {
            decision: Decision::Deny {
                code: DenyCode::NotAssigned,
                policy: None,
                unmet: vec![Unmet::Assignment],
            },
            results: Vec::new(),
        };
    };
    // The path rule first: a path some backend could read as another one is
    // refused before any policy (or the assignment) is looked at.
    let path = match index.path_rules.canonicalize(req.path) {
        Ok(p) => p,
        Err(why) => {
            return Evaluation {
                decision: Decision::Deny {
                    code: DenyCode::AmbiguousPath(why),
                    policy: None,
                    unmet: Vec::new(),
                },
                results: Vec::new(),
            }
        }
    };
    let claim = |name: &str| {
        req.identity
            .and_then(|id| id.claims.get(name))
            .map(String::as_str)
    };
    let facts = Facts {
        path,
        user_agent: req.user_agent,
        platform: std::cell::Cell::new(None),
        client_type: if req.browser {
            ClientType::Browser
        } else {
            ClientType::Api
        },
        sign_in_risk: risk_level(claim(&cfg.sign_in_risk_claim)),
        user_risk: risk_level(claim(&cfg.user_risk_claim)),
    };
    let mut results = Vec::with_capacity(index.policies.len());
    for &i in &index.policies {
        let Some(p) = cfg.policies.get(i) else {
            continue;
        };
        let outcome = if applies(cfg, p, req, &facts) {
            judge(cfg, p, req)
        } else {
            Outcome::NotApplicable
        };
        results.push(PolicyResult { policy: p, outcome });
    }

    let decision = decide(cfg, &index.assignment, req, &results);
    Evaluation { decision, results }
}

fn decide<'c>(
    cfg: &'c PolicyConfig,
    assignment: &'c Principals,
    req: &Request<'_>,
    results: &[PolicyResult<'c>],
) -> Decision<'c> {
    if !principal_matches(assignment, req.identity) {
        if req.identity.is_none() {
            return Decision::StepUp(StepUp {
                acr: None,
                max_age: None,
                policies: Vec::new(),
                unmet: vec![Unmet::SignIn],
                fingerprint: fingerprint(std::iter::empty()),
            });
        }
        return Decision::Deny {
            code: DenyCode::NotAssigned,
            policy: None,
            unmet: vec![Unmet::Assignment],
        };
    }
    let enforced = || {
        results
            .iter()
            .filter(|r| r.policy.state == PolicyState::Enabled)
    };
    if let Some(r) = enforced().find(|r| r.outcome == Outcome::Blocked) {
        return Decision::Deny {
            code: block_code(r.policy),
            policy: Some(r.policy),
            unmet: vec![Unmet::Block],
        };
    }
    if let Some(r) = enforced().find(|r| matches!(r.outcome, Outcome::Unmet(_))) {
        return Decision::Deny {
            code: DenyCode::PolicyBlocked(&r.policy.name),
            policy: Some(r.policy),
            unmet: r.outcome.unmet().to_vec(),
        };
    }
    let mut step: Option<StepUp<'c>> = None;
    for r in enforced() {
        let Outcome::StepUp(unmet) = &r.outcome else {
            continue;
        };
        let s = step.get_or_insert_with(|| StepUp {
            acr: None,
            max_age: None,
            policies: Vec::new(),
            unmet: Vec::new(),
            fingerprint: 0,
        });
        s.policies.push(r.policy);
        for u in unmet {
            match u {
                Unmet::Mfa => push_acr(&mut s.acr, &cfg.mfa_acr),
                Unmet::Acr => {
                    if let Grant::Require { acr, .. } = &r.policy.grant {
                        for a in acr {
                            push_acr(&mut s.acr, a);
                        }
                    }
                }
                Unmet::SignInFrequency => {
                    if let Some(f) = r.policy.sign_in_frequency {
                        s.max_age = Some(s.max_age.map_or(f, |m| m.min(f)));
                    }
                }
                _ => {}
            }
            if !s.unmet.contains(u) {
                s.unmet.push(*u);
            }
        }
    }
    let Some(mut step) = step else {
        return Decision::Allow;
    };
    step.fingerprint = fingerprint(step.policies.iter().map(|p| p.name.as_str()));
    // Loop guard: a new session since this very step-up was asked, still unmet → deny.
    if let (Some(id), Some(m)) = (req.identity, req.marker) {
        // Every policy asking now was asked last time (subset of the marker's set).
        if step.fingerprint & !m.fingerprint == 0 && id.iat >= m.started {
            let code = if step.unmet.contains(&Unmet::Mfa) {
                DenyCode::MfaRequired
            } else {
                DenyCode::PolicyBlocked(step.policies.first().map_or("", |p| p.name.as_str()))
            };
            return Decision::Deny {
                code,
                policy: step.policies.first().copied(),
                unmet: step.unmet,
            };
        }
    }
    Decision::StepUp(step)
}

// ---------------------------------------------------------------- answers

impl StepUp<'_> {
    /// The preauth filter's login URL for this step-up, returning to `return_to`
    /// (the request's relative URL): `/.auth/login?rd=…&acr=…&max_age=…`.
    pub fn login_url(&self, return_to: &str) -> String {
        use crate::oidc::url::percent_encode;
        let mut url = format!("/.auth/login?rd={}", percent_encode(return_to));
        if let Some(acr) = &self.acr {
            url.push_str("&acr=");
            url.push_str(&percent_encode(acr));
        }
        if let Some(m) = self.max_age {
            url.push_str("&max_age=");
            url.push_str(&m.to_string());
        }
        url
    }

    /// The marker to set with the step-up answer.
    pub fn marker(&self, now: u64) -> StepUpMarker {
        StepUpMarker {
            started: now,
            fingerprint: self.fingerprint,
        }
    }

    /// The JSON body of the 401 an API client gets.
    pub fn json_body(&self, return_to: &str, request_id: &str) -> String {
        let unmet: Vec<String> = self.unmet.iter().map(|u| u.to_string()).collect();
        let policies: Vec<&str> = self.policies.iter().map(|p| p.name.as_str()).collect();
        serde_json::json!({
            "error": "step_up_required",
            "message": "Sign in again with stronger or fresher authentication.",
            "acr_values": self.acr,
            "max_age": self.max_age,
            "unmet": unmet,
            "policies": policies,
            "login": self.login_url(return_to),
            "request_id": request_id,
        })
        .to_string()
    }

    /// The `WWW-Authenticate` value for the 401 (RFC 9470 style).
    pub fn www_authenticate(&self) -> String {
        let mut v = String::from("Bearer error=\"insufficient_user_authentication\"");
        if let Some(acr) = &self.acr {
            v.push_str(&format!(
                ", acr_values=\"{}\"",
                acr.replace(['"', '\\'], "")
            ));
        }
        if let Some(m) = self.max_age {
            v.push_str(&format!(", max_age={m}"));
        }
        v
    }
}

impl PolicyConfig {
    /// `Set-Cookie` value for the step-up marker.
    pub fn marker_cookie(&self, marker: &StepUpMarker) -> String {
        format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly;{} SameSite=Lax",
            self.step_up_cookie,
            marker.value(),
            self.step_up_ttl,
            if self.step_up_secure { " Secure;" } else { "" }
        )
    }

    /// `Set-Cookie` value that removes the marker.
    pub fn clear_marker_cookie(&self) -> String {
        format!(
            "{}=; Path=/; Max-Age=0; HttpOnly;{} SameSite=Lax",
            self.step_up_cookie,
            if self.step_up_secure { " Secure;" } else { "" }
        )
    }
}

impl Decision<'_> {
    /// `allow`, `deny` or `step_up`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny { .. } => "deny",
            Decision::StepUp(_) => "step_up",
        }
    }

    /// The denial page for a `Deny` (naming the policy and what was unmet).
    pub fn denial(&self) -> Option<Denial> {
        let Decision::Deny {
            code,
            policy,
            unmet,
        } = self
        else {
            return None;
        };
        match code {
            DenyCode::NotAssigned => return Some(Denial::NotAssigned),
            DenyCode::AmbiguousPath(why) => return Some(Denial::AmbiguousPath(*why)),
            _ => {}
        }
        let base = match code {
            DenyCode::LocationBlocked => "Access from your location is blocked",
            DenyCode::RiskTooHigh => "The sign-in risk is too high for this application",
            DenyCode::MfaRequired => {
                "This application requires multi-factor authentication, and the sign-in did not provide it"
            }
            _ => "An access policy blocked this request",
        };
        let mut sentence = base.to_string();
        if let Some(p) = policy {
            sentence.push_str(&format!(" (policy `{}`", p.name));
            if !unmet.is_empty() {
                let u: Vec<String> = unmet.iter().map(|u| u.to_string()).collect();
                sentence.push_str(&format!("; unmet: {}", u.join(", ")));
            }
            sentence.push(')');
        }
        sentence.push('.');
        let (code, detail) = match code {
            DenyCode::PolicyBlocked(n) => (Code::PolicyBlocked, Some(n.to_string())),
            DenyCode::LocationBlocked => (Code::LocationBlocked, None),
            DenyCode::RiskTooHigh => (Code::RiskTooHigh, None),
            DenyCode::MfaRequired => (Code::MfaRequired, None),
            DenyCode::NotAssigned => (Code::NotAssigned, None),
            DenyCode::AmbiguousPath(_) => (Code::AmbiguousPath, None),
        };
        Some(Denial::Explained {
            code,
            detail,
            sentence: Some(sentence),
        })
    }
}
