//! The front table: accepted connections the loop still works on before
//! they go the usual way (admission, then a child or an internal
//! service). Today that is reading a PROXY header (`proxy_protocol`); a
//! TLS handshake will be one more kind of work here. Each connection has
//! its own poll token and a deadline (the caller sets the timer); the
//! table does its sockets' reads and knows nothing of `Server`.
//!
//! Not one byte of the client's own is consumed: the header is read with
//! `MSG_PEEK` into one buffer the table owns (at most `V2_MAX` bytes, for
//! every connection in turn), parsed from the start each time more bytes
//! arrive, and only once it is complete are exactly its bytes taken off
//! the socket. A header byte by byte costs a peek per byte (at most 107
//! or 4096 of them); epoll is edge-triggered and a peek leaves the bytes
//! there, so a connection is reported again only when more arrive: a
//! silent or slow peer costs nothing until its deadline.
//!
//! Bounded: `FRONT_MAX` connections at once over all services. The loop
//! counts them as children for `max_children` and `max_instances` (a
//! header read becomes a child at once, so the place is held for it),
//! and when the table is full the listeners of services with
//! `proxy_protocol` wait, their clients in the kernel backlog; other
//! services' listeners are not held back by it.

use rustc_hash::FxHashMap;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use mio::Token;
use nix::libc;
use socket2::Socket;

use super::services::ServiceId;
use super::timers::TimerKey;
use crate::addr::ListenAddr;
use crate::peer::Peer;
use crate::proxy::{self, Header, Malformed, Parsed, Version, V2_MAX};

/// SPEC: a PROXY header has 5 s to arrive.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(proxy::HEADER_SECS as u64);
/// Connections waiting for their header at once, over all services. A
/// balancer writes the header with the connection's first segment, so a
/// connection stays here about one round trip; 1024 is the default
/// `max_children`, many times what a busy balancer has in flight, and
/// costs at most 1024 fds and ~200 KB. A balancer that holds more
/// silent than that makes the PROXY services' clients wait in the
/// backlog, not anyone else's memory grow or other services wait.
pub(super) const FRONT_MAX: usize = 1024;

/// Why a connection leaves the table without a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum ProxyRefusal {
    /// Its peer is not in `proxy_from` (decided at accept, unread).
    Untrusted,
    Malformed(Malformed),
    /// The peer closed (or reset) before the header's end.
    Truncated,
    /// No complete header within `HEADER_TIMEOUT`.
    Late,
}

impl fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyRefusal::Untrusted => f.write_str("not in proxy_from"),
            ProxyRefusal::Malformed(m) => write!(f, "{m}"),
            ProxyRefusal::Truncated => f.write_str("closed before the end of its PROXY header"),
            ProxyRefusal::Late => write!(f, "no PROXY header within {}s", HEADER_TIMEOUT.as_secs()),
        }
    }
}

/// A connection waiting for its header.
pub(super) struct FrontConn {
    pub socket: Socket,
    /// The listener it came on: at the end, its service now (a reload
    /// may have changed or removed it) takes the client.
    pub addr: ListenAddr,
    pub service: ServiceId,
    /// The connection's own peer: the balancer.
    pub peer: Peer,
    pub version: Version,
    /// Its `HEADER_TIMEOUT` timer, cancelled when it leaves.
    pub timer: TimerKey,
}

/// What reading a connection's header came to.
pub(super) enum Step {
    /// Not complete yet (or the token is not ours): wait for more bytes.
    Wait,
    /// The header is read, and nothing after it.
    Done(FrontConn, Header),
    Failed(FrontConn, ProxyRefusal),
}

#[derive(Default)]
pub(super) struct FrontTable {
    conns: FxHashMap<Token, FrontConn>,
    /// Per service, for `max_instances`.
    per_service: FxHashMap<ServiceId, u32>,
    /// Where headers are peeked into and read: one for all, allocated at
    /// the first connection of a service with `proxy_protocol`.
    buf: Vec<MaybeUninit<u8>>,
}

impl FrontTable {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_full(&self) -> bool {
        self.conns.len() >= FRONT_MAX
    }

