//! The TLS connections the loop holds once their handshake is done (the
//! handshake itself is a step of the server's front table, with the PROXY
//! header, before dispatch), by token: each pumps between the client and
//! its child's socket pair (two tokens: the client's socket and
//! summond's end of the pair). `M` is what the loop keeps with each (its
//! service, client, address): the table knows nothing of it.

use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use mio::Token;
use socket2::Socket;

use super::TlsPump;

/// How long a pump whose child has ended may go without handing the
/// client any of the rest, or without the client closing (`linger`).
pub const LINGER: Duration = Duration::from_secs(10);
pub struct TlsConn<M> {
    pub net: Socket,
    pub pump: TlsPump,
    /// summond's end of the child's socket pair, and its token.
    pub plain: Socket,
    pub plain_token: Token,
    pub meta: M,
    /// None until its child ends (`linger`).
    pub deadline: Option<Instant>,
}

pub struct TlsConns<M> {
    conns: FxHashMap<Token, TlsConn<M>>,
    /// A pair's token → its connection's.
    plain: FxHashMap<Token, Token>,
    /// Linger deadlines as pushed; one whose connection left, or was
    /// given a later one, is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, Token)>>,
    /// Pumps whose budget ran out: served again next turn.
    pub ready: Vec<Token>,
}

impl<M> Default for TlsConns<M> {
    fn default() -> Self {
        TlsConns {
            conns: FxHashMap::default(),
            plain: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            ready: Vec::new(),
        }
    }
}

impl<M> TlsConns<M> {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
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

    /// A connection whose handshake is done, registered by the caller
    /// under `token` and its `plain_token`.
    pub fn insert(&mut self, token: Token, conn: TlsConn<M>) {
        self.plain.insert(conn.plain_token, token);
        self.conns.insert(token, conn);
    }

    pub fn remove(&mut self, token: Token) -> Option<TlsConn<M>> {
        let c = self.conns.remove(&token)?;
        self.plain.remove(&c.plain_token);
        Some(c)
    }

    /// The earliest linger deadline, or one that was (its connection left
    /// since): waking for it costs one turn, and `expired` drops it.
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

    /// The connections whose `linger` passed at `now`.
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
