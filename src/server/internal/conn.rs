//! An internal service's TCP connection, served in the loop with one
//! fixed buffer and a budget per wake-up, and the table of the open ones
//! (what they count toward, their idle deadlines).

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

use mio::Token;
use socket2::Socket;

use super::answers::{chargen_fill, one_shot_answer};
use crate::config::Internal;
use crate::limits::Counter;
use crate::peer::{Peer, SourceKey};
use crate::server::services::ServiceId;
use crate::upgrade::InternalState;

/// One TCP connection's buffer.
const BUF: usize = 4096;
/// SO_SNDBUF and SO_RCVBUF of a TCP connection (Linux doubles them for
/// its bookkeeping: 32 KiB each at most in the queues).
pub(super) const KERNEL_BUF: usize = 16 * 1024;
/// Bytes moved per wake-up before yielding to the rest of the loop.
const BUDGET: usize = 64 * 1024;
/// What a wake-up left the connection as.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::server) enum Progress {
    /// Waiting for the socket; the next readiness event continues.
    Waiting,
    /// The budget ran out with work left: continue next turn.
    MoreWork,
    /// Finished or the client is gone: close it.
    Done,
}

pub(in crate::server) struct InternalConn {
    pub kind: Internal,
    pub socket: Socket,
    pub service: ServiceId,
    pub source: Option<SourceKey>,
    pub peer: Peer,
    buf: Box<[u8; BUF]>,
    /// Unsent bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// chargen: where in the pattern the next line starts.
    line: usize,
    /// daytime/time: the answer is all there is; close once it is sent.
    one_shot: bool,
    /// When a byte last moved either way, and how long the client may
    /// then stay silent (its service's `idle_timeout`) before it is closed.
    last_active: Instant,
    pub(super) idle: Duration,
}

impl InternalConn {
    pub fn new(
        kind: Internal,
        socket: Socket,
        service: ServiceId,
        source: Option<SourceKey>,
        peer: Peer,
        now: SystemTime,
    ) -> InternalConn {
        let mut conn = InternalConn::resumed(kind, socket, service, source, peer, (&[], 0, false));
        if matches!(kind, Internal::Daytime | Internal::Time) {
            conn.end = one_shot_answer(kind, now, &mut conn.buf[..]);
            conn.one_shot = true;
        }
        conn
    }

    /// A connection with the output it had not written yet (none for a
    /// new one).
    fn resumed(
        kind: Internal,
        socket: Socket,
        service: ServiceId,
        source: Option<SourceKey>,
        peer: Peer,
        progress: (&[u8], usize, bool),
    ) -> InternalConn {
        let (unsent, line, one_shot) = progress;
        let mut conn = InternalConn {
            kind,
            socket,
            service,
            source,
            peer,
            buf: Box::new([0; BUF]),
            start: 0,
            end: unsent.len().min(BUF),
            line,
            one_shot,
            // Until `resume_idle_clock` says how long it has been silent.
            last_active: Instant::now(),
            idle: crate::config::DEFAULT_IDLE_TIMEOUT,
        };
        conn.buf[..conn.end].copy_from_slice(&unsent[..conn.end]);
        conn
    }

    /// What the next image of an upgrade needs to carry on, under its
    /// service's name now (`service`): the socket, the unsent output, the
    /// chargen line, whether the answer is all there is, its idle timeout
    /// and how long it has been silent at `now`.
    pub fn to_state(&self, service: String, now: Instant) -> InternalState {
        let silent = now.saturating_duration_since(self.last_active);
        InternalState {
            fd: self.socket.as_raw_fd(),
            service,
            kind: self.kind,
            peer: self.peer.clone(),
            source: self.source,
            unsent: self.buf[self.start..self.end].to_vec(),
            line: self.line,
            one_shot: self.one_shot,
            idle: Some((self.idle.as_nanos() as u64, silent.as_nanos() as u64)),
        }
    }

