//! Forward-mode TLS clients not relayed yet at a live upgrade: a
//! handshake in progress, or a session held while its backend starts.
//! Their rustls state cannot cross the exec, so each gets a socket pair:
//! the drainer (`drainer.rs`, its copy of this memory) takes the client
//! and its session, finishes the handshake (`relay::Pending`) and relays
//! the session to one end; the image keeps the other end in the
//! client's place, as a plaintext client whose PROXY header (if any) it
//! builds itself, from its config then (a reload, or the config the
//! upgrade's image read, may differ from the drainer's copy):
//!
//! - a handshake: in the front table (`Work::Drained`), until the
//!   drainer's preamble (`relay::preamble`: done, with the session's
//!   ALPN protocol and server name for the header) sends the client to
//!   its backend as any, or its failure byte or EOF says it failed
//!   (refused as `tls`);
//! - a held client: held on (`Waiting::drained`, the names taken from
//!   the session here before it goes), so the backend's start, its
//!   readiness and the relay to it stay the image's. The drainer writes
//!   nothing before the client's bytes.
//!
//! Either crosses the exec as a plaintext connection does. Accept-mode
//! handshakes are not taken: their child would be started by the image
//! without the session's `SSL_*` variables; they close with the exec.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::unistd::Pid;
use rustc_hash::FxHashMap;
use socket2::{Domain, Socket, Type};

use super::front::{FrontConn, Work};
use super::poller::TokenKind;
use super::relays::{Kind, Relayed};
use super::timers::Timer;
use super::Server;
use crate::peer::{Peer, SourceKey};
use crate::relay::preamble::Names;
use crate::relay::{Pending, Preface, Session};

/// The most a `Work::Drained` end waits for its byte: the drainer ends
/// the handshake by `HANDSHAKE_TIMEOUT` at the latest (its EOF comes
/// then), so this only bounds a drainer that stopped.
pub(super) const DRAINED_WAIT: Duration =
    Duration::from_secs(crate::tls::HANDSHAKE_TIMEOUT.as_secs() + 1);

/// The pairs made before the fork: for each handshake (by its front
/// token) and each held client (by its socket's fd: `held_tls`), the
/// drainer's end and the image's.
pub(super) struct Pairs {
    front: Vec<(Token, OwnedFd, Socket)>,
    held: Vec<(RawFd, OwnedFd, Socket)>,
    /// The client sockets and the drainer's ends: the drainer keeps them.
    pub keep: Vec<RawFd>,
}

impl Pairs {
    pub fn is_empty(&self) -> bool {
        self.front.is_empty() && self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.front.len() + self.held.len()
    }
}

/// A socket pair: the drainer's end, the image's (both non-blocking:
/// the relay's, each side).
fn pair() -> Option<(OwnedFd, Socket)> {
    let (a, b) = Socket::pair(Domain::UNIX, Type::STREAM, None)
        .inspect_err(|e| warn!("upgrade: no socket pair for a TLS client ({e}): it closes"))
        .ok()?;
    a.set_nonblocking(true).ok()?;
    b.set_nonblocking(true).ok()?;
    Some((OwnedFd::from(a), b))
}

impl Server {
    /// Before the drainer's fork: a pair for each forward-mode TLS
    /// client not relayed yet (one without closes with the exec).
    pub(super) fn pair_tls_pending(&self) -> Pairs {
        let mut pairs = Pairs {
            front: Vec::new(),
            held: Vec::new(),
            keep: Vec::new(),
        };
        let forward = |id| {
            (self.services.index_of(id)).is_some_and(|i| self.services[i].spec.forward.is_some())
        };
        let handshakes = (self.front.iter())
            .filter(|(_, c)| matches!(c.work, Work::Handshake(_)) && forward(c.service));
        for (token, c) in handshakes {
            let Some((a, b)) = pair() else { break };
            pairs.keep.extend([c.socket.as_raw_fd(), a.as_raw_fd()]);
            pairs.front.push((*token, a, b));
        }
        for fd in self.held_tls() {
            let Some((a, b)) = pair() else { break };
            pairs.keep.extend([fd, a.as_raw_fd()]);
            pairs.held.push((fd, a, b));
        }
        pairs
    }

    /// In the drainer: those clients out of its copy of the tables,
    /// each to be finished and relayed to its pair's end.
    pub(super) fn take_tls_pending(&mut self, pairs: Pairs) -> Vec<Pending<Relayed>> {
        let mut out = Vec::new();
        for (token, a, _) in pairs.front {
            let Some(c) = self.front.remove(token) else {
                continue;
            };
            let (Work::Handshake(hs), Some(idx)) = (c.work, self.services.index_of(c.service))
            else {
                continue;
            };
            let banner = self.services[idx].spec.banner.clone();
            let preface: Preface = Box::new(move |tls| {
                if let Some(text) = banner {
                    let _ = tls.writer().write_all(text.as_bytes());
                }
                Names::of(tls).preamble()
            });
            let tag = self.pending_tag(idx, c.peer, c.source);
            let (fd, deadline) = (OwnedFd::from(c.socket), c.timer.at());
            let session = Session::Handshaking(hs);
            out.push((fd, session, deadline, a, tag, preface));
        }
        let mut ends: FxHashMap<RawFd, OwnedFd> =
            (pairs.held.into_iter()).map(|(fd, a, _)| (fd, a)).collect();
        for (idx, w) in self.take_held_tls(&ends) {
            let (Some(tls), Some(a)) = (w.tls, ends.remove(&w.conn.as_raw_fd())) else {
                continue;
            };
            // The image has its names, and builds its header.
            let preface: Preface = Box::new(|_| Vec::new());
            let tag = self.pending_tag(idx, w.peer, w.source);
            let fd = OwnedFd::from(w.conn);
            out.push((fd, Session::Done(tls), Instant::now(), a, tag, preface));
        }
        (out.into_iter())
            .map(|(fd, session, deadline, back, tag, preface)| Pending {
                fd,
                session,
                deadline,
                back,
                tag,
                preface,
            })
            .collect()
    }

    fn pending_tag(&self, idx: usize, peer: Peer, source: Option<SourceKey>) -> Relayed {
        Relayed {
            service: self.services[idx].id,
            name: self.services[idx].name.clone(),
            pid: Pid::from_raw(0),
            peer,
            source,
            runtime_timer: None,
            kind: Kind::Child,
        }
    }

    /// In the image, the drainer forked: each client is now its pair's
    /// other end (the drainer has the client's socket).
    pub(super) fn hand_tls_pending(&mut self, pairs: Pairs) {
        let now = Instant::now();
        for (token, _, end) in pairs.front {
            let Some(c) = self.front.remove(token) else {
                continue;
            };
            self.leave_front(token, &c);
            let token = self.poller.tokens.next();
            let fd = end.as_raw_fd();
            let registry = self.poller.registry();
            if let Err(e) = registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
                info!("closing {}: {e}", c.peer);
                continue;
            }
            self.poller.tokens.insert(token, TokenKind::Front);
            let timer = self.timers.add(now + DRAINED_WAIT, Timer::FrontDue(token));
            let conn = FrontConn {
                socket: end,
                work: Work::Drained(None),
                timer,
                ..c
            };
            self.front.insert(token, conn);
        }
        let ends = pairs.held.into_iter().map(|(fd, _, b)| (fd, b)).collect();
        self.frame_held_tls(ends);
    }
}
