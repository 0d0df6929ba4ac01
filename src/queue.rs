//! What waits on a socket handed to an `accept = false` child, seen
//! without taking it, so summond can tell a child that did its work from
//! one that left its socket exactly as it found it (`exec = ["true"]` on a
//! udp socket exits 0 at once and would otherwise be restarted in a busy
//! loop: the datagram that woke it is still there).
//!
//! - Datagram sockets (udp, unixgram): the head datagram is peeked
//!   (`MSG_PEEK | MSG_TRUNC`, nothing consumed) and reduced to its sender,
//!   its full length, a digest of its first bytes and, on udp, the time
//!   the kernel received it. The same head before the child started and
//!   after it exited means nothing was read. Sender, length and bytes
//!   alone cannot tell a datagram left unread from an identical one sent
//!   again after the child read and answered the first (a client
//!   retransmitting its request); the receive time can, as the kernel
//!   stamps each datagram once, when it arrives. It is read with
//!   `SIOCGSTAMPNS`, which answers for the datagram last peeked (and
//!   first turns stamping on for the socket; a datagram that arrived
//!   before then has no stamp, and is told apart by its bytes only, as
//!   unixgram datagrams are: the kernel keeps no stamp for those). The
//!   child sees no difference (no control messages are added to its
//!   reads); the kernel then stamps every packet it receives, as it does
//!   for any socket that asks (chronyd, ping), one clock read a packet.
//! - Stream listeners: the kernel shows neither the head of the accept
//!   queue nor how many connections were taken from it, only whether one
//!   is waiting. A child that exits within `QUICK_EXIT` while a connection
//!   is still waiting counts as having left it.
//!
//! Knows nothing of services or children; `server` decides what an
//! untouched socket means (the crash guard of `limits`). `unsafe` once,
//! for the `SIOCGSTAMPNS` ioctl, which neither nix nor socket2 offers.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};

use crate::addr::ListenAddr;

/// How many payload bytes the fingerprint covers: enough to tell two
/// requests apart, small enough to live on the stack.
const PEEK_BYTES: usize = 64;

/// A stream child that exits sooner than this while a client is still
/// queued is taken to have left the queue as it found it.
pub const QUICK_EXIT: Duration = Duration::from_secs(1);

/// The head of a socket's queue at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QueueHead {
    /// Nothing waiting (or the socket could not be inspected).
    Empty,
    /// A datagram: its full length, a digest of sender and first bytes,
    /// and when the kernel received it (ns since the epoch), if it was
    /// stamped.
    Datagram {
        len: usize,
        digest: u64,
        /// Absent from the state of an image that did not record it.
        #[serde(default)]
        arrived: Option<i64>,
    },
    /// A stream listener with at least one connection waiting.
    Connections,
}

impl QueueHead {
    /// Look at `socket`, bound to `addr`, without consuming anything.
    pub fn of(socket: &impl AsFd, addr: &ListenAddr) -> QueueHead {
        match addr {
            ListenAddr::Udp(_) => peek_datagram::<SockaddrStorage>(socket, true),
            // An unbound unix sender has an empty address, which nix's
            // address types do not take; the payload tells datagrams apart.
            ListenAddr::UnixGram(_) => peek_datagram::<()>(socket, false),
            ListenAddr::Tcp(_) | ListenAddr::Unix(_) => Self::of_listener(socket),
        }
    }

    fn of_listener(socket: &impl AsFd) -> QueueHead {
        if is_readable(socket) {
            QueueHead::Connections
        } else {
            QueueHead::Empty
        }
    }

    /// Did a child that started with `self` at the head and ran for `ran`
    /// leave the socket as it found it?
    pub fn untouched_by(&self, after: &QueueHead, ran: Duration) -> bool {
        match (self, after) {
            (QueueHead::Datagram { .. }, QueueHead::Datagram { .. }) => self == after,
            (QueueHead::Connections, QueueHead::Connections) => ran < QUICK_EXIT,
            _ => false,
        }
    }
}

/// Room for the control messages a peek may carry: a child that turned
/// on RX timestamps or other per-datagram messages on the socket it
/// shares with summond gets them on summond's peeks too. The kernel puts
/// the timestamps first (`sock_recv_cmsgs` before the IP ones); 512 bytes
/// hold them and every IP/IPv6 message a child is likely to ask for.
const CONTROL_BYTES: usize = 512;

