//! The server's side of a TLS service (`src/tls/` owns the handshake, the
//! pump and their table): an admitted client's handshake started and
//! driven on readiness, refused (`tls`) when it fails or outlasts its
//! deadline; once done, a socket pair whose one end the child gets in
//! place of the connection (with the `SSL_*` variables) and whose other
//! end summond pumps to and from the client until both ways are closed.
//!
//! An upgrade does not hand TLS connections over (rustls's state does not
//! cross an exec): they close with the old image, their children see EOF.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Instant;

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use socket2::{Domain, Socket, Type};

use super::connection::Launch;
use super::services::RefuseReason;
use super::services::ServiceId;
use super::{Server, TokenKind};
use crate::addr::ListenAddr;
use crate::limits::Counter;
use crate::peer::{Peer, SourceKey};
use crate::tls::{
    Failure, Handshake, PumpStep, SslVars, Stage, Step, TlsConn, TlsConns, TlsPump, LINGER,
};

/// What the loop keeps with a TLS connection.
pub(super) struct TlsClient {
    service: ServiceId,
    peer: Peer,
    source: Option<SourceKey>,
}

/// Handshakes at once from one client (its per-source key): past this
/// its next connection is refused (`tls`), so one client cannot hold the
/// `HANDSHAKE_LIMIT` slots every TLS service shares. A quarter of them:
/// a busy client's handshakes overlap more than its own concurrency says
/// (8 `openssl s_time` had 17 in the table at times: each had moved on
/// to its next connection before summond read its last Finished).
const HANDSHAKES_PER_SOURCE: u32 = 64;

/// The TLS connections, and the handshakes in flight per client.
#[derive(Default)]
pub(super) struct TlsTable {
    conns: TlsConns<TlsClient>,
    handshakes_from: Counter<SourceKey>,
}

impl TlsTable {
    fn start(&mut self, token: Token, net: Socket, hs: Handshake, client: TlsClient) {
        if let Some(key) = client.source {
            self.handshakes_from.add(key);
        }
        self.conns.start(token, net, hs, client, Instant::now());
        self.check_counts();
    }

    fn remove(&mut self, token: Token) -> Option<TlsConn<TlsClient>> {
        let c = self.conns.remove(token)?;
        if let (Stage::Handshake(_), Some(key)) = (&c.stage, &c.meta.source) {
            self.handshakes_from.remove(key);
        }
        self.check_counts();
        Some(c)
    }

    /// Handshakes in flight from `key`.
    fn handshakes_of(&self, key: &SourceKey) -> u32 {
        self.handshakes_from.get(key)
    }

    /// Debug builds (the tests) check after every change that each
    /// client's count of handshakes is what the table holds: a path out
    /// of a handshake that did not give its count back would refuse that
    /// client for good once it reached `HANDSHAKES_PER_SOURCE`.
    fn check_counts(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut held: Counter<SourceKey> = Counter::default();
        let mut handshaking = 0;
        for c in self.conns.iter() {
            if let Stage::Handshake(_) = c.stage {
                handshaking += 1;
                if let Some(key) = c.meta.source {
                    held.add(key);
                }
            }
        }
        assert_eq!(handshaking, self.conns.handshaking(), "handshakes counted");
        let counted: HashMap<_, _> = self.handshakes_from.iter().collect();
        let table: HashMap<_, _> = held.iter().collect();
        assert_eq!(counted, table, "handshakes per client");
    }
}

impl std::ops::Deref for TlsTable {
    type Target = TlsConns<TlsClient>;
    fn deref(&self) -> &Self::Target {
        &self.conns
    }
}

impl std::ops::DerefMut for TlsTable {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conns
    }
}

