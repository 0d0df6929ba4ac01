//! A TLS session over a socket as one more kind of side (`Io::Tls`): the
//! flows read plaintext from it and write plaintext to it as from any
//! socket, and rustls makes and takes the records.
//!
//! - Reading: plaintext rustls holds is handed out first; only when it
//!   has none is the socket read (`read_tls`, `process_new_packets`).
//!   WouldBlock means both are empty, so an edge of the socket is what
//!   brings more: the flag `readable` stays true while rustls still holds
//!   plaintext. The client's `close_notify` is EOF; so is its TCP EOF
//!   without one (a truncation rustls reports: the other side reads EOF
//!   either way, as before).
//! - Writing: plaintext is taken only when rustls has sent everything it
//!   had (`CHUNK` at most), so a connection holds at most two records'
//!   worth in rustls beyond the flow's own hold. What it took counts as
//!   written, but is on the wire only once `flush` (`write_tls`) drained
//!   it: the relay flushes a TLS side at every step, a connection is
//!   done only when its TLS sides are flushed, and a side with records
//!   left whose socket does not take them waits for its EPOLLOUT edge.
//! - Ending: `shutdown_write` queues `close_notify`; the socket is shut
//!   for writing once it is flushed.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;
use rustls::ServerConnection;

use super::side::result;

/// The most plaintext handed to rustls at once: two records (rustls
/// takes it whole into its empty send buffer, limited to 64 KiB).
const CHUNK: usize = 32 * 1024;
/// What one read of the socket asks for. rustls reads at most 4 KiB per
/// `read_tls` (its own read size): read into `inbox` first, a 16 KiB
/// record costs one syscall instead of four or five.
const INBOX: usize = 64 * 1024;
/// Socket reads per `read` that give no plaintext (a peer sending empty
/// records, alerts or key updates) before the loop turns to others.
const ROUNDS: usize = 64;

/// A server TLS session over a connected, non-blocking stream socket.
#[derive(Debug)]
pub struct TlsIo {
    fd: OwnedFd,
    conn: ServerConnection,
    /// `close_notify` is queued: the socket is shut once it is sent.
    closing: bool,
    /// The socket was shut for writing.
    shut: bool,
    /// TLS bytes written to the socket, ever (the relay's `linger` sees
    /// progress in it).
    sent: u64,
    /// Bytes read from the socket that rustls has not taken yet, and
    /// where they start: allocated while it holds some (an idle session
    /// holds none).
    inbox: Option<Box<[u8]>>,
    taken: usize,
    held: usize,
    /// An error the socket said after plaintext was taken: the next
    /// read's, so that the plaintext is passed on first.
    error: Option<io::Error>,
}

/// Borrowing an fd as a `Read + Write` for rustls.
pub(super) struct Fd<'a>(pub &'a OwnedFd);

impl Read for Fd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        result(n)
    }
}

impl Write for Fd<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a peer gone is an error to report, not a signal.
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        result(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: an all-zero msghdr is valid; iov points to `bufs`,
        // whose IoSlice is ABI-compatible with iovec.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: msg describes buffers valid for reads.
        let n = unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        result(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsIo {
    /// A session whose handshake is done (what rustls still has to send,
    /// session tickets or a banner, goes at the first flush).
    pub fn new(fd: OwnedFd, conn: ServerConnection) -> TlsIo {
        TlsIo {
            fd,
            conn,
            closing: false,
            shut: false,
            sent: 0,
            inbox: None,
            taken: 0,
            held: 0,
            error: None,
        }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Plaintext into `buf`; `Ok(0)` is the client's end. `drained` is
    /// set when the socket had nothing more (the side is not readable
    /// until its next edge) although bytes are returned.
    pub fn read(&mut self, buf: &mut [u8], drained: &mut bool) -> io::Result<usize> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut got = 0;
        for _ in 0..ROUNDS {
            match self.conn.reader().read(&mut buf[got..]) {
                Ok(0) => return Ok(got),
                Ok(n) => {
                    got += n;
                    // Room for another record: fill on, fewer writes.
                    if buf.len() - got < 16 * 1024 {
                        return Ok(got);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(got),
                Err(e) => return Err(e),
            }
            match self.feed() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                    *drained = true;
                    return Ok(got);
                }
                // The plaintext taken goes first; the error (a reset
                // behind the client's last record) is the next read's.
                Err(e) if got > 0 => {
                    self.error = Some(e);
                    return Ok(got);
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert rustls queued, if the socket takes it.
                let _ = self.conn.write_tls(&mut Fd(&self.fd));
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        if got > 0 {
            return Ok(got);
        }
        // Busy with records that carry no data: the turn is over, the
        // side stays readable (the relay serves it again).
        Err(io::ErrorKind::Interrupted.into())
    }

    /// Hand rustls the next bytes of the socket: from `inbox`, filled
    /// by one read when empty. The socket's EOF is rustls's (an empty
    /// read_tls).
    fn feed(&mut self) -> io::Result<()> {
        if self.held == 0 {
            let buf = self
                .inbox
                .get_or_insert_with(|| vec![0; INBOX].into_boxed_slice());
            match Fd(&self.fd).read(buf) {
                Ok(n) => (self.taken, self.held) = (0, n),
                Err(e) => {
                    self.inbox = None;
                    return Err(e);
                }
            }
        }
        let start = self.taken;
        let mut rest = match &self.inbox {
            Some(b) => &b[start..start + self.held],
            None => &[][..],
        };
        let n = self.conn.read_tls(&mut rest)?;
        self.taken += n;
        self.held -= n;
        if self.held == 0 {
            self.inbox = None;
        }
        Ok(())
    }

    /// Plaintext from `buf`, once rustls sent what it had.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(&buf[..buf.len().min(CHUNK)])?;
        match self.flush() {
            Ok(()) => Ok(n),
            // Taken: the rest goes at the socket's next edge.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    /// Send the records rustls holds; with `close_notify` out, shut the
    /// socket for writing. WouldBlock: records are left.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Fd(&self.fd)) {
                Ok(n) => self.sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.closing && !self.shut {
            self.shut = true;
            // SAFETY: plain syscall on an fd we own.
            let r = unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
            match result(r as isize) {
                Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Nothing left to send.
    pub fn flushed(&self) -> bool {
        !self.conn.wants_write() && self.closing == self.shut
    }

    /// `close_notify`, then the socket shut once it is sent.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
        }
        match self.flush() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }

    /// Bytes to send before any other (a banner), inside TLS.
    pub fn greet(&mut self, text: &[u8]) {
        let _ = self.conn.writer().write_all(text);
    }

    /// The session, for the variables of a child (protocol, cipher, SNI).
    pub fn conn(&self) -> &ServerConnection {
        &self.conn
    }
}
