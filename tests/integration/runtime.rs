//! `max_runtime` and the deadlines it sets: the SIGKILL reaches what is
//! left of a child's process group after the child itself exited, it is
//! still owed after a live upgrade in the grace, and a child that exits
//! within its limit leaves no deadline behind, and the SIGKILL never
//! reaches a new group that got the id of an emptied one.

use std::path::Path;

use crate::util::*;

/// Is `pid` gone (or a zombie, which signals no longer matter to)?
fn gone(pid: i32) -> bool {
    !matches!(proc_state(pid), Some(s) if s != 'Z')
}

/// A leader that dies of the SIGTERM, leaving in its group a process that
/// ignores it; the leader prints that process's pid.
fn orphaning(port: u16) -> String {
    format!(
        "[[service]]\nname = \"orphaning\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_runtime = \"1s\"\nexec = {}\n",
        sh("sh -c \"trap '' TERM; exec sleep 60\" & echo $!; sleep 60")
    )
}

/// A leader that ignores the SIGTERM and prints its own pid.
fn deaf(port: u16) -> String {
    format!(
        "[[service]]\nname = \"deaf\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_runtime = \"1s\"\nexec = {}\n",
        sh("trap '' TERM; echo $$; exec sleep 60")
    )
}

fn first_pid(port: u16) -> (std::net::TcpStream, i32) {
    let conn = connect_tcp(([127, 0, 0, 1], port).into());
    let pid = read_line(&conn).trim().parse().expect("a pid");
    (conn, pid)
}

#[test]
fn max_runtime_sigkills_what_is_left_of_the_group_after_its_leader_died_of_the_sigterm() {
    let port = free_port();
    let s = Summond::start(&orphaning(port));
    let (_conn, straggler) = first_pid(port);
    let leader = parent_pid(straggler).expect("the leader is the straggler's parent");
    let client = _conn.local_addr().unwrap().port();
    assert!(
        s.wait_log(&format!(
            "orphaning: pid {leader} for 127.0.0.1:{client} ran past max_runtime 1s; SIGTERM"
        )),
        "{}",
        s.log_text()
    );
    // The leader dies of the SIGTERM; summond holds its zombie (and so
    // the group's id) until the SIGKILL.
    assert!(
        wait_until(TIMEOUT, || proc_state(leader) == Some('Z')),
        "the leader did not die of the SIGTERM, or was reaped in the grace:\n{}",
        s.log_text()
    );
    assert!(!gone(straggler), "the straggler ignores SIGTERM");
    // The SIGKILL is due 5 s after the SIGTERM; 10 s more are allowed.
    assert!(
        wait_until(TIMEOUT + KILL_AFTER, || gone(straggler)),
        "pid {straggler} of the group survived:\n{}",
        s.log_text()
    );
    // Reaped after the SIGKILL, its exit logged with the time it ran
    // (about 1 s), not the time it was held.
    let exit = format!(
        "orphaning: pid {leader} for 127.0.0.1:{client} killed by signal 15 (SIGTERM) after "
    );
    assert!(s.wait_log(&exit), "{}", s.log_text());
    let log = s.log_text();
    let ran: f64 = log
        .lines()
        .find_map(|l| l.split_once(&exit)?.1.strip_suffix('s')?.parse().ok())
        .unwrap();
    assert!(ran < KILL_AFTER.as_secs_f64(), "ran {ran}s:\n{log}");
    assert!(
        log.contains(&format!(
            "orphaning: pid {leader} for 127.0.0.1:{client} exited after SIGTERM; SIGKILL to whatever is left of its process group"
        )),
        "{log}"
    );
}

const KILL_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