/// The head datagram of `socket`, with its receive time if `stamped`.
fn peek_datagram<A: SockaddrLike + Hash>(socket: &impl AsFd, stamped: bool) -> QueueHead {
    let fd = socket.as_fd().as_raw_fd();
    // A second look only when the first found no stamp: the first
    // SIOCGSTAMPNS on a socket turns recording on, so the datagram's own
    // stamp (if the kernel gave it one) shows at the next peek. Either way
    // a datagram gets the same answer every time it is looked at.
    let mut looks = if stamped { 2 } else { 1 };
    loop {
        looks -= 1;
        let mut buf = [0u8; PEEK_BYTES];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut control = [0u8; CONTROL_BYTES];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        // A control buffer costs nothing when the socket attaches nothing:
        // summond never turns any option on, the child may have.
        let cmsg = stamped.then_some(&mut control[..]);
        let (len, from, attached) = match recvmsg::<A>(fd, &mut iov, cmsg, flags) {
            // With MSG_TRUNC `bytes` is the datagram's full length.
            Ok(msg) => {
                let attached = attached_stamp(&msg);
                (msg.bytes, msg.address, attached)
            }
            Err(_) => return QueueHead::Empty,
        };
        // With RX timestamps on (SO_TIMESTAMP, SO_TIMESTAMPNS or
        // SO_TIMESTAMPING, set by the child on the socket it shares), the
        // kernel attaches the datagram's stamp to every read, peeks
        // included, and stops recording it where SIOCGSTAMPNS looks: the
        // ioctl would answer with the stamp of the last datagram read
        // before the option went on, the same for every later datagram.
        let arrived = match attached {
            Some(ns) => Some(ns),
            None if stamped => arrival_of_peeked(fd),
            None => None,
        };
        if arrived.is_none() && looks > 0 {
            continue;
        }
        let mut h = DefaultHasher::new();
        from.hash(&mut h);
        buf[..len.min(PEEK_BYTES)].hash(&mut h);
        return QueueHead::Datagram {
            len,
            digest: h.finish(),
            arrived,
        };
    }
}

