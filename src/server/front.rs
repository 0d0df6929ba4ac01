//! The front table: accepted connections the loop still works on before
//! they go the usual way (admission, then a child or an internal
//! service). The work is one of two steps (`Work`): reading a PROXY
//! header (`proxy_protocol`), then, for a `tls` service, its TLS
//! handshake (SPEC: "the header comes first, then TLS"). Each connection
//! has its own poll token and a deadline (the caller sets the timer); the
//! table does its sockets' reads and writes and knows nothing of
//! `Server`.
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
//! and when the table is full the listeners of services that read a
//! header or do a handshake (`proxy_protocol`, `tls`) wait, their
//! clients in the kernel backlog; other services' listeners are not held
//! back by it. Handshakes are bounded as well by `HANDSHAKE_LIMIT` over
//! all services and `HANDSHAKES_PER_SOURCE` per client, which the table
//! counts; at `HANDSHAKE_LIMIT` a newcomer takes the place of a
//! handshake of the service, and in it the client, holding the most
//! (`victim`), so that no one (a service's silent clients, one address)
//! can park the others, while a burst that contends with no one is
//! served whole.

use rustc_hash::FxHashMap;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use log::warn;
use mio::Token;
use nix::libc;
use socket2::Socket;

use super::services::ServiceId;
use super::timers::TimerKey;
use crate::addr::ListenAddr;
use crate::limits::Counter;
use crate::peer::{Peer, SourceKey};
use crate::proxy::{self, Header, Malformed, Parsed, Version, V2_MAX};
use crate::relay::preamble::{self, Names, Preamble, PREAMBLE_MAX};
use crate::tls::{self, Failure, Handshake, HANDSHAKE_LIMIT};

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

/// How long a connection whose header the balancer sent for itself
/// waits for its first byte or its close before it is served. haproxy
/// resets a check's connection right after the header, microseconds
/// later, but often after summond has read the header; a check that
/// waits for a banner gets it this much later (haproxy's `timeout check`
/// defaults to 2 s).
pub(super) const LOCAL_WAIT: Duration = Duration::from_millis(200);

/// `LOCAL_WAIT`, or for the test suite only (which must catch such a
/// connection at an upgrade, in no race) what
/// `SUMMOND_TEST_LOCAL_WAIT_MS` says, at most a minute. Read once.
pub(super) fn local_wait() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        std::env::var("SUMMOND_TEST_LOCAL_WAIT_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(LOCAL_WAIT, |ms: u64| Duration::from_millis(ms.min(60_000)))
    })
}

/// Handshakes at once from one client (its per-source key) over all
/// services: past this its next connection is refused (`tls`), so that
/// one address alone cannot fill the `HANDSHAKE_LIMIT` places (it takes
/// four, and then newcomers take their places: `FrontTable::victim`).
/// A quarter of them: a busy client's handshakes overlap more than its
/// own concurrency says (8 `openssl s_time` had 17 in the table at
/// times: each had moved on to its next connection before summond read
/// its last Finished).
pub(super) const HANDSHAKES_PER_SOURCE: u32 = 64;

/// What the loop waits for on a connection before dispatch.
pub(super) enum Work {
    /// Its PROXY header, of this version; `peer` is the balancer.
    Header(Version),
    /// Its TLS handshake (after the header, if there was one); `peer` is
    /// the client. Boxed: rustls's state is large, a header's is not.
    Handshake(Box<Handshake>),
    /// A header the balancer sent for itself (a health check's) was read
    /// and nothing follows yet: its first byte or FIN (served), its
    /// reset (a check, counted) or `LOCAL_WAIT` (served: a check that
    /// waits for the service's banner).
    Local(Box<Header>, Version),
    /// A socket pair's end whose other end a drainer finishes a TLS
    /// handshake on (`drained.rs`): its preamble when done (then the
    /// names it carries, and the client's bytes follow), its failure
    /// byte or EOF when it failed.
    Drained(Option<Box<Names>>),
}

/// A connection the loop works on before dispatch.
pub(super) struct FrontConn {
    pub socket: Socket,
    /// The listener it came on: at the end, its service now (a reload
    /// may have changed or removed it) takes the client.
    pub addr: ListenAddr,
    pub service: ServiceId,
    /// The connection's own peer (the balancer), or with a handshake the
    /// client (the header's, if there was one).
    pub peer: Peer,
    /// The client's per-source key, with a handshake.
    pub source: Option<SourceKey>,
    pub work: Work,
    /// Its `HEADER_TIMEOUT` or `HANDSHAKE_TIMEOUT` timer, cancelled when
    /// it leaves.
    pub timer: TimerKey,
}

