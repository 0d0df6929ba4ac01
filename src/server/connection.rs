//! One client's path, from a readable listener to an exec'd child, as a
//! straight line: the gate (max_children, the resource back-off, the
//! service's own limits), accept with a budget per turn, admission (access
//! rules, per-source count; refusals summarised), the child's fds and
//! variables, spawn, and keeping the client through a back-off. For
//! `accept = false` the listening sockets themselves are the payload.
//! A service with `proxy_protocol` has one more step between accept and
//! admission: the PROXY header, read in the front table (`front.rs`), whose
//! client is the client from then on.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::Interest;
use nix::libc;
use socket2::Socket;

use super::children::{for_peer, Child, HeldSocket};
use super::front::{
    self, After, FrontConn, FrontFailure, ProxyRefusal, Step, Work, HEADER_TIMEOUT,
};
use super::poller::TokenKind;
use super::services::RefuseReason;
use super::timers::Timer;
use super::Server;
use crate::addr::ListenAddr;
use crate::config::Pass;
use crate::env::EnvBlock;
use crate::limits::Backoff;
use crate::peer::{canonical_addr, Peer, SourceKey};
use crate::proxy::{Header, Version};
use crate::queue::QueueHead;
use crate::spawn::{self, FdMove};
use crate::tls::{Failure, SslVars};
use crate::upgrade::{ConnState, FrontState};
use rustc_hash::FxHashMap;

/// Connections taken from one listener per wake-up before the loop turns
/// to its other sources (signals, the control socket, other listeners);
/// a listener with clients left is served again on the next turn.
const ACCEPT_BUDGET: usize = 64;

/// What one accept of a `tls` service costs of `ACCEPT_BUDGET`: its
/// ClientHello is answered at once (a key exchange and a signature,
/// ~200 µs), and its handshake ends only when the loop reads the client's
/// Finished, at a later poll. Accepting 64 such clients (twice: the
/// budget again at the turn's end) before that poll let a few busy
/// clients of one address, each on to its next connection before its
/// last Finished was read, reach `HANDSHAKES_PER_SOURCE` (8 `openssl
/// s_time` from 127.0.0.1 were refused so): 8 a turn keep the Finished
/// messages read between bursts, and cost the loop what 64 plain
/// accepts do.
const TLS_ACCEPT_COST: usize = 8;

/// TLS clients accepted per turn over all listeners (a listener's own
/// share is `ACCEPT_BUDGET / TLS_ACCEPT_COST`): with many TLS services
/// a per-listener budget alone answered 8 hellos for each (320 for 40,
/// more than `HANDSHAKE_LIMIT`) before one Finished was read. What one
/// listener alone gets in a turn (its wake and the turn's end); a
/// listener left without is queued, and the queue is served first the
/// next turn (`Server::end_turn`), so the listeners take it in turn.
pub(super) const TLS_TURN_ACCEPTS: usize = 2 * ACCEPT_BUDGET / TLS_ACCEPT_COST;

/// An accepted client whose child could not be started for lack of fds or
/// processes; it is started when the back-off ends instead of being
/// dropped; a service a reload gave its address to admits it afresh, the
/// one that accepted it does not (its per-source token is spent).
pub(super) struct PendingConnection {
    addr: ListenAddr,
    /// The service that accepted it, for the log line if it is closed.
    name: String,
    conn: Socket,
    peer: Peer,
    /// A banner was written to it already.
    greeted: bool,
}

impl PendingConnection {
    /// A connection the previous image kept through a back-off; none if
    /// its address does not read (the socket closes).
    fn resumed(p: ConnState) -> Option<Self> {
        // SAFETY: named by the state, taken once.
        let conn = Socket::from(unsafe { OwnedFd::from_raw_fd(p.fd) });
        Some(PendingConnection {
            addr: p.addr.parse().ok()?,
            name: p.name,
            conn,
            peer: p.peer,
            greeted: p.greeted,
        })
    }

    /// What the next image needs of it: the socket, its address, the
    /// service's name, the client, whether it was greeted.
    fn to_state(&self) -> ConnState {
        ConnState {
            fd: self.conn.as_raw_fd(),
            addr: self.addr.to_string(),
            name: self.name.clone(),
            peer: self.peer.clone(),
            greeted: self.greeted,
        }
    }
}

/// Out of fds or processes (EMFILE, ENFILE, EAGAIN): the back-off over
/// all listeners (none is watched while it lasts), and the clients kept
/// through it, started when it ends (`retry_pending`).
#[derive(Default)]
pub(super) struct Shortage {
    pub backoff: Backoff,
    pub kept: Vec<PendingConnection>,
}

impl Shortage {
    /// The clients kept, for the next image of an upgrade.
    pub fn to_state(&self) -> Vec<ConnState> {
        self.kept.iter().map(PendingConnection::to_state).collect()
    }

