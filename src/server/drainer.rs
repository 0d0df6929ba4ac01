//! TLS connections across a live upgrade. rustls's state cannot be
//! handed to the next image (no kTLS on this kernel, no serialisation),
//! so just before the exec the TLS connections open are moved out of the
//! relay table into a drainer: a child process forked here that keeps
//! only their fds, serves them with the relay alone (`Relays::
//! drain_alone`, with their `linger`) and exits after the last. The
//! image (and every next one: the state carries it) knows its pid,
//! reaps it, shows it in status, and sends it SIGTERM at its own stop.
//! Its forward-mode connections count as open to their backend (so
//! `max_instances`, `max_per_source`, `idle_stop` and a retired backend
//! wait) until each ends: the drainer writes that connection's number
//! (4 bytes, atomic in a pipe) on a pipe made before the fork, whose
//! read end the image watches and hands over to the next; whatever is
//! left is uncounted when the drainer is reaped. A forward
//! connection's `max_runtime` deadline goes with it into the drainer,
//! which closes it then. An accept-mode
//! TLS child keeps its end of the socket pair, and stays the image's
//! child as any other; plaintext relays are handed over as before.
//! Forward-mode TLS clients not relayed yet (a handshake, a client held
//! for a starting backend) go to it too, each over a socket pair whose
//! other end the image keeps (`drained.rs`). The drainer learns how an
//! accept-mode TLS child ended (its client's `close_notify` waits for
//! that, `relays.rs`) through a pidfd opened here before the fork: it
//! hangs up once the image reaped the child, and then gives its exit
//! status (PIDFD_GET_INFO, Linux 6.15); without that, the held end is
//! passed on at its bound.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{fork, ForkResult, Pid};
use rustc_hash::FxHashMap;

use super::poller::TokenKind;
use super::relays::{Kind, Relayed};
use super::Server;
use crate::peer::SourceKey;
use crate::relay::{RelayId, Relays, Words};
use crate::upgrade::DrainerState;

/// A forward connection a drainer holds: service, backend pid, source.
type Held = (String, Pid, Option<SourceKey>);

/// Ends read from one drainer's pipe per turn (a bound: the others, and
/// every other source, are served between).
const ENDS_PER_TURN: usize = 64;

/// A drainer running, and the forward-mode connections it holds that
/// are still counted open, by the number it names each by at its end.
pub(super) struct Drainer {
    pub pid: Pid,
    relays: FxHashMap<u32, Held>,
    /// The read end of the pipe those numbers come on (none if it could
    /// not be made, from an older image, or after its EOF).
    ends: Option<Ends>,
}

/// A drainer's pipe of ended connections, in the poll set.
struct Ends {
    fd: OwnedFd,
    token: Token,
    /// The last read filled its buffer: more may wait, and no new event
    /// comes for it (edge-triggered).
    more: bool,
}