impl Server {
    /// An admitted client of a TLS service: its handshake starts here.
    pub(super) fn start_tls(
        &mut self,
        idx: usize,
        addr: &ListenAddr,
        conn: Socket,
        peer: Peer,
        source: Option<SourceKey>,
    ) {
        if let Some(key) = source {
            if self.tls.handshakes_of(&key) >= HANDSHAKES_PER_SOURCE {
                let why = RefuseReason::Tls(Failure::TooMany);
                self.refuse(idx, &conn, &peer, source, why, Instant::now());
                return;
            }
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
        self.poller.tokens.insert(token, TokenKind::Tls);
        let client = TlsClient {
            service: self.services[idx].id,
            peer,
            source,
        };
        self.tls.start(token, conn, hs, client);
        // The client's hello is likely there already.
        self.on_tls_ready(token);
    }

    /// Either socket of a TLS connection is ready.
    pub(super) fn on_tls_ready(&mut self, token: Token) {
        let Some(owner) = self.tls.owner(token) else {
            return;
        };
        let Some(c) = self.tls.get_mut(owner) else {
            return;
        };
        match &mut c.stage {
            Stage::Handshake(hs) => match hs.drive(&mut &c.net) {
                Step::Pending => {}
                Step::Done => self.handshake_done(owner),
                Step::Failed(why) => self.handshake_failed(owner, why),
            },
            Stage::Pump { pump, plain, .. } => {
                if token == owner {
                    pump.net_ready();
                } else {
                    pump.plain_ready();
                }
                let step = pump.pump(&c.net, plain);
                if step != PumpStep::Done && pump.rearm_linger() {
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
        }
    }

    /// Pumps whose budget ran out last turn.
    pub(super) fn serve_tls_ready(&mut self) {
        for token in std::mem::take(&mut self.tls.ready) {
            self.on_tls_ready(token);
        }
    }

    /// Handshakes past their deadline: refused. Pumps past theirs (the
    /// child ended, the client did not take the rest): closed.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        for token in self.tls.expired(now) {
            let handshaking = self
                .tls
                .get_mut(token)
                .is_some_and(|c| matches!(c.stage, Stage::Handshake(_)));
            if handshaking {
                self.handshake_failed(token, Failure::Timeout);
            } else if let Some(c) = self.close_tls(token) {
                debug!(
                    "closing {}: its child ended and it did not read the rest",
                    c.meta.peer
                );
            }
        }
    }

    fn handshake_failed(&mut self, token: Token, why: Failure) {
        let Some(c) = self.close_tls(token) else {
            return;
        };
        if let Some(idx) = self.services.index_of(c.meta.service) {
            let reason = RefuseReason::Tls(why);
            self.refuse(
                idx,
                &c.net,
                &c.meta.peer,
                c.meta.source,
                reason,
                Instant::now(),
            );
        }
    }

    /// The handshake is done: a socket pair, the child on one end, the
    /// pump on the other; if that cannot be, the client is closed.
    fn handshake_done(&mut self, token: Token) {
        let was_full = self.tls.is_full();
        let Some(c) = self.tls.remove(token) else {
            return;
        };
        let fd = c.net.as_raw_fd();
        match self.start_pump(c) {
            Some(conn) => {
                self.tls.insert_pump(token, conn);
                self.on_tls_ready(token);
            }
            None => {
                self.poller.tokens.remove(&token);
                let _ = self.poller.registry().deregister(&mut SourceFd(&fd));
            }
        }
        if was_full && !self.tls.is_full() {
            self.sync_all(Instant::now());
        }
    }

    /// The child started on a socket pair's end, and the pump for the
    /// other (registered); None when either could not be.
    fn start_pump(&mut self, c: TlsConn<TlsClient>) -> Option<TlsConn<TlsClient>> {
        let TlsConn {
            net, stage, meta, ..
        } = c;
        let Stage::Handshake(hs) = stage else {
            return None;
        };
        // None: a reload removed the service meanwhile.
        let idx = self.services.index_of(meta.service)?;
        let name = self.services[idx].spec.name.clone();
        let ssl = SslVars::of(hs.conn());
        debug!("{name}: {} {} for {}", ssl.protocol, ssl.cipher, meta.peer);
        let (plain, child_end) = match Socket::pair(Domain::UNIX, Type::STREAM, None) {
            Ok(p) => p,
            Err(e) => {
                warn!("{name}: cannot make a socket pair for {}: {e}", meta.peer);
                return None;
            }
        };
        let fd = child_end.as_raw_fd();
        let launch = self.spawn_for_client(idx, fd, &meta.peer, meta.source, Some(&ssl));
        // The child has its own copy of its end.
        drop(child_end);
        match launch {
            Launch::Started => {}
            Launch::RetryLater => {
                info!("{name}: closing {} (no child could be started)", meta.peer);
                return None;
            }
            Launch::Failed => return None,
        }
        let mut pump = TlsPump::new(hs.into_conn());
        if let Some(text) = &self.services[idx].spec.banner {
            pump.greet(text.as_bytes());
        }
        let plain_token = self.poller.tokens.next();
        plain.set_nonblocking(true).ok()?;
        self.poller
            .registry()
            .register(
                &mut SourceFd(&plain.as_raw_fd()),
                plain_token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        self.poller.tokens.insert(plain_token, TokenKind::Tls);
        Some(TlsConn {
            net,
            stage: Stage::Pump {
                pump,
                plain,
                plain_token,
            },
            meta,
            // The handshake's deadline no longer applies.
            deadline: None,
        })
    }

    /// Out of the table and the poll set; its sockets close when dropped.
    fn remove_tls(&mut self, token: Token) -> Option<TlsConn<TlsClient>> {
        let was_full = self.tls.is_full();
        let c = self.tls.remove(token)?;
        self.poller.tokens.remove(&token);
        let _ = self
            .poller
            .registry()
            .deregister(&mut SourceFd(&c.net.as_raw_fd()));
        if let Stage::Pump {
            plain, plain_token, ..
        } = &c.stage
        {
            self.poller.tokens.remove(plain_token);
            let _ = self
                .poller
                .registry()
                .deregister(&mut SourceFd(&plain.as_raw_fd()));
        }
        if was_full && !self.tls.is_full() {
            // The TLS services' listeners were unwatched at the bound.
            self.sync_all(Instant::now());
        }
        Some(c)
    }

    /// Closed: both sockets, and a slot under the bound if it was a
    /// handshake. Returns it for the refusal's line.
    fn close_tls(&mut self, token: Token) -> Option<TlsConn<TlsClient>> {
        let c = self.remove_tls(token)?;
        if let Some(idx) = self.services.index_of(c.meta.service) {
            self.sync_service(idx, Instant::now());
        }
        Some(c)
    }
}