    /// A connection the previous image handed over, now of service `id`,
    /// its idle clock measured from the hand-over (`handed`): its timeout
    /// (a client of a removed service keeps it, as at a reload) and the
    /// silence so far, which does not start again.
    pub fn from_state(c: InternalState, id: ServiceId, handed: Instant) -> InternalConn {
        // SAFETY: named by the state, taken once.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(c.fd) });
        let progress = (c.unsent.as_slice(), c.line, c.one_shot);
        let mut conn = InternalConn::resumed(c.kind, socket, id, c.source, c.peer, progress);
        if let Some((timeout, silent)) = c.idle {
            conn.idle = Duration::from_nanos(timeout);
            let silent = Duration::from_nanos(silent);
            conn.last_active = handed.checked_sub(silent).unwrap_or(handed);
        }
        conn
    }

    /// When the client will have been silent for its idle timeout.
    fn idle_deadline(&self) -> Instant {
        self.last_active + self.idle
    }

    /// Move what the socket allows, up to the budget; a byte moved either
    /// way at `now` restarts the idle clock.
    pub fn on_ready(&mut self, now: Instant) -> Progress {
        let mut moved = 0;
        while moved < BUDGET {
            // Flush what is pending first.
            if self.start < self.end {
                match (&self.socket).write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Progress::Done,
                    Ok(n) => {
                        self.start += n;
                        moved += n;
                        self.last_active = now;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Progress::Done,
                }
            }
            self.start = 0;
            self.end = 0;
            match self.kind {
                Internal::Daytime | Internal::Time => return Progress::Done,
                Internal::Chargen => {
                    // Drain (and ignore) input so the client's writes never
                    // fill our receive buffer, then refill the output.
                    if let Some(Progress::Done) = self.read_and_discard(now) {
                        return Progress::Done;
                    }
                    self.end = chargen_fill(&mut self.line, &mut self.buf[..]);
                }
                Internal::Discard => {
                    return self.read_and_discard(now).unwrap_or(Progress::MoreWork);
                }
                Internal::Echo => match (&self.socket).read(&mut self.buf[..]) {
                    Ok(0) => return Progress::Done,
                    Ok(n) => {
                        self.end = n;
                        moved += n;
                        self.last_active = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Progress::Done,
                },
            }
        }
        Progress::MoreWork
    }

    /// Read and drop what is there, up to the budget. `Some` when reading
    /// decided the outcome (EOF or error: done; nothing there: waiting).
    fn read_and_discard(&mut self, now: Instant) -> Option<Progress> {
        let mut scratch = [0u8; 1024];
        let mut taken = 0;
        while taken < BUDGET {
            match (&self.socket).read(&mut scratch) {
                Ok(0) => return Some(Progress::Done),
                Ok(n) => {
                    taken += n;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Progress::Waiting),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Progress::Done),
            }
        }
        None
    }
}

/// Open internal TCP connections and what they count toward.
#[derive(Default)]
pub(in crate::server) struct InternalConns {
    pub(super) conns: FxHashMap<Token, InternalConn>,
    active: FxHashMap<ServiceId, u32>,
    per_source: Counter<(ServiceId, SourceKey)>,
    /// Connections whose budget ran out last turn.
    pub(super) ready: Vec<Token>,
    /// One idle deadline per connection, as it was when pushed: a
    /// connection active since is pushed again with its new deadline when
    /// the old one comes up, so activity costs a timestamp, not a heap
    /// operation.
    idle: BinaryHeap<Reverse<(Instant, Token)>>,
}

impl InternalConns {
    pub fn active(&self, id: ServiceId) -> u32 {
        self.active.get(&id).copied().unwrap_or(0)
    }

    pub fn per_source(&self, id: ServiceId, key: &SourceKey) -> u32 {
        self.per_source.get(&(id, *key))
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Open connections over all services: they count toward
    /// `max_children` as children do.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The earliest a connection may have been idle too long.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle.peek().map(|Reverse((at, _))| *at)
    }

