//! Who may connect: CIDR blocks and the allow/deny decision. Knows nothing
//! of sockets or services; `server/connection.rs` asks
//! `AccessList::permits` per accepted client (`server/internal/` per
//! datagram). An IPv4 client seen through an IPv6 socket
//! (`::ffff:a.b.c.d`) is matched as the IPv4 address, as SPEC requires.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `::ffff:a.b.c.d` → `a.b.c.d`; everything else unchanged. Every place that
/// reports or compares a client address goes through this.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An address block: the network address (host bits cleared) and its
/// prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    BadAddress(String),
    BadPrefix { text: String, max: u8 },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::BadAddress(s) => {
                write!(f, "\"{s}\" is not an IP address or ADDRESS/PREFIX block")
            }
            CidrError::BadPrefix { text, max } => {
                write!(
                    f,
                    "prefix length \"{text}\" must be a number from 0 to {max}"
                )
            }
        }
    }
}

impl std::error::Error for CidrError {}

fn mask_v4(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(a);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(a: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(a);
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    Ipv6Addr::from(bits & mask)
}

impl Cidr {
    /// Every address of both families (`proxy_from = ["any"]`).
    pub const ANY: [Cidr; 2] = [
        Cidr {
            net: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix: 0,
        },
        Cidr {
            net: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            prefix: 0,
        },
    ];

    /// Wider than the widest private block of its family (10.0.0.0/8,
    /// fc00::/7): public addresses by the million, the whole Internet
    /// at /0. No set of load balancers needs such a block.
    pub fn is_wide(&self) -> bool {
        self.prefix < if self.net.is_ipv4() { 8 } else { 7 }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_v4(a, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(a)) => mask_v6(a, self.prefix) == net,
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `::1/128`, or a bare address meaning that one host.
    /// Host bits below the prefix are cleared (`10.1.2.3/24` is
    /// `10.1.2.0/24`), as iptables and systemd's IPAddressAllow do. A
    /// mapped IPv4 block (`::ffff:10.0.0.0/104`) becomes the IPv4 block.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip = IpAddr::from_str(addr_text).map_err(|_| CidrError::BadAddress(s.to_string()))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(CidrError::BadPrefix {
                        text: p.to_string(),
                        max,
                    })
                }
            },
        };
        Ok(match ip {
            IpAddr::V4(a) => Cidr {
                net: IpAddr::V4(mask_v4(a, prefix)),
                prefix,
            },
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Cidr {
                    net: IpAddr::V4(mask_v4(v4, prefix - 96)),
                    prefix: prefix - 96,
                },
                _ => Cidr {
                    net: IpAddr::V6(mask_v6(a, prefix)),
                    prefix,
                },
            },
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Why a client was turned away, for the log line and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Matched a `deny` block.
    Denied,
    /// An `allow` list exists and nothing in it matched.
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Denied => "deny list",
            Refusal::NotAllowed => "not in allow list",
        })
    }
}

/// `allow` absent means everyone; `deny` wins over `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessList {
    pub allow: Option<Vec<Cidr>>,
    pub deny: Vec<Cidr>,
}

impl AccessList {
    pub fn permits(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::Denied);
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|c| c.contains(ip)) => Err(Refusal::NotAllowed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("127.0.0.0/8", "127.1.2.3", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("10.1.2.3/24", "10.1.2.200", true),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("::1/128", "::1", true),
            ("::/0", "2001:db8::1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            // mapped clients are IPv4 everywhere
            ("127.0.0.0/8", "::ffff:127.0.0.9", true),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::ffff:10.0.0.0/104", "11.0.0.1", false),
        ];
        for (block, addr, want) in cases {
            let c: Cidr = block.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), *want, "{block} contains {addr}");
        }
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for s in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/1",
            "10.0.0.0/",
            "1.2.3.4/-1",
            "1.2.3.4/+8",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s:?} should be rejected");
        }
        assert_eq!(
            "10.0.0.0/40".parse::<Cidr>().unwrap_err().to_string(),
            "prefix length \"40\" must be a number from 0 to 32"
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = AccessList {
            allow: Some(cidrs(&["10.0.0.0/8"])),
            deny: cidrs(&["10.1.2.0/24"]),
        };
        assert_eq!(acl.permits(ip("10.9.9.9")), Ok(()));
        assert_eq!(acl.permits(ip("10.1.2.3")), Err(Refusal::Denied));
        assert_eq!(acl.permits(ip("192.168.1.1")), Err(Refusal::NotAllowed));
        assert_eq!(acl.permits(ip("::ffff:10.1.2.3")), Err(Refusal::Denied));
    }

    #[test]
    fn no_allow_list_means_everyone_not_denied() {
        let acl = AccessList {
            allow: None,
            deny: cidrs(&["::1"]),
        };
        assert_eq!(acl.permits(ip("127.0.0.1")), Ok(()));
        assert_eq!(acl.permits(ip("::1")), Err(Refusal::Denied));
        assert_eq!(AccessList::default().permits(ip("192.0.2.1")), Ok(()));
        // an empty allow list admits nobody
        let none = AccessList {
            allow: Some(vec![]),
            deny: vec![],
        };
        assert_eq!(none.permits(ip("127.0.0.1")), Err(Refusal::NotAllowed));
    }
}
