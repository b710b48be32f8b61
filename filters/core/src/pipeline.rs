//! The pipeline of stages: robots → preauth → conditional access → cookie.
//!
//! Each stage is a sans-I/O machine: the host adapter reads the request head
//! once ([`RequestHead`]), each stage turns it (and what earlier stages
//! decided) into a plan of effects ([`HeaderEdit`]s, a local [`Reply`],
//! [`LogLine`]s, counters), and the adapter carries the plan out. The same
//! stages run as four single-stage modules (each with its own configuration,
//! handing the identity over in filter state) and as one all-in-one module
//! configured by a [`PipelineConfig`] (one document with a section per stage,
//! the identity passed in memory).

use crate::app::RouteApp;
use crate::config::ConfigError;
use crate::cookies::CookieFilterConfig;
use crate::oidc::config::PreauthConfig;
use crate::policy::PolicyConfig;
use crate::robots::RobotsConfig;

/// A local response (the type every stage answers with).
pub type Reply = crate::oidc::Response;

/// The request as read once from the host: every header (values read
/// lossily, so a value that is not UTF-8 never traps the VM) and the stream
/// properties the stages need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// Every request header (name, value), names as the host gives them.
    pub headers: Vec<(String, String)>,
    /// The raw bytes of every `cookie` header, in order (the cookie stage
    /// rewrites them without a lossy round trip).
    pub raw_cookies: Vec<Vec<u8>>,
    /// The route's `portcullis.app` metadata ([`crate::app::ROUTE_APP_PROPERTY`]).
    pub route_app: Option<Vec<u8>>,
    /// Envoy's downstream address (`source.address`).
    pub source_address: Option<String>,
}

impl RequestHead {
    /// Builds the head from the raw header map (names, value bytes).
    pub fn from_raw(raw: Vec<(String, Vec<u8>)>) -> RequestHead {
        let mut raw_cookies = Vec::new();
        let headers = raw
            .into_iter()
            .map(|(name, value)| {
                if name.eq_ignore_ascii_case("cookie") {
                    raw_cookies.push(value.clone());
                }
                let text = match String::from_utf8(value) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                (name, text)
            })
            .collect();
        RequestHead {
            headers,
            raw_cookies,
            ..RequestHead::default()
        }
    }

    /// An earlier stage removed every value of the headers `remove` and
    /// replaced every value of each header of `set` by that one value: the
    /// head follows, so a later stage of the same module sees the request as
    /// the next filter of a split chain would. Names compare as Envoy's do
    /// (case-insensitively); the values move in without a copy.
    pub fn replace(&mut self, remove: &[String], set: Vec<(String, String)>) {
        let touched = |n: &str| {
            remove.iter().any(|r| r.eq_ignore_ascii_case(n))
                || set.iter().any(|(s, _)| s.eq_ignore_ascii_case(n))
        };
        if touched("cookie") {
            self.raw_cookies = set
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v.as_bytes().to_vec())
                .collect();
        }
        self.headers.retain(|(n, _)| !touched(n));
        self.headers.extend(set);
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, joined with `,` (as `X-Forwarded-For` lines combine).
    pub fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// `:method` (empty if absent).
    pub fn method(&self) -> &str {
        self.header(":method").unwrap_or("")
    }

    /// `:path` (empty if absent).
    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }

    /// `:authority` (empty if absent).
    pub fn authority(&self) -> &str {
        self.header(":authority").unwrap_or("")
    }

    /// The app the route names.
    pub fn route(&self) -> RouteApp<'_> {
        RouteApp::from_property(self.route_app.as_deref())
    }

    /// The request id for logs and denials: `x-request-id` (Envoy sets it),
    /// else `ctx-<context id>`.
    pub fn request_id(&self, context_id: u32) -> String {
        self.header("x-request-id")
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("ctx-{context_id}"), str::to_string)
    }
}

/// One change to a header map (request or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every value of the header.
    Remove(String),
    /// Replace every value of the header by this one.
    Set(String, Vec<u8>),
    /// Add one more value.
    Add(String, Vec<u8>),
}

impl HeaderEdit {
    /// `Set` with a text value.
    pub fn set(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Set(name.to_string(), value.as_bytes().to_vec())
    }

