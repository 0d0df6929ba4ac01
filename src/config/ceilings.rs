//! How high a child's resource limits can go on this host, read once per
//! load for the `rlimits` checks (options.rs) and kept on the `Checker`,
//! and asked by the importer (`rlimit_ceiling`).

use super::RlimitKind;

/// How high a child's limits can go: what setrlimit(2) in the child will
/// accept, known when the config loads, so --check and a reload catch a
/// value every child would fail on (EPERM). A process may raise a hard
/// limit only with CAP_SYS_RESOURCE, and never RLIMIT_NOFILE above
/// fs.nr_open.
#[derive(Clone, Copy, Debug)]
pub(super) struct RlimitCeilings {
    /// summond may raise hard limits (root with CAP_SYS_RESOURCE).
    may_raise: bool,
    nr_open: Option<u64>,
}

/// The most of the `rlimits` entry `name` a child can get here, and what
/// sets it: what --check lets through (None: nothing bounds it, or no
/// such name). For the importer, which writes no limit --check refuses.
pub fn rlimit_ceiling(name: &str) -> Option<(u64, String)> {
    let kind = RlimitKind::ALL.iter().find(|(n, ..)| *n == name)?.1;
    let (max, why) = RlimitCeilings::current(nix::unistd::geteuid().is_root()).of(kind);
    Some((max?, why))
}

/// CAP_SYS_RESOURCE's bit in the capability sets (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

impl RlimitCeilings {
    pub(super) fn current(is_root: bool) -> RlimitCeilings {
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            });
        RlimitCeilings {
            // Where /proc cannot tell, root is assumed to hold it.
            may_raise: is_root && cap_eff.is_none_or(|c| c & (1 << CAP_SYS_RESOURCE) != 0),
            nr_open: std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }

    /// The highest value of `kind` a child can get (None: no bound) and
    /// what sets it.
    pub(super) fn of(self, kind: RlimitKind) -> (Option<u64>, String) {
        use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
        let resource = match kind {
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
            RlimitKind::Nproc => Resource::RLIMIT_NPROC,
            RlimitKind::As => Resource::RLIMIT_AS,
            RlimitKind::Cpu => Resource::RLIMIT_CPU,
            RlimitKind::Core => Resource::RLIMIT_CORE,
            RlimitKind::Fsize => Resource::RLIMIT_FSIZE,
            RlimitKind::Data => Resource::RLIMIT_DATA,
            RlimitKind::Stack => Resource::RLIMIT_STACK,
            RlimitKind::Memlock => Resource::RLIMIT_MEMLOCK,
        };
        let nr_open = match (kind, self.nr_open) {
            (RlimitKind::Nofile, Some(n)) => Some(n),
            _ => None,
        };
        let hard = match getrlimit(resource) {
            Ok((_, hard)) if hard != RLIM_INFINITY && !self.may_raise => Some(hard),
            _ => None,
        };
        match (hard, nr_open) {
            (Some(h), Some(n)) if n < h => (Some(n), format!("fs.nr_open is {n}")),
            (Some(h), _) => (
                Some(h),
                format!("summond's hard limit is {h}, and raising it needs CAP_SYS_RESOURCE"),
            ),
            (None, Some(n)) => (Some(n), format!("fs.nr_open is {n}")),
            (None, None) => (None, String::new()),
        }
    }
}
