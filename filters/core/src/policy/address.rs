//! The client address a policy judges: Envoy's downstream address, or an
//! `X-Forwarded-For` entry chosen by counting trusted hops from the right.
//!
//! A client can write anything into `X-Forwarded-For`; only the entries that
//! trusted proxies appended are believable. With `trusted_hops = N` (N ≥ 1)
//! the proxy in front of Envoy is the N-th trusted hop, and the address it saw
//! is the N-th entry counted from the right. Entries left of it are the
//! client's own claims and are never used. `trusted_hops = 0` ignores the header.

use std::net::{IpAddr, SocketAddr};

/// How the client address is found (validated configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressSource {
    /// How many proxies in front of Envoy append to `X-Forwarded-For`; 0 = use the downstream address.
    pub trusted_hops: u8,
    /// What to do when `X-Forwarded-For` is missing, too short or malformed.
    pub on_invalid: OnInvalid,
}

/// What to do when the forwarded address cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalid {
    /// Refuse the request (`bad_request`): the safe default behind a proxy.
    #[default]
    Deny,
    /// Judge Envoy's downstream address instead (the proxy's own address).
    Downstream,
}

/// Why no client address could be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// The downstream address is missing or unreadable.
    NoDownstream,
    /// `X-Forwarded-For` is absent or has fewer entries than trusted hops.
    ForwardedMissing,
    /// The entry at the trusted position is not an address.
    ForwardedMalformed,
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressError::NoDownstream => "the downstream address is missing or malformed",
            AddressError::ForwardedMissing => {
                "X-Forwarded-For is missing or shorter than the trusted hops"
            }
            AddressError::ForwardedMalformed => "X-Forwarded-For entry is not an IP address",
        })
    }
}

impl std::error::Error for AddressError {}