impl Server {
    /// Before an upgrade's exec: the TLS connections go to a drainer.
    /// If the fork fails they stay here, and close with the exec.
    pub(super) fn fork_drainer(&mut self) {
        let drained = self.relays.split_off_tls(self.poller.registry());
        // And the forward-mode TLS clients not relayed yet (drained.rs).
        let pairs = self.pair_tls_pending();
        if drained.is_empty() && pairs.is_empty() {
            return;
        }
        let forward = || (drained.iter()).filter(|(_, t, ..)| t.kind == Kind::Forward);
        // Each forward connection's number is its place in this order.
        let relays: FxHashMap<u32, Held> = (forward().zip(0..))
            .map(|((_, t, ..), n)| (n, (t.name.to_string(), t.pid, t.source)))
            .collect();
        let numbers: FxHashMap<RelayId, u32> =
            forward().zip(0..).map(|((id, ..), n)| (id, n)).collect();
        // Their max_runtime deadlines go with them (the timers here do
        // not cross the exec, and the next image does not know them).
        let cutoffs: Vec<_> = (drained.iter())
            .filter_map(|(id, t, ..)| Some((t.runtime_timer?.at(), id)))
            .collect();
        // Without it (no fd left), they count until the drainer ends.
        let pipe =
            (nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK))
                .inspect_err(|e| warn!("upgrade: no pipe for the drainer's ends ({e})"))
                .ok();
        let words = self.child_pidfds(&drained);
        let mut keep = drained.fds();
        keep.extend(pipe.as_ref().map(|(_, w)| w.as_raw_fd()));
        keep.extend(words.fds.iter().map(|(fd, _)| fd.as_raw_fd()));
        keep.extend(&pairs.keep);
        // The syslog socket, if summond logs there: the drainer's lines
        // (its end, its errors) go where summond's go.
        keep.extend(crate::logging::fds());
        // SAFETY: summond is one thread; the child runs only the relay
        // and exits with _exit.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let tell = pipe.map(|(_, w)| (w, numbers));
                let pending = self.take_tls_pending(pairs);
                drain(drained, cutoffs, pending, words, tell, &keep)
            }
            Ok(ForkResult::Parent { child }) => {
                info!(event = "upgrade";
                    "upgrade: {} TLS connections go on in drainer pid {child}",
                    drained.len() + pairs.len());
                // Its copies of the fds close here; they are the drainer's.
                drop((drained, words));
                self.hand_tls_pending(pairs);
                let ends = pipe.and_then(|(r, _)| self.watch_ends(child, r));
                self.drainers.push(Drainer {
                    pid: child,
                    relays,
                    ends,
                });
            }
            Err(e) => {
                warn!(
                    "upgrade: cannot fork a drainer ({e}): {} TLS connections close",
                    drained.len()
                );
                for (_, t, ..) in drained.iter() {
                    if t.kind == Kind::Forward {
                        self.count_drained(&t.name, t.pid, t.source, false);
                    }
                }
            }
        }
    }

    /// A pidfd of each accept-mode TLS child whose connection goes to the
    /// drainer and that is not reaped yet (so the pid is surely that
    /// child's): the drainer's word on how it ended.
    fn child_pidfds(&self, drained: &Relays<Relayed>) -> Words {
        let children = (drained.iter())
            .filter(|(_, t, ..)| t.kind == Kind::Child && self.children.get(&t.pid).is_some());
        let fds = children
            .filter_map(|(id, t, ..)| Some((pidfd_open(t.pid)?, id)))
            .collect();
        Words {
            fds,
            read: killed_or_not,
        }
    }

    /// Watch drainer `pid`'s pipe of ended connections (`None`, said,
    /// if it cannot be: its connections count until it ends).
    fn watch_ends(&mut self, pid: Pid, fd: OwnedFd) -> Option<Ends> {
        let kind = TokenKind::DrainerEnds(pid);
        match self.poller.watch(fd.as_raw_fd(), kind, Interest::READABLE) {
            Ok(token) => Some(Ends {
                fd,
                token,
                more: false,
            }),
            Err(e) => {
                warn!("cannot watch drainer pid {pid}'s pipe ({e}): its connections count until it ends");
                None
            }
        }
    }

    /// Drainer `pid` says connections ended: each it names that is still
    /// counted is uncounted (a number it does not hold, or a stray
    /// byte, is ignored). At most `ENDS_PER_TURN` a turn; at EOF (it
    /// ended) the pipe is closed, its reaping uncounts the rest.
    pub(super) fn on_drainer_ends(&mut self, pid: Pid) {
        let Some(d) = self.drainers.iter_mut().find(|d| d.pid == pid) else {
            return;
        };
        let Some(ends) = d.ends.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4 * ENDS_PER_TURN];
        let n = match nix::unistd::read(&ends.fd, &mut buf) {
            Ok(0) => return self.close_ends(pid),
            Ok(n) => n,
            Err(Errno::EAGAIN) => return ends.more = false,
            Err(Errno::EINTR) => return ends.more = true,
            Err(e) => {
                warn!("drainer pid {pid}'s pipe: {e}");
                return self.close_ends(pid);
            }
        };
        ends.more = n == buf.len();
        let ended: Vec<Held> = (buf[..n].chunks_exact(4))
            .filter_map(|c| {
                d.relays
                    .remove(&u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            })
            .collect();
        if ended.is_empty() {
            return;
        }
        for (name, backend, source) in ended {
            self.count_drained(&name, backend, source, false);
        }
        let now = Instant::now();
        for idx in 0..self.services.len() {
            self.sync_service(idx, now);
        }
    }

    /// The pipes whose last read filled its buffer: read again.
    pub(super) fn read_drainer_ends_again(&mut self) {
        let more: Vec<Pid> = (self.drainers.iter())
            .filter(|d| d.ends.as_ref().is_some_and(|e| e.more))
            .map(|d| d.pid)
            .collect();
        for pid in more {
            self.on_drainer_ends(pid);
        }
    }

    /// Out of the poll set, and closed.
    fn close_ends(&mut self, pid: Pid) {
        let Some(d) = self.drainers.iter_mut().find(|d| d.pid == pid) else {
            return;
        };
        if let Some(ends) = d.ends.take() {
            let _ = (self.poller.registry()).deregister(&mut SourceFd(&ends.fd.as_raw_fd()));
            self.poller.tokens.remove(&ends.token);
        }
    }

    /// A reaped pid that was a drainer: its connections are no longer
    /// counted, and how it ended is said. False if it was not one.
    pub(super) fn drainer_exited(&mut self, status: &WaitStatus) -> bool {
        let Some(pid) = status.pid() else {
            return false;
        };
        if !self.drainers.iter().any(|d| d.pid == pid) {
            return false;
        }
        self.close_ends(pid);
        let Some(at) = self.drainers.iter().position(|d| d.pid == pid) else {
            return false;
        };
        let d = self.drainers.swap_remove(at);
        match status {
            WaitStatus::Exited(_, 0) => {
                info!("drainer pid {pid} ended (its TLS connections from before an upgrade)")
            }
            WaitStatus::Exited(_, code) => {
                warn!("drainer pid {pid} failed (exit status {code}): its TLS connections closed")
            }
            WaitStatus::Signaled(_, sig, _) => {
                warn!("drainer pid {pid} was killed by {sig}: its TLS connections closed")
            }
            _ => {}
        }
        for (_, (name, backend, source)) in d.relays {
            self.count_drained(&name, backend, source, false);
        }
        let now = Instant::now();
        for idx in 0..self.services.len() {
            self.sync_service(idx, now);
        }
        true
    }

    /// The drainers, for the next image (their pipes cross the exec).
    pub(super) fn drainers_state(&self) -> Vec<DrainerState> {
        (self.drainers.iter())
            .map(|d| {
                let mut held: Vec<_> = d.relays.iter().collect();
                held.sort_unstable_by_key(|(n, _)| **n);
                DrainerState {
                    pid: d.pid.as_raw(),
                    numbers: held.iter().map(|(n, _)| **n).collect(),
                    relays: (held.into_iter())
                        .map(|(_, (n, p, s))| (n.clone(), p.as_raw(), *s))
                        .collect(),
                    ends: d.ends.as_ref().map(|e| e.fd.as_raw_fd()),
                }
            })
            .collect()
    }

    /// The drainers an earlier image forked: this image's to reap.
    /// Returns their forward connections, for forward mode to count open
    /// (`resume_forwarding`, before it stops idle backends).
    pub(super) fn resume_drainers(&mut self, handed: Vec<DrainerState>) -> Vec<Held> {
        let mut all = Vec::new();
        for d in handed {
            let pid = Pid::from_raw(d.pid);
            // From an image that numbered none: by place, as it forked.
            let numbers = if d.numbers.len() == d.relays.len() {
                d.numbers
            } else {
                (0..d.relays.len() as u32).collect()
            };
            let relays: FxHashMap<u32, Held> = (numbers.into_iter().zip(d.relays))
                .map(|(n, (name, p, s))| (n, (name, Pid::from_raw(p), s)))
                .collect();
            all.extend(relays.values().cloned());
            // SAFETY: named by the state, taken once.
            let fd = d.ends.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            let ends = fd.and_then(|fd| self.watch_ends(pid, fd));
            self.drainers.push(Drainer { pid, relays, ends });
        }
        all
    }

    /// At summond's stop: SIGTERM to each drainer (its connections close).
    pub(super) fn stop_drainers(&mut self) {
        for d in &self.drainers {
            info!("SIGTERM to drainer pid {}", d.pid);
            let _ = kill(d.pid, Signal::SIGTERM);
        }
    }

    pub(super) fn drainer_pids(&self) -> impl Iterator<Item = Pid> + '_ {
        self.drainers.iter().map(|d| d.pid)
    }
}

