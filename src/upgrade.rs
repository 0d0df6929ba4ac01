//! Live binary upgrade, the process side: the state one summond image
//! hands the next through `execve` in place (same pid), and the plumbing
//! that carries it. The state is a JSON document in a memfd; the sockets,
//! pipes and the pidfile it names are fds left open across the exec. The
//! old image stays reachable as an fd, so a new binary that cannot start
//! goes back to it with the same state (`Incoming::go_back`).
//!
//! What goes into the state and what it becomes again is the server's
//! business (`server/upgrade.rs`); this module knows the format, the
//! environment variables and the exec.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use serde::{Deserialize, Serialize};

use crate::config::raw_path::{self, Raw};
use crate::config::{Internal, Rate, SourcePrefix};
use crate::limits::rate::BucketState;
use crate::limits::CrashGuardState;
use crate::listener::ListenOptions;
use crate::peer::{Peer, SourceKey};
use crate::queue::QueueHead;

/// The fd of the memfd holding the state.
pub const STATE_ENV: &str = "SUMMOND_UPGRADE_STATE";
/// The fd of the image that wrote the state, to go back to.
pub const OLD_EXE_ENV: &str = "SUMMOND_UPGRADE_OLD_EXE";
/// Set when a new image could not start and the old one comes back: why.
pub const RETURNING_ENV: &str = "SUMMOND_UPGRADE_RETURNING";
const OWN_ENV: &[&str] = &[STATE_ENV, OLD_EXE_ENV, RETURNING_ENV, TEST_READS_ENV];
/// The newest format of the state. A format is bumped when a field
/// changes meaning, or when the state gains parts an image reading only
/// the formats before would drop without a word (serde skips the fields
/// it does not know: forward backends orphaned, held clients' fds left
/// open and never served). An image reading a format it does not know
/// goes back to the image that wrote the state, which serves on with all
/// of it and says why at ERROR. So that an upgrade to an older image still
/// works while there is nothing such an image would lose, a state is
/// written in the lowest format that carries all it holds
/// (`State::lowest_format`).
///
/// 1: everything up to forward mode.
/// 2: forward mode's backends (ready or not), relayed connections and
///    clients held for a starting backend; TLS drainers, and the
///    handshakes they finish for forward services (a front entry an
///    older image would take for a client's own connection).
/// 3: a relayed connection's bytes in flight as a base64 string
///    (`held_bytes`). Images of format 2 kept them in pipes whose fds
///    crossed the exec, or wrote them as an array of numbers (3.6 times
///    their size: seconds to write and read, the loop stopped, when
///    thousands of stalled connections each held 60 KiB).
/// 4: clients held for a ready backend (its `unix://` listen backlog
///    full, `server/forward/busy.rs`). Images of format 3 or less hold
///    clients only while a backend starts: handed a ready backend's,
///    they would neither relay nor refuse them.
pub const FORMAT: u32 = 4;
/// The oldest format this image reads (a state without fields it has
/// added since reads as empty parts: `#[serde(default)]`).
const OLDEST_FORMAT: u32 = 1;
/// The newest format an image reads when the test suite says so (only
/// tests set it): an image standing for an older one.
const TEST_READS_ENV: &str = "SUMMOND_TEST_READS_FORMAT";

/// The variables a service manager hands sockets with: consumed by the
/// first image, so never seen again by the next.
const CONSUMED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
];