    /// Connections of service `id` waiting for their header.
    pub fn active(&self, id: ServiceId) -> u32 {
        if self.conns.is_empty() {
            return 0;
        }
        self.per_service.get(&id).copied().unwrap_or(0)
    }

    /// A connection registered under `token`, with its timer set.
    pub fn insert(&mut self, token: Token, conn: FrontConn) {
        *self.per_service.entry(conn.service).or_default() += 1;
        self.conns.insert(token, conn);
    }

    pub fn remove(&mut self, token: Token) -> Option<FrontConn> {
        let conn = self.conns.remove(&token)?;
        if let Some(n) = self.per_service.get_mut(&conn.service) {
            *n -= 1;
            if *n == 0 {
                self.per_service.remove(&conn.service);
            }
        }
        Some(conn)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Token, &FrontConn)> {
        self.conns.iter()
    }

    /// A header read off a connection not in the table yet (just
    /// accepted: a balancer's header is usually there already, and then
    /// the connection needs no token, timer or registration).
    pub fn read_now(
        &mut self,
        socket: &Socket,
        version: Version,
    ) -> Result<Option<Header>, ProxyRefusal> {
        if self.buf.is_empty() {
            self.buf = vec![MaybeUninit::uninit(); V2_MAX];
        }
        peek_header(socket, version, &mut self.buf)
    }

    /// Read what arrived on `token`'s connection: the header whole and
    /// exactly (it leaves the table), a refusal (it leaves), or not yet.
    pub fn advance(&mut self, token: Token) -> Step {
        if self.buf.is_empty() {
            self.buf = vec![MaybeUninit::uninit(); V2_MAX];
        }
        let Some(conn) = self.conns.get(&token) else {
            return Step::Wait;
        };
        let outcome = peek_header(&conn.socket, conn.version, &mut self.buf);
        match outcome {
            Ok(None) => Step::Wait,
            Ok(Some(header)) => match self.remove(token) {
                Some(conn) => Step::Done(conn, header),
                None => Step::Wait,
            },
            Err(why) => match self.remove(token) {
                Some(conn) => Step::Failed(conn, why),
                None => Step::Wait,
            },
        }
    }
}

/// Peek at what `socket` holds; a complete header is then read off it,
/// exactly its length. Ok(None): incomplete, wait.
fn peek_header(
    socket: &Socket,
    version: Version,
    buf: &mut [MaybeUninit<u8>],
) -> Result<Option<Header>, ProxyRefusal> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    let seen = match socket.recv_with_flags(buf, flags) {
        Ok(0) => return Err(ProxyRefusal::Truncated),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
        Err(_) => return Err(ProxyRefusal::Truncated),
    };
    // SAFETY: recv wrote the first `seen` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), seen) };
    match proxy::parse(bytes, version) {
        // A peek sees the bytes before the FIN, never the FIN itself:
        // whether the peer is done sending, the connection's state says.
        Parsed::Incomplete if peer_closed(socket) => Err(ProxyRefusal::Truncated),
        Parsed::Incomplete => Ok(None),
        Parsed::Bad(m) => Err(ProxyRefusal::Malformed(m)),
        Parsed::Done(len, header) => {
            // The bytes were just seen and stay until read: this takes
            // them all, and not one past the header.
            match socket.recv_with_flags(&mut buf[..len], libc::MSG_DONTWAIT) {
                Ok(n) if n == len => Ok(Some(header)),
                _ => Err(ProxyRefusal::Truncated),
            }
        }
    }
}

/// Is the peer done sending: any TCP state but ESTABLISHED (CLOSE_WAIT
/// after its FIN, CLOSE after a reset, whose queued bytes a peek still
/// sees)? Asked only of a header still incomplete: a peer that closed or
/// reset after part of one would otherwise hold its place until the
/// deadline, and epoll reports such a socket once.
fn peer_closed(socket: &Socket) -> bool {
    use std::os::fd::AsRawFd;
    /// `TCP_ESTABLISHED` in the kernel's `enum tcp_state`.
    const TCP_ESTABLISHED: u8 = 1;
    // `struct tcp_info` begins with `__u8 tcpi_state`; the kernel copies
    // as much of the struct as asked for.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    rc == 0 && len >= 1 && info[0] != TCP_ESTABLISHED
}
