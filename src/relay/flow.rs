//! One direction of a relayed connection: bytes read from one side are
//! held (in a pipe, or a buffer) until the other side takes them all,
//! and only then is the first side read again. So at most `HOLD` bytes
//! are in summond per direction, and a side that does not take bytes
//! stops the reading of the other: backpressure, per connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use nix::libc;

use super::side::{is_reset, result, Side};

/// The most bytes held per direction (SPEC: at most 64 KiB), and what
/// one read or splice asks for.
pub const HOLD: usize = 64 * 1024;

/// A pipe pair: (read end, write end).
pub type Pipe = (OwnedFd, OwnedFd);

/// Where a flow's bytes wait between the read and the write.
#[derive(Debug)]
enum Hold {
    /// A pipe pair: splice(2) in, splice(2) out, the bytes never copied
    /// to user space. Taken from `Pipes` for a read and given back once
    /// drained: an idle connection holds no pipe.
    Pipe(Option<Pipe>),
    /// A buffer, allocated while it holds bytes and given back when
    /// drained: an idle connection holds no buffer.
    Buffer {
        buf: Option<Box<[u8]>>,
        start: usize,
    },
}

/// Empty pipes, kept for the flows' next reads: a busy flow takes and
/// gives one back per read without a syscall, an idle one holds none.
#[derive(Debug, Default)]
pub struct Pipes {
    spare: Vec<Pipe>,
}

/// Empty pipes kept at most (two fds each).
const SPARE_PIPES: usize = 64;

impl Pipes {
    fn take(&mut self) -> io::Result<Pipe> {
        match self.spare.pop() {
            Some(p) => Ok(p),
            None => pipe(),
        }
    }

    /// An empty pipe, kept if there is room (else closed).
    pub fn give(&mut self, p: Pipe) {
        if self.spare.len() < SPARE_PIPES {
            self.spare.push(p);
        }
    }
}

/// A flow as an upgrade hands it to the next image: its pipe's fds (the
/// bytes in flight stay in the pipe) or its buffer's bytes, and where it
/// is in its stream.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct FlowState {
    pub spliced: bool,
    pub pipe: Option<(i32, i32)>,
    pub pending: usize,
    /// A buffer's bytes not yet written.
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
#[derive(Debug)]
pub struct Flow {
    hold: Hold,
    /// Bytes read and not yet written.
    pending: usize,
    /// The source gave EOF.
    eof: bool,
    /// The EOF was passed on (shutdown(SHUT_WR) of the destination).
    shut: bool,
    /// The EOF is not passed on until this is cleared (`Stop::Held`).
    pub hold_end: bool,
    /// Bytes delivered to the destination.
    pub bytes: u64,
}

impl Flow {
    /// A flow between `src` and `dst`: through pipes when both splice,
    /// through a buffer otherwise.
    pub fn new(src: &Side, dst: &Side) -> Flow {
        let hold = if src.splices() && dst.splices() {
            Hold::Pipe(None)
        } else {
            Hold::Buffer {
                buf: None,
                start: 0,
            }
        };
        Flow {
            hold,
            pending: 0,
            eof: false,
            shut: false,
            hold_end: false,
            bytes: 0,
        }
    }

    /// The source gave its end.
    pub fn ended(&self) -> bool {
        self.eof
    }

    /// Bytes held now (never more than `HOLD`).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Bytes to send before any of the source's (a PROXY header), held
    /// as if read: written first when the destination takes bytes. At
    /// most `PIPE_BUF` (4096) bytes: one write into an empty pipe.
    pub fn preface(&mut self, bytes: &[u8], pipes: &mut Pipes) -> io::Result<()> {
        if bytes.is_empty() || bytes.len() > libc::PIPE_BUF {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        match &mut self.hold {
            Hold::Pipe(slot) => {
                let (_, w) = slot.insert(pipes.take()?);
                // SAFETY: bytes is valid for reads of its length.
                let n = unsafe { libc::write(w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
                if result(n)? != bytes.len() {
                    return Err(io::ErrorKind::WriteZero.into());
                }
            }
            Hold::Buffer { buf, start } => {
                let b = buf.get_or_insert_with(|| vec![0; HOLD].into_boxed_slice());
                b[..bytes.len()].copy_from_slice(bytes);
                *start = 0;
            }
        }
        self.pending = bytes.len();
        Ok(())
    }

    /// What the next image of an upgrade needs of it; the pipe's fds stay
    /// this flow's (and open) until the exec.
    pub fn to_state(&self) -> FlowState {
        let (pipe, held) = match &self.hold {
            Hold::Pipe(p) => (
                p.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd())),
                Vec::new(),
            ),
            Hold::Buffer { buf, start } => {
                let held = buf
                    .as_deref()
                    .map(|b| b[*start..*start + self.pending].to_vec());
                (None, held.unwrap_or_default())
            }
        };
        FlowState {
            spliced: matches!(self.hold, Hold::Pipe(_)),
            pipe,
            pending: self.pending,
            held,
            eof: self.eof,
            shut: self.shut,
            bytes: self.bytes,
        }
    }

    /// A flow the previous image handed over. Its pipe's fds are taken
    /// (the state names each once); a buffer is at most `HOLD`.
    pub fn from_state(st: FlowState) -> Flow {
        let (hold, pending) = match (st.spliced, st.pipe) {
            // SAFETY: open fds the state names once, taken here.
            (true, Some((r, w))) => unsafe {
                let pipe = (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w));
                (Hold::Pipe(Some(pipe)), st.pending)
            },
            (true, None) => (Hold::Pipe(None), 0),
            (false, _) => {
                let mut held = st.held;
                held.truncate(HOLD);
                let pending = held.len();
                let buf = (pending > 0).then(|| {
                    held.resize(HOLD, 0);
                    held.into_boxed_slice()
                });
                (Hold::Buffer { buf, start: 0 }, pending)
            }
        };
        Flow {
            hold,
            pending,
            eof: st.eof,
            shut: st.shut,
            hold_end: false,
            bytes: st.bytes,
        }
    }

