//! The internal services, answered inside the event loop without a child:
//! echo (RFC 862), discard (863), chargen (864), daytime (867) and time
//! (868), over TCP and UDP.
//!
//! Bounded by construction: a TCP connection owns one fixed buffer of
//! `BUF` bytes; echo stops reading while its echo is unsent, so a client
//! that writes without reading costs that buffer and nothing more, and
//! every wake-up does at most `BUDGET` bytes of work before the loop turns
//! to other sources. A UDP answer is one datagram of at most 512 bytes
//! (chargen's limit in RFC 864), and echo's and chargen's are no longer
//! than the question, so a spoofed sender gains nothing by reflection but
//! daytime's 26 bytes. No datagram is answered that comes from a port
//! below 1024 (where the servers live: a spoofed request from echo, DNS
//! or NTP would start a loop or a reflection) or from a port summond
//! listens on (its own services, or another summond's with the same
//! config), nor from an address no real sender has (multicast,
//! broadcast, unspecified), as OpenBSD's inetd refuses them, nor one sent
//! to a broadcast or multicast address (IP_PKTINFO tells). A loop between
//! two hosts on ordinary ports no rule can see: each service has a budget
//! of answers, and the first datagram over it ends the loop.
//! A TCP connection's socket buffers are fixed small (autotuning would
//! let a client that never reads pin megabytes of kernel memory).

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::Socket;

use super::services::ServiceId;
use crate::config::{Internal, Rate};
use crate::peer::{Peer, SourceKey};
use crate::upgrade::InternalState;

/// One TCP connection's buffer.
pub(super) const BUF: usize = 4096;
/// SO_SNDBUF and SO_RCVBUF of a TCP connection (Linux doubles them for
/// its bookkeeping: 32 KiB each at most in the queues).
pub(super) const KERNEL_BUF: usize = 16 * 1024;
/// Bytes moved per wake-up before yielding to the rest of the loop.
pub(super) const BUDGET: usize = 64 * 1024;
/// The largest UDP answer (RFC 864's chargen datagram).
pub(super) const MAX_DATAGRAM: usize = 512;

/// Seconds from 1900 (RFC 868's epoch) to 1970.
const RFC868_OFFSET: u64 = 2_208_988_800;

/// What a wake-up left the connection as.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Waiting for the socket; the next readiness event continues.
    Waiting,
    /// The budget ran out with work left: continue next turn.
    MoreWork,
    /// Finished or the client is gone: close it.
    Done,
}

pub(super) struct InternalConn {
    pub kind: Internal,
    pub socket: Socket,
    pub service: ServiceId,
    pub source: Option<SourceKey>,
    pub peer: Peer,
    buf: Box<[u8; BUF]>,
    /// Unsent bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// chargen: where in the pattern the next line starts.
    line: usize,
    /// daytime/time: the answer is all there is; close once it is sent.
    one_shot: bool,
    /// When a byte last moved either way, and how long the client may
    /// then stay silent (its service's `idle_timeout`) before it is closed.
    last_active: Instant,
    idle: Duration,
}

impl InternalConn {
    pub fn new(
        kind: Internal,
        socket: Socket,
        service: ServiceId,
        source: Option<SourceKey>,
        peer: Peer,
        now: SystemTime,
    ) -> InternalConn {
        let mut conn = InternalConn::resumed(kind, socket, service, source, peer, (&[], 0, false));
        if matches!(kind, Internal::Daytime | Internal::Time) {
            conn.end = one_shot_answer(kind, now, &mut conn.buf[..]);
            conn.one_shot = true;
        }
        conn
    }

    /// A connection with the output it had not written yet (none for a
    /// new one).
    fn resumed(
        kind: Internal,
        socket: Socket,
        service: ServiceId,
        source: Option<SourceKey>,
        peer: Peer,
        progress: (&[u8], usize, bool),
    ) -> InternalConn {
        let (unsent, line, one_shot) = progress;
        let mut conn = InternalConn {
            kind,
            socket,
            service,
            source,
            peer,
            buf: Box::new([0; BUF]),
            start: 0,
            end: unsent.len().min(BUF),
            line,
            one_shot,
            // Until `resume_idle_clock` says how long it has been silent.
            last_active: Instant::now(),
            idle: crate::config::DEFAULT_IDLE_TIMEOUT,
        };
        conn.buf[..conn.end].copy_from_slice(&unsent[..conn.end]);
        conn
    }

    /// What the next image of an upgrade needs to carry on, under its
    /// service's name now (`service`): the socket, the unsent output, the
    /// chargen line, whether the answer is all there is, its idle timeout
    /// and how long it has been silent at `now`.
    pub fn to_state(&self, service: String, now: Instant) -> InternalState {
        let silent = now.saturating_duration_since(self.last_active);
        InternalState {
            fd: self.socket.as_raw_fd(),
            service,
            kind: self.kind,
            peer: self.peer.clone(),
            source: self.source,
            unsent: self.buf[self.start..self.end].to_vec(),
            line: self.line,
            one_shot: self.one_shot,
            idle: Some((self.idle.as_nanos() as u64, silent.as_nanos() as u64)),
        }
    }

