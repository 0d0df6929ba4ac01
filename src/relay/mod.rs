//! The relay: bytes both ways between two non-blocking stream sockets,
//! for every relayed connection summond holds, in one table with its own
//! poll tokens. It knows nothing of services or of `Server`: the caller
//! hands it two sides and a tag of its own, passes it the events of its
//! tokens, and gets back each connection that ended, with its tag, its
//! byte counts and why it ended.
//!
//! - Each direction is a `Flow` (`flow.rs`): read into a buffer, written
//!   from it (why not splice(2): `flow.rs`); at most `flow::HOLD`
//!   (60 KiB) held per direction, and a source is read again only when
//!   all it gave was written, so a side that does not take bytes stops
//!   the reading of the other.
//! - An EOF is passed on (shutdown(SHUT_WR)) once all before it was
//!   written; the other direction goes on. Both ended: the connection is
//!   closed (`End::Done`). A read or write error on either side (a
//!   reset) closes both at once (`End::Failed`).
//! - Both sockets are registered once, readable and writable, edge-
//!   triggered; each `Side` keeps what its events said until an
//!   operation would block. A side that cannot progress is not touched
//!   again until the kernel reports a new edge on it, so a blocked
//!   connection costs no syscall and no wake-up beyond its peers' own
//!   segments (bounded by the socket buffers): it never spins.
//! - Fairness: a flow moves at most `BUDGET` bytes per turn; one with
//!   more is served again at the turn's end (`serve_again`), after the
//!   other sources.
//! - A side is a socket, or a TLS session over one (`Side::tls`,
//!   `tls.rs`): the flows move its plaintext through a buffer, and the
//!   connection flushes its records at every step; it is done only when
//!   they are all sent (`close_notify` last).
//! - `linger` (`Relays::linger`): once the back side has ended, the front
//!   has that long, again after each byte it takes, to take the rest and
//!   close; then the connection is closed (`End::Linger`). Used for TLS
//!   clients, whose session summond holds with no child counted for it.
//! - A held end (`Relays::hold_end`): the back side's EOF, once all before
//!   it was written, waits for the caller's word on how the back ended
//!   (`settle_end`): whole, it is passed on; cut, the front is closed
//!   without it (for a TLS client, no `close_notify`: a truncation). Not
//!   said within its bound, it is passed on. A TLS child's exit status
//!   comes after its EOF (it closes its files before it is a zombie).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Registry, Token};
use rustc_hash::FxHashMap;

mod drain;
mod flow;
mod pending;
pub mod preamble;
mod side;
#[cfg(test)]
mod tests;
mod tls;

pub use drain::Words;
use flow::{Buffers, Flow, FlowError, Stop};
pub use flow::{FlowState, HOLD};
pub use pending::{Pending, Preface, Session};
use side::WATCH;
pub use side::{Io, Side};
pub use tls::TlsIo;

/// The relay's poll tokens are `TOKEN_BASE` and above: two per
/// connection (front, back), never reused during the run. The server's
/// own tokens count up from small numbers and never get here.
pub const TOKEN_BASE: usize = 1 << (usize::BITS - 2);

/// Bytes one flow moves per turn before others are served.
const BUDGET: usize = 16 * HOLD;

/// A relayed connection's name in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(u64);

/// A side as an upgrade hands it over.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct SideState {
    pub fd: i32,
    pub connecting: bool,
    /// Always true now: images before 2026-12-06 read false as a side
    /// relayed through a buffer, never connecting, and true as a socket
    /// (spliced or connecting); every side is the latter since.
    pub spliced: bool,
    /// Connecting, and its connect's end to be checked (`Side::connecting_checked`).
    #[serde(default)]
    pub check: bool,
    /// Its peer reset the connection (`Side::reset`): the new image ends
    /// the relay within `AFTER_RESET` too. An older image ignores it and
    /// relays on until the other side closes.
    #[serde(default)]
    pub reset: bool,
}

