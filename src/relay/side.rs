//! One end of a relayed connection: what it is (a socket, or a TLS
//! session over one), and what the loop last learned of it (readable,
//! writable). The flows
//! (`flow.rs`) ask a side for bytes and give it bytes through here, so a
//! kind of side that is not a bare fd is one more variant of `Io`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::Interest;
use nix::libc;

use super::tls::TlsIo;

/// What a side's socket is watched for. PRIORITY: a TCP peer's urgent
/// data, which is what makes a short read on TCP not mean empty
/// (`Side::read`); no other socket reports it.
pub(super) const WATCH: Interest = Interest::READABLE
    .add(Interest::WRITABLE)
    .add(Interest::PRIORITY);

/// What a side is.
#[derive(Debug)]
pub enum Io {
    /// A connected TCP or Unix stream socket, non-blocking.
    Stream(OwnedFd),
    /// A TLS session over a stream socket (`tls.rs`): plaintext goes
    /// through a buffer to and from rustls.
    Tls(Box<TlsIo>),
}

/// One end of a relayed connection and its readiness as last reported:
/// edge-triggered, so a flag is set by an event and cleared only by an
/// operation that would block.
#[derive(Debug)]
pub struct Side {
    pub(super) io: Io,
    pub(super) readable: bool,
    pub(super) writable: bool,
    /// A connect(2) still in progress: nothing is written before it ends.
    pub(super) connecting: bool,
    /// Its connect's end waits for the owner's word on whom it reached
    /// (`Relays::checked`): until then it stays `connecting`, and no
    /// byte moves either way.
    pub(super) check_at_connect: bool,
    /// A child's end of a socket pair is its peer (`Side::child`): a
    /// reset is its end, not a failure.
    pub(super) resets_end: bool,
    /// Its peer has shut its writing (an event said read-closed): no
    /// more bytes come after those in the socket.
    pub(super) read_closed: bool,
    /// An event said urgent data (EPOLLPRI) since a read last said
    /// EAGAIN: a TCP read stops at its mark, short, with bytes behind.
    pub(super) urgent: bool,
    /// Whether the socket is TCP, learned at its first short read.
    tcp: Option<bool>,
    /// Its peer reset the connection (ECONNRESET or EPIPE, said by an
    /// event's error, a read or a write; whether reading, and the
    /// error): what it sent before is still read and passed on, then its
    /// end; it takes nothing more. Not for a child's end, whose reset is
    /// its plain end (`resets_end`).
    pub(super) reset: Option<Box<(bool, io::Error)>>,
}

impl Side {
    /// A connected socket.
    pub fn stream(fd: OwnedFd) -> Side {
        Side::new(Io::Stream(fd), false)
    }

    /// A socket whose non-blocking connect(2) is still in progress (it
    /// returned EINPROGRESS): the relay waits for it to be writable and
    /// reads its SO_ERROR before moving a byte.
    pub fn connecting(fd: OwnedFd) -> Side {
        Side::new(Io::Stream(fd), true)
    }

    /// As `connecting`, and once connected it stays so until the owner
    /// says whom the connect reached is fine (`Relays::take_checks`,
    /// `Relays::checked`): a listener that can change hands while the
    /// SYN waits is checked only once the SYN has reached one.
    pub fn connecting_checked(fd: OwnedFd) -> Side {
        let mut side = Side::new(Io::Stream(fd), true);
        side.check_at_connect = true;
        side
    }

    /// Summond's end of a Unix socket pair whose other end a child holds
    /// as its connection. A child that exits with input unread resets
    /// the pair: reading, that is its EOF (what it wrote is passed on
    /// whole); writing, it takes nothing more (the rest for it is
    /// dropped, the other way goes on), as a pipe's reader that left.
    pub fn child(fd: OwnedFd) -> Side {
        let mut side = Side::new(Io::Stream(fd), false);
        side.resets_end = true;
        side
    }

    /// A TLS session whose handshake is done: plaintext in and out.
    /// Readable and writable from the start: rustls may hold the client's
    /// first bytes, read with its last flight, and records to send.
    pub fn tls(fd: OwnedFd, conn: rustls::ServerConnection) -> Side {
        let mut side = Side::new(Io::Tls(Box::new(TlsIo::new(fd, conn))), false);
        (side.readable, side.writable) = (true, true);
        side
    }

    /// The TLS session, if this side is one.
    pub fn tls_io(&mut self) -> Option<&mut TlsIo> {
        match &mut self.io {
            Io::Tls(t) => Some(t),
            _ => None,
        }
    }

    /// Whether it is a TLS session (which an upgrade cannot hand over).
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    fn new(io: Io, connecting: bool) -> Side {
        Side {
            io,
            readable: false,
            writable: false,
            connecting,
            check_at_connect: false,
            resets_end: false,
            read_closed: false,
            urgent: false,
            tcp: None,
            reset: None,
        }
    }

    /// Whether its connect(2) is still in progress.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// Whether its connect's end still needs the owner's word.
    pub fn is_checked_at_connect(&self) -> bool {
        self.check_at_connect
    }

