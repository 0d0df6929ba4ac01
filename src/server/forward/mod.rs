//! Forward mode: a backend started on demand, each client relayed to it.
//!
//! A service with `forward` owns one backend process (its `exec`, in a
//! process group of its own), kept here by service with its state:
//!
//! ```text
//! stopped ──first client──▶ starting ──`forward` accepts──▶ ready
//!    ▲                        │ start_timeout, exit            │ idle_stop
//!    └──────── reaped ◀──── stopping ◀───────────────────────┘
//! ```
//!
//! 1. A client accepted (connection.rs, after the access rules, limits
//!    and banner) comes to `forward_client`. Ready: it gets its own
//!    connection to `forward` and goes to the relay (`relay/`); a
//!    `unix://` backend whose listen backlog is full has it wait in the
//!    queue until it makes room (`busy.rs`). Otherwise it waits in its
//!    backend's queue, its bytes left in the kernel, and the first one
//!    starts the backend (`start_backend`).
//! 2. While it starts, `probe` connects to `forward` with a short
//!    back-off (`PROBE_DELAYS`, every millisecond up to
//!    `PROBE_FAST_TRIES`, then every `PROBE_EVERY`) until it
//!    accepts, or with `ready = "notify"` its NOTIFY_SOCKET (`notify.rs`)
//!    is watched until it says READY=1 (`backend_ready`: the waiting
//!    clients go to the relay, the first one over the probe's own
//!    connection), or `start_timeout` ends
//!    (`start_timed_out`: the waiting clients are closed, the backend is
//!    stopped, a failure for the restart guard).
//! 3. A relayed connection that ends (`relay_closed`) adds its bytes to
//!    the backend's counts; the last one arms `idle_stop`.
//! 4. The backend's exit (`backend_exited`, from the reaper) closes the
//!    connections relayed to it, each logged; an exit summond did not ask
//!    for counts toward the restart guard, and clients that came meanwhile
//!    start it again.
//!
//! Clients count toward `max_instances` and `max_per_source` (waiting or
//! relayed), so at a limit the listener is unwatched and new clients wait
//! in the kernel backlog: none is refused because the backend is cold.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use rustc_hash::FxHashMap;
use rustls::ServerConnection;
use socket2::{Domain, SockAddr, Socket, Type};

use super::notify;
use super::relays::{Kind, Relayed};
use super::services::{Ended, ServiceId};
use super::timers::{Timer, TimerKey};
use super::{Server, TokenKind};
use crate::addr::ListenAddr;
use crate::config::Ready;
use crate::config::{Forward, Pass};
use crate::peer::{Peer, SourceKey};
use crate::relay::preamble::Names;
use crate::relay::{Closed, End, RelayId, Side};
use crate::spawn;
use crate::stats::ExitText;

mod busy;
mod handover;
pub(super) use handover::Handed;
mod diag;
mod held;
mod shutdown;
mod tree;

/// The waits between connect attempts after a start (the first attempt
/// is at once), then one a millisecond (`PROBE_FAST_TRIES`), then one
/// every `PROBE_EVERY`: a backend is found ready within 1 or 2 ms of
/// binding (SPEC: the first client waits the backend's own start plus at
/// most a few ms), for at most 1000 connects a second while one starts
/// (about 15 µs of summond's CPU each on loopback).
const PROBE_DELAYS: [Duration; 4] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(1),
    Duration::from_millis(1),
];
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// Attempts (after `PROBE_DELAYS`) made every millisecond rather than
/// every `PROBE_EVERY`: most backends bind within their first 50 ms
/// (a Rust or C server in 1 to 3 ms, python3 -m http.server in about
/// 40), and there half the wait after the bind is half a millisecond
/// less of the first client's wait, for 15 µs of summond's CPU per
/// attempt. A slow starter is probed every 2 ms after that.
const PROBE_FAST_TRIES: usize = 50;

/// Clients held per backend while it starts; beyond it the service's
/// listeners are unwatched and clients wait in the kernel backlog.
pub(super) const MAX_WAITING: usize = 1024;

/// Where a backend is in its life.
#[derive(Debug)]
pub(super) enum State {
    Stopped,
    Starting {
        pid: Pid,
        since: Instant,
        /// A connect in flight to `forward`, and its poll token.
        probe: Option<(Socket, Token)>,
        tries: usize,
        timeout: TimerKey,
    },
    Ready {
        pid: Pid,
    },
    Stopping {
        pid: Pid,
        kill: TimerKey,
    },
}

impl State {
    pub(super) fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting { .. } => "starting",
            State::Ready { .. } => "ready",
            State::Stopping { .. } => "stopping",
        }
    }

    pub(super) fn pid(&self) -> Option<Pid> {
        match self {
            State::Stopped => None,
            State::Starting { pid, .. } | State::Ready { pid } | State::Stopping { pid, .. } => {
                Some(*pid)
            }
        }
    }
}

/// A client held while its backend starts.
pub(super) struct Waiting {
    pub(super) conn: Socket,
    pub(super) peer: Peer,
    pub(super) source: Option<SourceKey>,
    /// A `tls` service's client: its session, handshake done (the
    /// relay's front side is then TLS; an upgrade hands it to a drainer,
    /// `drained.rs`).
    pub(super) tls: Option<Box<ServerConnection>>,
    /// A TLS client a drainer serves at the other end of this socket
    /// pair (`drained.rs`): what it asked for in its handshake, for its
    /// PROXY header (built here, as any client's).
    drained: Option<Box<Names>>,
    /// Held for a full backlog (`busy.rs`): refused if still held then.
    held_until: Option<Instant>,
}

/// One service's backend.
pub(super) struct Backend {
    pub state: State,
    waiting: VecDeque<Waiting>,
    /// Relayed connections open now.
    pub open: u32,
    /// Relayed connections, ever.
    pub relayed: u64,
    /// Bytes of the connections that ended, client → backend and back.
    pub up: u64,
    pub down: u64,
    /// How long its last start took to become ready.
    pub ready_in: Option<Duration>,
    idle_timer: Option<TimerKey>,
    /// Per client (prefix): its waiting and relayed connections.
    per_source: FxHashMap<SourceKey, u32>,
    /// The service as it was when the running backend started: a reload
    /// that changes it retires the backend.
    started_with: Option<Box<crate::config::ServiceSpec>>,
    /// This start's probes found `forward` held by someone else, and
    /// said so once (a warning per probe would flood the log).
    warned: bool,
    /// The TCP listener on `forward` seen before the last probe's connect,
    /// or since (`held::owner_uid`): a connection another uid accepted is
    /// the backend's only if it went through this one.
    listener: Option<held::Listener>,
    /// `ready = "notify"`: the running backend's NOTIFY_SOCKET and its
    /// token, watched from its start to its exit (READY=1, then STATUS=).
    notify: Option<(Socket, Token)>,
    /// The last STATUS= the running backend sent, for status.
    pub status: Option<String>,
    /// Its tree as its stop found it (`tree.rs`): the SIGKILL reaches
    /// the daemons among it, once the backend is gone too.
    tree: Vec<tree::Member>,
    /// Ready, its `unix://` listen backlog full: the retry of the clients
    /// held meanwhile (`busy.rs`).
    busy: Option<busy::Busy>,
    /// Not ready (stopped, starting, stopping) with clients a full
    /// backlog held: the timer that refuses the first at its deadline
    /// (`busy.rs`), as the retry does while it is ready.
    deadline: Option<TimerKey>,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            state: State::Stopped,
            waiting: VecDeque::new(),
            open: 0,
            relayed: 0,
            up: 0,
            down: 0,
            ready_in: None,
            idle_timer: None,
            per_source: FxHashMap::default(),
            started_with: None,
            warned: false,
            listener: None,
            notify: None,
            status: None,
            tree: Vec::new(),
            busy: None,
            deadline: None,
        }
    }
}

