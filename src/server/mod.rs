//! The event loop and the decisions across its parts: one `Server` holds
//! the socket table (`sockets.rs`), the child table (`children.rs`), the
//! service table (`services.rs`, which also counts every refusal) and the
//! timers (`timers.rs`), and is the one place that decides across them
//! and logs per-event outcomes; the tables never call back up. The
//! control socket, the metrics listener and their clients are one more
//! owner (`endpoints.rs`), handed a snapshot or an answer to answer with
//! (the requests other than status are `requests.rs`); so are what
//! the loop waits on (`poller.rs`: the poll set, the signalfd, what each
//! token stands for), what starting a child takes (`launcher.rs`), where
//! listening sockets come from (`origin.rs`), the internal services'
//! connections and datagrams (`internal/`, handed the poll set and a
//! service) and a reload's load (`reload.rs`). Here are the loop,
//! watching, status, reload and stop; a client's way in is
//! `connection.rs`, a child's way out `exit.rs`, and a live upgrade
//! `upgrade.rs` (the check, the exec, and the one sequence that has each
//! table take back its part). Sockets are built by `listener.rs`,
//! children by `spawn/`, counting rules by `limits.rs`.
//!
//! The path of a connection (accept mode), each step a function:
//!
//! 1. `run`: epoll reports the listener's token readable (`dispatch`);
//!    `on_listener_ready` (connection.rs) finds its socket and service.
//! 2. The gate over all services (`gate_is_open`: `max_children`, the
//!    resource back-off): shut, the listener is parked (`park`) and its
//!    clients wait in the backlog until `unpark`.
//! 3. `accept_connections`: accepts up to `ACCEPT_BUDGET` (a `tls`
//!    service's cost `TLS_ACCEPT_COST` each, and `TLS_TURN_ACCEPTS`
//!    of them a turn over all listeners) while the gate
//!    and the service's own limits (`service_may_spawn` →
//!    `ServiceRuntime::may_spawn`: `max_instances`, then `may_start`:
//!    crash hold, `rate`) allow; clients left over are queued for the
//!    next turn (`SocketTable::queue_ready`, `serve_ready`).
//!    A service with `proxy_protocol` goes through `start_front` first
//!    (connection.rs): a peer outside `proxy_from` is refused unread, and
//!    the PROXY header is read exactly, at once or from the front table
//!    (`front.rs`: its own tokens, a 5 s timer each, `on_front_ready`);
//!    the header's client goes on to step 4.
//! 4. `start_connection`: admission (access rules, `max_per_source`,
//!    `per_source_rate`); a refusal is counted by `ServiceTable::refuse`
//!    and logged (or left to the summary) by `refuse`.
//! 5. `launch_connection`: the banner, the child's fds and variables into
//!    the reused scratch buffers (`spawn_for_client`); an internal service
//!    is served in the loop instead (`start_internal` → `Internals::open`,
//!    `internal/`); a `tls` service's client has its handshake in the
//!    front table first (`start_tls`, tls.rs; `front.rs`'s `Work`, after
//!    the PROXY header if there was one), and its child, started when
//!    that is done (`handshake_done`), gets a socket pair's end that
//!    the relay table (`relays.rs`) joins to the client's TLS session.
//! 6. `spawn_child`: clone and exec (`Launcher::spawn`), the child into the
//!    child table, a `rate` token spent (`take_rate_token`), its
//!    `max_runtime` timer set. Out of fds or processes, the client is kept
//!    (`Shortage`) and `retry_pending` starts it after the back-off.
//! 7. `sync_service`: the service's listeners watched or not as its limits
//!    now say.
//! 8. SIGCHLD: `handle_signals` → `reap_children` → `reaped` →
//!    `child_exited` (exit.rs): the child table gives the `Exit`, the
//!    socket table gives back what it held, the service table records the
//!    outcome, the exit is logged, and the listeners are re-armed
//!    (`sync_service`, `unpark`).
//!
//! In pass mode (`accept = false`) step 3 is `start_pass_child`: the
//! listening sockets themselves are lent to the child
//! (`SocketTable::lend`) and unwatched until it exits and gives them back.
//!
//! Listener watching is reconciled, not toggled: `sync_service` computes
//! whether each socket should be in the poll set (not held by a pass-mode
//! child, and its service may start a child) and registers or deregisters
//! to match. mio is edge-triggered, so a listener that was left with
//! queued clients must be re-registered to wake us again; epoll reports a
//! ready fd at registration, which is exactly that wake-up.

use rustc_hash::FxHashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socket2::Socket;

use crate::addr::ListenAddr;
use crate::config::{self, Config, Host, ServiceSpec};
use crate::control::{RefusedSource, ServiceStatus, Status};
use crate::listener::{ListenError, ListenOptions, Listener};
use crate::metrics as prom;
use crate::notify::Notifier;
use crate::refusals::REFUSAL_INTERVAL;
use crate::signals;
use crate::spawn::Stage;
use crate::stats::Pause;
use crate::status_page;

mod children;
mod connection;
mod drained;
mod drainer;
mod endpoints;
mod exit;
mod forward;
mod front;
mod internal;
mod launcher;
mod notify;
mod origin;
mod poller;
mod ready;
mod relays;
mod reload;
mod requests;
mod services;
mod sockets;
mod timers;
mod tls;
mod upgrade;

use children::{for_peer, Child, ChildTable, StoppingGroup};
use connection::Shortage;
use endpoints::{Accepted, Endpoints, Loop};
use forward::Forwarding;
use front::FrontTable;
use internal::{InternalConn, Internals};
use launcher::Launcher;
use origin::Origin;
pub use origin::RunOptions;
use poller::{Poller, TokenKind, CONFIG_LOAD, CONTROL, METRICS, SIGNALS, UPGRADE_CHECK};
use reload::{ConfigLoad, Reloads};
use services::{ServiceId, ServiceRuntime, ServiceTable};
use sockets::{SocketPlan, SocketTable};
use timers::{Timer, Timers, KILL_AFTER};
use upgrade::Upgrades;

/// Control clients accepted (or refused) per wake-up before the loop
/// turns to other sources: a stream of connects to a socket others can
/// reach must not keep it from serving.
const CONTROL_ACCEPT_BUDGET: usize = 16;
/// What a config does to the metrics listener or the control socket.
enum ListenerChange {
    /// The same address: the listener stays.
    Keep,
    /// A new address, opened already: swapped in at the commit.
    Open(Listener),
    /// No longer configured: closed at the commit.
    Close,
}

/// Startup failures (exit 1). Anything after startup is logged, not returned.
#[derive(Debug)]
pub enum ServerError {
    Setup(&'static str, io::Error),
    Bind {
        service: String,
        addr: ListenAddr,
        err: ListenError,
    },
    Control(PathBuf, ListenError),
    Metrics(ListenAddr, ListenError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Setup(what, e) => write!(f, "{what}: {e}"),
            ServerError::Bind { service, addr, err } => {
                write!(f, "bind {addr} for service \"{service}\": {err}")
            }
            ServerError::Control(path, err) => {
                write!(f, "control socket {}: {err}", path.display())
            }
            ServerError::Metrics(addr, err) => write!(f, "metrics {addr}: {err}"),
        }
    }
}

