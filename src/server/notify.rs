//! The datagram socket a long-running child (`accept = false`, or a
//! forward backend with `ready = "notify"`) is given as `NOTIFY_SOCKET`
//! (sd_notify(3)'s protocol), one per start, never summond's own. An
//! abstract name (no file to clean up), so anyone on the host may send to
//! it: a datagram counts only if the kernel says (`SCM_CREDENTIALS`) it
//! came from the child or a process of its group. Knows nothing of
//! `Server`.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, getsockname, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr,
};
use nix::unistd::{getpgid, Pid};
use socket2::{Domain, Socket, Type};

/// sd_notify messages are short; a longer datagram is cut. At most
/// `PER_WAKE` are read per loop turn; the fd is edge-triggered, so when
/// that budget ends before the queue is empty the caller re-arms it
/// (`Said::more`): anyone may send here, and a burst of junk left unread
/// with no new edge would hide the child's READY=1 for good.
const MAX_DATAGRAM: usize = 4096;
const PER_WAKE: usize = 64;

/// A long-running child's NOTIFY_SOCKET as the loop watches it, and what
/// the child said on it.
pub(super) struct Watch {
    pub sock: Socket,
    pub token: mio::Token,
    pub ready: bool,
    pub status: Option<String>,
    /// Its `ready_timeout`, cancelled at READY=1 or its exit.
    pub timer: Option<super::timers::TimerKey>,
    /// `ready_timeout` stopped it: its end is a failed start.
    pub timed_out: bool,
}

impl Watch {
    /// What the next image of an upgrade needs: the socket (its fd left
    /// open across the exec) and what the child said.
    pub fn to_state(&self, now: std::time::Instant) -> crate::upgrade::NotifyState {
        crate::upgrade::NotifyState {
            fd: self.sock.as_raw_fd(),
            ready: self.ready,
            status: self.status.clone(),
            ready_in_ns: self
                .timer
                .map(|k| k.at().saturating_duration_since(now).as_nanos() as u64),
            timed_out: self.timed_out,
        }
    }
}

/// A bound, non-blocking notify socket and the `NOTIFY_SOCKET` value that
/// names it (`@` and the abstract name the kernel chose).
///
/// The kernel picks the name (unix(7) autobind: an address of
/// `sa_family_t` alone), among names free at the moment: names of our
/// own (`summond/PID/notify/N`) were squatted by any local user reading
/// /proc/net/unix, and collided after a live upgrade, whose new image
/// counted N from 0 again while the handed-over sockets held those names.
pub(super) fn open() -> io::Result<(Socket, String)> {
    let s = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    s.set_nonblocking(true)?;
    setsockopt(&s, sockopt::PassCred, &true).map_err(io::Error::from)?;
    bind(s.as_raw_fd(), &UnixAddr::new_unnamed()).map_err(io::Error::from)?;
    let bound: UnixAddr = getsockname(s.as_raw_fd()).map_err(io::Error::from)?;
    let name = bound
        .as_abstract()
        .ok_or_else(|| io::Error::other("the kernel gave the notify socket no abstract name"))?;
    // Five hex digits (unix(7)); checked, as the name goes into a
    // child's environment.
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(|| io::Error::other("the notify socket's name is not plain text"))?;
    Ok((s, format!("@{name}")))
}

/// `STATUS=` is shown in status and metrics: kept this short.
const MAX_STATUS: usize = 200;

/// What the datagrams read at one wake-up said.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Said {
    /// One said `READY=1`.
    pub ready: bool,
    /// The last `STATUS=`, cut to `MAX_STATUS` bytes (at a char boundary).
    pub status: Option<String>,
    /// Datagrams dropped for coming from outside the child's group.
    pub foreign: usize,
    /// The turn's budget ended before the queue did: re-arm the fd.
    pub more: bool,
}

/// What the datagrams waiting on `s` said, as far as `leader` (a process
/// group leader) or its group sent them.
pub(super) fn read(s: &Socket, leader: Pid) -> Said {
    read_at_most(s, leader, PER_WAKE)
}

fn read_at_most(s: &Socket, leader: Pid, budget: usize) -> Said {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut said = Said {
        more: true,
        ..Said::default()
    };
    for _ in 0..budget {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::ucred);
        let Ok(msg) = recvmsg::<UnixAddr>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) else {
            // EAGAIN (or an error): nothing left for this edge.
            said.more = false;
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
        let from_group =
            sender.is_some_and(|p| p == leader || getpgid(Some(p)).ok() == Some(leader));
        if !from_group {
            said.foreign += 1;
            continue;
        }
        said.take(&buf[..len.min(MAX_DATAGRAM)]);
    }
    said
}

