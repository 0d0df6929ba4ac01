//! The internal services, answered inside the event loop without a child:
//! echo (RFC 862), discard (863), chargen (864), daytime (867) and time
//! (868), over TCP and UDP.
//!
//! Bounded by construction: a TCP connection owns one fixed buffer of
//! `BUF` bytes; echo stops reading while its echo is unsent, so a client
//! that writes without reading costs that buffer and nothing more, and
//! every wake-up does at most `BUDGET` bytes of work before the loop turns
//! to other sources. A UDP answer is one datagram of at most 512 bytes
//! (chargen's limit in RFC 864), and echo's and chargen's are no longer
//! than the question, so a spoofed sender gains nothing by reflection but
//! daytime's 26 bytes. No datagram is answered that comes from a port
//! below 1024 (where the servers live: a spoofed request from echo, DNS
//! or NTP would start a loop or a reflection) or from a port summond
//! listens on (its own services, or another summond's with the same
//! config), nor from an address no real sender has (multicast,
//! broadcast, unspecified), as OpenBSD's inetd refuses them, nor one sent
//! to a broadcast or multicast address (IP_PKTINFO tells). A loop between
//! two hosts on ordinary ports no rule can see: each service has a budget
//! of answers, and the first datagram over it ends the loop.
//! A TCP connection's socket buffers are fixed small (autotuning would
//! let a client that never reads pin megabytes of kernel memory).
//!
//! `answers.rs` holds the answers, `conn.rs` a TCP connection and the
//! table of the open ones, `datagrams.rs` what a UDP service must not
//! answer; here is their owner in the loop, `Internals`: opening,
//! serving, closing and retiming the connections, guarding and answering
//! the datagrams, with what it needs of the loop handed in (the poll set,
//! a service, the refusal log). The server re-arms what a closed
//! connection held back.

use rustc_hash::FxHashSet;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::poller::{Poller, TokenKind};
use super::services::{RefuseReason, ServiceId, ServiceRuntime, ServiceTable};
use super::sockets::SocketTable;
use crate::addr::ListenAddr;
use crate::config::Internal;
use crate::peer::{Peer, SourceKey};
use crate::refusals::REFUSAL_INTERVAL;
use crate::upgrade::InternalState;

mod answers;
mod conn;
mod datagrams;

use answers::{datagram_answer, MAX_DATAGRAM};
pub(super) use conn::InternalConn;
use conn::InternalConns;
use conn::{Progress, KERNEL_BUF};
use datagrams::DatagramGuard;
use datagrams::{
    not_to_us_alone, recv_datagram, unanswerable, want_destination, Unanswered, DATAGRAM_BUDGET,
    DEFAULT_ANSWERS,
};

/// The internal services' state in the loop: their open TCP connections,
/// and what their UDP sockets may answer.
#[derive(Default)]
pub(super) struct Internals {
    pub conns: InternalConns,
    pub datagrams: DatagramGuard,
}

impl Internals {
    /// The open connections, mid-conversation, for the next image of an
    /// upgrade, each under its service's name (`name_of`). A client of a
    /// service a reload removed is carried too (under a name no service
    /// can have), as its children are: a reload keeps them, so must this.
    pub fn to_state<'a>(
        &self,
        now: Instant,
        name_of: impl Fn(ServiceId) -> &'a str,
    ) -> Vec<InternalState> {
        self.conns
            .iter()
            .map(|c| c.to_state(name_of(c.service).to_string(), now))
            .collect()
    }

    /// Serve on the connections the previous image was serving, their
    /// times measured from `handed`, each under the service `service`
    /// finds by name: its identity and idle timeout, or a new identity
    /// and none if it is gone.
    pub fn resume(
        &mut self,
        conns: Vec<InternalState>,
        handed: Instant,
        poller: &mut Poller,
        mut service: impl FnMut(&str) -> (ServiceId, Option<Duration>),
    ) {
        for c in conns {
            let (id, idle) = service(&c.service);
            // A client of a service the new config drops stays, counted,
            // until it leaves or is idle too long, as after a reload (and
            // as a removed service's children do).
            if idle.is_none() {
                debug!(
                    "{}: internal service removed; keeping {} until it leaves",
                    c.service, c.peer
                );
            }
            let mut conn = InternalConn::from_state(c, id, handed);
            if let Some(idle) = idle {
                conn.idle = idle;
            }
            self.adopt(conn, poller);
        }
    }

    /// A connection the previous image was serving: watched, and served
    /// at the end of this turn.
    fn adopt(&mut self, conn: InternalConn, poller: &mut Poller) {
        let fd = conn.socket.as_raw_fd();
        match poller.watch(
            fd,
            TokenKind::Internal,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            Ok(token) => {
                self.conns.insert(token, conn);
                self.conns.ready.push(token);
            }
            Err(e) => info!("internal: cannot serve {} any more: {e}", conn.peer),
        }
    }
}