#[test]
fn a_sigkill_due_from_max_runtime_is_still_sent_after_an_upgrade_in_its_grace() {
    let (p_deaf, p_orphaning) = (free_port(), free_port());
    let (s, _, control) = start_upgradable(
        TempDir::new("runtime-upgrade"),
        &format!("{}{}", deaf(p_deaf), orphaning(p_orphaning)),
        Start::default(),
    );
    let (_c1, deaf_pid) = first_pid(p_deaf);
    let (_c2, straggler) = first_pid(p_orphaning);
    let leader = parent_pid(straggler).expect("the leader is the straggler's parent");
    let term = |pid: i32| format!("pid {pid} for 127.0.0.1:");
    assert!(
        wait_until(TIMEOUT, || {
            let log = s.log_text();
            log.lines()
                .filter(|l| l.contains("SIGTERM to its process group, SIGKILL in 5s"))
                .filter(|l| l.contains(&term(deaf_pid)) || l.contains(&term(leader)))
                .count()
                == 2
        }),
        "{}",
        s.log_text()
    );
    upgrade_ok(&s, &control);
    // The upgrade fell in the grace: both groups are still there.
    assert!(
        !gone(deaf_pid) && !gone(straggler),
        "the SIGKILL came before the upgrade finished; the test proves nothing:\n{}",
        s.log_text()
    );
    assert!(
        wait_until(TIMEOUT + KILL_AFTER, || gone(deaf_pid) && gone(straggler)),
        "a SIGKILL was lost in the upgrade:\n{}",
        s.log_text()
    );
    assert!(s.wait_log(&format!(
        "deaf: pid {deaf_pid} for 127.0.0.1:{} killed by signal 9 (SIGKILL)",
        _c1.local_addr().unwrap().port()
    )));
    let log = s.log_text();
    for pid in [deaf_pid, leader] {
        // Owed, not started over: one SIGTERM each, not a second one
        // from a max_runtime set again by the new image.
        assert_eq!(
            log.lines()
                .filter(|l| l.contains(&term(pid)) && l.contains("ran past max_runtime"))
                .count(),
            1 + usize::from(pid == deaf_pid),
            "pid {pid}: one SIGTERM line (and for the deaf one the SIGKILL line):\n{log}"
        );
    }
    assert!(
        log.contains("is still running 5s after SIGTERM; SIGKILL to its process group")
            && log.contains(&format!(
                "pid {leader} for 127.0.0.1:{} exited after SIGTERM; SIGKILL to whatever is left",
                _c2.local_addr().unwrap().port()
            )),
        "{log}"
    );
    // Nothing of either is left to wait for in the new image.
    assert!(
        wait_until(TIMEOUT, || status_json(&control)["children"] == 0),
        "{}",
        s.log_text()
    );
    assert_eq!(status_json(&control)["pending_timers"], 0);
}

#[test]
fn children_that_exit_within_max_runtime_leave_no_deadline_behind() {
    let (quick, held) = (free_port(), free_port());
    let dir = TempDir::new("runtime-timers");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}[[service]]\nname = \"quick\"\nlisten = \"tcp://127.0.0.1:{quick}\"\nmax_runtime = \"1d\"\nexec = [\"echo\", \"hi\"]\n\
                 [[service]]\nname = \"held\"\nlisten = \"tcp://127.0.0.1:{held}\"\nmax_runtime = \"1d\"\nexec = {}\n",
                daemon_control(&control),
                sh("echo up; read x")
            ),
            ..Start::default()
        },
    );
    let timers = || status_json(&control)["pending_timers"].as_u64().unwrap();
    assert_eq!(timers(), 0);
    let running = connect_tcp(([127, 0, 0, 1], held).into());
    assert_eq!(read_line(&running), "up\n");
    assert_eq!(timers(), 1, "the running child's max_runtime");
    const N: usize = 60;
    for _ in 0..N {
        assert_eq!(tcp_port_exchange(quick, b""), "hi\n");
    }
    assert!(
        wait_until(TIMEOUT, || s.log_count("quick: pid") >= N
            && status_json(&control)["children"] == 1),
        "every quick child exited:\n{}",
        s.log_text()
    );
    assert_eq!(timers(), 1, "{N} children served, one running");
    drop(running);
    assert!(wait_until(TIMEOUT, || status_json(&control)["children"] == 0));
    assert_eq!(timers(), 0);
}

/// A service running `sleep` under `max_runtime` (none if `limit` is
/// empty) that prints its pid.
fn sleeper(name: &str, port: u16, limit: &str) -> String {
    let limit = if limit.is_empty() {
        String::new()
    } else {
        format!("max_runtime = \"{limit}\"\n")
    };
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\n{limit}exec = {}\n",
        sh("echo $$; exec sleep 60")
    )
}

