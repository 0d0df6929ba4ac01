//! A backend's process tree, for stopping it whole. A backend runs in a
//! session and process group of its own, and the group gets every stop
//! signal; but a process that daemonizes (fork, setsid, fork) leaves the
//! group. The backend is a subreaper (`spawn::ChildSetup::subreaper`),
//! so such a daemon is reparented to it, not to init, and stays in its
//! tree: at a stop the tree is read from /proc (each process's
//! children, from the backend's pid down) and each member outside the
//! group gets the signal too (its group read again at each signal: a
//! member may leave the group after the read).
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

use log::debug;
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
/// every process's stat, a read per process on the host. At most
/// `MAX_TREE` members, counted as each is read: a parent of 10,000
/// children costs `MAX_TREE` reads, not 10,000. A child whose stat names
/// another parent is not taken: its pid was reused between the two reads.
pub(super) fn descendants(leader: Pid) -> Vec<Member> {
    descendants_upto(leader, MAX_TREE)
}

fn descendants_upto(leader: Pid, cap: usize) -> Vec<Member> {
    let kids = |parent| {
        let kids = children(parent)?.into_iter();
        Some(kids.filter_map(move |pid| {
            let (pid, _, pgid, start) = stat_of(pid).filter(|s| s.1 == parent)?;
            Some((pid, pgid, start))
        }))
    };
    walk(leader, cap, kids).unwrap_or_else(|| scan_all(leader, cap))
}

/// The tree under `leader`, depth first, at most `cap` members: `kids`
/// gives a parent's children (pid, pgid, start time) one at a time, read
/// only as the walk takes them, or None if it cannot tell (the walk then
/// gives None too). Bounded: a fork bomb in the tree does not hold the
/// loop.
fn walk<I: Iterator<Item = (i32, i32, u64)>>(
    leader: Pid,
    cap: usize,
    mut kids: impl FnMut(i32) -> Option<I>,
) -> Option<Vec<Member>> {
    let mut out = Vec::new();
    let mut next = vec![leader.as_raw()];
    while let Some(parent) = next.pop() {
        for (pid, pgid, start) in kids(parent)? {
            if out.len() >= cap {
                return Some(out);
            }
            out.push(Member {
                pid: Pid::from_raw(pid),
                start,
                pgid,
            });
            next.push(pid);
        }
    }
    Some(out)
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
fn scan_all(leader: Pid, cap: usize) -> Vec<Member> {
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
    let kids = |parent| Some(children.get(&parent).into_iter().flatten().copied());
    walk(leader, cap, kids).unwrap_or_default()
}

/// `sig` to each member that is still the process it was (its start
/// time) and is outside `leader`'s group now (the group gets its own):
/// its group is read again, since a member may have left it after the
/// tree was read (a child calling setsid() in its SIGTERM handler). Each
/// logged at debug only (a wide tree is thousands). How many were
/// signalled.
pub(super) fn signal(name: &str, members: &[Member], leader: Pid, sig: Signal) -> usize {
    let mut n = 0;
    for m in members {
        let Some((_, _, pgid, start)) = stat_of(m.pid.as_raw()) else {
            continue;
        };
        if start == m.start && pgid != leader.as_raw() && kill(m.pid, sig).is_ok() {
            debug!(
                "{name}: pid {} left backend pid {leader}'s process group (a daemon): {sig} to it too",
                m.pid
            );
            n += 1;
        }
    }
    n
}

/// The members kept from before and those there now, once each (one
/// process is its pid and start time; its group may have changed).
pub(super) fn merge(kept: &mut Vec<Member>, now: Vec<Member>) {
    for m in now {
        if !kept.iter().any(|k| k.pid == m.pid && k.start == m.start) {
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
        for tree in [descendants(parent), scan_all(parent, MAX_TREE)] {
            assert!(tree
                .iter()
                .any(|m| m.pid.as_raw() == me && m.start == start));
        }
    }

    /// The cap counts members, not parents walked: of a parent's three
    /// children, a cap of two reads two (it read all three before, the
    /// cap being checked once per parent).
    #[test]
    fn the_cap_bounds_the_children_of_one_parent() {
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let me = Pid::from_raw(std::process::id() as i32);
        let (walked, scanned) = (descendants_upto(me, 2), scan_all(me, 2));
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        assert_eq!(walked.len(), 2);
        assert_eq!(scanned.len(), 2);
    }
}