    /// A connection the previous image handed over, now of service `id`,
    /// its idle clock measured from the hand-over (`handed`): its timeout
    /// (a client of a removed service keeps it, as at a reload) and the
    /// silence so far, which does not start again.
    pub fn from_state(c: InternalState, id: ServiceId, handed: Instant) -> InternalConn {
        // SAFETY: named by the state, taken once.
        let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(c.fd) });
        let progress = (c.unsent.as_slice(), c.line, c.one_shot);
        let mut conn = InternalConn::resumed(c.kind, socket, id, c.source, c.peer, progress);
        if let Some((timeout, silent)) = c.idle {
            conn.idle = Duration::from_nanos(timeout);
            let silent = Duration::from_nanos(silent);
            conn.last_active = handed.checked_sub(silent).unwrap_or(handed);
        }
        conn
    }

    /// When the client will have been silent for its idle timeout.
    fn idle_deadline(&self) -> Instant {
        self.last_active + self.idle
    }

    /// Move what the socket allows, up to the budget; a byte moved either
    /// way at `now` restarts the idle clock.
    pub fn on_ready(&mut self, now: Instant) -> Progress {
        let mut moved = 0;
        while moved < BUDGET {
            // Flush what is pending first.
            if self.start < self.end {
                match (&self.socket).write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Progress::Done,
                    Ok(n) => {
                        self.start += n;
                        moved += n;
                        self.last_active = now;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Progress::Done,
                }
            }
            self.start = 0;
            self.end = 0;
            match self.kind {
                Internal::Daytime | Internal::Time => return Progress::Done,
                Internal::Chargen => {
                    // Drain (and ignore) input so the client's writes never
                    // fill our receive buffer, then refill the output.
                    if let Some(Progress::Done) = self.read_and_discard(now) {
                        return Progress::Done;
                    }
                    self.end = chargen_fill(&mut self.line, &mut self.buf[..]);
                }
                Internal::Discard => {
                    return self.read_and_discard(now).unwrap_or(Progress::MoreWork);
                }
                Internal::Echo => match (&self.socket).read(&mut self.buf[..]) {
                    Ok(0) => return Progress::Done,
                    Ok(n) => {
                        self.end = n;
                        moved += n;
                        self.last_active = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Progress::Done,
                },
            }
        }
        Progress::MoreWork
    }

    /// Read and drop what is there, up to the budget. `Some` when reading
    /// decided the outcome (EOF or error: done; nothing there: waiting).
    fn read_and_discard(&mut self, now: Instant) -> Option<Progress> {
        let mut scratch = [0u8; 1024];
        let mut taken = 0;
        while taken < BUDGET {
            match (&self.socket).read(&mut scratch) {
                Ok(0) => return Some(Progress::Done),
                Ok(n) => {
                    taken += n;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Progress::Waiting),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Progress::Done),
            }
        }
        None
    }
}

/// daytime or time, written into `out`; returns the length.
fn one_shot_answer(kind: Internal, now: SystemTime, out: &mut [u8]) -> usize {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match kind {
        Internal::Time => {
            // RFC 868: 32 bits, seconds since 1900, big-endian (it wraps in
            // 2036, as every implementation's does).
            let t = (secs + RFC868_OFFSET) as u32;
            out[..4].copy_from_slice(&t.to_be_bytes());
            4
        }
        _ => {
            let text = daytime(secs);
            out[..text.len()].copy_from_slice(text.as_bytes());
            text.len()
        }
    }
}

/// RFC 867 leaves the format open; this is ctime's, in UTC, as inetd's
/// built-in daytime writes it: "Wed Dec  2 02:59:00 2026\r\n".
pub(super) fn daytime(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (y, m, d) = crate::timefmt::civil_from_days(days as i64);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}\r\n",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        y
    )
}

/// RFC 864's pattern: 95 printable characters, lines of 72 starting one
/// character further on each time. Fills whole lines into `out`.
const LINE: usize = 72;
const PRINTABLE: usize = 95;

fn chargen_line(line: usize, out: &mut [u8]) {
    for (i, b) in out[..LINE].iter_mut().enumerate() {
        *b = b' ' + ((line + i) % PRINTABLE) as u8;
    }
    out[LINE] = b'\r';
    out[LINE + 1] = b'\n';
}

fn chargen_fill(line: &mut usize, out: &mut [u8]) -> usize {
    let mut n = 0;
    while n + LINE + 2 <= out.len() {
        chargen_line(*line, &mut out[n..]);
        *line = (*line + 1) % PRINTABLE;
        n += LINE + 2;
    }
    n
}

