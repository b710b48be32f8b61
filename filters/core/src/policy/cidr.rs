//! IPv4 and IPv6 address blocks (`10.0.0.0/8`, `2001:db8::/32`), parsed once at configuration time.

use std::fmt;
use std::net::IpAddr;

/// An address block: a network address and a prefix length. IPv4 blocks match
/// IPv4 addresses and IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`); IPv6 blocks match IPv6 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    /// An IPv4 block: network bits and mask as integers.
    V4 {
        /// The network address, host bits zero.
        network: u32,
        /// The prefix length (0–32).
        len: u8,
    },
    /// An IPv6 block.
    V6 {
        /// The network address, host bits zero.
        network: u128,
        /// The prefix length (0–128).
        len: u8,
    },
}

/// Why a block could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

fn mask4(len: u8) -> u32 {
    // A shift by 32 (len 0) is no bits; len is at most 32 (checked at parse).
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    // A shift by 128 (len 0) is no bits; len is at most 128 (checked at parse).
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

impl Cidr {
    /// Parses `addr/len`, or a bare address (a single host). Host bits must be zero
    /// (`10.1.0.0/8` is refused: it is almost always a typo).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
                    return Err(CidrError(format!(
                        "`{text}`: the prefix length is not a number"
                    )));
                }
                (
                    a,
                    Some(l.parse::<u8>().map_err(|_| {
                        CidrError(format!("`{text}`: the prefix length is too long"))
                    })?),
                )
            }
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CidrError(format!("`{text}` is not an IPv4 or IPv6 address block")))?;
        match ip {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(CidrError(format!(
                        "`{text}`: an IPv4 prefix is at most 32 bits"
                    )));
                }
                let bits = u32::from(v4);
                if bits & !mask4(len) != 0 {
                    return Err(CidrError(format!(
                        "`{text}` has host bits set (did you mean `{}/{len}`?)",
                        std::net::Ipv4Addr::from(bits & mask4(len))
                    )));
                }
                Ok(Cidr::V4 { network: bits, len })
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(CidrError(format!(
                        "`{text}`: an IPv6 prefix is at most 128 bits"
                    )));
                }
                let bits = u128::from(v6);
                if bits & !mask6(len) != 0 {
                    return Err(CidrError(format!(
                        "`{text}` has host bits set (did you mean `{}/{len}`?)",
                        std::net::Ipv6Addr::from(bits & mask6(len))
                    )));
                }
                Ok(Cidr::V6 { network: bits, len })
            }
        }
    }

    /// True when `ip` lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match (self, ip) {
            (Cidr::V4 { network, len }, IpAddr::V4(a)) => u32::from(a) & mask4(*len) == *network,
            (Cidr::V6 { network, len }, IpAddr::V6(a)) => u128::from(a) & mask6(*len) == *network,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cidr::V4 { network, len } => write!(f, "{}/{len}", std::net::Ipv4Addr::from(*network)),
            Cidr::V6 { network, len } => write!(f, "{}/{len}", std::net::Ipv6Addr::from(*network)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("192.0.2.7", "192.0.2.7", true),
            ("192.0.2.7", "192.0.2.8", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::/32", "10.0.0.1", false),
            ("::/0", "::1", true),
            ("2001:db8::1/128", "2001:db8::1", true),
            ("fe80::/10", "febf::1", true),
            ("fe80::/10", "fec0::1", false),
        ];
        for (block, addr, want) in cases {
            let c = Cidr::parse(block).unwrap();
            assert_eq!(c.contains(ip(addr)), want, "{block} ∋ {addr}");
        }
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "2001:db8::/129",
            "10.1.0.0/8",
            "2001:db8::1/32",
            "example.com/8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0.0/0008",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"] {
            assert_eq!(Cidr::parse(s).unwrap().to_string(), s);
        }
    }
}