impl Backend {
    /// Clients it has now, waiting or relayed (for max_instances).
    pub fn active(&self) -> u32 {
        self.open + self.waiting.len() as u32
    }

    fn add_source(&mut self, key: Option<SourceKey>) {
        if let Some(k) = key {
            *self.per_source.entry(k).or_default() += 1;
        }
    }

    fn remove_source(&mut self, key: Option<SourceKey>) {
        if let Some(k) = key {
            if let Some(n) = self.per_source.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&k);
                }
            }
        }
    }
}

/// A backend a reload retired (its service changed or went): it
/// finishes its open connections, then it is stopped. Its service's
/// counts stay with the service's `Backend`.
pub(super) struct Retired {
    service: ServiceId,
    name: std::rc::Rc<str>,
    pid: Pid,
    /// Its address: a new backend of the service on the same one waits
    /// until this one is gone (both cannot bind it).
    to: ListenAddr,
    /// Its relayed connections still open.
    open: u32,
    stop_timeout: Duration,
    /// Set once SIGTERM went.
    kill: Option<TimerKey>,
    /// Its tree as its stop found it.
    tree: Vec<tree::Member>,
}

/// Every backend (their connections are in the server's relay table,
/// `relays.rs`).
#[derive(Default)]
pub(super) struct Forwarding {
    pub backends: FxHashMap<ServiceId, Backend>,
    pub retired: Vec<Retired>,
}

impl Forwarding {
    /// Clients of service `id` waiting or relayed now.
    pub fn active(&self, id: ServiceId) -> u32 {
        self.backends.get(&id).map_or(0, Backend::active)
    }

    pub fn per_source(&self, id: ServiceId, key: &SourceKey) -> u32 {
        let b = self.backends.get(&id);
        b.and_then(|b| b.per_source.get(key).copied()).unwrap_or(0)
    }

    /// Every backend's pid, retired ones included: children of summond
    /// as much as those of the child table.
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        let running = self.backends.values().filter_map(|b| b.state.pid());
        running.chain(self.retired.iter().map(|r| r.pid))
    }

    /// May service `id` take one more client now (its queue bound)?
    pub fn may_take(&self, id: ServiceId) -> bool {
        self.backends
            .get(&id)
            .is_none_or(|b| b.waiting.len() < MAX_WAITING)
    }
}

