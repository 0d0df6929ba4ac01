//! One direction of a relayed connection: bytes read from one side are
//! held in a buffer until the other side takes them all, and only then
//! is the first side read again. So at most `HOLD` bytes are in summond
//! per direction, and a side that does not take bytes stops the reading
//! of the other: backpressure, per connection.
//!
//! Why a buffer and not splice(2) through a pipe: measured on loopback
//! (Linux 6.18, 2 vCPUs, benches/relay.sh), reads and writes of 60 KiB
//! moved 1.8–2.2× the bytes per second of 64 KiB splices through a pipe,
//! at about half the CPU per GiB. A forward backend is on this host, so
//! one side of every relayed connection is loopback or a Unix socket,
//! where a spliced page is copied by the receiver anyway and the
//! splice's page-by-page bookkeeping costs more than the copy it saves
//! (benches/README.md, "2026-12-06, third session").

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

use super::side::{is_reset, Side};

/// The most bytes held per direction (SPEC: at most 64 KiB), and what
/// one read asks for. Not 64 KiB: a 64 KiB write on loopback leaves a
/// tail segment of a few dozen bytes past two full ones (the MSS there
/// is 32,741), and reads of 64 KiB measured at about half the
/// throughput of reads of 32–63 KiB.
pub const HOLD: usize = 60 * 1024;

/// A flow's buffer: `HOLD` bytes (more only for what an older image
/// handed over, at most `HANDED_MAX`), pages of its own (mmap(2)), given
/// back to the kernel the moment it is dropped: thousands of stalled
/// connections' buffers, freed, leave no heap behind that fragmentation
/// would keep resident.
#[derive(Debug)]
struct Buf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the pages are this value's alone.
unsafe impl Send for Buf {}

impl Buf {
    fn new(len: usize) -> io::Result<Buf> {
        // SAFETY: a fresh anonymous private mapping, nobody else's.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match std::ptr::NonNull::new(p.cast::<u8>()) {
            Some(ptr) if p != libc::MAP_FAILED => Ok(Buf { ptr, len }),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: len bytes mapped readable (and zeroed at first).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: len bytes mapped writable, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Empty buffers, kept for the flows' next reads: a busy flow takes and
/// gives one back per read without a syscall, an idle one holds none.
#[derive(Debug, Default)]
pub struct Buffers {
    spare: Vec<Buf>,
}

/// Empty buffers kept at most: 960 KiB.
const SPARE_BUFFERS: usize = 16;

/// The most bytes a flow from an older image may hold (its pipe's or its
/// buffer's): SPEC's bound, which every image kept.
const HANDED_MAX: usize = 64 * 1024;

impl Buffers {
    fn take(&mut self) -> io::Result<Buf> {
        match self.spare.pop() {
            Some(b) => Ok(b),
            None => Buf::new(HOLD),
        }
    }

    /// A buffer emptied, kept if there is room (else unmapped).
    fn give(&mut self, b: Buf) {
        if b.len == HOLD && self.spare.len() < SPARE_BUFFERS {
            self.spare.push(b);
        }
    }
}

/// A flow as an upgrade hands it to the next image: its buffer's bytes
/// not yet written, and where it is in its stream. `spliced` and `pipe`
/// are how images before 2026-12-06 handed a flow that went through a
/// pipe (the bytes in flight stayed in the pipe, whose fds crossed the
/// exec); this image reads them and writes neither.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FlowState {
    pub spliced: bool,
    pub pipe: Option<(i32, i32)>,
    pub pending: usize,
    /// A buffer's bytes not yet written.
    #[serde(default, with = "crate::upgrade::held_bytes")]
    pub held: Vec<u8>,
    pub eof: bool,
    pub shut: bool,
    pub bytes: u64,
}

/// Why a flow stopped moving bytes for now.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The source has nothing more until its next event.
    Drained,
    /// The destination takes nothing more until its next event.
    Blocked,
    /// The source ended and the end was passed on: nothing more, ever.
    Finished,
    /// The turn's share was used: come back after the other sources.
    Budget,
    /// The source ended, all before it was written, and its end waits
    /// for the caller's word (`Relays::hold_end`).
    Held,
}

