//! The service table: each configured service's runtime (its spec, its
//! identity for the run, crash guard, rate buckets and counters) in config
//! order, found by index (a socket names its owner so) or by identity (a
//! child, a timer or an internal connection names its service so). Across
//! a reload a runtime follows its service's name (`carry_over`), so the
//! counters, the crash guard and the rate tokens of a service that stays
//! are kept, and a name new to the config is a new service. It counts
//! every refusal (`refuse`: by kind, by client, and in the refusal log
//! that says which to log and summarises the repeats) and makes and takes
//! back its part of an upgrade's state (counters and limits, by name).
//! Knows nothing of sockets, children, polling or logging.

use rustc_hash::FxHashMap;
use std::fmt;
use std::ops::{Index, IndexMut};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;

use super::front::ProxyRefusal;
use crate::access::Refusal;
use crate::config::{Rate, ServiceSpec};
use crate::limits::rate::{BucketState, SourceBuckets, TokenBucket, TopRefused, TOP_TRACKED};
use crate::limits::CrashGuard;
use crate::peer::SourceKey;
use crate::refusals::{RefusalLog, Summary};
use crate::spawn::ExecImage;
use crate::stats::{exit_key, succeeded, ExitOutcome, ExitText, Pause, RefusalKind, Stats};
use crate::upgrade::{LimitsState, SourcesState};

/// What a reload changed, for `summond reload`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

/// A service for the length of the run: kept across reloads while its
/// name stays in the config, new when a name appears (again). Children
/// refer to it, not to the name, so a service removed and re-added while
/// its old children run starts with counts of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ServiceId(pub u64);

/// What is happening to one service: its spec, identity, limits and
/// counters. Boxed in the table: a reload moves each once.
pub(super) struct ServiceRuntime {
    pub(super) id: ServiceId,
    /// `spec.name`, shared with the service's children.
    pub(super) name: Rc<str>,
    pub(super) spec: ServiceSpec,
    /// Built at the service's first child, not when the config loads:
    /// most services of a large config wait long for their first client
    /// (or never see one), and an image is a few hundred bytes.
    pub(super) image: Option<Box<ExecImage>>,
    pub(super) crash: CrashGuard,
    pub(super) stats: Stats,
    /// `rate`: new children service-wide.
    pub(super) rate: Option<TokenBucket>,
    /// The rate pause of this episode was logged; cleared once the bucket
    /// is full again.
    pub(super) rate_logged: bool,
    /// A timer is set for the next token.
    pub(super) rate_timer: bool,
    /// `per_source_rate`: one bucket per client (prefix); allocated at
    /// the first client, as most services have no such rate.
    pub(super) source_rates: Option<Box<SourceBuckets<SourceKey>>>,
    pub(super) top_refused: TopRefused<SourceKey>,
    /// Children have been leaving their socket unread; the first such exit
    /// was logged, the rest are not until one does its work.
    pub(super) unread_episode: bool,
    /// `tls`: the rustls configuration, built from the spec's DER at the
    /// first TLS client after a start or a change (not at load: most
    /// services wait long for their first client).
    tls: Option<crate::tls::TlsConfig>,
    /// What `stats.last_exit` says, without the text.
    pub(super) last_exit_key: Option<(i32, i32, bool)>,
    /// A `runtime_directory` could not be made: tried again at the next
    /// reload even if the service did not change.
    pub(super) runtime_dir_failed: bool,
    /// `summond pause`: no new child (its sockets unwatched, clients wait
    /// in the backlog) until `summond resume`; kept across reloads that
    /// keep the service, and upgrades.
    pub(super) paused: bool,
}

impl ServiceRuntime {
    pub(super) fn source_rates(&mut self) -> &mut SourceBuckets<SourceKey> {
        self.source_rates.get_or_insert_with(Box::default)
    }
}

