//! The uid of a TCP listener, asked of the kernel over sock_diag netlink
//! (NETLINK_SOCK_DIAG, inet_diag; what `ss -ltn sport = :P` asks): one
//! dump of the listeners of one family in the LISTEN state on one port.
//! The kernel filters on the state and port as it walks its table of
//! listeners (never the established ones), so the cost does not grow
//! with the host's connections, unlike reading /proc/net/tcp, which
//! walks every socket (3 ms on a host with a few dozen). Still a walk of
//! the listeners' table (~14 µs; twice that for an IPv4 address that
//! may reach an IPv6 wildcard): at each client's connection a lookup of
//! that one connection's server side comes first (~4 µs), whose uid is
//! the listener's until a process accepts it (`connection_uid`).
//!
//! A dump gets a netlink socket of its own (close-on-exec, closed after
//! it): no half-read dump is ever taken for the next one's. The lookup of
//! one connection, asked at every client's connection, keeps one socket
//! from one question to the next (opening and closing one cost ~7 µs of
//! the ~9): its reply is one datagram, read whole; each question has its
//! own sequence number, and after anything but a whole reply with that
//! number the socket is closed and the next question opens a new one.
//! Knows nothing of `Server`.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LISTEN: u8 = 10;
/// The sequence number of a dump (on a socket of its own).
const SEQ: u32 = 1;
/// nlmsghdr, inet_diag_req_v2, and where inet_diag_msg keeps its uid.
const HDR: usize = 16;
const REQ: usize = 56;
const MSG_UID: usize = 64;
/// Where inet_diag_msg keeps its socket's cookie (inet_diag_sockid's,
/// two native words, low first).
const MSG_COOKIE: usize = 44;
/// A socket of a reply: its address, source port, state, uid and
/// cookie (the kernel's 64-bit number for that socket, never reused
/// while it runs: tells a listener from a later one on the same port).
type Socket = (IpAddr, u16, u8, u32, u64);

thread_local! {
    /// `connection_uid`'s socket, between questions, and the sequence
    /// number of its last question.
    static KEPT: Cell<Option<OwnedFd>> = const { Cell::new(None) };
    static ASKED: Cell<u32> = const { Cell::new(SEQ) };
}

/// Reads of one dump at most (a port's listeners are few: SO_REUSEPORT
/// ones are one per worker, ~100 bytes each).
const MAX_READS: usize = 64;