/// Why a connection leaves the table before dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrontFailure {
    Proxy(ProxyRefusal),
    Tls(Failure),
}

/// What the work on a connection came to.
pub(super) enum Step {
    /// Not complete yet (or the token is not ours): wait for more bytes.
    Wait,
    /// The header (of the version it was read as) is read, and nothing
    /// after it.
    Done(FrontConn, Header, Version),
    /// The handshake is done (its `Work::Handshake` holds the connection).
    Handshaken(FrontConn),
    /// A `Work::Local` connection's first byte or close came, or its
    /// `LOCAL_WAIT` is over: its header, of the version it was read as.
    Waited(FrontConn, Header, Version),
    Failed(FrontConn, FrontFailure),
}

#[derive(Default)]
pub(super) struct FrontTable {
    conns: FxHashMap<Token, FrontConn>,
    /// Per service, for `max_instances`.
    per_service: FxHashMap<ServiceId, u32>,
    /// Handshakes in the table, over all, per service and per client.
    handshakes: usize,
    handshakes_in: Counter<ServiceId>,
    handshakes_from: Counter<SourceKey>,
    handshakes_from_in: Counter<(ServiceId, SourceKey)>,
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

    /// `HANDSHAKE_LIMIT` handshakes are running: a newcomer takes the
    /// place of one (`victim`) or is refused.
    pub fn handshakes_full(&self) -> bool {
        self.handshakes >= HANDSHAKE_LIMIT
    }