/// Everything one image hands the next.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// The version of the image that wrote it.
    pub version: String,
    /// That image's argv, to go back with.
    pub argv: Vec<Vec<u8>>,
    /// The path summond was started from, executed by the next upgrade
    /// (the running file may be deleted by then, replaced by a package).
    #[serde(with = "raw_path::option")]
    pub exe: Option<PathBuf>,
    /// Upgrades done and failed since summond started.
    pub upgrades: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// A reload's config load was running when the image handed over:
    /// an image that goes back loads the config again (a new image that
    /// serves reads it anyway). Absent from an older image's state.
    #[serde(default)]
    pub reload_pending: bool,
    /// `-d`: the process is detached already.
    pub detached: bool,
    /// The RLIMIT_NOFILE summond was started with (soft, hard), which its
    /// children get; the process's own is raised by now.
    pub child_nofile: Option<(u64, u64)>,
    #[serde(with = "pidfile_json")]
    pub pidfile: Option<(RawFd, PathBuf)>,
    pub listeners: Vec<ListenerState>,
    pub children: Vec<ChildState>,
    /// Accepted connections kept through a back-off.
    pub pending: Vec<ConnState>,
    /// A resource back-off episode open at the hand-over, by its delay
    /// in ms: the next image ends it with the one line that says so
    /// (absent from an older image's state).
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Connections of internal services, mid-conversation.
    pub internal: Vec<InternalState>,
    /// Connections whose PROXY header was awaited (absent from the state
    /// of an image that had none).
    #[serde(default)]
    pub front: Vec<FrontState>,
    /// Counters by service name.
    pub stats: Vec<(String, crate::stats::Stats)>,
    /// The services `summond pause` holds, by name (absent from an older
    /// image's state).
    #[serde(default)]
    pub paused: Vec<String>,
    /// Process groups `max_runtime` sent SIGTERM whose SIGKILL is still
    /// due (absent from the state of an image that did not carry them).
    #[serde(default)]
    pub stopping_groups: Vec<StoppingState>,
    /// The crash guard and rate buckets of services, by name (absent
    /// from the state of an image that did not carry them).
    #[serde(default)]
    pub limits: Vec<LimitsState>,
    /// When the hand-over was, in CLOCK_MONOTONIC nanoseconds: every time
    /// above is a duration from that moment ("ran for", "due in"). That
    /// clock goes on across the exec, so the reading image measures them
    /// from it, not from its own start (which comes after the exec, the
    /// config load, or a failed attempt of the next image). Absent from
    /// an older image's state: measured from the reader's start, as then.
    #[serde(default)]
    pub handed_over_at_ns: Option<u64>,
    /// Forward mode's ready backends and the connections relayed to them,
    /// bytes in flight included (absent from an older image's state).
    #[serde(default)]
    pub backends: Vec<BackendState>,
    #[serde(default)]
    pub relays: Vec<RelayState>,
    /// Forward backends starting, stopping or retired by a reload, each
    /// with its deadline (absent from an older image's state, which
    /// stopped them before its exec; kept out of `backends` so such an
    /// image, reading this one's, does not take them for ready).
    #[serde(default)]
    pub unready_backends: Vec<BackendState>,
    /// Clients held while their backend starts (absent from an older
    /// image's state, which closed them).
    #[serde(default)]
    pub waiting: Vec<WaitingState>,
    /// Drainers (TLS connections of earlier images, each in a process
    /// of its own) still running: reaped and stopped by the next image.
    #[serde(default)]
    pub drainers: Vec<DrainerState>,
    /// The config the writing image ran, in its own format: if the next
    /// image cannot start, the old one serves on with it, whatever the
    /// file says by then (a key only the new binary knows, an address that
    /// cannot be bound). Only the image that wrote it reads it, so it is
    /// kept as JSON text, never parsed by the next image.
    pub config: Option<String>,
}

impl State {
    /// The parts of this state an image reading format 1 only would drop,
    /// in words ("2 forward backends, 1 relayed connection"), or None.
    pub fn beyond_format_1(&self) -> Option<String> {
        let parts = [
            (
                self.backends.len() + self.unready_backends.len(),
                "forward backend",
            ),
            (self.relays.len(), "relayed connection"),
            (self.waiting.len(), "held client"),
            (self.drainers.len(), "TLS drainer"),
            (
                self.front.iter().filter(|f| f.drained).count(),
                "drained TLS handshake",
            ),
        ];
        let said: Vec<String> = (parts.iter())
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        (!said.is_empty()).then(|| said.join(", "))
    }

    /// The lowest format that carries everything this state holds.
    pub fn lowest_format(&self) -> u32 {
        let flows = self.relays.iter().flat_map(|r| r.flows.iter());
        if self.held_for_a_ready_backend() {
            4
        } else if flows.into_iter().any(|f| !f.held.is_empty()) {
            3
        } else if self.beyond_format_1().is_some() {
            2
        } else {
            1
        }
    }
}

impl State {
    /// Does a client wait for a backend that is ready (`backends` holds
    /// only those): held for its full backlog?
    fn held_for_a_ready_backend(&self) -> bool {
        (self.waiting.iter()).any(|w| self.backends.iter().any(|b| b.service == w.service))
    }
}

/// The newest format this image reads: `FORMAT`, or less when the test
/// suite stands this image for an older one.
fn newest_readable() -> u32 {
    let test = std::env::var(TEST_READS_ENV).ok();
    test.and_then(|v| v.parse().ok())
        .map_or(FORMAT, |n: u32| n.min(FORMAT))
}

/// A forward service's ready backend.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackendState {
    pub service: String,
    pub pid: i32,
    /// Where it listens: it is adopted only by a service forwarding there
    /// with the same program.
    pub to: String,
    pub exec: Vec<String>,
    pub ready_in_us: Option<u64>,
    pub relayed: u64,
    pub up: u64,
    pub down: u64,
    /// Where it is in its life (ready in an older image's state).
    #[serde(default)]
    pub phase: BackendPhase,
    /// Its NOTIFY_SOCKET (`ready = "notify"`), still read for STATUS=.
    #[serde(default)]
    pub notify_fd: Option<RawFd>,
    /// The last STATUS= it sent.
    #[serde(default)]
    pub status: Option<String>,
    /// The processes of its tree its stop read (stopping or retired):
    /// the SIGKILL at its exit reaches the daemons among them (none in
    /// an older image's state).
    #[serde(default)]
    pub tree: Vec<ProcessState>,
}

/// A process of a backend's tree: with its start time, one process (a
/// pid reused later is not it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcessState {
    pub pid: i32,
    /// Clock ticks since boot, as /proc/PID/stat gives it.
    pub start: u64,
    pub pgid: i32,
}

