//! The robots.txt filter's decisions: which requests it answers, and with what.

use crate::config::{check_header_value, parse_json, ConfigError};
use crate::path;
use serde::Deserialize;

/// The body every crawler gets.
pub const ROBOTS_BODY: &str = "User-agent: *\nDisallow: /\n";
/// The `Content-Type` of [`ROBOTS_BODY`].
pub const ROBOTS_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// The default `X-Robots-Tag` value added to every response.
pub const DEFAULT_X_ROBOTS_TAG: &str = "noindex, nofollow";

/// The robots filter's plugin configuration, as written in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRobotsConfig {
    /// Add `X-Robots-Tag` to every response (default true).
    #[serde(default = "default_true")]
    x_robots_tag: bool,
    /// The value of `X-Robots-Tag` (default `noindex, nofollow`).
    #[serde(default)]
    x_robots_tag_value: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The validated robots configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotsConfig {
    /// The `X-Robots-Tag` value to set on every response, if any.
    pub x_robots_tag: Option<String>,
}

impl Default for RobotsConfig {
    fn default() -> Self {
        Self {
            x_robots_tag: Some(DEFAULT_X_ROBOTS_TAG.to_string()),
        }
    }
}

impl RobotsConfig {
    /// Parses and validates the plugin configuration (empty means defaults).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawRobotsConfig = parse_json(bytes)?;
        let value = raw
            .x_robots_tag_value
            .unwrap_or_else(|| DEFAULT_X_ROBOTS_TAG.to_string());
        check_header_value("x_robots_tag_value", &value)?;
        if value.is_empty() {
            return Err(ConfigError::new(
                "x_robots_tag_value",
                "must not be empty (set `x_robots_tag` to false to turn the header off)",
            ));
        }
        Ok(Self {
            x_robots_tag: raw.x_robots_tag.then_some(value),
        })
    }
}

/// What the robots filter does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotsDecision {
    /// Answer locally with [`ROBOTS_BODY`]; `with_body` is false for `HEAD`.
    Serve {
        /// Whether the response carries the body (false for `HEAD`).
        with_body: bool,
    },
    /// Not a robots request: let it through.
    PassThrough,
}

/// The reserved path.
pub const ROBOTS_PATH: &str = "/robots.txt";

/// Whether `raw_path` is `/robots.txt` under the path rule (whatever the
/// method), after Envoy's normalisation ([`path::normalize`]; a no-op behind
/// the shipped configs). The rule is the strict default of
/// [`path::PathRules`] whatever an app loosened: answering a spelling such as
/// `/ROBOTS.TXT` or `/robots.txt;x` locally is harmless, since no app sees
/// it. A path the rule refuses is not answered: it goes on, and preauth or
/// conditional access refuse it (`ambiguous_path`).
pub fn is_robots_path(raw_path: &str) -> bool {
    let Ok(normal) = path::normalize(raw_path) else {
        return false;
    };
    path::PathRules::default()
        .canonicalize(&normal)
        .is_ok_and(|p| p.is(ROBOTS_PATH))
}

/// Decides whether a request is a robots.txt request: `GET` or `HEAD` of
/// `/robots.txt` under the path rule, on any host, whatever the query.
pub fn decide(method: &str, raw_path: &str) -> RobotsDecision {
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return RobotsDecision::PassThrough,
    };
    if is_robots_path(raw_path) {
        RobotsDecision::Serve { with_body }
    } else {
        RobotsDecision::PassThrough
    }
}