/// Which end failed, and how.
#[derive(Debug)]
pub enum FlowError {
    Read(io::Error),
    Write(io::Error),
}

/// One direction: src → dst.
#[derive(Debug, Default)]
pub struct Flow {
    /// Taken from `Buffers` for a read, given back once drained.
    buf: Option<Buf>,
    /// Where the bytes not yet written start in `buf`.
    start: usize,
    /// Bytes read and not yet written.
    pending: usize,
    /// The source gave EOF.
    eof: bool,
    /// The EOF was passed on (shutdown(SHUT_WR) of the destination).
    shut: bool,
    /// The EOF is not passed on until this is cleared (`Stop::Held`).
    pub hold_end: bool,
    /// The destination is gone (`drop_rest`): the source is still read,
    /// to its end, and what it gives is dropped.
    discard: bool,
    /// Bytes delivered to the destination.
    pub bytes: u64,
}

impl Flow {
    /// The source gave its end.
    pub fn ended(&self) -> bool {
        self.eof
    }

    /// Bytes held now (never more than `HOLD`, but for an older image's).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes to send before any of the source's (a PROXY header), held
    /// as if read: written first when the destination takes bytes.
    pub fn preface(&mut self, bytes: &[u8], bufs: &mut Buffers) -> io::Result<()> {
        if bytes.is_empty() || bytes.len() > HOLD || self.pending > 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        self.buffer(bufs)?[..bytes.len()].copy_from_slice(bytes);
        (self.start, self.pending) = (0, bytes.len());
        Ok(())
    }

    /// What the next image of an upgrade needs of it.
    pub fn to_state(&self) -> FlowState {
        FlowState {
            spliced: false,
            pipe: None,
            pending: self.pending,
            held: self.held().to_vec(),
            eof: self.eof,
            shut: self.shut,
            bytes: self.bytes,
        }
    }

    /// A flow the previous image handed over. An older image's pipe (its
    /// fds named once by the state) is read into a buffer and closed. No
    /// memory for its bytes: an error (the connection cannot go on
    /// without them).
    pub fn from_state(st: FlowState) -> io::Result<Flow> {
        let mut held: Vec<u8> = match (st.spliced, st.pipe) {
            // SAFETY: open fds the state names once, taken here.
            (true, Some((r, w))) => unsafe {
                drop(OwnedFd::from_raw_fd(w));
                read_pipe(OwnedFd::from_raw_fd(r), st.pending)
            },
            (true, None) => Vec::new(),
            (false, _) => st.held,
        };
        held.truncate(HANDED_MAX);
        let buf = match held.len() {
            0 => None,
            n => {
                let mut b = Buf::new(HOLD.max(n))?;
                b[..n].copy_from_slice(&held);
                Some(b)
            }
        };
        Ok(Flow {
            buf,
            start: 0,
            pending: held.len(),
            eof: st.eof,
            shut: st.shut,
            hold_end: false,
            // Its end passed on before its source's: only a flow whose
            // destination was gone (`drop_rest`).
            discard: st.shut && !st.eof,
            bytes: st.bytes,
        })
    }

    /// Whether this flow holds a buffer now.
    pub fn holding(&self) -> bool {
        self.buf.is_some()
    }

    /// Its buffer, taken from `bufs` if it holds none.
    fn buffer(&mut self, bufs: &mut Buffers) -> io::Result<&mut Buf> {
        let b = match self.buf.take() {
            Some(b) => b,
            None => bufs.take()?,
        };
        Ok(self.buf.insert(b))
    }

