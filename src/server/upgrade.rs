//! Live binary upgrade, the server's side (SPEC "Living in the system"):
//! on SIGUSR2 the binary at summond's path is first run with `--check`
//! against the config (as a child, watched like any other, so the loop
//! never waits); if that passes, every listening socket, the child table,
//! kept connections and the counters go into an `upgrade::State` and the
//! binary is executed in place. The new image (or the old one, when the
//! new one could not start) rebuilds the same server from that state in
//! `resume`, so no socket is ever closed and every child is still reaped.
//!
//! Each table makes its own part of the state (`to_state`: the socket
//! table, the endpoints, the child table, the service table, the internal
//! services, the kept clients) and takes it back (`resume`, or
//! `sockets::Carried` for a listener). Here are the check-and-exec
//! sequence, `handover_state` (the parts, listed), and `resume_tables`,
//! the one sequence where a part names another: a child's or a
//! connection's service by name, the sockets a pass-mode child holds, the
//! timers a carried hold sets.

use rustc_hash::FxHashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::sockets::Carried;
use super::timers::{Timer, TimerKey};
use super::Server;
use crate::config::Config;
use crate::stats::ExitText;
use crate::upgrade::{self, ChildState, ListenerState, State, StoppingState};

/// How long the new binary's `--check` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// What of the check's output goes into the error.
const CHECK_OUTPUT_LIMIT: usize = 4096;