/// Review of issue 15 (spawn, finding 4): an upgrade gave running children
/// the new config's `max_runtime` (a `1d` child killed at a new `2s`, a
/// `3s` one never killed once the limit was removed) and a removed
/// service's children none at all; a reload leaves each child its own.
/// Each keeps the deadline it started with across an upgrade too.
#[test]
fn running_children_keep_their_own_max_runtime_across_an_upgrade() {
    let (p_long, p_short, p_gone) = (free_port(), free_port(), free_port());
    let (s, _, control) = start_upgradable(
        TempDir::new("runtime-carry"),
        &format!(
            "{}{}{}",
            sleeper("long", p_long, "1d"),
            sleeper("short", p_short, "3s"),
            sleeper("gone", p_gone, "3s")
        ),
        Start::default(),
    );
    // `long` first: 2 s from its start comes before the others' 3 s.
    let (_c1, long) = first_pid(p_long);
    let _long = KillOnDrop::new(long);
    let (_c2, short) = first_pid(p_short);
    let (_c3, removed) = first_pid(p_gone);
    s.write_config(&format!(
        "{}{}{}",
        daemon_control(&control),
        sleeper("long", p_long, "2s"),
        sleeper("short", p_short, "")
    ));
    upgrade_ok(&s, &control);
    let stopped = |name: &str, pid: i32, limit: &str| {
        s.log_text().lines().any(|l| {
            l.contains(&format!("{name}: pid {pid} for"))
                && l.contains(&format!("ran past max_runtime {limit}; SIGTERM"))
        })
    };
    assert!(
        wait_until(TIMEOUT, || stopped("short", short, "3s")
            && stopped("gone", removed, "3s")
            && gone(short)
            && gone(removed)),
        "the 3s children were not stopped at 3s:\n{}",
        s.log_text()
    );
    assert!(
        !gone(long) && !s.log_text().contains("ran past max_runtime 2s"),
        "the 1d child got the new 2s:\n{}",
        s.log_text()
    );
    // The new limit is for the next child.
    let (_c4, next) = first_pid(p_long);
    let _next = KillOnDrop::new(next);
    assert!(
        wait_until(TIMEOUT, || stopped("long", next, "2s") && gone(next)),
        "{}",
        s.log_text()
    );
    assert!(!gone(long));
}

/// summond as pid 1 of a pid namespace of the test's own, so the test can
/// choose the pid its next child gets (ns_last_pid); run from a copy of
/// the binary, so it can be upgraded. Returns it and its pid as the test
/// sees it.
fn start_in_pid_namespace(dir: TempDir, services: &str) -> (Summond, i32) {
    let (s, _, _) = start_upgradable(
        dir,
        services,
        Start {
            wrapper: &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
            ..Start::default()
        },
    );
    let mut host_pid = None;
    assert!(wait_until(TIMEOUT, || {
        host_pid = children_of(s.pid()).first().copied();
        host_pid.is_some()
    }));
    (s, host_pid.unwrap())
}

/// (process group, state) of `pid` in the namespace of `ns_init`, whose
/// /proc (mounted by unshare) the test reads through its root.
fn ns_stat(ns_init: i32, pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{ns_init}/root/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let pgrp = f.nth(1)?.parse().ok()?;
    Some((pgrp, state))
}

/// Is any process of the namespace in process group `pgid`?
fn ns_group_in_use(ns_init: i32, pgid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{ns_init}/root/proc"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|p| ns_stat(ns_init, p).is_some_and(|(g, _)| g == pgid))
}

/// The first child (in `{dir}/first` the marker is absent) leaves in its
/// group a process that ignores SIGTERM and stays until `{dir}/release`
/// exists, then dies of the SIGTERM itself. A later child (the marker
/// `{dir}/victim` exists) leads a new group with an innocent long sleep
/// in it, writes that sleep's pid, and exits.
fn reusing(port: u16) -> String {
    let script = "if [ -e {dir}/victim ]; then \
                    sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {dir}/victim.tmp; \
                    mv {dir}/victim.tmp {dir}/victim.pid; exit 0; \
                  fi; \
                  ( trap '' TERM; while [ ! -e {dir}/release ]; do sleep 0.05; done ) \
                    </dev/null >/dev/null 2>&1 & \
                  echo $$; exec sleep 100";
    format!(
        "[[service]]\nname = \"reusing\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_runtime = \"1s\"\nexec = {}\n",
        sh(script)
    )
}

