//! The way out: a child's end, from the SIGCHLD to its listeners
//! watched again, as a straight line. `reap_children` reaps what has
//! exited (holding back a process-group leader `max_runtime` is still
//! stopping), `reaped` tells a child from the helpers (the upgrade check,
//! a reload's config load), and `child_exited` takes a child's end
//! through each table in turn:
//!
//! 1. the child table gives the `Exit` (the child, out of the table, and
//!    how long it ran), and its `max_runtime` timer is cancelled;
//! 2. the socket table gives back what a pass-mode child held
//!    (`SocketTable::give_back`: what it left there, who owns it now);
//! 3. the service table records the outcome
//!    (`ServiceRuntime::record_exit`: counters, the crash guard);
//! 4. the exit is logged, and a crash hold is armed and logged;
//! 5. what the child held back is re-armed: a client already waiting on
//!    a given-back socket is served, the services that own the sockets
//!    are watched again, and the gate over all services (a slot under
//!    `max_children`) may let the parked listeners in.

use std::time::Instant;

use log::{debug, log, warn, Level};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::limits::{CRASH_LIMIT, CRASH_WINDOW};
use crate::signals;
use crate::stats::{succeeded, ExitText};

use super::children::{for_peer, Exit};
use super::services::{Ended, Recorded};
use super::sockets::GivenBack;
use super::timers::Timer;
use super::Server;

impl Server {
    /// Reap every child that has exited, except a leader `max_runtime` is
    /// stopping (`kill_overdue_group` reaps it after the SIGKILL).
    ///
    /// Without such a leader, one waitpid(-1) per child. With one, each
    /// exited child is peeked at (waitid WNOWAIT) before it is reaped;
    /// once the one the kernel gives is held, it gives that one every
    /// time, so the others are reaped by pid, one waitpid per child of
    /// the table (`reap_behind_held`): a waitpid per child and SIGCHLD,
    /// for at most `KILL_AFTER` after a SIGTERM. An exited process not in
    /// the table (an orphan given to summond as a subreaper or pid 1)
    /// waits behind the held one until it is reaped.
    pub(super) fn reap_children(&mut self) {
        let now = Instant::now();
        if self.children.stopping.is_empty() {
            for status in signals::reap() {
                self.reaped(status, now, None);
            }
            return;
        }
        while let Some(pid) = signals::exited_unreaped() {
            if self.children.stopping.contains_key(&pid) {
                self.reap_behind_held(now);
                return;
            }
            let Some(status) = signals::reap_pid(pid) else {
                break;
            };
            self.reaped(status, now, None);
        }
    }

    /// A held leader is the first exited child: reap every other child
    /// summond knows that has exited, and note when each held one was
    /// first seen exited (for its run time).
    fn reap_behind_held(&mut self, now: Instant) {
        let pids: Vec<Pid> = self
            .children
            .iter()
            .map(|(pid, _)| *pid)
            .chain(self.reloads.load.as_ref().map(|l| l.pid))
            .chain(self.upgrade_check_pid())
            .chain(self.forward.pids())
            .chain(self.drainer_pids())
            .collect();
        for pid in pids {
            if let Some(group) = self.children.stopping.get_mut(&pid) {
                if group.exited_at.is_none() && signals::has_exited(pid) {
                    group.exited_at = Some(now);
                    debug!(
                        "{}: pid {pid} exited; reaped when its group's SIGKILL is sent",
                        group.name
                    );
                }
            } else if let Some(status) = signals::reap_pid(pid) {
                self.reaped(status, now, None);
            }
        }
    }

    /// `exited_at`: when a held leader was seen to have exited, if before
    /// `now`.
    pub(super) fn reaped(&mut self, status: WaitStatus, now: Instant, exited_at: Option<Instant>) {
        let Some(pid) = status.pid() else {
            return;
        };
        if self.upgrade_check_exited(pid, &status) {
            return;
        }
        if let Some(load) = self.reloads.load.as_mut().filter(|l| l.pid == pid) {
            load.mark_reaped(&status);
            self.finish_reload_if_loaded();
            return;
        }
        if self.backend_exited(&status, now) || self.drainer_exited(&status) {
            return;
        }
        if let Some(exit) = self.children.exit(status, now, exited_at) {
            self.child_exited(exit, now);
        }
    }

