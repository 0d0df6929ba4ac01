//! Who holds `forward`: a readiness probe's connection is taken as the
//! backend only if the socket that accepted it belongs to the uid the
//! backend runs as, and so is each client's connection to a ready
//! backend. Otherwise any local user who binds the port (or makes the
//! socket file) while the backend is stopped, or once its listener went
//! while it runs on, would get the clients.
//!
//! - unix: `SO_PEERCRED` on the probe names who called listen(2).
//! - tcp: the listening socket the probe reached is the listener
//!   sock_diag (`diag.rs`; else the LISTEN line in /proc/net/tcp, tcp6)
//!   gives on the probe's peer address, or on the wildcard address and
//!   the same port; its uid is whoever made it. Not
//!   the accepted socket's: the kernel gives that the uid of whoever
//!   accepted it, so a server whose workers drop privileges (nginx: a
//!   root master, workers as nobody) would read as another user once a
//!   worker took the probe. Two listeners on one port need SO_REUSEPORT,
//!   which the kernel allows only to the same uid. A listener read after
//!   the connect is taken only if it is the one seen before it (the
//!   same socket, listening all along, so where the SYN went): another
//!   user's may have taken the connection and let the port go between.
//!
//! Knows nothing of `Server`.

use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::Socket;

use crate::addr::ListenAddr;

/// A TCP listener on `forward` as seen once: its uid, and what tells it
/// from a later listener on the same port (sock_diag's cookie, or the
/// inode /proc/net/tcp gives).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Listener {
    pub uid: u32,
    id: u64,
}

/// The listener on `forward` was not the one seen before the connect: the
/// connection may have reached another user's listener in between.
#[derive(Debug)]
pub(super) struct Rebound;

impl std::fmt::Display for Rebound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "its listener is not the one seen before this connection (closed and bound again)",
        )
    }
}

impl std::error::Error for Rebound {}

/// Is `e` owner_uid's "the listener was rebound"?
pub(super) fn rebound(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|e| e.is::<Rebound>())
}

/// The TCP listener on `to` now; none for a Unix socket, or if none is
/// found.
pub(super) fn listener_on(to: &ListenAddr) -> Option<Listener> {
    match to {
        ListenAddr::Tcp(sa) => tcp_listener(server_of(*sa)).ok(),
        _ => None,
    }
}

/// The address a connection to `sa` reaches (a wildcard: loopback).
fn server_of(sa: SocketAddr) -> SocketAddr {
    let ip = match sa.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, sa.port())
}

/// The uid of the listener a new connection `sock` to `to` reached (a
/// probe's, or a client's before it is relayed), or `want` if that is
/// the uid of the connection's server side (the listener's until
/// accepted; a process of uid `want` accepted it otherwise): one lookup,
/// no walk of the listeners.
///
/// Accepted by another uid (a server whose workers drop privileges, or
/// another user who bound the port, accepted and let go in between):
/// the listener on `to` now is taken only if it is `seen`, a listener
/// seen before this connect (so listening since, and where the SYN
/// went). Another one is `Rebound`, and becomes `seen` for the next
/// connections.
///
/// `strict`, for a connect that was still in progress when connect(2)
/// returned: only the connection's own uid counts, no listener. Its SYN
/// waited, and meanwhile another user's socket bound to `to`'s port
/// (SO_REUSEADDR, no listen) could connect to ours from it: a
/// simultaneous open, no listener involved, which the listener on `to`
/// cannot reveal. Until accepted, the connection's uid is its
/// listener's; a backend whose workers drop privileges and accept such
/// a connection before this check loses that client.
pub(super) fn owner_uid(
    sock: &Socket,
    to: &ListenAddr,
    want: u32,
    seen: &mut Option<Listener>,
    strict: bool,
) -> io::Result<u32> {
    let ListenAddr::Tcp(sa) = to else {
        return peer_uid(sock);
    };
    let server = server_of(*sa);
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    let found = local.map(|l| super::diag::connection_uid(l, server));
    if let Some(Ok(uid)) = found {
        if uid == want || strict {
            return Ok(uid);
        }
    }
    if strict {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the connection's server side was not found",
        ));
    }
    let now = tcp_listener(server)?;
    match seen.replace(now) {
        Some(was) if was == now => Ok(now.uid),
        _ => Err(io::Error::other(Rebound)),
    }
}

/// `SO_PEERCRED` of a connected Unix socket: who called listen(2).
fn peer_uid(sock: &Socket) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// The TCP listener on `server`: from sock_diag (`diag.rs`), or where
/// the kernel has none (no inet_diag), /proc/net/tcp.
fn tcp_listener(server: SocketAddr) -> io::Result<Listener> {
    match super::diag::listener(server) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => proc_listener(server),
        got => got.map(|(uid, id)| Listener { uid, id }),
    }
}

