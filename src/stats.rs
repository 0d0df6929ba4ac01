//! A service's counters, kept by the server and read by status
//! (`control.rs`), metrics (`metrics.rs`) and the upgrade state
//! (`upgrade.rs`), with the typed reasons they are counted by: why a
//! client was refused (`RefusalKind`), how a child ended (`ExitOutcome`),
//! each with the label the metrics page prints for it, named once here;
//! and why a service starts no child now (`Pause`), which status and
//! metrics both show. Pure data: nothing here logs or reads the clock.

use std::fmt;
use std::ops::{Index, IndexMut};
use std::time::Instant;

use nix::sys::wait::WaitStatus;

use crate::config::Rate;

/// Why a service starts no child now, first of: its crash hold, its
/// `rate`, the resource back-off over all services. (A service at its
/// `max_instances` is busy, not paused.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// Its children failed too often (`limits::CRASH_LIMIT` in
    /// `limits::CRASH_WINDOW`): held until then.
    CrashHold { until: Instant },
    /// Its `rate` is used up: the next token comes then.
    Rate { rate: Rate, next_token: Instant },
    /// summond ran out of fds or processes: backing off until then.
    Resources { until: Instant },
    /// `summond pause`: until `summond resume`.
    User,
}

impl Pause {
    /// The metrics' `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            Pause::CrashHold { .. } => "crash_hold",
            Pause::Rate { .. } => "rate",
            Pause::Resources { .. } => "resources",
            Pause::User => "user",
        }
    }

    /// As status says it, with the time left at `now`.
    pub fn describe(&self, now: Instant) -> String {
        let left = |until: &Instant| until.saturating_duration_since(now).as_secs_f64();
        match self {
            Pause::CrashHold { until } => format!("crash hold, {:.1}s left", left(until)),
            Pause::Rate { rate, next_token } => {
                format!("rate {rate}, {:.2}s left", left(next_token))
            }
            Pause::Resources { until } => {
                format!("out of fds or processes, {:.1}s left", left(until))
            }
            Pause::User => "until summond resume".into(),
        }
    }
}

/// Why a client was refused, as the metrics' `reason` label counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// An `allow` or `deny` rule.
    Access,
    MaxPerSource,
    PerSourceRate,
    /// A PROXY header from a peer outside `proxy_from`, malformed,
    /// truncated or late.
    Proxy,
    /// A failed or timed-out TLS handshake.
    Tls,
    /// Held for a `unix://` forward backend whose listen backlog stayed
    /// full until `start_timeout` (`server/forward/busy.rs`).
    BackendBusy,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; 6] = [
        RefusalKind::Access,
        RefusalKind::MaxPerSource,
        RefusalKind::PerSourceRate,
        RefusalKind::Proxy,
        RefusalKind::Tls,
        RefusalKind::BackendBusy,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::Access => "access",
            RefusalKind::MaxPerSource => "max_per_source",
            RefusalKind::PerSourceRate => "per_source_rate",
            RefusalKind::Proxy => "proxy",
            RefusalKind::Tls => "tls",
            RefusalKind::BackendBusy => "backend_busy",
        }
    }
}

/// How a child ended, as the metrics' `outcome` label counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitOutcome {
    /// Exit status 0.
    Success,
    /// Any other exit status.
    Failure,
    /// Killed by a signal.
    Signal,
    /// The exec failed: the status is the child's own `_exit`.
    ExecFailed,
}

impl ExitOutcome {
    pub const ALL: [ExitOutcome; 4] = [
        ExitOutcome::Success,
        ExitOutcome::Failure,
        ExitOutcome::Signal,
        ExitOutcome::ExecFailed,
    ];

    /// The outcome of a child that ended with `status`; an exec failure
    /// counts as such whatever the status.
    pub fn of(status: &WaitStatus, exec_failed: bool) -> ExitOutcome {
        match status {
            _ if exec_failed => ExitOutcome::ExecFailed,
            WaitStatus::Signaled(..) => ExitOutcome::Signal,
            WaitStatus::Exited(_, 0) => ExitOutcome::Success,
            _ => ExitOutcome::Failure,
        }
    }

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            ExitOutcome::Success => "success",
            ExitOutcome::Failure => "failure",
            ExitOutcome::Signal => "signal",
            ExitOutcome::ExecFailed => "exec_failed",
        }
    }
}

/// How a child ended, as status and the logs say it ("exited with status
/// 0"): written when shown, not built for every exit.
pub struct ExitText<'a>(pub &'a WaitStatus);

