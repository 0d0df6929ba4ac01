//! A table of relayed connections served alone, in a process of its own
//! (a drainer, forked before a live upgrade's exec for the TLS
//! connections, whose rustls state cannot cross it): its own poll set,
//! the same steps and `linger` deadlines, until the last connection has
//! ended; a connection with a `max_runtime` deadline (`cutoffs`) is
//! closed at it, as the image would have. TLS clients it takes on
//! besides (`pending.rs`: handshakes to finish, sessions held for a
//! backend) join the table once their session is done.

use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::pending::{Handshakes, Pending};
use super::{owns, token, Closed, RelayId, Relays, Which};

impl<T> Relays<T> {
    /// Serve every connection until none is left. Each is registered
    /// afresh in a poll set of its own (what it already holds is served
    /// at once: `split_off_tls` queued it); each in `cutoffs` is closed
    /// at its deadline if still open. Each that ends is given to `end`,
    /// with whether its `max_runtime` cut it (for its log line, and for
    /// the image, which counts it open until then). Returns how many
    /// ended. Each of `pending` is relayed once its session is done.
    pub fn drain_alone(
        mut self,
        mut cutoffs: Vec<(Instant, RelayId)>,
        pending: Vec<Pending<T>>,
        mut end: impl FnMut(&Closed<T>, bool),
    ) -> std::io::Result<usize> {
        // Latest first: the next one due is popped from the end.
        cutoffs.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        let mut poll = Poll::new()?;
        let both = Interest::READABLE | Interest::WRITABLE;
        for (id, r) in &self.conns {
            for (side, which) in r.sides.iter().zip([Which::Front, Which::Back]) {
                poll.registry()
                    .register(&mut SourceFd(&side.fd()), token(*id, which), both)?;
            }
        }
        let mut hs = Handshakes::start(pending, &mut self, poll.registry());
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
                match owns(e.token()) {
                    true => closed.extend(self.ready(poll.registry(), e.token(), e)),
                    false => hs.ready(e.token(), &mut self, poll.registry()),
                }
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
}