impl RobotsConfig {
    /// The stage's answer to a request: the robots.txt reply, or `None` to go on.
    pub fn reply(&self, method: &str, raw_path: &str) -> Option<crate::pipeline::Reply> {
        let RobotsDecision::Serve { with_body } = decide(method, raw_path) else {
            return None;
        };
        let mut headers = vec![("content-type".to_string(), ROBOTS_CONTENT_TYPE.to_string())];
        if let Some(tag) = &self.x_robots_tag {
            headers.push(("x-robots-tag".to_string(), tag.clone()));
        }
        let body = if with_body {
            ROBOTS_BODY.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        Some(crate::pipeline::Reply {
            status: 200,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_replies_to_get_and_head_only() {
        let c = RobotsConfig::default();
        let get = c.reply("GET", "/robots.txt").unwrap();
        assert_eq!(get.status, 200);
        assert_eq!(get.body, ROBOTS_BODY.as_bytes());
        assert_eq!(get.header("x-robots-tag"), Some(DEFAULT_X_ROBOTS_TAG));
        assert!(c.reply("HEAD", "/robots.txt").unwrap().body.is_empty());
        assert!(c.reply("POST", "/robots.txt").is_none());
        assert!(c.reply("GET", "/x").is_none());
    }

    #[test]
    fn robots_path_is_decided_on_the_normalised_path_alone() {
        // Every spelling of the path is answered: what Envoy normalises to
        // it, case and `;` parameters included.
        for p in [
            "/robots.txt",
            "/robots.txt?x=1",
            "/ROBOTS.TXT",
            "/Robots.txt",
            "/robots.txt;x",
            "/;/robots.txt",
            "//robots.txt",
            "/a/../robots.txt",
            "/%72obots.txt",
            "/robots.tx%74",
        ] {
            assert!(is_robots_path(p), "{p}");
        }
        for p in [
            "/",
            "/robots.txt/",
            "",
            "/robots.txt.bak",
            "/robots.txt.",
            "/robots.txt%20",
            "/robots.txt%2f",
            "/robots.txt/../admin",
        ] {
            assert!(!is_robots_path(p), "{p}");
        }
    }

    #[test]
    fn serves_get_and_head_of_robots_txt() {
        assert_eq!(
            decide("GET", "/robots.txt"),
            RobotsDecision::Serve { with_body: true }
        );
        assert_eq!(
            decide("HEAD", "/robots.txt"),
            RobotsDecision::Serve { with_body: false }
        );
        assert_eq!(
            decide("GET", "/robots.txt?x=1"),
            RobotsDecision::Serve { with_body: true }
        );
        assert_eq!(
            decide("GET", "/ROBOTS.TXT"),
            RobotsDecision::Serve { with_body: true }
        );
        assert_eq!(
            decide("GET", "/x/../robots.txt"),
            RobotsDecision::Serve { with_body: true }
        );
    }

    #[test]
    fn look_alikes_pass_through() {
        for p in [
            "/robots.txt/../admin",
            "/admin#/robots.txt",
            "/robots.txt/",
            "/robots.txtx",
            "/robots%2Etxt%2F",
            "/a%2F..%2Frobots.txt",
            "robots.txt",
            "/robots.txt%",
        ] {
            assert_eq!(decide("GET", p), RobotsDecision::PassThrough, "{p}");
        }
    }

    #[test]
    fn other_methods_pass_through() {
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get", ""] {
            assert_eq!(decide(m, "/robots.txt"), RobotsDecision::PassThrough, "{m}");
        }
    }

    #[test]
    fn config_defaults() {
        assert_eq!(
            RobotsConfig::from_json(b"").unwrap(),
            RobotsConfig::default()
        );
        assert_eq!(
            RobotsConfig::from_json(b"{}").unwrap(),
            RobotsConfig::default()
        );
    }

    #[test]
    fn config_can_turn_the_header_off_or_change_it() {
        let c = RobotsConfig::from_json(br#"{"x_robots_tag": false}"#).unwrap();
        assert_eq!(c.x_robots_tag, None);
        let c = RobotsConfig::from_json(br#"{"x_robots_tag_value": "noindex"}"#).unwrap();
        assert_eq!(c.x_robots_tag.as_deref(), Some("noindex"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = RobotsConfig::from_json(br#"{"x_robot_tag": false}"#).unwrap_err();
        assert_eq!(e.field, "x_robot_tag");
        let e = RobotsConfig::from_json(br#"{"x_robots_tag": "yes"}"#).unwrap_err();
        assert_eq!(e.field, "x_robots_tag");
        let e = RobotsConfig::from_json(br#"{"x_robots_tag_value": "a\r\nSet-Cookie: x"}"#)
            .unwrap_err();
        assert_eq!(e.field, "x_robots_tag_value");
        let e = RobotsConfig::from_json(br#"{"x_robots_tag_value": ""}"#).unwrap_err();
        assert_eq!(e.field, "x_robots_tag_value");
        assert!(RobotsConfig::from_json(b"[]").is_err());
        assert!(RobotsConfig::from_json(b"{").is_err());
    }
}
