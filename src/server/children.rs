//! The child table: every running child by pid, and the counts limits are
//! decided on (children per service, per service and client) kept in the
//! same two functions that insert and remove, so they always agree with
//! the table. Counts are keyed by the service's identity, not its name: a
//! service removed and re-added while old children run starts from zero.
//! Knows nothing of sockets, polling or logging.

use rustc_hash::FxHashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::addr::ListenAddr;
use crate::limits::Counter;
use crate::peer::{Peer, SourceKey};
use crate::queue::QueueHead;
use crate::relay::RelayId;
use crate::upgrade::{ChildState, NotifyState, RuntimeLeft, StoppingState};

use super::services::ServiceId;
use super::timers::{Timer, TimerKey, Timers};

/// A socket lent to a pass-mode child, and what waited on it then.
pub(super) struct HeldSocket {
    pub addr: ListenAddr,
    pub head: QueueHead,
}

pub(super) struct Child {
    pub service: ServiceId,
    /// The service's name when the child started, for its log lines even
    /// after a reload removed the service (shared with the service: no
    /// copy per child).
    pub name: Rc<str>,
    pub peer: Option<Peer>,
    pub source: Option<SourceKey>,
    pub started_at: Instant,
    /// It never reached its program (logged and counted at spawn).
    pub exec_failed: bool,
    /// Sockets a pass-mode child holds; empty in accept mode.
    pub held_sockets: Vec<HeldSocket>,
    /// Its `max_runtime` deadline, cancelled when it exits first.
    pub runtime_timer: Option<TimerKey>,
    /// `summond restart` sent it SIGTERM: its end is asked for, not a
    /// failure for the restart guard.
    pub restarting: bool,
    /// A long-running child's NOTIFY_SOCKET and what it said there.
    pub notify: Option<Box<super::notify::Watch>>,
    /// An accept-mode TLS child's relay (`tls.rs`), whose end waits for
    /// how the child ended (`relays.rs`).
    pub relay: Option<RelayId>,
}

/// A child that has ended, out of the table.
pub(super) struct Exit {
    pub pid: Pid,
    pub child: Child,
    pub status: WaitStatus,
    /// From its start to its exit (or to when it was seen exited).
    pub ran: Duration,
}

/// A child's process group that `max_runtime` sent SIGTERM, with the
/// SIGKILL still due, kept by the group's id (the leader's pid) until
/// the SIGKILL is sent, and carried by an upgrade.
///
/// The leader is not reaped before then, even once it has exited: its
/// zombie keeps its pid, and so the group's id, from being given out
/// again, so `kill(-pgid)` reaches this group and no later one that got
/// the id, whatever was forked into it since. It stays in the child
/// table (and counts as running) until reaped.
pub(super) struct StoppingGroup {
    /// The leader's start, as in the child table: the group is this
    /// child's and no later one's with the same pid.
    pub started_at: Instant,
    pub name: Rc<str>,
    pub peer: Option<Peer>,
    /// The SIGKILL's timer; its key says when it is due.
    pub timer: TimerKey,
    /// When the leader was seen to have exited (its zombie is held): its
    /// exit is logged and counted with its real run time when reaped.
    pub exited_at: Option<Instant>,
}

impl StoppingGroup {
    /// The SIGKILL it is owed, for the next image of an upgrade: a group
    /// that ignores SIGTERM is not spared by an upgrade in its grace.
    pub fn to_state(&self, pgid: Pid, now: Instant) -> StoppingState {
        StoppingState {
            pgid: pgid.as_raw(),
            name: self.name.to_string(),
            peer: self.peer.clone(),
            age_ns: now.saturating_duration_since(self.started_at).as_nanos() as u64,
            kill_in_ns: self.timer.at().saturating_duration_since(now).as_nanos() as u64,
            // Held until the SIGKILL: never reaped before.
            leader_reaped: false,
            exited_ns: self
                .exited_at
                .map(|t| now.saturating_duration_since(t).as_nanos() as u64),
        }
    }