impl ServiceRuntime {
    fn new(id: ServiceId, spec: ServiceSpec, now: Instant) -> ServiceRuntime {
        ServiceRuntime {
            id,
            name: spec.name.as_str().into(),
            image: None,
            crash: CrashGuard::default(),
            stats: Stats::default(),
            rate: spec.rate.map(|r| TokenBucket::new(r, now)),
            rate_logged: false,
            rate_timer: false,
            source_rates: None,
            top_refused: TopRefused::default(),
            unread_episode: false,
            last_exit_key: None,
            runtime_dir_failed: false,
            paused: false,
            tls: None,
            spec,
        }
    }

    /// The TLS configuration, built at the first ask; None without `tls`
    /// (or if the files that loaded cannot be used, which `tls::load`
    /// rules out).
    pub(super) fn tls_config(&mut self) -> Option<crate::tls::TlsConfig> {
        if self.tls.is_none() {
            let spec = self.spec.tls.as_deref()?;
            self.tls = crate::tls::server_config(spec).ok();
        }
        self.tls.clone()
    }

    /// May it start a child now, as far as its own pauses go (`summond pause`,
    /// its crash hold, then its `rate`)? Its `max_instances` is for the caller,
    /// who knows what it runs.
    pub(super) fn may_start(&self, now: Instant) -> Result<(), Pause> {
        if self.paused {
            return Err(Pause::User);
        }
        if let Some(until) = self.crash.held_until(now) {
            return Err(Pause::CrashHold { until });
        }
        match self.rate {
            Some(b) if !b.has_token(now) => Err(Pause::Rate {
                rate: b.rate(),
                next_token: b.next_token_at(now),
            }),
            _ => Ok(()),
        }
    }

    /// May it start a child now, with `active` running (its children and
    /// internal connections)? Below its `max_instances`, and not paused
    /// (`may_start`).
    pub(super) fn may_spawn(&self, active: u32, now: Instant) -> bool {
        self.spec.max_instances.is_none_or(|max| active < max) && self.may_start(now).is_ok()
    }

    /// Count a child's end: by outcome, its run time, the last exit's
    /// text (written only when it reads differently from the last: most
    /// exits read like the one before), and for a pass-mode child, which
    /// stands for the whole service, the unread episode and the crash
    /// guard (a failure, an exec failure or an unread exit counts).
    pub(super) fn record_exit(&mut self, end: &Ended<'_>, now: Instant) -> Recorded {
        let success = succeeded(end.status);
        let first_unread = end.unread && success && !self.unread_episode;
        self.stats.exits[ExitOutcome::of(end.status, end.exec_failed)] += 1;
        self.stats.durations.observe(end.ran.as_secs_f64());
        let key = exit_key(end.status);
        if self.last_exit_key != Some(key) {
            self.last_exit_key = Some(key);
            self.stats.last_exit = Some(ExitText(end.status).to_string());
        }
        let mut held_until = None;
        if end.pass_mode {
            if first_unread {
                self.unread_episode = true;
            } else if !end.unread {
                self.unread_episode = false;
            }
            if !success || end.exec_failed || end.unread || end.not_ready {
                held_until = self.crash.record_failure(now);
            }
        }
        Recorded {
            first_unread,
            held_until,
        }
    }

    /// Its limits with something to remember, for the next image of an
    /// upgrade; `answers`: an internal UDP service's budget of answers
    /// (kept by the datagram guard), if not full.
    pub(super) fn limits_state(
        &self,
        now: Instant,
        answers: Option<BucketState>,
    ) -> Option<LimitsState> {
        let crash = self.crash.to_state(now);
        let rate = self
            .rate
            .filter(|b| !b.is_full(now))
            .map(|b| (b.to_state(now), self.rate_logged));
        let sources = self
            .source_rates
            .as_ref()
            .map(|t| t.to_state(now))
            .filter(|b| !b.is_empty())
            .map(|buckets| SourcesState {
                rate: self.spec.per_source_rate,
                prefix: self.spec.per_source_prefix,
                buckets,
            });
        let top_refused = self.top_refused.top(TOP_TRACKED);
        if crash.is_none()
            && rate.is_none()
            && sources.is_none()
            && answers.is_none()
            && top_refused.is_empty()
        {
            return None;
        }
        Some(LimitsState {
            service: self.spec.name.clone(),
            crash,
            rate,
            sources,
            answers,
            top_refused,
        })
    }

