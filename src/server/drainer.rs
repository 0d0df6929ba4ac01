//! TLS connections across a live upgrade. rustls's state cannot be
//! handed to the next image (no kTLS on this kernel, no serialisation),
//! so just before the exec the TLS connections open are moved out of the
//! relay table into a drainer: a child process forked here that keeps
//! only their fds, serves them with the relay alone (`Relays::
//! drain_alone`, with their `linger`) and exits after the last. The
//! image (and every next one: the state carries it) knows its pid,
//! reaps it, counts its forward-mode connections as open to their
//! backend until then (so `idle_stop` and a retired backend wait), shows
//! it in status, and sends it SIGTERM at its own stop. A forward
//! connection's `max_runtime` deadline goes with it into the drainer,
//! which closes it then. An accept-mode
//! TLS child keeps its end of the socket pair, and stays the image's
//! child as any other; plaintext relays are handed over as before.

use std::os::fd::RawFd;
use std::time::Instant;

use log::{info, warn};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use super::relays::{Kind, Relayed};
use super::Server;
use crate::peer::SourceKey;
use crate::relay::{RelayId, Relays};
use crate::upgrade::DrainerState;

/// A drainer running, and the forward-mode connections it holds:
/// service, backend pid, source.
pub(super) struct Drainer {
    pub pid: Pid,
    relays: Vec<(String, Pid, Option<SourceKey>)>,
}

impl Server {
    /// Before an upgrade's exec: the TLS connections go to a drainer.
    /// If the fork fails they stay here, and close with the exec.
    pub(super) fn fork_drainer(&mut self) {
        let drained = self.relays.split_off_tls(self.poller.registry());
        if drained.is_empty() {
            return;
        }
        let relays: Vec<_> = (drained.iter())
            .filter(|(_, t, ..)| t.kind == Kind::Forward)
            .map(|(_, t, ..)| (t.name.to_string(), t.pid, t.source))
            .collect();
        // Their max_runtime deadlines go with them (the timers here do
        // not cross the exec, and the next image does not know them).
        let cutoffs: Vec<_> = (drained.iter())
            .filter_map(|(id, t, ..)| Some((t.runtime_timer?.at(), id)))
            .collect();
        let mut keep = drained.fds();
        // The syslog socket, if summond logs there: the drainer's lines
        // (its end, its errors) go where summond's go.
        keep.extend(crate::logging::fds());
        // SAFETY: summond is one thread; the child runs only the relay
        // and exits with _exit.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => drain(drained, cutoffs, &keep),
            Ok(ForkResult::Parent { child }) => {
                info!(event = "upgrade";
                    "upgrade: {} TLS connections go on in drainer pid {child}", drained.len());
                // Its copies of the fds close here; they are the drainer's.
                drop(drained);
                self.drainers.push(Drainer { pid: child, relays });
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

    /// A reaped pid that was a drainer: its connections are no longer
    /// counted. False if it was not one.
    pub(super) fn drainer_exited(&mut self, pid: Pid) -> bool {
        let Some(at) = self.drainers.iter().position(|d| d.pid == pid) else {
            return false;
        };
        let d = self.drainers.swap_remove(at);
        info!("drainer pid {pid} ended (its TLS connections from before an upgrade)");
        for (name, backend, source) in d.relays {
            self.count_drained(&name, backend, source, false);
        }
        let now = Instant::now();
        for idx in 0..self.services.len() {
            self.sync_service(idx, now);
        }
        true
    }

    /// The drainers, for the next image.
    pub(super) fn drainers_state(&self) -> Vec<DrainerState> {
        (self.drainers.iter())
            .map(|d| DrainerState {
                pid: d.pid.as_raw(),
                relays: (d.relays.iter())
                    .map(|(n, p, s)| (n.clone(), p.as_raw(), *s))
                    .collect(),
            })
            .collect()
    }

    /// The drainers an earlier image forked: this image's to reap.
    /// Returns their forward connections, for forward mode to count open
    /// (`resume_forwarding`, before it stops idle backends).
    pub(super) fn resume_drainers(
        &mut self,
        handed: Vec<DrainerState>,
    ) -> Vec<(String, Pid, Option<SourceKey>)> {
        let mut all = Vec::new();
        for d in handed {
            let relays: Vec<_> = (d.relays.into_iter())
                .map(|(n, p, s)| (n, Pid::from_raw(p), s))
                .collect();
            all.extend(relays.iter().cloned());
            self.drainers.push(Drainer {
                pid: Pid::from_raw(d.pid),
                relays,
            });
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

/// The drainer's life: default signals (SIGTERM ends it), SIGTERM if
/// summond itself dies, only the connections' fds (and stdio) kept, the
/// relay until the last connection ends.
fn drain(drained: Relays<Relayed>, cutoffs: Vec<(Instant, RelayId)>, keep: &[RawFd]) -> ! {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: plain prctl.
    unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM) };
    crate::logging::set_drainer(std::process::id());
    close_all_but(keep);
    let n = drained.len();
    let cut = |t: &Relayed| {
        info!(event = "max_runtime", service = &*t.name;
            "{}: relayed {} ran past max_runtime: closed", t.name, t.peer);
    };
    let code = match drained.drain_alone(cutoffs, cut) {
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