    /// A group the previous image owed a SIGKILL, its times measured from
    /// the hand-over (`now`), the SIGKILL's timer set again. Its leader is
    /// still a child of this process, running or a zombie held unreaped
    /// across the exec, so the group is still the one stopped.
    fn resumed(g: StoppingState, now: Instant, timers: &mut Timers) -> (Pid, StoppingGroup) {
        let pgid = Pid::from_raw(g.pgid);
        let started_at = now
            .checked_sub(Duration::from_nanos(g.age_ns))
            .unwrap_or(now);
        let kill_at = now + Duration::from_nanos(g.kill_in_ns);
        let group = StoppingGroup {
            started_at,
            name: g.name.into(),
            peer: g.peer,
            timer: timers.add(
                kill_at,
                Timer::Kill {
                    pid: pgid,
                    started_at,
                },
            ),
            exited_at: g
                .exited_ns
                .map(|ns| now.checked_sub(Duration::from_nanos(ns)).unwrap_or(now)),
        };
        (pgid, group)
    }
}

impl Child {
    pub fn is_pass_mode(&self) -> bool {
        !self.held_sockets.is_empty()
    }

    /// A child the previous image of an upgrade handed over, of `service`
    /// (its own, or an identity of its own if a reload removed it), its
    /// age measured from `handed`. Its held sockets are the caller's to
    /// lend and its `max_runtime` timer the caller's to set, from the
    /// deadline the state gives (none from an older image), as is its
    /// NOTIFY_SOCKET the caller's to watch again.
    fn resumed(
        mut c: ChildState,
        service: ServiceId,
        handed: Instant,
    ) -> (Pid, Child, Option<RuntimeLeft>, Option<NotifyState>) {
        let notify = c.notify.take();
        let started_at = handed
            .checked_sub(Duration::from_nanos(c.age_ns))
            .unwrap_or(handed);
        let held_sockets = c
            .held
            .into_iter()
            .filter_map(|(addr, head)| {
                Some(HeldSocket {
                    addr: addr.parse().ok()?,
                    head,
                })
            })
            .collect();
        let child = Child {
            service,
            name: c.name.into(),
            peer: c.peer,
            source: c.source,
            started_at,
            exec_failed: c.exec_failed,
            held_sockets,
            runtime_timer: None,
            restarting: false,
            // Set by the caller, which watches the socket again.
            notify: None,
            // Its TLS connection is the drainer's, which passes its end on.
            relay: None,
        };
        (Pid::from_raw(c.pid), child, c.runtime, notify)
    }
}

/// What one service has running.
#[derive(Default)]
struct Counts {
    active: u32,
    per_source: Counter<SourceKey>,
}

#[derive(Default)]
pub(super) struct ChildTable {
    children: FxHashMap<Pid, Child>,
    /// Only services with children have an entry.
    counts: FxHashMap<ServiceId, Counts>,
    /// Process groups `max_runtime` sent SIGTERM, SIGKILL still due, by
    /// group id (the leader's pid: its entry in `children` stays until it
    /// is reaped).
    pub stopping: FxHashMap<Pid, StoppingGroup>,
}

/// What the child table took back of an upgrade state, for the caller.
#[derive(Debug, Default)]
pub(super) struct ChildrenResumed {
    /// Pass-mode children, whose sockets are to be lent to them again.
    pub lending: Vec<Pid>,
    /// Children's NOTIFY_SOCKETs and what they said, to watch again.
    pub notify: Vec<(Pid, NotifyState)>,
    /// Groups whose leader an older image reaped in the grace: nothing
    /// holds the id since, and it may lead someone else's group by now,
    /// so no SIGKILL goes to it.
    pub reaped: Vec<StoppingState>,
}