/// The receive time (ns since the epoch) the kernel attached to a read,
/// if the socket has RX timestamps on. The `_NEW` forms (y2038 layout,
/// `SO_TIMESTAMP*_NEW`, types 63 to 65) are the same bytes as the old
/// ones on 64-bit targets, and nix passes them through as unknown.
fn attached_stamp<A: SockaddrLike>(msg: &nix::sys::socket::RecvMsg<'_, '_, A>) -> Option<i64> {
    const SCM_TIMESTAMP_NEW: libc::c_int = 63;
    const SCM_TIMESTAMPNS_NEW: libc::c_int = 64;
    const SCM_TIMESTAMPING_NEW: libc::c_int = 65;
    let ns = |sec: i64, nsec: i64| sec.checked_mul(1_000_000_000)?.checked_add(nsec);
    let words = |b: &[u8], i: usize| -> Option<i64> {
        Some(i64::from_ne_bytes(
            b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    // A truncated control area (a child asking for more than fits) is
    // read as no stamp: SIOCGSTAMPNS answers then, as before.
    for c in msg.cmsgs().ok()? {
        let stamp = match c {
            ControlMessageOwned::ScmTimestamp(tv) => ns(tv.tv_sec(), tv.tv_usec() * 1000),
            ControlMessageOwned::ScmTimestampns(ts) => ns(ts.tv_sec(), ts.tv_nsec()),
            // The software stamp, or the hardware one if that is all the
            // child asked to be reported.
            ControlMessageOwned::ScmTimestampsns(t) => [t.system, t.hw_raw]
                .into_iter()
                .find(|ts| ts.tv_sec() != 0 || ts.tv_nsec() != 0)
                .and_then(|ts| ns(ts.tv_sec(), ts.tv_nsec())),
            ControlMessageOwned::Unknown(u) if u.cmsg_header.cmsg_level == libc::SOL_SOCKET => {
                let b = &u.data_bytes;
                match u.cmsg_header.cmsg_type {
                    SCM_TIMESTAMP_NEW => ns(words(b, 0)?, words(b, 1)? * 1000),
                    SCM_TIMESTAMPNS_NEW => ns(words(b, 0)?, words(b, 1)?),
                    SCM_TIMESTAMPING_NEW => [0, 2]
                        .into_iter()
                        .map(|i| (words(b, 2 * i), words(b, 2 * i + 1)))
                        .find(|t| !matches!(t, (Some(0), Some(0))))
                        .and_then(|t| ns(t.0?, t.1?)),
                    _ => continue,
                }
            }
            _ => continue,
        };
        if stamp.is_some_and(|s| s > 0) {
            return stamp;
        }
    }
    None
}

/// `SIOCGSTAMPNS` (asm-generic/sockios.h; the 64-bit time layout of
/// `libc::timespec` on 64-bit targets).
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// When the kernel received the datagram just peeked on `fd`, in ns since
/// the epoch; none if it was not stamped (or the socket keeps no stamps).
fn arrival_of_peeked(fd: std::os::fd::RawFd) -> Option<i64> {
    let asked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: SIOCGSTAMPNS writes one `struct timespec` to the pointer,
    // which points at one.
    if unsafe { libc::ioctl(fd, SIOCGSTAMPNS as _, &mut ts as *mut libc::timespec) } != 0 {
        return None;
    }
    let stamp = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    // For a datagram without a stamp the kernel answers with the current
    // time, later than `asked_at`; a stamp is earlier, as the datagram
    // was queued before it was peeked.
    (stamp < asked_at as i128)
        .then(|| i64::try_from(stamp).ok())
        .flatten()
}

fn is_readable(socket: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn udp() -> ListenAddr {
        "udp://127.0.0.1:9".parse().unwrap()
    }

    fn tcp() -> ListenAddr {
        "tcp://127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn a_datagram_peeked_twice_is_the_same_head_and_reading_it_changes_it() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(QueueHead::of(&rx, &udp()), QueueHead::Empty);
        tx.send_to(b"one", rx.local_addr().unwrap()).unwrap();
        tx.send_to(b"two", rx.local_addr().unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 8];
        rx.peek(&mut b).unwrap();
        let first = QueueHead::of(&rx, &udp());
        assert!(matches!(first, QueueHead::Datagram { len: 3, .. }));
        let again = QueueHead::of(&rx, &udp());
        assert!(first.untouched_by(&again, Duration::from_secs(60)));
        rx.recv(&mut b).unwrap();
        let next = QueueHead::of(&rx, &udp());
        assert!(matches!(next, QueueHead::Datagram { len: 3, .. }));
        assert!(!first.untouched_by(&next, Duration::ZERO), "one was read");
        rx.recv(&mut b).unwrap();
        assert!(!first.untouched_by(&QueueHead::of(&rx, &udp()), Duration::ZERO));
    }

    #[test]
    fn an_identical_datagram_sent_after_the_first_was_read_is_another_head() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = rx.local_addr().unwrap();
        let mut b = [0u8; 8];
        // The first look turns stamping on for the socket (and the kernel
        // may take a moment to stamp every datagram): until a datagram
        // arrives with its stamp, bounded.
        let mut stamped = false;
        for _ in 0..100 {
            tx.send_to(b"warm", to).unwrap();
            rx.peek(&mut b).unwrap();
            let head = QueueHead::of(&rx, &udp());
            rx.recv(&mut b).unwrap();
            if matches!(
                head,
                QueueHead::Datagram {
                    arrived: Some(_),
                    ..
                }
            ) {
                stamped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(stamped, "no datagram was stamped");
        tx.send_to(b"same", to).unwrap();
        rx.peek(&mut b).unwrap();
        let first = QueueHead::of(&rx, &udp());
        assert!(first.untouched_by(&QueueHead::of(&rx, &udp()), Duration::ZERO));
        rx.recv(&mut b).unwrap();
        tx.send_to(b"same", to).unwrap();
        rx.peek(&mut b).unwrap();
        let second = QueueHead::of(&rx, &udp());
        assert!(
            !first.untouched_by(&second, Duration::ZERO),
            "the first was read: {first:?} {second:?}"
        );
    }

    #[test]
    fn a_head_recorded_by_an_image_without_receive_times_still_reads() {
        let head: QueueHead = serde_json::from_str(r#"{"Datagram":{"len":3,"digest":7}}"#).unwrap();
        assert_eq!(
            head,
            QueueHead::Datagram {
                len: 3,
                digest: 7,
                arrived: None
            }
        );
    }

    #[test]
    fn a_long_datagram_reports_its_full_length() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        rx.peek(&mut [0u8; 1]).unwrap();
        assert!(matches!(
            QueueHead::of(&rx, &udp()),
            QueueHead::Datagram { len: 1000, .. }
        ));
    }

    #[test]
    fn a_waiting_connection_left_by_a_quick_exit_is_untouched() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(QueueHead::of(&l, &tcp()), QueueHead::Empty);
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut head = QueueHead::Empty;
        for _ in 0..100 {
            head = QueueHead::of(&l, &tcp());
            if head == QueueHead::Connections {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(head, QueueHead::Connections);
        assert!(head.untouched_by(&head, Duration::from_millis(5)));
        assert!(!head.untouched_by(&head, QUICK_EXIT), "a long run did work");
        assert!(!head.untouched_by(&QueueHead::Empty, Duration::ZERO));
    }
}