/// The uid and cookie of the socket listening on `server`: one bound to
/// its address, else one on the wildcard address of its family (an IPv4
/// address may be reached through an IPv6 wildcard), on its port.
pub(super) fn listener(server: SocketAddr) -> io::Result<(u32, u64)> {
    let families: &[i32] = match server {
        SocketAddr::V4(_) => &[libc::AF_INET, libc::AF_INET6],
        SocketAddr::V6(_) => &[libc::AF_INET6],
    };
    let mut wildcard = None;
    for &family in families {
        for (ip, uid) in listeners(family, server.port())? {
            let exact = ip == server.ip()
                || matches!((ip, server.ip()), (IpAddr::V6(l), IpAddr::V4(s)) if l == s.to_ipv6_mapped());
            if exact {
                return Ok(uid);
            }
            if ip.is_unspecified() {
                wildcard = wildcard.or(Some(uid));
            }
        }
    }
    wildcard.ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// Every listener of `family` on `port`: its address, and its uid and
/// cookie.
fn listeners(family: i32, port: u16) -> io::Result<Vec<(IpAddr, (u32, u64))>> {
    let mut req = request(family, true);
    req[HDR + 4..HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req[HDR + 8..HDR + 10].copy_from_slice(&port.to_be_bytes());
    let got = ask(&open()?, &req, SEQ, true)?;
    let on_port = |(_, sport, state, ..): &Socket| *sport == port && *state == TCP_LISTEN;
    Ok(got
        .into_iter()
        .filter(on_port)
        .map(|(ip, _, _, uid, cookie)| (ip, (uid, cookie)))
        .collect())
}

/// The uid of the server's side of the TCP connection `local` (ours) to
/// `server`: one lookup of one socket (a hash lookup, no walk). The
/// listener's uid while the connection waits to be accepted, the
/// accepter's once accepted (so only a match is taken as an answer).
pub(super) fn connection_uid(local: SocketAddr, server: SocketAddr) -> io::Result<u32> {
    let family = match server {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let mut req = request(family, false);
    req[HDR + 4..HDR + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
    let id = &mut req[HDR + 8..];
    id[0..2].copy_from_slice(&server.port().to_be_bytes());
    id[2..4].copy_from_slice(&local.port().to_be_bytes());
    id[4..20].copy_from_slice(&ip_bytes(server.ip()));
    id[20..36].copy_from_slice(&ip_bytes(local.ip()));
    let seq = ASKED.get().wrapping_add(1);
    ASKED.set(seq);
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    let fd = match KEPT.take() {
        Some(fd) => fd,
        None => open()?,
    };
    let got = ask(&fd, &req, seq, false);
    // A whole reply (the kernel's "no such socket", ENOENT, is one too):
    // the socket holds nothing more, and serves the next question.
    if got
        .as_ref()
        .map_or_else(|e| e.kind() == io::ErrorKind::NotFound, |_| true)
    {
        KEPT.set(Some(fd));
    }
    let got = got?;
    // A full socket only: one still a request (its handshake's last ACK
    // not in) or in TIME_WAIT reads as uid 0, whoever listens.
    let full = |m: &&Socket| matches!(m.2, TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_LISTEN);
    (got.iter().find(full).map(|m| m.3)).ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// An address as inet_diag_sockid holds it: IPv4 in the first word.
fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just made, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A request: nlmsghdr, then inet_diag_req_v2 for TCP sockets of
/// `family` (a dump, or one socket); states and id set by the caller.
fn request(family: i32, dump: bool) -> [u8; HDR + REQ] {
    let mut b = [0u8; HDR + REQ];
    b[0..4].copy_from_slice(&((HDR + REQ) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | if dump { libc::NLM_F_DUMP } else { 0 };
    b[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
    b[8..12].copy_from_slice(&SEQ.to_ne_bytes());
    let r = &mut b[HDR..];
    r[0] = family as u8;
    r[1] = libc::IPPROTO_TCP as u8;
    // inet_diag_sockid's cookie: none.
    r[48..56].fill(0xff);
    b
}

/// Sends `req`, reads the reply: each socket's address, source port,
/// state and uid (a dump's until its end, else one message's).
fn ask(fd: &OwnedFd, req: &[u8], seq: u32, dump: bool) -> io::Result<Vec<Socket>> {
    // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `req` and `kernel` outlive the call, lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    for _ in 0..MAX_READS {
        // The kernel fills the reply as it is read: never waits.
        // SAFETY: `buf` outlives the call, its length is its own.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse(&buf[..n as usize], seq, &mut out)? || !dump {
            return Ok(out);
        }
    }
    Err(io::Error::other("sock_diag dump too long"))
}

/// The messages of one read, each listener added to `out`: whether the
/// dump ended.
fn parse(mut b: &[u8], seq: u32, out: &mut Vec<Socket>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "sock_diag reply");
    while b.len() >= HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(b[4..6].try_into().unwrap());
        let their_seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
        if len < HDR || len > b.len() || their_seq != seq {
            return Err(bad());
        }
        let body = &b[HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body.get(0..4).ok_or_else(bad)?;
                let errno = -i32::from_ne_bytes(errno.try_into().unwrap());
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                out.extend(socket(body));
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(false)
}

/// One inet_diag_msg: the socket's address, port, state, uid and cookie.
fn socket(m: &[u8]) -> Option<Socket> {
    let word = |at: usize| Some(u32::from_ne_bytes(m.get(at..at + 4)?.try_into().ok()?));
    let uid = word(MSG_UID)?;
    let cookie = u64::from(word(MSG_COOKIE)?) | u64::from(word(MSG_COOKIE + 4)?) << 32;
    let src: [u8; 16] = m[8..24].try_into().ok()?;
    let ip = match i32::from(m[0]) {
        libc::AF_INET => IpAddr::from([src[0], src[1], src[2], src[3]]),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(src)),
        _ => return None,
    };
    Some((ip, u16::from_be_bytes([m[4], m[5]]), m[1], uid, cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener of this process is found with its uid and the same
    /// cookie each time, through the IPv4 address and a wildcard (another
    /// listener: another cookie); a port nobody listens on is not.
    #[test]
    fn a_listener_is_found_with_its_uid() {
        let me = nix::unistd::geteuid().as_raw();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (uid, cookie) = listener(l.local_addr().unwrap()).unwrap();
        assert_eq!(uid, me);
        assert_eq!(listener(l.local_addr().unwrap()).unwrap().1, cookie);
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let (uid, other) = listener(at).unwrap();
        assert_eq!(uid, me);
        assert_ne!(other, cookie, "another listener, another cookie");
        drop(any);
        let gone = listener(at);
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A connection's server side is found by its four numbers, with
    /// the listener's uid before it is accepted.
    #[test]
    fn a_connections_server_side_is_found_with_its_uid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (local, server) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(connection_uid(local, server).unwrap(), me);
        drop(c);
        drop(l);
        assert!(connection_uid(local, server).is_err());
    }

    /// The kept socket answers question after question, each by its own
    /// number, a "no such socket" among them; it stays one socket.
    #[test]
    fn the_connection_lookups_socket_is_kept_across_questions() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (local, server) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        let gone = SocketAddr::from(([127, 0, 0, 1], 1));
        for _ in 0..3 {
            assert_eq!(connection_uid(local, server).unwrap(), me);
            assert!(connection_uid(local, gone).is_err());
        }
        let kept = KEPT.take().expect("a socket kept");
        let fd = kept.as_raw_fd();
        KEPT.set(Some(kept));
        assert_eq!(connection_uid(local, server).unwrap(), me);
        let again = KEPT.take().unwrap();
        assert_eq!(again.as_raw_fd(), fd);
    }
}
