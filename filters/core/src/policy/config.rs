//! The policy language: JSON as operators write it (`Raw*`, unknown fields
//! refused), validated into [`PolicyConfig`], whose values cannot be wrong
//! (parsed CIDRs, upper-cased methods and countries, normalised path prefixes,
//! resolved location names) and whose policies are indexed by app.

use super::address::{AddressSource, OnInvalid};
use super::cidr::Cidr;
use crate::app::{host_name, is_app_id, RouteApp};
use crate::config::{check_header_name, parse_json, ConfigError};
use crate::path::{PathPrefix, PathRules};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Default `amr` values that count as multi-factor authentication.
pub const DEFAULT_MFA_AMR: &[&str] = &["mfa", "otp", "hwk"];
/// Default `acr` asked for when a policy wants multi-factor authentication.
pub const DEFAULT_MFA_ACR: &str = "mfa";
/// Default claim carrying the sign-in risk.
pub const DEFAULT_SIGN_IN_RISK_CLAIM: &str = "sign_in_risk";
/// Default claim carrying the user risk.
pub const DEFAULT_USER_RISK_CLAIM: &str = "user_risk";
/// Default name of the step-up marker cookie.
pub const DEFAULT_STEP_UP_COOKIE: &str = "__Host-portcullis-stepup";
/// Default lifetime of the step-up marker cookie, in seconds.
pub const DEFAULT_STEP_UP_TTL: u64 = 600;

// ---------------------------------------------------------------- raw JSON

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    client_address: RawClientAddress,
    #[serde(default)]
    country_header: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    default_app: Option<String>,
    #[serde(default)]
    mfa: RawMfa,
    #[serde(default)]
    risk: RawRisk,
    #[serde(default)]
    step_up: RawStepUp,
    #[serde(default)]
    named_locations: BTreeMap<String, RawLocation>,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