/// Upgrades of this run: the check under way, and what happened so far
/// (for status, so `summond upgrade` can tell when its upgrade is done).
#[derive(Default)]
pub(super) struct Upgrades {
    /// The binary summond was started from, executed on upgrade.
    exe: Option<PathBuf>,
    check: Option<Check>,
    /// The check passed: execute at the end of this turn of the loop,
    /// once every event of the turn (every reaped exit above all) is
    /// accounted for.
    exec_due: bool,
    pub done: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

/// The new binary checking the config, before it is executed.
struct Check {
    pid: Pid,
    /// Its stdout and stderr, non-blocking, watched by the loop: read as
    /// it comes, or a check writing more than the pipe holds (64 KiB of
    /// errors) would block until the timeout killed it.
    output: File,
    /// The first `CHECK_OUTPUT_LIMIT` bytes of it; the rest is read and
    /// dropped.
    collected: Vec<u8>,
    /// Its `CHECK_TIMEOUT`, cancelled when it exits first.
    timer: TimerKey,
}

impl Check {
    /// Read what the pipe holds now.
    fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        loop {
            match self.output.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let room = CHECK_OUTPUT_LIMIT.saturating_sub(self.collected.len());
                    self.collected.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// Start `exe` checking `config` (`--check`, or `--version` for a run
/// with no config file), its stdout and stderr into one non-blocking
/// pipe: its pid and the pipe's reading end, or why not. Reaped by the
/// loop like every child.
fn run_check(exe: &std::path::Path, config: &Config) -> Result<(Pid, File), String> {
    let mut cmd = Command::new(exe);
    if config.reloadable {
        cmd.arg("--check").arg("-c").arg(&config.path);
    } else {
        cmd.arg("--version");
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let write2 = write
        .try_clone()
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2));
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    // The handle is not needed (dropping it neither waits nor kills).
    let pid = Pid::from_raw(child.id() as i32);
    drop(cmd);
    let output = File::from(read);
    let _ = nix::fcntl::fcntl(
        &output,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    Ok((pid, output))
}

impl Upgrades {
    pub fn new() -> Upgrades {
        // Resolved now: /proc/self/exe names the running file, which a
        // package upgrade replaces at this same path.
        let exe = std::fs::read_link("/proc/self/exe")
            .ok()
            .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
        Upgrades {
            exe,
            ..Upgrades::default()
        }
    }

    pub fn running(&self) -> bool {
        self.check.is_some()
    }

    /// Count and log the upgrade: done, or failed with the new image's
    /// reason (`returning`) and this one serving on with `children`.
    fn count(&mut self, returning: Option<String>, from: &str, children: usize, services: usize) {
        match returning {
            Some(why) => {
                self.failed += 1;
                error!(event = "upgrade_failed";
                    "upgrade failed: the new binary could not start ({why}); \
                     summond {} serves on with {children} children",
                    env!("CARGO_PKG_VERSION")
                );
                self.last_error = Some(why);
            }
            None => {
                self.done += 1;
                info!(event = "upgraded";
                    "upgraded in place from summond {from} to {}: {} services, {children} children",
                    env!("CARGO_PKG_VERSION"),
                    services
                );
            }
        }
    }

    /// The previous image's binary and counts, taken from its state.
    fn resume_counts(&mut self, state: &mut State) {
        if state.exe.is_some() {
            self.exe = state.exe.take();
        }
        self.done = state.upgrades;
        self.failed = state.failures;
        self.last_error = state.last_error.take();
    }
}

impl Server {
    /// SIGUSR2: check the binary at summond's path, then execute it.
    pub(super) fn start_upgrade(&mut self) {
        if let Some(check) = &self.upgrades.check {
            warn!(event = "upgrade";
                "SIGUSR2 received while an upgrade is running (checking pid {}); ignoring it",
                check.pid
            );
            return;
        }
        let Some(exe) = self.upgrades.exe.clone() else {
            self.upgrade_failed("the path of summond's binary is unknown".into());
            return;
        };
        let (pid, output) = match run_check(&exe, &self.config) {
            Ok(started) => started,
            Err(why) => return self.upgrade_failed(why),
        };
        info!(event = "upgrade";
            "SIGUSR2 received: upgrading; checking {} first (pid {pid})",
            exe.display()
        );
        if let Err(e) = self.poller.registry().register(
            &mut SourceFd(&output.as_raw_fd()),
            super::poller::UPGRADE_CHECK,
            Interest::READABLE,
        ) {
            // Read at its exit only: enough for a short report.
            warn!("upgrade: cannot watch the check's output: {e}");
        }
        let timer = self
            .timers
            .add(Instant::now() + CHECK_TIMEOUT, Timer::UpgradeCheck(pid));
        self.upgrades.check = Some(Check {
            pid,
            output,
            collected: Vec::new(),
            timer,
        });
    }

    /// Is `pid` the upgrade's check? Then its exit decides the upgrade.
    /// The pid of the `--check` child, while it runs.
    pub(super) fn upgrade_check_pid(&self) -> Option<Pid> {
        self.upgrades.check.as_ref().map(|c| c.pid)
    }

    pub(super) fn upgrade_check_exited(&mut self, pid: Pid, status: &WaitStatus) -> bool {
        if self.upgrades.check.as_ref().map(|c| c.pid) != Some(pid) {
            return false;
        }
        let Some(mut check) = self.upgrades.check.take() else {
            return false;
        };
        self.timers.cancel(check.timer);
        let _ = self
            .poller
            .registry()
            .deregister(&mut SourceFd(&check.output.as_raw_fd()));
        let exe = self.upgrades.exe.clone().unwrap_or_default();
        if matches!(status, WaitStatus::Exited(_, 0)) {
            self.upgrades.exec_due = true;
            return true;
        }
        // The child is gone: what it wrote last is in the pipe.
        check.drain();
        let out = String::from_utf8_lossy(&check.collected);
        let what = ExitText(status);
        let mut why = format!("{} --check {what}", exe.display());
        if !out.trim().is_empty() {
            why.push_str(": ");
            why.push_str(out.trim());
        }
        self.upgrade_failed(why);
        true
    }

    /// The check wrote something: keep the start of it, so it never
    /// blocks on a full pipe.
    pub(super) fn read_check_output(&mut self) {
        if let Some(check) = self.upgrades.check.as_mut() {
            check.drain();
        }
    }

    /// The check ran past its time: kill it; its exit fails the upgrade.
    pub(super) fn upgrade_check_overdue(&mut self, pid: Pid) {
        if self.upgrades.check.as_ref().map(|c| c.pid) == Some(pid) {
            warn!(event = "upgrade";
                "upgrade: the new binary's check (pid {pid}) is still running after {}s; killing it",
                CHECK_TIMEOUT.as_secs()
            );
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    fn upgrade_failed(&mut self, why: String) {
        error!(event = "upgrade_failed"; "upgrade failed, still serving: {why}");
        self.upgrades.failed += 1;
        self.upgrades.last_error = Some(why);
    }

    /// The end of a turn of the loop: execute the new binary if its check
    /// passed.
    pub(super) fn upgrade_if_due(&mut self) {
        if std::mem::take(&mut self.upgrades.exec_due) {
            let exe = self.upgrades.exe.clone().unwrap_or_default();
            self.exec_upgrade(&exe);
        }
    }

    /// Hand everything over and execute `exe` in place. Returns only if the
    /// exec failed, with every socket still served.
    fn exec_upgrade(&mut self, exe: &std::path::Path) {
        // Exits that happened since the signal was read: a child reaped
        // here is not handed over, one exiting later is the next image's.
        self.reap_children();
        // Without the running config in the state, a new image that cannot
        // start would send the old one back to a file that may fail too,
        // leaving no summond: no upgrade then.
        let running = Config {
            services: self.services.iter().map(|s| s.spec.clone()).collect(),
            ..self.config.clone()
        };
        // The TLS connections cannot cross the exec: a drainer keeps them.
        self.fork_drainer();
        let mut state = match serde_json::to_string(&running) {
            Ok(config) => {
                let mut state = self.handover_state(config);
                state.format = state.lowest_format();
                state
            }
            Err(e) => {
                self.upgrade_failed(format!(
                    "cannot write the running config into the upgrade state: {e}"
                ));
                return;
            }
        };
        info!(event = "upgrade";
            "upgrade: executing {} in place ({} sockets, {} children handed over; state format {})",
            exe.display(),
            state.listeners.len(),
            state.children.len(),
            state.format
        );
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::notify::monotonic_usec()
        ));
        // A reload loading now goes with this image (the new one reads
        // the config itself); if the exec fails, it starts again.
        let was_loading = self.reloads.load.is_some();
        state.reload_pending = was_loading;
        self.cancel_config_load();
        // Repeats of a refusal gathered in the open interval are this
        // image's to write: the next one starts an interval of its own
        // and would never say them.
        if let Some(end) = self.services.refusal_deadline() {
            self.log_refusal_summary(end);
        }
        let err = upgrade::exec_new(exe, &state);
        self.upgrade_failed(format!("cannot execute {}: {err}", exe.display()));
        self.notify(&format!("READY=1\n{}", self.status_line()));
        if was_loading {
            self.reload("SIGHUP received before the upgrade");
        }
    }

    /// Everything the next image needs to serve on as this one does.
    /// `config`: the running config, as JSON.
    fn handover_state(&self, config: String) -> State {
        let listeners = (self.sockets.to_state())
            .chain(self.endpoints.to_state())
            .collect();
        let now = Instant::now();
        let forward = self.forward_state(now);
        let children = self.children.to_state(now, |id| {
            self.services
                .index_of(id)
                .map(|i| self.services[i].spec.name.clone())
        });
        State {
            // Lowered by the caller to what the state needs.
            format: upgrade::FORMAT,
            version: env!("CARGO_PKG_VERSION").into(),
            argv: self
                .origin
                .opts
                .argv
                .clone()
                .unwrap_or_else(upgrade::own_argv),
            exe: self.upgrades.exe.clone(),
            upgrades: self.upgrades.done,
            failures: self.upgrades.failed,
            last_error: self.upgrades.last_error.clone(),
            reload_pending: false,
            detached: self.origin.opts.detached,
            child_nofile: self
                .origin
                .opts
                .child_nofile
                .map(|l| (l.rlim_cur, l.rlim_max)),
            pidfile: self.origin.opts.pidfile.clone(),
            listeners,
            children,
            pending: self.shortage.to_state(),
            backoff_ms: self.shortage.episode_ms(),
            internal: self.internal.to_state(now, |id| self.services.name_of(id)),
            front: self.front_state(now),
            config: Some(config),
            stats: self.services.stats_state(),
            paused: self.services.paused_names(),
            stopping_groups: self.children.stopping_state(now),
            limits: self
                .services
                .limits_state(now, |id| self.internal.datagrams.answers_state(id, now)),
            handed_over_at_ns: upgrade::monotonic_ns(now),
            backends: forward.backends,
            relays: forward.relays,
            unready_backends: forward.unready,
            waiting: forward.waiting,
            drainers: self.drainers_state(),
        }
    }

    /// Serve on from what the previous image handed over. Its listeners
    /// were adopted by `new` (as duplicates); the originals close here.
    pub fn resume(&mut self, incoming: upgrade::Incoming) {
        let returning = incoming.returning().map(str::to_string);
        let mut state = incoming.done();
        let reload_again = returning.is_some() && state.reload_pending;
        let now = Instant::now();
        // What the state carries is measured from the hand-over, which was
        // some time ago (the exec, the config load, perhaps a new image
        // that could not start): from there, not from now, or every carried
        // time would lose that gap (a max_runtime deadline, a rate's next
        // token, a crash hold would come late; ages would read short).
        let handed = state
            .handed_over_at_ns
            .and_then(upgrade::instant_of)
            .map_or(now, |t| t.min(now));
        let children = state.children.len();
        if returning.is_some() {
            if let Some(parts) = state.beyond_format_1() {
                // What an older image would have dropped: still here.
                error!(event = "upgrade_failed";
                    "upgrade: the new binary was handed state format {} ({parts}); \
                     this image keeps them",
                    state.format
                );
            }
        }
        let version = std::mem::take(&mut state.version);
        self.upgrades.resume_counts(&mut state);
        self.resume_tables(state, handed);
        let services = self.services.len();
        self.upgrades.count(returning, &version, children, services);
        self.serve_on_resumed(now);
        // Back after a new image that could not start: the reload that
        // was loading when this image handed over went with it.
        if reload_again {
            info!("loading the config again: a reload was running when the upgrade began");
            self.reload("SIGHUP received before the upgrade");
        }
    }

    /// Each table takes its part of `state`, its times measured from
    /// `handed`; what a part names of another (a service by name, the
    /// sockets a child holds, the timers a hold sets) is found here.
    fn resume_tables(&mut self, state: State, handed: Instant) {
        self.resume_listeners(state.listeners);
        // Services by name, once: children, connections and counters name
        // theirs (10,000 of each would otherwise be searched one by one).
        let index = self.services.by_name();
        self.resume_children(state.children, state.stopping_groups, &index, handed);
        self.shortage.resume(state.pending, state.backoff_ms);
        let Server {
            internal,
            services,
            poller,
            ..
        } = self;
        internal.resume(state.internal, handed, poller, |name| {
            match index.get(name) {
                Some(&i) => (services[i].id, Some(services[i].spec.idle_timeout)),
                None => (services.new_id(), None),
            }
        });
        self.resume_front(state.front, &index, handed);
        let forward = super::forward::Handed {
            backends: state.backends,
            unready: state.unready_backends,
            relays: state.relays,
            waiting: state.waiting,
            drained: self.resume_drainers(state.drainers),
        };
        self.resume_forwarding(forward, &index, handed);
        self.services.resume_stats(state.stats, &index);
        self.services.resume_paused(&state.paused);
        for (id, resumed, answers) in self.services.resume_limits(state.limits, &index, handed) {
            self.timers.resume_limits(id, &resumed);
            if let Some(answers) = answers {
                self.internal.datagrams.resume_answers(id, answers, handed);
            }
        }
    }

    /// Watch what may be watched now, and take up what no event would
    /// wake the loop for.
    fn serve_on_resumed(&mut self, now: Instant) {
        self.sync_all(now);
        self.unpark(now);
        // Connections kept through a back-off: the back-off was this
        // image's predecessor's, and nothing here would wake the loop for
        // them. If fds or processes are still short, a new one starts.
        self.retry_pending(now);
        // A child that exited during the exec: its SIGCHLD is pending and
        // the signalfd reports it, but reaping now costs nothing.
        self.reap_children();
    }

    /// The listening sockets the state names, each taken over by its
    /// listener in the socket table or the endpoints (which `new` opened
    /// by adopting a duplicate); the original fds close.
    fn resume_listeners(&mut self, listeners: Vec<ListenerState>) {
        for carried in listeners.into_iter().filter_map(Carried::take) {
            let addr = carried.addr.clone();
            let found = match self.sockets.get_mut(&addr) {
                Some(sock) => {
                    let svc = &self.services[sock.service];
                    Some((&mut sock.listener, svc.spec.socket, svc.spec.name.as_str()))
                }
                None => self.endpoints.listener_mut(&addr),
            };
            let Some((listener, wanted, owner)) = found else {
                if carried.forsake() {
                    debug!("{addr}: no longer configured; removing its socket file");
                }
                continue;
            };
            if let Err(e) = carried.take_over(listener, &wanted) {
                error!("{owner}: {addr}: {e}");
            }
        }
    }

    /// The children and the process groups `max_runtime` is stopping,
    /// into the child table (each child under its service by name, or an
    /// identity of its own if it is gone); a pass-mode child's sockets
    /// are lent to it again.
    fn resume_children(
        &mut self,
        children: Vec<ChildState>,
        stopping: Vec<StoppingState>,
        index: &FxHashMap<String, usize>,
        handed: Instant,
    ) {
        let Server {
            children: table,
            services,
            timers,
            sockets,
            ..
        } = self;
        let resumed = table.resume(children, stopping, handed, timers, |name| {
            let id = services.id_by_name(name, index);
            let max_runtime = services
                .index_of(id)
                .and_then(|i| services[i].spec.max_runtime);
            (id, max_runtime)
        });
        for g in resumed.reaped {
            debug!(
                "{}: pid {} was reaped before the upgrade; no SIGKILL to its process group",
                g.name, g.pgid
            );
        }
        for pid in resumed.lending {
            if let Some(child) = table.get(&pid) {
                sockets.lend(child.held_sockets.iter().map(|h| &h.addr), pid);
            }
        }
        for (pid, notify) in resumed.notify {
            self.resume_child_notify(pid, notify, handed);
        }
    }
}
