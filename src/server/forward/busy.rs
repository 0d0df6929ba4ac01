//! A ready `unix://` backend whose listen backlog is full.
//!
//! A non-blocking connect(2) to a Unix stream socket whose accept queue
//! is full fails at once with EAGAIN (TCP says EINPROGRESS and lets the
//! SYN wait for its retransmit): the backend is busy, summond is not
//! short of fds or memory, so nothing else is paused (EAGAIN meant the
//! resource back-off over every listener before) and the client is not
//! dropped. It is held in its backend's queue, the one clients wait in
//! while it starts (so it counts toward `max_instances`,
//! `max_per_source` and `MAX_WAITING`, past which the service's
//! listeners are unwatched), and clients that come meanwhile queue
//! behind it without a connect each: first come, first relayed.
//!
//! Nothing tells summond when a Unix listener makes room (an unconnected
//! socket polls as hung up, and only a blocking connect waits on the
//! listener), so the head of the queue is connected again on a timer:
//! `RETRY_FIRST` after the backlog was found full, doubling to
//! `RETRY_MAX` while no held client gets through, `RETRY_FIRST` again
//! once one does. At most one failed connect (a socket, a connect, a
//! close: ~10 µs) per backend and tick, ~60 a second once the wait is
//! long; the loop never blocks or spins. Held clients are not in the
//! poller: one that resets is found by its TCP state (CLOSE), at the
//! head before its connect, and by a sweep of the queue every
//! `SWEEP_EVERY` (a getsockopt per client), and gives its place back.
//!
//! A client still held `start_timeout` after the backlog was first found
//! full for it is refused (closed, counted as `backend_busy`, logged
//! once per client and interval as every refusal is). The backend's
//! exit, or a reload that retires it, ends the episode: its held clients
//! wait for the next start as any client that came while it was down
//! (or are closed with it by the restart guard), and keep their
//! deadline, which a timer of its own (`deadline`) enforces while the
//! backend is not ready (stopped, waiting for a retired backend to free
//! the address, starting). A retry that finds the listener gone
//! (ECONNREFUSED, ENOENT: the backend closed it to exit) keeps them
//! held too, said once per episode.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, info};
use nix::libc;
use nix::unistd::Pid;
use socket2::Socket;

use super::{State, Waiting};
use crate::addr::ListenAddr;
use crate::server::services::{RefuseReason, ServiceId};
use crate::server::timers::{Timer, TimerKey, Timers};
use crate::server::Server;

/// The first wait before connecting again to a full backlog.
const RETRY_FIRST: Duration = Duration::from_millis(1);
/// The longest: a held client waits at most this long after the backend
/// made room.
const RETRY_MAX: Duration = Duration::from_millis(16);
/// How often a retry looks for held clients that reset (one getsockopt
/// each, at most 1024): they give their places back.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An episode of a full backlog: the retry's timer and its wait.
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy {
    timer: TimerKey,
    delay: Duration,
    /// A retry found the listener gone (said once per episode).
    gone: bool,
    /// When a retry next looks for held clients that reset.
    sweep_at: Instant,
}

/// Did the connect to `to` fail because its listen backlog is full (a
/// Unix stream socket's EAGAIN)? A TCP connect's EAGAIN is not that
/// (the kernel short of something), and stays a resource fault.
pub(super) fn backlog_full(to: &ListenAddr, e: &io::Error) -> bool {
    matches!(to, ListenAddr::Unix(_)) && e.raw_os_error() == Some(libc::EAGAIN)
}

/// Why a client was given back to the queue instead of relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unreached {
    /// The listen backlog is full (EAGAIN).
    Full,
    /// The listener is gone (ECONNREFUSED, ENOENT): the backend closed it
    /// to exit, and its next start takes the held clients.
    Gone,
}

/// Is the connect to `to` that failed with `e` one that holds its
/// client: a full backlog, or (for a client `held` already) the listener
/// gone? A client that was never held is closed then, as before.
pub(super) fn unreached(to: &ListenAddr, e: &io::Error, held: bool) -> Option<Unreached> {
    if backlog_full(to, e) {
        return Some(Unreached::Full);
    }
    let gone = matches!(e.raw_os_error(), Some(libc::ECONNREFUSED | libc::ENOENT));
    (held && gone && matches!(to, ListenAddr::Unix(_))).then_some(Unreached::Gone)
}

