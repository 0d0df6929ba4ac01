//! The server handshake as a state machine the loop drives: each
//! readiness event of the client's socket calls `drive`, which writes
//! what rustls has to send and reads what the socket has, until the
//! handshake is done, fails, or the socket would block (then the next
//! event continues). It never waits; its time bound is the table's
//! deadline (`table.rs`).

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use rustls::ServerConnection;

use super::TlsConfig;

/// SPEC: a handshake is bounded in time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's whole ClientHello must be in this soon: a real client
/// sends it with its first segment, so a connection that has said
/// nothing (or a hello's first bytes only) by then is let go, its
/// handshake place with it, instead of holding the place the full
/// `HANDSHAKE_TIMEOUT` (as haproxy's `tcp-request inspect-delay` bounds
/// the wait for a client's first bytes). One that has is given the rest
/// of `HANDSHAKE_TIMEOUT` for its certificate and Finished.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// Handshakes at once over all services. Each holds rustls's state (a few
/// KiB) and costs a key exchange and a signature; at the bound a new
/// client takes the place of one of the service and client holding the
/// most, or is refused if its own client holds the most (the loop's
/// `FrontTable::victim`), so that those holding places cannot park
/// everyone else's in the backlog.
pub const HANDSHAKE_LIMIT: usize = 256;

/// Reads and writes per `drive` before the loop turns to other sources.
/// A handshake is a handful of flights; a peer that keeps one busy past
/// this is served again at its next event.
const ROUNDS: usize = 32;

/// Why a handshake failed, coarse enough to count refusals by (the log
/// keys repeated refusals on it) and to say in a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Not done within `HANDSHAKE_TIMEOUT`.
    Timeout,
    /// The client closed before it was done.
    Closed,
    /// What the client sent is not TLS (a plaintext client on a TLS port).
    NotTls,
    /// With `client_ca`: no certificate, or one that does not verify.
    ClientCertificate,
    /// No protocol version, suite, group or ALPN protocol in common.
    NoOverlap,
    /// The client sent an alert, or TLS that rustls refuses.
    Protocol,
    /// The socket failed (reset).
    Io,
    /// Refused before it started: this client has too many handshakes
    /// running already.
    TooMany,
    /// Let go at `HANDSHAKE_LIMIT` for a newcomer: it was silent, or
    /// (none being silent) its client held the most handshakes of the
    /// service holding the most.
    Evicted,
    /// Refused before it started: every place under `HANDSHAKE_LIMIT` is
    /// taken by a handshake whose hello is in, and no client there holds
    /// more than this one's.
    Full,
    /// Finished by an upgrade's drainer, which sent what this image
    /// cannot read (`relay::preamble`).
    Drainer,
    /// Finished by an upgrade's drainer after a reload made its service
    /// accept-mode: the session has no backend to go to.
    NotForward,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Timeout => "TLS handshake not done in time",
            Failure::Closed => "closed during the TLS handshake",
            Failure::NotTls => "not TLS",
            Failure::ClientCertificate => "no valid client certificate",
            Failure::NoOverlap => "no TLS version, cipher or ALPN protocol in common",
            Failure::Protocol => "TLS handshake failed",
            Failure::Io => "connection failed during the TLS handshake",
            Failure::TooMany => "too many TLS handshakes at once from this client",
            Failure::Evicted => "TLS handshake let go for another client's (all places taken)",
            Failure::Full => {
                "all TLS handshake places taken by clients holding as many as this one"
            }
            Failure::Drainer => "the upgrade's drainer sent a malformed preamble",
            Failure::NotForward => {
                "TLS handshake finished by the upgrade's drainer after a reload ended forward mode"
            }
        })
    }
}

impl Failure {
    fn of(e: &rustls::Error) -> Failure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => Failure::NotTls,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Failure::ClientCertificate,
            E::PeerIncompatible(_) | E::NoApplicationProtocol => Failure::NoOverlap,
            _ => Failure::Protocol,
        }
    }
}

/// Where a handshake is after a `drive`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the socket.
    Pending,
    /// Done: the connection may carry data (what rustls still has to send,
    /// session tickets, is the relay's to flush).
    Done,
    Failed(Failure),
}

/// One client's handshake.
pub struct Handshake {
    conn: ServerConnection,
    /// rustls had an answer to send: the client's hello was whole.
    answered: bool,
    /// The deadline was moved from `HELLO_TIMEOUT` on (once).
    extended: bool,
}

impl Handshake {
    pub fn new(config: &TlsConfig) -> Result<Handshake, rustls::Error> {
        Ok(Handshake {
            conn: ServerConnection::new(config.clone())?,
            answered: false,
            extended: false,
        })
    }

    /// At its `HELLO_TIMEOUT`: is the hello in, so that the handshake
    /// gets the rest of `HANDSHAKE_TIMEOUT`? True once at most.
    pub fn extend(&mut self) -> bool {
        let extend = self.answered && !self.extended;
        self.extended = true;
        extend
    }

    /// The client's whole ClientHello is in (rustls answered it): not a
    /// silent connection, nor one that sent part of a hello.
    pub fn hello_in(&self) -> bool {
        self.answered
    }

    /// Move the handshake on as far as `sock` allows now.
    pub fn drive<S: Read + Write>(&mut self, sock: &mut S) -> Step {
        for _ in 0..ROUNDS {
            // Done once the client's last flight is in: what rustls still
            // has to send (TLS 1.3 session tickets, TLS 1.2's Finished) is
            // the relay's, and a client that closed right after its
            // Finished (openssl s_time) has a finished handshake, not a
            // failed one.
            if !self.conn.is_handshaking() {
                return Step::Done;
            }
            let mut blocked = false;
            self.answered |= self.conn.wants_write();
            while self.conn.wants_write() {
                match self.conn.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Failed(Failure::Io),
                }
            }
            if !self.conn.wants_read() {
                // Everything sent that could be; the socket will say
                // when it takes more.
                return Step::Pending;
            }
            match self.conn.read_tls(sock) {
                Ok(0) => return Step::Failed(Failure::Closed),
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        // The alert rustls queued, if the socket takes it.
                        let _ = self.conn.write_tls(sock);
                        return Step::Failed(Failure::of(&e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if blocked || !self.conn.wants_write() {
                        return Step::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed(Failure::Io),
            }
        }
        Step::Pending
    }

    /// Once the handshake is done and the client's connection is known
    /// reset: its last bytes, read into the session, held no data (only
    /// alerts such as close_notify, or nothing). Any data, or bytes
    /// rustls cannot read, say no: the connection goes on as any other.
    pub fn nothing_more<S: Read>(&mut self, sock: &mut S) -> bool {
        for _ in 0..ROUNDS {
            match self.conn.read_tls(sock) {
                Ok(0) => break,
                Ok(_) => {
                    if self.conn.process_new_packets().is_err() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The reset's error, once the bytes before it are read.
                Err(_) => break,
            }
        }
        self.conn
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() == 0)
    }

    /// The connection, for the relay, once `drive` said `Done`.
    pub fn into_conn(self) -> ServerConnection {
        self.conn
    }

    pub fn conn(&self) -> &ServerConnection {
        &self.conn
    }
}