/// The answer to one datagram, written into `out` (at most MAX_DATAGRAM
/// bytes); `None` for discard.
pub(super) fn datagram_answer(
    kind: Internal,
    question: &[u8],
    now: SystemTime,
    out: &mut [u8; MAX_DATAGRAM],
) -> Option<usize> {
    match kind {
        Internal::Discard => None,
        Internal::Echo => {
            let n = question.len().min(MAX_DATAGRAM);
            out[..n].copy_from_slice(&question[..n]);
            Some(n)
        }
        Internal::Chargen => {
            // RFC 864 allows any length from 0 to 512. The BSDs send a
            // line (74 bytes) and xinetd a full buffer to any datagram,
            // an empty one too: a reflector that multiplies what a spoofed
            // sender spends. As long as the question, it multiplies nothing.
            let n = question.len().min(MAX_DATAGRAM);
            let mut lines = [0u8; MAX_DATAGRAM + LINE + 2];
            let mut line = 0;
            chargen_fill(&mut line, &mut lines[..]);
            out[..n].copy_from_slice(&lines[..n]);
            Some(n)
        }
        Internal::Daytime | Internal::Time => Some(one_shot_answer(kind, now, &mut out[..])),
    }
}

/// Why a datagram goes unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// Its source port is below 1024, where the servers live: echo,
    /// chargen, DNS, NTP, whose answer would come straight back, or which
    /// a spoofed request would turn summond against.
    ReservedPort,
    /// Its source port is one summond listens on: an answer would start a
    /// loop with one of its own services (or the same service of another
    /// summond with the same config).
    OwnPort,
    /// Its source address is one no host sends from.
    NoSuchSender,
    /// It was sent to a broadcast or multicast address ("fraggle"): one
    /// datagram would draw an answer from every host that got it.
    NotToUs,
    /// The service's budget of answers is spent: what ends a loop between
    /// two hosts that no port rule can see, and bounds reflection.
    OverBudget(Rate),
}

impl Unanswered {
    /// Its slot in the table of episodes.
    fn index(self) -> u8 {
        match self {
            Unanswered::ReservedPort => 0,
            Unanswered::OwnPort => 1,
            Unanswered::NoSuchSender => 2,
            Unanswered::NotToUs => 3,
            Unanswered::OverBudget(_) => 4,
        }
    }
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::ReservedPort => f.write_str("its port is below 1024"),
            Unanswered::OwnPort => f.write_str("its port is one summond listens on"),
            Unanswered::NoSuchSender => f.write_str("no host sends from that address"),
            Unanswered::NotToUs => f.write_str("it was sent to a broadcast or multicast address"),
            Unanswered::OverBudget(r) => write!(f, "over the service's {r} answers"),
        }
    }
}

/// Whether a datagram from `from` must go unanswered for its source
/// alone: a port below 1024, one of `own_ports`, or an address no host
/// sends from (OpenBSD inetd's dg_badinput, FreeBSD's check_loop).
pub(super) fn unanswerable(
    from: std::net::SocketAddr,
    own_ports: &rustc_hash::FxHashSet<u16>,
) -> Option<Unanswered> {
    use std::net::IpAddr;
    if from.port() < RESERVED_PORTS {
        return Some(Unanswered::ReservedPort);
    }
    if own_ports.contains(&from.port()) {
        return Some(Unanswered::OwnPort);
    }
    let bogus = match from.ip() {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    };
    bogus.then_some(Unanswered::NoSuchSender)
}

/// Where a datagram was sent, as IP_PKTINFO / IPV6_PKTINFO tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Destination {
    /// `header` is the packet's destination (ipi_addr); `local` is what
    /// Linux puts in ipi_spec_dst: the same address for a packet to one
    /// of this host's unicast addresses, an interface address for a
    /// broadcast or multicast one (fib_compute_spec_dst).
    V4 {
        header: std::net::Ipv4Addr,
        local: std::net::Ipv4Addr,
    },
    V6(std::net::Ipv6Addr),
    /// No packet info came with it (the option could not be set).
    Unknown,
}

/// Was the datagram sent to more hosts than this one?
pub(super) fn not_to_us_alone(dest: Destination) -> bool {
    match dest {
        Destination::V4 { header, local } => {
            // A directed broadcast (10.9.0.255) is not "broadcast" to
            // is_broadcast(); the kernel's answer in `local` tells it.
            // `local` unspecified means the kernel computed nothing: the
            // address classes are all that is left to go by.
            header.is_multicast()
                || header.is_broadcast()
                || (!local.is_unspecified() && header != local)
        }
        Destination::V6(a) => a.is_multicast(),
        Destination::Unknown => false,
    }
}

/// Answers per second an internal UDP service sends when its `rate` key
/// does not say (a burst of as many). Far above what anyone asks of echo
/// or daytime, far below what a loop or a reflector runs at.
pub(super) const DEFAULT_ANSWERS: Rate = Rate {
    count: 100,
    per: Duration::from_secs(1),
};

