//! A table of relayed connections served alone, in a process of its own
//! (a drainer, forked before a live upgrade's exec for the TLS
//! connections, whose rustls state cannot cross it): its own poll set,
//! the same steps and `linger` deadlines, until the last connection has
//! ended; a connection with a `max_runtime` deadline (`cutoffs`) is
//! closed at it, as the image would have. TLS clients it takes on
//! besides (`pending.rs`: handshakes to finish, sessions held for a
//! backend) join the table once their session is done. A held end's
//! word may come from an fd of its own (`Words`: a pidfd of the child,
//! whose hang-up says the child was reaped); without one its bound
//! passes it on.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::pending::{Handshakes, Pending};
use super::side::WATCH;
use super::{owns, token, Closed, RelayId, Relays, Which, TOKEN_BASE};

/// Where held ends get their word in a drainer: for each fd, the
/// connection it speaks for; once its peer hangs up, `read` gives the
/// word (`Relays::settle_end`'s `whole`), or none (the bound decides).
pub struct Words {
    pub fds: Vec<(OwnedFd, RelayId)>,
    pub read: fn(&OwnedFd) -> Option<bool>,
}

/// The words' tokens: from here up to the relay's, above the pending
/// handshakes' (which count up from 0).
const WORD_BASE: usize = TOKEN_BASE / 2;

impl<T> Relays<T> {
    /// Serve every connection until none is left. Each is registered
    /// afresh in a poll set of its own (what it already holds is served
    /// at once: `split_off_tls` queued it); each in `cutoffs` is closed
    /// at its deadline if still open. Each that ends is given to `end`,
    /// with whether its `max_runtime` cut it (for its log line, and for
    /// the image, which counts it open until then). Returns how many
    /// ended. Each of `pending` is relayed once its session is done.
    pub fn drain_alone(
        self,
        cutoffs: Vec<(Instant, RelayId)>,
        pending: Vec<Pending<T>>,
        end: impl FnMut(&Closed<T>, bool),
    ) -> std::io::Result<usize> {
        let words = Words {
            fds: Vec::new(),
            read: |_| None,
        };
        self.drain_alone_with(cutoffs, pending, words, end)
    }

    /// `drain_alone`, the held ends settled by `words`.
    pub fn drain_alone_with(
        mut self,
        mut cutoffs: Vec<(Instant, RelayId)>,
        pending: Vec<Pending<T>>,
        words: Words,
        mut end: impl FnMut(&Closed<T>, bool),
    ) -> std::io::Result<usize> {
        // Latest first: the next one due is popped from the end.
        cutoffs.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        let mut poll = Poll::new()?;
        for (id, r) in &self.conns {
            for (side, which) in r.sides.iter().zip([Which::Front, Which::Back]) {
                poll.registry()
                    .register(&mut SourceFd(&side.fd()), token(*id, which), WATCH)?;
            }
        }
        let mut hs = Handshakes::start(pending, &mut self, poll.registry());
        let mut fds: Vec<_> = words.fds.into_iter().map(Some).collect();
        for (i, (fd, _)) in fds.iter().flatten().enumerate() {
            let fd = &mut SourceFd(&fd.as_raw_fd());
            poll.registry()
                .register(fd, Token(WORD_BASE + i), Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(64);
        let mut ended = 0;
        while !self.conns.is_empty() || !hs.is_empty() {
            let wait = if self.has_ready() {
                Some(Duration::ZERO)
            } else {
                let cut = cutoffs.last().map(|c| c.0);
                let next = [self.next_deadline(), cut, hs.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min();
                next.map(|d| d.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = poll.poll(&mut events, wait) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut closed: Vec<Closed<T>> = Vec::new();
            for e in events.iter() {
                let t = e.token();
                if owns(t) {
                    closed.extend(self.ready(poll.registry(), t, e));
                } else if t.0 < WORD_BASE {
                    hs.ready(t, &mut self, poll.registry());
                } else if e.is_read_closed() {
                    let word = fds.get_mut(t.0 - WORD_BASE).and_then(Option::take);
                    closed.extend(self.word(poll.registry(), word, words.read));
                }
            }
            // A backend connect in progress at the fork that needs its
            // check (`Side::connecting_checked`): the drainer has no
            // backend to check it against, so it is not relayed.
            for id in self.take_checks() {
                let why = std::io::Error::other("its connect could not be checked in the drainer");
                closed.extend(self.checked(poll.registry(), id, Err(why)));
            }
            closed.extend(self.serve_again(poll.registry()));
            let now = Instant::now();
            closed.extend(self.expire(poll.registry(), now));
            hs.expire(now, poll.registry());
            ended += closed.len();
            closed.iter().for_each(|c| end(c, false));
            while let Some(&(_, id)) = cutoffs.last().filter(|c| c.0 <= now) {
                cutoffs.pop();
                if let Some(closed) = self.close(poll.registry(), id) {
                    end(&closed, true);
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    /// A word's fd hung up: its connection's held end settled by what it
    /// says (nothing: its bound passes it on); the fd is closed.
    fn word(
        &mut self,
        registry: &Registry,
        word: Option<(OwnedFd, RelayId)>,
        read: fn(&OwnedFd) -> Option<bool>,
    ) -> Option<Closed<T>> {
        let (fd, id) = word?;
        let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        let whole = read(&fd)?;
        self.settle_end(registry, id, whole)
    }
}
