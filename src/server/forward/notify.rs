//! `ready = "notify"`: the datagram socket a starting backend is given as
//! `NOTIFY_SOCKET` (sd_notify(3)'s protocol), one per start, never
//! summond's own. An abstract name (no file to clean up), so anyone on the
//! host may send to it: a datagram counts only if the kernel says
//! (`SCM_CREDENTIALS`) it came from the backend or a process of its group.
//! Knows nothing of `Server`.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::{getpgid, Pid};
use socket2::{Domain, SockAddr, Socket, Type};

/// sd_notify messages are short; a longer datagram is cut, and one is
/// read at most this many times per wake-up (the rest wait, bounded by
/// the socket's buffer).
const MAX_DATAGRAM: usize = 4096;
const PER_WAKE: usize = 16;

/// Names never reused during the run.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A bound, non-blocking notify socket and the `NOTIFY_SOCKET` value that
/// names it (`@summond/PID/notify/N`).
pub(super) fn open() -> io::Result<(Socket, String)> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("summond/{}/notify/{n}", std::process::id());
    let s = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    setsockopt(&s, sockopt::PassCred, &true).map_err(io::Error::from)?;
    let mut raw = vec![0u8];
    raw.extend_from_slice(name.as_bytes());
    s.bind(&SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))?)?;
    Ok((s, format!("@{name}")))
}

use std::os::unix::ffi::OsStrExt;

/// What the datagrams waiting on `s` said, as far as `backend` (a process
/// group leader) sent them: whether one said `READY=1`, and how many
/// were dropped for coming from elsewhere.
pub(super) fn read(s: &Socket, backend: Pid) -> (bool, usize) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let (mut ready, mut foreign) = (false, 0);
    for _ in 0..PER_WAKE {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::ucred);
        let Ok(msg) = recvmsg::<UnixAddr>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) else {
            break;
        };
        let sender = msg
            .cmsgs()
            .ok()
            .into_iter()
            .flatten()
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
                _ => None,
            });
        let len = msg.bytes;
        let from_backend =
            sender.is_some_and(|p| p == backend || getpgid(Some(p)).ok() == Some(backend));
        if !from_backend {
            foreign += 1;
            continue;
        }
        let text = &buf[..len.min(MAX_DATAGRAM)];
        ready |= text.split(|b| *b == b'\n').any(|line| line == b"READY=1");
    }
    (ready, foreign)
}
