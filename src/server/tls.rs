//! The server's side of a TLS service (`src/tls/` owns the handshake):
//! an admitted client's handshake started and driven on readiness,
//! refused (`tls`) when it fails or outlasts its deadline; once done, a
//! socket pair whose one end the child gets in place of the connection
//! (with the `SSL_*` variables) and whose other end goes to the relay
//! table (`relays.rs`) with the client's TLS session as its front side,
//! until both ways are closed (and `LINGER` after the child's end). The
//! child's EOF becomes `close_notify` only once it is known how the
//! child ended (`relays.rs`): killed by a signal, the client's connection
//! closes without one.
//!
//! An upgrade does not hand TLS connections over (rustls's state does not
//! cross an exec): a drainer process relays them to their end
//! (`drainer.rs`).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::Interest;
use socket2::{Domain, Socket, Type};

use super::connection::Launch;
use super::front::{FrontConn, Work};
use super::relays::{Kind, Relayed};
use super::services::RefuseReason;
use super::timers::Timer;
use super::{Server, TokenKind};
use crate::addr::ListenAddr;
use crate::peer::{Peer, SourceKey};
use crate::relay::preamble::Names;
use crate::relay::Side;
use crate::tls::{Failure, Handshake, SslVars, END_WAIT, HELLO_TIMEOUT, LINGER};