impl ChildTable {
    /// Take back what the previous image of an upgrade handed over, its
    /// times measured from `handed`: first the process groups it owed a
    /// SIGKILL, their timers set again (a child's start must match its
    /// group's), then the children, each under the service `service`
    /// finds by name (its identity, or a new one if it is gone, and its
    /// `max_runtime`), with its own `max_runtime` timer set unless its
    /// group is being stopped already (that one has fired).
    pub fn resume(
        &mut self,
        children: Vec<ChildState>,
        stopping: Vec<StoppingState>,
        handed: Instant,
        timers: &mut Timers,
        mut service: impl FnMut(Option<&str>) -> (ServiceId, Option<Duration>),
    ) -> ChildrenResumed {
        let mut resumed = ChildrenResumed::default();
        for g in stopping {
            if g.leader_reaped {
                resumed.reaped.push(g);
                continue;
            }
            let (pgid, group) = StoppingGroup::resumed(g, handed, timers);
            self.stopping.insert(pgid, group);
        }
        for c in children {
            let (id, max_runtime) = service(c.service.as_deref());
            let (pid, mut child, runtime, notify) = Child::resumed(c, id, handed);
            resumed.notify.extend(notify.map(|n| (pid, n)));
            // The child's own deadline, as a reload leaves it: the new
            // config's max_runtime is for the next child, and a child of a
            // removed service keeps its own. An older image's state says
            // nothing: the service's then, as that image did.
            let deadline = match runtime {
                Some(r) => r.left_ns.map(|ns| handed + Duration::from_nanos(ns)),
                None => max_runtime.map(|limit| child.started_at + limit),
            };
            let started_at = child.started_at;
            child.runtime_timer = deadline
                .filter(|_| !self.stopping.contains_key(&pid))
                .map(|at| timers.add(at, Timer::RuntimeUp { pid, started_at }));
            if child.is_pass_mode() {
                resumed.lending.push(pid);
            }
            self.insert(pid, child);
        }
        resumed
    }