/// The drainer's life: its own name, SIGTERM ends it (also if summond
/// itself dies), the signals meant for summond (`pkill -HUP summond`)
/// do not; only the connections' fds (and stdio, the pipe `tell`) kept,
/// the relay until the last connection ends, each forward one's number
/// told at its end.
fn drain(
    drained: Relays<Relayed>,
    cutoffs: Vec<(Instant, RelayId)>,
    pending: Vec<crate::relay::Pending<Relayed>>,
    words: Words,
    tell: Option<(OwnedFd, FxHashMap<RelayId, u32>)>,
    keep: &[RawFd],
) -> ! {
    become_drainer();
    close_all_but(keep);
    let n = drained.len() + pending.len();
    let end = |c: &crate::relay::Closed<Relayed>, cut: bool| {
        if cut {
            let t = &c.tag;
            info!(event = "max_runtime", service = &*t.name;
                "{}: relayed {} ran past max_runtime: closed", t.name, t.peer);
        }
        if let Some((pipe, n)) = tell.as_ref().and_then(|(p, m)| Some((p, m.get(&c.id)?))) {
            // Full (the image stopped reading for 16,384 ends): it is
            // uncounted when this process ends, as before.
            let _ = nix::unistd::write(pipe, &n.to_ne_bytes());
        }
    };
    let code = match drained.drain_alone_with(cutoffs, pending, words, end) {
        Ok(_) => {
            info!("its {n} TLS connections ended");
            0
        }
        Err(e) => {
            warn!("{e}");
            1
        }
    };
    // SAFETY: no destructor or atexit handler of summond's must run here.
    unsafe { nix::libc::_exit(code) }
}