/// Ports below this are the servers' (IPPORT_RESERVED).
const RESERVED_PORTS: u16 = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn daytime_is_ctime_in_utc() {
        assert_eq!(daytime(0), "Thu Jan  1 00:00:00 1970\r\n");
        assert_eq!(daytime(1_796_180_340), "Wed Dec  2 02:59:00 2026\r\n");
        assert_eq!(daytime(951_782_400), "Tue Feb 29 00:00:00 2000\r\n");
    }

    #[test]
    fn time_counts_seconds_from_1900() {
        let mut out = [0u8; MAX_DATAGRAM];
        let n = datagram_answer(Internal::Time, b"", UNIX_EPOCH, &mut out).unwrap();
        assert_eq!(&out[..n], &2_208_988_800u32.to_be_bytes());
    }

    #[test]
    fn udp_answers_are_bounded_and_chargen_lines_rotate() {
        // The bound as a number of its own (RFC 864's 512 bytes), not
        // the constant the code uses: a raised constant must fail here.
        const RFC_BOUND: usize = 512;
        let mut out = [0u8; MAX_DATAGRAM];
        let big = [b'x'; 9000];
        let now = UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(
            datagram_answer(Internal::Echo, &big, now, &mut out),
            Some(RFC_BOUND)
        );
        assert_eq!(
            datagram_answer(Internal::Discard, b"x", now, &mut out),
            None
        );
        assert_eq!(
            datagram_answer(Internal::Chargen, b"", now, &mut out),
            Some(0),
            "nothing asked, nothing sent"
        );
        assert_eq!(
            datagram_answer(Internal::Chargen, &big, now, &mut out),
            Some(RFC_BOUND),
            "RFC 864's limit"
        );
        let n = datagram_answer(Internal::Chargen, &[0; 200], now, &mut out).unwrap();
        assert_eq!(n, 200, "as long as the question");
        assert_eq!(&out[..3], b" !\"");
        assert_eq!(
            &out[LINE + 2..LINE + 5],
            b"!\"#",
            "each line starts one further"
        );
        assert_eq!(&out[LINE..LINE + 2], b"\r\n");
    }

    #[test]
    fn idle_deadlines_come_up_when_due_and_closed_connections_do_not_pile_up() {
        use mio::Token;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let conn = |idle: u64| {
            let socket = Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            let mut c = InternalConn::new(
                Internal::Discard,
                socket,
                ServiceId(1),
                None,
                Peer::Unknown,
                SystemTime::now(),
            );
            c.idle = ms(idle);
            c.last_active = t0;
            c
        };
        let mut conns = InternalConns::default();
        conns.insert(Token(1), conn(300));
        conns.insert(Token(2), conn(100));
        assert_eq!(conns.next_deadline(), Some(t0 + ms(100)));
        assert!(conns.take_idle(t0 + ms(50)).is_empty());
        // Token 2 moved a byte since its deadline was queued: not idle,
        // queued again at its new deadline.
        conns.conns.get_mut(&Token(2)).unwrap().last_active = t0 + ms(250);
        assert!(conns.take_idle(t0 + ms(200)).is_empty());
        assert_eq!(conns.next_deadline(), Some(t0 + ms(300)));
        assert_eq!(conns.take_idle(t0 + ms(340)), vec![Token(1)]);
        assert_eq!(conns.take_idle(t0 + ms(350)), vec![Token(2)]);
        // A retime to a shorter timeout comes up before the old deadline.
        conns.insert(Token(3), conn(60_000));
        conns.retime(|_| Some(ms(10)));
        assert_eq!(conns.next_deadline().unwrap() - t0, ms(10));
        // Many short connections leave the heap the size of the open ones.
        for i in 10..10_010 {
            conns.insert(Token(i), conn(300_000));
            conns.remove(Token(i));
        }
        assert_eq!(conns.len(), 3);
        assert!(conns.idle.len() <= 2 * 3 + 64 + 1, "{}", conns.idle.len());
    }

    #[test]
    fn datagrams_from_servers_ports_own_ports_and_bogus_addresses_go_unanswered() {
        let ports: rustc_hash::FxHashSet<u16> = [7007].into_iter().collect();
        let at = |s: &str| unanswerable(s.parse().unwrap(), &ports);
        for from in [
            "127.0.0.1:0",
            "127.0.0.1:7",
            "10.0.0.1:53",
            "[::1]:123",
            "1.2.3.4:1023",
        ] {
            assert_eq!(at(from), Some(Unanswered::ReservedPort), "{from}");
        }
        assert_eq!(at("127.0.0.1:7007"), Some(Unanswered::OwnPort));
        for from in [
            "224.0.0.1:5000",
            "255.255.255.255:5000",
            "0.0.0.0:5000",
            "[ff02::1]:5000",
            "[::]:5000",
        ] {
            assert_eq!(at(from), Some(Unanswered::NoSuchSender), "{from}");
        }
        for from in ["127.0.0.1:1024", "10.0.0.1:40000", "[::1]:65535"] {
            assert_eq!(at(from), None, "{from}");
        }
    }

    #[test]
    fn datagrams_sent_to_broadcast_or_multicast_addresses_are_not_to_us_alone() {
        let v4 = |header: [u8; 4], local: [u8; 4]| Destination::V4 {
            header: header.into(),
            local: local.into(),
        };
        // Linux: a local unicast packet has ipi_spec_dst = its destination.
        assert!(!not_to_us_alone(v4([127, 0, 0, 1], [127, 0, 0, 1])));
        assert!(!not_to_us_alone(v4([10, 9, 0, 1], [10, 9, 0, 1])));
        // A directed broadcast: the interface's address in ipi_spec_dst.
        assert!(not_to_us_alone(v4([10, 9, 0, 255], [10, 9, 0, 1])));
        assert!(not_to_us_alone(v4([255, 255, 255, 255], [10, 9, 0, 1])));
        assert!(not_to_us_alone(v4([224, 0, 0, 1], [10, 9, 0, 1])));
        // Nothing computed: the address classes still count.
        assert!(not_to_us_alone(v4([224, 0, 0, 1], [0, 0, 0, 0])));
        assert!(!not_to_us_alone(v4([10, 9, 0, 1], [0, 0, 0, 0])));
        assert!(not_to_us_alone(Destination::V6("ff02::1".parse().unwrap())));
        assert!(!not_to_us_alone(Destination::V6("::1".parse().unwrap())));
        assert!(!not_to_us_alone(Destination::Unknown));
    }

    #[test]
    fn an_answer_budget_ends_a_loop_and_drops_are_logged_once_an_episode() {
        let t0 = Instant::now();
        let id = ServiceId(3);
        let mut guard = DatagramGuard::default();
        guard
            .answers
            .insert(id, TokenBucket::new(DEFAULT_ANSWERS, t0));
        // A loop runs far faster than the budget refills: it is cut after
        // the burst, at the first datagram with no answer left.
        let answered = (0..10_000)
            .take_while(|_| guard.take_answer(id, t0))
            .count();
        assert_eq!(answered, 100);
        let why = Unanswered::OverBudget(DEFAULT_ANSWERS);
        assert_eq!(guard.episode(id, why, t0), Some(0), "the first is logged");
        for _ in 0..5 {
            assert_eq!(guard.episode(id, why, t0 + Duration::from_secs(1)), None);
        }
        // Another reason is an episode of its own.
        assert_eq!(guard.episode(id, Unanswered::OwnPort, t0), Some(0));
        // After the interval: logged again, with the count kept quiet.
        assert_eq!(guard.episode(id, why, t0 + REFUSAL_INTERVAL), Some(5));
        // A service with no budget (not internal) is never cut.
        assert!(guard.take_answer(ServiceId(4), t0));
    }
}

