//! TLS clients a drainer takes on besides its relays (`drain.rs`), each
//! with its own end of a socket pair: a handshake in progress at the
//! upgrade, driven here (the same `Handshake::drive`, its deadline and
//! one `HELLO_TIMEOUT` extension), or a session done (a client held
//! while its forward backend starts). Once done the session is relayed
//! to its pair's end as an accept-mode child's is, `preface` first (the
//! next image, on the other end, takes it from there as a plaintext
//! client); a handshake that fails or runs out closes both, its pair's
//! end told how first (`preamble::failed`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

use super::{Relays, Side};
use crate::tls::{Failure, Handshake, Step, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT, LINGER};

/// Where a pending client's TLS session is.
pub enum Session {
    Handshaking(Box<Handshake>),
    Done(Box<ServerConnection>),
}

/// What its pair's end gets first once the session is done (the banner,
/// if any, goes into the session here too).
pub type Preface = Box<dyn FnOnce(&mut ServerConnection) -> Vec<u8>>;

/// One client to finish and relay.
pub struct Pending<T> {
    /// The client's socket.
    pub fd: OwnedFd,
    pub session: Session,
    /// Its handshake's deadline (unused once done).
    pub deadline: Instant,
    /// The drainer's end of the pair.
    pub back: OwnedFd,
    pub tag: T,
    pub preface: Preface,
}

/// The handshakes in progress, each polled under its place's token
/// (below the relay's `TOKEN_BASE`).
pub(super) struct Handshakes<T> {
    slots: Vec<Option<Pending<T>>>,
}

impl<T> Handshakes<T> {
    /// The sessions done go to `relays` now; the others are watched.
    pub fn start(pending: Vec<Pending<T>>, relays: &mut Relays<T>, registry: &Registry) -> Self {
        let mut slots = Vec::new();
        for p in pending {
            if let Session::Done(_) = p.session {
                relay(p, relays, registry);
                continue;
            }
            let token = Token(slots.len());
            let both = Interest::READABLE | Interest::WRITABLE;
            // Not watched: it closes (its pair's end with it).
            if (registry.register(&mut SourceFd(&p.fd.as_raw_fd()), token, both)).is_ok() {
                slots.push(Some(p));
            }
        }
        Handshakes { slots }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|p| p.deadline).min()
    }

    /// An event on `token`: the handshake moved on as far as it can;
    /// done, it is relayed; failed, closed.
    pub fn ready(&mut self, token: Token, relays: &mut Relays<T>, registry: &Registry) {
        let Some(slot) = self.slots.get_mut(token.0) else {
            return;
        };
        let Some(Pending {
            fd,
            session: Session::Handshaking(hs),
            ..
        }) = slot.as_mut()
        else {
            return;
        };
        let step = hs.drive(&mut super::tls::Fd(fd));
        if step == Step::Pending {
            return;
        }
        let Some(mut p) = slot.take() else {
            return;
        };
        let _ = registry.deregister(&mut SourceFd(&p.fd.as_raw_fd()));
        match step {
            Step::Done => {
                if let Session::Handshaking(hs) = p.session {
                    p.session = Session::Done(Box::new(hs.into_conn()));
                }
                relay(p, relays, registry);
            }
            Step::Failed(why) => tell_failed(&p.back, why),
            Step::Pending => {}
        }
    }

    /// Those past their deadline close; one whose hello is in gets the
    /// rest of `HANDSHAKE_TIMEOUT` once, as in the image.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        for slot in &mut self.slots {
            let Some(p) = slot.as_mut().filter(|p| p.deadline <= now) else {
                continue;
            };
            if let Session::Handshaking(hs) = &mut p.session {
                if hs.extend() {
                    p.deadline = now + (HANDSHAKE_TIMEOUT - HELLO_TIMEOUT);
                    continue;
                }
            }
            let _ = registry.deregister(&mut SourceFd(&p.fd.as_raw_fd()));
            tell_failed(&p.back, Failure::Timeout);
            *slot = None;
        }
    }
}

/// The image's end learns how the handshake failed (its one byte goes
/// into an empty pair's buffer; if not, the EOF says "closed").
fn tell_failed(back: &OwnedFd, why: Failure) {
    let _ = nix::unistd::write(back, &[super::preamble::failed(why)]);
}

/// A session done: relayed to its pair's end, its preface first, with
/// the TLS `LINGER` of any. If that cannot be, both close.
fn relay<T>(p: Pending<T>, relays: &mut Relays<T>, registry: &Registry) {
    let Session::Done(mut conn) = p.session else {
        return;
    };
    let preface = (p.preface)(&mut conn);
    let front = Side::tls(p.fd, *conn);
    let back = Side::child(p.back);
    if let Ok(id) = relays.add_with_preface(registry, front, back, p.tag, &preface) {
        relays.linger(id, LINGER);
    }
}