    /// Its pipe, if it has one and the pipe is empty (to be used again).
    pub fn into_pipe(self) -> Option<Pipe> {
        match self.hold {
            Hold::Pipe(p) if self.pending == 0 => p,
            _ => None,
        }
    }

    /// Whether this flow holds a buffer or a pipe now.
    pub fn holding(&self) -> bool {
        matches!(
            self.hold,
            Hold::Buffer { buf: Some(_), .. } | Hold::Pipe(Some(_))
        )
    }

    /// Move bytes until the source is drained, the destination blocks,
    /// the end is passed on, or `budget` bytes were read this call; a
    /// pipe or buffer emptied is given back.
    pub fn pump(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        budget: usize,
        pipes: &mut Pipes,
    ) -> Result<Stop, FlowError> {
        let stop = self.moved(src, dst, budget, pipes);
        if self.pending == 0 {
            self.release(pipes);
        }
        stop
    }

    fn moved(
        &mut self,
        src: &mut Side,
        dst: &mut Side,
        budget: usize,
        pipes: &mut Pipes,
    ) -> Result<Stop, FlowError> {
        let mut read = 0;
        loop {
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
                    Err(e) if dst.resets_end && is_reset(&e) => return Ok(self.drop_rest()),
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
            match self.fill(src, pipes) {
                Ok(0) => self.eof = true,
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
    /// is dropped and the source is not read again; the other direction
    /// goes on.
    fn drop_rest(&mut self) -> Stop {
        if let Hold::Pipe(slot) = &mut self.hold {
            // Not empty: closed, not kept for others.
            *slot = None;
        }
        self.pending = 0;
        (self.eof, self.shut) = (true, true);
        Stop::Finished
    }

    /// Pass the source's EOF on, once everything before it was written.
    fn pass_on_end(&mut self, dst: &mut Side) -> Result<Stop, FlowError> {
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

    /// Read once into the hold (empty when called).
    fn fill(&mut self, src: &mut Side, pipes: &mut Pipes) -> io::Result<usize> {
        let n = match &mut self.hold {
            Hold::Pipe(slot) => {
                let write = match slot {
                    Some((_, w)) => w,
                    None => &slot.insert(pipes.take()?).1,
                };
                splice(src.fd(), write.as_raw_fd(), HOLD)?
            }
            Hold::Buffer { buf, start } => {
                let b = buf.get_or_insert_with(|| vec![0; HOLD].into_boxed_slice());
                *start = 0;
                src.read(b)?
            }
        };
        self.pending = n;
        Ok(n)
    }

    /// Write what is held until it is all written or the write fails.
    fn drain(&mut self, dst: &mut Side) -> io::Result<()> {
        while self.pending > 0 {
            let n = match &mut self.hold {
                Hold::Pipe(Some((read, _))) => splice(read.as_raw_fd(), dst.fd(), self.pending)?,
                // Bytes are pending only in a pipe it holds.
                Hold::Pipe(None) => return Err(io::ErrorKind::InvalidData.into()),
                Hold::Buffer { buf, start } => {
                    let b = buf.as_deref().unwrap_or(&[]);
                    let n = dst.write(&b[*start..*start + self.pending])?;
                    *start += n;
                    n
                }
            };
            if n == 0 {
                // A stream socket takes at least a byte or says why not.
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending -= n;
            self.bytes += n as u64;
        }
        Ok(())
    }

    /// Emptied: the buffer is freed, the pipe kept for the next read.
    fn release(&mut self, pipes: &mut Pipes) {
        match &mut self.hold {
            Hold::Buffer { buf, .. } => *buf = None,
            Hold::Pipe(slot) => {
                if let Some(p) = slot.take() {
                    pipes.give(p);
                }
            }
        }
    }
}

/// A pipe pair, non-blocking and close-on-exec.
fn pipe() -> io::Result<Pipe> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is valid for pipe2's two writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    result(r as isize)?;
    // SAFETY: pipe2 succeeded: both are open fds nobody else owns.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// splice(2) up to `len` bytes, without blocking on the pipe (the
/// socket is non-blocking by itself).
fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on fds the caller owns; null offsets.
    let n = unsafe {
        libc::splice(
            from,
            ptr::null_mut(),
            to,
            ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    result(n)
}
