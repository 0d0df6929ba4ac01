//! Readiness of long-running (`accept = false`) children: each gets a
//! NOTIFY_SOCKET of its own (`notify.rs`, the same kind forward backends
//! get), what it says there (`READY=1`, `STATUS=`) is kept with it in the
//! child table for status and metrics, and `ready_timeout` stops one that
//! never says READY=1, its end then a failed start for the restart guard.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::Interest;
use nix::unistd::Pid;
use socket2::Socket;

use super::notify::{self, Watch};
use super::poller::TokenKind;
use super::services::ServiceId;
use super::timers::{Timer, TimerKey, KILL_AFTER};
use super::Server;
use crate::control::InstanceStatus;
use crate::env::EnvBlock;
use crate::upgrade::NotifyState;
use rustc_hash::FxHashMap;

impl Server {
    /// A NOTIFY_SOCKET for the next child of service `idx`, named in
    /// `env`. Without one (out of fds) the child starts all the same and
    /// no `ready_timeout` is held against it: it could not have answered.
    pub(super) fn child_notify_socket(&self, idx: usize, env: &mut EnvBlock) -> Option<Socket> {
        match notify::open() {
            Ok((sock, name)) => {
                env.push("NOTIFY_SOCKET", name.as_str());
                Some(sock)
            }
            Err(e) => {
                warn!(
                    "{}: cannot make a NOTIFY_SOCKET for the child: {e}",
                    self.services[idx].spec.name
                );
                None
            }
        }
    }