/// The wait before the next retry, after one that waited `last` (none:
/// the episode begins) and got a held client through (`progressed`) or
/// not.
fn retry_delay(last: Option<Duration>, progressed: bool) -> Duration {
    match last {
        Some(d) if !progressed => (d * 2).min(RETRY_MAX),
        _ => RETRY_FIRST,
    }
}

impl Busy {
    /// Is it time to look for held clients that reset? (Then the next
    /// is a `SWEEP_EVERY` on.)
    fn sweep_due(&mut self, now: Instant) -> bool {
        let due = self.sweep_at <= now;
        if due {
            self.sweep_at = now + SWEEP_EVERY;
        }
        due
    }
}

/// A held client that reset (its TCP state CLOSE): its place is given
/// back and it is not connected to the backend. One that only shut its
/// side (a FIN, CLOSE_WAIT) may be reading still, and stays. Clients
/// held for a start are not asked (they are relayed and end at once).
fn departed(w: &Waiting) -> bool {
    w.held_until.is_some() && crate::server::front::was_reset(&w.conn)
}

/// The episode of a full backlog is over (its queue went through, or
/// the backend left `Ready`): its retry is cancelled.
pub(super) fn end_episode(timers: &mut Timers, busy: Option<Busy>) {
    if let Some(busy) = busy {
        timers.cancel(busy.timer);
    }
}

impl Server {
    /// How long service `idx` holds a client for a full backlog: its
    /// `start_timeout`.
    fn backlog_hold(&self, idx: usize) -> Duration {
        let fwd = self.services[idx].spec.forward.as_ref();
        fwd.map_or(crate::config::DEFAULT_START_TIMEOUT, |f| f.start_timeout)
    }

    /// A client of service `idx`'s ready backend that has clients held
    /// already: behind them, its deadline from now (the retry timer is
    /// armed).
    pub(super) fn hold_behind(&mut self, idx: usize, mut w: Waiting) {
        w.held_until = Some(Instant::now() + self.backlog_hold(idx));
        if let Some(b) = self.forward.backends.get_mut(&self.services[idx].id) {
            b.waiting.push_back(w);
        }
    }

    /// Relay service `idx`'s queued clients in order, the first over
    /// `probe` (the readiness probe's connection), until the queue is
    /// empty (the episode of a full backlog, if any, ends) or the
    /// backlog is full (the client goes back to the head, and the retry
    /// is armed).
    pub(super) fn relay_held(&mut self, idx: usize, mut probe: Option<Socket>) {
        let id = self.services[idx].id;
        let mut progressed = false;
        loop {
            let Some(b) = self.forward.backends.get_mut(&id) else {
                return;
            };
            let State::Ready { pid } = b.state else {
                return;
            };
            let Some(w) = b.waiting.pop_front() else {
                break;
            };
            if departed(&w) {
                b.remove_source(w.source);
                continue;
            }
            if let Err((w, why)) = self.relay_client(idx, pid, w, probe.take()) {
                if let Some(b) = self.forward.backends.get_mut(&id) {
                    b.waiting.push_front(w);
                }
                self.retry_backlog(idx, pid, progressed);
                if why == Unreached::Gone {
                    self.note_gone(idx, pid);
                }
                return;
            }
            progressed = true;
        }
        if let Some(b) = self.forward.backends.get_mut(&id) {
            end_episode(&mut self.timers, b.busy.take());
        }
    }

    /// Service `idx`'s client `w` found backend `pid`'s backlog full,
    /// nobody held before it: held, and the retry armed.
    pub(super) fn hold_for_backlog(&mut self, idx: usize, pid: Pid, w: Waiting) {
        if let Some(b) = self.forward.backends.get_mut(&self.services[idx].id) {
            b.waiting.push_back(w);
            self.retry_backlog(idx, pid, false);
        }
    }

