//! Bringing signals into the event loop: the handled signals are blocked
//! and read from a non-blocking, close-on-exec `signalfd` that mio watches.
//! What a signal means is decided in `server.rs`; this module only
//! delivers them and reaps children.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

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
    pub fn open() -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(*s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Every pending signal, in arrival order. The kernel merges repeats of
    /// one standard signal, so a SIGCHLD means "one or more children".
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                        out.push(sig);
                    }
                }
                Ok(None) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        out
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