/// A backend's phase at the hand-over; times in nanoseconds from it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub enum BackendPhase {
    #[default]
    Ready,
    /// Not ready yet: started `age_ns` before, its start_timeout due in
    /// `timeout_in_ns`.
    Starting { age_ns: u64, timeout_in_ns: u64 },
    /// SIGTERM sent; the SIGKILL to its group due in `kill_in_ns`.
    Stopping { kill_in_ns: u64 },
    /// A reload retired it: it finishes its relayed connections, then
    /// gets SIGTERM and, `stop_timeout_ns` later, SIGKILL (due in
    /// `kill_in_ns` once SIGTERM went).
    Retired {
        stop_timeout_ns: u64,
        kill_in_ns: Option<u64>,
    },
}

/// A client held while its service's backend starts: nothing of it was
/// read, so the next image relays it from its first byte.
#[derive(Debug, Serialize, Deserialize)]
pub struct WaitingState {
    pub service: String,
    pub fd: RawFd,
    pub peer: Peer,
    pub source: Option<SourceKey>,
    /// A socket pair's end whose other end a drainer relays a TLS
    /// session to: its PROXY header (if any) is built with `names`.
    #[serde(default)]
    pub framed: bool,
    /// The ALPN protocol and server name its client asked for.
    #[serde(default)]
    pub names: crate::relay::preamble::Names,
    /// Held for a full `unix://` backlog: the time left until it is
    /// refused (absent from an older image's state: its hold starts
    /// again).
    #[serde(default)]
    pub held_left_ns: Option<u64>,
}

/// A drainer an image forked at a live upgrade (`server/drainer.rs`).
#[derive(Debug, Serialize, Deserialize)]
pub struct DrainerState {
    pub pid: i32,
    /// Its forward-mode connections still open: service, backend pid,
    /// source (the backend counts each open until the drainer says it
    /// ended, or has ended).
    pub relays: Vec<(String, i32, Option<crate::peer::SourceKey>)>,
    /// The number the drainer names each of `relays` by at its end (absent
    /// from an older state: their places).
    #[serde(default)]
    pub numbers: Vec<u32>,
    /// The read end of the pipe it writes those numbers on.
    #[serde(default)]
    pub ends: Option<i32>,
}

/// A relayed connection: its sockets and its flows (pipes or bytes).
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayState {
    pub service: String,
    /// Its backend's pid.
    pub pid: i32,
    pub peer: Peer,
    pub source: Option<SourceKey>,
    pub sides: [crate::relay::SideState; 2],
    pub flows: [crate::relay::FlowState; 2],
    /// Its `max_runtime` deadline, in nanoseconds after the hand-over
    /// (absent from an older image's state, or without one).
    #[serde(default)]
    pub runtime_left_ns: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerState {
    pub fd: RawFd,
    pub addr: String,
    /// The socket file summond created (path, device, inode), removed when
    /// the listener closes.
    #[serde(with = "file_json")]
    pub file: Option<(PathBuf, u64, u64)>,
    /// The options it was opened or last set with (absent from an older
    /// image's state; none for a socket handed to summond and never set).
    #[serde(default)]
    pub options: Option<ListenOptions>,
    /// A socket the service manager handed: the TCP_DEFER_ACCEPT it came
    /// with (absent from an older image's state, and for other sockets).
    #[serde(default)]
    pub handed: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChildState {
    pub pid: i32,
    /// The service it belongs to now; none if a reload removed it.
    pub service: Option<String>,
    /// The service's name when it started, for its log lines.
    pub name: String,
    pub peer: Option<Peer>,
    pub source: Option<SourceKey>,
    /// How long it has run, in nanoseconds.
    pub age_ns: u64,
    pub exec_failed: bool,
    /// Sockets a pass-mode child holds, with what waited on each.
    pub held: Vec<(String, QueueHead)>,
    /// Its own `max_runtime` deadline, as it started with it: a reload or
    /// upgrade since changes only the next child's. Absent from the
    /// state of an image that did not carry it (the service's applies).
    #[serde(default)]
    pub runtime: Option<RuntimeLeft>,
    /// A long-running child's NOTIFY_SOCKET (left open across the exec,
    /// so what it says after the upgrade is heard) and what it said
    /// there. Absent from an older image's state, or for a child without
    /// one: shown not ready then.
    #[serde(default)]
    pub notify: Option<NotifyState>,
}

/// A child's NOTIFY_SOCKET and its readiness across an upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyState {
    pub fd: RawFd,
    pub ready: bool,
    pub status: Option<String>,
    /// How long after the hand-over its `ready_timeout` is due, in
    /// nanoseconds; none once ready, or without a `ready_timeout`.
    pub ready_in_ns: Option<u64>,
    /// `ready_timeout` stopped it already: its end is a failed start.
    pub timed_out: bool,
}

/// A child's `max_runtime` deadline across an upgrade.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RuntimeLeft {
    /// How long after the hand-over it is due, in nanoseconds; none if
    /// the child has no deadline (or its SIGTERM has gone already).
    pub left_ns: Option<u64>,
}