    /// Handshakes of service `id` running for client `key`: they hold
    /// places under its `max_per_source` as children do (a handshake
    /// becomes one). Only asked with `max_per_source` set; the table is
    /// small (at most `FRONT_MAX`).
    pub fn handshakes_of(&self, id: ServiceId, key: &SourceKey) -> u32 {
        if self.handshakes == 0 {
            return 0;
        }
        let n = self
            .conns
            .values()
            .filter(|c| c.service == id && matches!(c.work, Work::Handshake(_)))
            .filter(|c| c.source.as_ref() == Some(key))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// May one more handshake from `key` start: under
    /// `HANDSHAKES_PER_SOURCE` over all services?
    pub fn may_handshake(&self, key: Option<&SourceKey>) -> bool {
        key.is_none_or(|k| self.handshakes_from.get(k) < HANDSHAKES_PER_SOURCE)
    }

    /// At `HANDSHAKE_LIMIT`, the handshake a newcomer of service `id`
    /// from `key` takes the place of. First a silent one (no whole
    /// ClientHello yet: a real client's comes with its connection, and
    /// the table reads it at once), of any service: of the client holding
    /// the most, the oldest; whoever the newcomer is. With none silent:
    /// in the service holding the most (another only if it holds more
    /// than `id`: under contention each service keeps at least an equal
    /// share, and a busy one lends what it does not use), of the client
    /// holding the most there, the one nearest its deadline (the oldest).
    /// None when the newcomer's own client then holds as many as any
    /// there: it is the one refused (`Failure::Full`). Scans of the table
    /// (at most `FRONT_MAX`), only at the bound.
    pub fn victim(&self, id: ServiceId, key: Option<&SourceKey>) -> Option<Token> {
        self.silent_victim().or_else(|| self.heard_victim(id, key))
    }

    /// Of the handshakes whose hello is not in, over all services, the
    /// oldest of the client holding the most handshakes.
    fn silent_victim(&self) -> Option<Token> {
        let silent = || {
            self.conns.iter().filter(|(_, c)| match &c.work {
                Work::Handshake(hs) => !hs.hello_in(),
                _ => false,
            })
        };
        // Clients without a per-source key (a Unix socket's) are one.
        let unkeyed =
            u32::try_from(silent().filter(|(_, c)| c.source.is_none()).count()).unwrap_or(u32::MAX);
        let held = |k: Option<&SourceKey>| k.map_or(unkeyed, |k| self.handshakes_from.get(k));
        pick(
            silent().map(|(t, c)| (held(c.source.as_ref()), c.timer.at(), *t)),
            0,
        )
    }

    /// `victim` when every handshake's hello is in.
    fn heard_victim(&self, id: ServiceId, key: Option<&SourceKey>) -> Option<Token> {
        let mine = self.handshakes_in.get(&id);
        let (top, most) = self.handshakes_in.iter().max_by_key(|(_, n)| *n)?;
        let from = if most > mine { *top } else { id };
        let handshakes = || {
            self.conns
                .iter()
                .filter(move |(_, c)| c.service == from && matches!(c.work, Work::Handshake(_)))
        };
        let unkeyed = u32::try_from(handshakes().filter(|(_, c)| c.source.is_none()).count())
            .unwrap_or(u32::MAX);
        let held =
            |k: Option<&SourceKey>| k.map_or(unkeyed, |k| self.handshakes_from_in.get(&(from, *k)));
        let newcomer = if from == id { held(key) } else { 0 };
        let candidates = handshakes().map(|(t, c)| (held(c.source.as_ref()), c.timer.at(), *t));
        pick(candidates, newcomer)
    }

    /// A connection registered under `token`, with its timer set.
    pub fn insert(&mut self, token: Token, conn: FrontConn) {
        *self.per_service.entry(conn.service).or_default() += 1;
        if let Work::Handshake(_) = conn.work {
            self.handshakes += 1;
            self.handshakes_in.add(conn.service);
            if let Some(key) = conn.source {
                self.handshakes_from.add(key);
                self.handshakes_from_in.add((conn.service, key));
            }
        }
        self.conns.insert(token, conn);
        self.check_counts();
    }

    /// Out of the table, every count given back: the one way out.
    pub fn remove(&mut self, token: Token) -> Option<FrontConn> {
        let conn = self.conns.remove(&token)?;
        if let Some(n) = self.per_service.get_mut(&conn.service) {
            *n -= 1;
            if *n == 0 {
                self.per_service.remove(&conn.service);
            }
        }
        if let Work::Handshake(_) = conn.work {
            self.handshakes -= 1;
            self.handshakes_in.remove(&conn.service);
            if let Some(key) = conn.source {
                self.handshakes_from.remove(&key);
                self.handshakes_from_in.remove(&(conn.service, key));
            }
        }
        self.check_counts();
        Some(conn)
    }

    /// Debug builds (the tests) check after every change that the
    /// handshake counts are what the table holds: a way out of a
    /// handshake that did not give its client's count back would refuse
    /// that client for good once it reached `HANDSHAKES_PER_SOURCE`.
    fn check_counts(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut held: Counter<SourceKey> = Counter::default();
        let mut held_in: Counter<(ServiceId, SourceKey)> = Counter::default();
        let mut per_service: Counter<ServiceId> = Counter::default();
        let mut handshakes = 0;
        for c in self.conns.values() {
            if let Work::Handshake(_) = c.work {
                handshakes += 1;
                per_service.add(c.service);
                if let Some(key) = c.source {
                    held.add(key);
                    held_in.add((c.service, key));
                }
            }
        }
        assert_eq!(handshakes, self.handshakes, "handshakes counted");
        let counted: std::collections::HashMap<_, _> = self.handshakes_in.iter().collect();
        let table: std::collections::HashMap<_, _> = per_service.iter().collect();
        assert_eq!(counted, table, "handshakes per service");
        let counted: std::collections::HashMap<_, _> = self.handshakes_from.iter().collect();
        let table: std::collections::HashMap<_, _> = held.iter().collect();
        assert_eq!(counted, table, "handshakes per client");
        let counted: std::collections::HashMap<_, _> = self.handshakes_from_in.iter().collect();
        let table: std::collections::HashMap<_, _> = held_in.iter().collect();
        assert_eq!(counted, table, "handshakes per client and service");
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

    /// Work on `token`'s connection as far as its socket allows: the
    /// header read whole and exactly, or the handshake done (either way
    /// it leaves the table), a failure (it leaves), or not yet.
    pub fn advance(&mut self, token: Token) -> Step {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Step::Wait;
        };
        let outcome = match &mut conn.work {
            Work::Header(version) => {
                if self.buf.is_empty() {
                    self.buf = vec![MaybeUninit::uninit(); V2_MAX];
                }
                match peek_header(&conn.socket, *version, &mut self.buf) {
                    Ok(None) => return Step::Wait,
                    Ok(Some(header)) => Ok(Some((header, *version))),
                    Err(why) => Err(FrontFailure::Proxy(why)),
                }
            }
            Work::Handshake(hs) => match hs.drive(&mut &conn.socket) {
                tls::Step::Pending => return Step::Wait,
                tls::Step::Done => Ok(None),
                tls::Step::Failed(why) => Err(FrontFailure::Tls(why)),
            },
            Work::Local(..) => {
                if after_header(&conn.socket) == After::Nothing {
                    return Step::Wait;
                }
                return self.remove(token).map_or(Step::Wait, waited);
            }
            Work::Drained(names) => match read_preamble(&conn.socket) {
                None => return Step::Wait,
                Some(Ok(read)) => {
                    *names = Some(Box::new(read));
                    Ok(None)
                }
                Some(Err(why)) => Err(FrontFailure::Tls(why)),
            },
        };
        let Some(conn) = self.remove(token) else {
            return Step::Wait;
        };
        match outcome {
            Ok(Some((header, version))) => Step::Done(conn, header, version),
            Ok(None) => Step::Handshaken(conn),
            Err(why) => Step::Failed(conn, why),
        }
    }

    /// A handshake at its `HELLO_TIMEOUT` whose hello is in: it stays,
    /// under `timer` (the rest of its `HANDSHAKE_TIMEOUT`).
    pub fn extend(&mut self, token: Token) -> bool {
        match self.conns.get_mut(&token).map(|c| &mut c.work) {
            Some(Work::Handshake(hs)) => hs.extend(),
            _ => false,
        }
    }

    /// The new deadline timer of `token`'s connection.
    pub fn set_timer(&mut self, token: Token, timer: TimerKey) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.timer = timer;
        }
    }

    /// What `token`'s connection comes to at its deadline (it leaves):
    /// a failure, or for a `Work::Local` one, its service.
    pub fn late(&mut self, token: Token) -> Option<Step> {
        let conn = self.remove(token)?;
        let why = match conn.work {
            Work::Header(_) => FrontFailure::Proxy(ProxyRefusal::Late),
            Work::Handshake(_) | Work::Drained(_) => FrontFailure::Tls(Failure::Timeout),
            Work::Local(..) => return Some(waited(conn)),
        };
        Some(Step::Failed(conn, why))
    }
}