    /// `Add` with a text value.
    pub fn add(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::Add(name.to_string(), value.as_bytes().to_vec())
    }
}

/// The level of a [`LogLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// A log line a stage asks the host to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Level.
    pub level: LogLevel,
    /// The text, complete (the adapter adds nothing).
    pub text: String,
}

impl LogLine {
    /// A line at `level`.
    pub fn new(level: LogLevel, text: String) -> LogLine {
        LogLine { level, text }
    }
}

/// The stages, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// robots.txt and `X-Robots-Tag` ([`crate::robots`]).
    Robots,
    /// OpenID Connect sign-in and session ([`crate::oidc`]).
    Preauth,
    /// Conditional access ([`crate::policy`]).
    ConditionalAccess,
    /// Cookies and URL translation ([`crate::cookies`]).
    Cookie,
}

impl StageKind {
    /// Every stage, in chain order.
    pub const ALL: [StageKind; 4] = [
        StageKind::Robots,
        StageKind::Preauth,
        StageKind::ConditionalAccess,
        StageKind::Cookie,
    ];

    /// The section of the all-in-one document that configures the stage.
    pub fn section(self) -> &'static str {
        match self {
            StageKind::Robots => "robots",
            StageKind::Preauth => "preauth",
            StageKind::ConditionalAccess => "conditional_access",
            StageKind::Cookie => "cookie",
        }
    }

    /// The prefix of the stage's log lines (the single-stage module's name).
    pub fn log_prefix(self) -> &'static str {
        match self {
            StageKind::Robots => "portcullis-robots",
            StageKind::Preauth => "portcullis-preauth",
            StageKind::ConditionalAccess => "portcullis-conditional-access",
            StageKind::Cookie => "portcullis-cookie",
        }
    }
}

/// The configuration of a pipeline: any subset of the stages, each with
/// exactly the configuration its single-stage module takes.
#[derive(Debug, Default)]
pub struct PipelineConfig {
    /// The robots stage.
    pub robots: Option<RobotsConfig>,
    /// The preauth stage.
    pub preauth: Option<PreauthConfig>,
    /// The conditional-access stage.
    pub conditional_access: Option<PolicyConfig>,
    /// The cookie stage.
    pub cookie: Option<CookieFilterConfig>,
}

impl PipelineConfig {
    /// The configuration of a single-stage module: `bytes` is that stage's own document.
    pub fn single(kind: StageKind, bytes: &[u8]) -> Result<PipelineConfig, ConfigError> {
        let mut c = PipelineConfig::default();
        match kind {
            StageKind::Robots => c.robots = Some(RobotsConfig::from_json(bytes)?),
            StageKind::Preauth => c.preauth = Some(PreauthConfig::from_json(bytes)?),
            StageKind::ConditionalAccess => {
                c.conditional_access = Some(PolicyConfig::from_json(bytes)?)
            }
            StageKind::Cookie => c.cookie = Some(CookieFilterConfig::from_json(bytes)?),
        }
        Ok(c)
    }

