//! Deadlines, in one ordered map (`Timer` names each kind): for a
//! service, its crash hold ending and its `rate` token coming back; for a
//! child, its `max_runtime` running out and the SIGKILL that follows an
//! ignored SIGTERM; for a client of the control socket or the metrics
//! listener, its time to finish; for a connection awaiting its PROXY
//! header, its 5 s (cancelled when the header is read); for the helpers, the upgrade check and a
//! reload's config load running long; and the watchdog's ping. O(log n)
//! to add, to cancel and to take the next; nothing scans the children.
//! A timer whose reason can end first is cancelled then by the key `add`
//! returned (a child's `max_runtime` when it exits: otherwise a service
//! with `max_runtime = "1d"` would keep a day's worth of entries for
//! children long gone; a scrape or control client when it closes). The
//! others are short-lived or one at a time; each names what it is for (a
//! child by pid and start time, so a reused pid is never hit) and the
//! server checks that it still applies when it fires. Three deadlines
//! are kept by their owners instead and the loop waits for the earliest
//! of all (`Server::next_deadline`): internal connections' idle
//! timeouts, the resource back-off, and the refusal log's interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::services::{LimitsResumed, ServiceId};

/// SPEC: SIGKILL this long after a SIGTERM for `max_runtime`.
pub(super) const KILL_AFTER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The crash guard's hold of a service ends.
    HoldEnds(ServiceId),
    /// A service's `rate` bucket has a token again.
    TokenBack(ServiceId),
    /// A child reached its service's `max_runtime`: SIGTERM its group.
    RuntimeUp { pid: Pid, started_at: Instant },
    /// A long-running child's `ready_timeout`: stop it if not ready.
    ReadyTimeout { pid: Pid, started_at: Instant },
    /// The SIGTERM was not enough: SIGKILL the group.
    Kill { pid: Pid, started_at: Instant },
    /// `summond restart`'s SIGTERM was not enough: SIGKILL the child's
    /// group if it still runs (nothing is held for it meanwhile).
    RestartKill { pid: Pid, started_at: Instant },
    /// Time to tell the service manager's watchdog the loop is alive.
    Watchdog,
    /// A connection's PROXY header or TLS handshake is late (`front.rs`).
    FrontDue(mio::Token),
    /// A Prometheus scraper's time is up.
    ScrapeTimeout(mio::Token),
    /// A control client's time to read its answer is up.
    ControlTimeout(mio::Token),
    /// The new binary's check before an upgrade ran too long.
    UpgradeCheck(Pid),
    /// A reload's config load (its helper's pid) is slow: say so.
    ConfigLoadSlow(Pid),
    /// A reload's config load ran out of time: give it up.
    ConfigLoadOverdue(Pid),
    /// Forward mode: connect to a starting backend again.
    Probe { service: ServiceId, pid: Pid },
    /// Forward mode: connect the clients held for a `unix://` backend's
    /// full listen backlog again (`forward/busy.rs`).
    BacklogRetry { service: ServiceId, pid: Pid },
    /// Forward mode: the first deadline of the clients a full backlog
    /// held, their backend no longer ready (`forward/busy.rs`).
    HeldDeadline(ServiceId),
    /// Forward mode: a backend's start_timeout.
    StartTimeout { service: ServiceId, pid: Pid },
    /// Forward mode: a backend's idle_stop.
    IdleStop { service: ServiceId, pid: Pid },
    /// Forward mode: a backend's stop_timeout after its SIGTERM.
    BackendKill { service: ServiceId, pid: Pid },
    /// A relayed connection's max_runtime.
    RelayRuntime(crate::relay::RelayId),
}

/// A timer's place in the map: its deadline, then the order it was added
/// in (equal deadlines fire first-in first-out). Unique for the run, so a
/// stale key never cancels another timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerKey {
    at: Instant,
    seq: u64,
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    due: BTreeMap<TimerKey, Timer>,
    seq: u64,
}

impl TimerKey {
    /// When the timer is (or was) due.
    pub fn at(&self) -> Instant {
        self.at
    }
}

impl Timers {
    /// Set `timer` for `at`; the key cancels it.
    pub fn add(&mut self, at: Instant, timer: Timer) -> TimerKey {
        self.seq += 1;
        let key = TimerKey { at, seq: self.seq };
        self.due.insert(key, timer);
        key
    }

    /// Drop the timer set with `key`, if it has not fired yet.
    pub fn cancel(&mut self, key: TimerKey) -> Option<Timer> {
        self.due.remove(&key)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.due.first_key_value().map(|(k, _)| k.at)
    }

    /// Every timer due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().at > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    /// Set again what a service's limits held when the previous image of
    /// an upgrade handed them over: the crash hold's end, the `rate`
    /// token's return.
    pub fn resume_limits(&mut self, id: ServiceId, resumed: &LimitsResumed) {
        if let Some(until) = resumed.held_until {
            self.add(until, Timer::HoldEnds(id));
        }
        if let Some(at) = resumed.next_token {
            self.add(at, Timer::TokenBack(id));
        }
    }

    /// Timers pending (status shows it: it must not grow with the
    /// children served).
    pub fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let s = |n| Timer::HoldEnds(ServiceId(n));
        t.add(t0 + Duration::from_secs(3), s(3));
        t.add(t0 + Duration::from_secs(1), s(1));
        t.add(t0 + Duration::from_secs(2), s(2));
        t.add(t0 + Duration::from_secs(1), s(4));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(t.take_due(t0).is_empty());
        assert_eq!(
            t.take_due(t0 + Duration::from_secs(2)),
            vec![s(1), s(4), s(2)]
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_resumed_hold_and_rate_pause_are_timed_again() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.resume_limits(ServiceId(1), &LimitsResumed::default());
        assert_eq!(t.len(), 0, "nothing held, nothing set");
        let resumed = LimitsResumed {
            held_until: Some(t0 + Duration::from_secs(2)),
            next_token: Some(t0 + Duration::from_secs(1)),
        };
        t.resume_limits(ServiceId(1), &resumed);
        assert_eq!(
            t.take_due(t0 + Duration::from_secs(2)),
            vec![
                Timer::TokenBack(ServiceId(1)),
                Timer::HoldEnds(ServiceId(1))
            ]
        );
    }

    #[test]
    fn a_cancelled_timer_is_gone_and_a_stale_key_cancels_nothing() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let day = Duration::from_secs(86_400);
        let run = |n| Timer::RuntimeUp {
            pid: Pid::from_raw(n),
            started_at: t0,
        };
        // A child per key, each with a day to run; every one exits.
        let keys: Vec<TimerKey> = (1..=1000).map(|n| t.add(t0 + day, run(n))).collect();
        let hold = t.add(t0 + day, Timer::HoldEnds(ServiceId(1)));
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(t.cancel(*key), Some(run(n as i32 + 1)));
        }
        assert_eq!(t.len(), 1, "only the hold is left");
        assert_eq!(t.cancel(keys[0]), None, "cancelled once");
        // A key whose timer fired cancels nothing set since.
        let soon = t.add(t0, run(7));
        assert_eq!(t.take_due(t0), vec![run(7)]);
        let later = t.add(t0, run(8));
        assert_eq!(t.cancel(soon), None);
        assert_eq!(
            t.take_due(t0 + day),
            vec![run(8), Timer::HoldEnds(ServiceId(1))]
        );
        assert_eq!((t.cancel(later), t.cancel(hold), t.len()), (None, None, 0));
    }
}