    /// Watch the NOTIFY_SOCKET of child `pid` (just put in the table) of
    /// service `idx`, and arm its `ready_timeout`.
    pub(super) fn watch_child_notify(&mut self, idx: usize, pid: Pid, sock: Socket, now: Instant) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        debug_assert!(child.notify.is_none());
        let name = child.name.clone();
        let Some(token) = self.register_notify(&name, pid, &sock) else {
            return;
        };
        let timer = self.services[idx]
            .spec
            .ready_timeout
            .map(|limit| self.ready_timer(pid, now, now + limit));
        let watch = Box::new(Watch {
            sock,
            token,
            ready: false,
            status: None,
            timer,
            timed_out: false,
        });
        self.children.set_notify(&pid, watch);
    }

    /// The NOTIFY_SOCKET the previous image of an upgrade handed over
    /// with child `pid` (in the table by now): watched again, with what
    /// the child said before and its `ready_timeout` due when it was due
    /// (from `handed`). Datagrams sent during the exec wait in the
    /// socket: registering a readable fd reports it at once.
    pub(super) fn resume_child_notify(&mut self, pid: Pid, n: NotifyState, handed: Instant) {
        // SAFETY: named by the state, taken once.
        let sock = Socket::from(unsafe { OwnedFd::from_raw_fd(n.fd) });
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        let (name, started_at) = (child.name.clone(), child.started_at);
        let Some(token) = self.register_notify(&name, pid, &sock) else {
            return;
        };
        let timer = n
            .ready_in_ns
            .filter(|_| !n.ready)
            .map(|ns| self.ready_timer(pid, started_at, handed + Duration::from_nanos(ns)));
        let watch = Box::new(Watch {
            sock,
            token,
            ready: n.ready,
            // Cleaned again: an older image may have kept more.
            status: n.status.map(|s| notify::status_text(s.as_bytes())),
            timer,
            timed_out: n.timed_out,
        });
        self.children.set_notify(&pid, watch);
    }

    /// Register child `pid`'s NOTIFY_SOCKET with the loop: its token, or
    /// none (said) if it cannot be watched.
    fn register_notify(&mut self, name: &str, pid: Pid, sock: &Socket) -> Option<mio::Token> {
        let token = self.poller.tokens.next();
        let fd = sock.as_raw_fd();
        if let Err(e) =
            self.poller
                .registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            warn!("{name}: cannot watch pid {pid}'s NOTIFY_SOCKET: {e}");
            return None;
        }
        self.poller
            .tokens
            .insert(token, TokenKind::ChildNotify(pid));
        Some(token)
    }

    /// The `ready_timeout` of child `pid` started at `started_at`, due `at`.
    fn ready_timer(&mut self, pid: Pid, started_at: Instant, at: Instant) -> TimerKey {
        self.timers.add(at, Timer::ReadyTimeout { pid, started_at })
    }

    /// Datagrams on child `pid`'s NOTIFY_SOCKET: only its own process
    /// group speaks for it.
    pub(super) fn on_child_notify(&mut self, pid: Pid) {
        let Some(watch) = self.children.notify_mut(&pid) else {
            return;
        };
        let said = notify::read(&watch.sock, pid);
        if said.more {
            rearm(self.poller.registry(), &watch.sock, watch.token);
        }
        if let Some(status) = said.status {
            watch.status = Some(status);
        }
        let newly_ready = said.ready && !watch.ready;
        watch.ready |= said.ready;
        let timer = if newly_ready {
            watch.timer.take()
        } else {
            None
        };
        if let Some(key) = timer {
            self.timers.cancel(key);
        }
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        if said.foreign > 0 {
            debug!(
                "{}: ignored {} NOTIFY_SOCKET datagrams not from pid {pid}'s group",
                child.name, said.foreign
            );
        }
        if newly_ready {
            debug!(event = "ready", service = &*child.name, pid = pid.as_raw();
                "{}: pid {pid} is ready", child.name);
        }
    }

    /// `ready_timeout` ran out for child `pid` started at `started_at`:
    /// stopped as `max_runtime` stops one, its end a failed start.
    pub(super) fn ready_timed_out(&mut self, pid: Pid, started_at: Instant) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        if child.started_at != started_at || crate::signals::has_exited(pid) {
            return;
        }
        let name = child.name.clone();
        let Some(watch) = self.children.notify_mut(&pid) else {
            return;
        };
        watch.timer = None;
        if watch.ready {
            return;
        }
        watch.timed_out = true;
        warn!(event = "ready_timeout", service = &*name, pid = pid.as_raw();
            "{name}: pid {pid} did not send READY=1 within ready_timeout; \
             SIGTERM to its process group, SIGKILL in {}s; counted as a failed start",
            KILL_AFTER.as_secs());
        self.term_group(pid);
    }

    /// Each service's long-running children, oldest first, for status
    /// (one handed over by an image that did not carry its NOTIFY_SOCKET
    /// has none here: shown not ready).
    pub(super) fn instances(&self) -> FxHashMap<ServiceId, Vec<InstanceStatus>> {
        let mut all: FxHashMap<ServiceId, Vec<(Instant, InstanceStatus)>> = Default::default();
        for (pid, c) in self.children.iter() {
            if !c.is_pass_mode() {
                continue;
            }
            let w = c.notify.as_deref();
            all.entry(c.service).or_default().push((
                c.started_at,
                InstanceStatus {
                    pid: pid.as_raw() as u32,
                    ready: w.is_some_and(|w| w.ready),
                    status: w.and_then(|w| w.status.clone()),
                },
            ));
        }
        all.into_iter()
            .map(|(id, mut v)| {
                v.sort_by_key(|(at, i)| (*at, i.pid));
                (id, v.into_iter().map(|(_, i)| i).collect())
            })
            .collect()
    }

    /// A child left the table: its NOTIFY_SOCKET is closed, unwatched.
    pub(super) fn forget_child_notify(&mut self, watch: &Watch) {
        let fd = watch.sock.as_raw_fd();
        let _ = self.poller.registry().deregister(&mut SourceFd(&fd));
        self.poller.tokens.remove(&watch.token);
        if let Some(key) = watch.timer {
            self.timers.cancel(key);
        }
    }
}

/// Ask for another wake-up of a notify socket whose turn's budget ran
/// out: EPOLL_CTL_MOD on a readable fd queues a new edge.
pub(super) fn rearm(registry: &mio::Registry, sock: &socket2::Socket, token: mio::Token) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let _ = registry.reregister(
        &mut mio::unix::SourceFd(&fd),
        token,
        mio::Interest::READABLE,
    );
}
