//! Repeated refusals, summarised. A client refused by an access rule or a
//! per-source limit is logged the first time in an interval; further
//! refusals of the same key in that interval are only counted and come
//! out as one summary line when it ends. A flood of refused connections
//! therefore costs one log line per client and interval, not one per
//! connection, and the table is bounded: past `MAX_TRACKED` keys the rest
//! are counted together. Pure: the caller passes `now` and writes the lines.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long repeats of one client's refusal are gathered into one line.
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);
/// Keys tracked per interval; refusals past it are counted as "others".
pub const MAX_TRACKED: usize = 4096;

/// What one interval gathered, for the summary lines.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary<K> {
    /// Keys refused again after their first line, with how many more times.
    pub repeats: Vec<(K, u64)>,
    /// Refusals of keys that did not fit in the table.
    pub untracked: u64,
}

#[derive(Debug)]
pub struct RefusalLog<K: Eq + Hash> {
    /// Key → refusals since its logged one, in the current interval.
    repeats: HashMap<K, u64>,
    untracked: u64,
    interval_end: Option<Instant>,
}

impl<K: Eq + Hash> Default for RefusalLog<K> {
    fn default() -> Self {
        RefusalLog {
            repeats: HashMap::new(),
            untracked: 0,
            interval_end: None,
        }
    }
}

impl<K: Eq + Hash + Copy> RefusalLog<K> {
    /// Count a refusal of `key`; true when it is the one to log now.
    pub fn record(&mut self, key: K, now: Instant) -> bool {
        self.interval_end.get_or_insert(now + REFUSAL_INTERVAL);
        if let Some(n) = self.repeats.get_mut(&key) {
            *n += 1;
            return false;
        }
        if self.repeats.len() >= MAX_TRACKED {
            self.untracked += 1;
            return false;
        }
        self.repeats.insert(key, 0);
        true
    }

    /// When the current interval ends, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.interval_end
    }

    /// Close the interval if it has ended: what to summarise (keys refused
    /// only once are left out, their line was written).
    pub fn flush(&mut self, now: Instant) -> Option<Summary<K>> {
        match self.interval_end {
            Some(end) if end <= now => {}
            _ => return None,
        }
        self.interval_end = None;
        let repeats: Vec<(K, u64)> = self.repeats.drain().filter(|(_, n)| *n > 0).collect();
        let untracked = std::mem::take(&mut self.untracked);
        Some(Summary { repeats, untracked })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.repeats.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_refusal_is_logged_repeats_are_summarised_once_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        assert!(log.record(1u32, t0));
        assert!(log.record(2u32, t0));
        for _ in 0..5 {
            assert!(!log.record(1u32, t0 + Duration::from_secs(1)));
        }
        assert_eq!(log.deadline(), Some(t0 + REFUSAL_INTERVAL));
        assert_eq!(log.flush(t0 + Duration::from_secs(9)), None);
        let s = log.flush(t0 + REFUSAL_INTERVAL).unwrap();
        assert_eq!(s.repeats, vec![(1, 5)], "2 was refused once: no summary");
        assert_eq!(s.untracked, 0);
        assert_eq!(log.deadline(), None);
        assert!(
            log.record(1u32, t0 + REFUSAL_INTERVAL),
            "a new interval logs again"
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_is_bounded() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let logged = (0..MAX_TRACKED as u64 + 1000)
            .filter(|k| log.record(*k, t0))
            .count();
        assert_eq!(logged, MAX_TRACKED);
        assert_eq!(log.tracked(), MAX_TRACKED);
        let s = log.flush(t0 + REFUSAL_INTERVAL).unwrap();
        assert_eq!(s.untracked, 1000);
        assert!(s.repeats.is_empty());
        assert_eq!(log.tracked(), 0);
    }
}
