//! The server's side of a TLS service (`src/tls/` owns the handshake, the
//! pump and their table): an admitted client's handshake started and
//! driven on readiness, refused (`tls`) when it fails or outlasts its
//! deadline; once done, a socket pair whose one end the child gets in
//! place of the connection (with the `SSL_*` variables) and whose other
//! end summond pumps to and from the client until both ways are closed.
//!
//! An upgrade does not hand TLS connections over (rustls's state does not
//! cross an exec): they close with the old image, their children see EOF.

use std::os::fd::AsRawFd;
use std::time::Instant;

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use socket2::{Domain, Socket, Type};

use super::connection::Launch;
use super::front::{FrontConn, Work};
use super::services::RefuseReason;
use super::services::ServiceId;
use super::timers::Timer;
use super::{Server, TokenKind};
use crate::addr::ListenAddr;
use crate::peer::{Peer, SourceKey};
use crate::tls::{
    Failure, Handshake, PumpStep, SslVars, TlsConn, TlsConns, TlsPump, HELLO_TIMEOUT, LINGER,
};

/// What the loop keeps with a TLS connection.
pub(super) struct TlsClient {
    service: ServiceId,
    peer: Peer,
}

/// The TLS connections pumping to their children.
pub(super) type TlsTable = TlsConns<TlsClient>;

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
        if !self.front.may_handshake(source.as_ref()) {
            let why = RefuseReason::Tls(Failure::TooMany);
            self.refuse(idx, &conn, &peer, source, why, now);
            return;
        }
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

    /// Either socket of a TLS connection is ready.
    pub(super) fn on_tls_ready(&mut self, token: Token) {
        let Some(owner) = self.tls.owner(token) else {
            return;
        };
        let Some(c) = self.tls.get_mut(owner) else {
            return;
        };
        if token == owner {
            c.pump.net_ready();
        } else {
            c.pump.plain_ready();
        }
        let step = c.pump.pump(&c.net, &c.plain);
        if step != PumpStep::Done && c.pump.rearm_linger() {
            self.tls.linger(owner, Instant::now() + LINGER);
        }
        match step {
            PumpStep::Waiting => {}
            PumpStep::MoreWork => self.tls.ready.push(owner),
            PumpStep::Done => {
                self.close_tls(owner);
            }
        }
    }

    /// Pumps whose budget ran out last turn.
    pub(super) fn serve_tls_ready(&mut self) {
        for token in std::mem::take(&mut self.tls.ready) {
            self.on_tls_ready(token);
        }
    }

    /// Pumps past their `linger` (the child ended, the client did not
    /// take the rest): closed.
    pub(super) fn expire_tls(&mut self, now: Instant) {
        for token in self.tls.expired(now) {
            if let Some(c) = self.close_tls(token) {
                debug!(
                    "closing {}: its child ended and it did not read the rest",
                    c.meta.peer
                );
            }
        }
    }

    /// The handshake is done (the connection is out of the front table
    /// and the poll set): a socket pair, the child on one end, the pump
    /// on the other; if that cannot be, the client is closed.
    pub(super) fn handshake_done(&mut self, conn: FrontConn) {
        let now = Instant::now();
        let idx = self.services.index_of(conn.service);
        if let Some((token, c)) = self.start_pump(conn) {
            self.tls.insert(token, c);
            self.on_tls_ready(token);
        }
        if let Some(idx) = idx {
            self.sync_service(idx, now);
        }
        self.unpark(now);
    }

    /// The child started on a socket pair's end, and the pump for the
    /// other with both sockets registered; None when any could not be.
    fn start_pump(&mut self, conn: FrontConn) -> Option<(Token, TlsConn<TlsClient>)> {
        let FrontConn {
            socket: net,
            work,
            peer,
            source,
            service,
            ..
        } = conn;
        let Work::Handshake(hs) = work else {
            return None;
        };
        // None: a reload removed the service meanwhile.
        let idx = self.services.index_of(service)?;
        let name = self.services[idx].spec.name.clone();
        let ssl = SslVars::of(hs.conn());
        debug!("{name}: {} {} for {peer}", ssl.protocol, ssl.cipher);
        let (plain, child_end) = match Socket::pair(Domain::UNIX, Type::STREAM, None) {
            Ok(p) => p,
            Err(e) => {
                warn!("{name}: cannot make a socket pair for {peer}: {e}");
                return None;
            }
        };
        let fd = child_end.as_raw_fd();
        let launch = self.spawn_for_client(idx, fd, &peer, source, Some(&ssl));
        // The child has its own copy of its end.
        drop(child_end);
        match launch {
            Launch::Started => {}
            Launch::RetryLater => {
                info!("{name}: closing {peer} (no child could be started)");
                return None;
            }
            Launch::Failed => return None,
        }
        let mut pump = TlsPump::new(hs.into_conn());
        if let Some(text) = &self.services[idx].spec.banner {
            pump.greet(text.as_bytes());
        }
        plain.set_nonblocking(true).ok()?;
        let (token, plain_token) = (self.poller.tokens.next(), self.poller.tokens.next());
        let both = Interest::READABLE | Interest::WRITABLE;
        let registry = self.poller.registry();
        registry
            .register(&mut SourceFd(&net.as_raw_fd()), token, both)
            .ok()?;
        if registry
            .register(&mut SourceFd(&plain.as_raw_fd()), plain_token, both)
            .is_err()
        {
            let _ = registry.deregister(&mut SourceFd(&net.as_raw_fd()));
            return None;
        }
        self.poller.tokens.insert(token, TokenKind::Tls);
        self.poller.tokens.insert(plain_token, TokenKind::Tls);
        let meta = TlsClient { service, peer };
        let c = TlsConn {
            net,
            pump,
            plain,
            plain_token,
            meta,
            deadline: None,
        };
        Some((token, c))
    }

    /// Out of the table and the poll set; its sockets close when dropped.
    fn remove_tls(&mut self, token: Token) -> Option<TlsConn<TlsClient>> {
        let c = self.tls.remove(token)?;
        self.poller.tokens.remove(&token);
        self.poller.tokens.remove(&c.plain_token);
        let registry = self.poller.registry();
        let _ = registry.deregister(&mut SourceFd(&c.net.as_raw_fd()));
        let _ = registry.deregister(&mut SourceFd(&c.plain.as_raw_fd()));
        Some(c)
    }

    /// Closed: both sockets. Returns it for a line.
    fn close_tls(&mut self, token: Token) -> Option<TlsConn<TlsClient>> {
        let c = self.remove_tls(token)?;
        if let Some(idx) = self.services.index_of(c.meta.service) {
            self.sync_service(idx, Instant::now());
        }
        Some(c)
    }
}