// ---- the loop's side ----------------------------------------------------

use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::connection::RefuseReason;
use super::{Server, TokenKind};
use crate::addr::ListenAddr;
use crate::limits::rate::{BucketState, TokenBucket};
use crate::limits::Counter;
use crate::refusals::REFUSAL_INTERVAL;

/// Datagrams answered per wake-up of one internal UDP service.
const DATAGRAM_BUDGET: usize = 64;

/// What the internal UDP services may answer: the ports summond listens
/// on (a datagram from one is never answered), each service's budget of
/// answers, and when a dropped datagram was last logged.
#[derive(Default)]
pub(super) struct DatagramGuard {
    own_ports: FxHashSet<u16>,
    answers: FxHashMap<ServiceId, TokenBucket>,
    /// Per service and reason: until when further drops are logged at
    /// debug only, and how many were since the last info line.
    episodes: FxHashMap<(ServiceId, u8), (Instant, u64)>,
}

impl DatagramGuard {
    /// Spend one of service `id`'s answers, if one is left.
    fn take_answer(&mut self, id: ServiceId, now: Instant) -> bool {
        self.answers.get_mut(&id).is_none_or(|b| b.take(now))
    }

    /// Service `id`'s budget of answers, if spent in part, for the next
    /// image of an upgrade.
    pub fn answers_state(&self, id: ServiceId, now: Instant) -> Option<BucketState> {
        let b = self.answers.get(&id)?;
        (!b.is_full(now)).then(|| b.to_state(now))
    }

    /// Carry on with the budget the previous image left, if the service
    /// still has one at that rate (a changed one starts full, as at a
    /// reload).
    pub fn resume_answers(&mut self, id: ServiceId, state: BucketState, now: Instant) {
        if let Some(b) = self.answers.get_mut(&id).filter(|b| b.rate() == state.rate) {
            *b = TokenBucket::from_state(state, now);
        }
    }

    /// A datagram of service `id` dropped for `why` at `now`: `Some(n)`
    /// when it is the one to log at info (the first of an episode, `n`
    /// dropped since the last such line), `None` while the episode lasts.
    fn episode(&mut self, id: ServiceId, why: Unanswered, now: Instant) -> Option<u64> {
        let e = self.episodes.entry((id, why.index())).or_insert((now, 0));
        if now < e.0 {
            e.1 += 1;
            return None;
        }
        let since = e.1;
        *e = (now + REFUSAL_INTERVAL, 0);
        Some(since)
    }
}

/// Open internal TCP connections and what they count toward.
#[derive(Default)]
pub(super) struct InternalConns {
    conns: FxHashMap<Token, InternalConn>,
    active: FxHashMap<ServiceId, u32>,
    per_source: Counter<(ServiceId, SourceKey)>,
    /// Connections whose budget ran out last turn.
    ready: Vec<Token>,
    /// One idle deadline per connection, as it was when pushed: a
    /// connection active since is pushed again with its new deadline when
    /// the old one comes up, so activity costs a timestamp, not a heap
    /// operation.
    idle: BinaryHeap<Reverse<(Instant, Token)>>,
}

