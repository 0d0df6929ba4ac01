//! The server's side of the relay table (`crate::relay`): one table for
//! every relayed connection, whichever way it came: a forward-mode client
//! to its backend (`forward/`), or a TLS client to its child's socket
//! pair (`tls.rs`; with forward mode, a TLS client to its backend). Here
//! are its events and deadlines, and where each connection that ended
//! goes back to its owner.

use std::time::Instant;

use log::debug;
use mio::event::Event;
use nix::unistd::Pid;

use super::services::ServiceId;
use super::timers::TimerKey;
use super::Server;
use crate::peer::{Peer, SourceKey};
use crate::relay::{Closed, End, RelayId};

/// What the back side of a relayed connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A connection to a forward service's backend (`pid`).
    Forward,
    /// Summond's end of a socket pair whose other end an accept-mode TLS
    /// service's child (`pid`, in the child table) holds. The child's EOF
    /// is held (`Relays::hold_end`) until the child is reaped: passed on
    /// as `close_notify` if it exited, the client's connection closed
    /// without one if a signal killed it or `max_runtime` stopped it.
    Child,
}

/// What a relayed connection is, for its log lines and counts.
pub(super) struct Relayed {
    pub service: ServiceId,
    pub name: std::rc::Rc<str>,
    /// The backend it was relayed to, or the child on its socket pair.
    pub pid: Pid,
    pub peer: Peer,
    pub source: Option<SourceKey>,
    pub runtime_timer: Option<TimerKey>,
    pub kind: Kind,
}

impl Server {
    /// An event on one of the relay's tokens.
    pub(super) fn on_relay_event(&mut self, event: &Event) {
        let registry = self.poller.registry();
        if let Some(closed) = self.relays.ready(registry, event.token(), event) {
            self.relay_ended(closed);
        }
        for id in self.relays.take_checks() {
            self.check_connect(id);
        }
    }

    /// Connections that used their share last turn.
    pub(super) fn serve_relays_again(&mut self) {
        if !self.relays.has_ready() {
            return;
        }
        for closed in self.relays.serve_again(self.poller.registry()) {
            self.relay_ended(closed);
        }
    }

    /// Connections past their `linger`: closed.
    pub(super) fn expire_relays(&mut self, now: Instant) {
        for closed in self.relays.expire(self.poller.registry(), now) {
            self.relay_ended(closed);
        }
    }

    /// An accept-mode TLS child's relay learns how the child ended:
    /// `whole` (it exited, with any code: the program chose its end) or
    /// cut (a signal killed it, or `max_runtime` is stopping it). A cut
    /// closes the client's connection without `close_notify` once all the
    /// child wrote was sent.
    pub(super) fn child_ended(&mut self, id: RelayId, whole: bool) {
        let registry = self.poller.registry();
        if let Some(closed) = self.relays.settle_end(registry, id, whole) {
            self.relay_ended(closed);
        }
    }

    /// A relayed connection ended: to its owner.
    pub(super) fn relay_ended(&mut self, c: Closed<Relayed>) {
        match c.tag.kind {
            Kind::Forward => self.relay_closed(c),
            Kind::Child => {
                let t = &c.tag;
                if let End::Linger = c.end {
                    debug!(
                        "closing {}: its child ended and it did not read the rest",
                        t.peer
                    );
                }
                debug!(
                    "{}: TLS {} closed ({} bytes up, {} down): {}",
                    t.name, t.peer, c.up, c.down, c.end
                );
                if let Some(idx) = self.services.index_of(t.service) {
                    self.sync_service(idx, Instant::now());
                }
            }
        }
    }
}