    /// The bytes read and not yet written.
    fn held(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.start + self.pending],
            None => &[],
        }
    }

    /// Move bytes until the source is drained, the destination blocks,
    /// the end is passed on, or `budget` bytes were read this call; a
    /// buffer emptied is given back.
    pub fn pump(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        budget: usize,
        bufs: &mut Buffers,
    ) -> Result<Stop, FlowError> {
        let stop = self.moved(src, dst, budget, bufs);
        if self.pending == 0 {
            if let Some(b) = self.buf.take() {
                bufs.give(b);
            }
        }
        stop
    }

    fn moved(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        budget: usize,
        bufs: &mut Buffers,
    ) -> Result<Stop, FlowError> {
        let mut read = 0;
        loop {
            if dst.gone() {
                // Its peer reset: nothing more goes to it, and its source
                // is not read (what it sends stays in its socket, which
                // closes once nothing more is owed the other way).
                (self.pending, self.shut, self.eof) = (0, true, true);
                return Ok(Stop::Finished);
            }
            if self.pending > 0 {
                if !dst.writable || dst.connecting {
                    return Ok(Stop::Blocked);
                }
                match self.drain(dst) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst.writable = false;
                        return Ok(Stop::Blocked);
                    }
                    // The destination is gone (a child that exited with
                    // input unread, a peer that reset): the rest for it
                    // is dropped, the other way goes on.
                    Err(e) if is_reset(&e) => {
                        dst.note_reset(false, e);
                        if !dst.gone() {
                            self.drop_rest();
                        }
                    }
                    Err(e) => return Err(FlowError::Write(e)),
                }
                continue;
            }
            if self.eof && self.hold_end && !self.shut {
                return Ok(Stop::Held);
            }
            if self.eof {
                return self.pass_on_end(dst);
            }
            // A side still connecting (or waiting for its connect to be
            // checked) gives nothing yet.
            if !src.readable || src.connecting {
                return Ok(Stop::Drained);
            }
            if read >= budget {
                return Ok(Stop::Budget);
            }
            match self.fill(src, bufs) {
                Ok(0) => self.eof = true,
                Ok(n) if self.discard => (read, self.pending) = (read + n, 0),
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    src.readable = false;
                    return Ok(Stop::Drained);
                }
                // A TLS side busy with records that carry no data: its
                // turn is over, and it is served again at the turn's end.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Stop::Budget),
                Err(e) => return Err(FlowError::Read(e)),
            }
        }
    }

    /// The destination takes nothing more (`Side::child`): what is held
    /// is dropped, and so is what the source gives from now on, read to
    /// its end; the other direction goes on. Read, not left: a socket
    /// closed with bytes unread sends a RST, and the kernel throws away
    /// what is still in its send queue (the child's last bytes on their
    /// way to the client).
    fn drop_rest(&mut self) {
        (self.pending, self.shut, self.discard) = (0, true, true);
    }

    /// Pass the source's EOF on, once everything before it was written.
    fn pass_on_end(&mut self, dst: &mut Side) -> Result<Stop, FlowError> {
        // A peer that reset is told nothing more.
        self.shut |= dst.gone();
        if !self.shut {
            if dst.connecting {
                return Ok(Stop::Blocked);
            }
            // The destination's peer may be gone already (ENOTCONN):
            // there is nobody to tell, and nothing lost.
            match dst.shutdown_write() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(e) => return Err(FlowError::Write(e)),
            }
            self.shut = true;
        }
        Ok(Stop::Finished)
    }

    /// Read once into the buffer (empty when called).
    fn fill(&mut self, src: &mut Side, bufs: &mut Buffers) -> io::Result<usize> {
        self.start = 0;
        let b = self.buffer(bufs)?;
        let n = src.read(&mut b[..HOLD])?;
        self.pending = n;
        Ok(n)
    }

    /// Write what is held until it is all written or the write fails.
    fn drain(&mut self, dst: &mut Side) -> io::Result<()> {
        while self.pending > 0 {
            let n = dst.write(self.held())?;
            if n == 0 {
                // A stream socket takes at least a byte or says why not.
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.start += n;
            self.pending -= n;
            self.bytes += n as u64;
        }
        Ok(())
    }
}

/// What an older image's pipe holds, `pending` bytes at most (it is
/// non-blocking: what is not there is not waited for).
fn read_pipe(pipe: OwnedFd, pending: usize) -> Vec<u8> {
    let mut held = vec![0; pending.min(HANDED_MAX)];
    let mut got = 0;
    while got < held.len() {
        let rest = &mut held[got..];
        // SAFETY: rest is valid for writes of its length.
        let n = unsafe { libc::read(pipe.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    held.truncate(got);
    held
}