/// A non-blocking connect to `to`: the socket, and whether the connect
/// is still in progress.
fn connect(to: &ListenAddr) -> io::Result<(Socket, bool)> {
    let (domain, addr) = match to {
        ListenAddr::Tcp(sa) => (Domain::for_address(*sa), SockAddr::from(*sa)),
        ListenAddr::Unix(path) => (Domain::UNIX, crate::listener::unix_sockaddr(path)?),
        _ => return Err(io::ErrorKind::Unsupported.into()),
    };
    // Non-blocking from socket(2) on: no fcntl pair per connection.
    let s = Socket::new(domain, Type::STREAM.nonblocking(), None)?;
    if matches!(to, ListenAddr::Tcp(_)) {
        // Small replies go out at once, and a write's tail (a 60 KiB
        // write is one segment and a part on loopback) does not wait for
        // the ACK of the segment before it (Nagle).
        let _ = s.set_tcp_nodelay(true);
    }
    match s.connect(&addr) {
        Ok(()) => Ok((s, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => match connected_now(&s) {
            Some(Err(e)) => Err(e),
            done => Ok((s, done.is_none())),
        },
        Err(e) => Err(e),
    }
}

/// A non-blocking TCP connect to a local address returns EINPROGRESS,
/// but its handshake is done by then unless the kernel put its SYN off:
/// whether it is done (its result) or not yet. Only a done one has
/// reached a listener, to be checked (`held::owner_uid`).
fn connected_now(s: &Socket) -> Option<io::Result<()>> {
    let mut fd = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(s),
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: one pollfd, ours, for the call; a zero timeout: no wait.
    if unsafe { libc::poll(fd.as_mut_ptr(), 1, 0) } != 1 {
        return None;
    }
    Some(match s.take_error() {
        Ok(None) => Ok(()),
        Ok(Some(e)) | Err(e) => Err(e),
    })
}

/// A TCP connect to a port nobody listens on can meet itself: the
/// kernel may pick the target port as the socket's own (a port in the
/// ephemeral range, which readiness probes walk through), and the
/// simultaneous open succeeds. Such a probe is not the backend, and
/// holding it would keep the backend from binding its port.
fn self_connected(s: &Socket) -> bool {
    match (s.local_addr(), s.peer_addr()) {
        (Ok(local), Ok(peer)) => {
            local.as_socket().is_some() && local.as_socket() == peer.as_socket()
        }
        _ => false,
    }
}

/// `forward_proxy_protocol`: the header naming the client and the
/// address it reached (the balancer's client, if a PROXY header came in);
/// empty without the key (nothing allocated).
///
/// Behind TLS, a v2 header also names what the client asked for: its
/// ALPN protocol (PP2_TYPE_ALPN) and server name (PP2_TYPE_AUTHORITY),
/// as haproxy sends them; nothing else of the session.
pub(in crate::server) fn proxy_header(
    version: Option<crate::config::ProxyHeader>,
    peer: &Peer,
    alpn: Option<&[u8]>,
    sni: Option<&str>,
) -> Vec<u8> {
    let Some(version) = version else {
        return Vec::new();
    };
    let addrs = match peer {
        Peer::Inet {
            remote,
            local: Some(local),
        } => Some((*remote, *local)),
        Peer::Proxied(p) => Some((p.remote, p.local)),
        _ => None,
    };
    let mut out = Vec::with_capacity(64);
    match version {
        crate::config::ProxyHeader::V1 => crate::proxy::encode_v1(addrs, &mut out),
        crate::config::ProxyHeader::V2 => {
            let mut tlvs: Vec<(u8, &[u8])> = Vec::new();
            if let Some(alpn) = alpn {
                tlvs.push((PP2_TYPE_ALPN, alpn));
            }
            if let Some(sni) = sni {
                tlvs.push((PP2_TYPE_AUTHORITY, sni.as_bytes()));
            }
            crate::proxy::encode_v2(addrs, &tlvs, &mut out)
        }
    }
    out
}

/// PROXY v2's TLV types for the ALPN protocol and the server name.
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// O_NONBLOCK with one ioctl(FIONBIO) (socket2 reads the flags first
/// with fcntl, then sets them: two syscalls per relayed client).
fn set_nonblocking(s: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads an int from a local.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(s), libc::FIONBIO, &on) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Close a probe's socket with a reset: no TIME_WAIT left on the port
/// the backend is about to bind, and nothing (not even an EOF) for a
/// listener that turned out not to be the backend.
fn discard(s: Socket) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// A connect in flight that no longer matters (its backend stops,
/// exits or is retired): unwatched and reset.
fn drop_probe(poller: &mut super::poller::Poller, probe: Option<(Socket, Token)>) {
    if let Some((sock, token)) = probe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let _ = poller.registry().deregister(&mut SourceFd(&fd));
        poller.tokens.remove(&token);
        discard(sock);
    }
}

/// May `to` be connected to: a `unix://` path's directories held by root
/// or summond, none a link, and the path itself a socket. Walked at every
/// probe and at every client's connection (one lstat a component: 5 µs
/// for /run/DIR/NAME on a busy 2-core host, against ~45 µs for the rest of
/// a relayed connection's setup): `SO_PEERCRED` after the connect names only the
/// listener's uid, and a link put where the backend's socket was (in a
/// sticky directory others write, once the backend removed it) would
/// reach another listener of that uid. An abstract name has no
/// directories: the uid check after the connect is what guards it.
fn connectable(to: &ListenAddr) -> Result<(), crate::safe_dir::SocketPathRefusal> {
    match to {
        ListenAddr::Unix(crate::addr::UnixPath::File(path)) => {
            crate::safe_dir::connectable_socket(path)
        }
        _ => Ok(()),
    }
}

impl Server {
    /// Step 1: an admitted client of a forward service (of a `tls` one,
    /// with its handshake done: `tls`).
    pub(super) fn forward_client(
        &mut self,
        idx: usize,
        conn: Socket,
        tls: Option<ServerConnection>,
        peer: Peer,
        source: Option<SourceKey>,
    ) {
        let w = Waiting {
            conn,
            peer,
            source,
            tls: tls.map(Box::new),
            drained: None,
            held_until: None,
        };
        self.forward_waiting(idx, w);
    }

    /// Step 1 for a `tls` service's client whose handshake a drainer
    /// finished (`drained.rs`): `conn` is a socket pair's end, the
    /// client's bytes next on it; `names` what it asked for.
    pub(super) fn forward_drained_client(
        &mut self,
        idx: usize,
        conn: Socket,
        peer: Peer,
        source: Option<SourceKey>,
        names: Box<Names>,
    ) {
        let w = Waiting {
            conn,
            peer,
            source,
            tls: None,
            drained: Some(names),
            held_until: None,
        };
        self.forward_waiting(idx, w);
    }

    fn forward_waiting(&mut self, idx: usize, w: Waiting) {
        let source = w.source;
        let id = self.services[idx].id;
        self.services[idx].stats.served += 1;
        self.take_rate_token(idx, Instant::now());
        let backend = self.forward.backends.entry(id).or_default();
        backend.add_source(source);
        if let Some(t) = backend.idle_timer.take() {
            self.timers.cancel(t);
        }
        match backend.state {
            // Behind the clients held for a full backlog (`busy.rs`).
            State::Ready { .. } if !backend.waiting.is_empty() => {
                return self.hold_behind(idx, w);
            }
            State::Ready { pid } => {
                if let Err((w, _)) = self.relay_client(idx, pid, w, None) {
                    self.hold_for_backlog(idx, pid, w);
                }
                return;
            }
            _ => {}
        }
        let stopped = matches!(backend.state, State::Stopped);
        backend.waiting.push_back(w);
        if stopped && !self.address_held(idx) {
            self.start_backend(idx);
        }
    }

    /// A retired backend still holds service `idx`'s `forward` address:
    /// its new backend starts when that one is gone.
    fn address_held(&self, idx: usize) -> bool {
        let to = self.services[idx].spec.forward.as_ref().map(|f| &f.to);
        self.forward.retired.iter().any(|r| Some(&r.to) == to)
    }

    /// Start service `idx`'s backend: in its own process group, stdin
    /// /dev/null, stdout and stderr as `stderr` says.
    fn start_backend(&mut self, idx: usize) {
        let now = Instant::now();
        let fds = spawn::plan_fds(
            Pass::ListenFds,
            self.services[idx].spec.stderr,
            &[],
            self.launcher.devnull(),
        );
        let mut env = crate::env::EnvBlock::default();
        let notify = match self.services[idx].spec.forward.as_ref().map(|f| f.ready) {
            Some(Ready::Notify) => match notify::open() {
                Ok((sock, name)) => {
                    env.push("NOTIFY_SOCKET", name.as_str());
                    Some(sock)
                }
                Err(e) => {
                    let name = &self.services[idx].name;
                    error!("{name}: cannot make the backend's NOTIFY_SOCKET: {e}");
                    return self.failed_start(idx, now);
                }
            },
            _ => None,
        };
        let spawned = self
            .launcher
            .spawn(&mut self.services[idx], &fds, &env, false);
        let name = self.services[idx].name.clone();
        let spawned = match spawned {
            Ok(s) if s.failed.is_none() => s,
            Ok(s) => {
                let (stage, errno) = s.failed.unwrap_or((spawn::Stage::Exec, 0));
                error!(event = "spawn_failed", service = &*name;
                    "{name}: cannot start the backend: {stage:?}: {}", nix::errno::Errno::from_raw(errno));
                return self.failed_start(idx, now);
            }
            Err(e) => {
                error!(event = "spawn_failed", service = &*name; "{name}: cannot start the backend: {e}");
                return self.failed_start(idx, now);
            }
        };
        let pid = spawned.pid;
        let svc = &self.services[idx];
        let fwd = svc.spec.forward.as_ref().expect("a forward service");
        info!(event = "backend_start", service = &*name, pid = pid.as_raw();
            "{name}: starting the backend (pid {pid}), waiting for {}", fwd.to);
        let timeout = self.timers.add(
            now + fwd.start_timeout,
            Timer::StartTimeout {
                service: svc.id,
                pid,
            },
        );
        let id = svc.id;
        let started_with = Some(Box::new(svc.spec.clone()));
        let backend = self.forward.backends.entry(id).or_default();
        backend.started_with = started_with;
        backend.warned = false;
        backend.status = None;
        backend.state = State::Starting {
            pid,
            since: now,
            probe: None,
            tries: 0,
            timeout,
        };
        match notify {
            Some(sock) => self.watch_notify(id, sock),
            None => self.probe(idx),
        }
    }

    /// `ready = "notify"`: watch the backend's NOTIFY_SOCKET (in the
    /// place of a probe) until it says READY=1 or start_timeout ends, and
    /// then for STATUS= until it exits.
    fn watch_notify(&mut self, id: ServiceId, sock: Socket) {
        let token = self.poller.tokens.next();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        if let Err(e) =
            self.poller
                .registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            warn!(
                "{}: cannot watch the backend's NOTIFY_SOCKET: {e}",
                self.services.name_of(id)
            );
            return;
        }
        self.poller.tokens.insert(token, TokenKind::Notify(id));
        if let Some(b) = self.forward.backends.get_mut(&id) {
            b.notify = Some((sock, token));
        }
    }

    /// The backend left its state (exited, retired): its NOTIFY_SOCKET
    /// closes, unwatched, and what it said goes with it.
    fn forget_notify(&mut self, id: ServiceId) {
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        b.status = None;
        if let Some((sock, token)) = b.notify.take() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
            let _ = self.poller.registry().deregister(&mut SourceFd(&fd));
            self.poller.tokens.remove(&token);
        }
    }

    /// Datagrams on a backend's NOTIFY_SOCKET: READY=1 while it starts,
    /// STATUS= at any time.
    pub(super) fn on_notify_ready(&mut self, id: ServiceId) {
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let (Some((sock, token)), Some(pid)) = (&b.notify, b.state.pid()) else {
            return;
        };
        let notify::Said {
            ready,
            foreign,
            more,
            status,
        } = notify::read(sock, pid);
        if more {
            super::ready::rearm(self.poller.registry(), sock, *token);
        }
        if status.is_some() {
            b.status = status;
        }
        let ready = ready && matches!(b.state, State::Starting { .. });
        if foreign > 0 {
            debug!(
                "{}: ignored {foreign} NOTIFY_SOCKET datagrams not from the backend's group",
                self.services.name_of(id)
            );
        }
        if let (true, Some(idx)) = (ready, self.services.index_of(id)) {
            self.backend_ready(idx, None);
        }
    }

    /// A start that failed before the backend ran, or never became ready:
    /// a failure for the restart guard, and the waiting clients closed.
    fn failed_start(&mut self, idx: usize, now: Instant) {
        self.count_spawn_failure(idx);
        if let Some(until) = self.services[idx].crash.record_failure(now) {
            self.hold(idx, until, now);
        }
        self.close_waiting(idx, "the backend did not start");
        self.sync_service(idx, now);
    }

    /// Close every client waiting for service `idx`'s backend: one line
    /// for them all (up to 1024 wait), each client's at debug.
    fn close_waiting(&mut self, idx: usize, why: &str) {
        let name = self.services[idx].name.clone();
        let Some(backend) = self.forward.backends.get_mut(&self.services[idx].id) else {
            return;
        };
        let waiting = std::mem::take(&mut backend.waiting);
        for w in &waiting {
            backend.remove_source(w.source);
            debug!(event = "forward_closed", service = &*name, peer:% = w.peer;
                "{name}: closing {}: {why}", w.peer);
        }
        if let Some(first) = waiting.front() {
            info!(event = "forward_closed", service = &*name, peer:% = first.peer;
                "{name}: closing {} waiting clients ({} first): {why}", waiting.len(), first.peer);
        }
    }

    /// Step 2: try to connect to the starting backend.
    fn probe(&mut self, idx: usize) {
        let id = self.services[idx].id;
        let to = match &self.services[idx].spec.forward {
            Some(f) => f.to.clone(),
            None => return,
        };
        if let Err(why) = connectable(&to) {
            self.warn_once(id, format_args!("will not connect to {to}: {why}"));
            return self.probe_later(id);
        }
        // Seen before the connect: a probe another uid accepts is the
        // backend's only if the listener it reached is this one.
        let seen = held::listener_on(&to);
        if let Some(b) = self.forward.backends.get_mut(&id) {
            b.listener = seen;
        }
        match connect(&to) {
            Ok((sock, false))
                if !self_connected(&sock) && self.probe_held(idx, &sock, &to, false) =>
            {
                self.backend_ready(idx, Some(sock))
            }
            Ok((sock, false)) => {
                discard(sock);
                self.probe_later(id);
            }
            Ok((sock, true)) => {
                let token = self.poller.tokens.next();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
                if self
                    .poller
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::WRITABLE)
                    .is_err()
                {
                    return self.probe_later(id);
                }
                self.poller.tokens.insert(token, TokenKind::Probe(id));
                if let Some(Backend {
                    state: State::Starting { probe, .. },
                    ..
                }) = self.forward.backends.get_mut(&id)
                {
                    *probe = Some((sock, token));
                }
            }
            Err(_) => self.probe_later(id),
        }
    }

    /// A new connection to service `idx`'s ready backend, if the
    /// listener it reached is the backend's uid's (checked at every
    /// connection, not at readiness only: the backend's listener may go
    /// while it runs on, and another user bind `forward`).
    fn connect_backend(&mut self, idx: usize) -> io::Result<Side> {
        let Some(Forward { to, .. }) = &self.services[idx].spec.forward else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        if let Err(why) = connectable(to) {
            let what = format!("will not connect to {to}: {why}");
            self.warn_once(self.services[idx].id, format_args!("{what}"));
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, what));
        }
        let to = to.clone();
        let id = self.services[idx].id;
        let Some(backend) = self.forward.backends.get_mut(&id) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        if backend.listener.is_none() {
            // None seen yet (ready by notify, resumed by an upgrade):
            // the one there before this connect.
            backend.listener = held::listener_on(&to);
        }
        let (s, busy) = connect(&to)?;
        if busy && matches!(to, ListenAddr::Tcp(_)) {
            // Its SYN not answered yet (the kernel put it off, or the
            // backend's accept queue is full): the listener it will reach
            // is not known, and could be another user's by then. Checked
            // once connected (`check_connect`), before a byte moves.
            return Ok(Side::connecting_checked(OwnedFd::from(s)));
        }
        self.reached_backend(idx, &to, &s, false)?;
        Ok(match busy {
            true => Side::connecting(OwnedFd::from(s)),
            false => Side::stream(OwnedFd::from(s)),
        })
    }

    /// Is the listener connection `s` reached service `idx`'s backend's
    /// (`held::owner_uid`, against the listener seen before its connect;
    /// `strict` for a connect that was in progress: its own uid only)?
    /// An error if not, said. `to` is its `forward`, as the caller has it.
    fn reached_backend(
        &mut self,
        idx: usize,
        to: &ListenAddr,
        s: &Socket,
        strict: bool,
    ) -> io::Result<()> {
        let want = self.backend_uid(idx);
        let id = self.services[idx].id;
        let Some(backend) = self.forward.backends.get_mut(&id) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let uid = held::owner_uid(s, to, want, &mut backend.listener, strict);
        if uid.as_ref().is_err_and(held::rebound) {
            let name = self.services.name_of(id);
            info!(event = "forward_refused", service = name;
                "{name}: not relaying a client to forward {to}: {}; the next clients go to the listener there now",
                held::Rebound);
        }
        if !self.held_by_backend(idx, uid) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "forward is not held by the backend's uid",
            ));
        }
        Ok(())
    }

    /// A relayed client's connect to its backend that was still in
    /// progress has ended: whom it reached is checked now, before a byte
    /// moves; not the backend's, the connection ends.
    pub(in crate::server) fn check_connect(&mut self, id: crate::relay::RelayId) {
        let service = self.relays.tag_mut(id).map(|t| t.service);
        let idx = service.and_then(|s| self.services.index_of(s));
        let fd = self.relays.back_fd(id);
        let to = idx.and_then(|i| self.services[i].spec.forward.as_ref().map(|f| f.to.clone()));
        let word = match (idx, to, fd) {
            (Some(idx), Some(to), Some(fd)) => {
                // SAFETY: the relay's open back side, borrowed for the call.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                self.reached_backend(idx, &to, &socket2::SockRef::from(&fd), true)
            }
            _ => Err(io::ErrorKind::NotFound.into()),
        };
        if let Some(closed) = self.relays.checked(self.poller.registry(), id, word) {
            self.relay_ended(closed);
        }
    }

    /// Is the probe `sock`'s other end service `idx`'s backend's
    /// (`held::owner_uid`, against the listener seen before its connect)?
    fn probe_held(&mut self, idx: usize, sock: &Socket, to: &ListenAddr, strict: bool) -> bool {
        let want = self.backend_uid(idx);
        let id = self.services[idx].id;
        let Some(backend) = self.forward.backends.get_mut(&id) else {
            return false;
        };
        let uid = held::owner_uid(sock, to, want, &mut backend.listener, strict);
        self.held_by_backend(idx, uid)
    }

    /// Does the socket that accepted a connection (`uid`, as `held.rs`
    /// read it) belong to the uid service `idx`'s backend runs as (its
    /// `user`, or summond's own)? Another user's listener on `forward`
    /// is not the backend (`held.rs`).
    fn held_by_backend(&mut self, idx: usize, uid: io::Result<u32>) -> bool {
        let want = self.backend_uid(idx);
        if uid.as_ref().is_ok_and(|&uid| uid == want) {
            return true;
        }
        // Its name for the warning only: no String per relayed client.
        let spec = &self.services[idx].spec;
        let to = spec
            .forward
            .as_ref()
            .map(|f| f.to.to_string())
            .unwrap_or_default();
        let id = self.services[idx].id;
        match uid {
            Ok(uid) if uid == want => true,
            Ok(uid) => {
                self.warn_once(
                    id,
                    format_args!("forward {to} is held by uid {uid}, not the backend's (uid {want}); not relaying to it"),
                );
                false
            }
            Err(e) => {
                self.warn_once(
                    id,
                    format_args!("cannot tell who holds forward {to}: {e}; not relaying to it"),
                );
                false
            }
        }
    }

    /// The uid service `idx`'s backend runs as: its `user`, or summond's
    /// (which never changes: asked of the kernel once, not twice per
    /// relayed client).
    fn backend_uid(&self, idx: usize) -> u32 {
        static OWN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        (self.services[idx].spec.credentials.as_ref())
            .and_then(|c| c.uid)
            .unwrap_or_else(|| *OWN.get_or_init(|| nix::unistd::geteuid().as_raw()))
    }

    /// A warning about this start's probes, the first time only.
    fn warn_once(&mut self, id: ServiceId, what: std::fmt::Arguments<'_>) {
        let Some(b) = self.forward.backends.get_mut(&id) else {
            return;
        };
        if !std::mem::replace(&mut b.warned, true) {
            let name = self.services.name_of(id);
            warn!(event = "forward_refused", service = name; "{name}: {what}");
        }
    }

    /// The next connect attempt, after the back-off.
    fn probe_later(&mut self, id: ServiceId) {
        let Some(Backend {
            state: State::Starting { tries, pid, .. },
            ..
        }) = self.forward.backends.get_mut(&id)
        else {
            return;
        };
        let delay = match PROBE_DELAYS.get(*tries) {
            Some(d) => *d,
            None if *tries < PROBE_FAST_TRIES => Duration::from_millis(1),
            None => PROBE_EVERY,
        };
        *tries += 1;
        let pid = *pid;
        self.timers
            .add(Instant::now() + delay, Timer::Probe { service: id, pid });
    }

    /// The probe's timer: connect again if the backend still starts.
    pub(super) fn probe_due(&mut self, id: ServiceId, pid: Pid) {
        let Some(idx) = self.services.index_of(id) else {
            return;
        };
        match self.forward.backends.get(&id).map(|b| &b.state) {
            Some(State::Starting {
                pid: p,
                probe: None,
                ..
            }) if *p == pid => self.probe(idx),
            _ => {}
        }
    }

    /// The probe's connect ended: ready, or try again later.
    pub(super) fn on_probe_ready(&mut self, token: Token, id: ServiceId) {
        self.poller.tokens.remove(&token);
        let Some(Backend {
            state: State::Starting { probe, .. },
            ..
        }) = self.forward.backends.get_mut(&id)
        else {
            return;
        };
        let Some((sock, _)) = probe.take() else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let _ = self.poller.registry().deregister(&mut SourceFd(&fd));
        let idx = self.services.index_of(id);
        let to = idx.and_then(|i| self.services[i].spec.forward.as_ref().map(|f| f.to.clone()));
        match (sock.take_error(), idx, to) {
            (Ok(None), Some(idx), Some(to))
                if !self_connected(&sock) && self.probe_held(idx, &sock, &to, true) =>
            {
                self.backend_ready(idx, Some(sock))
            }
            _ => {
                discard(sock);
                self.probe_later(id);
            }
        }
    }

    /// The backend accepted: every waiting client to the relay, the first
    /// over the probe's connection.
    fn backend_ready(&mut self, idx: usize, probe: Option<Socket>) {
        let now = Instant::now();
        let id = self.services[idx].id;
        let Some(backend) = self.forward.backends.get_mut(&id) else {
            return;
        };
        let State::Starting {
            pid,
            since,
            timeout,
            ..
        } = backend.state
        else {
            return;
        };
        self.timers.cancel(timeout);
        // The probe's connection was taken by the caller; the
        // NOTIFY_SOCKET stays watched for STATUS=.
        backend.state = State::Ready { pid };
        let took = now.saturating_duration_since(since);
        backend.ready_in = Some(took);
        let name = &self.services[idx].name;
        info!(event = "backend_ready", service = &**name, pid = pid.as_raw();
            "{name}: backend pid {pid} ready after {:.1} ms; relaying {} waiting clients",
            took.as_secs_f64() * 1e3, backend.waiting.len());
        self.relay_held(idx, probe);
        self.arm_idle(idx, now);
        self.sync_service(idx, now);
    }

    /// A client to the relay, over `back` or a new connection to the
    /// backend. Its source is counted already; a failure uncounts it. A
    /// `unix://` backend's full listen backlog gives the client back, to
    /// be held (`busy.rs`), and so does its listener gone when the client
    /// is held already (the backend is exiting: its next start takes it).
    /// (The client comes back by value, to its queue: a box would be an
    /// allocation per retry.)
    #[allow(clippy::result_large_err)]
    fn relay_client(
        &mut self,
        idx: usize,
        pid: Pid,
        w: Waiting,
        back: Option<Socket>,
    ) -> Result<(), (Waiting, busy::Unreached)> {
        let back = match back {
            Some(s) => Ok(Side::stream(OwnedFd::from(s))),
            None => self.connect_backend(idx),
        };
        let to = self.services[idx].spec.forward.as_ref().map(|f| &f.to);
        if let (Err(e), Some(to)) = (&back, to) {
            if let Some(why) = busy::unreached(to, e, w.held_until.is_some()) {
                return Err((w, why));
            }
        }
        let Waiting {
            conn,
            peer,
            source,
            tls,
            drained,
            ..
        } = w;
        let id = self.services[idx].id;
        let name = self.services[idx].name.clone();
        let fwd_proxy = self.services[idx]
            .spec
            .forward
            .as_ref()
            .and_then(|f| f.proxy);
        let relayed = back.and_then(|back| {
            set_nonblocking(&conn)?;
            // A relay's write is a full segment and a tail on loopback:
            // Nagle would hold the tail until the segment's ACK. (Fails
            // harmlessly on a Unix socket.)
            let _ = conn.set_tcp_nodelay(true);
            let tag = Relayed {
                service: id,
                name: name.clone(),
                pid,
                peer: peer.clone(),
                source,
                runtime_timer: None,
                kind: Kind::Forward,
            };
            // A drained client's names came with it; a TLS client's are
            // its session's (borrowed: nothing allocated).
            let (alpn, sni) = match (&drained, tls.as_deref()) {
                (Some(n), _) => (n.alpn.as_deref(), n.sni.as_deref()),
                (None, t) => (
                    t.and_then(|t| t.alpn_protocol()),
                    t.and_then(|t| t.server_name()),
                ),
            };
            let header = proxy_header(fwd_proxy, &peer, alpn, sni);
            let front = match tls {
                Some(tls) => Side::tls(OwnedFd::from(conn), *tls),
                None => Side::stream(OwnedFd::from(conn)),
            };
            let rid = (self.relays).add_with_preface(
                self.poller.registry(),
                front,
                back,
                tag,
                &header,
            )?;
            if self.relays.is_tls(rid) {
                self.relays.linger(rid, crate::tls::LINGER);
            }
            Ok(rid)
        });
        let backend = self.forward.backends.entry(id).or_default();
        match relayed {
            Ok(rid) => {
                backend.open += 1;
                backend.relayed += 1;
                if self.shortage.backoff.success() {
                    info!("resources available again: accepting connections");
                }
                debug!(event = "relay", service = &*name, peer:% = peer; "{name}: relaying {peer} to pid {pid}");
                if let Some(limit) = self.services[idx].spec.max_runtime {
                    let key = self
                        .timers
                        .add(Instant::now() + limit, Timer::RelayRuntime(rid));
                    if let Some(tag) = self.relays.tag_mut(rid) {
                        tag.runtime_timer = Some(key);
                    }
                }
            }
            Err(e) if super::connection::is_resource_error(&e) => {
                // Out of fds or memory: one line per episode, and the
                // listeners rest for the back-off (as for accept).
                backend.remove_source(source);
                debug!("{name}: closing {peer}: cannot connect to the backend: {e}");
                let what = format!("{name}: relaying {peer}");
                super::connection::note_resource_fault(
                    &mut self.shortage.backoff,
                    &what,
                    &e,
                    Instant::now(),
                );
            }
            Err(e) => {
                backend.remove_source(source);
                warn!(event = "forward_closed", service = &*name, peer:% = peer;
                    "{name}: closing {peer}: cannot connect to the backend: {e}");
            }
        }
        Ok(())
    }

    /// Step 3: a relayed connection ended.
    pub(super) fn relay_closed(&mut self, c: Closed<Relayed>) {
        let t = &c.tag;
        if let Some(key) = t.runtime_timer {
            self.timers.cancel(key);
        }
        let level = match &c.end {
            End::Done => log::Level::Debug,
            _ => log::Level::Info,
        };
        log::log!(level, event = "relay_end", service = &*t.name;
            "{}: relayed {} ({} bytes up, {} down): {}", t.name, t.peer, c.up, c.down, c.end);
        if let Some(r) = self.forward.retired.iter_mut().find(|r| r.pid == t.pid) {
            r.open -= 1;
            if r.open == 0 && r.kill.is_none() {
                let pid = r.pid;
                self.stop_retired(pid);
            }
        }
        let Some(backend) = self.forward.backends.get_mut(&t.service) else {
            return;
        };
        backend.open -= 1;
        backend.up += c.up;
        backend.down += c.down;
        backend.remove_source(t.source);
        if let Some(idx) = self.services.index_of(t.service) {
            let now = Instant::now();
            self.arm_idle(idx, now);
            self.sync_service(idx, now);
        }
    }

    /// With nothing relayed and nobody waiting, `idle_stop` starts.
    fn arm_idle(&mut self, idx: usize, now: Instant) {
        let svc = &self.services[idx];
        let Some(after) = svc.spec.forward.as_ref().and_then(|f| f.idle_stop) else {
            return;
        };
        let Some(backend) = self.forward.backends.get_mut(&svc.id) else {
            return;
        };
        if let (State::Ready { pid }, 0, None) =
            (&backend.state, backend.active(), backend.idle_timer)
        {
            let timer = Timer::IdleStop {
                service: svc.id,
                pid: *pid,
            };
            backend.idle_timer = Some(self.timers.add(now + after, timer));
        }
    }

    /// `idle_stop` ran out: stop the backend if it is still idle.
    pub(super) fn idle_due(&mut self, id: ServiceId, pid: Pid) {
        let Some(backend) = self.forward.backends.get_mut(&id) else {
            return;
        };
        backend.idle_timer = None;
        let idle =
            matches!(backend.state, State::Ready { pid: p } if p == pid) && backend.active() == 0;
        if let (true, Some(idx)) = (idle, self.services.index_of(id)) {
            let name = &self.services[idx].name;
            info!(event = "backend_idle", service = &**name, pid = pid.as_raw();
                "{name}: backend pid {pid} idle: stopping it");
            self.stop_backend(idx);
        }
    }

    /// start_timeout ran out: the backend never became ready.
    pub(super) fn start_timed_out(&mut self, id: ServiceId, pid: Pid) {
        let Some(idx) = self.services.index_of(id) else {
            return;
        };
        let starting = matches!(self.forward.backends.get(&id).map(|b| &b.state),
            Some(State::Starting { pid: p, .. }) if *p == pid);
        if !starting {
            return;
        }
        let name = &self.services[idx].name;
        warn!(event = "backend_timeout", service = &**name, pid = pid.as_raw();
            "{name}: backend pid {pid} not ready within start_timeout: stopping it");
        self.stop_backend(idx);
        self.failed_start(idx, Instant::now());
    }

    /// SIGTERM to the backend's group; SIGKILL after `stop_timeout`.
    pub(super) fn stop_backend(&mut self, idx: usize) {
        let svc = &self.services[idx];
        let stop_timeout = svc
            .spec
            .forward
            .as_ref()
            .map_or(Duration::from_secs(10), |f| f.stop_timeout);
        let Some(backend) = self.forward.backends.get_mut(&svc.id) else {
            return;
        };
        let Some(pid) = backend.state.pid() else {
            return;
        };
        if matches!(backend.state, State::Stopping { .. }) {
            return;
        }
        if let State::Starting { probe, timeout, .. } = &mut backend.state {
            self.timers.cancel(*timeout);
            drop_probe(&mut self.poller, probe.take());
        }
        let (tree, timer) = terminate(
            &mut self.timers,
            &svc.name,
            "backend's",
            svc.id,
            pid,
            stop_timeout,
        );
        backend.tree = tree;
        backend.state = State::Stopping { pid, kill: timer };
    }

    /// stop_timeout ran out and the backend is still there.
    pub(super) fn backend_kill_due(&mut self, id: ServiceId, pid: Pid) {
        let stopping = matches!(self.forward.backends.get(&id).map(|b| &b.state),
            Some(State::Stopping { pid: p, .. }) if *p == pid)
            || self
                .forward
                .retired
                .iter()
                .any(|r| r.pid == pid && r.kill.is_some());
        if !stopping {
            return;
        }
        // The leader is not reaped yet (its state would say): the group's
        // id is still its own.
        let name = self.services.name_of(id).to_string();
        warn!(event = "backend_kill", service = name.as_str(), pid = pid.as_raw();
            "{name}: backend pid {pid} still running after stop_timeout: SIGKILL to its group");
        // Read before the kill: once the backend dies its children move.
        let now = tree::descendants(pid);
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        let kept = match self.forward.retired.iter_mut().find(|r| r.pid == pid) {
            Some(r) => Some(&mut r.tree),
            None => self.forward.backends.get_mut(&id).map(|b| &mut b.tree),
        };
        if let Some(kept) = kept {
            tree::merge(kept, now);
            signal_daemons(&name, pid, kept, Signal::SIGKILL);
        }
    }

    /// Step 4: a reaped pid that was a backend. Returns false if it was not.
    pub(super) fn backend_exited(&mut self, status: &WaitStatus, now: Instant) -> bool {
        let Some(pid) = status.pid() else {
            return false;
        };
        if let Some(at) = self.forward.retired.iter().position(|r| r.pid == pid) {
            let r = self.forward.retired.swap_remove(at);
            if let Some(kill) = r.kill {
                self.timers.cancel(kill);
            }
            kill_leftovers(&r.name, pid, &r.tree);
            let cut = self.cut_relays_of(pid);
            info!(event = "backend_exit", service = &*r.name, pid = pid.as_raw();
                "{}: retired backend pid {pid} {}{}", r.name, ExitText(status), cut_text(cut));
            self.start_held_back(now);
            return true;
        }
        let Some((&id, backend)) = self
            .forward
            .backends
            .iter_mut()
            .find(|(_, b)| b.state.pid() == Some(pid))
        else {
            return false;
        };
        let old = std::mem::replace(&mut backend.state, State::Stopped);
        let kept = std::mem::take(&mut backend.tree);
        if let Some(t) = backend.idle_timer.take() {
            self.timers.cancel(t);
        }
        busy::end_episode(&mut self.timers, backend.busy.take());
        self.arm_deadline(id);
        let name = self.services.name_of(id).to_string();
        let asked = match old {
            State::Stopping { kill, .. } => {
                self.timers.cancel(kill);
                true
            }
            State::Starting { timeout, probe, .. } => {
                self.timers.cancel(timeout);
                drop_probe(&mut self.poller, probe);
                false
            }
            _ => false,
        };
        self.forget_notify(id);
        kill_leftovers(&name, pid, &kept);
        let cut = self.cut_relays_of(pid);
        let what = ExitText(status);
        if asked {
            info!(event = "backend_exit", service = name.as_str(), pid = pid.as_raw();
                "{name}: backend pid {pid} stopped ({what}){}", cut_text(cut));
        } else {
            warn!(event = "backend_exit", service = name.as_str(), pid = pid.as_raw();
                "{name}: backend pid {pid} {what}{}", cut_text(cut));
        }
        let Some(idx) = self.services.index_of(id) else {
            return true;
        };
        if !asked {
            let ended = Ended {
                status,
                exec_failed: false,
                ran: Duration::ZERO,
                pass_mode: true,
                unread: false,
                not_ready: false,
            };
            if let Some(until) = self.services[idx].record_exit(&ended, now).held_until {
                self.hold(idx, until, now);
            }
        }
        self.restart_for_waiting(idx, now);
        true
    }

    /// Clients came while the backend stopped or died: start it again,
    /// unless the restart guard holds it (then they are closed).
    fn restart_for_waiting(&mut self, idx: usize, now: Instant) {
        let id = self.services[idx].id;
        let waiting = self
            .forward
            .backends
            .get(&id)
            .is_some_and(|b| !b.waiting.is_empty());
        if waiting && self.services[idx].spec.forward.is_some() {
            if self.services[idx].crash.held_until(now).is_none() {
                self.start_backend(idx);
            } else {
                self.close_waiting(idx, "the backend is held by the restart guard");
            }
        }
        self.sync_service(idx, now);
    }

    /// Close every connection relayed to backend `pid`, each logged.
    fn cut_relays_of(&mut self, pid: Pid) -> usize {
        let ids: Vec<RelayId> = self
            .relays
            .iter()
            .filter(|(_, t, _, _)| t.kind == Kind::Forward && t.pid == pid)
            .map(|(id, ..)| id)
            .collect();
        for id in &ids {
            if let Some(closed) = self.relays.close(self.poller.registry(), *id) {
                self.relay_closed(closed);
            }
        }
        ids.len()
    }

    /// max_runtime of a relayed connection ran out: it is closed.
    pub(super) fn relay_runtime_up(&mut self, id: RelayId) {
        if let Some(mut closed) = self.relays.close(self.poller.registry(), id) {
            closed.tag.runtime_timer = None;
            let t = &closed.tag;
            info!(event = "max_runtime", service = &*t.name; "{}: relayed {} ran past max_runtime: closed", t.name, t.peer);
            self.relay_closed(closed);
        }
    }

    /// At summond's stop: every backend gets SIGTERM, and SIGKILL if it
    /// is still there at its stop_timeout (`shutdown.rs`); the relayed
    /// connections close with summond.
    pub(super) fn stop_all_backends(&mut self) {
        let n = self.relays.len();
        if n > 0 {
            warn!("closing {n} relayed connections");
        }
        let now = Instant::now();
        let mut left = Vec::new();
        for (id, b) in &self.forward.backends {
            let Some(pid) = b.state.pid() else { continue };
            let (kill_at, termed) = match &b.state {
                State::Stopping { kill, .. } => (kill.at(), true),
                _ => {
                    let f = b.started_with.as_deref().and_then(|s| s.forward.as_ref());
                    let after = f.map_or(crate::config::DEFAULT_STOP_TIMEOUT, |f| f.stop_timeout);
                    (now + after, false)
                }
            };
            let name = self.services.name_of(*id).to_string();
            let tree = b.tree.clone();
            left.push(shutdown::Stopping {
                name,
                pid,
                tree,
                kill_at,
                termed,
            });
        }
        for r in &self.forward.retired {
            let kill_at = r.kill.map_or(now + r.stop_timeout, |k| k.at());
            let (name, pid, tree, termed) =
                (r.name.to_string(), r.pid, r.tree.clone(), r.kill.is_some());
            left.push(shutdown::Stopping {
                name,
                pid,
                tree,
                kill_at,
                termed,
            });
        }
        for b in left.iter_mut().filter(|b| !b.termed) {
            info!("{}: SIGTERM to backend pid {}'s group", b.name, b.pid);
            b.tree = stop_tree(&b.name, b.pid).1;
        }
        shutdown::wait_then_kill(left);
    }
}

