//! Rates as token buckets: `rate` for a whole service (an empty bucket
//! pauses its listener until a token is back) and `per_source_rate` per
//! client (an empty bucket refuses that client only). The per-client
//! table is bounded: a client whose bucket has refilled is forgotten (a
//! fresh bucket is the same thing), and past `MAX_SOURCES` the oldest
//! entry is dropped, which can only make a limit more lenient, never lock
//! anyone out. Every operation is O(1) amortised. Pure: `now` is passed in.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::config::Rate;

/// Clients tracked per service for `per_source_rate`.
pub const MAX_SOURCES: usize = 16_384;

/// `count` tokens, refilled continuously at `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: f64::from(rate.count),
            at: now,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn per_second(&self) -> f64 {
        f64::from(self.rate.count) / self.rate.per.as_secs_f64()
    }

    /// Tokens available at `now` (never more than the burst).
    pub fn available(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * self.per_second()).min(f64::from(self.rate.count))
    }

    pub fn has_token(&self, now: Instant) -> bool {
        self.available(now) >= 1.0
    }

    pub fn is_full(&self, now: Instant) -> bool {
        self.available(now) >= f64::from(self.rate.count)
    }

    /// Take a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let available = self.available(now);
        if available < 1.0 {
            return false;
        }
        self.tokens = available - 1.0;
        self.at = now;
        true
    }

    /// When the next token is back (`now` if there is one).
    pub fn next_token_at(&self, now: Instant) -> Instant {
        let missing = 1.0 - self.available(now);
        if missing <= 0.0 {
            return now;
        }
        // Rounded up to the millisecond, so a timer set for it finds the
        // token there.
        let secs = missing / self.per_second();
        now + Duration::from_millis((secs * 1000.0).ceil() as u64)
    }
}

/// A `TokenBucket` as a live upgrade carries it: its rate and the
/// tokens it holds at the hand-over (an `Instant` means nothing to the
/// next image).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BucketState {
    pub rate: Rate,
    pub tokens: f64,
}

impl TokenBucket {
    pub fn to_state(&self, now: Instant) -> BucketState {
        BucketState {
            rate: self.rate,
            tokens: self.available(now),
        }
    }

    /// The bucket `state` describes, taken over at `now`.
    pub fn from_state(state: BucketState, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: state.rate,
            tokens: state.tokens.clamp(0.0, f64::from(state.rate.count)),
            at: now,
        }
    }
}

/// One bucket per client key, bounded.
#[derive(Debug)]
pub struct SourceBuckets<K: Eq + Hash> {
    buckets: HashMap<K, TokenBucket>,
    /// Keys in the order they were added (or re-queued), for expiry.
    order: VecDeque<K>,
    max: usize,
}

impl<K: Eq + Hash + Copy> Default for SourceBuckets<K> {
    fn default() -> Self {
        SourceBuckets::with_max(MAX_SOURCES)
    }
}

