//! The client on the other end of an accepted connection: its address (an
//! IPv4 client seen through an IPv6 socket is IPv4 everywhere), or for a
//! Unix socket its credentials, or behind a load balancer the client its
//! PROXY header names; the variables that describe it to the child
//! (systemd's REMOTE_*, ucspi-tcp's TCP*, summond's PROXY_*); and the key
//! that `max_per_source` counts it under.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use socket2::{SockAddr, Socket};

use crate::access::canonical_ip;
use crate::config::SourcePrefix;
use crate::env::EnvBlock;

/// What `max_per_source` counts: a client IP, or a Unix peer's uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SourceKey {
    Ip(IpAddr),
    Uid(u32),
}

/// One 16-byte write per key: every child is counted under its key in a
/// SipHash map (the keys come from the network), and the derived `Hash`
/// fed it four writes (two discriminants, the octets), a fifth of
/// summond's own instructions per connection on the plain path
/// (callgrind). Keys of different kinds may share a hash (an IPv4
/// address and `8000::` plus it); `Eq` tells them apart.
impl std::hash::Hash for SourceKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let bits = match self {
            SourceKey::Ip(IpAddr::V4(a)) => (1 << 127) | u128::from(u32::from(*a)),
            SourceKey::Ip(IpAddr::V6(a)) => u128::from(*a),
            SourceKey::Uid(uid) => (1 << 126) | u128::from(*uid),
        };
        state.write_u128(bits);
    }
}

impl SourceKey {
    /// The key a client is counted under with `per_source_prefix`: its
    /// address with the host bits past the prefix cleared (an IPv6 host
    /// owns a /64, so per-address limits would be no limit there). A uid
    /// is its own group.
    pub fn grouped(self, prefix: SourcePrefix) -> SourceKey {
        match self {
            SourceKey::Ip(IpAddr::V4(a)) => {
                let bits = u32::from(a) & mask32(prefix.v4);
                SourceKey::Ip(IpAddr::V4(bits.into()))
            }
            SourceKey::Ip(IpAddr::V6(a)) => {
                let bits = u128::from(a) & mask128(prefix.v6);
                SourceKey::Ip(IpAddr::V6(bits.into()))
            }
            SourceKey::Uid(_) => self,
        }
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Ip(ip) => write!(f, "{ip}"),
            SourceKey::Uid(uid) => write!(f, "uid {uid}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Peer {
    Inet {
        remote: SocketAddr,
        local: Option<SocketAddr>,
    },
    Unix {
        pid: i32,
        uid: u32,
        gid: u32,
    },
    Unknown,
    /// A client a load balancer (`via`) connected for, as its PROXY
    /// header says. Behind a pointer: only services with `proxy_protocol`
    /// make one, and the other variants stay small; shared, so the copy
    /// the child table keeps costs no allocation.
    Proxied(Arc<Proxied>),
}

/// What a PROXY header said about a client.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proxied {
    /// The client.
    pub remote: SocketAddr,
    /// The address the client connected to (the balancer's front).
    pub local: SocketAddr,
    /// The balancer: the connection's own peer.
    pub via: SocketAddr,
    /// v2 TLVs, when sent.
    pub authority: Option<String>,
    pub alpn: Option<String>,
    pub unique_id: Option<String>,
}

impl Peer {
    /// The client a header names, in place of the balancer `self`; the
    /// balancer itself for a header naming none (LOCAL, UNSPEC, UNKNOWN,
    /// AF_UNIX) or a balancer that is not an IP peer.
    pub fn proxied(self, header: crate::proxy::Header) -> Peer {
        let (Some(addrs), Peer::Inet { remote: via, .. }) = (header.addrs, &self) else {
            return self;
        };
        Peer::Proxied(Arc::new(Proxied {
            remote: canonical_addr(addrs.source),
            local: canonical_addr(addrs.destination),
            via: *via,
            authority: header.authority,
            alpn: header.alpn,
            unique_id: header.unique_id,
        }))
    }
}

pub fn canonical_addr(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(sa.ip()), sa.port())
}

impl Peer {
    /// Describe the client of `conn`, accepted from `from` on a listener
    /// bound to `listening`: a listener bound to one address is the local
    /// end of every connection it accepts, so only a wildcard one costs a
    /// getsockname.
    pub fn of(conn: &Socket, from: &SockAddr, listening: Option<SocketAddr>) -> Peer {
        if let Some(remote) = from.as_socket() {
            let local = match listening.filter(|l| !l.ip().is_unspecified()) {
                Some(l) => Some(canonical_addr(l)),
                None => conn
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map(canonical_addr),
            };
            return Peer::Inet {
                remote: canonical_addr(remote),
                local,
            };
        }
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        match getsockopt(conn, PeerCredentials) {
            Ok(cred) => Peer::Unix {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
            },
            Err(_) => Peer::Unknown,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Inet { remote, .. } => Some(remote.ip()),
            Peer::Proxied(p) => Some(p.remote.ip()),
            _ => None,
        }
    }

    pub fn source_key(&self) -> Option<SourceKey> {
        match self {
            Peer::Inet { remote, .. } => Some(SourceKey::Ip(remote.ip())),
            Peer::Unix { uid, .. } => Some(SourceKey::Uid(*uid)),
            Peer::Proxied(p) => Some(SourceKey::Ip(p.remote.ip())),
            Peer::Unknown => None,
        }
    }