/// Of `(held by its client, deadline, token)`, the token of a handshake
/// whose client holds the most (more than `newcomer`, what the
/// newcomer's client holds), the nearest its deadline among them.
fn pick(
    candidates: impl Iterator<Item = (u32, std::time::Instant, Token)>,
    newcomer: u32,
) -> Option<Token> {
    candidates
        .max_by_key(|(held, at, token)| (*held, std::cmp::Reverse(*at), *token))
        .filter(|(held, ..)| *held > newcomer)
        .map(|(.., token)| token)
}

/// What a drainer's end says: its preamble, read off (the handshake is
/// done: the client's bytes are next), how it failed (its failure byte,
/// or its EOF or an error: closed; a malformed preamble is logged),
/// `None` for not all of it yet. The preamble is peeked at whole first
/// (bounded, `PREAMBLE_MAX`), then exactly it is read.
fn read_preamble(socket: &Socket) -> Option<Result<Names, Failure>> {
    let mut buf = [MaybeUninit::uninit(); PREAMBLE_MAX];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    let seen = match socket.recv_with_flags(&mut buf, flags) {
        Ok(0) => return Some(Err(Failure::Closed)),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
        Err(_) => return Some(Err(Failure::Closed)),
    };
    // SAFETY: recv wrote the first `seen` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), seen) };
    let (names, len) = match preamble::parse(bytes) {
        // A preamble is at most PREAMBLE_MAX: one cut short waits for its
        // rest (the drainer writes it at once; `DRAINED_WAIT` bounds it).
        Preamble::Incomplete => return None,
        Preamble::Done(names, len) => (names, len),
        Preamble::Failed(why) => return Some(Err(why)),
        Preamble::Malformed => {
            warn!("an upgrade's drainer sent a malformed preamble ({seen} bytes seen): its client closes");
            return Some(Err(Failure::Drainer));
        }
    };
    match socket.recv_with_flags(&mut buf[..len], libc::MSG_DONTWAIT) {
        Ok(n) if n == len => Some(Ok(names)),
        _ => Some(Err(Failure::Closed)),
    }
}