    /// The back-off episode open now, by its delay in ms, for the next
    /// image of an upgrade.
    pub fn episode_ms(&self) -> Option<u64> {
        self.backoff
            .episode()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Keep the clients the previous image kept (one whose address does
    /// not read is closed), and its back-off episode: not its pause (the
    /// kept clients are tried at once, and a shortage that lasts pauses
    /// again), but that one is open, so that it ends with its line here.
    pub fn resume(&mut self, kept: Vec<ConnState>, episode_ms: Option<u64>) {
        self.kept
            .extend(kept.into_iter().filter_map(PendingConnection::resumed));
        if let Some(ms) = episode_ms {
            self.backoff.resume_episode(Duration::from_millis(ms));
        }
    }
}

/// What became of an attempt to start a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Launch {
    /// Its pid.
    Started(nix::unistd::Pid),
    /// Out of fds or processes: try again after the back-off.
    RetryLater,
    Failed,
}

/// What a new child is: built by the accept and pass paths, consumed by
/// `spawn_child`.
struct ChildRequest<'a> {
    fds: &'a [FdMove],
    env: &'a EnvBlock,
    /// Add `LISTEN_PID` (listen_fds mode).
    listen_pid: bool,
    /// The client, in accept mode.
    peer: Option<Peer>,
    /// What it counts under for max_per_source.
    source: Option<SourceKey>,
    /// The sockets, in pass mode.
    held_sockets: Vec<HeldSocket>,
    /// Its NOTIFY_SOCKET, in pass mode.
    notify: Option<Socket>,
}

/// Write `text` to a freshly accepted client without ever waiting: one
/// non-blocking send, which a new socket's empty buffer always takes
/// whole (the config caps banners at MAX_BANNER bytes). A client gone
/// already is not an error worth a line.
fn send_banner(conn: &Socket, text: &str) {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if let Err(e) = conn.send_with_flags(text.as_bytes(), flags) {
        debug!("banner not sent: {e}");
    }
}

/// Out of fds, memory or processes. EAGAIN is fork's (clone's) process
/// limit here: an accept's EAGAIN is WouldBlock, matched before this by
/// every accept, and a `unix://` forward connect's (a full listen
/// backlog) is matched before it too (`forward/busy.rs`).
pub(super) fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN)
    )
}

impl Server {
    pub(super) fn on_listener_ready(&mut self, addr: &ListenAddr) {
        let Some(sock) = self.sockets.get(addr) else {
            return;
        };
        let (idx, blocking) = (sock.service, sock.blocking);
        if sock.lent_out(self.services[idx].spec.instances) || !sock.watched {
            return;
        }
        let now = Instant::now();
        if !self.gate_is_open(now) {
            self.park(addr);
            return;
        }
        let spec = &self.services[idx].spec;
        let reads_itself = spec.reads_itself();
        if reads_itself && blocking {
            // A pass-mode child had it before a reload moved it here.
            self.sockets.set_blocking(addr, false);
        }
        // An internal service's mode follows the socket: connections on a
        // stream socket, datagrams on the other.
        if spec.internal.is_some() && !addr.is_stream() {
            self.serve_datagrams(idx, addr);
        } else if reads_itself {
            self.retry_pending(now);
            self.accept_connections(idx, addr, now);
        } else {
            self.start_pass_children(idx, addr, None, now);
        }
        self.sync_service(idx, Instant::now());
    }

    /// A pass-mode child gave back `addr` with a datagram or client
    /// already waiting: start the next child now, as the event would,
    /// rather than watch the socket only for epoll to report it and unwatch
    /// it again at the spawn (two epoll_ctl, a wake and a peek per
    /// datagram of a busy wait service). `head` is what waits, just seen.
    /// Anything that would hold the spawn back leaves the socket to the
    /// usual watching.
    pub(super) fn serve_waiting(&mut self, addr: &ListenAddr, head: QueueHead, now: Instant) {
        let Some(sock) = self.sockets.get(addr) else {
            return;
        };
        let idx = sock.service;
        if sock.lent_out(self.services[idx].spec.instances) || sock.watched || sock.parked {
            return;
        }
        if self.services[idx].spec.reads_itself() {
            // A reload gave the address to a service that reads it itself.
            return;
        }
        if self.gate_is_open(now) {
            self.start_pass_children(idx, addr, Some(head), now);
        }
    }