impl std::error::Error for ServerError {}

pub struct Server {
    /// The poll set, the signalfd in it, and what each token stands for.
    poller: Poller,
    /// The running config's path and `[daemon]` keys; each service's spec
    /// is in the service table.
    config: Config,
    /// Each service's runtime, and the refusals lately made.
    services: ServiceTable,
    sockets: SocketTable,
    children: ChildTable,
    /// What starting a child takes besides its image.
    launcher: Launcher,
    /// The options startup gave, and the sockets handed over.
    origin: Origin,
    /// Out of fds or processes: the back-off over all listeners, and the
    /// clients kept through it.
    shortage: Shortage,
    /// The deadlines: crash holds, `rate` tokens, `max_runtime`, the
    /// helpers' and the endpoints' clients' times.
    timers: Timers,
    /// The internal services' TCP clients and what their UDP ones may
    /// be answered.
    internal: Internals,
    /// Accepted connections whose PROXY header or TLS handshake is
    /// awaited.
    front: FrontTable,
    /// Every relayed connection: forward mode's, and TLS clients past
    /// their handshake (`relays.rs`).
    relays: crate::relay::Relays<relays::Relayed>,
    /// Processes serving the TLS connections of before an upgrade.
    drainers: Vec<drainer::Drainer>,
    /// The service manager (NOTIFY_SOCKET), if summond runs under one.
    notifier: Notifier,
    /// The control socket, the metrics listener and their clients.
    endpoints: Endpoints,
    /// The upgrade check under way, and the upgrades so far.
    upgrades: Upgrades,
    /// SIGTERM or SIGINT came: the loop ends after this turn.
    stopping: bool,
    /// The config load in flight, and whether another is owed.
    reloads: Reloads,
    /// Forward mode: the backends and the relayed connections.
    forward: Forwarding,
    /// What is left this turn of `TLS_TURN_ACCEPTS`.
    tls_accepts_left: usize,
}

impl Server {
    /// Open every listener of `config` and get ready to serve; a socket
    /// that cannot be bound is an error (exit 1). `handed` are the sockets
    /// passed with LISTEN_FDS: adopted for the `listen` addresses they
    /// match, the others closed.
    pub fn new(
        config: Config,
        opts: RunOptions,
        notifier: Notifier,
        handed: Vec<Socket>,
    ) -> Result<Server, ServerError> {
        let poller = Poller::open().map_err(|(what, e)| ServerError::Setup(what, e))?;
        let launcher = Launcher::new(opts.fd_base, opts.child_nofile)
            .map_err(|(what, e)| ServerError::Setup(what, e))?;
        let mut server = Server {
            poller,
            config: Config {
                path: config.path.clone(),
                daemon: config.daemon.clone(),
                services: Vec::new(),
                reloadable: config.reloadable,
            },
            services: ServiceTable::default(),
            sockets: SocketTable::default(),
            children: ChildTable::default(),
            launcher,
            origin: Origin::new(opts, handed),
            shortage: Shortage::default(),
            timers: Timers::default(),
            internal: Internals::default(),
            front: FrontTable::default(),
            relays: Default::default(),
            drainers: Vec::new(),
            notifier,
            endpoints: Endpoints::default(),
            upgrades: Upgrades::new(),
            stopping: false,
            reloads: Reloads::default(),
            forward: Forwarding::default(),
            tls_accepts_left: connection::TLS_TURN_ACCEPTS,
        };
        server.apply_config(config)?;
        server.origin.close_unclaimed();
        Ok(server)
    }