/// What a service's limits remember, for the service of the same name
/// in the next image (taken as a reload would keep it).
#[derive(Debug, Serialize, Deserialize)]
pub struct LimitsState {
    pub service: String,
    pub crash: Option<CrashGuardState>,
    /// The `rate` bucket, and whether its pause was logged.
    pub rate: Option<(BucketState, bool)>,
    /// The `per_source_rate` buckets that are not full, with the setting
    /// and prefix they were made for.
    pub sources: Option<SourcesState>,
    /// An internal UDP service's budget of answers.
    #[serde(default)]
    pub answers: Option<BucketState>,
    /// The clients refused most, for status.
    #[serde(default)]
    pub top_refused: Vec<(SourceKey, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SourcesState {
    pub rate: Option<Rate>,
    pub prefix: SourcePrefix,
    pub buckets: Vec<(SourceKey, BucketState)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StoppingState {
    /// The group's id: its leader's pid.
    pub pgid: i32,
    /// The leader's service name, for the log line.
    pub name: String,
    pub peer: Option<Peer>,
    /// How long ago the leader started, in nanoseconds (as `ChildState`).
    pub age_ns: u64,
    /// How long until the SIGKILL, in nanoseconds.
    pub kill_in_ns: u64,
    /// The leader has been reaped already: only by an image from before
    /// leaders were held until the SIGKILL (its group gets none).
    pub leader_reaped: bool,
    /// How long before the hand-over the leader exited, in nanoseconds:
    /// its zombie is held, unreaped, until the SIGKILL (none while it
    /// runs, or from an older image: the next image sees the exit itself).
    #[serde(default)]
    pub exited_ns: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConnState {
    pub fd: RawFd,
    pub addr: String,
    pub name: String,
    pub peer: Peer,
    pub greeted: bool,
}

/// A connection whose PROXY header was awaited. Nothing of it was read
/// (the header is peeked until complete), so the next image reads it
/// from the start.
#[derive(Debug, Serialize, Deserialize)]
pub struct FrontState {
    pub fd: RawFd,
    /// The listener it came on.
    pub addr: String,
    pub service: String,
    /// The balancer.
    pub peer: Peer,
    pub version: crate::proxy::Version,
    /// What was left of its time for the header, in nanoseconds (or of
    /// its `LOCAL_WAIT`, with `local`).
    pub left_ns: u64,
    /// A header its balancer sent for itself, already read off the
    /// socket: it waits for its first byte or close (`Work::Local`).
    /// Absent from an older image's state.
    #[serde(default)]
    pub local: Option<crate::proxy::Header>,
    /// A socket pair's end whose other end a drainer finishes a forward
    /// service's TLS handshake on (`Work::Drained`); `source` is then the
    /// client's per-source key. Absent from an older image's state.
    #[serde(default)]
    pub drained: bool,
    #[serde(default)]
    pub source: Option<SourceKey>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InternalState {
    pub fd: RawFd,
    pub service: String,
    pub kind: Internal,
    pub peer: Peer,
    pub source: Option<SourceKey>,
    /// Output accepted but not yet written.
    pub unsent: Vec<u8>,
    pub line: usize,
    pub one_shot: bool,
    /// Its idle timeout and how long it had been silent at the hand-over,
    /// in nanoseconds (absent from an older image's state: the clock
    /// starts again).
    #[serde(default)]
    pub idle: Option<(u64, u64)>,
}

/// `State::pidfile`, its path as `raw_path` writes it.
mod pidfile_json {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        v: &Option<(RawFd, PathBuf)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|(fd, p)| (fd, Raw(p.clone()))).serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(RawFd, PathBuf)>, D::Error> {
        Ok(Option::<(RawFd, Raw)>::deserialize(d)?.map(|(fd, p)| (fd, p.0)))
    }
}

/// `ListenerState::file`, its path as `raw_path` writes it.
mod file_json {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        v: &Option<(PathBuf, u64, u64)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|(p, dev, ino)| (Raw(p.clone()), dev, ino))
            .serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(PathBuf, u64, u64)>, D::Error> {
        Ok(Option::<(Raw, u64, u64)>::deserialize(d)?.map(|(p, dev, ino)| (p.0, dev, ino)))
    }
}

/// A relayed flow's bytes in flight (`FlowState::held`): written as a
/// base64 string (format 3); read from that or from format 2's array of
/// numbers.
pub mod held_bytes {
    use serde::de::{self, SeqAccess, Visitor};
    use std::fmt;

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    /// Each byte's value in `ALPHABET`, 255 for one not in it.
    const VALUE: [u8; 256] = {
        let mut t = [255u8; 256];
        let mut i = 0;
        while i < 64 {
            t[ALPHABET[i] as usize] = i as u8;
            i += 1;
        }
        t
    };

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(Held)
    }

    struct Held;

    impl<'de> Visitor<'de> for Held {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 text or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            decode(v).ok_or_else(|| E::custom("held bytes: not base64"))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
            for i in 0..4 {
                out.push(match i <= chunk.len() {
                    true => ALPHABET[(n >> (18 - 6 * i) & 63) as usize],
                    false => b'=',
                });
            }
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// None for text that is not padded base64 of this alphabet.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if text.len() % 4 != 0 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        for (i, quad) in text.chunks(4).enumerate() {
            let last = i + 1 == text.len() / 4;
            let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return None;
            }
            let mut n = 0u32;
            for &c in &quad[..4 - pad] {
                let v = VALUE[c as usize];
                if v == 255 {
                    return None;
                }
                n = n << 6 | v as u32;
            }
            n <<= 6 * pad as u32;
            out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
        }
        Some(out)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds, and the `Instant` of the same
/// moment (std's `Instant` reads that clock on Linux; the two are read
/// one after the other, so they differ by a clock read).
fn monotonic_now() -> Option<(u64, Instant)> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let at = Instant::now();
    let ns = u64::try_from(ts.tv_sec())
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(ts.tv_nsec()).ok()?)?;
    Some((ns, at))
}