/// The socket listening on `server` (its address, or the wildcard
/// address of its family on its port; an IPv4 address may be reached
/// through an IPv6 wildcard), read line by line (no bound needed on the
/// file's size). An exact listener wins over a wildcard one.
fn proc_listener(server: SocketAddr) -> io::Result<Listener> {
    let mut tables = vec!["/proc/net/tcp6"];
    if server.is_ipv4() {
        tables.insert(0, "/proc/net/tcp");
    }
    let mut wildcard = None;
    for table in tables {
        let Ok(file) = std::fs::File::open(table) else {
            continue;
        };
        for line in BufReader::new(file).lines().skip(1) {
            match listening_on(&line?, server) {
                Some((l, true)) => return Ok(l),
                Some((l, false)) => wildcard = wildcard.or(Some(l)),
                None => {}
            }
        }
    }
    wildcard.ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// One /proc/net/tcp line: `sl local remote st tx:rx tr:when retr uid
/// timeout inode ...`. If it is a listener (state 0A) that `server`
/// reaches: its uid and inode, and whether it is bound to `server`'s own
/// address (not the wildcard).
fn listening_on(line: &str, server: SocketAddr) -> Option<(Listener, bool)> {
    let mut f = line.split_whitespace();
    let local = parse_addr(f.nth(1)?)?;
    if f.nth(1)? != "0A" || local.port() != server.port() {
        return None;
    }
    let exact = local.ip() == server.ip()
        || matches!((local.ip(), server.ip()), (IpAddr::V6(l), IpAddr::V4(s)) if l == s.to_ipv6_mapped());
    if !exact && !local.ip().is_unspecified() {
        return None;
    }
    let uid = f.nth(3)?.parse().ok()?;
    let id = f.nth(1)?.parse().ok()?;
    Some((Listener { uid, id }, exact))
}

/// `0100007F:1F90` (IPv4) or four 32-bit words (IPv6), each word the
/// address's bytes as the kernel's own `u32` printed in hex, the port in
/// hex.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
            .ok()
            .map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_net_tcp_line_gives_the_uid_of_a_listener_on_the_address_only() {
        let line = |local: &str, st: &str| {
            format!("   3: {local} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000    65534        0 123 1 0 20 4 30 10 -1")
        };
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            listening_on(&line("0100007F:1F90", "0A"), server),
            Some((
                Listener {
                    uid: 65534,
                    id: 123
                },
                true
            ))
        );
        assert_eq!(
            listening_on(&line("00000000:1F90", "0A"), server),
            Some((
                Listener {
                    uid: 65534,
                    id: 123
                },
                false
            ))
        );
        // An accepted connection, another port, another address.
        assert_eq!(listening_on(&line("0100007F:1F90", "01"), server), None);
        assert_eq!(listening_on(&line("0100007F:1F91", "0A"), server), None);
        assert_eq!(listening_on(&line("0200007F:1F90", "0A"), server), None);
        let v6any = "00000000000000000000000000000000:1F90";
        assert_eq!(
            listening_on(&line(v6any, "0A"), server),
            Some((
                Listener {
                    uid: 65534,
                    id: 123
                },
                false
            ))
        );
    }

    #[test]
    fn tcp6_addresses_are_four_native_words() {
        let text = "00000000000000000000000001000000:0050";
        assert_eq!(parse_addr(text), "[::1]:80".parse().ok());
    }

    /// A connection not yet accepted is its listener's; once accepted,
    /// the listener now is taken if it is the one seen before, and a
    /// listener bound again is not.
    #[test]
    fn a_connection_is_its_listeners_only_if_that_listener_was_there_before() {
        let me = nix::unistd::geteuid().as_raw();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = ListenAddr::Tcp(l.local_addr().unwrap());
        let mut seen = listener_on(&to);
        assert_eq!(seen.map(|s| s.uid), Some(me));
        let c = Socket::from(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
        assert_eq!(owner_uid(&c, &to, me, &mut seen, false).unwrap(), me);
        // Another uid wanted: the connection's own uid is not it, the
        // listener now is the one seen.
        assert_eq!(owner_uid(&c, &to, me + 1, &mut seen, false).unwrap(), me);
        let sa = l.local_addr().unwrap();
        drop(l);
        let again =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        again.set_reuse_address(true).unwrap();
        again.bind(&sa.into()).unwrap();
        again.listen(1).unwrap();
        let e = owner_uid(&c, &to, me + 1, &mut seen, false).unwrap_err();
        assert!(rebound(&e), "{e}");
        // Seen now, for the next connections.
        assert_eq!(owner_uid(&c, &to, me + 1, &mut seen, false).unwrap(), me);
    }
}
