//! Which field of `portcullis.yaml` each part of a rendered document came
//! from, so that a stage's refusal (`apps[1].clock_skew_seconds`) names the
//! field to fix (`providers.corp.clock_skew_seconds`).

use crate::spec::SpecError;

/// (document, path in the rendered document, path in `portcullis.yaml`).
#[derive(Debug, Clone, Default)]
pub struct Origins(Vec<(String, String, String)>);

/// True when `field` is `prefix` or lies below it (`prefix.x`, `prefix[0]`).
fn below(field: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || field == prefix
        || field
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

impl Origins {
    /// Records that `rendered` in `doc` comes from `source`.
    pub fn add(&mut self, doc: &str, rendered: &str, source: &str) {
        self.0
            .push((doc.to_string(), rendered.to_string(), source.to_string()));
    }

    /// The `portcullis.yaml` error for a refusal of `doc` at `field`.
    pub fn translate(&self, doc: &str, field: &str, message: &str) -> SpecError {
        let best = self
            .0
            .iter()
            .filter(|(d, r, _)| d == doc && below(field, r))
            .max_by_key(|(_, r, _)| r.len());
        let source = match best {
            Some((_, rendered, source)) => {
                let rest = field.get(rendered.len()..).unwrap_or_default();
                let rest = rest.strip_prefix('.').unwrap_or(rest);
                if source.is_empty() || rest.is_empty() || rest.starts_with('[') {
                    format!("{source}{rest}")
                } else {
                    format!("{source}.{rest}")
                }
            }
            None => field.to_string(),
        };
        SpecError::new(
            source,
            format!("{message} (refused by the {doc} stage's parser at `{field}`)"),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_longest_prefix_names_the_source() {
        let mut o = Origins::default();
        o.add("preauth", "apps[0]", "apps[2]");
        o.add("preauth", "apps[0].issuer", "providers.corp.issuer");
        o.add("preauth", "apps[0].cookie", "apps[2].cookie");
        let e = o.translate("preauth", "apps[0].issuer", "bad");
        assert_eq!(e.field, "providers.corp.issuer");
        let e = o.translate("preauth", "apps[0].cookie.name", "bad");
        assert_eq!(e.field, "apps[2].cookie.name");
        let e = o.translate("preauth", "apps[0].sealing_keys[1]", "bad");
        assert_eq!(e.field, "apps[2].sealing_keys[1]");
        // `apps[0]` is not a prefix of `apps[01]`-like siblings.
        let e = o.translate("preauth", "apps[0]x", "bad");
        assert_eq!(e.field, "apps[0]x");
        o.add("cookie", "", "cookie");
        assert_eq!(
            o.translate("cookie", "proxy_cookies", "m").field,
            "cookie.proxy_cookies"
        );
    }
}