    /// Add the per-connection variables of SPEC "The four ways" to `env`.
    pub fn write_env(&self, env: &mut EnvBlock) {
        match self {
            Peer::Inet { remote, local } => inet_env(env, *remote, *local),
            Peer::Proxied(p) => {
                inet_env(env, p.remote, Some(p.local));
                env.push("PROXY_ADDR", p.via.ip());
                env.push("PROXY_PORT", p.via.port());
                let tlvs = [
                    ("PROXY_AUTHORITY", &p.authority),
                    ("PROXY_ALPN", &p.alpn),
                    ("PROXY_UNIQUE_ID", &p.unique_id),
                ];
                for (name, value) in tlvs {
                    if let Some(v) = value {
                        env.push(name, v.as_str());
                    }
                }
            }
            Peer::Unix { pid, uid, gid } => {
                env.push("REMOTE_UID", *uid);
                env.push("REMOTE_GID", *gid);
                env.push("REMOTE_PID", *pid);
            }
            Peer::Unknown => {}
        }
    }
}

/// systemd's and ucspi-tcp's variables for an IP client.
/// The second name of a value is its first's bytes copied.
fn inet_env(env: &mut EnvBlock, remote: SocketAddr, local: Option<SocketAddr>) {
    let addr = env.push("REMOTE_ADDR", remote.ip());
    let port = env.push("REMOTE_PORT", remote.port());
    env.push("PROTO", "TCP");
    env.push_again("TCPREMOTEIP", addr);
    env.push_again("TCPREMOTEPORT", port);
    if let Some(l) = local {
        env.push("TCPLOCALIP", l.ip());
        env.push("TCPLOCALPORT", l.port());
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Inet { remote, .. } => write!(f, "{remote}"),
            Peer::Unix { pid, uid, .. } => write!(f, "uid {uid} pid {pid}"),
            Peer::Proxied(p) => write!(f, "{} via {}", p.remote, p.via.ip()),
            Peer::Unknown => f.write_str("unknown peer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_clients_are_ipv4() {
        let sa: SocketAddr = "[::ffff:10.1.2.3]:5512".parse().unwrap();
        assert_eq!(canonical_addr(sa).to_string(), "10.1.2.3:5512");
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(canonical_addr(v6), v6);
    }

    #[test]
    fn inet_env_has_both_naming_schemes() {
        let p = Peer::Inet {
            remote: "10.0.0.1:4000".parse().unwrap(),
            local: Some("10.0.0.2:80".parse().unwrap()),
        };
        let mut block = EnvBlock::default();
        p.write_env(&mut block);
        let env = block.strings();
        assert_eq!(
            env,
            [
                "REMOTE_ADDR=10.0.0.1",
                "REMOTE_PORT=4000",
                "PROTO=TCP",
                "TCPREMOTEIP=10.0.0.1",
                "TCPREMOTEPORT=4000",
                "TCPLOCALIP=10.0.0.2",
                "TCPLOCALPORT=80"
            ]
        );
        assert_eq!(
            p.source_key(),
            Some(SourceKey::Ip("10.0.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn a_proxied_client_is_the_headers_with_the_balancer_beside() {
        let balancer = Peer::Inet {
            remote: "10.0.0.2:40000".parse().unwrap(),
            local: Some("10.0.0.1:80".parse().unwrap()),
        };
        let header = crate::proxy::Header {
            addrs: Some(crate::proxy::Addrs {
                source: "[::ffff:203.0.113.7]:51000".parse().unwrap(),
                destination: "198.51.100.1:443".parse().unwrap(),
            }),
            authority: Some("example.com".into()),
            alpn: None,
            unique_id: Some("abc".into()),
            local: false,
        };
        let p = balancer.clone().proxied(header);
        assert_eq!(p.to_string(), "203.0.113.7:51000 via 10.0.0.2");
        assert_eq!(
            p.source_key(),
            Some(SourceKey::Ip("203.0.113.7".parse().unwrap()))
        );
        let mut block = EnvBlock::default();
        p.write_env(&mut block);
        assert_eq!(
            block.strings(),
            [
                "REMOTE_ADDR=203.0.113.7",
                "REMOTE_PORT=51000",
                "PROTO=TCP",
                "TCPREMOTEIP=203.0.113.7",
                "TCPREMOTEPORT=51000",
                "TCPLOCALIP=198.51.100.1",
                "TCPLOCALPORT=443",
                "PROXY_ADDR=10.0.0.2",
                "PROXY_PORT=40000",
                "PROXY_AUTHORITY=example.com",
                "PROXY_UNIQUE_ID=abc",
            ]
        );
        // LOCAL (a health check): the balancer is the client.
        let local = balancer.clone().proxied(crate::proxy::Header::default());
        assert_eq!(local, balancer);
    }

    #[test]
    fn sources_are_grouped_by_prefix() {
        let p = SourcePrefix { v4: 24, v6: 64 };
        let ip = |s: &str| SourceKey::Ip(s.parse().unwrap());
        assert_eq!(ip("10.1.2.3").grouped(p), ip("10.1.2.0"));
        assert_eq!(ip("2001:db8:1:2:aaaa::1").grouped(p), ip("2001:db8:1:2::"));
        assert_eq!(
            ip("10.1.2.3").grouped(SourcePrefix::default()),
            ip("10.1.2.3")
        );
        let full = SourcePrefix { v4: 32, v6: 128 };
        assert_eq!(ip("2001:db8::5").grouped(full), ip("2001:db8::5"));
        assert_eq!(SourceKey::Uid(7).grouped(p), SourceKey::Uid(7));
    }

    #[test]
    fn unix_env_and_key_use_credentials() {
        let p = Peer::Unix {
            pid: 42,
            uid: 1000,
            gid: 100,
        };
        let mut block = EnvBlock::default();
        p.write_env(&mut block);
        let env = block.strings();
        assert_eq!(env, ["REMOTE_UID=1000", "REMOTE_GID=100", "REMOTE_PID=42"]);
        assert_eq!(p.source_key(), Some(SourceKey::Uid(1000)));
        assert_eq!(p.to_string(), "uid 1000 pid 42");
    }
}
