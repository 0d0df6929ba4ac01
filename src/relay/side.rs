//! One end of a relayed connection: what it is (a socket the kernel can
//! splice from and to, or later a TLS session over one, which cannot),
//! and what the loop last learned of it (readable, writable). The flows
//! (`flow.rs`) ask a side for bytes and give it bytes through here, so a
//! kind of side that is not a bare fd is one more variant of `Io`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::libc;

/// What a side is.
#[derive(Debug)]
pub enum Io {
    /// A connected TCP or Unix stream socket, non-blocking: bytes may go
    /// through a pipe with splice(2).
    Stream(OwnedFd),
    /// A non-blocking stream socket splice(2) must not be used on (a
    /// socket type the kernel cannot splice, or one whose bytes must be
    /// seen): bytes go through a buffer. A TLS session is the next of
    /// this kind.
    Buffered(OwnedFd),
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
}

impl Side {
    /// A connected socket, spliced.
    pub fn stream(fd: OwnedFd) -> Side {
        Side::new(Io::Stream(fd), false)
    }

    /// A socket whose non-blocking connect(2) is still in progress (it
    /// returned EINPROGRESS): the relay waits for it to be writable and
    /// reads its SO_ERROR before moving a byte.
    pub fn connecting(fd: OwnedFd) -> Side {
        Side::new(Io::Stream(fd), true)
    }

    /// A socket relayed through a buffer, never spliced.
    pub fn buffered(fd: OwnedFd) -> Side {
        Side::new(Io::Buffered(fd), false)
    }

    fn new(io: Io, connecting: bool) -> Side {
        Side {
            io,
            readable: false,
            writable: false,
            connecting,
        }
    }

    /// Whether its connect(2) is still in progress.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// The fd the loop watches for this side.
    pub fn fd(&self) -> RawFd {
        match &self.io {
            Io::Stream(fd) | Io::Buffered(fd) => fd.as_raw_fd(),
        }
    }

    /// Whether bytes may go to or from this side by splice(2).
    pub fn splices(&self) -> bool {
        matches!(self.io, Io::Stream(_))
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        result(n)
    }

    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
        result(r as isize).map(drop)
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

/// A syscall's return as a `Result`: negative is errno.
pub(super) fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