/// `at` in CLOCK_MONOTONIC nanoseconds, for the state.
pub fn monotonic_ns(at: Instant) -> Option<u64> {
    let (ns, now) = monotonic_now()?;
    let back = u64::try_from(now.saturating_duration_since(at).as_nanos()).ok()?;
    ns.checked_sub(back)
}

/// The `Instant` of a CLOCK_MONOTONIC time in nanoseconds (the hand-over,
/// read from the state); never later than now.
pub fn instant_of(ns: u64) -> Option<Instant> {
    let (now_ns, now) = monotonic_now()?;
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns)))
}

impl State {
    /// Every fd the state names: they must survive the exec.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        fds.extend(self.pending.iter().map(|c| c.fd));
        fds.extend(self.internal.iter().map(|c| c.fd));
        fds.extend(self.front.iter().map(|c| c.fd));
        fds.extend(self.waiting.iter().map(|c| c.fd));
        let backends = self.backends.iter().chain(&self.unready_backends);
        fds.extend(backends.filter_map(|b| b.notify_fd));
        fds.extend(
            self.children
                .iter()
                .filter_map(|c| Some(c.notify.as_ref()?.fd)),
        );
        for r in &self.relays {
            fds.extend(r.sides.iter().map(|s| s.fd));
            fds.extend(
                r.flows
                    .iter()
                    .filter_map(|f| f.pipe)
                    .flat_map(|(a, b)| [a, b]),
            );
        }
        fds.extend(self.pidfile.as_ref().map(|p| p.0));
        fds.extend(self.drainers.iter().filter_map(|d| d.ends));
        fds
    }
}

/// The state this process was started with by a previous image.
#[derive(Debug)]
pub struct Incoming {
    pub state: State,
    handover: Handover,
}

/// The fds an upgrade arrives with, before the state is read.
#[derive(Debug)]
struct Handover {
    memfd: OwnedFd,
    old_exe: Option<OwnedFd>,
    returning: Option<String>,
}

/// What `take` found.
#[derive(Debug)]
pub enum Taken {
    /// A normal start.
    Fresh,
    Ready(Box<Incoming>),
    /// The variables are there but the state cannot be used: go back with
    /// `GoBack::go_back` at once, if there is a way back.
    Unreadable(String, Option<GoBack>),
}

/// A way back to the previous image when the state cannot even be read.
#[derive(Debug)]
pub struct GoBack(Handover);

impl GoBack {
    /// Nothing of the state was touched (every fd it names is still open
    /// and not close-on-exec), so the old image finds it all again.
    pub fn go_back(self, why: &str) -> io::Error {
        go_back(&self.0, &[], &own_argv(), why)
    }
}

/// Read and consume the upgrade variables. Call before anything marks
/// inherited fds close-on-exec.
pub fn take() -> Taken {
    let Some(state_var) = std::env::var_os(STATE_ENV) else {
        return Taken::Fresh;
    };
    let exe_var = std::env::var_os(OLD_EXE_ENV);
    let returning = std::env::var(RETURNING_ENV).ok();
    let readable = newest_readable();
    // Consumed here, so no child (or later image) sees them.
    for var in OWN_ENV {
        std::env::remove_var(var);
    }
    let memfd = match claim_fd(&state_var) {
        Ok(fd) => fd,
        // Without the state nothing can be served, by this image or the
        // old one.
        Err(e) => return Taken::Unreadable(format!("no upgrade state: {e}"), None),
    };
    let handover = Handover {
        memfd,
        old_exe: exe_var.and_then(|v| claim_fd(&v).ok()),
        returning,
    };
    match read_state(&handover.memfd) {
        Ok(state) if (OLDEST_FORMAT..=readable).contains(&state.format) => {
            Taken::Ready(Box::new(Incoming { state, handover }))
        }
        Ok(state) => Taken::Unreadable(
            format!(
                "the state from summond {} has format {}; this binary reads formats \
                 {OLDEST_FORMAT} to {readable}",
                state.version, state.format
            ),
            Some(GoBack(handover)),
        ),
        Err(e) => Taken::Unreadable(
            format!("cannot read the upgrade state: {e}"),
            Some(GoBack(handover)),
        ),
    }
}

impl Incoming {
    /// This process is the old image, back after a new one failed: why it
    /// failed.
    pub fn returning(&self) -> Option<&str> {
        self.handover.returning.as_deref()
    }