impl Internals {
    /// An admitted TCP client of `svc`, an internal service of `kind`:
    /// watched and kept here, its token to be served at once; none if it
    /// cannot be watched (the client is closed).
    pub fn open(
        &mut self,
        poller: &mut Poller,
        svc: &ServiceRuntime,
        kind: Internal,
        conn: socket2::Socket,
        peer: Peer,
        source: Option<SourceKey>,
    ) -> Option<Token> {
        conn.set_nonblocking(true).ok()?;
        // Our 4 KiB buffer bounds what summond holds; the socket's own
        // buffers are kernel memory charged to summond's sockets, and
        // autotuning grows them to megabytes (tcp_wmem/tcp_rmem's maximum)
        // for a client with a zero window (chargen) or one that writes
        // and never reads (echo stops reading, so its input waits in the
        // receive queue). Fixed small buffers bound both per client.
        let _ = conn.set_send_buffer_size(KERNEL_BUF);
        let _ = conn.set_recv_buffer_size(KERNEL_BUF);
        let fd = conn.as_raw_fd();
        let watched = poller.watch(
            fd,
            TokenKind::Internal,
            Interest::READABLE | Interest::WRITABLE,
        );
        let token = match watched {
            Ok(token) => token,
            Err(e) => {
                info!("{}: cannot serve {peer}: {e}", svc.spec.name);
                return None;
            }
        };
        debug!("{}: internal:{} for {peer}", svc.spec.name, kind.name());
        let mut c = InternalConn::new(kind, conn, svc.id, source, peer, SystemTime::now());
        c.idle = svc.spec.idle_timeout;
        self.conns.insert(token, c);
        Some(token)
    }

    /// Connection `token` is ready (or has work left): serve it up to its
    /// budget. The connection if it is done, closed, for the caller to
    /// re-arm what it held back.
    pub fn serve(
        &mut self,
        token: Token,
        poller: &mut Poller,
        now: Instant,
    ) -> Option<InternalConn> {
        match self.conns.conns.get_mut(&token)?.on_ready(now) {
            Progress::Waiting => None,
            Progress::MoreWork => {
                self.conns.ready.push(token);
                None
            }
            Progress::Done => self.close(token, poller),
        }
    }

