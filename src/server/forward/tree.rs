//! A backend's process tree, for stopping it whole. A backend runs in a
//! session and process group of its own, and the group gets every stop
//! signal; but a process that daemonizes (fork, setsid, fork) leaves the
//! group. The backend is a subreaper (`spawn::ChildSetup::subreaper`),
//! so such a daemon is reparented to it, not to init, and stays in its
//! tree: at a stop the tree is read from /proc (each process's
//! children, from the backend's pid down) and each member outside the group gets the signal too.
//! The members are kept, each with its start time, so the SIGKILL after
//! `stop_timeout`, or after the backend's own exit, reaches them even
//! once the backend (their parent) is gone, and never a later process
//! that reused a pid.
//!
//! systemd does this with a cgroup per unit (KillMode=control-group);
//! s6 and runit ask for programs that stay in the foreground
//! (s6-background-watch and s6-fghack being the workarounds). A backend
//! whose own process daemonizes and exits is seen as exited: run it in
//! the foreground (nginx `daemon off;`).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustc_hash::FxHashMap;

/// The most members a stop reads of a tree.
const MAX_TREE: usize = 4096;

/// A process of a backend's tree, as /proc showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Member {
    pub pid: Pid,
    /// Its start time (clock ticks since boot): with the pid, one process.
    pub start: u64,
    pub pgid: i32,
}

/// (pid, ppid, pgid, start time) of a /proc/PID/stat line.
fn parse_stat(line: &str) -> Option<(i32, i32, i32, u64)> {
    let (head, rest) = line.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    // After the name: state, ppid, pgrp, session, ... starttime (the
    // 20th field after the name).
    let mut f = rest.split_whitespace();
    let ppid = f.nth(1)?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let start = f.nth(16)?.parse().ok()?;
    Some((pid, ppid, pgid, start))
}

fn stat_of(pid: i32) -> Option<(i32, i32, i32, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process descending from `leader` (not itself), read from /proc
/// now, at a stop only: through each thread's `children` file, a read per
/// process of the tree; where the kernel has none (CONFIG_PROC_CHILDREN),
/// every process's stat, a read per process on the host.
pub(super) fn descendants(leader: Pid) -> Vec<Member> {
    let mut out = Vec::new();
    let mut next = vec![leader.as_raw()];
    // Bounded: a fork bomb in the tree does not hold the loop.
    while let Some(parent) = next.pop().filter(|_| out.len() < MAX_TREE) {
        let Some(kids) = children(parent) else {
            return scan_all(leader);
        };
        for pid in kids {
            if let Some((pid, _, pgid, start)) = stat_of(pid) {
                out.push(Member {
                    pid: Pid::from_raw(pid),
                    start,
                    pgid,
                });
                next.push(pid);
            }
        }
    }
    out
}

/// The children of `pid` (of each of its threads); none if the kernel
/// has no `children` files (a process gone meanwhile has no children).
fn children(pid: i32) -> Option<Vec<i32>> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && task.path().exists() => {
                return None
            }
            Err(_) => {}
        }
    }
    Some(out)
}

/// `descendants` from every process's stat.
fn scan_all(leader: Pid) -> Vec<Member> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: FxHashMap<i32, Vec<(i32, i32, u64)>> = FxHashMap::default();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((pid, ppid, pgid, start)) = stat_of(pid) {
            children.entry(ppid).or_default().push((pid, pgid, start));
        }
    }
    let mut out = Vec::new();
    let mut next = vec![leader.as_raw()];
    while let Some(parent) = next.pop().filter(|_| out.len() < MAX_TREE) {
        for &(pid, pgid, start) in children.get(&parent).into_iter().flatten() {
            out.push(Member {
                pid: Pid::from_raw(pid),
                start,
                pgid,
            });
            next.push(pid);
        }
    }
    out
}

/// `sig` to each member that left `leader`'s group (the group gets its
/// own) and is still the process it was. How many were signalled.
pub(super) fn signal(members: &[Member], leader: Pid, sig: Signal) -> usize {
    let mut n = 0;
    for m in members.iter().filter(|m| m.pgid != leader.as_raw()) {
        if stat_of(m.pid.as_raw()).is_some_and(|(_, _, _, start)| start == m.start)
            && kill(m.pid, sig).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The members kept from before and those there now, once each.
pub(super) fn merge(kept: &mut Vec<Member>, now: Vec<Member>) {
    for m in now {
        if !kept.contains(&m) {
            kept.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_parent_group_and_start_even_with_odd_names() {
        let line = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4242, 17, 4242, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    /// This test's own process is a descendant of its parent, with the
    /// start time /proc gives for it, read either way.
    #[test]
    fn the_tree_of_a_parent_holds_its_child() {
        let me = std::process::id() as i32;
        let (_, parent, _, start) = stat_of(me).unwrap();
        let parent = Pid::from_raw(parent);
        for tree in [descendants(parent), scan_all(parent)] {
            assert!(tree
                .iter()
                .any(|m| m.pid.as_raw() == me && m.start == start));
        }
    }
}