    /// The all-in-one document: a JSON object with a section per stage
    /// (`robots`, `preauth`, `conditional_access`, `cookie`), at least one;
    /// each section is exactly that stage's configuration. Errors name the
    /// field under its section (`preauth.apps[0].issuer`).
    pub fn from_json(bytes: &[u8]) -> Result<PipelineConfig, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::new("", "configuration is not valid UTF-8"))?;
        let doc: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not JSON: {e}")))?;
        let serde_json::Value::Object(sections) = doc else {
            return Err(ConfigError::new("", "configuration must be a JSON object"));
        };
        if let Some(unknown) = sections
            .keys()
            .find(|k| !StageKind::ALL.iter().any(|s| s.section() == k.as_str()))
        {
            return Err(ConfigError::new(
                unknown.as_str(),
                "unknown section (expected robots, preauth, conditional_access, cookie)",
            ));
        }
        let mut c = PipelineConfig::default();
        for kind in StageKind::ALL {
            let Some(section) = sections.get(kind.section()) else {
                continue;
            };
            if !section.is_object() {
                return Err(ConfigError::new(kind.section(), "must be a JSON object"));
            }
            let bytes = section.to_string().into_bytes();
            let one = PipelineConfig::single(kind, &bytes).map_err(|e| e.within(kind.section()))?;
            c.robots = c.robots.or(one.robots);
            c.preauth = c.preauth.or(one.preauth);
            c.conditional_access = c.conditional_access.or(one.conditional_access);
            c.cookie = c.cookie.or(one.cookie);
        }
        if c.stages().is_empty() {
            return Err(ConfigError::new(
                "",
                "configures no stage (give at least one of robots, preauth, conditional_access, cookie)",
            ));
        }
        Ok(c)
    }

    /// The configured stages, in chain order.
    pub fn stages(&self) -> Vec<StageKind> {
        StageKind::ALL
            .into_iter()
            .filter(|k| match k {
                StageKind::Robots => self.robots.is_some(),
                StageKind::Preauth => self.preauth.is_some(),
                StageKind::ConditionalAccess => self.conditional_access.is_some(),
                StageKind::Cookie => self.cookie.is_some(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_reads_values_lossily_and_keeps_raw_cookies() {
        let head = RequestHead::from_raw(vec![
            (":path".into(), b"/x".to_vec()),
            ("Cookie".into(), b"a=\xff".to_vec()),
            ("x-forwarded-for".into(), b"1.2.3.4".to_vec()),
            ("X-Forwarded-For".into(), b"5.6.7.8".to_vec()),
        ]);
        assert_eq!(head.path(), "/x");
        assert_eq!(head.header("cookie"), Some("a=\u{fffd}"));
        assert_eq!(head.raw_cookies, vec![b"a=\xff".to_vec()]);
        assert_eq!(
            head.joined("x-forwarded-for").as_deref(),
            Some("1.2.3.4,5.6.7.8")
        );
        assert_eq!(head.request_id(7), "ctx-7");
    }

    #[test]
    fn a_stages_edits_apply_to_the_head_as_to_the_header_map() {
        let mut head = RequestHead::from_raw(vec![
            ("x-real-ip".into(), b"1.2.3.4".to_vec()),
            ("X-Portcullis-Country".into(), b"FR".to_vec()),
            ("x-real-ip".into(), b"5.6.7.8".to_vec()),
            ("x-forwarded-for".into(), b"1.2.3.4".to_vec()),
            ("cookie".into(), b"a=1".to_vec()),
        ]);
        head.replace(
            &["x-portcullis-country".into()],
            vec![("X-Real-IP".into(), "198.51.100.7".into())],
        );
        assert_eq!(head.header("x-portcullis-country"), None);
        assert_eq!(head.joined("x-real-ip").as_deref(), Some("198.51.100.7"));
        assert_eq!(head.joined("x-forwarded-for").as_deref(), Some("1.2.3.4"));
        assert_eq!(head.raw_cookies, vec![b"a=1".to_vec()]);
        head.replace(&[], vec![("Cookie".into(), "b=2".into())]);
        assert_eq!(head.raw_cookies, vec![b"b=2".to_vec()]);
        assert_eq!(head.joined("cookie").as_deref(), Some("b=2"));
        head.replace(&["cookie".into()], Vec::new());
        assert!(head.raw_cookies.is_empty());
        assert_eq!(head.header("cookie"), None);
    }

    #[test]
    fn the_all_in_one_document_takes_each_stage_config_as_a_section() {
        let c = PipelineConfig::from_json(br#"{"robots": {}, "cookie": {}}"#).unwrap();
        assert_eq!(c.stages(), vec![StageKind::Robots, StageKind::Cookie]);
        let e = PipelineConfig::from_json(br#"{"robot": {}}"#).unwrap_err();
        assert_eq!(e.field, "robot");
        let e =
            PipelineConfig::from_json(br#"{"robots": {"x_robots_tag_value": ""}}"#).unwrap_err();
        assert_eq!(e.field, "robots.x_robots_tag_value");
        assert!(PipelineConfig::from_json(b"{}").is_err());
        assert!(PipelineConfig::from_json(b"[]").is_err());
        assert!(PipelineConfig::from_json(br#"{"cookie": 1}"#).is_err());
    }
}