    /// Accept until the queue is empty, a limit closes the gate, or the
    /// budget for this turn is spent; at a limit the rest wait in the
    /// kernel backlog, unwatched.
    fn accept_connections(&mut self, idx: usize, addr: &ListenAddr, now: Instant) {
        // A listener bound to one address is the local end of every
        // connection it accepts.
        let listening = match addr {
            ListenAddr::Tcp(sa) => Some(*sa),
            _ => None,
        };
        let tls = self.services[idx].spec.tls.is_some();
        let cost = if tls { TLS_ACCEPT_COST } else { 1 };
        for _ in 0..ACCEPT_BUDGET / cost {
            if tls && self.tls_accepts_left == 0 {
                break;
            }
            if !self.gate_is_open(now) || self.front_is_full_for(idx) {
                self.park(addr);
                return;
            }
            if !self.service_may_spawn(idx, now) {
                return;
            }
            let Some(sock) = self.sockets.get(addr) else {
                return;
            };
            match sock.listener.socket.accept() {
                Ok((conn, from)) => {
                    if tls {
                        self.tls_accepts_left -= 1;
                    }
                    let peer = Peer::of(&conn, &from, listening);
                    if self.services[idx].spec.proxy.is_some() {
                        self.start_front(idx, addr, conn, peer, now);
                    } else {
                        self.start_connection(idx, addr, conn, peer, now, false, false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
                    ) => {}
                Err(e) if is_resource_error(&e) => {
                    let name = self.services[idx].spec.name.clone();
                    self.resource_fault(&format!("{name}: accept on {addr}"), &e, now);
                    self.park(addr);
                    return;
                }
                Err(e) => {
                    error!("{}: accept on {addr}: {e}", self.services[idx].spec.name);
                    return;
                }
            }
        }
        self.sockets.queue_ready(addr);
    }

    /// One accepted client: access rules, per-source count, then a child.
    /// `admitted`: a client kept through a back-off by the service that
    /// still owns its address. It passed the per-source count and spent
    /// its per-source token when it was accepted; checking them again
    /// would refuse it for its own token (`per_source_rate = "1/1m"`).
    /// The access rules cost nothing and give the same answer unless a
    /// reload changed them, so they are asked again.
    #[allow(clippy::too_many_arguments)]
    fn start_connection(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        now: Instant,
        greeted: bool,
        admitted: bool,
    ) {
        let svc = &self.services[idx];
        // Clients are counted (and refusals summarised) by prefix
        // (per_source_prefix); computed once here.
        let source = peer
            .source_key()
            .map(|k| k.grouped(svc.spec.per_source_prefix));
        if let Some(ip) = peer.ip() {
            if let Err(why) = svc.spec.access.permits(ip) {
                self.refuse(idx, &conn, &peer, source, RefuseReason::Access(why), now);
                return;
            }
        }
        if let (Some(max), Some(key), false) = (svc.spec.max_per_source, source, admitted) {
            let running = self.children.per_source(svc.id, &key)
                + self.internal.conns.per_source(svc.id, &key)
                + self.forward.per_source(svc.id, &key)
                + self.front.handshakes_of(svc.id, &key);
            if running >= max {
                self.refuse(
                    idx,
                    &conn,
                    &peer,
                    source,
                    RefuseReason::MaxPerSource(max),
                    now,
                );
                return;
            }
        }
        if let (Some(rate), Some(key), false) = (svc.spec.per_source_rate, source, admitted) {
            // Last, so a client refused for another reason spends nothing.
            if !self.services[idx].source_rates().admit(key, rate, now) {
                self.refuse(
                    idx,
                    &conn,
                    &peer,
                    source,
                    RefuseReason::PerSourceRate(rate),
                    now,
                );
                return;
            }
        }
        let name = self.services[idx].spec.name.as_str();
        debug!(event = "connection", service = name, peer:% = peer;
            "{name}: connection from {peer} on {addr}");
        self.launch_connection(idx, addr, conn, peer, source, greeted);
    }

    /// A client of a service with `proxy_protocol`, just accepted: a peer
    /// outside `proxy_from` is refused before a byte is read; a header
    /// already there whole is read and the client goes on at once;
    /// otherwise the connection waits in the front table, its timer set.
    fn start_front(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        now: Instant,
    ) {
        let Some(proxy) = &self.services[idx].spec.proxy else {
            return;
        };
        let version = proxy.version;
        if !peer.ip().is_some_and(|ip| proxy.trusts(ip)) {
            self.refuse_front(idx, &conn, &peer, ProxyRefusal::Untrusted, now);
            return;
        }
        let header = match self.front.read_now(&conn, version) {
            Ok(Some(header)) => header,
            Ok(None) => {
                debug!(
                    "{}: waiting for the PROXY header of {peer}",
                    self.services[idx].spec.name
                );
                let work = Work::Header(version);
                self.enter_front(idx, addr, conn, peer, work, now + HEADER_TIMEOUT);
                return;
            }
            Err(why) => {
                self.refuse_front(idx, &conn, &peer, why, now);
                return;
            }
        };
        self.after_header(idx, addr, conn, peer, header, version, false, now);
    }

    /// Its header read (`waited`: and the `Work::Local` wait for what
    /// follows one the balancer sent for itself is over): a health check
    /// is counted and closed, one with nothing after its header yet
    /// waits (`LOCAL_WAIT`), and any other client goes on to admission.
    #[allow(clippy::too_many_arguments)]
    fn after_header(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        header: Header,
        version: Version,
        waited: bool,
        now: Instant,
    ) {
        if for_itself(&header, &peer) {
            match front::after_header(&conn) {
                After::Reset => return self.health_check(idx),
                After::Nothing if !waited => {
                    let work = Work::Local(Box::new(header), version);
                    self.enter_front(idx, addr, conn, peer, work, now + front::local_wait());
                    return;
                }
                After::Nothing | After::Client => {}
            }
        }
        let client = peer.proxied(header);
        self.start_connection(idx, addr, conn, client, now, false, false);
    }

    /// Into the front table until `deadline`, its socket registered.
    fn enter_front(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        work: Work,
        deadline: Instant,
    ) {
        let token = self.poller.tokens.next();
        let fd = conn.as_raw_fd();
        let registry = self.poller.registry();
        if let Err(e) = registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
            info!(
                "{}: cannot wait for the PROXY header of {peer}: {e}",
                self.services[idx].spec.name
            );
            return;
        }
        self.poller.tokens.insert(token, TokenKind::Front);
        let timer = self.timers.add(deadline, Timer::FrontDue(token));
        let service = self.services[idx].id;
        let (addr, socket) = (addr.clone(), conn);
        self.front.insert(
            token,
            FrontConn {
                socket,
                addr,
                service,
                peer,
                source: None,
                work,
                timer,
            },
        );
    }

    /// More bytes (or room) on a connection waiting for its header or
    /// its handshake.
    pub(super) fn on_front_ready(&mut self, token: mio::Token) {
        let step = self.front.advance(token);
        self.front_step(token, step);
    }

    /// Where the work on `token`'s connection went.
    fn front_step(&mut self, token: mio::Token, step: Step) {
        match step {
            Step::Wait => {}
            Step::Done(conn, header, version) => {
                self.header_done(token, conn, header, version, false);
            }
            Step::Waited(conn, header, version) => {
                self.header_done(token, conn, header, version, true);
            }
            Step::Handshaken(conn) => {
                self.leave_front(token, &conn);
                self.handshake_done(conn);
            }
            Step::Failed(conn, why) => self.front_failed(token, conn, why),
        }
    }

    /// A connection's header is read (`waited`: and what follows one the
    /// balancer sent for itself is known, or its wait is over): it leaves
    /// the table for its address's service now. A reload (or the config
    /// of an upgrade) may have moved it, or stopped trusting this peer.
    fn header_done(
        &mut self,
        token: mio::Token,
        conn: FrontConn,
        header: Header,
        version: Version,
        waited: bool,
    ) {
        self.leave_front(token, &conn);
        let now = Instant::now();
        let FrontConn {
            socket, addr, peer, ..
        } = conn;
        match self.sockets.get(&addr).map(|s| s.service) {
            Some(idx) if !self.services[idx].spec.accept => {
                info!("closing {peer}: {addr} no longer accepts connections (reload)");
            }
            Some(idx) if !self.still_trusts(idx, &peer, version) => {
                self.refuse_front(idx, &socket, &peer, ProxyRefusal::Untrusted, now);
                self.sync_service(idx, now);
            }
            Some(idx) => {
                self.after_header(idx, &addr, socket, peer, header, version, waited, now);
                self.sync_service(idx, now);
            }
            None => info!("closing {peer}: {addr} no longer accepts connections (reload)"),
        }
        self.unpark(now);
    }

    /// A balancer's health check: a header it sent for itself
    /// (`for_itself`) and a reset without a byte more (haproxy's `check`
    /// with `send-proxy-v2` or `check-send-proxy`, every 2 s by
    /// default). Counted (`health_checks`), not logged, and closed by the
    /// caller: a child per check would fork, log and spend a
    /// `max_instances` place for nobody. One that sends data, shuts its
    /// side (a FIN: haproxy's real client from a `unix@` frontend that
    /// sends nothing), or waits past `LOCAL_WAIT` (for a banner), is
    /// served as any connection.
    pub(super) fn health_check(&mut self, idx: usize) {
        self.services[idx].stats.health_checks += 1;
    }

    /// Does service `idx`, as configured now, still read a header of
    /// `version` from `peer`? A connection accepted under a config that
    /// trusted its peer is judged again when its header completes: a
    /// reload that drops a balancer from `proxy_from` (or turns
    /// `proxy_protocol` off or to another version) leaves it no window.
    fn still_trusts(&self, idx: usize, peer: &Peer, version: Version) -> bool {
        self.services[idx].spec.proxy.as_ref().is_some_and(|p| {
            (p.version == version || p.version == Version::Any)
                && peer.ip().is_some_and(|ip| p.trusts(ip))
        })
    }

    /// `HEADER_TIMEOUT` or `HANDSHAKE_TIMEOUT` ran out for `token`'s
    /// connection.
    pub(super) fn front_late(&mut self, token: mio::Token) {
        if self.front.extend(token) {
            let rest = crate::tls::HANDSHAKE_TIMEOUT - crate::tls::HELLO_TIMEOUT;
            let timer = self
                .timers
                .add(Instant::now() + rest, Timer::FrontDue(token));
            self.front.set_timer(token, timer);
            return;
        }
        if let Some(step) = self.front.late(token) {
            self.front_step(token, step);
        }
    }

    /// A connection that leaves the front table without its header or
    /// handshake: refused by the service that accepted it (if a reload
    /// kept it), closed.
    fn front_failed(&mut self, token: mio::Token, conn: FrontConn, why: FrontFailure) {
        self.leave_front(token, &conn);
        let now = Instant::now();
        if let Some(idx) = self.services.index_of(conn.service) {
            match why {
                FrontFailure::Proxy(why) => {
                    self.refuse_front(idx, &conn.socket, &conn.peer, why, now);
                }
                FrontFailure::Tls(why) => {
                    let (peer, source) = (&conn.peer, conn.source);
                    self.refuse(idx, &conn.socket, peer, source, RefuseReason::Tls(why), now);
                }
            }
            self.sync_service(idx, now);
        }
        self.unpark(now);
    }

    /// Out of the poll set (a child would keep the registration alive
    /// with its copy of the socket), its token and timer gone.
    pub(super) fn leave_front(&mut self, token: mio::Token, conn: &FrontConn) {
        let _ = self
            .poller
            .registry()
            .deregister(&mut SourceFd(&conn.socket.as_raw_fd()));
        self.poller.tokens.remove(&token);
        self.timers.cancel(conn.timer);
    }

    /// At `HANDSHAKE_LIMIT`, `token`'s handshake gives its place to a
    /// newcomer (`FrontTable::victim`): refused as `tls`, closed.
    pub(super) fn evict_handshake(&mut self, token: mio::Token) {
        if let Some(conn) = self.front.remove(token) {
            self.front_failed(token, conn, FrontFailure::Tls(Failure::Evicted));
        }
    }

    /// The connections waiting for a header, for the next image: nothing
    /// of them has been read, so it reads each from the start, in the
    /// time it had left. Handshakes are not handed over (rustls's state
    /// does not cross an exec): they close with this image.
    pub(super) fn front_state(&self, now: Instant) -> Vec<FrontState> {
        self.front
            .iter()
            .filter_map(|(_, c)| match &c.work {
                Work::Header(version) => Some((c, *version, None)),
                // A header already taken off the socket goes in the
                // state; a handshake's rustls state cannot cross an exec
                // (a forward one's is a drainer's by now: `Drained`).
                Work::Local(header, version) => Some((c, *version, Some((**header).clone()))),
                Work::Drained(_) => Some((c, Version::Any, None)),
                Work::Handshake(_) => None,
            })
            .map(|(c, version, local)| FrontState {
                drained: matches!(c.work, Work::Drained(_)),
                source: c.source,
                fd: c.socket.as_raw_fd(),
                addr: c.addr.to_string(),
                service: self.services.name_of(c.service).to_string(),
                peer: c.peer.clone(),
                version,
                left_ns: u64::try_from(c.timer.at().saturating_duration_since(now).as_nanos())
                    .unwrap_or(u64::MAX),
                local,
            })
            .collect()
    }

    /// The previous image's waiting connections, back in the table with
    /// the time they had left from `handed`; one whose service or
    /// address the new config dropped is closed.
    pub(super) fn resume_front(
        &mut self,
        front: Vec<FrontState>,
        index: &FxHashMap<String, usize>,
        handed: Instant,
    ) {
        for c in front {
            // SAFETY: named by the state, taken once.
            let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(c.fd) });
            let (Some(&idx), Ok(addr)) = (index.get(&c.service), c.addr.parse::<ListenAddr>())
            else {
                info!(
                    "{}: closing {} (awaiting its PROXY header): service removed",
                    c.service, c.peer
                );
                continue;
            };
            let token = self.poller.tokens.next();
            let fd = socket.as_raw_fd();
            if let Err(e) =
                self.poller
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE)
            {
                info!("{}: closing {}: {e}", c.service, c.peer);
                continue;
            }
            self.poller.tokens.insert(token, TokenKind::Front);
            let most = match (c.local.is_some(), c.drained) {
                (true, _) => front::local_wait(),
                (_, true) => super::drained::DRAINED_WAIT,
                _ => HEADER_TIMEOUT,
            };
            let at =
                handed + std::time::Duration::from_nanos(c.left_ns.min(most.as_nanos() as u64));
            let timer = self.timers.add(at, Timer::FrontDue(token));
            let service = self.services[idx].id;
            let conn = FrontConn {
                socket,
                addr,
                service,
                peer: c.peer,
                source: c.source.filter(|_| c.drained),
                work: match (c.local, c.drained) {
                    (Some(header), _) => Work::Local(Box::new(header), c.version),
                    (None, true) => Work::Drained(None),
                    (None, false) => Work::Header(c.version),
                },
                timer,
            };
            self.front.insert(token, conn);
        }
    }

    /// A `proxy` refusal, counted under the balancer's address.
    fn refuse_front(
        &mut self,
        idx: usize,
        conn: &Socket,
        peer: &Peer,
        why: ProxyRefusal,
        now: Instant,
    ) {
        let source = peer
            .source_key()
            .map(|k| k.grouped(self.services[idx].spec.per_source_prefix));
        self.refuse(idx, conn, peer, source, RefuseReason::Proxy(why), now);
    }

    /// A connection refused: counted (`ServiceTable::refuse`, as a
    /// datagram is), told the service's `banner_fail`, and logged unless
    /// the refusal log summarises it with its repeats; the connection is
    /// closed when the caller drops it.
    pub(super) fn refuse(
        &mut self,
        idx: usize,
        conn: &Socket,
        peer: &Peer,
        source: Option<SourceKey>,
        why: RefuseReason,
        now: Instant,
    ) {
        let log = self.services.refuse(idx, source, why, now);
        let svc = &self.services[idx];
        if let Some(text) = &svc.spec.banner_fail {
            send_banner(conn, text);
        }
        if log {
            let name = svc.spec.name.as_str();
            info!(event = "refused", service = name, peer:% = peer;
                "{name}: refused {peer} ({why})");
        }
    }

    /// A readable internal UDP socket: answered in the loop
    /// (`Internals::serve_datagrams`), and served again next turn if its
    /// budget ran out.
    fn serve_datagrams(&mut self, idx: usize, addr: &ListenAddr) {
        let children = self.children.active(self.services[idx].id);
        let Server {
            internal,
            services,
            sockets,
            ..
        } = self;
        let Some(sock) = sockets.get(addr) else {
            return;
        };
        if internal.serve_datagrams(services, idx, &sock.listener.socket, children) {
            sockets.queue_ready(addr);
        }
    }

    /// An admitted TCP client of an internal service: served in the loop
    /// (`internal/`), counted and its `rate` token spent as a child's
    /// would be.
    fn start_internal(&mut self, idx: usize, conn: Socket, peer: Peer, source: Option<SourceKey>) {
        let svc = &self.services[idx];
        let Some(kind) = svc.spec.internal else {
            return;
        };
        let Some(token) = self
            .internal
            .open(&mut self.poller, svc, kind, conn, peer, source)
        else {
            return;
        };
        self.services[idx].stats.served += 1;
        self.take_rate_token(idx, Instant::now());
        // Answer at once (daytime and time need no readiness).
        self.on_internal_ready(token);
    }

    /// Start the child for an accepted, admitted connection. If fds or
    /// processes ran out, keep the connection for a retry after the
    /// back-off rather than dropping the client.
    fn launch_connection(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        source: Option<SourceKey>,
        greeted: bool,
    ) {
        let spec = &self.services[idx].spec;
        if spec.internal.is_some() {
            // Served in the loop, no child.
            self.start_internal(idx, conn, peer, source);
            return;
        }
        if spec.tls.is_some() {
            // The handshake first, in the loop; the child comes after it.
            self.start_tls(idx, addr, conn, peer, source);
            return;
        }
        let greeted = match (&spec.banner, greeted) {
            (Some(text), false) => {
                send_banner(&conn, text);
                true
            }
            _ => greeted,
        };
        if spec.forward.is_some() {
            // Relayed to the backend, which is started if it is not.
            self.forward_client(idx, conn, None, peer, source);
            return;
        }
        let outcome = self.spawn_for_client(idx, conn.as_raw_fd(), &peer, source, None);
        if outcome == Launch::RetryLater {
            let name = self.services[idx].spec.name.clone();
            self.shortage.kept.push(PendingConnection {
                addr: addr.clone(),
                name,
                conn,
                peer,
                greeted,
            });
        }
        // Otherwise `conn` drops here: the child has its own copy.
    }

    /// Start the child of an accepted client whose connection (or, behind
    /// TLS, the child's end of the socket pair) is `fd`, with the client's
    /// variables and, behind TLS, the `SSL_*` ones.
    pub(super) fn spawn_for_client(
        &mut self,
        idx: usize,
        fd: RawFd,
        peer: &Peer,
        source: Option<SourceKey>,
        ssl: Option<&SslVars>,
    ) -> Launch {
        let spec = &self.services[idx].spec;
        // The scratch buffers of the last connection, reused: a connection
        // allocates nothing for its fd plan and variables.
        let (mut fds, mut env) = self.launcher.take_scratch();
        spawn::plan_fds_into(
            &mut fds,
            spec.pass,
            spec.stderr,
            &[fd],
            self.launcher.devnull(),
        );
        env.clear();
        peer.write_env(&mut env);
        if let Some(ssl) = ssl {
            ssl.write_env(&mut env);
        }
        let listen_pid = spec.pass == Pass::ListenFds;
        if listen_pid {
            env.push("LISTEN_FDS", 1);
            env.push("LISTEN_FDNAMES", "connection");
        }
        let outcome = self.spawn_child(
            idx,
            ChildRequest {
                fds: &fds,
                env: &env,
                listen_pid,
                peer: Some(peer.clone()),
                source,
                held_sockets: Vec::new(),
                notify: None,
            },
        );
        self.launcher.put_scratch((fds, env));
        outcome
    }

    /// Start children for connections kept through a back-off, as soon as
    /// their service may (max_instances, rate, a crash hold). The service
    /// that accepted one does not count it against its per-source limits
    /// again (it spent its token when accepted); a service a reload gave
    /// the address to admits it afresh. One that cannot take a connection
    /// any more closes it with a line saying why.
    pub(super) fn retry_pending(&mut self, now: Instant) {
        if self.shortage.kept.is_empty() || self.shortage.backoff.is_paused(now) {
            return;
        }
        for p in std::mem::take(&mut self.shortage.kept) {
            let PendingConnection {
                addr,
                name,
                conn,
                peer,
                greeted,
            } = p;
            match self.sockets.get(&addr).map(|s| s.service) {
                None => info!(
                    "{name}: closing the kept connection of {peer}: {addr} was removed by a reload"
                ),
                Some(idx)
                    if !self.services[idx].spec.accept
                        && self.services[idx].spec.internal.is_none() =>
                {
                    info!(
                        "{name}: closing the kept connection of {peer}: {addr} now belongs to \
                         \"{}\", which does not accept connections",
                        self.services[idx].spec.name
                    )
                }
                Some(idx) if self.may_spawn(idx, now) => {
                    // Admitted already if the service that took it still
                    // owns the address; another one (after a reload)
                    // admits it afresh.
                    let admitted = self.services[idx].spec.name == name;
                    self.start_connection(idx, &addr, conn, peer, now, greeted, admitted)
                }
                Some(_) => self.shortage.kept.push(PendingConnection {
                    addr,
                    name,
                    conn,
                    peer,
                    greeted,
                }),
            }
        }
    }

    /// `accept = false`: hand the socket(s) over and stop watching them
    /// until the child exits. What waits on each is noted, so the exit
    /// can tell whether the child took anything.
    /// `ready_head`: what waits on `ready`, if it was just seen (not looked
    /// at again).
    /// `accept = false`: start the children service `idx` is missing (one,
    /// or up to `instances`), as far as its limits allow; `ready` woke
    /// us, with `ready_head` waiting on it if just seen.
    pub(super) fn start_pass_children(
        &mut self,
        idx: usize,
        ready: &ListenAddr,
        ready_head: Option<QueueHead>,
        now: Instant,
    ) {
        let (id, want) = (
            self.services[idx].id,
            self.services[idx].spec.instances.max(1),
        );
        let mut head = ready_head;
        while self.children.active(id) < want && self.service_may_spawn(idx, now) {
            if !self.start_pass_child(idx, ready, head.take()) {
                return;
            }
        }
    }

    /// `start = "eager"`: start what service `idx` is missing without
    /// waiting for a client (at startup, a reload, after a restart).
    pub(super) fn start_eager(&mut self, idx: usize, now: Instant) {
        let spec = &self.services[idx].spec;
        if !spec.eager || spec.accept || spec.disabled || spec.internal.is_some() {
            return;
        }
        let Some(addr) = spec
            .listen
            .iter()
            .map(|l| &l.addr)
            .find(|a| self.sockets.contains(a))
            .cloned()
        else {
            return;
        };
        if self.gate_is_open(now) {
            self.start_pass_children(idx, &addr, None, now);
        }
        self.sync_service(idx, now);
    }

    /// Start one of them; false if it did not start.
    fn start_pass_child(
        &mut self,
        idx: usize,
        ready: &ListenAddr,
        ready_head: Option<QueueHead>,
    ) -> bool {
        let spec = &self.services[idx].spec;
        let addrs: Vec<ListenAddr> = match spec.pass {
            Pass::Stdio => vec![ready.clone()],
            Pass::ListenFds => spec
                .listen
                .iter()
                .filter(|l| self.sockets.contains(&l.addr))
                .map(|l| l.addr.clone())
                .collect(),
        };
        let mut payload: Vec<RawFd> = Vec::with_capacity(addrs.len());
        let mut held_sockets = Vec::with_capacity(addrs.len());
        for a in addrs {
            // Legacy wait-mode programs (tftpd) read with blocking calls;
            // O_NONBLOCK lives on the shared file description, and summond
            // does not touch the socket until the child exits.
            self.sockets.set_blocking(&a, true);
            let Some(sock) = self.sockets.get(&a) else {
                continue;
            };
            let head = match ready_head {
                Some(h) if a == *ready => h,
                _ => QueueHead::of(&sock.listener.socket, &a),
            };
            if let Some(fd) = self.sockets.lent_fd(&a, self.origin.opts.fd_base) {
                payload.push(fd);
            }
            held_sockets.push(HeldSocket { head, addr: a });
        }
        let fds = spawn::plan_fds(spec.pass, spec.stderr, &payload, self.launcher.devnull());
        let mut env = EnvBlock::default();
        let listen_pid = spec.pass == Pass::ListenFds;
        if listen_pid {
            let names: Vec<&str> = spec
                .listen
                .iter()
                .filter(|l| held_sockets.iter().any(|h| h.addr == l.addr))
                .map(|l| l.name.as_deref().unwrap_or(&spec.name))
                .collect();
            env.push("LISTEN_FDS", payload.len());
            env.push("LISTEN_FDNAMES", names.join(":"));
        }
        let notify = self.child_notify_socket(idx, &mut env);
        let addrs: Vec<ListenAddr> = held_sockets.iter().map(|h| h.addr.clone()).collect();
        let request = ChildRequest {
            fds: &fds,
            env: &env,
            listen_pid,
            peer: None,
            source: None,
            held_sockets,
            notify,
        };
        let outcome = self.spawn_child(idx, request);
        if !matches!(outcome, Launch::Started(_)) {
            self.sockets.release(&addrs, None);
        }
        if outcome == Launch::RetryLater {
            // What woke us is still queued, and epoll (edge-triggered)
            // reports it only once: parked, the socket is watched again
            // when the back-off ends, and epoll reports the datagram or
            // client at that registration, as for a kept connection.
            self.park(ready);
        }
        matches!(outcome, Launch::Started(_))
    }

    /// Fork and exec for service `idx`; record the child.
    fn spawn_child(&mut self, idx: usize, req: ChildRequest<'_>) -> Launch {
        let now = Instant::now();
        let rt = &mut self.services[idx];
        let spawned = match self.launcher.spawn(rt, req.fds, req.env, req.listen_pid) {
            Ok(s) => s,
            Err(e) => {
                self.count_spawn_failure(idx);
                let what = format!(
                    "{}: cannot start a child{}",
                    self.services[idx].spec.name,
                    for_peer(req.peer.as_ref())
                );
                if is_resource_error(e.io_error()) {
                    self.resource_fault(&what, &e, now);
                    return Launch::RetryLater;
                }
                error!(event = "spawn_failed", service = self.services[idx].spec.name.as_str();
                    "{what}: {e}");
                return Launch::Failed;
            }
        };
        let pid = spawned.pid;
        self.sockets
            .lend(req.held_sockets.iter().map(|h| &h.addr), pid);
        let svc = &mut self.services[idx];
        svc.stats.served += 1;
        let name = svc.spec.name.as_str();
        debug!(event = "spawn", service = name, pid = pid.as_raw(); "{name}: started pid {pid}");
        self.take_rate_token(idx, now);
        let svc = &self.services[idx];
        let child = Child {
            service: svc.id,
            name: svc.name.clone(),
            source: req.source,
            peer: req.peer,
            started_at: now,
            exec_failed: spawned.failed.is_some(),
            held_sockets: req.held_sockets,
            // Cancelled when the child exits: an entry per child served
            // within the limit would otherwise stay until the deadline.
            runtime_timer: self.services[idx].spec.max_runtime.map(|limit| {
                self.timers.add(
                    now + limit,
                    Timer::RuntimeUp {
                        pid,
                        started_at: now,
                    },
                )
            }),
            restarting: false,
            notify: None,
            relay: None,
        };
        self.children.insert(pid, child);
        if let Some(sock) = req.notify {
            self.watch_child_notify(idx, pid, sock, now);
        }
        if let Some((stage, errno)) = spawned.failed {
            self.exec_failed(pid, stage, errno);
        }
        if self.shortage.backoff.success() {
            info!("resources available again: accepting connections");
        }
        Launch::Started(pid)
    }

    /// A child started: spend a `rate` token. With the bucket empty the
    /// service stops watching its listeners (clients wait in the backlog)
    /// and a timer watches them again when a token is back; the first
    /// pause of an episode is logged.
    pub(super) fn take_rate_token(&mut self, idx: usize, now: Instant) {
        let svc = &mut self.services[idx];
        let Some(bucket) = svc.rate.as_mut() else {
            return;
        };
        if bucket.is_full(now) {
            svc.rate_logged = false;
        }
        bucket.take(now);
        if bucket.has_token(now) || svc.rate_timer {
            return;
        }
        let back = bucket.next_token_at(now);
        if !svc.rate_logged {
            svc.rate_logged = true;
            info!(event = "rate_pause", service = svc.spec.name.as_str();
                "{}: rate {} reached; new clients wait in the backlog ({} ms to the next token)",
                svc.spec.name,
                bucket.rate(),
                back.saturating_duration_since(now).as_millis()
            );
        }
        svc.rate_timer = true;
        self.timers.add(back, Timer::TokenBack(svc.id));
    }

    /// The one place a spawn failure (fork, pipe or exec) is counted.
    pub(super) fn count_spawn_failure(&mut self, idx: usize) {
        self.services[idx].stats.spawn_failures += 1;
    }

    /// EMFILE/ENFILE/EAGAIN: log once per episode and shut the gate until
    /// the back-off deadline; listeners that turn readable meanwhile are
    /// parked.
    fn resource_fault(&mut self, what: &str, err: &dyn fmt::Display, now: Instant) {
        note_resource_fault(&mut self.shortage.backoff, what, err, now);
    }
}