    /// This image cannot start: execute the old one again with the same
    /// state, telling it `why`. Returns only if that is impossible (this is
    /// the old image already, or the exec failed).
    pub fn go_back(self, why: &str) -> io::Error {
        go_back(&self.handover, &self.state.fds(), &self.state.argv, why)
    }

    /// Back after a failed upgrade: the config this image ran before it.
    /// The image that wrote the state refuses to upgrade without it, so
    /// its absence is a fault worth a line: the file is read instead, and
    /// if that fails too there is no summond left.
    pub fn config_ran(&self) -> Option<crate::config::Config> {
        self.returning()?;
        let read = match self.state.config.as_deref() {
            Some(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
            None => Err("the upgrade state holds none".to_string()),
        };
        match read {
            Ok(config) => Some(config),
            Err(e) => {
                log::error!(
                    "upgrade: cannot read the config this image ran ({e}); reading the file again"
                );
                None
            }
        }
    }

    /// The image serves: the memfd and the old image are not needed.
    pub fn done(self) -> State {
        self.state
    }
}

/// Execute the old image with the state in `h` (naming `fds`), the old
/// image's `argv` and `why` this one could not start.
fn go_back(h: &Handover, fds: &[RawFd], argv: &[Vec<u8>], why: &str) -> io::Error {
    let Some(old_exe) = &h.old_exe else {
        return io::Error::other("there is no previous binary to go back to");
    };
    if h.returning.is_some() {
        return io::Error::other("the previous binary cannot start either");
    }
    let mut fds = fds.to_vec();
    fds.push(h.memfd.as_raw_fd());
    let Ok(why) = CString::new(format!("{RETURNING_ENV}={why}").replace('\0', " ")) else {
        return io::Error::other("unreachable: NUL removed");
    };
    let state_var = format!("{STATE_ENV}={}", h.memfd.as_raw_fd());
    exec_keeping(&fds, argv, &[state_var.as_str()], |argv, env| {
        let mut env = env.to_vec();
        env.push(why);
        nix::unistd::fexecve(old_exe, argv, &env)
    })
}

/// Execute `exe` in place with `state`; returns only on failure, with
/// every fd as it was.
pub fn exec_new(exe: &Path, state: &State) -> io::Error {
    let Ok(path) = CString::new(exe.as_os_str().as_bytes()) else {
        return io::Error::other("the binary's path has a NUL byte");
    };
    // The running image, to come back to: opened now, so it is this
    // file even if a package manager has since replaced the path.
    let old = match File::open("/proc/self/exe") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return io::Error::other(format!("cannot open /proc/self/exe: {e}")),
    };
    let memfd = match write_state(state) {
        Ok(f) => f,
        Err(e) => return io::Error::other(format!("cannot write the upgrade state: {e}")),
    };
    let mut fds = state.fds();
    fds.push(memfd.as_raw_fd());
    fds.push(old.as_raw_fd());
    let vars = [
        format!("{STATE_ENV}={}", memfd.as_raw_fd()),
        format!("{OLD_EXE_ENV}={}", old.as_raw_fd()),
    ];
    let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
    exec_keeping(&fds, &state.argv, &vars, |argv, env| {
        nix::unistd::execve(&path, argv, env)
    })
}

/// Leave `fds` open across exec and run `exec` with `argv` and this
/// process's environment plus `vars` (without the variables that were
/// for this image only). On failure the fds are close-on-exec again.
fn exec_keeping(
    fds: &[RawFd],
    argv: &[Vec<u8>],
    vars: &[&str],
    exec: impl FnOnce(&[CString], &[CString]) -> nix::Result<std::convert::Infallible>,
) -> io::Error {
    if let Err(e) = fds.iter().try_for_each(|fd| set_cloexec(*fd, false)) {
        restore_cloexec(fds);
        return e;
    }
    let argv: Vec<CString> = argv
        .iter()
        .filter_map(|a| CString::new(a.clone()).ok())
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !CONSUMED_ENV.contains(&k.as_ref()) && !OWN_ENV.contains(&k.as_ref())
        })
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    env.extend(vars.iter().filter_map(|v| CString::new(*v).ok()));
    let err = match exec(&argv, &env) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    };
    restore_cloexec(fds);
    err
}

fn restore_cloexec(fds: &[RawFd]) {
    for fd in fds {
        let _ = set_cloexec(*fd, true);
    }
}

/// The argv this process was started with.
pub fn own_argv() -> Vec<Vec<u8>> {
    std::env::args_os().map(OsString::into_vec).collect()
}

fn write_state(state: &State) -> io::Result<File> {
    let json = serde_json::to_vec(state).map_err(io::Error::other)?;
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"summond-upgrade".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&json)?;
    Ok(file)
}

fn read_state(fd: &OwnedFd) -> io::Result<State> {
    let mut text = String::new();
    let mut file = File::from(fd.try_clone()?);
    file.rewind()?;
    file.read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

/// The open fd a variable names, now owned by the caller.
fn claim_fd(var: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let fd: RawFd = var
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| io::Error::other(format!("{var:?} is not an fd number")))?;
    // SAFETY: F_GETFD only reads a descriptor flag.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::other(format!("fd {fd} is not open")));
    }
    // SAFETY: the previous image left this fd open for us to own, and
    // nothing else in this process has taken it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change a descriptor flag.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let new = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, new) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A duplicate of `fd`, close-on-exec, for the new image to use while the