/// A pidfd of `pid` (close-on-exec), or none (logged: that child's end
/// is passed on at its bound).
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        warn!("upgrade: no pidfd for pid {pid} ({e}): its TLS client gets close_notify however it ends");
        return None;
    }
    // SAFETY: a new fd nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The kernel's `struct pidfd_info` (PIDFD_INFO_SIZE_VER0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    /// pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid.
    ids: [u32; 11],
    exit_code: i32,
}

/// `PIDFD_GET_INFO`: _IOWR(0xFF, 11, struct pidfd_info).
const PIDFD_GET_INFO: nix::libc::Ioctl = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// A reaped child's word, from its pidfd: whole unless a signal killed
/// it; none if the kernel does not say (before Linux 6.15).
fn killed_or_not(fd: &OwnedFd) -> Option<bool> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: info is a valid pidfd_info of the size the request names.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), PIDFD_GET_INFO, &mut info) };
    if r < 0 || info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    Some(!nix::libc::WIFSIGNALED(info.exit_code))
}

/// Named apart from summond (comm "summond-drain": `ps`, `pgrep -x
/// summond`), the signals summond takes for its own ignored (`pkill -HUP
/// summond` matches it too), SIGTERM default (it ends), and SIGTERM when
/// summond dies.
fn become_drainer() {
    // SAFETY: plain prctl calls with a NUL-terminated name.
    unsafe {
        nix::libc::prctl(nix::libc::PR_SET_NAME, c"summond-drain".as_ptr());
        nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM);
    }
    for sig in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGINT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGTERM, SigHandler::SigDfl) };
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    crate::logging::set_drainer(std::process::id());
}

/// Close every fd above stdio but `keep` (listeners, the poll set,
/// other clients: summond's, not the drainer's).
fn close_all_but(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: closing an fd this process will not use again (the
        // directory's own is already closed: EBADF, harmless).
        unsafe { nix::libc::close(fd) };
    }
}
