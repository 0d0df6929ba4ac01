//! After the handshake: the bytes between the client's TLS connection
//! (`net`) and the plaintext end of the socket pair the child holds
//! (`plain`), both non-blocking, driven by the readiness of either.
//!
//! Bounded without a buffer of its own: client → child, the plaintext
//! waits in rustls until `plain` takes it, and while it waits rustls
//! stops wanting to read, so `net` is not read (the client's bytes wait
//! in the kernel); child → client, `plain` is read only when rustls has
//! sent everything it had, `CHUNK` (two records' worth) at a time. So a
//! connection holds at most two records each way beyond rustls's own.
//!
//! Ends: the client's `close_notify` (or its TCP EOF, a truncation
//! rustls reports) is the child's EOF (`shutdown(SHUT_WR)` on `plain`);
//! the child's EOF is sent as `close_notify`, then `shutdown(SHUT_WR)` on
//! `net`. The pump is done when both ways are closed and flushed, or at
//! the first error (a reset, a broken record): then both sockets close.
//!
//! This is the shape a relay side takes once the relay (`src/relay/`)
//! lands: `net` + rustls is one more kind of side that is not an fd to
//! splice from.

use std::io::{self, BufRead, Read, Write};
use std::net::Shutdown;

use rustls::ServerConnection;
use socket2::Socket;

/// The most read from the child at once: two TLS records' plaintext
/// (rustls takes it whole into its empty send buffer, limited to 64 KiB
/// with the records' overhead); one syscall fewer per record than 16 KiB.
const CHUNK: usize = 32 * 1024;
/// Bytes moved per call before the loop turns to other sources.
const BUDGET: usize = 256 * 1024;

/// What a call to `pump` left.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpStep {
    /// Waiting for either socket.
    Waiting,
    /// The budget ran out with work left: call again next turn.
    MoreWork,
    /// Both ways closed, or a failure: close both sockets.
    Done,
}

pub struct TlsPump {
    conn: ServerConnection,
    /// The client's side ended; `plain` was shut for writing.
    client_closed: bool,
    /// The child's side ended; `close_notify` was queued.
    child_closed: bool,
    /// `net` was shut for writing after the `close_notify` went out.
    net_shut: bool,
    /// Either socket may have bytes to read: set by its readiness event,
    /// cleared when a read finds none. Edge-triggered readiness reports
    /// every new arrival, so no read is skipped that could find bytes,
    /// and a bulk transfer one way costs no failed read the other way.
    net_readable: bool,
    plain_readable: bool,
    /// `rearm_linger` saw the child's end already.
    ended_seen: bool,
    /// Bytes went to the client since `rearm_linger` last asked.
    sent: bool,
}

/// What one pass of the loop did: bytes moved, or a reason to stop.
type Pass = Result<usize, ()>;

impl TlsPump {
    pub fn new(conn: ServerConnection) -> TlsPump {
        TlsPump {
            conn,
            client_closed: false,
            child_closed: false,
            net_shut: false,
            net_readable: true,
            plain_readable: true,
            ended_seen: false,
            sent: false,
        }
    }

    /// The child's side has ended, and since the last ask that happened
    /// or bytes went to the client: the table's `linger` deadline starts
    /// (again). What is left goes to the client as long as it takes some
    /// within each `LINGER`.
    pub fn rearm_linger(&mut self) -> bool {
        let rearm = self.child_closed && (!self.ended_seen || self.sent);
        self.ended_seen |= self.child_closed;
        self.sent = false;
        rearm
    }

    /// A readiness event of the client's socket.
    pub fn net_ready(&mut self) {
        self.net_readable = true;
    }

    /// A readiness event of summond's end of the pair.
    pub fn plain_ready(&mut self) {
        self.plain_readable = true;
    }

    /// `banner`: the first bytes the client reads, sent inside TLS.
    pub fn greet(&mut self, text: &[u8]) {
        let _ = self.conn.writer().write_all(text);
    }

    /// Move what the sockets allow now, up to the budget.
    pub fn pump(&mut self, net: &Socket, plain: &Socket) -> PumpStep {
        let mut moved = 0;
        while moved < BUDGET {
            let pass = self
                .flush(net)
                .and_then(|a| Ok(a + self.client_to_child(net, plain)?))
                .and_then(|a| Ok(a + self.child_to_client(plain)?));
            let Ok(n) = pass else {
                return PumpStep::Done;
            };
            if self.client_closed && self.net_shut && !self.conn.wants_write() {
                return PumpStep::Done;
            }
            if n == 0 {
                return PumpStep::Waiting;
            }
            moved += n;
        }
        PumpStep::MoreWork
    }

    /// Send what rustls holds; after the child's EOF, shut `net` once the
    /// `close_notify` is out.
    fn flush(&mut self, net: &Socket) -> Pass {
        let mut sent = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut &*net) {
                Ok(n) => {
                    sent += n.max(1);
                    self.sent = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if self.child_closed && !self.net_shut {
            self.net_shut = true;
            let _ = net.shutdown(Shutdown::Write);
            sent += 1;
        }
        Ok(sent)
    }

    /// Client → child: read records while rustls wants them, hand their
    /// plaintext to `plain` as far as it takes it.
    fn client_to_child(&mut self, net: &Socket, plain: &Socket) -> Pass {
        if self.client_closed {
            return Ok(0);
        }
        let mut moved = 0;
        if self.net_readable && self.conn.wants_read() {
            match self.conn.read_tls(&mut &*net) {
                Ok(n) => moved += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.net_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
            if self.conn.process_new_packets().is_err() {
                // The alert rustls queued, if the socket takes it.
                let _ = self.conn.write_tls(&mut &*net);
                return Err(());
            }
        }
        let mut reader = self.conn.reader();
        match reader.fill_buf() {
            // close_notify, or the TCP stream ended without one: the
            // child's EOF either way.
            Ok([]) => self.close_client(plain),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.close_client(plain),
            Ok(text) => match (&*plain).write(text) {
                Ok(n) => {
                    reader.consume(n);
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The child closed its reading end: nothing more for it.
                Err(_) => self.close_client(plain),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(()),
        }
        Ok(moved + usize::from(self.client_closed))
    }

    fn close_client(&mut self, plain: &Socket) {
        self.client_closed = true;
        let _ = plain.shutdown(Shutdown::Write);
    }

    /// Child → client: two records' worth from `plain`, once rustls sent
    /// what it had.
    fn child_to_client(&mut self, plain: &Socket) -> Pass {
        if self.child_closed || !self.plain_readable || self.conn.wants_write() {
            return Ok(0);
        }
        let mut buf = [0u8; CHUNK];
        match (&*plain).read(&mut buf) {
            Ok(0) => {
                self.child_closed = true;
                self.conn.send_close_notify();
                Ok(1)
            }
            Ok(n) => {
                // rustls's send buffer is empty, so it takes a record
                // whole (its limit is 64 KiB).
                self.conn.writer().write_all(&buf[..n]).map_err(|_| ())?;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.plain_readable = false;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(_) => {
                self.child_closed = true;
                self.conn.send_close_notify();
                Ok(1)
            }
        }
    }
}
