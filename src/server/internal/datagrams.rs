//! What an internal UDP service must not answer, and how many answers it
//! may send: the source and destination checks, the budget of answers,
//! and the episodes of dropped datagrams that are logged once.

use rustc_hash::{FxHashMap, FxHashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::config::Rate;
use crate::limits::rate::{BucketState, TokenBucket};
use crate::refusals::REFUSAL_INTERVAL;
use crate::server::services::ServiceId;

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

/// Datagrams answered per wake-up of one internal UDP service.
pub(super) const DATAGRAM_BUDGET: usize = 64;

/// What the internal UDP services may answer: the ports summond listens
/// on (a datagram from one is never answered), each service's budget of
/// answers, and when a dropped datagram was last logged.
#[derive(Default)]
pub(in crate::server) struct DatagramGuard {
    own_ports: FxHashSet<u16>,
    answers: FxHashMap<ServiceId, TokenBucket>,
    /// Per service and reason: until when further drops are logged at
    /// debug only, and how many were since the last info line.
    episodes: FxHashMap<(ServiceId, u8), (Instant, u64)>,
}

impl DatagramGuard {
    /// After a config load: the ports summond listens on now, and a
    /// budget of answers for each internal service at its rate (one it
    /// had at the same rate is kept), the others' budgets and episodes
    /// gone.
    pub fn renew(
        &mut self,
        own_ports: FxHashSet<u16>,
        rates: impl Iterator<Item = (ServiceId, Rate)>,
        now: Instant,
    ) {
        self.own_ports = own_ports;
        let mut old = std::mem::take(&mut self.answers);
        for (id, rate) in rates {
            let bucket = old
                .remove(&id)
                .filter(|b| b.rate() == rate)
                .unwrap_or_else(|| TokenBucket::new(rate, now));
            self.answers.insert(id, bucket);
        }
        let answers = &self.answers;
        self.episodes.retain(|(id, _), _| answers.contains_key(id));
    }

    /// The ports summond listens on.
    pub fn own_ports(&self) -> &FxHashSet<u16> {
        &self.own_ports
    }

    /// Spend one of service `id`'s answers, if one is left.
    pub(super) fn take_answer(&mut self, id: ServiceId, now: Instant) -> bool {
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
    pub(super) fn episode(&mut self, id: ServiceId, why: Unanswered, now: Instant) -> Option<u64> {
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

/// Turn the report of each datagram's destination on for an internal
/// service's UDP socket, off for another's (a reload may move a socket
/// from one to the other; a child reading it expects no extra cmsg).
pub(super) fn want_destination(socket: &Socket, v4: bool, on: bool) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    if v4 {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &on)
    } else {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &on)
    }
}

/// recvmsg into a plain byte buffer: the length, the sender as a std
/// address, and where the datagram was sent.
pub(super) fn recv_datagram(
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

#[cfg(test)]
mod tests {
    use super::*;

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
