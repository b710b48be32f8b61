//! Shared helpers for parsing plugin configuration.
//!
//! Every filter parses its JSON with `deny_unknown_fields`, then validates it
//! into typed values. Errors always name the offending field, so an operator
//! reading Envoy's log knows what to fix.

use std::fmt;

/// A configuration error that names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `apps[0].cookie.name`; empty for the whole document.
    pub field: String,
    /// What is wrong with it, for humans.
    pub message: String,
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, nested under `prefix` (e.g. `apps[2]`).
    pub fn within(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_string()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration: field `{}`: {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a JSON plugin configuration into `T`, turning serde's error into a
/// [`ConfigError`] that names the field by its path (e.g. `apps[1].cookie`).
///
/// An empty or all-whitespace configuration is read as `{}`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ConfigError::new("", "configuration is not valid UTF-8"))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    if !text.trim_start().starts_with('{') {
        return Err(ConfigError::new("", "configuration must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(value)
}

/// Checks that `value` can be sent as an HTTP header value: visible ASCII and
/// spaces/tabs only, no CR, LF or NUL, no leading/trailing whitespace.
pub fn check_header_value(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim() != value {
        return Err(ConfigError::new(
            field,
            "must not start or end with whitespace",
        ));
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err(ConfigError::new(
            field,
            "must be printable ASCII (no control characters such as CR or LF)",
        ));
    }
    Ok(())
}

/// Checks that `name` is a valid HTTP header name (RFC 9110 token), and returns it lower-cased.
pub fn check_header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    const EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || EXTRA.contains(&b))
    {
        return Err(ConfigError::new(
            field,
            format!("`{name}` is not a valid HTTP header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
        #[serde(default)]
        flag: bool,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        apps: Vec<Inner>,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn empty_config_reads_as_empty_object() {
        let o: Outer = parse_json(b"  ").unwrap();
        assert!(o.apps.is_empty());
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let e = parse_json::<Outer>(br#"{"cuont": 1}"#).unwrap_err();
        assert_eq!(e.field, "cuont");
        assert!(e.message.contains("unknown field `cuont`"), "{e}");
    }

    #[test]
    fn nested_unknown_field_is_named_with_its_path() {
        let e = parse_json::<Outer>(br#"{"apps": [{"name": "a"}, {"name": "b", "falg": true}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "apps[1].falg");
    }

    #[test]
    fn type_error_names_the_field() {
        let e = parse_json::<Outer>(br#"{"apps": [{"name": "a", "flag": "yes"}]}"#).unwrap_err();
        assert_eq!(e.field, "apps[0].flag");
        assert!(e.to_string().contains("apps[0].flag"));
    }

    #[test]
    fn missing_field_names_the_parent() {
        let e = parse_json::<Outer>(br#"{"apps": [{"flag": true}]}"#).unwrap_err();
        assert_eq!(e.field, "apps[0]");
        assert!(e.message.contains("missing field `name`"));
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_json::<Outer>(br#"{} x"#).is_err());
        assert!(parse_json::<Outer>(b"\xff").is_err());
    }

    #[test]
    fn header_values_and_names_are_checked() {
        assert!(check_header_value("f", "noindex, nofollow").is_ok());
        assert!(check_header_value("f", "a\r\nb").is_err());
        assert!(check_header_value("f", " a").is_err());
        assert_eq!(
            check_header_name("f", "X-Forwarded-User").unwrap(),
            "x-forwarded-user"
        );
        assert!(check_header_name("f", "bad header").is_err());
        assert!(check_header_name("f", "").is_err());
    }

    #[test]
    fn within_prefixes_paths() {
        let e = ConfigError::new("cookie.name", "bad").within("apps[2]");
        assert_eq!(e.field, "apps[2].cookie.name");
        let e = ConfigError::new("", "bad").within("apps[2]");
        assert_eq!(e.field, "apps[2]");
    }
}