    fn child_exited(&mut self, mut exit: Exit, now: Instant) {
        if let Some(key) = exit.child.runtime_timer {
            self.timers.cancel(key);
        }
        if let Some(id) = exit.child.relay {
            let killed = matches!(exit.status, WaitStatus::Signaled(..));
            self.child_ended(id, !killed);
        }
        let not_ready = exit.child.notify.as_ref().is_some_and(|w| w.timed_out);
        if let Some(watch) = exit.child.notify.take() {
            self.forget_child_notify(&watch);
        }
        // Nothing (and so free) for an accept-mode child.
        let given_back = self
            .sockets
            .give_back(exit.pid, &exit.child.held_sockets, exit.ran);
        let idx = self.services.index_of(exit.child.service);
        let recorded = idx.map_or_else(Recorded::default, |i| {
            if not_ready {
                self.count_spawn_failure(i);
            }
            self.services[i].record_exit(&exit.ended(given_back.unread, not_ready), now)
        });
        log_exit(&exit, given_back.unread, recorded.first_unread);
        if let (Some(i), Some(until)) = (idx, recorded.held_until) {
            self.hold(i, until, now);
        }
        self.rearm_after_exit(&exit, idx, given_back, now);
        // `summond restart`: an eager service starts again at once (any
        // other end waits for a client, so a child that exits at once
        // cannot make a loop of it).
        if let (Some(i), true) = (idx, exit.child.restarting) {
            self.start_eager(i, now);
        }
    }

    /// The crash guard holds service `idx` until `until`: its listeners
    /// are watched again when the timer fires.
    pub(super) fn hold(&mut self, idx: usize, until: Instant, now: Instant) {
        let svc = &self.services[idx];
        self.timers.add(until, Timer::HoldEnds(svc.id));
        warn!(event = "hold", service = svc.spec.name.as_str();
            "{}: failed {} times in {}s; not restarting it for {}s",
            svc.spec.name,
            CRASH_LIMIT,
            CRASH_WINDOW.as_secs(),
            until.saturating_duration_since(now).as_secs()
        );
    }

    /// Watch again what the child held back: its service's listeners (and
    /// those of the services that own the sockets it held now), and the
    /// parked ones if a slot under max_children opened. A client already
    /// waiting on a socket it gave back is served at once: epoll reported
    /// it while the child held the socket, and will not again.
    fn rearm_after_exit(
        &mut self,
        exit: &Exit,
        idx: Option<usize>,
        given_back: GivenBack,
        now: Instant,
    ) {
        if let Some((i, head)) = given_back.waiting {
            self.serve_waiting(&exit.child.held_sockets[i].addr, head, now);
        }
        if let Some(i) = idx {
            self.sync_service(i, now);
        }
        for i in given_back.owners.into_iter().filter(|o| Some(*o) != idx) {
            self.sync_service(i, now);
        }
        // A slot under max_children may have opened for every service.
        self.unpark(now);
    }
}

impl Exit {
    /// What its service counts of it; `unread`: it left a socket it held
    /// as it found it.
    fn ended(&self, unread: bool, not_ready: bool) -> Ended<'_> {
        Ended {
            status: &self.status,
            exec_failed: self.child.exec_failed,
            ran: self.ran,
            // A restart's end stands for no fault of the service.
            pass_mode: self.child.is_pass_mode() && !self.child.restarting,
            unread,
            not_ready,
        }
    }
}

/// Routine accept-mode exits are debug; an exec failure was already
/// logged at error; a child leaving its socket unread is logged once per
/// episode; everything else is worth an info line.
fn log_exit(exit: &Exit, unread: bool, first_unread: bool) {
    let Exit {
        pid,
        child,
        status,
        ran,
    } = exit;
    let success = succeeded(status);
    let level = if child.exec_failed
        || (success && !child.is_pass_mode())
        || (unread && success && !first_unread)
    {
        Level::Debug
    } else {
        Level::Info
    };
    let what = ExitText(status);
    log!(
        level,
        event = "exit",
        service = &*child.name,
        pid = pid.as_raw(),
        peer = child.peer.as_ref().map(|p| p.to_string()).unwrap_or_default().as_str(),
        status:% = what,
        duration_s = ran.as_secs_f64();
        "{}: pid {pid}{} {what} after {:.3}s{}",
        child.name,
        for_peer(child.peer.as_ref()),
        ran.as_secs_f64(),
        if unread {
            " leaving its socket unread; such exits count toward the restart guard"
        } else {
            ""
        }
    );
}
