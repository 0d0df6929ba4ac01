//! Forward mode across a live upgrade: every backend goes over in the
//! state it is in, with its deadline, and nothing is stopped or closed
//! for the exec (an image whose exec fails goes on untouched).
//!
//! - ready: adopted with its counts, NOTIFY_SOCKET and STATUS=;
//! - starting: its start_timeout deadline, and its NOTIFY_SOCKET or
//!   (connect readiness) a probe again at once (a connect in flight
//!   closes with the exec);
//! - stopping: the SIGKILL to its group at the same deadline, and to
//!   the daemons of its tree its stop read (`tree.rs`);
//! - retired by a reload: it finishes its relayed connections, then
//!   stops (or its SIGKILL stays due);
//! - clients held while a backend starts, or for a ready one's full
//!   `unix://` backlog (`busy.rs`): their sockets, nothing read; the
//!   latter are connected again at once, and keep the deadline a full
//!   backlog gave them (`held_left_ns`).
//!
//! A backend whose service the new image no longer runs the same way
//! (another program or address, or gone) is retired there; clients held
//! for it wait for the service's new backend, which starts once the
//! retired one has left the address.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::info;
use nix::unistd::Pid;
use rustc_hash::FxHashMap;
use socket2::Socket;

use super::tree::Member;
use super::{Backend, Retired, State, Waiting};
use crate::addr::ListenAddr;
use crate::relay::preamble::Names;
use crate::server::relays::{Kind, Relayed};
use crate::server::services::ServiceId;
use crate::server::timers::Timer;
use crate::server::Server;
use crate::upgrade::{BackendPhase, BackendState, ProcessState, RelayState, WaitingState};

/// Forward mode's part of the upgrade state.
pub(in crate::server) struct Handed {
    pub backends: Vec<BackendState>,
    pub unready: Vec<BackendState>,
    pub relays: Vec<RelayState>,
    pub waiting: Vec<WaitingState>,
    /// The forward connections drainers hold (`drainer.rs`): service,
    /// backend pid, source; counted open before idle backends stop.
    pub drained: Vec<(String, Pid, Option<crate::peer::SourceKey>)>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How long after `now` a deadline is.
fn left(at: Instant, now: Instant) -> u64 {
    ns(at.saturating_duration_since(now))
}

impl Server {
    /// Every backend in its phase, the connections relayed and the
    /// clients held: the sockets, pipes and NOTIFY_SOCKETs stay open
    /// across the exec, so the bytes in flight go on where they were.
    pub(in crate::server) fn forward_state(&self, now: Instant) -> Handed {
        let mut out = Handed {
            backends: Vec::new(),
            unready: Vec::new(),
            relays: Vec::new(),
            waiting: Vec::new(),
            drained: Vec::new(),
        };
        for (id, b) in &self.forward.backends {
            let name = self.services.name_of(*id);
            // A TLS client's session does not cross the exec: held for a
            // start, it closes (relayed, it went to a drainer).
            let plain = b.waiting.iter().filter(|w| w.tls.is_none());
            out.waiting.extend(plain.map(|w| WaitingState {
                service: name.to_string(),
                fd: w.conn.as_raw_fd(),
                peer: w.peer.clone(),
                source: w.source,
                framed: w.drained.is_some(),
                names: w.drained.as_deref().cloned().unwrap_or_default(),
                held_left_ns: w.held_until.map(|t| left(t, now)),
            }));
            let (Some(state), Some(phase)) = (backend_state(b), phase_of(&b.state, now)) else {
                continue;
            };
            let state = BackendState { phase, ..state };
            match phase {
                BackendPhase::Ready => out.backends.push(state),
                _ => out.unready.push(state),
            }
        }
        out.unready
            .extend(self.forward.retired.iter().map(|r| retired_state(r, now)));
        // A TLS client's session does not cross the exec: its relay went
        // to a drainer (drainer.rs), and to_state leaves any out.
        out.relays = (self.relays.to_state().into_iter())
            .filter(|(t, ..)| t.kind == Kind::Forward)
            .map(|(t, sides, flows)| RelayState {
                service: t.name.to_string(),
                pid: t.pid.as_raw(),
                peer: t.peer.clone(),
                source: t.source,
                sides,
                flows,
                runtime_left_ns: t.runtime_timer.map(|k| left(k.at(), now)),
            })
            .collect();
        out
    }