    /// Take over what the previous image's limits remembered, as a
    /// reload keeps it for a service of the same name: the crash guard
    /// (a hold goes on), and the buckets of a rate that did not change (a
    /// changed one starts full). `l.answers` is the datagram guard's.
    pub(super) fn resume_limits(&mut self, l: LimitsState, now: Instant) -> LimitsResumed {
        let mut resumed = LimitsResumed::default();
        if let Some(crash) = &l.crash {
            self.crash = CrashGuard::from_state(crash, now);
            resumed.held_until = self.crash.held_until(now);
        }
        if let Some((bucket, logged)) = l.rate.filter(|(b, _)| self.spec.rate == Some(b.rate)) {
            let bucket = TokenBucket::from_state(bucket, now);
            self.rate_logged = logged;
            if !bucket.has_token(now) {
                self.rate_timer = true;
                resumed.next_token = Some(bucket.next_token_at(now));
            }
            self.rate = Some(bucket);
        }
        if let Some(sources) = l.sources.filter(|t| {
            t.rate == self.spec.per_source_rate && t.prefix == self.spec.per_source_prefix
        }) {
            self.source_rates = Some(Box::new(SourceBuckets::from_state(&sources.buckets, now)));
        }
        self.top_refused = TopRefused::from_counts(l.top_refused);
        resumed
    }

    /// Take `spec`, changed from the one it has: what depends on a
    /// changed key starts afresh, the rest (counters, crash guard) stays.
    fn respec(&mut self, spec: ServiceSpec, now: Instant) {
        // A changed rate starts from a full bucket; an unchanged
        // one keeps its tokens across the reload.
        if self.rate.map(|b| b.rate()) != spec.rate {
            self.rate = spec.rate.map(|r| TokenBucket::new(r, now));
        }
        if self.spec.per_source_rate != spec.per_source_rate
            || self.spec.per_source_prefix != spec.per_source_prefix
        {
            self.source_rates = None;
        }
        self.image = None;
        // A renewed certificate: the next handshake uses it.
        self.tls = None;
        self.spec = spec;
        // `self.name` stays: the runtime was found by it.
    }

    /// Are its runtime directories to be made when it takes `spec`? New
    /// services (all of them at start and after an upgrade), those whose
    /// directories, user or `disabled` changed, and those whose last
    /// attempt failed. A disabled service is not set up: it has no
    /// children.
    fn needs_dirs(kept: Option<&ServiceRuntime>, spec: &ServiceSpec) -> bool {
        spec.runtime_directory.is_some()
            && !spec.disabled
            && kept.is_none_or(|rt| {
                rt.runtime_dir_failed
                    || rt.spec.runtime_directory != spec.runtime_directory
                    || rt.spec.credentials != spec.credentials
            })
    }
}

/// What resuming a service's limits from an upgrade state left running,
/// for the caller to set timers for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LimitsResumed {
    /// The crash hold goes on until then.
    pub held_until: Option<Instant>,
    /// The `rate` bucket is empty: a token comes back then.
    pub next_token: Option<Instant>,
}

/// What a service counts of one child's end.
pub(super) struct Ended<'a> {
    pub status: &'a WaitStatus,
    /// It never reached its program.
    pub exec_failed: bool,
    pub ran: Duration,
    /// It held the service's sockets (pass mode), and left what waited
    /// on them as it found it (it did no work, whatever its status).
    pub pass_mode: bool,
    pub unread: bool,
    /// `ready_timeout` stopped it before READY=1: a failed start.
    pub not_ready: bool,
}

/// What recording an exit found, for the caller to log and arm.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Recorded {
    /// The first exit of an episode of children leaving their socket
    /// unread: worth a line, the rest of the episode is not.
    pub first_unread: bool,
    /// The crash guard holds the service until then, from now.
    pub held_until: Option<Instant>,
}