    /// The fd the loop watches for this side.
    pub fn fd(&self) -> RawFd {
        match &self.io {
            Io::Stream(fd) => fd.as_raw_fd(),
            Io::Tls(t) => t.fd().as_raw_fd(),
        }
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Io::Tls(t) = &mut self.io {
            let mut drained = false;
            let n = t.read(buf, &mut drained);
            self.readable &= !drained;
            return match n {
                Err(e) if is_reset(&e) => self.reset_end(true, e),
                n => n,
            };
        }
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match result(n) {
            // A short TCP read emptied the socket: bytes that arrive from
            // now on are a new edge, so the read that would say EAGAIN is
            // not made (one syscall fewer per wake-up, a fifth of the
            // relay's CPU in bulk). Only TCP, and not when urgent data or
            // the peer's FIN came with an edge already seen: a TCP read
            // stops short at the urgent mark, a Unix one where a message
            // carrying fds begins, with bytes queued behind (atk8), and a
            // FIN is said only by a read.
            Ok(got) if got > 0 && got < buf.len() && !self.read_closed && !self.urgent => {
                if self.is_tcp() {
                    self.readable = false;
                }
                Ok(got)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Empty: past any urgent mark. Urgent data from now on
                // comes with an edge of its own, which says so.
                self.urgent = false;
                Err(e)
            }
            Err(e) if is_reset(&e) => self.reset_end(true, e),
            r => r,
        }
    }

    /// A reset read: the end of what this side sends (the bytes before
    /// it were read), noted unless it is a child's plain end.
    fn reset_end(&mut self, reading: bool, e: io::Error) -> io::Result<usize> {
        self.note_reset(reading, e);
        Ok(0)
    }

    /// Its peer reset the connection (`reset`); the first error kept.
    pub(super) fn note_reset(&mut self, reading: bool, e: io::Error) {
        if !self.resets_end && self.reset.is_none() {
            self.reset = Some(Box::new((reading, e)));
        }
    }

    /// Its peer reset: it takes nothing more.
    pub(super) fn gone(&self) -> bool {
        self.reset.is_some()
    }

    /// Bytes written to it its peer has not yet acknowledged (or, on a
    /// Unix socket, read), a TLS side's held records counted as one:
    /// closed with bytes of its own unread, a socket resets, and the
    /// kernel throws those away.
    pub(super) fn unsent(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let r = unsafe { libc::ioctl(self.fd(), libc::TIOCOUTQ, &mut n) };
        let held = usize::from(!self.flushed());
        if r < 0 {
            return held;
        }
        n.max(0) as usize + held
    }

    /// Whether its socket is TCP (asked once: SO_PROTOCOL).
    fn is_tcp(&mut self) -> bool {
        let fd = self.fd();
        *self.tcp.get_or_insert_with(|| {
            let mut proto: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: proto and len are valid for getsockopt's writes.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_PROTOCOL,
                    (&mut proto as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            r == 0 && proto == libc::IPPROTO_TCP
        })
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Io::Tls(t) = &mut self.io {
            return t.write(buf);
        }
        // MSG_NOSIGNAL: a peer gone is an error to report, not a signal.
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe {
            libc::send(
                self.fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        result(n)
    }

    /// Pass on an end of stream: the peer reads EOF, and may still send.
    pub(super) fn shutdown_write(&mut self) -> io::Result<()> {
        if let Io::Tls(t) = &mut self.io {
            return t.shutdown_write();
        }
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
        result(r as isize).map(drop)
    }

    /// Send what a TLS side holds (nothing to do for a socket): on
    /// WouldBlock it waits for its socket's next writable edge.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let Io::Tls(t) = &mut self.io else {
            return Ok(());
        };
        if !self.writable || self.reset.is_some() {
            return Ok(());
        }
        match t.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(())
            }
            // Gone: what it holds goes nowhere, what it sent is still read.
            Err(e) if is_reset(&e) => {
                self.note_reset(false, e);
                Ok(())
            }
            r => r,
        }
    }

    /// Nothing held to send (always, for a socket).
    pub(super) fn flushed(&self) -> bool {
        match &self.io {
            Io::Tls(t) => t.flushed() || self.reset.is_some(),
            _ => true,
        }
    }

    /// Bytes this side put on its socket beyond what the flows wrote (a
    /// TLS side's records): progress for `linger`.
    pub(super) fn sent(&self) -> u64 {
        match &self.io {
            Io::Tls(t) => t.sent(),
            _ => 0,
        }
    }

    /// The error a socket holds (SO_ERROR), taken: how a connect ended,
    /// or why an event said error.
    pub(super) fn take_error(&self) -> io::Result<()> {
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err and len are valid for getsockopt's writes.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        match err {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The peer closed with bytes unread (ECONNRESET), or is gone (EPIPE).
pub(super) fn is_reset(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE))
}

/// A syscall's return as a `Result`: negative is errno.
pub(super) fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