impl SideState {
    /// The side again, its fd taken (the state names it once).
    pub fn into_side(self) -> Side {
        // SAFETY: an open fd the state names once, taken here.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(self.fd) };
        let mut side = match (self.connecting, self.check) {
            (true, true) => Side::connecting_checked(fd),
            (true, false) => Side::connecting(fd),
            (false, _) => Side::stream(fd),
        };
        if self.reset {
            side.note_reset(true, io::Error::from_raw_os_error(nix::libc::ECONNRESET));
        }
        side
    }
}

/// The two sides: the client's (front) and what it is relayed to (back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Front,
    Back,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Front => "client",
            Which::Back => "backend",
        })
    }
}

/// Why a relayed connection ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached EOF and were passed on.
    Done,
    /// A side failed (reset, or gone while bytes were still for it);
    /// both were closed.
    Failed {
        side: Which,
        reading: bool,
        err: io::Error,
    },
    /// The back side's connect(2) failed.
    Connect(io::Error),
    /// The caller closed it (`Relays::close`).
    Cut,
    /// The back side ended and the front did not take the rest, or did
    /// not close, within its `linger`.
    Linger,
    /// The back side's end was held and said to be cut (`settle_end`):
    /// once all before it was sent, the front was closed without it.
    Truncated,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Done => f.write_str("closed by both"),
            End::Failed { side, reading, err } => {
                let op = if *reading {
                    "reading from"
                } else {
                    "writing to"
                };
                write!(f, "{op} {side}: {err}")
            }
            End::Connect(e) => write!(f, "connecting to backend: {e}"),
            End::Cut => f.write_str("cut"),
            End::Linger => f.write_str("the client did not take the rest in time"),
            End::Truncated => {
                f.write_str("the backend's end was cut: closed without passing it on")
            }
        }
    }
}

/// A relayed connection that ended, given back to the caller.
#[derive(Debug)]
pub struct Closed<T> {
    pub id: RelayId,
    pub tag: T,
    /// Bytes delivered front → back, and back → front.
    pub up: u64,
    pub down: u64,
    pub end: End,
}

/// One relayed connection.
struct Relay<T> {
    /// Front, back.
    sides: [Side; 2],
    /// Front → back, back → front.
    flows: [Flow; 2],
    /// In `again`: a flow used its budget with bytes left.
    queued: bool,
    linger: Option<Box<Linger>>,
    /// The back side's end, held for the caller's word (`hold_end`).
    held: Option<Held>,
    /// Once a side's peer reset (`Side::reset`): the connection ends by
    /// then, whether or not the other side took what it was owed.
    after_reset: Option<Instant>,
    /// After a reset, both ways done: when to look again whether the
    /// other side took what it was owed (`RECHECK`).
    recheck: Option<Instant>,
    tag: T,
}

/// Once a side's peer reset, what the other side has to take the bytes
/// sent before the reset and their end. What that side sends meanwhile
/// is not read; its socket is closed once it acknowledged all it was
/// sent (closed with bytes unread, it resets, and the kernel would throw
/// away what was still on its way there), or at this bound.
const AFTER_RESET: Duration = Duration::from_secs(10);

/// How often a connection whose side reset is looked at again, until
/// the other side acknowledged all it was sent.
const RECHECK: Duration = Duration::from_millis(100);

/// What a held end waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// No word yet: once the end is reached (all before it written), it
    /// is passed on at `due`, `after` from then.
    Waiting {
        after: Duration,
        due: Option<Instant>,
    },
    /// Cut (final): the front is closed without the end once all before
    /// it was sent.
    Cut,
}

/// A connection's `linger`: how long, its deadline once the back ended,
/// and the front's progress when it was last set.
struct Linger {
    after: Duration,
    deadline: Option<Instant>,
    seen: u64,
}

/// Every relayed connection.
pub struct Relays<T> {
    conns: FxHashMap<u64, Relay<T>>,
    next: u64,
    /// Connections to serve again at the turn's end.
    again: Vec<u64>,
    /// Empty buffers for the flows' reads.
    buffers: Buffers,
    /// `linger` deadlines as set; one whose connection left or was given
    /// a later one is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Connections whose checked connect ended (`take_checks`).
    checks: Vec<RelayId>,
}