/// The SIGKILL `max_runtime` owes a group never reaches a new group that
/// got the id after the old one emptied (the kernel gives the pid out
/// again then): summond holds the dead leader's zombie, and so the id,
/// until the SIGKILL has gone, and reaps it only then; the innocent
/// process of a group that gets the id afterwards survives. With
/// `upgrade`, summond is upgraded while it holds the zombie.
fn sigkill_spares_a_group_that_reused_the_id(test: &str, upgrade_between: bool) {
    if !nix::unistd::geteuid().is_root() {
        return skip(test, "a pid namespace of the test's own needs root");
    }
    let port = free_port();
    let (s, ns_init) = start_in_pid_namespace(TempDir::new("runtime-reuse"), &reusing(port));
    let dir = s.dir.0.clone();
    let (_c1, leader) = first_pid(port);
    // The leader dies of the SIGTERM; its group lives on, and its zombie
    // is held.
    assert!(
        s.wait_log(&format!("reusing: pid {leader} for 127.0.0.1:"))
            && wait_until(TIMEOUT, || matches!(
                ns_stat(ns_init, leader),
                Some((_, 'Z'))
            )),
        "{}",
        s.log_text()
    );
    if upgrade_between {
        // SIGUSR2, not `summond upgrade`: that client refuses a server
        // whose answer names a pid (1, here) the kernel gives otherwise.
        // SAFETY-free: kill(2) of the summond this test started.
        unsafe { nix::libc::kill(ns_init, nix::libc::SIGUSR2) };
        assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
        assert!(
            matches!(ns_stat(ns_init, leader), Some((_, 'Z'))),
            "the zombie was reaped in the grace, across the upgrade:\n{}",
            s.log_text()
        );
    }
    // The rest of the group leaves in the grace, of its own accord: only
    // the held zombie keeps the id until the SIGKILL was decided.
    std::fs::write(dir.join("release"), "").unwrap();
    assert!(
        wait_until(TIMEOUT + KILL_AFTER, || !ns_group_in_use(ns_init, leader)),
        "group {leader} did not empty:\n{}",
        s.log_text()
    );
    assert!(
        s.log_text().contains(&format!(
            "pid {leader} for 127.0.0.1:{} exited after SIGTERM; SIGKILL to whatever is left",
            _c1.local_addr().unwrap().port()
        )),
        "the group emptied before its SIGKILL was decided:\n{}",
        s.log_text()
    );
    // The id is given out again: to a child of summond's that leads a
    // group of its own.
    std::fs::write(dir.join("victim"), "").unwrap();
    let set_last_pid = format!("echo {} > /proc/sys/kernel/ns_last_pid", leader - 1);
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &ns_init.to_string(),
            "--pid",
            "--",
            "sh",
            "-c",
            &set_last_pid,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "nsenter: {out:?}");
    let _c2 = connect_tcp(([127, 0, 0, 1], port).into());
    let victim_pid = dir.join("victim.pid");
    assert!(
        wait_until(TIMEOUT, || victim_pid.exists()),
        "{}",
        s.log_text()
    );
    let victim: i32 = std::fs::read_to_string(&victim_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        ns_stat(ns_init, victim).map(|(g, _)| g),
        Some(leader),
        "the pid was not given out again; the test proves nothing:\n{}",
        s.log_text()
    );
    // Nothing is owed any more: no SIGKILL can follow.
    let control = s.dir.path("control.sock");
    assert!(
        wait_until(TIMEOUT, || status_json(&control)["pending_timers"] == 0),
        "{}",
        s.log_text()
    );
    assert!(
        matches!(ns_stat(ns_init, victim), Some((_, st)) if st != 'Z'),
        "the innocent process of the group that reused id {leader} was killed:\n{}",
        s.log_text()
    );
    assert_eq!(
        s.log_count("SIGKILL to"),
        1,
        "one SIGKILL, to the old group:\n{}",
        s.log_text()
    );
    // SAFETY-free: kill(2) of the summond this test started.
    unsafe { nix::libc::kill(ns_init, nix::libc::SIGTERM) };
}

