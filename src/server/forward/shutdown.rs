//! summond's own stop: every backend gets SIGTERM (its group, and the
//! daemons its tree holds), then summond waits for each until its
//! `stop_timeout` and SIGKILLs what is left, as systemd does at a unit's
//! stop. Left running, a backend that ignores SIGTERM would keep its port
//! and, run by the same uid, be taken as the backend by the next summond.
//! Backends that exit at SIGTERM end the wait at once: a fast stop stays
//! fast. No listener is left by then, so nothing else waits on it.

use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::tree::Member;

/// How often the wait looks for exits.
const POLL: Duration = Duration::from_millis(5);
/// How long a SIGKILLed backend is waited for (one in uninterruptible
/// sleep may take its time; summond does not wait for it for ever).
const AFTER_KILL: Duration = Duration::from_secs(1);

/// A backend told to stop: its SIGKILL is due at `kill_at`.
pub(super) struct Stopping {
    pub name: String,
    pub pid: Pid,
    pub tree: Vec<Member>,
    pub kill_at: Instant,
    /// Its SIGTERM went already (an idle stop, a retired backend's).
    pub termed: bool,
}

/// Wait for each backend to exit, SIGKILL those still there at their
/// deadline; bounded by the latest deadline plus `AFTER_KILL`.
pub(super) fn wait_then_kill(mut left: Vec<Stopping>) {
    let end = left.iter().map(|b| b.kill_at).max().map(|t| t + AFTER_KILL);
    let mut killed = false;
    while let Some(end) = end {
        left.retain(|b| !exited(b));
        if left.is_empty() || Instant::now() >= end {
            break;
        }
        let now = Instant::now();
        for b in left.iter_mut().filter(|b| b.kill_at <= now) {
            warn!(event = "backend_kill", service = b.name.as_str(), pid = b.pid.as_raw();
                "{}: backend pid {} still running after stop_timeout: SIGKILL to its group", b.name, b.pid);
            let _ = kill(Pid::from_raw(-b.pid.as_raw()), Signal::SIGKILL);
            super::signal_daemons(&b.name, b.pid, &b.tree, Signal::SIGKILL);
            b.kill_at = end;
            killed = true;
        }
        std::thread::sleep(POLL);
    }
    for b in &left {
        warn!(
            "{}: backend pid {} did not exit{}",
            b.name,
            b.pid,
            if killed { " even after SIGKILL" } else { "" }
        );
    }
}

/// Reaped now (its leftovers SIGKILLed, as at any backend's exit)?
fn exited(b: &Stopping) -> bool {
    match waitpid(b.pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(status) => {
            info!(event = "backend_exit", service = b.name.as_str(), pid = b.pid.as_raw();
                "{}: backend pid {} stopped ({})", b.name, b.pid, crate::stats::ExitText(&status));
            super::kill_leftovers(&b.name, b.pid, &b.tree);
            true
        }
        // Not a child (any more): nothing to wait for.
        Err(_) => true,
    }
}