/// A `Work::Local` connection out of the table, its header taken out.
fn waited(mut conn: FrontConn) -> Step {
    match std::mem::replace(&mut conn.work, Work::Header(Version::Any)) {
        Work::Local(header, version) => Step::Waited(conn, *header, version),
        other => {
            conn.work = other;
            Step::Wait
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

/// What follows a header the balancer sent for itself (a health check's,
/// or, from haproxy, a real client's that came on a `bind unix@` or
/// other non-TCP frontend: v1 `UNKNOWN`, v2 `LOCAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum After {
    /// A byte at least, or the peer's FIN: a client to serve (one that
    /// sends nothing and shuts its side still wants the child's output).
    Client,
    /// The peer reset it without a byte more (or it failed): a health
    /// check done (haproxy resets its checks' connections once
    /// connected; a real client's close is a FIN).
    Reset,
    /// Nothing yet.
    Nothing,
}

/// What follows the header just read off `socket`, peeked at.
pub(super) fn after_header(socket: &Socket) -> After {
    let mut byte = [MaybeUninit::uninit()];
    match socket.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        // End of stream: after a FIN, or after a reset whose error an
        // earlier read took; the state tells which.
        Ok(0) if was_reset(socket) => After::Reset,
        Ok(_) => After::Client,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => After::Nothing,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => After::Nothing,
        Err(_) => After::Reset,
    }
}

/// Was the connection reset (or otherwise closed both ways: the TCP
/// state is CLOSE)? After a FIN the state is CLOSE_WAIT: that peer may
/// still be reading.
pub(super) fn was_reset(socket: &Socket) -> bool {
    /// `TCP_CLOSE` in the kernel's `enum tcp_state`.
    const TCP_CLOSE: u8 = 7;
    tcp_state(socket) == Some(TCP_CLOSE)
}

/// Is the peer done sending: any TCP state but ESTABLISHED (CLOSE_WAIT
/// after its FIN, CLOSE after a reset, whose queued bytes a peek still
/// sees)? Asked only of a header still incomplete: a peer that closed or
/// reset after part of one would otherwise hold its place until the
/// deadline, and epoll reports such a socket once.
fn peer_closed(socket: &Socket) -> bool {
    /// `TCP_ESTABLISHED` in the kernel's `enum tcp_state`.
    const TCP_ESTABLISHED: u8 = 1;
    tcp_state(socket).is_some_and(|state| state != TCP_ESTABLISHED)
}

/// The TCP state of `socket` (`tcpi_state`), if it is a TCP socket.
fn tcp_state(socket: &Socket) -> Option<u8> {
    use std::os::fd::AsRawFd;
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
    (rc == 0 && len >= 1).then_some(info[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_takes_the_place_nearest_its_deadline_of_the_client_holding_most() {
        let now = std::time::Instant::now();
        let at = |ms| now + Duration::from_millis(ms);
        // Client A holds 3, B 1: A's nearest its deadline goes.
        let held = [
            (3, at(30), Token(1)),
            (3, at(10), Token(2)),
            (1, at(5), Token(3)),
        ];
        assert_eq!(pick(held.iter().copied(), 0), Some(Token(2)));
        assert_eq!(pick(held.iter().copied(), 2), Some(Token(2)));
        // The newcomer's client holds as many as the most: it is refused.
        assert_eq!(pick(held.iter().copied(), 3), None);
        // Clients holding one each: the nearest its deadline.
        let ones = [(1, at(30), Token(1)), (1, at(10), Token(2))];
        assert_eq!(pick(ones.iter().copied(), 0), Some(Token(2)));
        assert_eq!(pick(std::iter::empty(), 0), None);
    }

    /// A pair over loopback: summond's accepted end and the client.
    fn pair() -> (Socket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (Socket::from(accepted), client)
    }

    /// Wait (bounded) until `socket` is no longer established.
    fn until_closed(socket: &Socket) {
        for _ in 0..1000 {
            if peer_closed(socket) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the peer's close never came");
    }

    #[test]
    fn after_a_header_only_a_reset_is_a_check_a_fin_is_a_client() {
        let (silent, _client) = pair();
        assert_eq!(after_header(&silent), After::Nothing);

        let (shut, client) = pair();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        until_closed(&shut);
        assert_eq!(after_header(&shut), After::Client);
        assert_eq!(after_header(&shut), After::Client, "asked again");

        let (reset, client) = pair();
        Socket::from(client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        until_closed(&reset);
        assert_eq!(after_header(&reset), After::Reset);
        // The reset's error is taken by the first read: the state says.
        assert_eq!(after_header(&reset), After::Reset, "asked again");
    }
}