impl fmt::Display for ExitText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            WaitStatus::Exited(_, code) => write!(f, "exited with status {code}"),
            WaitStatus::Signaled(_, sig, core) => write!(
                f,
                "killed by signal {} ({sig}){}",
                *sig as i32,
                if *core { ", core dumped" } else { "" }
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Did the child exit with status 0?
pub fn succeeded(status: &WaitStatus) -> bool {
    matches!(status, WaitStatus::Exited(_, 0))
}

/// An exit without its pid: two exits with the same key read the same.
pub fn exit_key(status: &WaitStatus) -> (i32, i32, bool) {
    match status {
        WaitStatus::Exited(_, code) => (0, *code, false),
        WaitStatus::Signaled(_, sig, core) => (1, *sig as i32, *core),
        _ => (2, 0, false),
    }
}

/// A count per kind, indexed by the kind, read and written (the upgrade
/// state) as the plain array it wraps, in the kind's `ALL` order. A
/// shorter array (from an image that knew fewer kinds, which are only
/// ever added at the end) reads with zeros for the new ones.
macro_rules! per_kind {
    ($(#[$doc:meta])* $name:ident, $kind:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name([u64; $kind::ALL.len()]);

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let read = Vec::<u64>::deserialize(d)?;
                let mut counts = [0; $kind::ALL.len()];
                for (slot, n) in counts.iter_mut().zip(read) {
                    *slot = n;
                }
                Ok($name(counts))
            }
        }

        impl $name {
            /// Each kind with its count, in `ALL` order.
            pub fn iter(&self) -> impl Iterator<Item = ($kind, u64)> + '_ {
                $kind::ALL.into_iter().zip(self.0)
            }

            pub fn total(&self) -> u64 {
                self.0.iter().sum()
            }
        }

        impl From<[u64; $kind::ALL.len()]> for $name {
            fn from(counts: [u64; $kind::ALL.len()]) -> Self {
                $name(counts)
            }
        }

        impl Index<$kind> for $name {
            type Output = u64;
            fn index(&self, k: $kind) -> &u64 {
                &self.0[k as usize]
            }
        }

        impl IndexMut<$kind> for $name {
            fn index_mut(&mut self, k: $kind) -> &mut u64 {
                &mut self.0[k as usize]
            }
        }
    };
}

per_kind!(
    /// Refused clients by reason.
    Refusals,
    RefusalKind
);
per_kind!(
    /// Child exits by outcome.
    Exits,
    ExitOutcome
);

/// Counters for status, metrics and logs; each changes in exactly one place.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Clients admitted (children started, forward clients relayed or
    /// queued); one refused after its admission is taken back out
    /// (`Services::refuse_admitted`).
    pub served: u64,
    pub refused_by: Refusals,
    pub spawn_failures: u64,
    /// Balancers' health checks answered by closing, no child started: a
    /// LOCAL or UNKNOWN PROXY header then a reset, or a TLS handshake
    /// then a reset before a byte. Absent from an older image's upgrade
    /// state.
    #[serde(default)]
    pub health_checks: u64,
    pub last_exit: Option<String>,
    pub exits: Exits,
    pub durations: LazyHistogram,
}

/// Upper bounds of the child run time histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Child run times: counts per bucket (not cumulative), sum and count.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::EMPTY
    }
}

impl Histogram {
    const EMPTY: Histogram = Histogram {
        buckets: [0; DURATION_BUCKETS.len()],
        sum: 0.0,
        count: 0,
    };