/// Why a client was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RefuseReason {
    Access(Refusal),
    MaxPerSource(u32),
    PerSourceRate(Rate),
    Proxy(ProxyRefusal),
    Tls(crate::tls::Failure),
    /// Held this long (its `start_timeout`) for a `unix://` forward
    /// backend whose listen backlog stayed full (`forward/busy.rs`).
    BackendBusy(std::time::Duration),
}

impl RefuseReason {
    /// What it is counted as.
    pub(super) fn kind(self) -> RefusalKind {
        match self {
            RefuseReason::Access(_) => RefusalKind::Access,
            RefuseReason::MaxPerSource(_) => RefusalKind::MaxPerSource,
            RefuseReason::PerSourceRate(_) => RefusalKind::PerSourceRate,
            RefuseReason::Proxy(_) => RefusalKind::Proxy,
            RefuseReason::Tls(_) => RefusalKind::Tls,
            RefuseReason::BackendBusy(_) => RefusalKind::BackendBusy,
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::Access(r) => write!(f, "{r}"),
            RefuseReason::MaxPerSource(max) => write!(f, "max_per_source {max} reached"),
            RefuseReason::PerSourceRate(rate) => write!(f, "per_source_rate {rate} reached"),
            RefuseReason::Proxy(why) => write!(f, "{why}"),
            RefuseReason::Tls(why) => write!(f, "tls: {why}"),
            RefuseReason::BackendBusy(held) => write!(
                f,
                "the backend's listen backlog stayed full for {held:?}, its start_timeout"
            ),
        }
    }
}

/// What repeated refusals are summarised under: service, client, reason.
pub(super) type RefusalKey = (ServiceId, Option<SourceKey>, RefuseReason);

/// Every service's runtime, in config order, and the refusals they made
/// lately (the repeats not logged one by one).
pub(super) struct ServiceTable {
    /// Boxed: a reload moves each service once, and 10,000 runtimes of
    /// 1.2 kB inline would be 12 MB copied into a new list.
    #[allow(clippy::vec_box)]
    list: Vec<Box<ServiceRuntime>>,
    /// Service identity → index into `list`, rebuilt on reload.
    by_id: FxHashMap<ServiceId, usize>,
    next_id: u64,
    /// Refusals by service, client and reason in this interval: the first
    /// is logged, its repeats summarised at the interval's end.
    refusals: RefusalLog<RefusalKey>,
}

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable {
            list: Vec::new(),
            by_id: FxHashMap::default(),
            next_id: 1,
            refusals: RefusalLog::default(),
        }
    }
}

impl Index<usize> for ServiceTable {
    type Output = ServiceRuntime;
    fn index(&self, idx: usize) -> &ServiceRuntime {
        &self.list[idx]
    }
}

impl IndexMut<usize> for ServiceTable {
    fn index_mut(&mut self, idx: usize) -> &mut ServiceRuntime {
        &mut self.list[idx]
    }
}

impl ServiceTable {
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &ServiceRuntime> {
        self.list.iter().map(|b| &**b)
    }