    /// The SIGKILLs `max_runtime` still owes, for the next image.
    pub fn stopping_state(&self, now: Instant) -> Vec<StoppingState> {
        self.stopping
            .iter()
            .map(|(pgid, g)| g.to_state(*pgid, now))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// `summond restart` sent `pid` SIGTERM.
    pub fn mark_restarting(&mut self, pid: &Pid) {
        if let Some(c) = self.children.get_mut(pid) {
            c.restarting = true;
        }
    }

    /// For what a child said on its NOTIFY_SOCKET (never its service or
    /// source: the counts are kept by `insert` and `remove`).
    pub fn notify_mut(&mut self, pid: &Pid) -> Option<&mut super::notify::Watch> {
        self.children.get_mut(pid)?.notify.as_deref_mut()
    }

    /// Child `pid`'s relay is `id` (an accept-mode TLS child).
    pub fn set_relay(&mut self, pid: &Pid, id: RelayId) {
        if let Some(c) = self.children.get_mut(pid) {
            c.relay = Some(id);
        }
    }

    pub fn set_notify(&mut self, pid: &Pid, watch: Box<super::notify::Watch>) {
        if let Some(c) = self.children.get_mut(pid) {
            c.notify = Some(watch);
        }
    }

    pub fn get(&self, pid: &Pid) -> Option<&Child> {
        self.children.get(pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Pid, &Child)> {
        self.children.iter()
    }

    /// Children of service `id` running now.
    pub fn active(&self, id: ServiceId) -> u32 {
        self.counts.get(&id).map_or(0, |c| c.active)
    }

    /// Children of service `id` started for client `key`.
    pub fn per_source(&self, id: ServiceId, key: &SourceKey) -> u32 {
        self.counts.get(&id).map_or(0, |c| c.per_source.get(key))
    }

    pub fn insert(&mut self, pid: Pid, child: Child) {
        let counts = self.counts.entry(child.service).or_default();
        counts.active += 1;
        if let Some(key) = child.source {
            counts.per_source.add(key);
        }
        self.children.insert(pid, child);
        self.check_counts();
    }

    /// The children, for the next image of an upgrade; `service` names a
    /// child's service now (none if a reload removed it).
    pub fn to_state(
        &self,
        now: Instant,
        service: impl Fn(ServiceId) -> Option<String>,
    ) -> Vec<ChildState> {
        self.children
            .iter()
            .map(|(pid, c)| ChildState {
                pid: pid.as_raw(),
                service: service(c.service),
                name: c.name.to_string(),
                peer: c.peer.clone(),
                source: c.source,
                age_ns: now.saturating_duration_since(c.started_at).as_nanos() as u64,
                exec_failed: c.exec_failed,
                held: c
                    .held_sockets
                    .iter()
                    .map(|h| (h.addr.to_string(), h.head))
                    .collect(),
                runtime: Some(RuntimeLeft {
                    // Still set: not fired, since it is cancelled at exit
                    // and a fired one moved the child to `stopping`
                    // (left out again on the other side).
                    left_ns: c
                        .runtime_timer
                        .map(|k| k.at().saturating_duration_since(now).as_nanos() as u64),
                }),
                notify: c.notify.as_ref().map(|w| w.to_state(now)),
            })
            .collect()
    }

    /// The child `status` is about, taken out of the table: `exited_at`,
    /// when it was seen to have exited, if before `now` (a held leader).
    pub fn exit(
        &mut self,
        status: WaitStatus,
        now: Instant,
        exited_at: Option<Instant>,
    ) -> Option<Exit> {
        let pid = status.pid()?;
        let child = self.remove(&pid)?;
        let ran = exited_at
            .unwrap_or(now)
            .saturating_duration_since(child.started_at);
        Some(Exit {
            pid,
            child,
            status,
            ran,
        })
    }

    pub fn remove(&mut self, pid: &Pid) -> Option<Child> {
        let child = self.children.remove(pid)?;
        if let Some(counts) = self.counts.get_mut(&child.service) {
            counts.active -= 1;
            if let Some(key) = &child.source {
                counts.per_source.remove(key);
            }
            if counts.active == 0 {
                self.counts.remove(&child.service);
            }
        }
        self.check_counts();
        Some(child)
    }

    /// Debug builds (the tests) check after every change that each count
    /// is what the table says.
    fn check_counts(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut active: FxHashMap<ServiceId, u32> = FxHashMap::default();
        let mut sources: FxHashMap<(ServiceId, SourceKey), u32> = FxHashMap::default();
        for c in self.children.values() {
            *active.entry(c.service).or_default() += 1;
            if let Some(k) = c.source {
                *sources.entry((c.service, k)).or_default() += 1;
            }
        }
        assert_eq!(
            active.len(),
            self.counts.len(),
            "services with children drifted"
        );
        for (id, counts) in &self.counts {
            assert_eq!(
                Some(&counts.active),
                active.get(id),
                "active count of {id:?} drifted"
            );
            let mut listed = 0;
            for (k, n) in counts.per_source.iter() {
                assert_eq!(
                    sources.get(&(*id, *k)),
                    Some(&n),
                    "per-source count drifted"
                );
                listed += 1;
            }
            let expected = sources.keys().filter(|(sid, _)| sid == id).count();
            assert_eq!(listed, expected, "per-source keys of {id:?} drifted");
        }
    }
}

/// " for PEER", or nothing for a child without a client.
pub(super) fn for_peer(peer: Option<&Peer>) -> String {
    peer.map(|p| format!(" for {p}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(service: u64, source: Option<SourceKey>) -> Child {
        Child {
            service: ServiceId(service),
            name: format!("s{service}").into(),
            peer: None,
            source,
            started_at: Instant::now(),
            exec_failed: false,
            held_sockets: Vec::new(),
            runtime_timer: None,
            restarting: false,
            notify: None,
            relay: None,
        }
    }

    #[test]
    fn handed_over_children_keep_their_deadlines_and_a_stopping_group_its_sigkill() {
        let handed = Instant::now();
        let secs = |n| Duration::from_secs(n);
        let state = |pid, service: &str, runtime| ChildState {
            pid,
            service: Some(service.into()),
            name: service.into(),
            peer: None,
            source: None,
            age_ns: secs(2).as_nanos() as u64,
            exec_failed: false,
            held: if pid == 12 {
                vec![("tcp://127.0.0.1:1".into(), QueueHead::Empty)]
            } else {
                Vec::new()
            },
            runtime,
            notify: None,
        };
        let left = |n: u64| {
            Some(RuntimeLeft {
                left_ns: Some(secs(n).as_nanos() as u64),
            })
        };
        let group = |pgid, leader_reaped| StoppingState {
            pgid,
            name: "a".into(),
            peer: None,
            age_ns: secs(2).as_nanos() as u64,
            kill_in_ns: secs(3).as_nanos() as u64,
            leader_reaped,
            exited_ns: None,
        };
        let mut t = ChildTable::default();
        let mut timers = Timers::default();
        let resumed = t.resume(
            vec![
                state(10, "a", left(7)),
                state(11, "a", left(1)),
                state(12, "b", None),
                state(13, "gone", None),
            ],
            vec![group(11, false), group(99, true)],
            handed,
            &mut timers,
            |name| match name {
                Some("a") => (ServiceId(1), None),
                Some("b") => (ServiceId(2), Some(secs(60))),
                _ => (ServiceId(3), None),
            },
        );
        assert_eq!(resumed.lending, vec![Pid::from_raw(12)]);
        assert_eq!(
            resumed.reaped.len(),
            1,
            "a reaped leader's group is not stopped"
        );
        assert_eq!(
            (t.len(), t.active(ServiceId(1)), t.active(ServiceId(3))),
            (4, 2, 1)
        );
        let deadline = |pid| {
            t.get(&Pid::from_raw(pid))
                .unwrap()
                .runtime_timer
                .map(|k| k.at())
        };
        assert_eq!(
            deadline(10),
            Some(handed + secs(7)),
            "its own, from the hand-over"
        );
        assert_eq!(deadline(11), None, "its group is being stopped");
        assert_eq!(
            deadline(12),
            Some(handed - secs(2) + secs(60)),
            "an older image's: the service's"
        );
        assert_eq!(deadline(13), None);
        let kill = t.stopping.get(&Pid::from_raw(11)).unwrap();
        assert_eq!(
            (kill.timer.at(), kill.started_at),
            (handed + secs(3), handed - secs(2))
        );
        assert_eq!(timers.len(), 3, "two deadlines and one SIGKILL");
    }

    #[test]
    fn counts_follow_the_table_and_are_kept_per_service_identity() {
        let ip = SourceKey::Ip("10.0.0.1".parse().unwrap());
        let mut t = ChildTable::default();
        t.insert(Pid::from_raw(10), child(1, Some(ip)));
        t.insert(Pid::from_raw(11), child(1, Some(ip)));
        t.insert(Pid::from_raw(12), child(2, None));
        assert_eq!(
            (t.active(ServiceId(1)), t.per_source(ServiceId(1), &ip)),
            (2, 2)
        );
        assert_eq!(t.active(ServiceId(2)), 1);
        // A re-added service has a new identity: the old children's exits
        // never touch its counts.
        assert_eq!(t.active(ServiceId(3)), 0);
        assert!(t.remove(&Pid::from_raw(10)).is_some());
        assert!(t.remove(&Pid::from_raw(10)).is_none(), "removed once");
        assert_eq!(
            (t.active(ServiceId(1)), t.per_source(ServiceId(1), &ip)),
            (1, 1)
        );
        t.remove(&Pid::from_raw(11));
        t.remove(&Pid::from_raw(12));
        assert_eq!(t.len(), 0);
        assert!(t.counts.is_empty(), "no entry outlives its children");
    }
}