    /// Serve until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(256);
        // After an upgrade's hand-over too: only what is missing starts.
        self.start_all_eager();
        self.announce_start();
        while !self.stopping {
            if let Err(e) = self.poller.poll.poll(&mut events, self.poll_timeout()) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Setup("epoll_wait", e));
            }
            for event in events.iter() {
                self.dispatch(event);
            }
            self.end_turn();
        }
        self.shutdown();
        Ok(())
    }

    /// Serving begins: logged, told to the service manager (with the
    /// watchdog's first ping set), and what starting up left resident
    /// given back.
    fn announce_start(&mut self) {
        info!(event = "start";
            "summond {} serving {} services from {}",
            env!("CARGO_PKG_VERSION"),
            self.services.len(),
            self.config.path.display()
        );
        // Every socket is bound by now: clients connecting from here on
        // wait in a backlog at worst.
        self.notify(&format!("READY=1\n{}", self.status_line()));
        if let Some(every) = self.notifier.watchdog_interval() {
            self.timers.add(Instant::now() + every, Timer::Watchdog);
        }
        // What starting up left resident, serving does not need.
        crate::footprint::shed();
    }

    /// How long the next poll may wait: until the next deadline, or not
    /// at all while listeners, internal connections or endpoints have
    /// work left over from the last turn (served again right after a
    /// look at everything else).
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.sockets.has_ready()
            && !self.internal.conns.has_ready()
            && !self.relays.has_ready()
            && !self.endpoints.accept_more_scrapers
            && !self.endpoints.accept_more_control
        {
            self.next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        }
    }

    /// One readiness event, to the function its token names.
    fn dispatch(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if crate::relay::owns(token) {
            return self.on_relay_event(event);
        }
        match token {
            SIGNALS => self.handle_signals(),
            CONTROL => self.accept_control_clients(),
            METRICS => self.accept_scrapers(),
            CONFIG_LOAD => self.on_config_load_output(),
            UPGRADE_CHECK => self.read_check_output(),
            token => match self.poller.tokens.get(&token).cloned() {
                Some(TokenKind::Listener(addr)) => self.on_listener_ready(&addr),
                Some(TokenKind::ControlClient) => {
                    let (endpoints, mut lp) = self.endpoints();
                    if let Some(request) = endpoints.on_control_ready(&mut lp, token) {
                        self.handle_request(token, request);
                    }
                }
                Some(TokenKind::Internal) => self.on_internal_ready(token),
                Some(TokenKind::Front) => self.on_front_ready(token),
                Some(TokenKind::Scrape) => self.on_scrape_ready(token),
                Some(TokenKind::Probe(id)) => self.on_probe_ready(token, id),
                Some(TokenKind::Notify(id)) => self.on_notify_ready(id),
                Some(TokenKind::ChildNotify(pid)) => self.on_child_notify(pid),
                Some(TokenKind::DrainerEnds(pid)) => self.on_drainer_ends(pid),
                // A source removed earlier in this batch.
                None => {}
            },
        }
    }

    /// After the events of a turn: the work left over from the last one,
    /// the timers due, the kept connections, an upgrade whose check
    /// passed.
    fn end_turn(&mut self) {
        // The listeners left over are served first with the next turn's
        // TLS accepts, before the next poll's.
        self.tls_accepts_left = connection::TLS_TURN_ACCEPTS;
        self.serve_ready();
        self.serve_internal_ready();
        self.serve_relays_again();
        self.read_drainer_ends_again();
        if std::mem::take(&mut self.endpoints.accept_more_scrapers) {
            self.accept_scrapers();
        }
        if std::mem::take(&mut self.endpoints.accept_more_control) {
            self.accept_control_clients();
        }
        let now = Instant::now();
        self.run_timers(now);
        // Whatever held a kept connection back (the back-off, a crash
        // hold, a rate, max_instances, max_children) ends with an
        // event or a timer of this turn.
        self.retry_pending(now);
        self.upgrade_if_due();
    }

    /// The earliest deadline: the timer map's first, an internal
    /// connection's idle timeout, the resource back-off's or the refusal
    /// summary's end. Each owner keeps its earliest at hand (a map, a
    /// heap, one value), so an idle loop costs nothing per socket.
    fn next_deadline(&self) -> Option<Instant> {
        self.timers
            .next_deadline()
            .into_iter()
            .chain(self.internal.conns.next_deadline())
            .chain(self.relays.next_deadline())
            .chain(self.shortage.backoff.deadline())
            .chain(self.services.refusal_deadline())
            .min()
    }

    /// Re-arm what a timer that ran out was holding back.
    fn run_timers(&mut self, now: Instant) {
        self.close_idle_internal(now);
        self.expire_relays(now);
        if self.shortage.backoff.expire(now) {
            // Their clients queued while fds ran out: no new event comes
            // for them (edge-triggered), so accept them now, before a
            // retry that fails again starts the next pause.
            if self.endpoints.backoff_ended() {
                self.accept_control_clients();
            }
            self.retry_pending(now);
            self.unpark(now);
        }
        for timer in self.timers.take_due(now) {
            self.on_timer(timer, now);
        }
        self.log_refusal_summary(now);
    }

    /// A timer that ran out, to what it was holding back.
    fn on_timer(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::HoldEnds(id) => {
                if let Some(idx) = self.services.index_of(id) {
                    self.sync_service(idx, now);
                }
            }
            Timer::TokenBack(id) => {
                if let Some(idx) = self.services.index_of(id) {
                    self.services[idx].rate_timer = false;
                    self.sync_service(idx, now);
                }
            }
            Timer::RuntimeUp { pid, started_at } => {
                self.runtime_up(pid, started_at);
            }
            Timer::Kill { pid, started_at } => self.kill_overdue_group(pid, started_at),
            Timer::RestartKill { pid, started_at } => self.restart_overdue(pid, started_at),
            Timer::FrontDue(token) => self.front_late(token),
            Timer::ReadyTimeout { pid, started_at } => self.ready_timed_out(pid, started_at),
            Timer::ScrapeTimeout(token) => {
                let (endpoints, mut lp) = self.endpoints();
                endpoints.scrape_timed_out(&mut lp, token);
            }
            Timer::ControlTimeout(token) => {
                let (endpoints, mut lp) = self.endpoints();
                if endpoints.control_client_timed_out(&mut lp, token) {
                    self.handle_request(token, crate::control::Request::Status);
                }
            }
            Timer::UpgradeCheck(pid) => self.upgrade_check_overdue(pid),
            Timer::ConfigLoadSlow(pid) => self.config_load_slow(pid),
            Timer::ConfigLoadOverdue(pid) => self.config_load_overdue(pid),
            Timer::Probe { service, pid } => self.probe_due(service, pid),
            Timer::BacklogRetry { service, pid } => self.backlog_retry_due(service, pid),
            Timer::HeldDeadline(service) => self.held_deadline_due(service),
            Timer::StartTimeout { service, pid } => self.start_timed_out(service, pid),
            Timer::IdleStop { service, pid } => self.idle_due(service, pid),
            Timer::BackendKill { service, pid } => self.backend_kill_due(service, pid),
            Timer::RelayRuntime(id) => self.relay_runtime_up(id),
            Timer::Watchdog => {
                // From the loop itself: a wedged loop stops the pings.
                self.notify(&format!("WATCHDOG=1\n{}", self.status_line()));
                if let Some(every) = self.notifier.watchdog_interval() {
                    self.timers.add(now + every, Timer::Watchdog);
                }
            }
        }
    }

    /// The refusals not logged one by one in the interval that ended, as
    /// one line per service and client, and one for the rest.
    fn log_refusal_summary(&mut self, now: Instant) {
        if let Some(summary) = self.services.flush_refusals(now) {
            for ((id, client, why), n) in summary.repeats {
                let name = self.services.name_of(id);
                let client = client.map_or_else(|| "unknown peer".to_string(), |c| c.to_string());
                info!(
                    "{name}: refused {client} {n} more times in the last {}s ({why})",
                    REFUSAL_INTERVAL.as_secs()
                );
            }
            if summary.untracked > 0 {
                info!(
                    "refused {} more connections from other clients in the last {}s",
                    summary.untracked,
                    REFUSAL_INTERVAL.as_secs()
                );
            }
        }
    }

    /// Tell the service manager (if any); a lost datagram is not worth
    /// more than a debug line, and a run of them not more than one.
    fn notify(&self, message: &str) {
        if let Some(e) = self.notifier.send(message) {
            debug!(
                "NOTIFY_SOCKET: {e} (further failures are not logged until a message goes through)"
            );
        }
    }

    /// The `STATUS=` line: what a `systemctl status` reader wants first.
    fn status_line(&self) -> String {
        format!(
            "STATUS={} services, {} children",
            self.services.len(),
            self.children.len()
        )
    }

    /// `max_runtime` ran out for the child `pid` started at `started_at`
    /// (if it is still that child): SIGTERM its process group (the child
    /// leads its own session), log it, and keep the group to SIGKILL
    /// `KILL_AFTER` later.
    fn runtime_up(&mut self, pid: Pid, started_at: Instant) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        if child.started_at != started_at {
            return;
        }
        // It exited within its limit, its SIGCHLD not read yet: reaped as
        // any, not stopped (nor held until a SIGKILL).
        if signals::has_exited(pid) {
            return;
        }
        warn!(event = "max_runtime", service = &*child.name, pid = pid.as_raw();
            "{}: pid {pid}{} ran past max_runtime{}; SIGTERM to its process group, SIGKILL in {}s",
            child.name,
            for_peer(child.peer.as_ref()),
            self.runtime_limit(child),
            KILL_AFTER.as_secs()
        );
        // Whatever it does now, it was cut: its TLS client gets no
        // close_notify (said now: its reap may wait for the SIGKILL).
        if let Some(id) = child.relay {
            self.child_ended(id, false);
        }
        self.term_group(pid);
    }

    /// SIGTERM the process group of child `pid` (in the table) and keep
    /// the group to SIGKILL `KILL_AFTER` later.
    fn term_group(&mut self, pid: Pid) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        let started_at = child.started_at;
        if let Err(e) = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGTERM) {
            warn!("{}: cannot SIGTERM process group {pid}: {e}", child.name);
            return;
        }
        // From when the SIGTERM went, not from when this turn began: the
        // grace is never shorter than SPEC's.
        let kill_at = Instant::now() + KILL_AFTER;
        let group = StoppingGroup {
            started_at,
            name: child.name.clone(),
            peer: child.peer.clone(),
            timer: self.timers.add(kill_at, Timer::Kill { pid, started_at }),
            exited_at: None,
        };
        if let Some(old) = self.children.stopping.insert(pid, group) {
            self.timers.cancel(old.timer);
        }
    }

    /// " 5s": the `max_runtime` `child` was started with, for log lines
    /// (its own deadline: a reload or upgrade since may have changed the
    /// service's, which only the next child gets).
    fn runtime_limit(&self, child: &Child) -> String {
        child
            .runtime_timer
            .map(|k| k.at().saturating_duration_since(child.started_at))
            .map_or_else(String::new, |d| format!(" {}s", d.as_secs_f64()))
    }

    /// `KILL_AFTER` after the SIGTERM: SIGKILL the group, whether or not
    /// its leader is still running, then reap the leader if it exited.
    ///
    /// The group's id is the leader's pid, which the kernel does not give
    /// out again while any process has it as its pid, group or session id.
    /// The leader has not been reaped (`reap_children` holds it), so its
    /// zombie at least holds the id: the group is surely the one stopped,
    /// with whatever was forked into it since, and the SIGKILL cannot
    /// miss a member or reach a group that got the id later. Only then is
    /// the zombie reaped, its exit logged and counted.
    fn kill_overdue_group(&mut self, pgid: Pid, started_at: Instant) {
        if self
            .children
            .stopping
            .get(&pgid)
            .is_none_or(|g| g.started_at != started_at)
        {
            return;
        }
        let Some(group) = self.children.stopping.remove(&pgid) else {
            return;
        };
        let name = &*group.name;
        let who = for_peer(group.peer.as_ref());
        let exited = group.exited_at.is_some() || signals::has_exited(pgid);
        match kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGKILL) {
            // At stop (`kill_stopping_groups_now`), before it was due.
            Ok(()) if self.stopping => {
                info!(event = "max_runtime", service = name, pid = pgid.as_raw();
                    "{name}: pid {pgid}{who} {} after SIGTERM; summond is stopping: SIGKILL to its process group {:.3}s before it was due",
                    if exited { "exited" } else { "is still running" },
                    group.timer.at().saturating_duration_since(Instant::now()).as_secs_f64()
                );
            }
            // The zombie is one of the group (a signal to it is a no-op):
            // whether anything else was left is not known.
            Ok(()) if exited => {
                debug!(event = "max_runtime", service = name, pid = pgid.as_raw();
                    "{name}: pid {pgid}{who} exited after SIGTERM; SIGKILL to whatever is left of its process group"
                );
            }
            Ok(()) => {
                let limit = self
                    .children
                    .get(&pgid)
                    .map(|c| self.runtime_limit(c))
                    .unwrap_or_default();
                warn!(event = "max_runtime", service = name, pid = pgid.as_raw();
                    "{name}: pid {pgid}{who} ran past max_runtime{limit} and is still running {}s after SIGTERM; SIGKILL to its process group",
                    KILL_AFTER.as_secs()
                );
            }
            // Not while the leader is a child of ours, running or held.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => warn!("{name}: cannot SIGKILL process group {pgid}: {e}"),
        }
        if exited {
            let now = Instant::now();
            if let Some(status) = signals::reap_pid(pgid) {
                self.reaped(status, now, group.exited_at);
            }
            // Children that exited behind the held one in the kernel's
            // order, whose SIGCHLD came and went while it was held.
            self.reap_children();
        }
        // A leader still running dies of the SIGKILL and is reaped as any.
    }

    // ---- signals ------------------------------------------------------

    fn handle_signals(&mut self) {
        for sig in self.poller.signals.drain() {
            match sig {
                Signal::SIGCHLD => self.reap_children(),
                Signal::SIGTERM | Signal::SIGINT => {
                    info!(event = "stopping"; "{sig} received: stopping");
                    self.stopping = true;
                }
                Signal::SIGHUP => self.reload("SIGHUP received"),
                Signal::SIGUSR2 => self.start_upgrade(),
                _ => {}
            }
        }
    }

    // ---- watching listeners --------------------------------------------

    /// An internal service's TCP client counts as a child (SPEC), and so
    /// does a connection whose PROXY header is awaited (it becomes one).
    fn at_global_limit(&self) -> bool {
        self.children.len() + self.internal.conns.len() + self.front.len()
            >= self.config.daemon.max_children as usize
    }

    /// The gate over all services: below max_children, and not backing
    /// off after running out of fds or processes.
    fn gate_is_open(&self, now: Instant) -> bool {
        !self.at_global_limit() && !self.shortage.backoff.is_paused(now)
    }

    /// Service `idx` reads PROXY headers or does TLS handshakes, and the
    /// front table has no room:
    /// its listeners wait (only theirs: a balancer that fills the table
    /// must not hold back services that read no header).
    fn front_is_full_for(&self, idx: usize) -> bool {
        let spec = &self.services[idx].spec;
        (spec.proxy.is_some() || spec.tls.is_some()) && self.front.is_full()
    }

    /// May service `idx` start a child as far as its own limits go? (its
    /// max_instances, the crash hold)
    fn service_may_spawn(&self, idx: usize, now: Instant) -> bool {
        let svc = &self.services[idx];
        svc.may_spawn(self.active(svc.id), now) && self.forward.may_take(svc.id)
    }

    /// What service `id` has running: children, and for an internal
    /// service its open connections; connections whose PROXY header is
    /// awaited too.
    fn active(&self, id: ServiceId) -> u32 {
        self.children.active(id)
            + self.internal.conns.active(id)
            + self.front.active(id)
            + self.forward.active(id)
    }

    fn may_spawn(&self, idx: usize, now: Instant) -> bool {
        self.gate_is_open(now) && self.service_may_spawn(idx, now)
    }

    fn set_watched(&mut self, addr: &ListenAddr, want: bool) {
        if let Err(e) = self.sockets.set_watched(self.poller.registry(), addr, want) {
            let name = self
                .sockets
                .get(addr)
                .map_or("?", |s| self.services[s.service].spec.name.as_str());
            let what = if want { "watch" } else { "unwatch" };
            error!("{name}: cannot {what} {addr}: {e}");
        }
    }

    /// Make the poll set match what service `idx` may do now. The gate
    /// over all services is not consulted: a listener that turns readable
    /// while it is shut is parked then, so closing it costs nothing and
    /// opening it costs one registration per listener that had a client.
    /// Runs after every readiness event and child exit, so it touches
    /// only the sockets whose watching has to change, and allocates nothing.
    fn sync_service(&mut self, idx: usize, now: Instant) {
        let may = self.service_may_spawn(idx, now);
        let Server {
            services,
            sockets,
            poller,
            ..
        } = self;
        let spec = &services[idx].spec;
        for l in &spec.listen {
            let Some(s) = sockets.get(&l.addr) else {
                continue;
            };
            let want = may && !s.lent_out(spec.instances) && !s.parked;
            if s.watched == want {
                continue;
            }
            if let Err(e) = sockets.set_watched(poller.registry(), &l.addr, want) {
                let what = if want { "watch" } else { "unwatch" };
                error!("{}: cannot {what} {}: {e}", spec.name, l.addr);
            }
        }
    }

    /// `start = "eager"` services: start what each is missing.
    fn start_all_eager(&mut self) {
        let now = Instant::now();
        for idx in 0..self.services.len() {
            self.start_eager(idx, now);
        }
    }

    fn sync_all(&mut self, now: Instant) {
        for idx in 0..self.services.len() {
            self.sync_service(idx, now);
        }
    }

    /// The gate is shut and `addr` has clients: stop watching it (they
    /// wait in the backlog) until the gate opens.
    fn park(&mut self, addr: &ListenAddr) {
        self.set_watched(addr, false);
        self.sockets.park(addr);
    }

    /// The gate is open again: watch the parked listeners (epoll reports
    /// their waiting clients at registration).
    fn unpark(&mut self, now: Instant) {
        if !self.sockets.has_parked() || !self.gate_is_open(now) {
            return;
        }
        for addr in self.sockets.take_parked() {
            let Some(sock) = self.sockets.get(&addr) else {
                continue;
            };
            if self.front_is_full_for(sock.service) {
                // Parked on until a place in the front table is freed
                // (each freed place unparks).
                self.sockets.park(&addr);
                continue;
            }
            let instances = self.services[sock.service].spec.instances;
            let want = !sock.lent_out(instances) && self.service_may_spawn(sock.service, now);
            self.set_watched(&addr, want);
        }
    }

    /// Serve the listeners whose accept budget ran out last turn.
    fn serve_ready(&mut self) {
        for addr in self.sockets.take_ready() {
            self.on_listener_ready(&addr);
        }
    }

    // ---- internal services --------------------------------------------

    /// An internal service's TCP client is ready, or has work left.
    fn on_internal_ready(&mut self, token: Token) {
        if let Some(conn) = self.internal.serve(token, &mut self.poller, Instant::now()) {
            self.internal_closed(&conn);
        }
    }

    /// Serve the internal connections whose budget ran out last turn.
    fn serve_internal_ready(&mut self) {
        for token in self.internal.take_ready() {
            self.on_internal_ready(token);
        }
    }

    /// Close the internal connections idle for their service's
    /// `idle_timeout`.
    fn close_idle_internal(&mut self, now: Instant) {
        for token in self.internal.take_idle(now) {
            let Server {
                internal,
                poller,
                services,
                ..
            } = self;
            if let Some(conn) = internal.close_idle(token, poller, |id| services.name_of(id)) {
                self.internal_closed(&conn);
            }
        }
    }

    /// An internal connection was closed: a slot under its service's
    /// `max_instances` may have opened, and one under `max_children` for
    /// every service.
    fn internal_closed(&mut self, conn: &InternalConn) {
        let now = Instant::now();
        if let Some(idx) = self.services.index_of(conn.service) {
            debug!(
                "{}: internal:{} done for {}",
                self.services[idx].spec.name,
                conn.kind.name(),
                conn.peer
            );
            self.sync_service(idx, now);
        }
        self.unpark(now);
    }

    // ---- children ----------------------------------------------------

    /// The child never reached its program (it has exited with status
    /// 127 and is reaped as usual): log it once and count it.
    fn exec_failed(&mut self, pid: Pid, stage: Stage, errno: i32) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        let err = io::Error::from_raw_os_error(errno);
        let who = for_peer(child.peer.as_ref());
        let name = &*child.name;
        let idx = self.services.index_of(child.service);
        let program = idx
            .map(|i| self.services[i].spec.program.display().to_string())
            .unwrap_or_default();
        match stage {
            Stage::Exec => {
                error!(event = "exec_failed", service = name, pid = pid.as_raw();
                "{name}: exec {program}{who}: {err}")
            }
            _ => error!(event = "exec_failed", service = name, pid = pid.as_raw();
                "{name}: child {pid}{who} failed to {stage} before exec {program}: {err}"),
        }
        if let Some(i) = idx {
            self.count_spawn_failure(i);
        }
    }

    // ---- status -------------------------------------------------------

    /// A snapshot for `summond status`. `active` comes from the child
    /// table, whose counts change only with its entries.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let mut instances = self.instances();
        Status {
            pid: std::process::id(),
            config: self.config.path.display().to_string(),
            children: self.children.len() as u64,
            internal_clients: self.internal.conns.len() as u64,
            max_children: u64::from(self.config.daemon.max_children),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            upgrades: self.upgrades.done,
            upgrade_failures: self.upgrades.failed,
            last_upgrade_error: self.upgrades.last_error.clone(),
            upgrading: self.upgrades.running(),
            pending_timers: self.timers.len() as u64,
            drainers: self.drainer_pids().map(|p| p.as_raw() as u32).collect(),
            services: self
                .services
                .iter()
                .map(|svc| ServiceStatus {
                    name: svc.spec.name.clone(),
                    // A disabled service listens on none of its addresses.
                    addresses: match svc.spec.disabled {
                        true => Vec::new(),
                        false => svc.spec.listen.iter().map(|l| l.addr.to_string()).collect(),
                    },
                    mode: svc.spec.mode().to_string(),
                    active: u64::from(self.active(svc.id)),
                    served: svc.stats.served,
                    refused: svc.stats.refused_by.total(),
                    spawn_failures: svc.stats.spawn_failures,
                    last_exit: svc.stats.last_exit.clone(),
                    paused: self.pause(svc, now).map(|p| p.describe(now)),
                    top_refused: svc
                        .top_refused
                        .top(3)
                        .into_iter()
                        .map(|(k, n)| RefusedSource {
                            source: k.to_string(),
                            refused: n,
                        })
                        .collect(),
                    backend: self.backend_status(svc),
                    instances: instances.remove(&svc.id).unwrap_or_default(),
                    health_checks: svc.stats.health_checks,
                })
                .collect(),
        }
    }

    /// Why `svc` starts no child now, for status and metrics: its own
    /// pause, else the resource back-off over all services.
    fn pause(&self, svc: &ServiceRuntime, now: Instant) -> Option<Pause> {
        svc.may_start(now).err().or_else(|| {
            self.shortage
                .backoff
                .paused_until(now)
                .map(|until| Pause::Resources { until })
        })
    }

    /// The control and metrics endpoints, and what they are lent of the
    /// loop.
    fn endpoints(&mut self) -> (&mut Endpoints, Loop<'_>) {
        (
            &mut self.endpoints,
            Loop {
                registry: self.poller.poll.registry(),
                tokens: &mut self.poller.tokens,
                timers: &mut self.timers,
                resources: &mut self.shortage.backoff,
            },
        )
    }

    /// Accept the control socket's clients, each then watched for its
    /// request (`handle_request`).
    fn accept_control_clients(&mut self) {
        for _ in 0..CONTROL_ACCEPT_BUDGET {
            let (endpoints, mut lp) = self.endpoints();
            match endpoints.accept_control(&mut lp) {
                Accepted::Client | Accepted::Skipped => {}
                Accepted::Stop => return,
            }
        }
        // More may be queued: epoll reports them again only for new ones.
        self.endpoints.accept_more_control = true;
    }

    fn accept_scrapers(&mut self) {
        let (endpoints, mut lp) = self.endpoints();
        endpoints.accept_scrapers(&mut lp);
    }

    /// A scraper is ready; one that asked for a page (the metrics or the
    /// status page) is answered with one rendered for it.
    fn on_scrape_ready(&mut self, token: Token) {
        let (endpoints, mut lp) = self.endpoints();
        let response = match endpoints.on_scrape_ready(&mut lp, token) {
            Some(prom::Request::StatusPage) => {
                let now = Instant::now();
                let page = status_page::render(&self.service_figures(now), now);
                prom::response_with(200, status_page::CONTENT_TYPE, status_page::HEADERS, &page)
            }
            Some(_) => {
                let page = prom::render(
                    &self.service_figures(Instant::now()),
                    &prom::ProcessFigures::read(),
                );
                prom::response(200, &page)
            }
            None => return,
        };
        let (endpoints, mut lp) = self.endpoints();
        endpoints.answer_scrape(&mut lp, token, response);
    }

    /// Every service's figures now: what the metrics and the status page
    /// are rendered from.
    fn service_figures(&self, now: Instant) -> Vec<prom::ServiceFigures<'_>> {
        let mut ready: rustc_hash::FxHashMap<ServiceId, u64> = Default::default();
        for (_, c) in self.children.iter() {
            if c.notify.as_ref().is_some_and(|w| w.ready) {
                *ready.entry(c.service).or_default() += 1;
            }
        }
        self.services
            .iter()
            .map(|svc| prom::ServiceFigures {
                name: &svc.spec.name,
                mode: svc.spec.mode(),
                connections: svc.stats.served,
                children: u64::from(self.active(svc.id)),
                refused: svc.stats.refused_by,
                spawn_failures: svc.stats.spawn_failures,
                exits: svc.stats.exits,
                durations: svc.stats.durations.get(),
                paused: self.pause(svc, now),
                backend: self.backend_status(svc),
                last_exit: svc.stats.last_exit.as_deref(),
                health_checks: (svc.spec.proxy.is_some() || svc.spec.tls.is_some())
                    .then_some(svc.stats.health_checks),
                ready_children: (!svc.spec.accept && svc.spec.internal.is_none())
                    .then(|| ready.get(&svc.id).copied().unwrap_or(0)),
            })
            .collect()
    }

    // ---- reload ---------------------------------------------------------

    /// SIGHUP or `summond reload` (`cause`, for the log): load the config
    /// in a helper process (`reload.rs`) and apply it when it is done; the
    /// loop serves on meanwhile.
    fn reload(&mut self, cause: &str) {
        // Every SIGHUP is a reload to systemd (`systemctl reload` waits
        // for READY=1 after this), even one that has nothing to load.
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::notify::monotonic_usec()
        ));
        if !self.config.reloadable {
            info!(event = "reload"; "{cause}: nothing to reload (summond wrap has no config file)");
            self.notify(&format!("READY=1\n{}", self.status_line()));
            return;
        }
        if let Some(load) = &self.reloads.load {
            // READY=1 then comes when the next load is done.
            info!(event = "reload";
                "{cause} while the config is loading (pid {}); loading again after it",
                load.pid
            );
            self.reloads.again = true;
            return;
        }
        let running: Vec<&ServiceSpec> = self.services.iter().map(|rt| &rt.spec).collect();
        match ConfigLoad::start(&self.config.path, &running) {
            Ok(load) => self.watch_config_load(load, cause),
            Err(e) => self.load_in_loop(&e, cause),
        }
    }

    /// The config loader started: watch its pipe and time it.
    fn watch_config_load(&mut self, mut load: ConfigLoad, cause: &str) {
        // The pid, so an operator can end a load that hangs.
        info!(event = "reload";
            "{cause}: reloading {} (config loader pid {})",
            self.config.path.display(),
            load.pid
        );
        if let Err(e) = self.poller.registry().register(
            &mut SourceFd(&load.raw_fd()),
            CONFIG_LOAD,
            Interest::READABLE,
        ) {
            error!("reload failed, keeping the old config: watching the config loader: {e}");
            load.cancel();
            self.answer_reloads(&crate::control::Answer::Failed(format!(
                "watching the config loader: {e}"
            )));
            self.notify(&format!("READY=1\n{}", self.status_line()));
            return;
        }
        let (warn_after, limit) = reload::load_limits();
        load.timers = vec![
            self.timers.add(
                load.started_at + warn_after,
                Timer::ConfigLoadSlow(load.pid),
            ),
            self.timers
                .add(load.started_at + limit, Timer::ConfigLoadOverdue(load.pid)),
        ];
        self.reloads.load = Some(load);
    }

    /// No process to spare for the loader (EAGAIN, ENOMEM, `e`): load
    /// here, as summond did before loads had their own process.
    fn load_in_loop(&mut self, e: &io::Error, cause: &str) {
        info!(event = "reload"; "{cause}: reloading {}", self.config.path.display());
        warn!("reload: cannot start the config loader ({e}); loading in the event loop");
        let t0 = Instant::now();
        let loaded = config::load(&self.config.path, &Host::current()).map_err(|errors| {
            reload::LoadFailure {
                lines: errors.0.iter().map(|e| e.to_string()).collect(),
                rendered: Some(errors.render(false)),
            }
        });
        self.finish_reload(loaded, t0);
        self.notify(&format!("READY=1\n{}", self.status_line()));
    }

    /// The config loader's pipe is readable.
    fn on_config_load_output(&mut self) {
        let Some(load) = self.reloads.load.as_mut() else {
            return;
        };
        if load.read_output() {
            let _ = self
                .poller
                .registry()
                .deregister(&mut SourceFd(&load.raw_fd()));
            self.finish_reload_if_loaded();
        }
    }

    /// Apply the loaded config once the loader wrote all and was reaped.
    fn finish_reload_if_loaded(&mut self) {
        if !self.reloads.load.as_ref().is_some_and(ConfigLoad::is_done) {
            return;
        }
        let Some(load) = self.reloads.load.take() else {
            return;
        };
        self.unwatch_config_load(&load);
        let t0 = load.started_at;
        let running: Vec<&ServiceSpec> = self.services.iter().map(|rt| &rt.spec).collect();
        let loaded = load.outcome(&running);
        self.finish_reload(loaded, t0);
        self.after_reload();
    }

    /// A reload ended: the next one if SIGHUP came meanwhile, else ready.
    fn after_reload(&mut self) {
        if std::mem::take(&mut self.reloads.again) && !self.stopping {
            self.reloads.waiting = std::mem::take(&mut self.reloads.waiting_next);
            self.reload("SIGHUP or summond reload received meanwhile");
        } else {
            self.give_up_reloads("summond is stopping");
            self.notify(&format!("READY=1\n{}", self.status_line()));
        }
    }

    /// Apply a loaded config (loading began at `t0`) or log why not.
    fn finish_reload(&mut self, loaded: reload::Loaded, t0: Instant) {
        let answer = match loaded {
            Ok(new) => {
                let n = new.services.len();
                let changes = self.services.changes(&new.services);
                let t1 = Instant::now();
                match self.apply_config(new) {
                    // The two times tell an operator with a large config
                    // where a slow reload goes.
                    Ok(()) => {
                        self.start_all_eager();
                        info!(
                            "reload done: {n} services (config read and checked in {} ms, applied in {} ms)",
                            (t1 - t0).as_millis(),
                            t1.elapsed().as_millis()
                        );
                        requests::reloaded(n, changes)
                    }
                    Err(e) => {
                        error!("reload failed, keeping the old config: {e}");
                        crate::control::Answer::Failed(e.to_string())
                    }
                }
            }
            Err(failure) => {
                for e in &failure.lines {
                    error!("{e}");
                }
                error!(
                    "reload failed with {} errors, keeping the old config",
                    failure.lines.len()
                );
                match failure.rendered {
                    Some(text) => crate::control::Answer::Invalid(text),
                    None => crate::control::Answer::Failed(failure.lines.join("\n")),
                }
            }
        };
        self.answer_reloads(&answer);
        crate::footprint::shed();
    }

    /// A config load given up: its pipe leaves the poll set and its
    /// timers go.
    fn unwatch_config_load(&mut self, load: &ConfigLoad) {
        let _ = self
            .poller
            .registry()
            .deregister(&mut SourceFd(&load.raw_fd()));
        for key in &load.timers {
            self.timers.cancel(*key);
        }
    }

    /// Give up a config load in flight (stop, upgrade).
    fn cancel_config_load(&mut self) {
        if let Some(load) = self.reloads.load.take() {
            self.unwatch_config_load(&load);
            load.cancel();
        }
        self.give_up_reloads("summond is stopping or being upgraded");
    }

    /// The config load has run `LOAD_WARN_AFTER`: say so, with the pid
    /// and what happens next.
    fn config_load_slow(&mut self, pid: Pid) {
        let Some(load) = self.reloads.load.as_ref().filter(|l| l.pid == pid) else {
            return;
        };
        let (_, limit) = reload::load_limits();
        warn!(event = "reload";
            "reload: the config loader (pid {pid}) has been loading {} for {}; it is killed at {} (kill -TERM {pid} gives it up now)",
            self.config.path.display(),
            reload::HumanSecs(load.started_at.elapsed()),
            reload::HumanSecs(limit)
        );
    }

    /// The config load has run `LOAD_LIMIT`: kill the helper, fail the
    /// reload, and do not wait for the helper to go (it may sit in a
    /// filesystem call that no signal ends); a later SIGHUP loads afresh.
    fn config_load_overdue(&mut self, pid: Pid) {
        let Some(load) = self.reloads.load.take_if(|l| l.pid == pid) else {
            return;
        };
        self.unwatch_config_load(&load);
        let t0 = load.started_at;
        let (_, limit) = reload::load_limits();
        self.finish_reload(Err(load.give_up(limit)), t0);
        self.after_reload();
    }

    /// Move to `new`: a diff keyed by address. Sockets whose address stays
    /// are kept open (even if it moves to another service); new ones are
    /// opened first, and if any fails nothing changes; removed ones are
    /// closed last. Running children are left alone.
    fn apply_config(&mut self, mut new: Config) -> Result<(), ServerError> {
        // 1. Open all or nothing: at the first failure what was opened
        //    drops (its files are removed) and nothing has changed.
        let plan = sockets::plan(self.sockets.addrs(), &new);
        let opened = self.open_planned(&plan, &new)?;
        let metrics = self.metrics_change(&new)?;
        let control = self.control_change(&new)?;

        // 2. Carry over: runtime state (and with it the service's
        //    identity) follows the name; a name new to this config is a
        //    new service.
        let old_options = self.listen_options();
        let make_dirs = self
            .services
            .carry_over(std::mem::take(&mut new.services), Instant::now());
        for idx in make_dirs {
            self.make_runtime_dirs(idx);
        }
        // Old images are gone with the old runtimes: so are the
        // environments only they used.
        self.launcher.prune_envs();

        // 3. Commit: the sockets, the control and metrics listeners, then
        //    what depends on the services.
        self.commit_sockets(opened, &plan, &old_options);
        match control {
            ListenerChange::Keep => {}
            ListenerChange::Open(l) => self.endpoints.set_control(self.poller.registry(), Some(l)),
            ListenerChange::Close => self.endpoints.set_control(self.poller.registry(), None),
        }
        match metrics {
            ListenerChange::Keep => {}
            ListenerChange::Open(l) => self.endpoints.set_metrics(self.poller.registry(), Some(l)),
            ListenerChange::Close => self.endpoints.set_metrics(self.poller.registry(), None),
        }
        self.internal
            .guard_datagrams(&self.services, &self.sockets, Instant::now());
        self.internal.retime(&self.services);
        self.retire_changed_backends();
        crate::logging::set_format(new.daemon.log_format);
        // Each service holds its spec; the config keeps the rest.
        self.config = new;
        let now = Instant::now();
        self.sync_all(now);
        // A raised max_children may have opened the gate.
        self.unpark(now);
        Ok(())
    }

    /// Open (or adopt) every address `plan` opens, each with the index of
    /// its service in `new` and whether it is blocking.
    fn open_planned(
        &mut self,
        plan: &SocketPlan,
        new: &Config,
    ) -> Result<Vec<(Listener, usize, bool)>, ServerError> {
        let mut opened = Vec::new();
        for (addr, idx) in &plan.open {
            let spec = &new.services[*idx];
            let blocking = self.origin.handed_blocking(addr);
            match self.origin.adopt_or_open(addr, spec.socket, &spec.name) {
                Ok(listener) => opened.push((listener, *idx, blocking)),
                Err(err) => {
                    // `opened` drops: its files are removed.
                    return Err(ServerError::Bind {
                        service: spec.name.clone(),
                        addr: addr.clone(),
                        err,
                    });
                }
            }
        }
        Ok(opened)
    }

    /// `[daemon] metrics` of `new` against the listener now.
    fn metrics_change(&mut self, new: &Config) -> Result<ListenerChange, ServerError> {
        Ok(match &new.daemon.metrics {
            Some(addr) if self.endpoints.metrics.as_ref().map(|m| &m.addr) != Some(addr) => {
                match self
                    .origin
                    .adopt_or_open(addr, ListenOptions::default(), "metrics")
                {
                    Ok(l) => ListenerChange::Open(l),
                    Err(err) => return Err(ServerError::Metrics(addr.clone(), err)),
                }
            }
            Some(_) => ListenerChange::Keep,
            None => ListenerChange::Close,
        })
    }

    /// `[daemon] control` of `new` against the control socket now.
    fn control_change(&mut self, new: &Config) -> Result<ListenerChange, ServerError> {
        Ok(match &new.daemon.control {
            Some(path)
                if self
                    .endpoints
                    .control
                    .as_ref()
                    .and_then(|c| c.addr.socket_file())
                    != Some(path) =>
            {
                let addr = ListenAddr::Unix(crate::addr::UnixPath::File(path.clone()));
                match self.origin.adopt_or_open(
                    &addr,
                    endpoints::control_options(),
                    "control socket",
                ) {
                    Ok(l) => ListenerChange::Open(l),
                    Err(err) => return Err(ServerError::Control(path.clone(), err)),
                }
            }
            Some(_) => ListenerChange::Keep,
            None => ListenerChange::Close,
        })
    }

    /// The options each address of the running services was opened or
    /// last set with, as their config says.
    fn listen_options(&self) -> FxHashMap<ListenAddr, ListenOptions> {
        self.services
            .iter()
            .flat_map(|s| {
                s.spec
                    .listen
                    .iter()
                    .map(move |l| (l.addr.clone(), s.spec.socket))
            })
            .collect()
    }

    /// Into the socket table: the sockets `opened`, the kept ones to
    /// their owners now (with the options that can change while open),
    /// the closed ones out. `old_options`: what the config before said.
    fn commit_sockets(
        &mut self,
        opened: Vec<(Listener, usize, bool)>,
        plan: &SocketPlan,
        old_options: &FxHashMap<ListenAddr, ListenOptions>,
    ) {
        for (listener, idx, blocking) in opened {
            let token = self.poller.tokens.next();
            self.poller
                .tokens
                .insert(token, TokenKind::Listener(listener.addr.clone()));
            self.sockets.insert(listener, token, idx, blocking);
        }
        self.sockets.reassign(&plan.owners);
        // Kept sockets whose options changed take those that can change
        // while open; the others cost nothing.
        for (addr, idx) in &plan.owners {
            let new_options = &self.services[*idx].spec.socket;
            let Some(sock) = self.sockets.get_mut(addr) else {
                continue;
            };
            if sock.listener.handed().is_some() {
                // The service manager's options stay; its defer follows.
                if let Err(e) = crate::listener::defer_handed(&mut sock.listener, new_options) {
                    error!("{}: {addr}: {e}", self.services[*idx].spec.name);
                }
                continue;
            }
            // What was applied last, not what the old config said: a
            // change refused then (the file was not the one bound) is
            // tried again now, and an upgrade's carried socket compares
            // with what its previous image applied.
            let before = sock.listener.applied().or(old_options.get(addr));
            if before.is_none_or(|o| o == new_options) {
                continue;
            }
            if let Err(e) = sock.listener.apply(new_options) {
                error!("{}: {addr}: {e}", self.services[*idx].spec.name);
            }
        }
        for addr in &plan.close {
            if let Some(sock) = self.sockets.remove(self.poller.registry(), addr) {
                self.poller.tokens.remove(&sock.token);
                debug!("closed {addr}");
            }
        }
    }

    /// Make service `idx`'s `runtime_directory` directories, owned by the
    /// user and group its children run as. A failure is that service's
    /// alone, logged here once: its children still start (as they would
    /// without the key), and every other service is served.
    fn make_runtime_dirs(&mut self, idx: usize) {
        let rt = &mut self.services[idx];
        let Some(dirs) = &rt.spec.runtime_directory else {
            return;
        };
        let creds = rt.spec.credentials.as_ref();
        let uid = creds
            .and_then(|c| c.uid)
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
        let gid = creds.map_or_else(|| nix::unistd::getegid().as_raw(), |c| c.gid);
        rt.runtime_dir_failed = false;
        for name in &dirs.names {
            let made = crate::safe_dir::make_owned(
                &dirs.base,
                std::path::Path::new(name),
                uid,
                gid,
                dirs.mode,
            );
            if let Err(e) = made {
                rt.runtime_dir_failed = true;
                let service = rt.spec.name.as_str();
                error!(event = "runtime_directory_failed", service = service;
                    "{service}: runtime_directory {}: {e}; not made (the service's children start without it; a reload tries again)",
                    dirs.base.join(name).display());
            }
        }
    }

    // ---- stop -------------------------------------------------------

    /// At stop: SIGKILL every group `max_runtime` has sent SIGTERM,
    /// without the rest of its grace, and reap the leaders that exited
    /// (held until now), so their exits are logged and their ids freed.
    fn kill_stopping_groups_now(&mut self) {
        let groups: Vec<(Pid, Instant)> = self
            .children
            .stopping
            .iter()
            .map(|(pgid, g)| (*pgid, g.started_at))
            .collect();
        for (pgid, started_at) in groups {
            self.kill_overdue_group(pgid, started_at);
        }
    }

    /// Stop listening (dropping listeners removes their socket files),
    /// SIGTERM the pass-mode children, which own listening sockets, and
    /// leave connection children to finish on their own. The SIGKILLs
    /// `max_runtime` still owes go now: no one would send them later, and
    /// a group that ignores SIGTERM would run on for ever.
    fn shutdown(&mut self) {
        self.notify("STOPPING=1");
        self.cancel_config_load();
        self.sockets.clear(self.poller.registry());
        // With no listener left, what a reaped leader frees starts nothing.
        self.kill_stopping_groups_now();
        for conn in self.internal.close_all(&mut self.poller) {
            self.internal_closed(&conn);
        }
        self.stop_all_backends();
        self.stop_drainers();
        self.endpoints.set_metrics(self.poller.registry(), None);
        self.endpoints.set_control(self.poller.registry(), None);
        for (pid, child) in self.children.iter() {
            if child.is_pass_mode() {
                if let Err(e) = kill(*pid, Signal::SIGTERM) {
                    warn!("{}: cannot SIGTERM pid {pid}: {e}", child.name);
                }
            }
        }
        let pending = self.children.len();
        if pending > 0 {
            info!(event = "stop"; "stopped; {pending} children still running are left to finish");
        } else {
            info!(event = "stop"; "stopped");
        }
    }
}