    /// Where service `id` is now, if it is still configured.
    pub(super) fn index_of(&self, id: ServiceId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub(super) fn name_of(&self, id: ServiceId) -> &str {
        self.index_of(id)
            .map_or("(removed service)", |i| self.list[i].spec.name.as_str())
    }

    /// Count a refusal by service `idx` of client `source` for `why`: by
    /// kind, among its most refused clients, and in the refusal log, which
    /// says whether to log it now (true: the first of the interval for
    /// this service, client and reason) or summarise it with its repeats
    /// (`flush_refusals`). The one place a refusal is counted, for
    /// connections and datagrams alike.
    pub(super) fn refuse(
        &mut self,
        idx: usize,
        source: Option<SourceKey>,
        why: RefuseReason,
        now: Instant,
    ) -> bool {
        let svc = &mut self.list[idx];
        svc.stats.refused_by[why.kind()] += 1;
        if let Some(key) = source {
            svc.top_refused.record(key);
        }
        self.refusals.record((svc.id, source, why), now)
    }

    /// Refuse a client counted served at its admission: a forward
    /// client held for a full backlog (`forward/busy.rs`) is refused,
    /// not served, so served and refused add up to the clients admitted.
    pub(super) fn refuse_admitted(
        &mut self,
        idx: usize,
        source: Option<SourceKey>,
        why: RefuseReason,
        now: Instant,
    ) -> bool {
        let served = &mut self.list[idx].stats.served;
        *served = served.saturating_sub(1);
        self.refuse(idx, source, why, now)
    }

    /// When the refusal log's interval ends, if it holds any.
    pub(super) fn refusal_deadline(&self) -> Option<Instant> {
        self.refusals.deadline()
    }

    /// The repeats not logged in the interval that ended at `now`, if it
    /// has.
    pub(super) fn flush_refusals(&mut self, now: Instant) -> Option<Summary<RefusalKey>> {
        self.refusals.flush(now)
    }

    /// Each service's index by name, for what an upgrade state names by
    /// service (10,000 children would otherwise search one by one).
    pub(super) fn by_name(&self) -> FxHashMap<String, usize> {
        self.iter()
            .enumerate()
            .map(|(i, svc)| (svc.spec.name.clone(), i))
            .collect()
    }

    /// The counters by service name, for the next image of an upgrade.
    pub(super) fn stats_state(&self) -> Vec<(String, Stats)> {
        self.iter()
            .map(|s| (s.spec.name.clone(), s.stats.clone()))
            .collect()
    }

    /// The crash guards, rate buckets and top refused clients with
    /// something to remember, for the next image of an upgrade; `answers`
    /// gives an internal UDP service's budget of answers (kept by the
    /// datagram guard), if not full.
    pub(super) fn limits_state(
        &self,
        now: Instant,
        answers: impl Fn(ServiceId) -> Option<BucketState>,
    ) -> Vec<LimitsState> {
        self.iter()
            .filter_map(|svc| svc.limits_state(now, answers(svc.id)))
            .collect()
    }

    /// Take over the counters of the services still configured.
    pub(super) fn resume_stats(
        &mut self,
        stats: Vec<(String, Stats)>,
        index: &FxHashMap<String, usize>,
    ) {
        for (name, stats) in stats {
            if let Some(i) = index.get(&name) {
                self.list[*i].stats = stats;
            }
        }
    }

    /// The identity of the service named `name` (`index`: by name), or
    /// a new one for children and connections whose service is gone
    /// (carried by an upgrade).
    pub(super) fn id_by_name(
        &mut self,
        name: Option<&str>,
        index: &FxHashMap<String, usize>,
    ) -> ServiceId {
        match name.and_then(|n| index.get(n)) {
            Some(&i) => self.list[i].id,
            None => self.new_id(),
        }
    }

    /// Take over what the previous image's limits remembered, for the
    /// services still configured (`index`: by name): each one's id, the
    /// timers to set again, and the datagram guard's budget of answers.
    pub(super) fn resume_limits(
        &mut self,
        limits: Vec<LimitsState>,
        index: &FxHashMap<String, usize>,
        now: Instant,
    ) -> Vec<(ServiceId, LimitsResumed, Option<BucketState>)> {
        let mut resumed = Vec::new();
        for mut l in limits {
            let Some(&idx) = index.get(&l.service) else {
                continue;
            };
            let answers = l.answers.take();
            let svc = &mut self.list[idx];
            resumed.push((svc.id, svc.resume_limits(l, now), answers));
        }
        resumed
    }

    /// A new identity, for children and connections whose service is gone
    /// (carried by an upgrade).
    pub(super) fn new_id(&mut self) -> ServiceId {
        let id = ServiceId(self.next_id);
        self.next_id += 1;
        id
    }

    /// What moving to `new` would do: services added, removed, changed
    /// (by name; a changed one keeps its runtime).
    pub(super) fn changes(&self, new: &[ServiceSpec]) -> Changes {
        let old = self.by_name();
        let mut c = Changes::default();
        for spec in new {
            match old.get(spec.name.as_str()) {
                None => c.added += 1,
                Some(&i) if self.list[i].spec != *spec => c.changed += 1,
                Some(_) => {}
            }
        }
        let kept = new.len() as u64 - c.added;
        c.removed = self.list.len() as u64 - kept;
        c
    }

    /// The services `summond pause` holds, by name, for the next image
    /// of an upgrade.
    pub(super) fn paused_names(&self) -> Vec<String> {
        self.list
            .iter()
            .filter(|s| s.paused)
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// Pause again the services an older image held paused.
    pub(super) fn resume_paused(&mut self, names: &[String]) {
        let index = self.by_name();
        for name in names {
            if let Some(&i) = index.get(name) {
                self.list[i].paused = true;
            }
        }
    }

    /// Move to the services `specs`: each runtime follows its service's
    /// name, a name new to the config is a new service, and runtimes of
    /// services no longer configured are dropped. Returns the indices of
    /// the services whose runtime directories are to be made now.
    pub(super) fn carry_over(&mut self, specs: Vec<ServiceSpec>, now: Instant) -> Vec<usize> {
        // Each runtime is moved once, into the new list: indexed by name
        // here, not moved into a map (10,000 of them are 11 MB).
        let mut old: Vec<Option<Box<ServiceRuntime>>> = std::mem::take(&mut self.list)
            .into_iter()
            .map(Some)
            .collect();
        let old_index: FxHashMap<Rc<str>, usize> = old
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((s.as_ref()?.name.clone(), i)))
            .collect();
        let mut list = Vec::with_capacity(specs.len());
        let mut make_dirs = Vec::new();
        // Each spec moves into its runtime (or is dropped for the equal one
        // kept), not copied: the config keeps no second set.
        for spec in specs {
            let kept = old_index
                .get(spec.name.as_str())
                .and_then(|i| old[*i].take());
            if ServiceRuntime::needs_dirs(kept.as_deref(), &spec) {
                make_dirs.push(list.len());
            }
            list.push(match kept {
                // Unchanged (most services in most reloads): kept whole,
                // nothing rebuilt.
                Some(rt) if rt.spec == spec => rt,
                Some(mut rt) => {
                    rt.respec(spec, now);
                    rt
                }
                None => Box::new(ServiceRuntime::new(self.new_id(), spec, now)),
            });
        }
        self.list = list;
        self.by_id = self
            .list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        make_dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Host};
    use std::path::Path;
    use std::time::Duration;

    fn specs(text: &str) -> Vec<ServiceSpec> {
        let host = Host {
            path_var: "/usr/bin:/bin".into(),
            is_root: false,
            runtime_base: Some("/run".into()),
        };
        parse(Path::new("t.toml"), text, &host).unwrap().services
    }

    const TWO: &str = r#"
        [[service]]
        name = "a"
        listen = ["tcp://127.0.0.1:7001"]
        exec = ["true"]
        rate = "2/1s"
        [[service]]
        name = "b"
        listen = ["tcp://127.0.0.1:7002"]
        exec = ["true"]
        runtime_directory = ["b"]
    "#;

    #[test]
    fn a_runtime_follows_its_name_across_a_reload() {
        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        assert_eq!(t.carry_over(specs(TWO), t0), vec![1], "new: dirs made");
        let (a, b) = (t[0].id, t[1].id);
        t[0].stats.served = 7;
        t[1].stats.served = 9;
        assert!(t[0].rate.as_mut().unwrap().take(t0));

        // b moves first, a's rate changes, c is new.
        let next = specs(
            r#"
            [[service]]
        name = "b"
            listen = ["tcp://127.0.0.1:7002"]
            exec = ["true"]
            runtime_directory = ["b"]
            [[service]]
        name = "a"
            listen = ["tcp://127.0.0.1:7001"]
            exec = ["true"]
            rate = "3/1s"
            [[service]]
        name = "c"
            listen = ["tcp://127.0.0.1:7003"]
            exec = ["true"]
        "#,
        );
        let t1 = t0 + Duration::from_millis(1);
        assert!(t.carry_over(next, t1).is_empty(), "b's directories stand");
        assert_eq!((t[0].id, t[0].stats.served), (b, 9));
        assert_eq!((t[1].id, t[1].stats.served), (a, 7));
        assert_eq!(t.index_of(a), Some(1));
        assert_eq!(t[1].rate.unwrap().rate().to_string(), "3/1s");
        assert!(t[1].rate.unwrap().is_full(t1), "a changed rate starts full");
        let c = t[2].id;
        assert!(c != a && c != b);

        // a removed and added again is a new service.
        t.carry_over(specs(TWO).into_iter().skip(1).collect(), t1);
        assert_eq!(t.index_of(a), None);
        assert_eq!(t.name_of(a), "(removed service)");
        t.carry_over(specs(TWO), t1);
        assert!(t[0].id != a && t[0].stats.served == 0);
        assert_eq!(t.name_of(t[0].id), "a");
    }

    #[test]
    fn an_exit_is_counted_and_a_pass_mode_failure_feeds_the_crash_guard() {
        use crate::limits::{CRASH_HOLD, CRASH_LIMIT};
        use crate::stats::ExitOutcome::*;
        use nix::sys::signal::Signal;
        use nix::unistd::Pid;

        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        t.carry_over(specs(TWO), t0);
        let svc = &mut t[0];
        let pid = Pid::from_raw(1);
        let (ok, failed) = (WaitStatus::Exited(pid, 0), WaitStatus::Exited(pid, 1));
        let killed = WaitStatus::Signaled(pid, Signal::SIGTERM, false);
        let end = |status, pass_mode, unread| Ended {
            status,
            exec_failed: false,
            ran: Duration::from_millis(20),
            pass_mode,
            unread,
            not_ready: false,
        };

        // Accept mode: counted, never held.
        for _ in 0..CRASH_LIMIT + 1 {
            assert_eq!(
                svc.record_exit(&end(&failed, false, false), t0),
                Recorded::default()
            );
        }
        svc.record_exit(&end(&killed, false, false), t0);
        svc.record_exit(&end(&ok, false, false), t0);
        let exits: Vec<u64> = svc.stats.exits.iter().map(|(_, n)| n).collect();
        assert_eq!(exits, [1, CRASH_LIMIT as u64 + 1, 1, 0]);
        assert_eq!(svc.stats.exits[Signal], 1);
        assert_eq!(svc.stats.durations.get().count(), CRASH_LIMIT as u64 + 3);
        assert_eq!(svc.stats.last_exit.as_deref(), Some("exited with status 0"));
        assert!(svc.may_start(t0).is_ok());

        // Pass mode: an unread exit starts an episode (logged once) and
        // counts toward the guard, as failures do; a read one ends it.
        let first = svc.record_exit(&end(&ok, true, true), t0);
        assert!(first.first_unread && first.held_until.is_none());
        assert!(!svc.record_exit(&end(&ok, true, true), t0).first_unread);
        svc.record_exit(&end(&ok, true, false), t0);
        assert!(svc.record_exit(&end(&ok, true, true), t0).first_unread);
        let mut held = None;
        for _ in 3..CRASH_LIMIT {
            held = held.or(svc.record_exit(&end(&failed, true, false), t0).held_until);
        }
        assert_eq!(
            held,
            Some(t0 + CRASH_HOLD),
            "the {CRASH_LIMIT}th failure holds it"
        );
        assert_eq!(
            svc.may_start(t0),
            Err(Pause::CrashHold {
                until: t0 + CRASH_HOLD
            })
        );
        assert!(svc.may_start(t0 + CRASH_HOLD).is_ok());
    }

    #[test]
    fn a_service_may_spawn_below_max_instances_and_unpaused() {
        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        t.carry_over(
            specs(&TWO.replace("rate = ", "max_instances = 2\n        rate = ")),
            t0,
        );
        assert!(t[0].may_spawn(1, t0));
        assert!(!t[0].may_spawn(2, t0), "at max_instances");
        assert!(t[1].may_spawn(1000, t0), "no max_instances");
        while t[0].rate.as_mut().unwrap().take(t0) {}
        assert!(!t[0].may_spawn(0, t0), "its rate is spent");
    }

    #[test]
    fn a_refusal_is_counted_and_its_repeats_are_summarised() {
        use crate::refusals::REFUSAL_INTERVAL;
        use crate::stats::RefusalKind;
        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        t.carry_over(specs(TWO), t0);
        let ip = SourceKey::Ip("10.0.0.1".parse().unwrap());
        let why = RefuseReason::MaxPerSource(1);
        assert!(t.refuse(0, Some(ip), why, t0), "the first is logged");
        assert!(!t.refuse(0, Some(ip), why, t0), "a repeat is not");
        assert!(t.refuse(1, Some(ip), why, t0), "another service's is");
        assert!(t.refuse(0, None, why, t0), "so is an unknown peer's");
        assert_eq!(t[0].stats.refused_by[RefusalKind::MaxPerSource], 3);
        assert_eq!(t[0].top_refused.top(3), vec![(ip, 2)]);
        let end = t.refusal_deadline().unwrap();
        assert!(end <= t0 + REFUSAL_INTERVAL && t.flush_refusals(t0).is_none());
        let summary = t.flush_refusals(end).unwrap();
        assert_eq!(summary.repeats, vec![((t[0].id, Some(ip), why), 1)]);
    }

    #[test]
    fn limits_are_carried_to_the_next_image_by_name() {
        use crate::limits::{CRASH_HOLD, CRASH_LIMIT};
        use nix::unistd::Pid;

        let t0 = Instant::now();
        let mut old = ServiceTable::default();
        old.carry_over(specs(TWO), t0);
        assert!(
            old[0].limits_state(t0, None).is_none(),
            "nothing to remember"
        );
        let failed = WaitStatus::Exited(Pid::from_raw(1), 1);
        for _ in 0..CRASH_LIMIT {
            old[0].record_exit(
                &Ended {
                    status: &failed,
                    exec_failed: false,
                    ran: Duration::ZERO,
                    pass_mode: true,
                    unread: false,
                    not_ready: false,
                },
                t0,
            );
        }
        let bucket = old[0].rate.as_mut().unwrap();
        while bucket.take(t0) {}
        let state = old[0].limits_state(t0, None).unwrap();
        assert_eq!(state.service, "a");

        let mut new = ServiceTable::default();
        new.carry_over(specs(TWO), t0);
        let resumed = new[0].resume_limits(state, t0);
        assert_eq!(resumed.held_until, Some(t0 + CRASH_HOLD));
        assert!(resumed.next_token.is_some_and(|at| at > t0));
        assert!(new[0].rate_timer);
        assert!(matches!(new[0].may_start(t0), Err(Pause::CrashHold { .. })));

        // Counters go by name too.
        old[1].stats.served = 4;
        new.resume_stats(old.stats_state(), &new.by_name());
        assert_eq!((new[0].stats.exits.total(), new[1].stats.served), (5, 4));
    }

    #[test]
    fn runtime_directories_are_made_again_after_a_failure_or_a_change() {
        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        t.carry_over(specs(TWO), t0);
        t[1].runtime_dir_failed = true;
        assert_eq!(t.carry_over(specs(TWO), t0), vec![1], "retried");
        t[1].runtime_dir_failed = false;
        let changed = TWO.replace(r#"["b"]"#, r#"["b2"]"#);
        assert_eq!(t.carry_over(specs(&changed), t0), vec![1]);
        let disabled = changed.replace(
            "runtime_directory",
            "disabled = true\n        runtime_directory",
        );
        assert!(t.carry_over(specs(&disabled), t0).is_empty());
    }

    #[test]
    fn changes_count_added_removed_and_changed_services() {
        let t0 = Instant::now();
        let mut t = ServiceTable::default();
        t.carry_over(specs(TWO), t0);
        assert_eq!(t.changes(&specs(TWO)), Changes::default());
        let mut next = specs(TWO);
        next[0].max_instances = Some(3);
        next.remove(1);
        let mut third = specs(TWO).remove(1);
        third.name = "c".into();
        next.push(third);
        assert_eq!(
            t.changes(&next),
            Changes {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
    }
}
