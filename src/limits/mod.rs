//! The counting behind "may a child start now?": children over all
//! services, per service, per client; the restart-storm guard for
//! `accept = false` services; the back-off after running out of fds or
//! processes. Pure state machines: the caller passes `now`, makes the
//! syscalls and writes the logs. Rates (token buckets, per-source tables,
//! the most refused clients) are in `rate.rs`.

pub mod rate;

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// SPEC: a pass-mode child failing 5 times in 10 s is held for 10 s.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(10);
pub const CRASH_HOLD: Duration = Duration::from_secs(10);

/// SPEC "Faults": 100 ms, doubling to at most 2 s while the fault lasts.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Counts of live children keyed by something (a client IP, a uid).
/// Entries at zero are removed, so the map only holds active clients.
#[derive(Debug)]
pub struct Counter<K: Eq + Hash> {
    counts: HashMap<K, u32>,
}

impl<K: Eq + Hash> Default for Counter<K> {
    fn default() -> Self {
        Counter {
            counts: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Counter<K> {
    pub fn get(&self, k: &K) -> u32 {
        self.counts.get(k).copied().unwrap_or(0)
    }

    pub fn add(&mut self, k: K) {
        *self.counts.entry(k).or_insert(0) += 1;
    }

    /// Every key with its count (entries at zero are never kept).
    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.counts.iter().map(|(k, n)| (k, *n))
    }

    /// One count of `k` less; its entry goes at zero. Through the entry,
    /// so the key is hashed once (this runs at every child's exit).
    pub fn remove(&mut self, k: &K) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.counts.entry(k.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// The restart-storm guard of one `accept = false` service.
///
/// States: *running* (failures inside the window < CRASH_LIMIT) and *held*
/// (`held_until` in the future). The CRASH_LIMIT-th failure inside
/// CRASH_WINDOW moves to held and clears the window; time passing moves
/// back.
#[derive(Debug, Default, Clone)]
pub struct CrashGuard {
    failures: Vec<Instant>,
    held_until: Option<Instant>,
}

impl CrashGuard {
    /// Record a failed exit; returns the hold deadline if this failure
    /// started a hold.
    pub fn record_failure(&mut self, now: Instant) -> Option<Instant> {
        self.failures
            .retain(|t| now.saturating_duration_since(*t) < CRASH_WINDOW);
        self.failures.push(now);
        if self.failures.len() >= CRASH_LIMIT {
            self.failures.clear();
            let until = now + CRASH_HOLD;
            self.held_until = Some(until);
            return Some(until);
        }
        None
    }

    pub fn held_until(&self, now: Instant) -> Option<Instant> {
        self.held_until.filter(|t| *t > now)
    }

    pub fn is_held(&self, now: Instant) -> bool {
        self.held_until(now).is_some()
    }
}

/// A `CrashGuard` as a live upgrade carries it: `Instant`s mean nothing
/// to the next image, so times are kept as how long before (failures) or
/// after (the hold's end) the hand-over they are.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CrashGuardState {
    /// The failures in the window, how long ago, in nanoseconds.
    pub failures_ago_ns: Vec<u64>,
    /// How long the hold has to run, in nanoseconds.
    pub held_for_ns: Option<u64>,
}

impl CrashGuard {
    /// What the next image needs to carry on at `now`; none if the guard
    /// has nothing to remember.
    pub fn to_state(&self, now: Instant) -> Option<CrashGuardState> {
        let failures_ago_ns: Vec<u64> = self
            .failures
            .iter()
            .map(|t| now.saturating_duration_since(*t))
            .filter(|ago| *ago < CRASH_WINDOW)
            .map(|ago| ago.as_nanos() as u64)
            .collect();
        let held_for_ns = self
            .held_until(now)
            .map(|t| t.saturating_duration_since(now).as_nanos() as u64);
        if failures_ago_ns.is_empty() && held_for_ns.is_none() {
            return None;
        }
        Some(CrashGuardState {
            failures_ago_ns,
            held_for_ns,
        })
    }

    /// The guard `state` describes, taken over at `now`.
    pub fn from_state(state: &CrashGuardState, now: Instant) -> CrashGuard {
        CrashGuard {
            failures: state
                .failures_ago_ns
                .iter()
                // A failure older than this process's clock can say is
                // older than the window anyway: it would not count.
                .filter_map(|ns| now.checked_sub(Duration::from_nanos(*ns)))
                .collect(),
            held_until: state.held_for_ns.map(|ns| now + Duration::from_nanos(ns)),
        }
    }
}

/// The back-off after EMFILE/ENFILE/EAGAIN: one log line per episode,
/// listeners unwatched until `paused_until`, the pause doubling while the
/// fault repeats and reset by the first success.
///
/// States: *clear*; *paused* (`until` in the future); *recovering*
/// (pause over, no success yet: the next fault doubles the delay).
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    delay: Option<Duration>,
    until: Option<Instant>,
    /// A success cut a pause short: what the pause held back is re-armed
    /// at the next `expire`, as if it had run out.
    rearm: bool,
}

impl Backoff {
    /// A fault happened. Returns the pause deadline and whether this is the
    /// first fault of an episode (the one to log).
    pub fn fault(&mut self, now: Instant) -> (Instant, bool) {
        let first = self.delay.is_none();
        let delay = match self.delay {
            None => BACKOFF_FIRST,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        self.delay = Some(delay);
        let until = now + delay;
        self.until = Some(until);
        (until, first)
    }

    /// Something worked: the episode is over. Returns whether one was open.
    pub fn success(&mut self) -> bool {
        self.rearm |= self.until.take().is_some();
        self.delay.take().is_some()
    }

    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|t| *t > now)
    }

    /// When the current pause ends, if one is running.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// True once, when the pause has run out or a success cut it short:
    /// time to re-arm. The delay is kept, so a fault right after doubles
    /// it; `success` resets it.
    pub fn expire(&mut self, now: Instant) -> bool {
        if std::mem::take(&mut self.rearm) {
            return true;
        }
        match self.until {
            Some(t) if t <= now => {
                self.until = None;
                true
            }
            _ => false,
        }
    }

    pub fn is_paused(&self, now: Instant) -> bool {
        self.paused_until(now).is_some()
    }

    /// The open episode's delay, if one is open.
    pub fn episode(&self) -> Option<Duration> {
        self.delay
    }

    /// Go on with an episode another image opened: the next fault
    /// doubles its delay and is not logged as a new one, the next
    /// success ends it.
    pub fn resume_episode(&mut self, delay: Duration) {
        self.delay = Some(delay.clamp(BACKOFF_FIRST, BACKOFF_MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_drops_zero_entries() {
        let mut c = Counter::default();
        c.add("a");
        c.add("a");
        assert_eq!(c.get(&"a"), 2);
        c.remove(&"a");
        c.remove(&"a");
        c.remove(&"a");
        assert_eq!(c.get(&"a"), 0);
        assert!(c.counts.is_empty());
    }

    #[test]
    fn fifth_failure_in_window_holds() {
        let t0 = Instant::now();
        let mut g = CrashGuard::default();
        for i in 0..4 {
            assert_eq!(g.record_failure(t0 + Duration::from_secs(i)), None);
        }
        let until = g.record_failure(t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(until, t0 + Duration::from_secs(14));
        assert!(g.is_held(t0 + Duration::from_secs(13)));
        assert!(!g.is_held(t0 + Duration::from_secs(14)));
        // the window restarted: one more failure does not hold again
        assert_eq!(g.record_failure(t0 + Duration::from_secs(15)), None);
    }

    #[test]
    fn failures_spread_out_never_hold() {
        let t0 = Instant::now();
        let mut g = CrashGuard::default();
        for i in 0..20 {
            assert_eq!(g.record_failure(t0 + Duration::from_secs(3 * i)), None);
        }
    }

    #[test]
    fn a_guard_carried_to_another_clock_keeps_its_failures_and_its_hold() {
        let t0 = Instant::now();
        let mut g = CrashGuard::default();
        assert_eq!(g.to_state(t0), None, "nothing to carry");
        for i in 0..3 {
            g.record_failure(t0 + Duration::from_secs(i));
        }
        let state = g.to_state(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(state.held_for_ns, None);
        // The other side's clock reads something else entirely.
        let t1 = t0 + Duration::from_secs(1000);
        let mut back = CrashGuard::from_state(&state, t1);
        assert_eq!(back.record_failure(t1), None, "4 in the window");
        let until = back.record_failure(t1).unwrap();
        assert_eq!(until, t1 + CRASH_HOLD, "the 5th holds");
        let state = back.to_state(t1 + Duration::from_secs(4)).unwrap();
        assert_eq!(state.held_for_ns, Some(6_000_000_000));
        let t2 = t1 + Duration::from_secs(500);
        let held = CrashGuard::from_state(&state, t2);
        assert_eq!(held.held_until(t2), Some(t2 + Duration::from_secs(6)));
        assert!(!held.is_held(t2 + Duration::from_secs(6)));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_logs_once() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let (u, first) = b.fault(t0);
        assert!(first);
        assert_eq!(u - t0, BACKOFF_FIRST);
        let mut delays = vec![];
        for _ in 0..8 {
            let (u, first) = b.fault(t0);
            assert!(!first);
            delays.push(u - t0);
        }
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        assert!(b.is_paused(t0 + Duration::from_millis(1999)));
        assert!(!b.expire(t0 + Duration::from_millis(1999)));
        assert!(b.expire(t0 + BACKOFF_MAX));
        assert!(!b.expire(t0 + BACKOFF_MAX), "expires once");
        assert_eq!(
            b.fault(t0).0 - t0,
            BACKOFF_MAX,
            "the delay is kept until a success"
        );
        assert!(b.success());
        assert!(!b.success());
        assert!(!b.is_paused(t0));
        assert!(b.fault(t0).1, "a new episode logs again");
    }

    #[test]
    fn an_episode_carried_to_another_image_is_not_paused_and_ends_with_its_line() {
        let t0 = Instant::now();
        let mut old = Backoff::default();
        old.fault(t0);
        old.fault(t0);
        let mut new = Backoff::default();
        new.resume_episode(old.episode().unwrap());
        assert!(!new.is_paused(t0), "the kept clients are tried at once");
        let (until, first) = new.fault(t0);
        assert!(!first, "the same episode: not logged again");
        assert_eq!(until - t0, Duration::from_millis(400));
        assert!(new.success(), "its end is said");
        assert!(!new.success());
    }
}