impl<K: Eq + Hash + Copy> SourceBuckets<K> {
    pub fn with_max(max: usize) -> Self {
        SourceBuckets {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// May `key` connect now? If so its token is taken; a refused
    /// attempt takes nothing.
    pub fn admit(&mut self, key: K, rate: Rate, now: Instant) -> bool {
        self.expire(now, 2);
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.take(now);
        }
        if self.buckets.len() >= self.max {
            self.evict_oldest();
        }
        let mut b = TokenBucket::new(rate, now);
        let ok = b.take(now);
        self.buckets.insert(key, b);
        self.order.push_back(key);
        ok
    }

    /// Look at up to `n` of the oldest entries: forget those whose bucket
    /// is full again, re-queue the rest.
    fn expire(&mut self, now: Instant, n: usize) {
        for _ in 0..n {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            match self.buckets.get(&key) {
                Some(b) if b.is_full(now) => {
                    self.buckets.remove(&key);
                }
                Some(_) => self.order.push_back(key),
                None => {}
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(key) = self.order.pop_front() {
            if self.buckets.remove(&key).is_some() {
                return;
            }
        }
    }
}

impl<K: Eq + Hash + Copy> SourceBuckets<K> {
    /// The clients whose bucket is not full at `now`, oldest first, with
    /// their buckets (a full one is the same as none), for an upgrade.
    pub fn to_state(&self, now: Instant) -> Vec<(K, BucketState)> {
        self.order
            .iter()
            .filter_map(|k| Some((*k, self.buckets.get(k)?)))
            .filter(|(_, b)| !b.is_full(now))
            .map(|(k, b)| (k, b.to_state(now)))
            .collect()
    }

    /// The table `entries` describe, taken over at `now`.
    pub fn from_state(entries: &[(K, BucketState)], now: Instant) -> Self {
        let mut t = SourceBuckets::default();
        for (k, b) in entries {
            if t.buckets.len() >= t.max {
                t.evict_oldest();
            }
            if t.buckets
                .insert(*k, TokenBucket::from_state(*b, now))
                .is_none()
            {
                t.order.push_back(*k);
            }
        }
        t
    }
}

/// The most refused clients of a service, approximately (the
/// space-saving algorithm): at most `TOP_TRACKED` counters, a new client
/// taking over the smallest one, so memory stays fixed under a flood of
/// distinct sources while heavy hitters stay on top.
pub const TOP_TRACKED: usize = 16;

#[derive(Debug, Clone)]
pub struct TopRefused<K> {
    counts: Vec<(K, u64)>,
}

impl<K> Default for TopRefused<K> {
    fn default() -> Self {
        TopRefused { counts: Vec::new() }
    }
}

impl<K: Eq + Copy> TopRefused<K> {
    pub fn record(&mut self, key: K) {
        if let Some(e) = self.counts.iter_mut().find(|(k, _)| *k == key) {
            e.1 += 1;
            return;
        }
        if self.counts.len() < TOP_TRACKED {
            self.counts.push((key, 1));
            return;
        }
        if let Some(min) = self.counts.iter_mut().min_by_key(|(_, n)| *n) {
            *min = (key, min.1 + 1);
        }
    }

    /// The counters `top` listed (an upgrade carries them).
    pub fn from_counts(mut counts: Vec<(K, u64)>) -> Self {
        counts.truncate(TOP_TRACKED);
        TopRefused { counts }
    }

    /// The `n` most refused, most first.
    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut v = self.counts.clone();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, per_ms: u64) -> Rate {
        Rate {
            count,
            per: Duration::from_millis(per_ms),
        }
    }

    #[test]
    fn buckets_carried_to_another_clock_keep_their_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(2, 1000), t0);
        assert!(b.take(t0) && b.take(t0));
        let t1 = t0 + Duration::from_secs(1000);
        let back = TokenBucket::from_state(b.to_state(t0 + Duration::from_millis(250)), t1);
        assert!(!back.has_token(t1), "half a token");
        assert_eq!(back.next_token_at(t1), t1 + Duration::from_millis(250));
        let mut t = SourceBuckets::default();
        assert!(t.admit('a', rate(1, 1000), t0));
        assert!(t.admit('b', rate(1, 1000), t0));
        let state = t.to_state(t0 + Duration::from_millis(500));
        assert_eq!(state.len(), 2);
        let mut back = SourceBuckets::from_state(&state, t1);
        assert!(
            !back.admit('a', rate(1, 1000), t1),
            "a's token is still out"
        );
        assert!(back.admit('a', rate(1, 1000), t1 + Duration::from_millis(500)));
        assert!(back.admit('c', rate(1, 1000), t1), "a new client is fresh");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_one_token_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate(5, 1000), t0);
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "burst spent");
        assert_eq!(b.next_token_at(t0), t0 + Duration::from_millis(200));
        assert!(!b.take(t0 + Duration::from_millis(199)));
        assert!(b.take(t0 + Duration::from_millis(200)));
        // refills to the burst, never past it
        assert!(b.is_full(t0 + Duration::from_secs(60)));
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 5.0);
    }

    #[test]
    fn refused_attempts_spend_nothing_and_other_sources_are_unaffected() {
        let t0 = Instant::now();
        let r = rate(2, 1000);
        let mut s = SourceBuckets::default();
        assert!(s.admit(1u32, r, t0));
        assert!(s.admit(1u32, r, t0));
        for _ in 0..100 {
            assert!(!s.admit(1u32, r, t0), "over its rate");
        }
        assert!(s.admit(2u32, r, t0), "another client is served");
        // 100 refusals spent no token: one is back after 500 ms.
        assert!(s.admit(1u32, r, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn a_flood_of_distinct_sources_stays_bounded_and_idle_entries_expire() {
        let t0 = Instant::now();
        let r = rate(10, 1000);
        let mut s = SourceBuckets::with_max(1000);
        for k in 0..100_000u32 {
            assert!(s.admit(k, r, t0), "a new source always has its burst");
        }
        assert_eq!(s.len(), 1000);
        // Once their buckets refill, entries are forgotten as traffic goes on.
        let later = t0 + Duration::from_secs(2);
        for k in 0..1000u32 {
            s.admit(200_000 + k, r, later);
        }
        assert!(s.len() <= 1000);
        assert!(
            s.buckets.keys().all(|k| *k >= 200_000),
            "old idle entries expired"
        );
    }

    #[test]
    fn top_refused_keeps_the_heavy_hitters_in_fixed_space() {
        let mut t = TopRefused::default();
        for i in 0..10_000u32 {
            t.record(i % 1000 + 10);
            if i % 2 == 0 {
                t.record(1);
            }
            if i % 4 == 0 {
                t.record(2);
            }
        }
        assert!(t.counts.len() <= TOP_TRACKED);
        let top = t.top(2);
        assert_eq!(top[0].0, 1);
        assert_eq!(top[1].0, 2);
    }
}