impl<T> Default for Relays<T> {
    fn default() -> Self {
        Relays {
            conns: FxHashMap::default(),
            next: 0,
            again: Vec::new(),
            buffers: Buffers::default(),
            deadlines: BinaryHeap::new(),
            checks: Vec::new(),
        }
    }
}

/// Whether a poll token is one of the relay's.
pub fn owns(token: Token) -> bool {
    token.0 >= TOKEN_BASE
}

fn token(id: u64, which: Which) -> Token {
    Token(TOKEN_BASE + 2 * id as usize + (which == Which::Back) as usize)
}

fn from_token(token: Token) -> (u64, usize) {
    let n = token.0 - TOKEN_BASE;
    ((n / 2) as u64, n % 2)
}

impl<T> Relays<T> {
    /// Relay `front` ↔ `back` from now on. The sockets are registered
    /// (an event reports what is already waiting on them); on failure
    /// both are closed.
    pub fn add(
        &mut self,
        registry: &Registry,
        front: Side,
        back: Side,
        tag: T,
    ) -> io::Result<RelayId> {
        self.add_with_preface(registry, front, back, tag, &[])
    }

    /// `add`, with `preface` (a PROXY header, at most 4096 bytes) sent to
    /// the back side before any of the front's bytes.
    pub fn add_with_preface(
        &mut self,
        registry: &Registry,
        front: Side,
        back: Side,
        tag: T,
        preface: &[u8],
    ) -> io::Result<RelayId> {
        let mut flows = [Flow::default(), Flow::default()];
        if !preface.is_empty() {
            flows[0].preface(preface, &mut self.buffers)?;
        }
        self.insert(registry, [front, back], flows, tag)
    }

    /// Both sides watched under the next relay's tokens, then the relay
    /// in the table; on a failure neither stays registered (a token left
    /// behind would name a relay that is not there).
    fn insert(
        &mut self,
        registry: &Registry,
        sides: [Side; 2],
        flows: [Flow; 2],
        tag: T,
    ) -> io::Result<RelayId> {
        let id = self.next;
        let [front, back] = [sides[0].fd(), sides[1].fd()];
        registry.register(&mut SourceFd(&front), token(id, Which::Front), WATCH)?;
        if let Err(e) = registry.register(&mut SourceFd(&back), token(id, Which::Back), WATCH) {
            let _ = registry.deregister(&mut SourceFd(&front));
            return Err(e);
        }
        self.next += 1;
        let relay = Relay {
            sides,
            flows,
            queued: false,
            linger: None,
            held: None,
            after_reset: None,
            recheck: None,
            tag,
        };
        self.conns.insert(id, relay);
        // A side handed over by an upgrade after its peer's reset.
        self.watch_reset(id);
        Ok(RelayId(id))
    }

    /// An event on one of the relay's tokens: what it says is recorded
    /// and the connection moves what it can. Returns it if it ended.
    pub fn ready(&mut self, registry: &Registry, token: Token, event: &Event) -> Option<Closed<T>> {
        let (id, i) = from_token(token);
        let relay = self.conns.get_mut(&id)?;
        let side = &mut relay.sides[i];
        side.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        side.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
        side.read_closed |= event.is_read_closed();
        side.urgent |= event.is_priority();
        if event.is_error() || side.connecting {
            let checked = side.check_at_connect;
            if let Some(end) = settle(side, i, event) {
                return self.finish(registry, id, end);
            }
            if checked && !side.check_at_connect {
                // Connected: nothing moves until the owner's word.
                self.checks.push(RelayId(id));
                return None;
            }
        }
        self.step(registry, id)
    }

    /// Connections whose checked connect ended since the last call
    /// (`Side::connecting_checked`): each waits for `checked`.
    pub fn take_checks(&mut self) -> Vec<RelayId> {
        std::mem::take(&mut self.checks)
    }

    /// The fd of `id`'s back side (whose connect is checked).
    pub fn back_fd(&self, id: RelayId) -> Option<std::os::fd::RawFd> {
        self.conns.get(&id.0).map(|r| r.sides[1].fd())
    }