impl InternalConns {
    pub fn active(&self, id: ServiceId) -> u32 {
        self.active.get(&id).copied().unwrap_or(0)
    }

    pub fn per_source(&self, id: ServiceId, key: &SourceKey) -> u32 {
        self.per_source.get(&(id, *key))
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Open connections over all services: they count toward
    /// `max_children` as children do.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// The earliest a connection may have been idle too long.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle.peek().map(|Reverse((at, _))| *at)
    }

    /// The connections silent for their whole idle timeout at `now`.
    fn take_idle(&mut self, now: Instant) -> Vec<Token> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, token))) = self.idle.peek() {
            if at > now {
                break;
            }
            self.idle.pop();
            let Some(conn) = self.conns.get(&token) else {
                continue; // closed since
            };
            let due = conn.idle_deadline();
            if due <= now {
                out.push(token);
            } else {
                self.idle.push(Reverse((due, token)));
            }
        }
        out
    }

    /// Give every connection the idle timeout `timeout_of` its service has
    /// now (a reload may have changed it; a removed service's keep theirs).
    fn retime(&mut self, timeout_of: impl Fn(ServiceId) -> Option<Duration>) {
        for conn in self.conns.values_mut() {
            if let Some(t) = timeout_of(conn.service) {
                conn.idle = t;
            }
        }
        // A shorter timeout must come up in the heap before the old one.
        self.rebuild_idle();
    }

    pub fn iter(&self) -> impl Iterator<Item = &InternalConn> {
        self.conns.values()
    }

    fn insert(&mut self, token: Token, conn: InternalConn) {
        *self.active.entry(conn.service).or_default() += 1;
        if let Some(k) = conn.source {
            self.per_source.add((conn.service, k));
        }
        self.idle.push(Reverse((conn.idle_deadline(), token)));
        self.conns.insert(token, conn);
    }

    fn remove(&mut self, token: Token) -> Option<InternalConn> {
        let conn = self.conns.remove(&token)?;
        if let Some(n) = self.active.get_mut(&conn.service) {
            *n -= 1;
            if *n == 0 {
                self.active.remove(&conn.service);
            }
        }
        if let Some(k) = conn.source {
            self.per_source.remove(&(conn.service, k));
        }
        // A closed connection's deadline stays in the heap until it comes
        // up; with many short connections (daytime) that would be one
        // entry per connection of the last `idle_timeout`. Rebuilt when
        // most entries are stale: amortised O(1) per connection.
        if self.idle.len() > 2 * self.conns.len() + 64 {
            self.rebuild_idle();
        }
        Some(conn)
    }

    fn rebuild_idle(&mut self) {
        self.idle = self
            .conns
            .iter()
            .map(|(t, c)| Reverse((c.idle_deadline(), *t)))
            .collect();
    }
}