    /// Connect the held clients again after the back-off. An episode's
    /// first: every client queued without a deadline gets one (those
    /// held through an earlier episode keep theirs).
    fn retry_backlog(&mut self, idx: usize, pid: Pid, progressed: bool) {
        let now = Instant::now();
        let hold = self.backlog_hold(idx);
        let id = self.services[idx].id;
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let last = b.busy.take();
        match last {
            Some(old) => {
                self.timers.cancel(old.timer);
            }
            None => {
                for w in b.waiting.iter_mut().filter(|w| w.held_until.is_none()) {
                    w.held_until = Some(now + hold);
                }
                let name = self.services.name_of(id);
                debug!(event = "backend_busy", service = name;
                    "{name}: backend pid {pid}'s listen backlog is full: holding {} clients until it takes them (at most {hold:?} each)",
                    b.waiting.len());
            }
        }
        let delay = retry_delay(last.map(|l| l.delay), progressed);
        let timer = (self.timers).add(now + delay, Timer::BacklogRetry { service: id, pid });
        let gone = last.is_some_and(|l| l.gone);
        let sweep_at = last.map_or(now + SWEEP_EVERY, |l| l.sweep_at);
        b.busy = Some(Busy {
            timer,
            delay,
            gone,
            sweep_at,
        });
    }

    /// A retry found backend `pid`'s listener gone: one line per episode
    /// (not one per held client); they stay held, for its next start.
    fn note_gone(&mut self, idx: usize, pid: Pid) {
        let id = self.services[idx].id;
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let Some(busy) = b.busy.as_mut().filter(|busy| !busy.gone) else {
            return;
        };
        busy.gone = true;
        let name = self.services.name_of(id);
        info!(event = "backend_busy", service = name;
            "{name}: backend pid {pid} closed its listener: holding {} clients for its next start",
            b.waiting.len());
    }

    /// After an upgrade: a ready backend's held clients (its backlog
    /// was full) are connected again at once.
    pub(super) fn retry_held_at(&mut self, now: Instant) {
        for (id, b) in &self.forward.backends {
            if let (State::Ready { pid }, false) = (&b.state, b.waiting.is_empty()) {
                let service = *id;
                self.timers
                    .add(now, Timer::BacklogRetry { service, pid: *pid });
            }
        }
    }

    /// The retry's timer: refuse the clients held too long, connect the
    /// others again. A backend no longer ready (it exited, or a reload
    /// retired it, with no exit seen yet) ends the episode: its held
    /// clients' deadlines go on without the retry.
    pub(in crate::server) fn backlog_retry_due(&mut self, id: ServiceId, pid: Pid) {
        let Some(idx) = self.services.index_of(id) else {
            return;
        };
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        match b.state {
            State::Ready { pid: p } if p == pid => {
                if b.busy.as_mut().is_some_and(|busy| busy.sweep_due(now)) {
                    self.drop_departed(idx);
                }
                self.refuse_overdue(idx, now);
                self.relay_held(idx, None);
            }
            // A retry of an earlier backend: the ready one has its own.
            State::Ready { .. } => return,
            _ => {
                end_episode(&mut self.timers, b.busy.take());
                self.refuse_overdue(idx, now);
                self.arm_deadline(id);
            }
        }
        self.sync_service(idx, now);
    }

    /// The first deadline of the clients a full backlog held came, their
    /// backend not ready: those due are refused, and the next one's
    /// timer is armed.
    pub(in crate::server) fn held_deadline_due(&mut self, id: ServiceId) {
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        b.deadline = None;
        let Some(idx) = self.services.index_of(id) else {
            return;
        };
        let now = Instant::now();
        self.refuse_overdue(idx, now);
        self.arm_deadline(id);
        self.sync_service(idx, now);
    }

    /// Service `id`'s backend left `Ready` (or a retry found it so): the
    /// first of its clients a full backlog held is refused at its
    /// deadline whatever the backend does meanwhile (stopped, waiting for
    /// a retired one to free the address, starting). Deadlines run in
    /// queue order (each is given at the back of the queue, or to the
    /// whole queue), so the first is the earliest. A timer already armed
    /// is as early (the queue's first only leaves), and a ready backend's
    /// retry checks them itself (after an upgrade too: `retry_held_at`).
    pub(super) fn arm_deadline(&mut self, id: ServiceId) {
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let ready = matches!(b.state, State::Ready { .. });
        if ready || b.deadline.is_some() || b.busy.is_some() {
            return;
        }
        if let Some(at) = b.waiting.front().and_then(|w| w.held_until) {
            b.deadline = Some(self.timers.add(at, Timer::HeldDeadline(id)));
        }
    }