#[test]
fn max_runtime_sigkill_spares_a_new_group_that_got_the_id_of_an_emptied_one() {
    sigkill_spares_a_group_that_reused_the_id(
        "max_runtime_sigkill_spares_a_new_group_that_got_the_id_of_an_emptied_one",
        false,
    );
}

#[test]
fn max_runtime_sigkill_spares_a_new_group_that_got_the_id_across_an_upgrade() {
    sigkill_spares_a_group_that_reused_the_id(
        "max_runtime_sigkill_spares_a_new_group_that_got_the_id_across_an_upgrade",
        true,
    );
}

/// Review of issue 15 (wait services, finding 2): a member of the group
/// that waits for its leader to die of the SIGTERM, then forks into the
/// group a process that ignores SIGTERM and exits itself. Written down
/// nowhere when the leader was reaped, that process escaped the SIGKILL
/// ("pid N and its process group are gone; no SIGKILL" while it ran).
/// The leader prints its pid; the escapee's pid goes to `{dir}/escapee`.
fn escaping(port: u16, dir: &Path) -> String {
    let dir = dir.display();
    let script = format!(
        "L=$$; echo $L; \
         ( trap '' TERM; \
           while s=$(cut -d' ' -f3 /proc/$L/stat 2>/dev/null) && [ \"$s\" != Z ]; do sleep 0.05; done; \
           sleep 0.5; \
           sh -c 'trap \"\" TERM; exec sleep 61' </dev/null >/dev/null 2>&1 & \
           echo $! > {dir}/escapee.tmp; mv {dir}/escapee.tmp {dir}/escapee; exit 0 ) \
         </dev/null >/dev/null 2>&1 & \
         exec sleep 100"
    );
    format!(
        "[[service]]\nname = \"escaping\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_runtime = \"1s\"\nexec = {}\n",
        sh(&script)
    )
}

