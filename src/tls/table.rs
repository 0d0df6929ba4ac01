//! The TLS connections the loop holds, by token: handshaking (with a
//! deadline, `HANDSHAKE_TIMEOUT`, and at most `HANDSHAKE_LIMIT` at once)
//! or pumping between the client and its child's socket pair (two
//! tokens: the client's socket and summond's end of the pair). `M` is
//! what the loop keeps with each (its service, client, address): the
//! table knows nothing of it.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use mio::Token;
use socket2::Socket;

use super::{Handshake, TlsPump};

/// SPEC: a handshake is bounded in time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pump whose child has ended may go without handing the
/// client any of the rest, or without the client closing (`linger`).
pub const LINGER: Duration = Duration::from_secs(10);
/// Handshakes at once over all services. Each holds rustls's state (a few
/// KiB) and costs a key exchange and a signature; at the bound the TLS
/// services' listeners are not watched, so new clients wait in the kernel
/// backlog (as at `max_instances`) until a handshake ends, at the latest
/// by its timeout.
pub const HANDSHAKE_LIMIT: usize = 256;

pub enum Stage {
    Handshake(Handshake),
    /// The pump and summond's end of the pair, with its token.
    Pump {
        pump: TlsPump,
        plain: Socket,
        plain_token: Token,
    },
}

pub struct TlsConn<M> {
    pub net: Socket,
    pub stage: Stage,
    pub meta: M,
    /// A handshake's; a pump has none until its child ends (`linger`).
    pub deadline: Option<Instant>,
}

pub struct TlsConns<M> {
    conns: FxHashMap<Token, TlsConn<M>>,
    /// A pair's token → its connection's.
    plain: FxHashMap<Token, Token>,
    handshaking: usize,
    /// Handshake deadlines as pushed; one whose connection went on to
    /// pump (or left) is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, Token)>>,
    /// Pumps whose budget ran out: served again next turn.
    pub ready: Vec<Token>,
}

impl<M> Default for TlsConns<M> {
    fn default() -> Self {
        TlsConns {
            conns: FxHashMap::default(),
            plain: FxHashMap::default(),
            handshaking: 0,
            deadlines: BinaryHeap::new(),
            ready: Vec::new(),
        }
    }
}

impl<M> TlsConns<M> {
    pub fn is_full(&self) -> bool {
        self.handshaking >= HANDSHAKE_LIMIT
    }

    pub fn handshaking(&self) -> usize {
        self.handshaking
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A new handshake on `net`, registered by the caller under `token`.
    pub fn start(&mut self, token: Token, net: Socket, hs: Handshake, meta: M, now: Instant) {
        let deadline = now + HANDSHAKE_TIMEOUT;
        self.deadlines.push(Reverse((deadline, token)));
        self.handshaking += 1;
        self.conns.insert(
            token,
            TlsConn {
                net,
                stage: Stage::Handshake(hs),
                meta,
                deadline: Some(deadline),
            },
        );
    }

    /// The connection a token (its own or its pair's) belongs to.
    pub fn owner(&self, token: Token) -> Option<Token> {
        if self.conns.contains_key(&token) {
            return Some(token);
        }
        self.plain.get(&token).copied()
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut TlsConn<M>> {
        self.conns.get_mut(&token)
    }

    /// A connection whose handshake was done (taken out with `remove`):
    /// it pumps to `plain` from now on.
    pub fn insert_pump(&mut self, token: Token, conn: TlsConn<M>) {
        if let Stage::Pump { plain_token, .. } = &conn.stage {
            self.plain.insert(*plain_token, token);
            self.conns.insert(token, conn);
        }
    }

    pub fn remove(&mut self, token: Token) -> Option<TlsConn<M>> {
        let c = self.conns.remove(&token)?;
        match &c.stage {
            Stage::Handshake(_) => self.handshaking -= 1,
            Stage::Pump { plain_token, .. } => {
                self.plain.remove(plain_token);
            }
        }
        Some(c)
    }

    /// The earliest handshake deadline, or one that was (its handshake
    /// ended since): waking for it costs one turn, and `expired` drops it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Once its child's side ended, a pump has until `at` to hand the
    /// client more of the rest (`TlsPump::rearm_linger`): a client that
    /// stops reading, or never closes, would otherwise hold summond's
    /// socket and rustls's state with no child counted for it.
    pub fn linger(&mut self, token: Token, at: Instant) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.deadline = Some(at);
            self.deadlines.push(Reverse((at, token)));
        }
    }

    /// The connections whose deadline (a handshake's, or a pump's
    /// `linger`) passed at `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Token> {
        let mut out = Vec::new();
        while let Some(Reverse((at, token))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let pending = self
                .conns
                .get(&token)
                .is_some_and(|c| c.deadline == Some(at));
            if pending {
                out.push(token);
            }
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &TlsConn<M>> {
        self.conns.values()
    }
}
