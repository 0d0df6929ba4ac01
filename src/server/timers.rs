//! Deadlines, in one binary heap: a crash hold ending, a child's
//! `max_runtime` running out, the SIGKILL that follows an ignored SIGTERM.
//! O(log n) to add and to take the next; nothing scans the children.
//! Timers are not cancelled: each names what it is for (a child by pid
//! and start time, so a reused pid is never hit) and the server checks
//! that it still applies when it fires.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::children::ServiceId;

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
    /// The SIGTERM was not enough: SIGKILL the group.
    Kill { pid: Pid, started_at: Instant },
    /// Time to tell the service manager's watchdog the loop is alive.
    Watchdog,
    /// A Prometheus scraper's time is up.
    ScrapeTimeout(mio::Token),
    /// The new binary's check before an upgrade ran too long.
    UpgradeCheck(Pid),
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    /// Insertion order, so equal deadlines fire first-in first-out.
    seq: u64,
    timer: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub fn add(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            timer,
        }));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Every timer due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(Reverse(e)) = self.heap.peek() {
            if e.at > now {
                break;
            }
            if let Some(Reverse(e)) = self.heap.pop() {
                due.push(e.timer);
            }
        }
        due
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
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
}
