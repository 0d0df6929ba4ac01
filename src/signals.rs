//! Bringing signals into the event loop: the handled signals are blocked
//! and read from a non-blocking, close-on-exec `signalfd` that mio watches.
//! What a signal means is decided in `server/mod.rs`; this module only
//! delivers them and reaps children.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The signals summond acts on (SPEC "Signals").
pub const HANDLED: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR2,
];

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Block `HANDLED` and open the signalfd. Call before any child exists
    /// so no SIGCHLD is delivered the default way (and lost).
    ///
    /// What summond was started with is not trusted: the mask becomes
    /// exactly `HANDLED` (a signal blocked by whoever started summond, say
    /// SIGQUIT, would otherwise stay blocked in it), and each handled
    /// signal gets its default disposition back. An ignored SIGCHLD above
    /// all: the kernel then reaps every child itself (SA_NOCLDWAIT
    /// semantics, blocked or not), `waitpid` finds none, and no exit is
    /// ever logged or counted, so a service at `max_instances` never
    /// starts another child. Blocked first, then reset, so no handled
    /// signal is acted on the default way in between. SIGPIPE stays
    /// ignored (set so by Rust's runtime): a write to a closed socket is
    /// an EPIPE to handle, not a reason to die. Children get default
    /// dispositions and an empty mask in `spawn`.
    pub fn open() -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(*s);
        }
        discard_pending_unhandled();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), None)?;
        for s in HANDLED {
            // SAFETY: SIG_DFL installs no handler; no flags, empty mask.
            unsafe {
                sigaction(
                    *s,
                    &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
                )
            }?;
        }
        // SAFETY: SIG_IGN installs no handler.
        unsafe {
            sigaction(
                Signal::SIGPIPE,
                &SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty()),
            )
        }?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Every pending signal, in the order the kernel gives them. The
    /// kernel merges repeats of one standard signal (a SIGCHLD means "one
    /// or more children"), so no more than `HANDLED.len()` are ever
    /// pending and one read takes them all: no second read to find the
    /// queue empty, nothing allocated. A signal that arrives after the read
    /// wakes the loop again.
    pub fn drain(&mut self) -> Pending {
        // SAFETY: all-zero is a valid signalfd_siginfo (plain integers).
        let mut buf: [libc::signalfd_siginfo; READ_AT_ONCE] = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut out = Pending {
            // Placeholders past `len`, never read.
            sigs: [Signal::SIGCHLD; READ_AT_ONCE],
            len: 0,
        };
        let n = loop {
            // SAFETY: reads into `buf`, whose length in bytes is passed.
            let n = unsafe {
                libc::read(
                    self.raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(&buf),
                )
            };
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            break n.max(0) as usize / size;
        };
        for info in &buf[..n] {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.sigs[out.len] = sig;
                out.len += 1;
            }
        }
        out
    }
}

/// Drop every signal pending at start that summond does not handle. One
/// blocked by whoever started summond and sent before (or at) exec stays
/// pending; unblocked by the mask `open` sets, it would be acted on the
/// default way: a pending SIGUSR1 or SIGALRM killed summond before it
/// logged a line, a SIGTSTP left it stopped. Handled ones stay pending,
/// for the signalfd to read.
///
/// Discarded by setting SIG_IGN, which drops a pending signal whether or
/// not it is blocked (POSIX), every queued instance of a real-time one
/// too, then putting the disposition back as it was. sigtimedwait would
/// take one instance per call, and only of a signal blocked in this
/// thread; unblocking under SIG_IGN would leave a window with the mask
/// open.
fn discard_pending_unhandled() {
    // SAFETY: sigset_t is plain data, filled in by sigpending.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigpending writes the set passed.
    if unsafe { libc::sigpending(&mut pending) } != 0 {
        return;
    }
    for signo in 1..=libc::SIGRTMAX() {
        // SAFETY: reads the set filled in above.
        let is_pending = unsafe { libc::sigismember(&pending, signo) } == 1;
        if !is_pending || HANDLED.iter().any(|s| *s as i32 == signo) {
            continue;
        }
        // SAFETY: SIG_IGN installs no handler; the old action is kept in
        // `old` and put back as it was (SIGKILL, SIGSTOP and the ones libc
        // reserves fail with EINVAL and are left alone; none can be
        // pending blocked).
        unsafe {
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signo, &ign, &mut old) == 0 {
                libc::sigaction(signo, &old, std::ptr::null_mut());
            }
        }
    }
}

/// Room for more than the `HANDLED.len()` signals that can be pending.
const READ_AT_ONCE: usize = 8;
const _: () = assert!(HANDLED.len() <= READ_AT_ONCE);

/// The signals one `drain` read.
pub struct Pending {
    sigs: [Signal; READ_AT_ONCE],
    len: usize,
}

impl IntoIterator for Pending {
    type Item = Signal;
    type IntoIter = std::iter::Take<std::array::IntoIter<Signal, READ_AT_ONCE>>;

    fn into_iter(self) -> Self::IntoIter {
        self.sigs.into_iter().take(self.len)
    }
}

/// Reap every child that has exited, one at a time as the caller takes
/// them: `waitpid(-1, WNOHANG)` until none (nothing collected, nothing
/// allocated).
pub fn reap() -> impl Iterator<Item = WaitStatus> {
    std::iter::from_fn(|| loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(status) => return Some(status),
            Err(Errno::EINTR) => continue,
            // ECHILD: no children left.
            Err(_) => return None,
        }
    })
}

/// The pid of a child that has exited, left unreaped (`WNOWAIT`): its
/// zombie keeps holding its pid, and its group's id, until `reap_pid`.
/// The kernel gives the first exited child in the order they were
/// forked, every time: while that one is left unreaped, no later one is
/// seen here.
pub fn exited_unreaped() -> Option<Pid> {
    loop {
        match waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(status) => return status.pid(),
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Has the child `pid` exited? It is left unreaped (`WNOWAIT`).
pub fn has_exited(pid: Pid) -> bool {
    loop {
        match waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(status) => return status.pid().is_some(),
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Reap the exited child `pid`.
pub fn reap_pid(pid: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(status) => return Some(status),
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}