/// Parses one address as Envoy or a proxy writes it: `192.0.2.1`, `192.0.2.1:443`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, surrounded by optional spaces.
/// A zone id (`fe80::1%eth0`) or anything else is refused.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let t = text.trim_matches([' ', '\t']);
    if t.is_empty() || t.len() > 64 {
        return None;
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The address `trusted_hops` entries from the right of an `X-Forwarded-For`
/// value (several header lines joined with `,`).
pub fn forwarded_for(xff: &str, trusted_hops: u8) -> Result<IpAddr, AddressError> {
    if trusted_hops == 0 {
        return Err(AddressError::ForwardedMissing);
    }
    let entry = xff
        .rsplit(',')
        .nth(usize::from(trusted_hops).saturating_sub(1))
        .ok_or(AddressError::ForwardedMissing)?;
    if entry.trim().is_empty() {
        // `, 1.2.3.4` — an empty entry is a broken chain, not a shorter one.
        return Err(AddressError::ForwardedMalformed);
    }
    parse_address(entry).ok_or(AddressError::ForwardedMalformed)
}

/// The client address: from `X-Forwarded-For` when trusted hops are configured,
/// else (or on error, if so configured) from the downstream address.
pub fn client_address(
    source: &AddressSource,
    downstream: Option<&str>,
    xff: Option<&str>,
) -> Result<IpAddr, AddressError> {
    let from_downstream = || {
        downstream
            .and_then(parse_address)
            .ok_or(AddressError::NoDownstream)
    };
    if source.trusted_hops == 0 {
        return from_downstream();
    }
    let forwarded = match xff {
        Some(x) if !x.trim().is_empty() => forwarded_for(x, source.trusted_hops),
        _ => Err(AddressError::ForwardedMissing),
    };
    match (forwarded, source.on_invalid) {
        (Ok(ip), _) => Ok(ip),
        (Err(_), OnInvalid::Downstream) => from_downstream(),
        (Err(e), OnInvalid::Deny) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_in_every_usual_form() {
        let cases: &[(&str, Option<&str>)] = &[
            ("192.0.2.1", Some("192.0.2.1")),
            (" 192.0.2.1 ", Some("192.0.2.1")),
            ("192.0.2.1:4242", Some("192.0.2.1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("::ffff:10.0.0.1", Some("::ffff:10.0.0.1")),
            ("", None),
            ("unknown", None),
            ("_hidden", None),
            ("192.0.2.300", None),
            ("192.0.2.1:", None),
            ("192.0.2.1:99999", None),
            ("[2001:db8::1", None),
            ("2001:db8::1]:443", None),
            ("fe80::1%eth0", None),
            ("1.2.3.4 5.6.7.8", None),
            ("1.2.3.4\r\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_address(text), want.map(ip), "{text:?}");
        }
    }

    #[test]
    fn forwarded_for_counts_trusted_hops_from_the_right() {
        use AddressError::*;
        let cases: &[(&str, u8, Result<&str, AddressError>)] = &[
            ("203.0.113.7", 1, Ok("203.0.113.7")),
            ("6.6.6.6, 203.0.113.7", 1, Ok("203.0.113.7")),
            ("6.6.6.6,203.0.113.7,10.0.0.2", 2, Ok("203.0.113.7")),
            ("6.6.6.6, 203.0.113.7, 10.0.0.2", 1, Ok("10.0.0.2")),
            ("2001:db8::7, [2001:db8::8]:1234", 1, Ok("2001:db8::8")),
            ("2001:db8::7, [2001:db8::8]:1234", 2, Ok("2001:db8::7")),
            ("203.0.113.7:5555", 1, Ok("203.0.113.7")),
            ("203.0.113.7", 2, Err(ForwardedMissing)),
            ("garbage, 203.0.113.7", 1, Ok("203.0.113.7")),
            ("203.0.113.7, garbage", 1, Err(ForwardedMalformed)),
            ("203.0.113.7,", 1, Err(ForwardedMalformed)),
            (",203.0.113.7", 2, Err(ForwardedMalformed)),
            ("203.0.113.7", 0, Err(ForwardedMissing)),
        ];
        for (xff, hops, want) in cases {
            let got = forwarded_for(xff, *hops);
            assert_eq!(got, want.map(ip), "{xff:?} with {hops} hops");
        }
    }

    #[test]
    fn client_address_never_trusts_the_header_blindly() {
        let direct = AddressSource::default();
        // No trusted hops: the header is ignored whatever it says.
        assert_eq!(
            client_address(&direct, Some("198.51.100.4:5000"), Some("10.0.0.1")),
            Ok(ip("198.51.100.4"))
        );
        assert_eq!(
            client_address(&direct, Some("[2001:db8::4]:5000"), None),
            Ok(ip("2001:db8::4"))
        );
        assert_eq!(
            client_address(&direct, Some("garbage"), None),
            Err(AddressError::NoDownstream)
        );
        assert_eq!(
            client_address(&direct, None, None),
            Err(AddressError::NoDownstream)
        );

        let deny = AddressSource {
            trusted_hops: 1,
            on_invalid: OnInvalid::Deny,
        };
        assert_eq!(
            client_address(&deny, Some("10.0.0.9:1"), Some("1.1.1.1, 203.0.113.7")),
            Ok(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(&deny, Some("10.0.0.9:1"), None),
            Err(AddressError::ForwardedMissing)
        );
        assert_eq!(
            client_address(&deny, Some("10.0.0.9:1"), Some("  ")),
            Err(AddressError::ForwardedMissing)
        );
        assert_eq!(
            client_address(&deny, Some("10.0.0.9:1"), Some("nope")),
            Err(AddressError::ForwardedMalformed)
        );

        let fallback = AddressSource {
            trusted_hops: 1,
            on_invalid: OnInvalid::Downstream,
        };
        assert_eq!(
            client_address(&fallback, Some("10.0.0.9:1"), Some("nope")),
            Ok(ip("10.0.0.9"))
        );
        assert_eq!(
            client_address(&fallback, Some("10.0.0.9:1"), None),
            Ok(ip("10.0.0.9"))
        );
    }
}
