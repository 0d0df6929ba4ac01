//! A table of relayed connections served alone, in a process of its own
//! (a drainer, forked before a live upgrade's exec for the TLS
//! connections, whose rustls state cannot cross it): its own poll set,
//! the same steps and `linger` deadlines, until the last connection has
//! ended; a connection with a `max_runtime` deadline (`cutoffs`) is
//! closed at it, as the image would have.

use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::{token, Closed, RelayId, Relays, Which};

impl<T> Relays<T> {
    /// Serve every connection until none is left. Each is registered
    /// afresh in a poll set of its own (what it already holds is served
    /// at once: `split_off_tls` queued it); each in `cutoffs` is closed
    /// at its deadline if still open. Each that ends is given to `end`,
    /// with whether its `max_runtime` cut it (for its log line, and for
    /// the image, which counts it open until then). Returns how many
    /// ended.
    pub fn drain_alone(
        mut self,
        mut cutoffs: Vec<(Instant, RelayId)>,
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
        let mut events = Events::with_capacity(64);
        let mut ended = 0;
        while !self.conns.is_empty() {
            let wait = if self.has_ready() {
                Some(Duration::ZERO)
            } else {
                let cut = cutoffs.last().map(|c| c.0);
                let next = match (self.next_deadline(), cut) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
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
                closed.extend(self.ready(poll.registry(), e.token(), e));
            }
            closed.extend(self.serve_again(poll.registry()));
            let now = Instant::now();
            closed.extend(self.expire(poll.registry(), now));
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