impl Server {
    /// An admitted client of a TLS service: its handshake starts here, a
    /// step of the front table (after the PROXY header, if there was one).
    pub(super) fn start_tls(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        source: Option<SourceKey>,
    ) {
        let now = Instant::now();
        let id = self.services[idx].id;
        if !self.front.may_handshake(source.as_ref()) {
            let why = RefuseReason::Tls(Failure::TooMany);
            self.refuse(idx, &conn, &peer, source, why, now);
            return;
        }
        // Every place is taken: this client takes one (`victim`), unless
        // no one holds more than its client. Let go only once this one is
        // sure to start (below), not for a client that then fails.
        let victim = if self.front.handshakes_full() {
            match self.front.victim(id, source.as_ref()) {
                Some(token) => Some(token),
                None => {
                    let why = RefuseReason::Tls(Failure::Full);
                    self.refuse(idx, &conn, &peer, source, why, now);
                    return;
                }
            }
        } else {
            None
        };
        let name = self.services[idx].spec.name.clone();
        let Some(config) = self.services[idx].tls_config() else {
            warn!("{name}: no TLS configuration; closing {peer}");
            return;
        };
        let hs = match Handshake::new(&config) {
            Ok(hs) => hs,
            Err(e) => {
                warn!("{name}: cannot start a TLS handshake for {peer}: {e}");
                return;
            }
        };
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        let token = self.poller.tokens.next();
        if let Err(e) = self.poller.registry().register(
            &mut SourceFd(&conn.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            info!("{name}: cannot serve {peer} on {addr}: {e}");
            return;
        }
        self.poller.tokens.insert(token, TokenKind::Front);
        if let Some(victim) = victim {
            self.evict_handshake(victim);
        }
        let timer = self.timers.add(now + HELLO_TIMEOUT, Timer::FrontDue(token));
        let conn = FrontConn {
            socket: conn,
            addr: addr.clone(),
            service: self.services[idx].id,
            peer,
            source,
            work: Work::Handshake(Box::new(hs)),
            timer,
        };
        self.front.insert(token, conn);
        // The client's hello is likely there already.
        self.on_front_ready(token);
    }

    /// The handshake is done (the connection is out of the front table
    /// and the poll set): a socket pair, the child on one end, the
    /// relay on the other; if that cannot be, the client is closed.
    pub(super) fn handshake_done(&mut self, mut conn: FrontConn) {
        let now = Instant::now();
        let idx = self.services.index_of(conn.service);
        let forward = idx.is_some_and(|i| self.services[i].spec.forward.is_some());
        if let Work::Drained(names) = &conn.work {
            let names = names.clone().unwrap_or_default();
            self.drained_done(idx.filter(|_| forward), idx, conn, names, now);
        } else if reset_before_a_byte(&mut conn) {
            if let Some(i) = idx {
                self.health_check(i);
                debug!(
                    "{}: {} reset its connection after its TLS handshake, before a byte: \
                     closed, no child started (a health check)",
                    self.services[i].name, conn.peer
                );
            }
        } else if let (true, Some(i)) = (forward, idx) {
            self.forward_tls(i, conn);
        } else {
            self.start_relay(conn);
        }
        if let Some(idx) = idx {
            self.sync_service(idx, now);
        }
        self.unpark(now);
    }

    /// A handshake an upgrade's drainer finished (`drained.rs`): to the
    /// backend of its service (`forward`, by index), its PROXY header to
    /// be built here with `names`. If a reload meanwhile made the
    /// service accept-mode, it is refused (said, counted: its session is
    /// the drainer's, no child can have it); removed, it is closed, said.
    fn drained_done(
        &mut self,
        forward: Option<usize>,
        idx: Option<usize>,
        conn: FrontConn,
        names: Box<Names>,
        now: Instant,
    ) {
        let FrontConn {
            socket,
            peer,
            source,
            ..
        } = conn;
        match (forward, idx) {
            (Some(i), _) => self.forward_drained_client(i, socket, peer, source, names),
            (None, Some(i)) => {
                let why = RefuseReason::Tls(Failure::NotForward);
                self.refuse(i, &socket, &peer, source, why, now);
            }
            (None, None) => info!(
                "closing {peer}: its TLS handshake, finished by an upgrade's drainer, \
                 is for a service a reload removed"
            ),
        }
    }

    /// With `forward`: the session goes to the backend's queue or relay
    /// as a plain client's connection would (forward/).
    fn forward_tls(&mut self, idx: usize, conn: FrontConn) {
        let FrontConn {
            socket,
            work,
            peer,
            source,
            ..
        } = conn;
        let Work::Handshake(hs) = work else {
            return;
        };
        let name = &self.services[idx].name;
        debug!("{name}: {} for {peer}", SslVars::of(hs.conn()).protocol);
        let mut tls = hs.into_conn();
        if let Some(text) = &self.services[idx].spec.banner {
            let _ = tls.writer().write_all(text.as_bytes());
        }
        self.forward_client(idx, socket, Some(tls), peer, source);
    }

    /// The child started on a socket pair's end, and the relay of the
    /// other end to the client's TLS session; false when either could
    /// not be (the client is closed).
    fn start_relay(&mut self, conn: FrontConn) -> bool {
        let FrontConn {
            socket: net,
            work,
            peer,
            source,
            service,
            ..
        } = conn;
        let Work::Handshake(hs) = work else {
            return false;
        };
        // None: a reload removed the service meanwhile.
        let Some(idx) = self.services.index_of(service) else {
            return false;
        };
        let name = self.services[idx].name.clone();
        let ssl = SslVars::of(hs.conn());
        debug!("{name}: {} {} for {peer}", ssl.protocol, ssl.cipher);
        let (plain, child_end) = match Socket::pair(Domain::UNIX, Type::STREAM, None) {
            Ok(p) => p,
            Err(e) => {
                warn!("{name}: cannot make a socket pair for {peer}: {e}");
                return false;
            }
        };
        let fd = child_end.as_raw_fd();
        let launch = self.spawn_for_client(idx, fd, &peer, source, Some(&ssl));
        // The child has its own copy of its end.
        drop(child_end);
        let pid = match launch {
            Launch::Started(pid) => pid,
            Launch::RetryLater => {
                info!("{name}: closing {peer} (no child could be started)");
                return false;
            }
            Launch::Failed => return false,
        };
        let mut tls = hs.into_conn();
        if let Some(text) = &self.services[idx].spec.banner {
            let _ = tls.writer().write_all(text.as_bytes());
        }
        if plain.set_nonblocking(true).is_err() {
            return false;
        }
        let tag = Relayed {
            service,
            name,
            pid,
            peer,
            source: None,
            runtime_timer: None,
            kind: Kind::Child,
        };
        let front = Side::tls(OwnedFd::from(net), tls);
        let back = Side::child(OwnedFd::from(plain));
        match self.relays.add(self.poller.registry(), front, back, tag) {
            Ok(id) => {
                self.relays.linger(id, LINGER);
                // Its close_notify waits for how the child ended.
                self.relays.hold_end(id, END_WAIT);
                self.children.set_relay(&pid, id);
                true
            }
            Err(e) => {
                warn!(
                    "{}: cannot relay a TLS client: {e}",
                    self.services[idx].name
                );
                false
            }
        }
    }
}

/// A client that reset its connection once its handshake was done,
/// without a byte of data (a balancer's `check-ssl`, `openssl s_time`):
/// nobody is left to serve, so no child is started and no backend
/// connected, as for a PROXY health check. Only a reset says so: a
/// client that shut its side (a FIN, or close_notify alone) may still
/// be reading. One getsockopt per handshake; a reset connection's last
/// bytes are read into the session first, and data among them is served
/// as before.
fn reset_before_a_byte(conn: &mut FrontConn) -> bool {
    let Work::Handshake(hs) = &mut conn.work else {
        return false;
    };
    super::front::was_reset(&conn.socket) && hs.nothing_more(&mut &conn.socket)
}
