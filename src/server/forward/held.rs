//! Who holds `forward`: a readiness probe's connection is taken as the
//! backend only if the socket that accepted it belongs to the uid the
//! backend runs as. Otherwise any local user who binds the port (or makes
//! the socket file) while the backend is stopped would get the clients.
//!
//! - unix: `SO_PEERCRED` on the probe names who called listen(2).
//! - tcp: the server side of the probe's connection (accepted or still
//!   in the listener's queue) is the line in /proc/net/tcp (tcp6) whose
//!   local address is the probe's peer and remote address the probe's
//!   own; its uid is the listener's (the kernel copies it to the child).
//!
//! Knows nothing of `Server`.

use std::io::{self, BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::Socket;

/// The uid of the listener that holds the other end of `probe`.
pub(super) fn listener_uid(probe: &Socket) -> io::Result<u32> {
    let peer = probe.peer_addr()?;
    if let Some(peer) = peer.as_socket() {
        let local = probe
            .local_addr()?
            .as_socket()
            .ok_or(io::ErrorKind::InvalidData)?;
        return tcp_uid(peer, local);
    }
    let cred = nix::sys::socket::getsockopt(probe, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// The uid of the socket with local address `server` and remote address
/// `client`, read line by line (no bound needed on the file's size).
fn tcp_uid(server: SocketAddr, client: SocketAddr) -> io::Result<u32> {
    let table = match server {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let file = BufReader::new(std::fs::File::open(table)?);
    for line in file.lines().skip(1) {
        if let Some(uid) = uid_if_pair(&line?, server, client) {
            return Ok(uid);
        }
    }
    Err(io::ErrorKind::NotFound.into())
}

/// One /proc/net/tcp line: `sl local remote st tx:rx tr:when retr uid ...`.
fn uid_if_pair(line: &str, server: SocketAddr, client: SocketAddr) -> Option<u32> {
    let mut f = line.split_whitespace();
    let (local, remote) = (f.nth(1)?, f.next()?);
    if parse_addr(local)? != server || parse_addr(remote)? != client {
        return None;
    }
    f.nth(4)?.parse().ok()
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
    fn a_proc_net_tcp_line_gives_the_uid_of_its_pair_only() {
        let line = "   3: 0100007F:1F90 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000    65534        0 123 1 0 20 4 30 10 -1";
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:41668".parse().unwrap();
        assert_eq!(uid_if_pair(line, server, client), Some(65534));
        assert_eq!(uid_if_pair(line, client, server), None);
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