/// An entry of `apps` (the registry of apps): who is assigned to the app,
/// and its path rule.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// Every signed-in user is assigned.
    #[serde(default)]
    open: bool,
    #[serde(default)]
    path_rules: Option<PathRules>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClientAddress {
    #[serde(default)]
    xff_trusted_hops: u8,
    #[serde(default)]
    on_invalid: RawOnInvalid,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawOnInvalid {
    #[default]
    Deny,
    Downstream,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMfa {
    #[serde(default)]
    amr: Option<Vec<String>>,
    #[serde(default)]
    step_up_acr: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRisk {
    #[serde(default)]
    sign_in_claim: Option<String>,
    #[serde(default)]
    user_claim: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStepUp {
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocation {
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    trusted: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrincipals {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    state: PolicyState,
    apps: Vec<String>,
    #[serde(default)]
    assignments: RawAssignments,
    #[serde(default)]
    conditions: RawConditions,
    #[serde(default)]
    grant: Option<RawGrant>,
    #[serde(default)]
    session: Option<RawSession>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAssignments {
    #[serde(default)]
    include: Option<RawPrincipals>,
    #[serde(default)]
    exclude: RawPrincipals,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConditions {
    #[serde(default)]
    locations: Option<RawLocationCondition>,
    #[serde(default)]
    client_types: Option<Vec<ClientType>>,
    #[serde(default)]
    platforms: Option<Vec<Platform>>,
    #[serde(default)]
    sign_in_risk: Option<Vec<RiskLevel>>,
    #[serde(default)]
    user_risk: Option<Vec<RiskLevel>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocationCondition {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    block: bool,
    #[serde(default)]
    require: Operator,
    #[serde(default)]
    mfa: bool,
    #[serde(default)]
    acr: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    sign_in_frequency: u64,
}

// ---------------------------------------------------------------- shared enums

/// Whether a policy is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyState {
    /// Enforced.
    #[default]
    Enabled,
    /// Evaluated and logged as if enforced, never changes the outcome.
    ReportOnly,
    /// Ignored entirely (dropped at load).
    Disabled,
}

/// Browser or API client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// A browser: `Accept` names `text/html` and no `X-Requested-With`.
    Browser,
    /// Anything else (XHR, fetch, scripts, API clients).
    Api,
}

/// Device platform, as read from `User-Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Windows.
    Windows,
    /// macOS.
    Macos,
    /// Linux desktop (and ChromeOS).
    Linux,
    /// iPhone, iPad, iPod.
    Ios,
    /// Android.
    Android,
    /// Anything else, including no `User-Agent`.
    Other,
}

/// A risk level, as carried by the configured risk claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// No risk claim, or `none`.
    None,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high` (also any value that is not a known level: unknown is treated as high).
    High,
}

/// All or one of the grant controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Every control must be met.
    #[default]
    All,
    /// One control is enough.
    One,
}

/// A set of small enum values as a bitmask (no allocation when matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mask(pub u8);

impl Mask {
    /// True when `bit` is in the set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & (1 << bit) != 0
    }
}

// ---------------------------------------------------------------- validated

/// Users and groups (validated). Users match `sub` exactly, or the display
/// name (UPN) or e-mail address without regard to ASCII case; groups match exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principals {
    /// `"*"` was listed: everyone, signed in or not.
    pub everyone: bool,
    /// The app is declared `open`: every signed-in user.
    pub signed_in: bool,
    /// User entries as written.
    pub users: Vec<String>,
    /// Group names or ids.
    pub groups: Vec<String>,
}

impl Principals {
    /// True when nothing at all is listed.
    pub fn is_empty(&self) -> bool {
        !self.everyone && !self.signed_in && self.users.is_empty() && self.groups.is_empty()
    }
}

/// A named location (validated).
#[derive(Debug, Clone)]
pub struct Location {
    /// Its name.
    pub name: String,
    /// Address blocks.
    pub cidrs: Vec<Cidr>,
    /// ISO 3166-1 alpha-2 codes, upper-case.
    pub countries: Vec<String>,
    /// Part of "trusted" locations.
    pub trusted: bool,
}

/// A set of locations in a condition: keywords `all` and `trusted`, or named ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocationSet {
    /// `all`: any location, including an unknown one.
    pub all: bool,
    /// `trusted`: every location marked trusted.
    pub trusted: bool,
    /// Indexes into [`PolicyConfig::locations`].
    pub named: Vec<usize>,
}

/// The location condition of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocationCondition {
    /// The policy applies inside these locations…
    pub include: LocationSet,
    /// …except these (exclude wins).
    pub exclude: LocationSet,
}

/// When a policy applies (validated). `None` = no restriction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditions {
    /// Named locations.
    pub locations: Option<LocationCondition>,
    /// Client types (bit = `ClientType as u8`).
    pub client_types: Option<Mask>,
    /// Platforms (bit = `Platform as u8`).
    pub platforms: Option<Mask>,
    /// Sign-in risk levels (bit = `RiskLevel as u8`).
    pub sign_in_risk: Option<Mask>,
    /// User risk levels.
    pub user_risk: Option<Mask>,
    /// Methods, upper-case.
    pub methods: Option<Vec<String>>,
    /// Path prefixes (segment boundaries), matched under the app's path
    /// rule ([`crate::path::CanonicalPath::is_under`]).
    pub paths: Option<Vec<PathPrefix>>,
}

/// What a policy asks for once it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Refuse.
    Block,
    /// Require all/one of the controls.
    Require {
        /// All or one.
        operator: Operator,
        /// Multi-factor authentication (an `amr` from [`PolicyConfig::mfa_amr`]).
        mfa: bool,
        /// Accepted `acr` values (any one of them).
        acr: Vec<String>,
        /// Claims that must have the given value, each a control of its own.
        claims: Vec<(String, String)>,
    },
    /// No grant control (only session controls).
    None,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its name (as in `policy_blocked:<name>`).
    pub name: String,
    /// Enabled or report-only (disabled policies are dropped at load).
    pub state: PolicyState,
    /// Who it applies to.
    pub include: Principals,
    /// Who it never applies to (exclude wins).
    pub exclude: Principals,
    /// When it applies.
    pub conditions: Conditions,
    /// What it requires.
    pub grant: Grant,
    /// Sign-in frequency: maximum age of `auth_time`, in seconds.
    pub sign_in_frequency: Option<u64>,
}

/// Per-app view: assignment and the policies that name the app (or `*`), in config order.
#[derive(Debug, Clone, Default)]
pub struct AppIndex {
    /// Who is assigned to the app (never empty: an app needs an assignment
    /// or an explicit `open`).
    pub assignment: Principals,
    /// Indexes into [`PolicyConfig::policies`].
    pub policies: Vec<usize>,
    /// The app's path-equivalence rule ([`crate::path`]; the strict default
    /// unless `apps.<id>.path_rules` loosens it).
    pub path_rules: PathRules,
}

/// The validated conditional-access configuration.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Where the client address comes from.
    pub address: AddressSource,
    /// Request header (lower-case) carrying the country set by a trusted geo-IP stage.
    pub country_header: Option<String>,
    /// Host (lower-case, no port) → app id, for requests whose route names no app.
    pub hosts: HashMap<String, String>,
    /// App id for requests whose app is otherwise unknown (none: they are
    /// denied `not_assigned`).
    pub default_app: Option<String>,
    /// `amr` values that count as MFA.
    pub mfa_amr: Vec<String>,
    /// `acr` asked for when MFA is missing.
    pub mfa_acr: String,
    /// Claim carrying the sign-in risk.
    pub sign_in_risk_claim: String,
    /// Claim carrying the user risk.
    pub user_risk_claim: String,
    /// Step-up marker cookie name.
    pub step_up_cookie: String,
    /// Whether the marker cookie is `Secure`.
    pub step_up_secure: bool,
    /// Marker lifetime in seconds.
    pub step_up_ttl: u64,
    /// Named locations.
    pub locations: Vec<Location>,
    /// Enabled and report-only policies, in config order.
    pub policies: Vec<Policy>,
    /// The apps (the registry: every app id the configuration names is one of
    /// these). A request for any other app is denied `not_assigned`.
    pub apps: HashMap<String, AppIndex>,
}

/// Why conditional access cannot tell which app a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRefusal {
    /// The route's `portcullis.app` metadata is not an app id (`route_app_unknown`).
    RouteInvalid,
    /// The identity was handed over for another app than the one the request
    /// goes to (`app_mismatch`).
    Mismatch,
}

impl PolicyConfig {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<PolicyConfig, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        validate(raw)
    }

    /// The app a request belongs to ([`crate::app`]): the one its route names,
    /// else the one `hosts` lists for its Host ([`crate::app::host_name`]:
    /// port and case ignored, nothing else), else the one the preauth filter
    /// handed over, else `default_app`, else `""`. An app without an entry in
    /// `apps` (including `""`) is denied `not_assigned` by [`super::evaluate`].
    ///
    /// A handed-over identity must belong to that app: if the route or the
    /// Host names another one, the request is refused ([`AppRefusal::Mismatch`]).
    pub fn select_app<'a>(
        &'a self,
        route: RouteApp<'a>,
        handed_over: Option<&'a str>,
        host: &str,
    ) -> Result<&'a str, AppRefusal> {
        let own = match route {
            RouteApp::Named(id) => Some(id),
            RouteApp::Invalid => return Err(AppRefusal::RouteInvalid),
            RouteApp::Absent => self.hosts.get(&host_name(host)).map(String::as_str),
        };
        match (handed_over, own) {
            (Some(h), Some(o)) if h != o => Err(AppRefusal::Mismatch),
            (Some(app), _) | (None, Some(app)) => Ok(app),
            (None, None) => Ok(self.default_app.as_deref().unwrap_or("")),
        }
    }

    /// Every group some assignment or policy names, sorted: what the preauth
    /// filter must keep in the session (its `policy_groups`).
    pub fn groups_named(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .apps
            .values()
            .map(|a| &a.assignment)
            .chain(self.policies.iter().flat_map(|p| [&p.include, &p.exclude]))
            .flat_map(|p| p.groups.iter().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every claim the policies read (risk claims when a risk condition is used,
    /// claims required by grants), sorted: what the preauth filter must keep in
    /// the identity's `claims`.
    pub fn claims_named(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for p in &self.policies {
            if p.conditions.sign_in_risk.is_some() {
                out.push(self.sign_in_risk_claim.as_str());
            }
            if p.conditions.user_risk.is_some() {
                out.push(self.user_risk_claim.as_str());
            }
            if let Grant::Require { claims, .. } = &p.grant {
                out.extend(claims.iter().map(|(k, _)| k.as_str()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The entry of `app`; `None` for an app the configuration does not define.
    pub fn app(&self, app: &str) -> Option<&AppIndex> {
        self.apps.get(app)
    }
}

// ---------------------------------------------------------------- validation

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(field, message)
}

fn check_text(field: &str, value: &str, what: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(err(field, format!("{what} must not be empty")));
    }
    if value.len() > 256 || !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(err(
            field,
            format!("{what} must be at most 256 visible ASCII characters without spaces"),
        ));
    }
    Ok(())
}

fn check_app_id(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_app_id(value) {
        Ok(())
    } else {
        Err(err(
            field,
            format!("app id `{value}` must be 1 to 128 letters, digits, `-`, `_` or `.`"),
        ))
    }
}

fn check_name(field: &str, value: &str, what: &str) -> Result<(), ConfigError> {
    if value.is_empty()
        || value.len() > 64
        || !value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
    {
        return Err(err(
            field,
            format!("{what} `{value}` must be 1–64 characters of a–z, 0–9, `-`, `_`, `.`"),
        ));
    }
    Ok(())
}

fn principals(
    field: &str,
    raw: RawPrincipals,
    allow_star: bool,
) -> Result<Principals, ConfigError> {
    let mut out = Principals::default();
    for (i, u) in raw.users.into_iter().enumerate() {
        let f = format!("{field}.users[{i}]");
        if u == "*" {
            if !allow_star {
                return Err(err(f, "`*` is not allowed here"));
            }
            out.everyone = true;
            continue;
        }
        if u.is_empty() || u.trim() != u || u.len() > 256 || u.chars().any(char::is_control) {
            return Err(err(
                f,
                "a user is a non-empty subject, UPN or e-mail address",
            ));
        }
        out.users.push(u);
    }
    for (i, g) in raw.groups.into_iter().enumerate() {
        let f = format!("{field}.groups[{i}]");
        if g.is_empty() || g.trim() != g || g.len() > 256 || g.chars().any(char::is_control) {
            return Err(err(f, "a group is a non-empty name or id"));
        }
        out.groups.push(g);
    }
    Ok(out)
}

fn location_set(
    field: &str,
    names: Vec<String>,
    by_name: &HashMap<String, usize>,
) -> Result<LocationSet, ConfigError> {
    let mut set = LocationSet::default();
    for (i, n) in names.into_iter().enumerate() {
        match n.as_str() {
            "all" => set.all = true,
            "trusted" => set.trusted = true,
            _ => match by_name.get(&n) {
                Some(&ix) => set.named.push(ix),
                None => {
                    return Err(err(
                        format!("{field}[{i}]"),
                        format!("`{n}` is not a named location (nor `all` or `trusted`)"),
                    ))
                }
            },
        }
    }
    Ok(set)
}

fn mask<T: Copy>(field: &str, values: Vec<T>, bit: impl Fn(T) -> u8) -> Result<Mask, ConfigError> {
    if values.is_empty() {
        return Err(err(field, "must list at least one value (or be left out)"));
    }
    Ok(Mask(values.into_iter().fold(0, |m, v| m | (1 << bit(v)))))
}

fn validate(raw: RawConfig) -> Result<PolicyConfig, ConfigError> {
    let address = AddressSource {
        trusted_hops: raw.client_address.xff_trusted_hops,
        on_invalid: match raw.client_address.on_invalid {
            RawOnInvalid::Deny => OnInvalid::Deny,
            RawOnInvalid::Downstream => OnInvalid::Downstream,
        },
    };
    let country_header = match raw.country_header {
        Some(h) => Some(check_header_name("country_header", &h)?),
        None => None,
    };
    let mfa_amr = match raw.mfa.amr {
        Some(list) => {
            if list.is_empty() {
                return Err(err("mfa.amr", "must list at least one amr value"));
            }
            for (i, a) in list.iter().enumerate() {
                check_text(&format!("mfa.amr[{i}]"), a, "an amr value")?;
            }
            list
        }
        None => DEFAULT_MFA_AMR.iter().map(|s| s.to_string()).collect(),
    };
    let mfa_acr = raw
        .mfa
        .step_up_acr
        .unwrap_or_else(|| DEFAULT_MFA_ACR.to_string());
    check_text("mfa.step_up_acr", &mfa_acr, "an acr value")?;
    let sign_in_risk_claim = raw
        .risk
        .sign_in_claim
        .unwrap_or_else(|| DEFAULT_SIGN_IN_RISK_CLAIM.to_string());
    check_text("risk.sign_in_claim", &sign_in_risk_claim, "a claim name")?;
    let user_risk_claim = raw
        .risk
        .user_claim
        .unwrap_or_else(|| DEFAULT_USER_RISK_CLAIM.to_string());
    check_text("risk.user_claim", &user_risk_claim, "a claim name")?;

    let step_up_cookie = raw
        .step_up
        .cookie
        .unwrap_or_else(|| DEFAULT_STEP_UP_COOKIE.to_string());
    if step_up_cookie.is_empty()
        || !step_up_cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(err("step_up.cookie", "not a valid cookie name"));
    }
    let step_up_secure = raw.step_up.secure.unwrap_or(true);
    if !step_up_secure && step_up_cookie.starts_with("__Host-") {
        return Err(err(
            "step_up.secure",
            "a `__Host-` cookie must be Secure: rename the cookie or keep `secure`",
        ));
    }
    let step_up_ttl = raw.step_up.ttl.unwrap_or(DEFAULT_STEP_UP_TTL);
    if !(30..=3600).contains(&step_up_ttl) {
        return Err(err("step_up.ttl", "must be between 30 and 3600 seconds"));
    }

    let mut locations = Vec::new();
    let mut by_name = HashMap::new();
    for (name, loc) in raw.named_locations {
        let field = format!("named_locations.{name}");
        check_name(&field, &name, "a location name")?;
        if name == "all" || name == "trusted" {
            return Err(err(field, "`all` and `trusted` are reserved words"));
        }
        if loc.cidrs.is_empty() && loc.countries.is_empty() {
            return Err(err(field, "a location needs `cidrs` and/or `countries`"));
        }
        let mut cidrs = Vec::new();
        for (i, c) in loc.cidrs.iter().enumerate() {
            cidrs.push(
                Cidr::parse(c).map_err(|e| err(format!("{field}.cidrs[{i}]"), e.to_string()))?,
            );
        }
        let mut countries = Vec::new();
        for (i, c) in loc.countries.iter().enumerate() {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(err(
                    format!("{field}.countries[{i}]"),
                    format!("`{c}` is not a two-letter ISO 3166-1 country code"),
                ));
            }
            countries.push(c.to_ascii_uppercase());
        }
        by_name.insert(name.clone(), locations.len());
        locations.push(Location {
            name,
            cidrs,
            countries,
            trusted: loc.trusted,
        });
    }

    // The registry of apps: every app id named elsewhere must be one of these.
    let mut apps: HashMap<String, AppIndex> = HashMap::new();
    for (app, entry) in raw.apps {
        let field = format!("apps.{app}");
        check_app_id(&field, &app)?;
        let listed = !entry.users.is_empty() || !entry.groups.is_empty();
        if entry.open && listed {
            return Err(err(
                format!("{field}.open"),
                "`open` assigns every signed-in user: list no users or groups with it",
            ));
        }
        let mut p = principals(
            &field,
            RawPrincipals {
                users: entry.users,
                groups: entry.groups,
            },
            true,
        )?;
        p.signed_in = entry.open;
        if p.is_empty() {
            return Err(err(
                field,
                "an app needs an assignment: list users and/or groups, or declare it \
                 `\"open\": true` (every signed-in user); `\"users\": [\"*\"]` also lets \
                 requests without a session through",
            ));
        }
        apps.insert(
            app,
            AppIndex {
                assignment: p,
                policies: Vec::new(),
                path_rules: entry.path_rules.unwrap_or_default(),
            },
        );
    }
    let defined = |field: &str, app: &str| -> Result<(), ConfigError> {
        check_app_id(field, app)?;
        if apps.contains_key(app) {
            Ok(())
        } else {
            Err(err(
                field,
                format!("app `{app}` is not defined in `apps` (a misspelt app id would leave the real app unprotected)"),
            ))
        }
    };
    let mut hosts = HashMap::new();
    for (host, app) in raw.hosts {
        let field = format!("hosts.{host}");
        check_text(&field, &host, "a host name")?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(err(field, "write the host without a port"));
        }
        if host.ends_with('.') {
            return Err(err(
                field,
                "write the host without a trailing dot (Envoy strips it before routing)",
            ));
        }
        defined(&field, &app)?;
        hosts.insert(host.to_ascii_lowercase(), app);
    }
    if let Some(app) = &raw.default_app {
        defined("default_app", app)?;
    }
    let default_app = raw.default_app;

    let mut policies = Vec::new();
    let mut policy_apps: Vec<(usize, Vec<String>)> = Vec::new();
    let mut seen = HashMap::new();
    for (pi, rp) in raw.policies.into_iter().enumerate() {
        let field = format!("policies[{pi}]");
        check_name(&format!("{field}.name"), &rp.name, "a policy name")?;
        if seen.insert(rp.name.clone(), pi).is_some() {
            return Err(err(
                format!("{field}.name"),
                format!("`{}` is used twice", rp.name),
            ));
        }
        if rp.apps.is_empty() {
            return Err(err(
                format!("{field}.apps"),
                "list app ids, or `*` for every app",
            ));
        }
        for (i, a) in rp.apps.iter().enumerate() {
            if a != "*" {
                defined(&format!("{field}.apps[{i}]"), a)?;
            }
        }
        let include = match rp.assignments.include {
            Some(p) => {
                let p = principals(&format!("{field}.assignments.include"), p, true)?;
                if p.is_empty() {
                    return Err(err(
                        format!("{field}.assignments.include"),
                        "includes nobody: list users/groups, or `\"users\": [\"*\"]`",
                    ));
                }
                p
            }
            None => Principals {
                everyone: true,
                ..Principals::default()
            },
        };
        let exclude = principals(
            &format!("{field}.assignments.exclude"),
            rp.assignments.exclude,
            false,
        )?;

        let c = rp.conditions;
        let cf = format!("{field}.conditions");
        let locations_cond = match c.locations {
            Some(l) => {
                if l.include.is_empty() {
                    return Err(err(
                        format!("{cf}.locations.include"),
                        "list locations (`all`, `trusted` or names)",
                    ));
                }
                Some(LocationCondition {
                    include: location_set(&format!("{cf}.locations.include"), l.include, &by_name)?,
                    exclude: location_set(&format!("{cf}.locations.exclude"), l.exclude, &by_name)?,
                })
            }
            None => None,
        };
        let client_types = c
            .client_types
            .map(|v| mask(&format!("{cf}.client_types"), v, |t| t as u8))
            .transpose()?;
        let platforms = c
            .platforms
            .map(|v| mask(&format!("{cf}.platforms"), v, |t| t as u8))
            .transpose()?;
        let sign_in_risk = c
            .sign_in_risk
            .map(|v| mask(&format!("{cf}.sign_in_risk"), v, |t| t as u8))
            .transpose()?;
        let user_risk = c
            .user_risk
            .map(|v| mask(&format!("{cf}.user_risk"), v, |t| t as u8))
            .transpose()?;
        let methods = match c.methods {
            Some(ms) => {
                if ms.is_empty() {
                    return Err(err(format!("{cf}.methods"), "list at least one method"));
                }
                let mut out = Vec::new();
                for (i, m) in ms.iter().enumerate() {
                    if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(err(
                            format!("{cf}.methods[{i}]"),
                            format!("`{m}` is not an HTTP method"),
                        ));
                    }
                    out.push(m.to_ascii_uppercase());
                }
                Some(out)
            }
            None => None,
        };
        let paths = match c.paths {
            Some(ps) => {
                if ps.is_empty() {
                    return Err(err(format!("{cf}.paths"), "list at least one path prefix"));
                }
                // Checked under the path rule of every app the policy can
                // judge: the apps it names (`*`: every app of the registry;
                // requests for any other app are denied before any policy).
                // Without apps, under the default rule.
                let mut rule_sets = vec![];
                for a in &rp.apps {
                    if a == "*" {
                        rule_sets.extend(apps.values().map(|x| x.path_rules));
                    } else {
                        rule_sets.extend(apps.get(a).map(|x| x.path_rules));
                    }
                }
                if rule_sets.is_empty() {
                    rule_sets.push(PathRules::default());
                }
                let mut out = Vec::new();
                for (i, p) in ps.iter().enumerate() {
                    let f = format!("{cf}.paths[{i}]");
                    let mut prefix = None;
                    for rules in &rule_sets {
                        prefix = Some(rules.prefix(p).map_err(|e| err(&f, e))?);
                    }
                    out.extend(prefix);
                }
                Some(out)
            }
            None => None,
        };
        let conditions = Conditions {
            locations: locations_cond,
            client_types,
            platforms,
            sign_in_risk,
            user_risk,
            methods,
            paths,
        };

        let grant = match rp.grant {
            None => Grant::None,
            Some(g) => {
                let gf = format!("{field}.grant");
                let has_controls = g.mfa || !g.acr.is_empty() || !g.claims.is_empty();
                if g.block {
                    if has_controls {
                        return Err(err(gf, "`block` cannot be combined with other controls"));
                    }
                    Grant::Block
                } else {
                    if !has_controls {
                        return Err(err(
                            gf,
                            "set `block`, or require `mfa`, `acr` and/or `claims`",
                        ));
                    }
                    for (i, a) in g.acr.iter().enumerate() {
                        check_text(&format!("{gf}.acr[{i}]"), a, "an acr value")?;
                    }
                    let mut claims = Vec::new();
                    for (k, v) in g.claims {
                        check_text(&format!("{gf}.claims.{k}"), &k, "a claim name")?;
                        claims.push((k, v));
                    }
                    Grant::Require {
                        operator: g.require,
                        mfa: g.mfa,
                        acr: g.acr,
                        claims,
                    }
                }
            }
        };
        let sign_in_frequency = match rp.session {
            Some(s) => {
                if s.sign_in_frequency == 0 {
                    return Err(err(
                        format!("{field}.session.sign_in_frequency"),
                        "must be at least 1 second",
                    ));
                }
                Some(s.sign_in_frequency)
            }
            None => None,
        };
        if matches!(grant, Grant::None) && sign_in_frequency.is_none() {
            return Err(err(
                field,
                "a policy needs `grant` and/or `session` controls",
            ));
        }
        if rp.state == PolicyState::Disabled {
            continue;
        }
        policy_apps.push((policies.len(), rp.apps));
        policies.push(Policy {
            name: rp.name,
            state: rp.state,
            include,
            exclude,
            conditions,
            grant,
            sign_in_frequency,
        });
    }

    // Index: every app gets the policies naming it or `*`, in config order.
    for (ix, names) in &policy_apps {
        let star = names.iter().any(|a| a == "*");
        for (app, index) in apps.iter_mut() {
            if star || names.iter().any(|a| a == app) {
                index.policies.push(*ix);
            }
        }
    }

    Ok(PolicyConfig {
        address,
        country_header,
        hosts,
        default_app,
        mfa_amr,
        mfa_acr,
        sign_in_risk_claim,
        user_risk_claim,
        step_up_cookie,
        step_up_secure,
        step_up_ttl,
        locations,
        policies,
        apps,
    })
}