/// original stays as the state names it (to go back with) until it serves.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd we own, or fails.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_time_comes_back_as_the_same_instant() {
        let before = Instant::now() - Duration::from_secs(5);
        let ns = monotonic_ns(before).unwrap();
        let back = instant_of(ns).unwrap();
        let off = if back > before {
            back - before
        } else {
            before - back
        };
        // Two clock reads apart at most, each way.
        assert!(off < Duration::from_millis(50), "{off:?}");
        assert!(
            instant_of(u64::MAX).unwrap() <= Instant::now(),
            "never later than now"
        );
    }

    #[test]
    fn a_state_survives_its_memfd_and_names_its_fds() {
        let state = State {
            format: FORMAT,
            version: "1.2.3".into(),
            argv: vec![b"summond".to_vec(), b"-c".to_vec(), b"/x.toml".to_vec()],
            pidfile: Some((9, "/run/summond.pid".into())),
            listeners: vec![ListenerState {
                fd: 5,
                addr: "tcp://127.0.0.1:7".into(),
                file: None,
                options: None,
                handed: Some(0),
            }],
            children: vec![ChildState {
                pid: 42,
                service: Some("echo".into()),
                name: "echo".into(),
                peer: Some(Peer::Unknown),
                source: Some(SourceKey::Uid(7)),
                age_ns: 5,
                exec_failed: false,
                held: vec![("udp://127.0.0.1:9".into(), QueueHead::Empty)],
                runtime: Some(RuntimeLeft { left_ns: None }),
                notify: Some(NotifyState {
                    fd: 6,
                    ready: true,
                    status: Some("up".into()),
                    ready_in_ns: None,
                    timed_out: false,
                }),
            }],
            ..State::default()
        };
        let f = write_state(&state).unwrap();
        let back = read_state(&OwnedFd::from(f)).unwrap();
        assert_eq!(back.children[0].held[0].0, "udp://127.0.0.1:9");
        let notify = back.children[0].notify.as_ref().unwrap();
        assert_eq!((notify.ready, notify.status.as_deref()), (true, Some("up")));
        assert_eq!(back.fds(), vec![5, 6, 9]);
    }

    #[test]
    fn a_stopping_group_of_an_older_image_still_reads() {
        // Before held leaders: no exit time; the image before that wrote
        // the members of a reaped leader's group, read and ignored now.
        let json = r#"{"pgid": 42, "name": "x", "peer": null, "age_ns": 5,
            "kill_in_ns": 7, "leader_reaped": true,
            "members": [{"pid": 43, "start": 99}]}"#;
        let g: StoppingState = serde_json::from_str(json).unwrap();
        assert!(g.leader_reaped);
        assert_eq!((g.pgid, g.kill_in_ns, g.exited_ns), (42, 7, None));
    }

    #[test]
    fn a_state_of_an_image_that_carried_less_still_reads() {
        let state = State {
            format: FORMAT,
            listeners: vec![ListenerState {
                fd: 5,
                addr: "unix:///run/x.sock".into(),
                file: Some(("/run/x.sock".into(), 1, 2)),
                options: Some(ListenOptions::default()),
                handed: Some(1),
            }],
            children: vec![ChildState {
                pid: 42,
                service: None,
                name: "x".into(),
                peer: None,
                source: None,
                age_ns: 5,
                exec_failed: false,
                held: Vec::new(),
                runtime: Some(RuntimeLeft { left_ns: Some(7) }),
                notify: None,
            }],
            ..State::default()
        };
        let mut json = serde_json::to_value(&state).unwrap();
        // What an image before these fields wrote.
        json.as_object_mut().unwrap().remove("limits");
        json["listeners"][0]
            .as_object_mut()
            .unwrap()
            .remove("options");
        json["listeners"][0]
            .as_object_mut()
            .unwrap()
            .remove("handed");
        json["children"][0]
            .as_object_mut()
            .unwrap()
            .remove("runtime");
        json["children"][0]
            .as_object_mut()
            .unwrap()
            .remove("notify");
        let old: State = serde_json::from_value(json).unwrap();
        assert!(old.limits.is_empty());
        assert_eq!(old.listeners[0].options, None);
        assert_eq!(old.listeners[0].handed, None);
        assert!(old.children[0].runtime.is_none(), "the service's applies");
        assert!(old.children[0].notify.is_none(), "shown not ready");
    }

    /// Format 1 unless the state holds what an image reading format 1
    /// only would drop (it refuses format 2 and goes back instead).
    #[test]
    fn a_state_is_written_in_the_lowest_format_that_carries_it() {
        let mut state = State::default();
        assert_eq!((state.lowest_format(), state.beyond_format_1()), (1, None));
        let backend = |pid| ready_backend("web", pid, "tcp://127.0.0.1:8080");
        state.backends.push(backend(7));
        state.unready_backends.push(backend(8));
        assert_eq!(state.lowest_format(), 2);
        assert_eq!(state.beyond_format_1().unwrap(), "2 forward backends");
    }

    /// A ready backend of `service`, for the tests of the state's format.
    fn ready_backend(service: &str, pid: i32, to: &str) -> BackendState {
        BackendState {
            service: service.into(),
            pid,
            to: to.into(),
            exec: vec![service.into()],
            ready_in_us: None,
            relayed: 0,
            up: 0,
            down: 0,
            phase: BackendPhase::Ready,
            notify_fd: None,
            status: None,
            tree: Vec::new(),
        }
    }

    /// A client held for a ready backend (its full backlog) makes the
    /// state format 4: an image of format 3 would neither relay nor
    /// refuse it. Held for a starting one, or another service's, it is
    /// format 2 as before.
    #[test]
    fn a_client_held_for_a_ready_backend_makes_the_state_format_4() {
        let backend = |service: &str| ready_backend(service, 7, "unix:///run/app/b.sock");
        let held = WaitingState {
            service: "app".into(),
            fd: 9,
            peer: Peer::Unknown,
            source: None,
            framed: false,
            names: Default::default(),
            held_left_ns: None,
        };
        let mut state = State::default();
        state.waiting.push(held);
        state.unready_backends.push(backend("app"));
        state.backends.push(backend("web"));
        assert_eq!(state.lowest_format(), 2, "held for a start");
        state.backends.push(backend("app"));
        assert_eq!(state.lowest_format(), 4);
        assert_eq!(FORMAT, 4);
    }

    /// A flow's held bytes go as base64 (format 3), every length and byte
    /// back as it was; format 2's array of numbers still reads; text
    /// that is not base64 is refused.
    #[test]
    fn held_bytes_go_as_base64_and_format_2s_arrays_still_read() {
        use crate::relay::FlowState;
        for len in [0, 1, 2, 3, 4, 5, 61_440, 65_536] {
            let held: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let st = FlowState {
                pending: len,
                held: held.clone(),
                ..FlowState::default()
            };
            let json = serde_json::to_string(&st).unwrap();
            assert!(
                json.len() < 200 + len * 4 / 3 + 4,
                "{len}: {} bytes",
                json.len()
            );
            let back: FlowState = serde_json::from_str(&json).unwrap();
            assert!(back.held == held, "{len} bytes differ");
        }
        assert_eq!(held_bytes::encode(b"summond"), "c3VtbW9uZA==");
        let old = r#"{"spliced":false,"pipe":null,"pending":3,"held":[1,2,255],"eof":false,"shut":false,"bytes":0}"#;
        assert_eq!(
            serde_json::from_str::<FlowState>(old).unwrap().held,
            [1, 2, 255]
        );
        for bad in ["c3VtbW9uZA=", "c3Vt!W9u", "c3==bW9u", "c==="] {
            assert_eq!(held_bytes::decode(bad), None, "{bad}");
        }
    }

    /// A relayed connection's bytes in flight make the state format 3:
    /// an image of format 2 refuses it and goes back, keeping them.
    #[test]
    fn bytes_in_flight_make_the_state_format_3() {
        use crate::relay::{FlowState, SideState};
        let side = SideState {
            fd: 3,
            connecting: false,
            spliced: true,
            check: false,
            reset: false,
        };
        let relay = |held: Vec<u8>| RelayState {
            service: "web".into(),
            pid: 7,
            peer: Peer::Unknown,
            source: None,
            sides: [side, side],
            flows: [
                FlowState {
                    pending: held.len(),
                    held,
                    ..FlowState::default()
                },
                FlowState::default(),
            ],
            runtime_left_ns: None,
        };
        let mut state = State::default();
        state.relays.push(relay(Vec::new()));
        assert_eq!(state.lowest_format(), 2);
        state.relays.push(relay(b"in flight".to_vec()));
        assert_eq!(state.lowest_format(), 3);
    }

    /// Paths are bytes (fs review findings 3, 7): a binary, pidfile or
    /// socket file whose path is not UTF-8 made the state unwritable.
    #[test]
    fn paths_in_the_state_that_are_not_utf8_come_back_as_they_were() {
        let odd = |s: &str| {
            let mut bytes = s.as_bytes().to_vec();
            bytes.push(0xff);
            PathBuf::from(OsString::from_vec(bytes))
        };
        let state = State {
            format: FORMAT,
            exe: Some(odd("/opt/summond")),
            pidfile: Some((9, odd("/run/summond.pid"))),
            listeners: vec![ListenerState {
                fd: 5,
                addr: "unix:///run/c.sock".into(),
                file: Some((odd("/run/c.sock"), 1, 2)),
                options: None,
                handed: None,
            }],
            ..State::default()
        };
        let f = write_state(&state).unwrap();
        let back = read_state(&OwnedFd::from(f)).unwrap();
        assert_eq!(back.exe, state.exe);
        assert_eq!(back.pidfile, state.pidfile);
        assert_eq!(back.listeners[0].file, state.listeners[0].file);
    }
}