    /// Close service `idx`'s held clients that reset meanwhile (one
    /// getsockopt each): their places (`max_instances`, `max_per_source`,
    /// the queue's bound) are free again.
    fn drop_departed(&mut self, idx: usize) {
        let id = self.services[idx].id;
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let before = b.waiting.len();
        let mut sources = Vec::new();
        b.waiting.retain(|w| {
            let gone = departed(w);
            if gone {
                sources.push(w.source);
            }
            !gone
        });
        for source in sources {
            b.remove_source(source);
        }
        let left = before - b.waiting.len();
        if left > 0 {
            let name = self.services.name_of(id);
            debug!("{name}: {left} held clients reset: their places are free");
        }
    }

    /// Close the clients at the head of service `idx`'s queue held past
    /// their deadline: refused, counted and logged as any refusal.
    fn refuse_overdue(&mut self, idx: usize, now: Instant) {
        let why = RefuseReason::BackendBusy(self.backlog_hold(idx));
        let id = self.services[idx].id;
        let overdue = |w: &Waiting| w.held_until.is_some_and(|t| t <= now);
        while let Some(b) = self.forward.backends.get_mut(&id) {
            if !b.waiting.front().is_some_and(overdue) {
                return;
            }
            let Some(w) = b.waiting.pop_front() else {
                return;
            };
            b.remove_source(w.source);
            if self.services.refuse_admitted(idx, w.source, why, now) {
                let name = self.services[idx].spec.name.as_str();
                info!(event = "refused", service = name, peer:% = w.peer;
                    "{name}: refused {} ({why})", w.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_unix_connects_eagain_is_a_full_backlog() {
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        let unix: ListenAddr = "unix:///run/app/b.sock".parse().unwrap();
        let abstract_: ListenAddr = "unix://@app".parse().unwrap();
        let tcp: ListenAddr = "tcp://127.0.0.1:8081".parse().unwrap();
        assert!(backlog_full(&unix, &eagain));
        assert!(backlog_full(&abstract_, &eagain));
        assert!(!backlog_full(&tcp, &eagain), "TCP's EAGAIN: no such case");
        for other in [libc::EMFILE, libc::ENFILE, libc::ECONNREFUSED, libc::ENOENT] {
            let e = io::Error::from_raw_os_error(other);
            assert!(!backlog_full(&unix, &e), "{e}");
        }
    }

    /// A held client stays held when the listener is gone (the backend
    /// exits: its next start takes it); one never held is closed, as
    /// any client whose connect is refused; TCP's refusal is not this.
    #[test]
    fn a_gone_listener_holds_only_clients_held_already() {
        let unix: ListenAddr = "unix:///run/app/b.sock".parse().unwrap();
        let tcp: ListenAddr = "tcp://127.0.0.1:8081".parse().unwrap();
        let e = io::Error::from_raw_os_error;
        for held in [false, true] {
            let full = unreached(&unix, &e(libc::EAGAIN), held);
            assert_eq!(full, Some(Unreached::Full));
        }
        for gone in [libc::ECONNREFUSED, libc::ENOENT] {
            assert_eq!(unreached(&unix, &e(gone), true), Some(Unreached::Gone));
            assert_eq!(unreached(&unix, &e(gone), false), None);
            assert_eq!(unreached(&tcp, &e(gone), true), None);
        }
        assert_eq!(unreached(&unix, &e(libc::EMFILE), true), None);
    }

    #[test]
    fn the_retry_backs_off_while_nobody_gets_through_and_starts_over_when_one_does() {
        assert_eq!(retry_delay(None, false), RETRY_FIRST);
        let mut d = None;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let next = retry_delay(d, false);
            waits.push(next.as_millis());
            d = Some(next);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 16, 16, 16]);
        assert_eq!(retry_delay(d, true), RETRY_FIRST);
        assert_eq!(retry_delay(None, true), RETRY_FIRST);
    }
}
