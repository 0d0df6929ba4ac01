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
//!   which the kernel allows only to the same uid.
//!
//! Knows nothing of `Server`.

use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::Socket;

use crate::addr::ListenAddr;

/// The uid of the listener that holds the other end of `probe`.
pub(super) fn listener_uid(probe: &Socket) -> io::Result<u32> {
    let peer = probe.peer_addr()?;
    if let Some(peer) = peer.as_socket() {
        return tcp_uid(peer);
    }
    peer_uid(probe)
}

/// The uid of the listener a new connection `sock` to `to` reached,
/// before it is relayed, or `want` if that is the uid of the
/// connection's server side (the listener's until accepted; a process
/// of uid `want` accepted it otherwise): one lookup, no walk of the
/// listeners. Its connect may be in progress: for TCP the listener is
/// the one on `to` now, which is where the SYN went.
pub(super) fn owner_uid(sock: &Socket, to: &ListenAddr, want: u32) -> io::Result<u32> {
    let ListenAddr::Tcp(sa) = to else {
        return peer_uid(sock);
    };
    let ip = match sa.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let server = SocketAddr::new(ip, sa.port());
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    match local.map(|l| super::diag::connection_uid(l, server)) {
        Some(Ok(uid)) if uid == want => Ok(uid),
        _ => tcp_uid(server),
    }
}

/// `SO_PEERCRED` of a connected Unix socket: who called listen(2).
fn peer_uid(sock: &Socket) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// The uid of the TCP listener on `server`: from sock_diag (`diag.rs`),
/// or where the kernel has none (no inet_diag), /proc/net/tcp.
fn tcp_uid(server: SocketAddr) -> io::Result<u32> {
    match super::diag::listener_uid(server) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => tcp_listener_uid(server),
        got => got,
    }
}

/// The uid of the socket listening on `server` (its address, or the
/// wildcard address of its family on its port; an IPv4 address may be
/// reached through an IPv6 wildcard), read line by line (no bound needed
/// on the file's size). An exact listener wins over a wildcard one.
fn tcp_listener_uid(server: SocketAddr) -> io::Result<u32> {
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
                Some((uid, true)) => return Ok(uid),
                Some((uid, false)) => wildcard = wildcard.or(Some(uid)),
                None => {}
            }
        }
    }
    wildcard.ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// One /proc/net/tcp line: `sl local remote st tx:rx tr:when retr uid ...`.
/// If it is a listener (state 0A) that `server` reaches: its uid, and
/// whether it is bound to `server`'s own address (not the wildcard).
fn listening_on(line: &str, server: SocketAddr) -> Option<(u32, bool)> {
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
    Some((uid, exact))
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
            Some((65534, true))
        );
        assert_eq!(
            listening_on(&line("00000000:1F90", "0A"), server),
            Some((65534, false))
        );
        // An accepted connection, another port, another address.
        assert_eq!(listening_on(&line("0100007F:1F90", "01"), server), None);
        assert_eq!(listening_on(&line("0100007F:1F91", "0A"), server), None);
        assert_eq!(listening_on(&line("0200007F:1F90", "0A"), server), None);
        let v6any = "00000000000000000000000000000000:1F90";
        assert_eq!(
            listening_on(&line(v6any, "0A"), server),
            Some((65534, false))
        );
    }

    #[test]
    fn tcp6_addresses_are_four_native_words() {
        let text = "00000000000000000000000001000000:0050";
        assert_eq!(parse_addr(text), "[::1]:80".parse().ok());
    }

    #[test]
    fn a_real_connection_is_found_with_its_listeners_uid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = Socket::from(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
        assert_eq!(listener_uid(&c).unwrap(), nix::unistd::geteuid().as_raw());
    }
}