#[test]
fn max_runtime_sigkills_a_process_forked_into_the_group_after_its_leader_died() {
    let port = free_port();
    let dir = TempDir::new("runtime-escape");
    let config = escaping(port, &dir.0);
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let (_conn, leader) = first_pid(port);
    let escapee_file = s.dir.path("escapee");
    assert!(
        wait_until(TIMEOUT, || escapee_file.exists()),
        "the member never saw its leader die:\n{}",
        s.log_text()
    );
    let escapee: i32 = std::fs::read_to_string(&escapee_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop::new(escapee);
    let pgrp = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    assert!(
        !gone(escapee) && pgrp(escapee) == Some(leader),
        "the escapee is not in the leader's group; the test proves nothing"
    );
    assert!(
        wait_until(TIMEOUT + KILL_AFTER, || gone(escapee)),
        "pid {escapee}, forked into group {leader} after the leader died, escaped the SIGKILL:\n{}",
        s.log_text()
    );
    assert!(
        s.wait_log(&format!("escaping: pid {leader} for 127.0.0.1:"))
            && s.wait_log("killed by signal 15 (SIGTERM)"),
        "{}",
        s.log_text()
    );
}

/// summond's CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Review of issue 15 (wait services, finding 5a): each reap of a leader
/// `max_runtime` was stopping read the whole of /proc, so a mass expiry
/// cost time quadratic in the number of groups, all of it in the loop
/// (1,200 groups: 2.6 s of CPU, a probe waited 2.2 s). Hundreds of
/// children expire together and are held as zombies through their
/// grace: the loop answers a probe service and status throughout, and
/// every count returns to 0.
#[test]
fn a_mass_max_runtime_expiry_keeps_the_loop_serving_and_every_count_returns_to_zero() {
    const N: usize = 300;
    let (port, probe) = (free_port(), free_port());
    let dir = TempDir::new("runtime-mass");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}[[service]]\nname = \"mass\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_runtime = \"1s\"\nexec = [\"sleep\", \"100\"]\n\
                 [[service]]\nname = \"probe\"\nlisten = \"tcp://127.0.0.1:{probe}\"\nexec = [\"internal:echo\"]\n",
                daemon_control(&control)
            ),
            ..Start::default()
        },
    );
    let cpu_before = cpu_ticks(s.pid());
    let clients: Vec<_> = (0..N)
        .map(|_| connect_tcp(([127, 0, 0, 1], port).into()))
        .collect();
    let probes = std::cell::Cell::new(0);
    let answer = |phase: &str| {
        let line = format!("{phase} {}\n", probes.get());
        assert_eq!(
            tcp_port_exchange(probe, line.as_bytes()),
            line,
            "{}",
            s.log_text()
        );
        probes.set(probes.get() + 1);
    };
    // Every child is SIGTERMed, and (dead of it) held until its SIGKILL.
    assert!(
        wait_until(TIMEOUT * 3, || {
            answer("expiring");
            s.log_count("ran past max_runtime 1s; SIGTERM") == N
        }),
        "{} of {N} stopped:\n{}",
        s.log_count("ran past max_runtime 1s; SIGTERM"),
        s.log_text()
    );
    let held = probes.get();
    // Through the grace and the mass SIGKILL and reap: the probe and
    // status are answered all along, until nothing is left.
    let reaped = || s.log_count("killed by signal 15 (SIGTERM) after");
    assert!(
        wait_until(TIMEOUT * 3, || {
            answer("held");
            let st = status_json(&control);
            st["children"] == 0 && reaped() == N
        }),
        "{} of {N} reaped:\n{}",
        reaped(),
        s.log_text()
    );
    assert!(
        probes.get() > held,
        "the probe was answered while the zombies were held"
    );
    let st = status_json(&control);
    assert_eq!(st["pending_timers"], 0, "{st}");
    for svc in st["services"].as_array().unwrap() {
        assert_eq!(svc["active"], 0, "{st}");
    }
    assert_eq!(
        s.log_count("exited after SIGTERM; SIGKILL to whatever is left of its process group"),
        N
    );
    eprintln!(
        "{N} groups: {} probes answered, summond used {} clock ticks of CPU",
        probes.get(),
        cpu_ticks(s.pid()) - cpu_before
    );
    drop(clients);
}

/// summond stopping in the grace sends the SIGKILLs `max_runtime` still
/// owes at once (no one would send them later), and reaps the leader it
/// held: nothing of either group is left running, and summond exits 0.
#[test]
fn stopping_summond_in_the_grace_sends_the_sigkills_still_owed() {
    let (p_deaf, p_orphaning) = (free_port(), free_port());
    let mut s = Summond::start(&format!("{}{}", deaf(p_deaf), orphaning(p_orphaning)));
    let (_c1, deaf_pid) = first_pid(p_deaf);
    let _g1 = KillOnDrop::new(deaf_pid);
    let (_c2, straggler) = first_pid(p_orphaning);
    let _g2 = KillOnDrop::new(straggler);
    let leader = parent_pid(straggler).expect("the leader is the straggler's parent");
    assert!(
        wait_until(TIMEOUT, || s.log_count("SIGKILL in 5s") == 2
            && proc_state(leader) == Some('Z')),
        "{}",
        s.log_text()
    );
    s.signal(nix::libc::SIGTERM);
    assert!(
        s.wait_exit(TIMEOUT).is_some_and(|st| st.success()),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    assert!(
        !log.contains("after SIGTERM; SIGKILL to"),
        "the SIGKILL was due before the stop; the test proves nothing:\n{log}"
    );
    assert_eq!(
        log.matches("summond is stopping: SIGKILL to its process group")
            .count(),
        2,
        "{log}"
    );
    // The held leader was reaped and its exit logged before summond left.
    assert!(
        log.lines().any(
            |l| l.contains(&format!("orphaning: pid {leader} for 127.0.0.1:"))
                && l.contains("killed by signal 15 (SIGTERM) after")
        ),
        "{log}"
    );
    assert!(
        wait_until(TIMEOUT, || gone(deaf_pid) && gone(straggler)),
        "a group that ignores SIGTERM outlived summond:\n{log}"
    );
}