    /// Counts per bucket of `DURATION_BUCKETS`, not cumulative.
    pub fn buckets(&self) -> &[u64; DURATION_BUCKETS.len()] {
        &self.buckets
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// A service's `Histogram`, allocated at its first child exit: most of a
/// large config's services never start one, and 104 bytes each add up.
/// Reads and writes (the upgrade state) as the histogram itself, zeros
/// while unallocated, so the format is the one older images know.
#[derive(Clone, Debug, Default)]
pub struct LazyHistogram(Option<Box<Histogram>>);

impl LazyHistogram {
    pub fn observe(&mut self, seconds: f64) {
        self.0.get_or_insert_with(Box::default).observe(seconds);
    }

    pub fn get(&self) -> &Histogram {
        self.0.as_deref().unwrap_or(&Histogram::EMPTY)
    }
}

impl serde::Serialize for LazyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LazyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let h = Histogram::deserialize(d)?;
        Ok(LazyHistogram((h.count > 0).then(|| Box::new(h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn counts_are_indexed_by_kind_and_written_as_arrays() {
        // `as usize` indexes: the declaration order is the `ALL` order.
        for (i, k) in RefusalKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
        for (i, k) in ExitOutcome::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
        let mut s = Stats::default();
        s.refused_by[RefusalKind::PerSourceRate] += 2;
        s.exits[ExitOutcome::Signal] += 1;
        assert_eq!(s.refused_by.total(), 2);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"refused_by\":[0,0,2,0,0,0]"), "{text}");
        assert!(text.contains("\"exits\":[0,0,1,0]"), "{text}");
        let back: Stats = serde_json::from_str(&text).unwrap();
        assert_eq!((back.refused_by, back.exits), (s.refused_by, s.exits));
        // An image that knew three reasons hands over three counts.
        let older = text.replace("[0,0,2,0,0,0]", "[0,0,2]");
        let back: Stats = serde_json::from_str(&older).unwrap();
        assert_eq!(back.refused_by, s.refused_by);
        // One that knew four (before `tls`) hands over four.
        let older = text.replace("[0,0,2,0,0,0]", "[0,0,2,0]");
        let back: Stats = serde_json::from_str(&older).unwrap();
        assert_eq!(back.refused_by, s.refused_by);
        // One that knew five (before `backend_busy`) hands over five.
        let older = text.replace("[0,0,2,0,0,0]", "[0,0,2,0,0]");
        let back: Stats = serde_json::from_str(&older).unwrap();
        assert_eq!(back.refused_by, s.refused_by);
    }

    #[test]
    fn a_pause_reads_the_same_in_status_and_metrics() {
        let now = Instant::now();
        let s = std::time::Duration::from_millis;
        let hold = Pause::CrashHold {
            until: now + s(8000),
        };
        assert_eq!(
            (hold.label(), hold.describe(now).as_str()),
            ("crash_hold", "crash hold, 8.0s left")
        );
        let rate = Pause::Rate {
            rate: Rate {
                count: 2,
                per: s(1000),
            },
            next_token: now + s(250),
        };
        assert_eq!(rate.label(), "rate");
        assert!(
            rate.describe(now).ends_with(", 0.25s left"),
            "{}",
            rate.describe(now)
        );
        let fds = Pause::Resources {
            until: now + s(100),
        };
        assert_eq!(
            (fds.label(), fds.describe(now).as_str()),
            ("resources", "out of fds or processes, 0.1s left")
        );
    }

    #[test]
    fn an_exit_outcome_puts_exec_failure_first() {
        let pid = Pid::from_raw(1);
        let of = ExitOutcome::of;
        assert_eq!(of(&WaitStatus::Exited(pid, 0), false), ExitOutcome::Success);
        assert_eq!(of(&WaitStatus::Exited(pid, 1), false), ExitOutcome::Failure);
        let killed = WaitStatus::Signaled(pid, Signal::SIGKILL, false);
        assert_eq!(of(&killed, false), ExitOutcome::Signal);
        assert_eq!(
            of(&WaitStatus::Exited(pid, 0), true),
            ExitOutcome::ExecFailed
        );
    }

    #[test]
    fn a_histogram_sum_reads_back_exactly_so_an_upgrade_never_lowers_it() {
        // Prometheus takes a `_sum` that goes down for a counter reset: the
        // sum must come out of the upgrade state as the same f64 (seen:
        // 0.18727590700000002 read back as 0.187275907, one ulp lower).
        let mut h = LazyHistogram::default();
        for s in [0.1, 0.087_275_907_000_000_02, 1e-9, 123.456_789_012_345_67] {
            h.observe(s);
            let text = serde_json::to_string(&h).unwrap();
            let back: LazyHistogram = serde_json::from_str(&text).unwrap();
            assert_eq!(back.get().sum.to_bits(), h.get().sum.to_bits(), "{text}");
        }
        let odd = 0.187_275_907_000_000_02_f64;
        let back: f64 = serde_json::from_str(&serde_json::to_string(&odd).unwrap()).unwrap();
        assert_eq!(back.to_bits(), odd.to_bits());
    }

    #[test]
    fn a_lazy_histogram_reads_and_writes_as_the_histogram_it_stands_for() {
        // The upgrade state carries it: older and newer images must agree.
        let empty = LazyHistogram::default();
        assert!(empty.0.is_none());
        let zeros = serde_json::to_string(&Histogram::default()).unwrap();
        assert_eq!(serde_json::to_string(&empty).unwrap(), zeros);
        let back: LazyHistogram = serde_json::from_str(&zeros).unwrap();
        assert!(back.0.is_none(), "zeros stay unallocated");

        let mut used = LazyHistogram::default();
        used.observe(0.2);
        used.observe(700.0);
        let mut plain = Histogram::default();
        plain.observe(0.2);
        plain.observe(700.0);
        let text = serde_json::to_string(&used).unwrap();
        assert_eq!(text, serde_json::to_string(&plain).unwrap());
        let back: LazyHistogram = serde_json::from_str(&text).unwrap();
        assert_eq!((back.get().count, back.get().sum), (2, 700.2));
        assert_eq!(back.get().buckets, plain.buckets);
    }
}