    /// The owner's word on `id`'s checked connect: `ok`, bytes move;
    /// else the connection ends (`End::Connect`, `why`).
    pub fn checked(
        &mut self,
        registry: &Registry,
        id: RelayId,
        ok: Result<(), io::Error>,
    ) -> Option<Closed<T>> {
        let relay = self.conns.get_mut(&id.0)?;
        match ok {
            Ok(()) => {
                relay.sides[1].connecting = false;
                self.step(registry, id.0)
            }
            Err(why) => self.finish(registry, id.0, End::Connect(why)),
        }
    }

    /// Serve the connections that used their budget last turn.
    pub fn serve_again(&mut self, registry: &Registry) -> Vec<Closed<T>> {
        let mut closed = Vec::new();
        for id in std::mem::take(&mut self.again) {
            if let Some(relay) = self.conns.get_mut(&id) {
                relay.queued = false;
                closed.extend(self.step(registry, id));
            }
        }
        closed
    }

    /// Whether connections wait for `serve_again` (poll without waiting).
    pub fn has_ready(&self) -> bool {
        !self.again.is_empty()
    }

    /// Close a connection now (its backend died, its time ran out).
    pub fn close(&mut self, registry: &Registry, id: RelayId) -> Option<Closed<T>> {
        self.finish(registry, id.0, End::Cut)
    }

    /// The open connections: id, tag, bytes up and down so far.
    pub fn iter(&self) -> impl Iterator<Item = (RelayId, &T, u64, u64)> {
        self.conns
            .iter()
            .map(|(id, r)| (RelayId(*id), &r.tag, r.flows[0].bytes, r.flows[1].bytes))
    }

    /// Every open connection as an upgrade hands it over: its tag, its
    /// two sides (fd, connecting) and its two flows. The fds
    /// stay open and this table's until the exec. A connection with a
    /// TLS side is left out (rustls's state does not cross an exec).
    pub fn to_state(&self) -> Vec<(&T, [SideState; 2], [FlowState; 2])> {
        self.conns
            .values()
            .filter(|r| !r.sides.iter().any(Side::is_tls))
            .map(|r| {
                let side = |s: &Side| SideState {
                    fd: s.fd(),
                    connecting: s.is_connecting(),
                    spliced: true,
                    check: s.is_checked_at_connect(),
                    reset: s.gone(),
                };
                (
                    &r.tag,
                    [side(&r.sides[0]), side(&r.sides[1])],
                    [r.flows[0].to_state(), r.flows[1].to_state()],
                )
            })
            .collect()
    }

    /// A connection the previous image relayed: registered, and moved on
    /// by the events its registration reports.
    pub fn adopt(
        &mut self,
        registry: &Registry,
        sides: [Side; 2],
        flows: [FlowState; 2],
        tag: T,
    ) -> io::Result<RelayId> {
        let [up, down] = flows;
        // Both taken before either fails: each names fds of its own.
        let (up, down) = (Flow::from_state(up), Flow::from_state(down));
        let flows = [up?, down?];
        self.insert(registry, sides, flows, tag)
    }

    /// From now on, once the back side of `id` has ended, its front has
    /// `after` (again after each byte it takes) to take the rest and
    /// close; then it is closed (`expire`).
    pub fn linger(&mut self, id: RelayId, after: Duration) {
        if let Some(r) = self.conns.get_mut(&id.0) {
            r.linger = Some(Box::new(Linger {
                after,
                deadline: None,
                seen: 0,
            }));
        }
    }

    /// From now on, the back side's end (its EOF) of `id` waits for the
    /// caller's word on how the back ended (`settle_end`); reached with
    /// no word, it is passed on `at_most` later.
    pub fn hold_end(&mut self, id: RelayId, at_most: Duration) {
        if let Some(r) = self.conns.get_mut(&id.0) {
            r.held = Some(Held::Waiting {
                after: at_most,
                due: None,
            });
            r.flows[1].hold_end = true;
        }
    }