impl Server {
    /// An admitted TCP client of an internal service: served here.
    pub(super) fn start_internal(
        &mut self,
        idx: usize,
        conn: socket2::Socket,
        peer: Peer,
        source: Option<SourceKey>,
    ) {
        let Some(kind) = self.services[idx].spec.internal else {
            return;
        };
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        // Our 4 KiB buffer bounds what summond holds; the socket's own
        // buffers are kernel memory charged to summond's sockets, and
        // autotuning grows them to megabytes (tcp_wmem/tcp_rmem's maximum)
        // for a client with a zero window (chargen) or one that writes
        // and never reads (echo stops reading, so its input waits in the
        // receive queue). Fixed small buffers bound both per client.
        let _ = conn.set_send_buffer_size(KERNEL_BUF);
        let _ = conn.set_recv_buffer_size(KERNEL_BUF);
        let token = self.tokens.next();
        let fd = conn.as_raw_fd();
        let svc = &self.services[idx];
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            info!("{}: cannot serve {peer}: {e}", svc.spec.name);
            return;
        }
        debug!("{}: internal:{} for {peer}", svc.spec.name, kind.name());
        let id = svc.id;
        self.services[idx].stats.served += 1;
        self.take_rate_token(idx, Instant::now());
        let mut c = InternalConn::new(kind, conn, id, source, peer, SystemTime::now());
        c.idle = self.services[idx].spec.idle_timeout;
        self.tokens.insert(token, TokenKind::Internal);
        self.internals.insert(token, c);
        // Answer at once (daytime and time need no readiness).
        self.on_internal_ready(token);
    }

    /// A connection the previous image was serving (live upgrade).
    pub(super) fn resume_internal(&mut self, mut conn: InternalConn) {
        if let Some(idx) = self.services.index_of(conn.service) {
            conn.idle = self.services[idx].spec.idle_timeout;
        }
        let token = self.tokens.next();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&conn.socket.as_raw_fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            info!("internal: cannot serve {} any more: {e}", conn.peer);
            return;
        }
        self.tokens.insert(token, TokenKind::Internal);
        self.internals.insert(token, conn);
        self.internals.ready.push(token);
    }

    pub(super) fn on_internal_ready(&mut self, token: Token) {
        let Some(conn) = self.internals.conns.get_mut(&token) else {
            return;
        };
        match conn.on_ready(Instant::now()) {
            Progress::Waiting => {}
            Progress::MoreWork => self.internals.ready.push(token),
            Progress::Done => self.close_internal(token),
        }
    }

    /// Serve the connections whose budget ran out last turn.
    pub(super) fn serve_internal_ready(&mut self) {
        for token in std::mem::take(&mut self.internals.ready) {
            self.on_internal_ready(token);
        }
    }

    fn close_internal(&mut self, token: Token) {
        self.tokens.remove(&token);
        if let Some(conn) = self.internals.remove(token) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&conn.socket.as_raw_fd()));
            let now = Instant::now();
            if let Some(idx) = self.services.index_of(conn.service) {
                debug!(
                    "{}: internal:{} done for {}",
                    self.services[idx].spec.name,
                    conn.kind.name(),
                    conn.peer
                );
                // A slot under max_instances may have opened.
                self.sync_service(idx, now);
            }
            // And one under max_children, for every service.
            self.unpark(now);
        }
    }

    /// Close the connections that have been silent for their service's
    /// `idle_timeout`: an idle client must not keep a descriptor (and a
    /// place under the limits) for ever.
    pub(super) fn close_idle_internal(&mut self, now: Instant) {
        for token in self.internals.take_idle(now) {
            if let Some(conn) = self.internals.conns.get(&token) {
                debug!(
                    "{}: internal:{} closing {}: idle for {:.1}s",
                    self.services.name_of(conn.service),
                    conn.kind.name(),
                    conn.peer,
                    conn.idle.as_secs_f64()
                );
            }
            self.close_internal(token);
        }
    }

    /// After a reload: each connection takes its service's idle timeout.
    pub(super) fn retime_internal(&mut self) {
        let Server {
            internals,
            services,
            ..
        } = self;
        internals.retime(|id| services.index_of(id).map(|i| services[i].spec.idle_timeout));
    }

    /// Close every internal connection (at stop).
    pub(super) fn close_all_internal(&mut self) {
        let tokens: Vec<Token> = self.internals.conns.keys().copied().collect();
        for t in tokens {
            self.close_internal(t);
        }
    }

    /// After every config load (startup, reload, and so the new image of
    /// an upgrade too): the ports summond listens on, every internal UDP
    /// socket told to report each datagram's destination, and a budget of
    /// answers for each internal service.
    pub(super) fn guard_datagrams(&mut self) {
        // Every UDP port (a wait service answers what it reads, so an
        // internal service answering it would ping-pong for ever), and the
        // internal services' TCP ports too: another summond with this
        // config has its UDP echo there.
        let mut ports: FxHashSet<u16> = self
            .services
            .iter()
            .map(|rt| &rt.spec)
            .filter(|s| s.internal.is_some() && !s.disabled)
            .flat_map(|s| s.listen.iter())
            .filter_map(|l| match &l.addr {
                ListenAddr::Tcp(a) | ListenAddr::Udp(a) => Some(a.port()),
                _ => None,
            })
            .collect();
        for sock in self.sockets.iter() {
            let ListenAddr::Udp(a) = &sock.listener.addr else {
                continue;
            };
            ports.insert(a.port());
            let internal = self.services[sock.service].spec.internal.is_some();
            if let Err(e) = want_destination(&sock.listener.socket, a.is_ipv4(), internal) {
                warn!(
                    "{}: {a}: cannot learn datagrams' destinations, so broadcast and \
                     multicast ones cannot be told apart: {e}",
                    self.services[sock.service].spec.name
                );
            }
        }
        self.datagrams.own_ports = ports;
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.datagrams.answers);
        for rt in self.services.iter().filter(|rt| rt.spec.internal.is_some()) {
            let rate = rt.spec.rate.unwrap_or(DEFAULT_ANSWERS);
            let bucket = old
                .remove(&rt.id)
                .filter(|b| b.rate() == rate)
                .unwrap_or_else(|| TokenBucket::new(rate, now));
            self.datagrams.answers.insert(rt.id, bucket);
        }
        let answers = &self.datagrams.answers;
        self.datagrams
            .episodes
            .retain(|(id, _), _| answers.contains_key(id));
    }

    /// A readable internal UDP socket: answer up to the budget, as the
    /// service's rules allow. What must not be answered is read and
    /// dropped, never left queued: a datagram answered later keeps a loop
    /// going as surely as one answered now.
    pub(super) fn serve_datagrams(&mut self, idx: usize, addr: &ListenAddr) {
        let Some(kind) = self.services[idx].spec.internal else {
            return;
        };
        let mut question = [0u8; 2048];
        let mut answer = [0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo, nix::libc::in6_pktinfo);
        for _ in 0..DATAGRAM_BUDGET {
            let now = Instant::now();
            if !self.service_may_spawn(idx, now) {
                return;
            }
            let Some(sock) = self.sockets.get(addr) else {
                return;
            };
            let socket = &sock.listener.socket;
            let (n, from, dest) = match recv_datagram(socket, &mut question, &mut cmsg) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let from = crate::peer::canonical_addr(from);
            // Never answer another server (the echo/chargen loop, and
            // reflection through spoofed sources), nor a datagram sent to
            // many hosts at once.
            let why = unanswerable(from, &self.datagrams.own_ports)
                .or_else(|| not_to_us_alone(dest).then_some(Unanswered::NotToUs));
            if let Some(why) = why {
                self.drop_datagram(idx, from, why, now);
                continue;
            }
            let svc = &self.services[idx];
            let key = SourceKey::Ip(from.ip()).grouped(svc.spec.per_source_prefix);
            let peer = Peer::Inet {
                remote: from,
                local: None,
            };
            if let Err(why) = svc.spec.access.permits(from.ip()) {
                self.refuse_datagram(idx, &peer, key, RefuseReason::Access(why), now);
                continue;
            }
            if let Some(rate) = svc.spec.per_source_rate {
                if !self.services[idx].source_rates().admit(key, rate, now) {
                    self.refuse_datagram(idx, &peer, key, RefuseReason::PerSourceRate(rate), now);
                    continue;
                }
            }
            let id = self.services[idx].id;
            let len = datagram_answer(kind, &question[..n], SystemTime::now(), &mut answer);
            // Only an answer spends the budget (discard sends none). The
            // service's `rate` is not spent here: it sets this budget, and
            // its pause would leave datagrams queued.
            if len.is_some() && !self.datagrams.take_answer(id, now) {
                let rate = self.services[idx].spec.rate.unwrap_or(DEFAULT_ANSWERS);
                self.drop_datagram(idx, from, Unanswered::OverBudget(rate), now);
                continue;
            }
            self.services[idx].stats.served += 1;
            if let (Some(len), Some(sock)) = (len, self.sockets.get(addr)) {
                let _ = sock.listener.socket.send_to_with_flags(
                    &answer[..len],
                    &from.into(),
                    nix::libc::MSG_DONTWAIT,
                );
            }
        }
        // Budget spent with datagrams possibly left: next turn.
        self.sockets.queue_ready(addr);
    }

    /// A datagram read and not answered: the first of an episode (per
    /// service and reason) is logged at info so that an operator sees a
    /// loop or a reflection attempt, the rest at debug until
    /// REFUSAL_INTERVAL has passed, as refusals are.
    fn drop_datagram(
        &mut self,
        idx: usize,
        from: std::net::SocketAddr,
        why: Unanswered,
        now: Instant,
    ) {
        let svc = &self.services[idx];
        let name = svc.spec.name.as_str();
        match self.datagrams.episode(svc.id, why, now) {
            Some(since) => {
                let more = if since > 0 {
                    format!(" ({since} more since the last such line)")
                } else {
                    String::new()
                };
                info!(event = "datagram_ignored", service = name, peer:% = from;
                    "{name}: ignored a datagram from {from}: {why}{more}; more of these for {}s are logged at debug",
                    REFUSAL_INTERVAL.as_secs());
            }
            None => debug!("{name}: ignored a datagram from {from}: {why}"),
        }
    }

    fn refuse_datagram(
        &mut self,
        idx: usize,
        peer: &Peer,
        key: SourceKey,
        why: RefuseReason,
        now: Instant,
    ) {
        let svc = &mut self.services[idx];
        svc.stats.refused_by[why.kind()] += 1;
        svc.top_refused.record(key);
        if self.refusals.record((svc.id, Some(key), why), now) {
            let name = svc.spec.name.as_str();
            info!(event = "refused", service = name, peer:% = peer;
                "{name}: refused {peer} ({why})");
        }
    }
}

/// Turn the report of each datagram's destination on for an internal
/// service's UDP socket, off for another's (a reload may move a socket
/// from one to the other; a child reading it expects no extra cmsg).
fn want_destination(socket: &Socket, v4: bool, on: bool) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if v4 {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &on)
    } else {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &on)
    }
}

/// recvmsg into a plain byte buffer: the length, the sender as a std
/// address, and where the datagram was sent.
fn recv_datagram(
    socket: &Socket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr, Destination)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
    let mut dest = Destination::Unknown;
    for c in msg.cmsgs().into_iter().flatten() {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(i) => {
                dest = Destination::V4 {
                    header: u32::from_be(i.ipi_addr.s_addr).into(),
                    local: u32::from_be(i.ipi_spec_dst.s_addr).into(),
                }
            }
            ControlMessageOwned::Ipv6PacketInfo(i) => {
                dest = Destination::V6(i.ipi6_addr.s6_addr.into());
            }
            _ => {}
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| std::net::SocketAddr::V4((*v4).into()))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| std::net::SocketAddr::V6((*v6).into()))
                })
        })
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok((msg.bytes, from, dest))
}