impl Server {
    /// A forward service's backend as status and metrics show it.
    pub(super) fn backend_status(
        &self,
        svc: &super::ServiceRuntime,
    ) -> Option<crate::control::BackendStatus> {
        svc.spec.forward.as_ref()?;
        let b = self.forward.backends.get(&svc.id);
        let (mut up, mut down) = b.map_or((0, 0), |b| (b.up, b.down));
        for (_, tag, u, d) in self.relays.iter() {
            if tag.service == svc.id && tag.kind == Kind::Forward {
                up += u;
                down += d;
            }
        }
        Some(crate::control::BackendStatus {
            state: b.map_or("stopped", |b| b.state.name()).to_string(),
            pid: b.and_then(|b| b.state.pid()).map(|p| p.as_raw() as u32),
            ready_us: b.and_then(|b| b.ready_in).map(|d| d.as_micros() as u64),
            open: b.map_or(0, |b| u64::from(b.open)),
            relayed: b.map_or(0, |b| b.relayed),
            bytes_up: up,
            bytes_down: down,
            status: b.and_then(|b| b.status.clone()),
        })
    }
}

impl Server {
    /// After a reload: each running backend whose service changed or
    /// went is retired. It finishes its open connections and is then
    /// stopped (at once if it has none); new clients go to a new backend,
    /// started when the old one is gone if both use one address.
    pub(super) fn retire_changed_backends(&mut self) {
        let ids: Vec<ServiceId> = self.forward.backends.keys().copied().collect();
        for id in ids {
            let current = self.services.index_of(id).map(|i| &self.services[i].spec);
            let Some(b) = self.forward.backends.get_mut(&id) else {
                continue;
            };
            let changed = match (&b.started_with, current) {
                (Some(old), Some(new)) => **old != *new,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let Some(pid) = b.state.pid().filter(|_| changed) else {
                continue;
            };
            let Some(old) = b.started_with.take() else {
                continue;
            };
            if let Some(t) = b.idle_timer.take() {
                self.timers.cancel(t);
            }
            busy::end_episode(&mut self.timers, b.busy.take());
            let kill = match std::mem::replace(&mut b.state, State::Stopped) {
                State::Starting { probe, timeout, .. } => {
                    self.timers.cancel(timeout);
                    drop_probe(&mut self.poller, probe);
                    None
                }
                State::Stopping { kill, .. } => Some(kill),
                _ => None,
            };
            let open = self
                .relays
                .iter()
                .filter(|(_, t, ..)| t.kind == Kind::Forward && t.pid == pid)
                .count() as u32;
            let fwd = old.forward.as_ref().expect("a forward service");
            info!(event = "backend_retired", service = old.name.as_str(), pid = pid.as_raw();
                "{}: the service changed: backend pid {pid} finishes its {open} open connections, then stops",
                old.name);
            self.forward.retired.push(Retired {
                service: id,
                name: old.name.as_str().into(),
                pid,
                to: fwd.to.clone(),
                open,
                stop_timeout: fwd.stop_timeout,
                kill,
                tree: std::mem::take(&mut b.tree),
            });
            self.forget_notify(id);
            self.arm_deadline(id);
            if open == 0 && kill.is_none() {
                self.stop_retired(pid);
            }
        }
        self.start_held_back(Instant::now());
    }

    /// A forward connection a drainer holds (`drainer.rs`), to backend
    /// `pid` of service `name`: counted open (`open`), or no longer.
    pub(super) fn count_drained(
        &mut self,
        name: &str,
        pid: Pid,
        source: Option<SourceKey>,
        open: bool,
    ) {
        let Some(idx) = (0..self.services.len()).find(|i| &*self.services[*i].name == name) else {
            return;
        };
        let id = self.services[idx].id;
        if let Some(r) = self.forward.retired.iter_mut().find(|r| r.pid == pid) {
            r.open = if open {
                r.open + 1
            } else {
                r.open.saturating_sub(1)
            };
            if r.open == 0 && r.kill.is_none() {
                self.stop_retired(pid);
            }
        }
        let backend = self.forward.backends.entry(id).or_default();
        if open {
            backend.open += 1;
            backend.add_source(source);
        } else {
            backend.open = backend.open.saturating_sub(1);
            backend.remove_source(source);
            self.arm_idle(idx, Instant::now());
        }
    }

    /// SIGTERM to a retired backend's group; SIGKILL after its stop_timeout.
    fn stop_retired(&mut self, pid: Pid) {
        let Some(r) = self.forward.retired.iter_mut().find(|r| r.pid == pid) else {
            return;
        };
        let whose = "retired backend's";
        let (tree, timer) = terminate(
            &mut self.timers,
            &r.name,
            whose,
            r.service,
            pid,
            r.stop_timeout,
        );
        r.tree = tree;
        r.kill = Some(timer);
    }

    /// Clients waiting for a stopped backend (held back by a retired one
    /// on the same address, or come while it stopped): start it.
    fn start_held_back(&mut self, now: Instant) {
        let ids: Vec<ServiceId> = self
            .forward
            .backends
            .iter()
            .filter(|(_, b)| matches!(b.state, State::Stopped) && !b.waiting.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            match self.services.index_of(id) {
                Some(idx) if self.services[idx].spec.forward.is_some() => {
                    if !self.address_held(idx) {
                        self.restart_for_waiting(idx, now);
                    }
                }
                // The service went, or is no longer in forward mode.
                _ => {
                    if let Some(b) = self.forward.backends.get_mut(&id) {
                        for w in std::mem::take(&mut b.waiting) {
                            b.remove_source(w.source);
                            info!(
                                "closing {}: its forward service was removed by a reload",
                                w.peer
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The backend's leader is gone: what is left of its process group (a
/// server its shell started, workers) is killed too, as a service
/// manager ends a unit's cgroup; left running it could hold the port the
/// next backend binds. The group's id stays the leader's pid, unused by
/// any new process, while a member is left; this runs in the same turn
/// as the reap.
/// The members of its tree its stop found (daemons that left the group)
/// get it too.
fn kill_leftovers(name: &str, leader: Pid, tree: &[tree::Member]) {
    let _ = kill(Pid::from_raw(-leader.as_raw()), Signal::SIGKILL);
    signal_daemons(name, leader, tree, Signal::SIGKILL);
}

/// `sig` to the members of `leader`'s tree outside its group now, and
/// one line saying how many (each at debug: a wide tree is thousands).
fn signal_daemons(name: &str, leader: Pid, tree: &[tree::Member], sig: Signal) {
    let n = tree::signal(name, tree, leader, sig);
    if n > 0 {
        info!("{name}: {n} processes left backend pid {leader}'s process group (daemons): {sig} to them too");
    }
}

/// A stop's SIGTERM to backend `pid`'s group and to the members of its
/// tree outside it (one line for them): whether the group's went, and the
/// tree, for the SIGKILL. The tree is read first: a backend that dies
/// at SIGTERM hands its children on to init at once.
fn stop_tree(name: &str, pid: Pid) -> (nix::Result<()>, Vec<tree::Member>) {
    let members = tree::descendants(pid);
    let sent = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGTERM);
    signal_daemons(name, pid, &members, Signal::SIGTERM);
    (sent, members)
}

/// A stop: `stop_tree`, a warning if the group's SIGTERM could not go
/// (`whose`: "backend's", "retired backend's"), and the SIGKILL's timer,
/// `stop_timeout` from now. The tree and that timer.
fn terminate(
    timers: &mut super::timers::Timers,
    name: &str,
    whose: &str,
    service: ServiceId,
    pid: Pid,
    stop_timeout: Duration,
) -> (Vec<tree::Member>, TimerKey) {
    let (sent, tree) = stop_tree(name, pid);
    if let Err(e) = sent {
        warn!("{name}: cannot SIGTERM the {whose} group {pid}: {e}");
    }
    let kill = timers.add(
        Instant::now() + stop_timeout,
        Timer::BackendKill { service, pid },
    );
    (tree, kill)
}

fn cut_text(cut: usize) -> String {
    match cut {
        0 => String::new(),
        n => format!("; its {n} relayed connections were closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket bound to a port and connected to that same port meets
    /// itself (a simultaneous open), as a probe can; a real connection
    /// does not count as one.
    #[test]
    fn a_connection_to_itself_is_seen() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&port.into()).unwrap();
        s.connect(&port.into()).unwrap();
        assert!(self_connected(&s));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (c, _) = connect(&ListenAddr::Tcp(l.local_addr().unwrap())).unwrap();
        let _ = l.accept().unwrap();
        assert!(!self_connected(&c));
    }
}