    /// How the back side of `id` ended: `whole`, its end is passed on
    /// (as without a hold); cut, the front is closed without it once all
    /// before it was sent. A cut is final; an end already passed on
    /// stays so. Returns the connection if this ended it.
    pub fn settle_end(
        &mut self,
        registry: &Registry,
        id: RelayId,
        whole: bool,
    ) -> Option<Closed<T>> {
        let r = self.conns.get_mut(&id.0)?;
        let Some(Held::Waiting { .. }) = r.held else {
            return None;
        };
        if whole {
            r.held = None;
            r.flows[1].hold_end = false;
        } else {
            r.held = Some(Held::Cut);
        }
        self.step(registry, id.0)
    }

    /// The earliest `linger` deadline, or one that was (waking for it
    /// costs one turn, and `expire` drops it).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Close the connections whose `linger` passed at `now`; pass on the
    /// held ends whose bound passed.
    pub fn expire(&mut self, registry: &Registry, now: Instant) -> Vec<Closed<T>> {
        let mut out = Vec::new();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let due = (self.conns.get(&id))
                .and_then(|r| r.linger.as_ref())
                .is_some_and(|l| l.deadline == Some(at));
            if due {
                out.extend(self.finish(registry, id, End::Linger));
            } else if (self.conns.get(&id)).is_some_and(|r| r.after_reset == Some(at)) {
                out.extend(self.finish(registry, id, End::Done));
            } else if let Some(r) = self.conns.get_mut(&id).filter(|r| r.recheck == Some(at)) {
                r.recheck = None;
                out.extend(self.step(registry, id));
            } else if (self.conns.get(&id)).is_some_and(|r| r.held_due() == Some(at)) {
                out.extend(self.settle_end(registry, RelayId(id), true));
            }
        }
        out
    }

    /// Whether a side of `id` is a TLS session (not handed over by an
    /// upgrade: `to_state` leaves it out).
    pub fn is_tls(&self, id: RelayId) -> bool {
        (self.conns.get(&id.0)).is_some_and(|r| r.sides.iter().any(Side::is_tls))
    }

    /// The connections with a TLS side, moved to a table of their own
    /// (for a drainer, `drain.rs`): out of this one and of `registry`.
    /// Their ids and tokens stay theirs.
    pub fn split_off_tls(&mut self, registry: &Registry) -> Relays<T> {
        let ids: Vec<u64> = (self.conns.iter())
            .filter(|(_, r)| r.sides.iter().any(Side::is_tls))
            .map(|(id, _)| *id)
            .collect();
        let mut out = Relays {
            next: self.next,
            ..Relays::default()
        };
        for id in ids {
            if let Some(mut r) = self.conns.remove(&id) {
                for side in &r.sides {
                    let _ = registry.deregister(&mut SourceFd(&side.fd()));
                }
                // Served at once in the drainer: what it holds moves.
                r.queued = true;
                out.again.push(id);
                if let Some(l) = r.linger.as_deref_mut() {
                    l.deadline = None;
                }
                // Its bound starts again there (this heap stays here).
                if let Some(Held::Waiting { due, .. }) = r.held.as_mut() {
                    *due = None;
                }
                // A reset's bound and recheck go with it.
                for at in [r.after_reset, r.recheck].into_iter().flatten() {
                    out.deadlines.push(Reverse((at, id)));
                }
                out.conns.insert(id, r);
            }
        }
        out
    }

    /// The fds every connection holds (its sides').
    pub fn fds(&self) -> Vec<i32> {
        let sides = self.conns.values().flat_map(|r| r.sides.iter());
        sides.map(Side::fd).collect()
    }

    /// The caller's tag of an open connection.
    pub fn tag_mut(&mut self, id: RelayId) -> Option<&mut T> {
        self.conns.get_mut(&id.0).map(|r| &mut r.tag)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Bytes held for a connection, front → back and back → front (for
    /// status and tests: never more than `HOLD` each).
    pub fn held(&self, id: RelayId) -> Option<(usize, usize)> {
        let r = self.conns.get(&id.0)?;
        Some((r.flows[0].pending(), r.flows[1].pending()))
    }

    /// How many flows hold a buffer or a pipe now (an idle one holds
    /// neither).
    pub fn holding(&self) -> usize {
        let flows = self.conns.values().flat_map(|r| r.flows.iter());
        flows.filter(|f| f.holding()).count()
    }

    /// Move what can be moved both ways; end the connection when both
    /// directions are finished (and a TLS side's records sent) or either
    /// failed.
    fn step(&mut self, registry: &Registry, id: u64) -> Option<Closed<T>> {
        let relay = self.conns.get_mut(&id)?;
        let buffers = &mut self.buffers;
        let stops = match flush(&mut relay.sides) {
            Err(end) => (Err(end), Ok(Stop::Drained)),
            Ok(()) => {
                let [front, back] = &mut relay.sides;
                let [up, down] = &mut relay.flows;
                (
                    up.pump(front, back, BUDGET, buffers)
                        .map_err(|e| failed(e, Which::Front)),
                    down.pump(back, front, BUDGET, buffers)
                        .map_err(|e| failed(e, Which::Back)),
                )
            }
        };
        // What reading a TLS side made it send (a key update, tickets).
        let stops = match (stops, flush(&mut relay.sides)) {
            ((Ok(_), Ok(_)), Err(end)) => (Err(end), Ok(Stop::Drained)),
            (stops, _) => stops,
        };
        if relay.linger.is_some() {
            self.watch_linger(id);
        }
        self.watch_reset(id);
        let relay = self.conns.get_mut(&id)?;
        let flushed = relay.sides.iter().all(Side::flushed);
        match stops {
            (Err(end), _) | (_, Err(end)) => self.finish(registry, id, end),
            (Ok(Stop::Finished), Ok(Stop::Finished)) if flushed => {
                if self.owes(id) {
                    return None;
                }
                self.finish(registry, id, End::Done)
            }
            (Ok(a), Ok(b)) => {
                if b == Stop::Held {
                    if let Some(end) = self.at_held_end(id) {
                        return self.finish(registry, id, end);
                    }
                }
                let relay = self.conns.get_mut(&id)?;
                if (a == Stop::Budget || b == Stop::Budget) && !relay.queued {
                    relay.queued = true;
                    self.again.push(id);
                }
                None
            }
        }
    }

    /// The back side's held end is reached (all before it written): a
    /// cut ends the connection once the front sent all it holds; with no
    /// word yet, its bound starts.
    fn at_held_end(&mut self, id: u64) -> Option<End> {
        let r = self.conns.get_mut(&id)?;
        match &mut r.held {
            Some(Held::Cut) => r.sides[0].flushed().then_some(End::Truncated),
            Some(Held::Waiting { after, due }) if due.is_none() => {
                let at = Instant::now() + *after;
                *due = Some(at);
                self.deadlines.push(Reverse((at, id)));
                None
            }
            _ => None,
        }
    }

    /// Once the back side ended (its EOF read, or its peer gone with
    /// bytes still to take: a front that reads none would never let the
    /// EOF be reached): the `linger` deadline set, and set
    /// again when the front took bytes since (at most once a second, so
    /// a busy connection does not fill the heap).
    fn watch_linger(&mut self, id: u64) {
        let Some(r) = self.conns.get_mut(&id) else {
            return;
        };
        let progress = r.flows[1].bytes + r.sides[0].sent();
        let ended = r.flows[1].ended() || r.sides[1].read_closed;
        let (Some(l), true) = (r.linger.as_deref_mut(), ended) else {
            return;
        };
        if l.deadline.is_some() && l.seen == progress {
            return;
        }
        let at = Instant::now() + l.after;
        l.seen = progress;
        if l.deadline.is_none_or(|d| at >= d + Duration::from_secs(1)) {
            l.deadline = Some(at);
            self.deadlines.push(Reverse((at, id)));
        }
    }

    /// After a side's peer reset: whether the other side has not yet
    /// taken all it was sent; if so it is looked at again `RECHECK` later.
    fn owes(&mut self, id: u64) -> bool {
        let Some(r) = self.conns.get_mut(&id) else {
            return false;
        };
        let gone = r.sides.iter().any(Side::gone);
        if !gone
            || r.sides
                .iter()
                .filter(|s| !s.gone())
                .all(|s| s.unsent() == 0)
        {
            return false;
        }
        if r.recheck.is_none() {
            let at = Instant::now() + RECHECK;
            r.recheck = Some(at);
            self.deadlines.push(Reverse((at, id)));
        }
        true
    }

    /// Once a side's peer reset: the connection's bound (`AFTER_RESET`),
    /// set once.
    fn watch_reset(&mut self, id: u64) {
        let Some(r) = self.conns.get_mut(&id) else {
            return;
        };
        if r.after_reset.is_none() && r.sides.iter().any(Side::gone) {
            let at = Instant::now() + AFTER_RESET;
            r.after_reset = Some(at);
            self.deadlines.push(Reverse((at, id)));
        }
    }

    /// Take a connection out of the table; its sockets close when the
    /// value drops, which takes them out of the poll set (the sides' fds
    /// are the only ones open on their sockets: no epoll_ctl needed).
    fn finish(&mut self, _registry: &Registry, id: u64, end: End) -> Option<Closed<T>> {
        let Relay {
            flows,
            tag,
            mut sides,
            ..
        } = self.conns.remove(&id)?;
        // Ended by both, or past its bound, after a peer's reset: that
        // reset is how it ended.
        let mut reset = || {
            let i = sides.iter().position(Side::gone)?;
            let (reading, err) = *sides[i].reset.take()?;
            let side = [Which::Front, Which::Back][i];
            Some(End::Failed { side, reading, err })
        };
        let end = match end {
            End::Done => reset().unwrap_or(End::Done),
            end => end,
        };
        drop(sides);
        let (up, down) = (flows[0].bytes, flows[1].bytes);
        Some(Closed {
            id: RelayId(id),
            tag,
            up,
            down,
            end,
        })
    }
}

impl<T> Relay<T> {
    /// When a held end with no word is passed on, if it was reached.
    fn held_due(&self) -> Option<Instant> {
        match self.held {
            Some(Held::Waiting { due, .. }) => due,
            _ => None,
        }
    }
}

/// A flow's error, as the end of its connection: a read fails on the
/// flow's source, a write on its destination.
fn failed(e: FlowError, src: Which) -> End {
    let dst = match src {
        Which::Front => Which::Back,
        Which::Back => Which::Front,
    };
    match e {
        FlowError::Read(err) => End::Failed {
            side: src,
            reading: true,
            err,
        },
        FlowError::Write(err) => End::Failed {
            side: dst,
            reading: false,
            err,
        },
    }
}

/// Send what the TLS sides hold, as far as their sockets take it.
fn flush(sides: &mut [Side; 2]) -> Result<(), End> {
    for (side, which) in sides.iter_mut().zip([Which::Front, Which::Back]) {
        side.flush().map_err(|err| End::Failed {
            side: which,
            reading: false,
            err,
        })?;
    }
    Ok(())
}

/// A connect that ended, or an error the event reported: the end of the
/// connection if the socket holds an error. An error event on a side
/// no flow would touch again (its EOF passed on, nothing for it) would
/// otherwise go unseen.
fn settle(side: &mut Side, i: usize, event: &Event) -> Option<End> {
    let which = if i == 0 { Which::Front } else { Which::Back };
    if side.connecting {
        if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
            return None;
        }
        side.connecting = false;
        let end = side.take_error().err().map(End::Connect);
        if end.is_none() && side.check_at_connect {
            // Connected, to be checked: still closed to bytes.
            (side.connecting, side.check_at_connect) = (true, false);
        }
        return end;
    }
    // A reset is not the end yet: what the peer sent before it is still
    // read and passed on (`Side::reset`); a child's is its plain end.
    match side.take_error() {
        Err(e) if side::is_reset(&e) => {
            side.note_reset(true, e);
            None
        }
        Err(err) => Some(End::Failed {
            side: which,
            reading: true,
            err,
        }),
        Ok(()) => None,
    }
}