    /// The connections silent for their whole idle timeout at `now`.
    pub(super) fn take_idle(&mut self, now: Instant) -> Vec<Token> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, token))) = self.idle.peek() {
            if at > now {
                break;
            }
            self.idle.pop();
            let Some(conn) = self.conns.get(&token) else {
                continue; // closed since
            };
            let due = conn.idle_deadline();
            if due <= now {
                out.push(token);
            } else {
                self.idle.push(Reverse((due, token)));
            }
        }
        out
    }

    /// Give every connection the idle timeout `timeout_of` its service has
    /// now (a reload may have changed it; a removed service's keep theirs).
    pub(super) fn retime(&mut self, timeout_of: impl Fn(ServiceId) -> Option<Duration>) {
        for conn in self.conns.values_mut() {
            if let Some(t) = timeout_of(conn.service) {
                conn.idle = t;
            }
        }
        // A shorter timeout must come up in the heap before the old one.
        self.rebuild_idle();
    }

    pub fn iter(&self) -> impl Iterator<Item = &InternalConn> {
        self.conns.values()
    }

    pub(super) fn insert(&mut self, token: Token, conn: InternalConn) {
        *self.active.entry(conn.service).or_default() += 1;
        if let Some(k) = conn.source {
            self.per_source.add((conn.service, k));
        }
        self.idle.push(Reverse((conn.idle_deadline(), token)));
        self.conns.insert(token, conn);
    }

    pub(super) fn remove(&mut self, token: Token) -> Option<InternalConn> {
        let conn = self.conns.remove(&token)?;
        if let Some(n) = self.active.get_mut(&conn.service) {
            *n -= 1;
            if *n == 0 {
                self.active.remove(&conn.service);
            }
        }
        if let Some(k) = conn.source {
            self.per_source.remove(&(conn.service, k));
        }
        // A closed connection's deadline stays in the heap until it comes
        // up; with many short connections (daytime) that would be one
        // entry per connection of the last `idle_timeout`. Rebuilt when
        // most entries are stale: amortised O(1) per connection.
        if self.idle.len() > 2 * self.conns.len() + 64 {
            self.rebuild_idle();
        }
        Some(conn)
    }

    fn rebuild_idle(&mut self) {
        self.idle = self
            .conns
            .iter()
            .map(|(t, c)| Reverse((c.idle_deadline(), *t)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_deadlines_come_up_when_due_and_closed_connections_do_not_pile_up() {
        use mio::Token;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let conn = |idle: u64| {
            let socket = Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            let mut c = InternalConn::new(
                Internal::Discard,
                socket,
                ServiceId(1),
                None,
                Peer::Unknown,
                SystemTime::now(),
            );
            c.idle = ms(idle);
            c.last_active = t0;
            c
        };
        let mut conns = InternalConns::default();
        conns.insert(Token(1), conn(300));
        conns.insert(Token(2), conn(100));
        assert_eq!(conns.next_deadline(), Some(t0 + ms(100)));
        assert!(conns.take_idle(t0 + ms(50)).is_empty());
        // Token 2 moved a byte since its deadline was queued: not idle,
        // queued again at its new deadline.
        conns.conns.get_mut(&Token(2)).unwrap().last_active = t0 + ms(250);
        assert!(conns.take_idle(t0 + ms(200)).is_empty());
        assert_eq!(conns.next_deadline(), Some(t0 + ms(300)));
        assert_eq!(conns.take_idle(t0 + ms(340)), vec![Token(1)]);
        assert_eq!(conns.take_idle(t0 + ms(350)), vec![Token(2)]);
        // A retime to a shorter timeout comes up before the old deadline.
        conns.insert(Token(3), conn(60_000));
        conns.retime(|_| Some(ms(10)));
        assert_eq!(conns.next_deadline().unwrap() - t0, ms(10));
        // Many short connections leave the heap the size of the open ones.
        for i in 10..10_010 {
            conns.insert(Token(i), conn(300_000));
            conns.remove(Token(i));
        }
        assert_eq!(conns.len(), 3);
        assert!(conns.idle.len() <= 2 * 3 + 64 + 1, "{}", conns.idle.len());
    }
}