    /// The connections whose budget ran out last turn.
    pub fn take_ready(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.conns.ready)
    }

    /// Close connection `token`: out of the poll set and the table.
    fn close(&mut self, token: Token, poller: &mut Poller) -> Option<InternalConn> {
        poller.tokens.remove(&token);
        let conn = self.conns.remove(token)?;
        let _ = poller
            .registry()
            .deregister(&mut SourceFd(&conn.socket.as_raw_fd()));
        Some(conn)
    }

    /// The connections silent for their whole idle timeout at `now`.
    pub fn take_idle(&mut self, now: Instant) -> Vec<Token> {
        self.conns.take_idle(now)
    }

    /// Close connection `token`, silent for its service's `idle_timeout`
    /// (`take_idle` found it): an idle client must not keep a descriptor
    /// (and a place under the limits) for ever. `name_of`: its service's
    /// name, for the log line.
    pub fn close_idle<'a>(
        &mut self,
        token: Token,
        poller: &mut Poller,
        name_of: impl Fn(ServiceId) -> &'a str,
    ) -> Option<InternalConn> {
        if let Some(conn) = self.conns.conns.get(&token) {
            debug!(
                "{}: internal:{} closing {}: idle for {:.1}s",
                name_of(conn.service),
                conn.kind.name(),
                conn.peer,
                conn.idle.as_secs_f64()
            );
        }
        self.close(token, poller)
    }

    /// Close every connection (at stop).
    pub fn close_all(&mut self, poller: &mut Poller) -> Vec<InternalConn> {
        let tokens: Vec<Token> = self.conns.conns.keys().copied().collect();
        tokens
            .into_iter()
            .filter_map(|t| self.close(t, poller))
            .collect()
    }

    /// After a reload: each connection takes its service's idle timeout.
    pub fn retime(&mut self, services: &ServiceTable) {
        self.conns
            .retime(|id| services.index_of(id).map(|i| services[i].spec.idle_timeout));
    }

    /// After every config load (startup, reload, and so the new image of
    /// an upgrade too): the ports summond listens on, every internal UDP
    /// socket told to report each datagram's destination, and a budget of
    /// answers for each internal service.
    pub fn guard_datagrams(
        &mut self,
        services: &ServiceTable,
        sockets: &SocketTable,
        now: Instant,
    ) {
        // Every UDP port (a wait service answers what it reads, so an
        // internal service answering it would ping-pong for ever), and the
        // internal services' TCP ports too: another summond with this
        // config has its UDP echo there.
        let mut ports: FxHashSet<u16> = services
            .iter()
            .map(|rt| &rt.spec)
            .filter(|s| s.internal.is_some() && !s.disabled)
            .flat_map(|s| s.listen.iter())
            .filter_map(|l| match &l.addr {
                ListenAddr::Tcp(a) | ListenAddr::Udp(a) => Some(a.port()),
                _ => None,
            })
            .collect();
        for sock in sockets.iter() {
            let ListenAddr::Udp(a) = &sock.listener.addr else {
                continue;
            };
            ports.insert(a.port());
            let internal = services[sock.service].spec.internal.is_some();
            if let Err(e) = want_destination(&sock.listener.socket, a.is_ipv4(), internal) {
                warn!(
                    "{}: {a}: cannot learn datagrams' destinations, so broadcast and \
                     multicast ones cannot be told apart: {e}",
                    services[sock.service].spec.name
                );
            }
        }
        let rates = services
            .iter()
            .filter(|rt| rt.spec.internal.is_some())
            .map(|rt| (rt.id, rt.spec.rate.unwrap_or(DEFAULT_ANSWERS)));
        self.datagrams.renew(ports, rates, now);
    }

    /// `socket`, an internal UDP socket of service `idx`, is readable:
    /// answer up to the budget, as the service's rules allow, while it may
    /// serve (`children`: what it has running besides its connections
    /// here).
    /// What must not be answered is read and dropped, never left queued:
    /// a datagram answered later keeps a loop going as surely as one
    /// answered now. True if the budget ran out with datagrams possibly
    /// left, to be served next turn.
    pub fn serve_datagrams(
        &mut self,
        services: &mut ServiceTable,
        idx: usize,
        socket: &socket2::Socket,
        children: u32,
    ) -> bool {
        let Some(kind) = services[idx].spec.internal else {
            return false;
        };
        let mut question = [0u8; 2048];
        let mut answer = [0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo, nix::libc::in6_pktinfo);
        for _ in 0..DATAGRAM_BUDGET {
            let now = Instant::now();
            let svc = &services[idx];
            if !svc.may_spawn(children + self.conns.active(svc.id), now) {
                return false;
            }
            let (n, from, dest) = match recv_datagram(socket, &mut question, &mut cmsg) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let from = crate::peer::canonical_addr(from);
            if !self.admit_datagram(services, idx, from, dest, now) {
                continue;
            }
            let svc = &mut services[idx];
            let len = datagram_answer(kind, &question[..n], SystemTime::now(), &mut answer);
            // Only an answer spends the budget (discard sends none). The
            // service's `rate` is not spent here: it sets this budget, and
            // its pause would leave datagrams queued.
            if len.is_some() && !self.datagrams.take_answer(svc.id, now) {
                let rate = svc.spec.rate.unwrap_or(DEFAULT_ANSWERS);
                self.drop_datagram(svc, from, Unanswered::OverBudget(rate), now);
                continue;
            }
            svc.stats.served += 1;
            if let Some(len) = len {
                let _ = socket.send_to_with_flags(
                    &answer[..len],
                    &from.into(),
                    nix::libc::MSG_DONTWAIT,
                );
            }
        }
        true
    }

    /// May the datagram from `from` to `dest` be answered by service
    /// `idx`? One that may not is dropped (logged by episode) or refused
    /// (counted and logged as a refusal) here.
    fn admit_datagram(
        &mut self,
        services: &mut ServiceTable,
        idx: usize,
        from: std::net::SocketAddr,
        dest: datagrams::Destination,
        now: Instant,
    ) -> bool {
        let svc = &mut services[idx];
        // Never answer another server (the echo/chargen loop, and
        // reflection through spoofed sources), nor a datagram sent to
        // many hosts at once.
        let why = unanswerable(from, self.datagrams.own_ports())
            .or_else(|| not_to_us_alone(dest).then_some(Unanswered::NotToUs));
        if let Some(why) = why {
            self.drop_datagram(svc, from, why, now);
            return false;
        }
        let key = SourceKey::Ip(from.ip()).grouped(svc.spec.per_source_prefix);
        let peer = Peer::Inet {
            remote: from,
            local: None,
        };
        let refused = match svc.spec.access.permits(from.ip()) {
            Err(why) => Some(RefuseReason::Access(why)),
            Ok(()) => svc
                .spec
                .per_source_rate
                .filter(|rate| !svc.source_rates().admit(key, *rate, now))
                .map(RefuseReason::PerSourceRate),
        };
        let Some(why) = refused else {
            return true;
        };
        if services.refuse(idx, Some(key), why, now) {
            let name = services[idx].spec.name.as_str();
            info!(event = "refused", service = name, peer:% = peer;
                "{name}: refused {peer} ({why})");
        }
        false
    }

    /// A datagram read and not answered: the first of an episode (per
    /// service and reason) is logged at info so that an operator sees a
    /// loop or a reflection attempt, the rest at debug until
    /// REFUSAL_INTERVAL has passed, as refusals are.
    fn drop_datagram(
        &mut self,
        svc: &ServiceRuntime,
        from: std::net::SocketAddr,
        why: Unanswered,
        now: Instant,
    ) {
        let name = svc.spec.name.as_str();
        match self.datagrams.episode(svc.id, why, now) {
            Some(since) => {
                let more = if since > 0 {
                    format!(" ({since} more since the last such line)")
                } else {
                    String::new()
                };
                info!(event = "datagram_ignored", service = name, peer:% = from;
                    "{name}: ignored a datagram from {from}: {why}{more}; more of these for {}s are logged at debug",
                    REFUSAL_INTERVAL.as_secs());
            }
            None => debug!("{name}: ignored a datagram from {from}: {why}"),
        }
    }
}