    /// What the previous image handed over, from `handed` (its deadlines
    /// are measured from there): see the module's notes.
    pub(in crate::server) fn resume_forwarding(
        &mut self,
        handed: Handed,
        index: &FxHashMap<String, usize>,
        at: Instant,
    ) {
        let now = Instant::now();
        for b in handed.backends.into_iter().chain(handed.unready) {
            self.resume_backend(b, index, at);
        }
        for w in handed.waiting {
            self.resume_waiting(w, index, at);
        }
        let ids: Vec<ServiceId> = self.forward.backends.keys().copied().collect();
        for id in ids {
            self.arm_deadline(id);
        }
        for r in handed.relays {
            self.resume_relay(r, index, at);
        }
        for (name, pid, source) in handed.drained {
            self.count_drained(&name, pid, source, true);
        }
        let idle: Vec<Pid> = (self.forward.retired.iter())
            .filter(|r| r.open == 0 && r.kill.is_none())
            .map(|r| r.pid)
            .collect();
        for pid in idle {
            self.stop_retired(pid);
        }
        for idx in 0..self.services.len() {
            self.arm_idle(idx, now);
        }
        self.retry_held_at(now);
        self.start_held_back(now);
    }

    /// One backend: adopted by the service of its name if that still
    /// runs the same program on the same address, else retired.
    fn resume_backend(&mut self, b: BackendState, index: &FxHashMap<String, usize>, at: Instant) {
        let pid = Pid::from_raw(b.pid);
        // SAFETY: named by the state, taken once.
        let notify = b
            .notify_fd
            .map(|fd| Socket::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        let same = |i: &usize| {
            let spec = &self.services[*i].spec;
            spec.exec == b.exec
                && spec
                    .forward
                    .as_ref()
                    .is_some_and(|f| f.to.to_string() == b.to)
        };
        let adopt = match b.phase {
            BackendPhase::Retired { .. } => None,
            _ => index.get(&b.service).copied().filter(same),
        };
        let Some(idx) = adopt else {
            return self.resume_retired(b, index, at);
        };
        let id = self.services[idx].id;
        let spec = Box::new(self.services[idx].spec.clone());
        let state = match b.phase {
            BackendPhase::Starting {
                age_ns,
                timeout_in_ns,
            } => {
                let due = at + Duration::from_nanos(timeout_in_ns);
                let timeout = self
                    .timers
                    .add(due, Timer::StartTimeout { service: id, pid });
                if notify.is_none() {
                    self.timers.add(at, Timer::Probe { service: id, pid });
                }
                State::Starting {
                    pid,
                    since: at.checked_sub(Duration::from_nanos(age_ns)).unwrap_or(at),
                    probe: None,
                    tries: 0,
                    timeout,
                }
            }
            BackendPhase::Stopping { kill_in_ns } => {
                let due = at + Duration::from_nanos(kill_in_ns);
                let kill = self
                    .timers
                    .add(due, Timer::BackendKill { service: id, pid });
                State::Stopping { pid, kill }
            }
            _ => State::Ready { pid },
        };
        let backend = self.forward.backends.entry(id).or_default();
        backend.state = state;
        backend.started_with = Some(spec);
        backend.ready_in = b.ready_in_us.map(Duration::from_micros);
        backend.status = b.status;
        backend.tree = tree_of(&b.tree);
        (backend.relayed, backend.up, backend.down) = (b.relayed, b.up, b.down);
        if let Some(sock) = notify {
            self.watch_notify(id, sock);
        }
    }

    /// A backend retired here or by the previous image: it finishes its
    /// relayed connections (counted as they are resumed), then stops.
    fn resume_retired(&mut self, b: BackendState, index: &FxHashMap<String, usize>, at: Instant) {
        let pid = Pid::from_raw(b.pid);
        let Ok(to) = b.to.parse::<ListenAddr>() else {
            return;
        };
        let service = self.services.id_by_name(Some(&b.service), index);
        let (stop_timeout, kill_in) = match b.phase {
            BackendPhase::Retired {
                stop_timeout_ns,
                kill_in_ns,
            } => (Duration::from_nanos(stop_timeout_ns), kill_in_ns),
            BackendPhase::Stopping { kill_in_ns } => {
                (crate::config::DEFAULT_STOP_TIMEOUT, Some(kill_in_ns))
            }
            _ => {
                info!(
                    "{}: backend pid {pid} handed over, its service changed: retired",
                    b.service
                );
                (crate::config::DEFAULT_STOP_TIMEOUT, None)
            }
        };
        let kill = kill_in.map(|n| {
            let due = at + Duration::from_nanos(n);
            self.timers.add(due, Timer::BackendKill { service, pid })
        });
        self.forward.retired.push(Retired {
            service,
            name: b.service.as_str().into(),
            pid,
            to,
            open: 0,
            stop_timeout,
            kill,
            tree: tree_of(&b.tree),
        });
    }

    /// A client held for its backend: back in its service's queue (one
    /// whose service went is closed by `start_held_back`).
    fn resume_waiting(&mut self, w: WaitingState, index: &FxHashMap<String, usize>, at: Instant) {
        // SAFETY: named by the state, taken once.
        let conn = Socket::from(unsafe { OwnedFd::from_raw_fd(w.fd) });
        let id = self.services.id_by_name(Some(&w.service), index);
        let backend = self.forward.backends.entry(id).or_default();
        backend.add_source(w.source);
        backend.waiting.push_back(Waiting {
            conn,
            peer: w.peer,
            source: w.source,
            tls: None,
            drained: w.framed.then(|| Box::new(w.names)),
            held_until: w.held_left_ns.map(|ns| at + Duration::from_nanos(ns)),
        });
    }

    /// The TLS clients held for a backend of a service still there: their
    /// sockets, which name them to the image and its drainer after the
    /// fork (the same memory). `take_held_tls` and `frame_held_tls` take
    /// these same clients by those fds.
    pub(in crate::server) fn held_tls(&self) -> Vec<RawFd> {
        (self.forward.backends.iter())
            .filter(|(id, _)| self.services.index_of(**id).is_some())
            .flat_map(|(_, b)| b.waiting.iter().filter(|w| w.tls.is_some()))
            .map(|w| w.conn.as_raw_fd())
            .collect()
    }

    /// In the drainer: the held TLS clients named in `fds`, out of its
    /// copy of the queues, with their service's index.
    pub(in crate::server) fn take_held_tls<V>(
        &mut self,
        fds: &FxHashMap<RawFd, V>,
    ) -> Vec<(usize, Waiting)> {
        let mut out = Vec::new();
        for (id, b) in &mut self.forward.backends {
            let Some(idx) = self.services.index_of(*id) else {
                continue;
            };
            let (taken, rest) = (std::mem::take(&mut b.waiting).into_iter())
                .partition(|w| w.tls.is_some() && fds.contains_key(&w.conn.as_raw_fd()));
            b.waiting = rest;
            out.extend(taken.into_iter().map(|w: Waiting| (idx, w)));
        }
        out
    }

    /// In the image: the held TLS clients named in `ends` (by their
    /// sockets' fds) are now plaintext clients on those ends (a drainer
    /// relays their sessions to the other ends); the names their PROXY
    /// header needs are taken from the session first. They cross the
    /// exec as any held client.
    pub(in crate::server) fn frame_held_tls(&mut self, mut ends: FxHashMap<RawFd, Socket>) {
        let held = (self.forward.backends.values_mut())
            .flat_map(|b| b.waiting.iter_mut().filter(|w| w.tls.is_some()));
        for w in held {
            let Some(end) = ends.remove(&w.conn.as_raw_fd()) else {
                continue;
            };
            w.drained = w.tls.take().map(|tls| Box::new(Names::of(&tls)));
            w.conn = end;
        }
    }

    /// One relayed connection the previous image handed over.
    /// Its `max_runtime` deadline goes on from `handed`, as it was.
    fn resume_relay(&mut self, r: RelayState, index: &FxHashMap<String, usize>, handed: Instant) {
        let id = self.services.id_by_name(Some(&r.service), index);
        let pid = Pid::from_raw(r.pid);
        let tag = Relayed {
            service: id,
            name: r.service.as_str().into(),
            pid,
            peer: r.peer.clone(),
            source: r.source,
            runtime_timer: None,
            kind: Kind::Forward,
        };
        let sides = r.sides.map(crate::relay::SideState::into_side);
        let rid = match self
            .relays
            .adopt(self.poller.registry(), sides, r.flows, tag)
        {
            Ok(rid) => rid,
            Err(e) => {
                info!("{}: cannot relay {} any more: {e}", r.service, r.peer);
                return;
            }
        };
        if let Some(ns) = r.runtime_left_ns {
            let at = handed + Duration::from_nanos(ns);
            let key = self.timers.add(at, Timer::RelayRuntime(rid));
            if let Some(tag) = self.relays.tag_mut(rid) {
                tag.runtime_timer = Some(key);
            }
        }
        let backend = self.forward.backends.entry(id).or_default();
        backend.open += 1;
        backend.add_source(r.source);
        if let Some(retired) = self.forward.retired.iter_mut().find(|x| x.pid == pid) {
            retired.open += 1;
        }
    }
}

/// A running backend as the state names it (its phase set by the
/// caller); none if it is stopped.
fn backend_state(b: &Backend) -> Option<BackendState> {
    let pid = b.state.pid()?;
    let spec = b.started_with.as_deref()?;
    let f = spec.forward.as_ref()?;
    Some(BackendState {
        service: spec.name.clone(),
        pid: pid.as_raw(),
        to: f.to.to_string(),
        exec: spec.exec.clone(),
        ready_in_us: b.ready_in.map(|d| d.as_micros() as u64),
        relayed: b.relayed,
        up: b.up,
        down: b.down,
        phase: BackendPhase::Ready,
        notify_fd: b.notify.as_ref().map(|(s, _)| s.as_raw_fd()),
        status: b.status.clone(),
        tree: tree_state(&b.tree),
    })
}

fn phase_of(state: &State, now: Instant) -> Option<BackendPhase> {
    Some(match state {
        State::Stopped => return None,
        State::Ready { .. } => BackendPhase::Ready,
        State::Starting { since, timeout, .. } => BackendPhase::Starting {
            age_ns: ns(now.saturating_duration_since(*since)),
            timeout_in_ns: left(timeout.at(), now),
        },
        State::Stopping { kill, .. } => BackendPhase::Stopping {
            kill_in_ns: left(kill.at(), now),
        },
    })
}

fn retired_state(r: &Retired, now: Instant) -> BackendState {
    BackendState {
        service: r.name.to_string(),
        pid: r.pid.as_raw(),
        to: r.to.to_string(),
        exec: Vec::new(),
        ready_in_us: None,
        relayed: 0,
        up: 0,
        down: 0,
        phase: BackendPhase::Retired {
            stop_timeout_ns: ns(r.stop_timeout),
            kill_in_ns: r.kill.map(|k| left(k.at(), now)),
        },
        notify_fd: None,
        status: None,
        tree: tree_state(&r.tree),
    }
}

fn tree_state(tree: &[Member]) -> Vec<ProcessState> {
    let state = |m: &Member| ProcessState {
        pid: m.pid.as_raw(),
        start: m.start,
        pgid: m.pgid,
    };
    tree.iter().map(state).collect()
}

fn tree_of(tree: &[ProcessState]) -> Vec<Member> {
    let member = |p: &ProcessState| Member {
        pid: Pid::from_raw(p.pid),
        start: p.start,
        pgid: p.pgid,
    };
    tree.iter().map(member).collect()
}
