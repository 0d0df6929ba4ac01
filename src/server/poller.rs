//! What the loop waits on: the poll set, the signalfd in it (the one
//! source no table owns), and what its tokens stand for: the fixed
//! tokens of the sources there is one of, and the dynamic ones given out
//! from `FIRST_DYNAMIC_TOKEN` (listeners, clients), each named by a
//! `TokenKind` while its source is registered. A source is registered
//! in the one and named in the other.

use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

use crate::addr::ListenAddr;
use crate::signals::Signals;

pub(super) const SIGNALS: Token = Token(0);
pub(super) const CONTROL: Token = Token(1);
pub(super) const METRICS: Token = Token(2);
/// The pipe a reload's config load answers on (`reload.rs`).
pub(super) const CONFIG_LOAD: Token = Token(5);
/// The output of the new binary's check before an upgrade.
pub(super) const UPGRADE_CHECK: Token = Token(3);
const FIRST_DYNAMIC_TOKEN: usize = 16;

/// What a poll token stands for.
#[derive(Clone, Debug)]
pub(super) enum TokenKind {
    Listener(ListenAddr),
    /// A TCP client of an internal service.
    Internal,
    /// A connection whose PROXY header is awaited (`front.rs`).
    Front,
    /// A Prometheus scraper.
    Scrape,
    ControlClient,
    /// A connect to a starting forward backend.
    Probe(super::services::ServiceId),
    /// A starting forward backend's NOTIFY_SOCKET.
    Notify(super::services::ServiceId),
    /// A long-running child's NOTIFY_SOCKET (`ready.rs`).
    ChildNotify(nix::unistd::Pid),
    /// A drainer's pipe of ended connections (`drainer.rs`).
    DrainerEnds(nix::unistd::Pid),
}

/// The dynamic poll tokens: what each stands for, and the next one to give
/// out (from `FIRST_DYNAMIC_TOKEN`, never reused during the run).
pub(super) struct Tokens {
    kinds: FxHashMap<Token, TokenKind>,
    next: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            kinds: FxHashMap::default(),
            next: FIRST_DYNAMIC_TOKEN,
        }
    }
}

impl Tokens {
    /// A token never given out before; `insert` says what it stands for
    /// once its source is registered.
    pub fn next(&mut self) -> Token {
        let t = Token(self.next);
        self.next += 1;
        t
    }

    pub fn insert(&mut self, token: Token, kind: TokenKind) {
        self.kinds.insert(token, kind);
    }

    pub fn get(&self, token: &Token) -> Option<&TokenKind> {
        self.kinds.get(token)
    }

    pub fn remove(&mut self, token: &Token) {
        self.kinds.remove(token);
    }
}

/// The poll set, the signalfd in it, and what each of its dynamic tokens
/// stands for: a source is registered in one and named in the other.
pub(super) struct Poller {
    pub poll: Poll,
    /// The signals summond handles (`signals.rs`), read at `SIGNALS`.
    pub signals: Signals,
    pub tokens: Tokens,
}

impl Poller {
    /// The poll set with the signalfd in it, or what failed. Signals
    /// first: no SIGCHLD may arrive before its signalfd exists.
    pub fn open() -> Result<Poller, (&'static str, io::Error)> {
        let signals = Signals::open().map_err(|e| ("signalfd", e))?;
        let poll = Poll::new().map_err(|e| ("epoll", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(|e| ("register signalfd", e))?;
        Ok(Poller {
            poll,
            signals,
            tokens: Tokens::default(),
        })
    }

    pub fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// Watch `fd` for `interest` under a new token, which names `kind`.
    pub fn watch(&mut self, fd: RawFd, kind: TokenKind, interest: Interest) -> io::Result<Token> {
        let token = self.tokens.next();
        self.registry()
            .register(&mut SourceFd(&fd), token, interest)?;
        self.tokens.insert(token, kind);
        Ok(token)
    }
}
