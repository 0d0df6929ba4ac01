//! A table of relayed connections served alone, in a process of its own
//! (a drainer, forked before a live upgrade's exec for the TLS
//! connections, whose rustls state cannot cross it): its own poll set,
//! the same steps and `linger` deadlines, until the last connection has
//! ended.

use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::{token, Relays, Which};

impl<T> Relays<T> {
    /// Serve every connection until none is left. Each is registered
    /// afresh in a poll set of its own (what it already holds is served
    /// at once: `split_off_tls` queued it). Returns how many ended.
    pub fn drain_alone(mut self) -> std::io::Result<usize> {
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
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = poll.poll(&mut events, wait) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for e in events.iter() {
                ended += self.ready(poll.registry(), e.token(), e).is_some() as usize;
            }
            ended += self.serve_again(poll.registry()).len();
            ended += self.expire(poll.registry(), Instant::now()).len();
        }
        Ok(ended)
    }
}