impl Said {
    /// One datagram's lines (sd_notify: `KEY=VALUE`, newline-separated).
    fn take(&mut self, text: &[u8]) {
        for line in text.split(|b| *b == b'\n') {
            if line == b"READY=1" {
                self.ready = true;
            } else if let Some(v) = line.strip_prefix(b"STATUS=") {
                self.status = Some(status_text(v));
            }
        }
    }
}

/// A `STATUS=` value as shown: lossy UTF-8, control characters and
/// bidi formatting characters dropped, at most `MAX_STATUS` bytes. The
/// text reaches the status JSON, the table, the status page and logs:
/// cleaned here, once, no reader of it can be made to show a line in a
/// different order than it was written (a U+202E turns the rest round).
pub(super) fn status_text(v: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(v)
        .chars()
        .filter(|c| !c.is_control() && !is_bidi(*c))
    {
        if out.len() + c.len_utf8() > MAX_STATUS {
            break;
        }
        out.push(c);
    }
    out
}

/// Unicode's bidi formatting characters: the embeddings and overrides
/// (U+202A–U+202E), the isolates (U+2066–U+2069) and the marks (U+200E,
/// U+200F, U+061C).
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More datagrams than one turn's budget: the caller is told to
    /// re-arm, and the READY=1 behind them is read on a later turn.
    #[test]
    fn a_burst_beyond_the_budget_asks_for_another_turn() {
        use std::os::linux::net::SocketAddrExt;
        let (s, name) = open().unwrap();
        let to = std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        for _ in 0..4 {
            tx.send_to_addr(b"STATUS=junk", &to).unwrap();
        }
        tx.send_to_addr(b"READY=1", &to).unwrap();
        let me = nix::unistd::getpgrp();
        let turn = |s: &Socket| read_at_most(s, me, 2);
        let first = turn(&s);
        assert!(!first.ready && first.more, "{first:?}");
        assert!(turn(&s).more);
        let last = turn(&s);
        assert!(last.ready && !last.more, "{last:?}");
        assert!(!turn(&s).more, "empty: nothing more");
    }

    /// Names squatted by another socket (any local user can bind
    /// abstract names, and read the bound ones in /proc/net/unix) do not
    /// stop a notify socket being made: the kernel picks a free one, and
    /// each socket gets its own.
    #[test]
    fn notify_sockets_get_free_names_of_the_kernels_choosing() {
        use std::os::linux::net::SocketAddrExt;
        let mut names = std::collections::HashSet::new();
        let mut squatters = Vec::new();
        for _ in 0..64 {
            let (_s, name) = open().unwrap();
            assert!(name.starts_with('@') && name.len() > 1, "{name}");
            // Someone takes the name once it is free again.
            drop(_s);
            let at =
                std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
            squatters.push(std::os::unix::net::UnixDatagram::bind_addr(&at).unwrap());
            names.insert(name);
        }
        let mut kept = Vec::new();
        for _ in 0..64 {
            let (s, name) = open().expect("a squatted name blocked a notify socket");
            assert!(!names.contains(&name), "{name} is another socket's");
            assert!(names.insert(name));
            kept.push(s);
        }
    }

    #[test]
    fn ready_and_the_last_status_are_read_and_status_is_bounded_and_clean() {
        let mut said = Said::default();
        said.take(b"STATUS=starting\nMAINPID=1");
        said.take(b"STATUS=serving \x1b[31mred\nREADY=1\n");
        assert!(said.ready);
        assert_eq!(said.status.as_deref(), Some("serving [31mred"));
        let mut said = Said::default();
        said.take(b"READY=10\nSTATUS=");
        assert!(!said.ready);
        let long = [b"STATUS=".as_slice(), "\u{e9}".repeat(300).as_bytes()].concat();
        said.take(&long);
        assert_eq!(said.status.as_ref().map(|s| s.len()), Some(MAX_STATUS));
    }

    #[test]
    fn bidi_formatting_characters_are_dropped_from_status() {
        let mut said = Said::default();
        let text = "STATUS=a\u{202E}b\u{202A}c\u{2066}d\u{2069}e\u{200E}f\u{200F}g\u{61C}h\u{2067}\u{2068}\u{202B}\u{202C}\u{202D}";
        said.take(text.as_bytes());
        assert_eq!(said.status.as_deref(), Some("abcdefgh"));
        // Letters of right-to-left scripts are text, kept.
        said.take("STATUS=\u{5e9}\u{5dc}\u{5d5}\u{5dd} \u{627}".as_bytes());
        assert_eq!(
            said.status.as_deref(),
            Some("\u{5e9}\u{5dc}\u{5d5}\u{5dd} \u{627}")
        );
    }
}