/// Start or extend the back-off over all listeners (`Backoff::fault`);
/// the first fault of an episode is logged.
pub(super) fn note_resource_fault(
    resources: &mut Backoff,
    what: &str,
    err: &dyn fmt::Display,
    now: Instant,
) {
    let (until, first) = resources.fault(now);
    if first {
        warn!(event = "resource_fault";
            "{what}: {err}; pausing all listeners ({} ms, doubling up to {} ms while this lasts)",
            until.saturating_duration_since(now).as_millis(),
            crate::limits::BACKOFF_MAX.as_millis()
        );
    }
}

/// Did the balancer send `header` for itself, not for a client: a v2
/// LOCAL or a v1 UNKNOWN, or a v1 header naming the connection's own two
/// ends (haproxy's v1 checks send `PROXY TCP4` with the check
/// connection's addresses; no client has the balancer's address and
/// port)? A LOCAL with a unique ID (`PP2_TYPE_UNIQUE_ID`) is a client's:
/// haproxy sends one only for a stream (`proxy-v2-options unique-id` on
/// its server line), never for a check, so it is served at once, with no
/// `LOCAL_WAIT`.
fn for_itself(header: &Header, peer: &Peer) -> bool {
    let (Some(addrs), Peer::Inet { remote, local }) = (&header.addrs, peer) else {
        return header.local && header.unique_id.is_none();
    };
    canonical_addr(addrs.source) == *remote
        && local.is_some_and(|l| canonical_addr(l) == canonical_addr(addrs.destination))
}
