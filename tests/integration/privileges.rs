//! user/group with supplementary groups, applied in the child in the order
//! setgroups → setgid → setuid; the RLIMIT_NOFILE summond was started with
//! goes back to its children while summond raises its own.

use std::ffi::CString;

use crate::util::*;

fn status_ids(report: &str, key: &str) -> Vec<u32> {
    field(report, key)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

const IDS: &str = "grep -E '^(Uid|Gid|Groups):' /proc/$$/status | tr -d ':' | sed 's/\\t/ /g; s/^\\([A-Za-z]*\\) /\\1=/'";

#[test]
fn user_and_group_are_applied_with_the_users_supplementary_groups() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "user_and_group_are_applied_with_the_users_supplementary_groups",
            "needs root",
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let want_groups: Vec<u32> =
        nix::unistd::getgrouplist(&CString::new("nobody").unwrap(), nobody.gid)
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
    let root_group = nix::unistd::Group::from_gid(0.into())
        .unwrap()
        .unwrap()
        .name;
    let (p1, p2) = (free_port(), free_port());
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"nob\"\nlisten = \"tcp://127.0.0.1:{p1}\"\nexec = {}\nuser = \"nobody\"\n\
         [[service]]\nname = \"nobg\"\nlisten = \"tcp://127.0.0.1:{p2}\"\nexec = {}\nuser = \"nobody\"\ngroup = \"{root_group}\"\n",
        sh(IDS),
        sh(IDS)
    ));
    let out = tcp_port_exchange(p1, b"");
    let uid = nobody.uid.as_raw();
    let gid = nobody.gid.as_raw();
    assert_eq!(
        status_ids(&out, "Uid"),
        vec![uid; 4],
        "real, effective, saved, fs uid: {out}"
    );
    assert_eq!(status_ids(&out, "Gid"), vec![gid; 4], "{out}");
    let mut got = status_ids(&out, "Groups");
    got.sort();
    let mut want = want_groups.clone();
    want.sort();
    want.dedup();
    assert_eq!(got, want, "exactly the user's groups; root's are dropped");

    let out = tcp_port_exchange(p2, b"");
    assert_eq!(status_ids(&out, "Uid"), vec![uid; 4]);
    assert_eq!(
        status_ids(&out, "Gid"),
        vec![0; 4],
        "group overrides the primary group"
    );
}

#[test]
fn children_get_back_the_nofile_limit_summond_was_started_with() {
    let port = free_port();
    let s = Summond::start_with(Start {
        config: &format!(
            "[[service]]\nname = \"lim\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n",
            sh("echo SOFT=$(ulimit -Sn); echo HARD=$(ulimit -Hn)")
        ),
        nofile: Some((256, 4096)),
        ..Start::default()
    });
    let out = tcp_port_exchange(port, b"");
    assert_eq!(field(&out, "SOFT"), Some("256"), "{out}");
    assert_eq!(field(&out, "HARD"), Some("4096"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        nums,
        ["4096", "4096"],
        "summond raised its own soft limit: {line}"
    );
}

#[test]
fn a_child_that_cannot_drop_privileges_never_runs_the_program() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        skip(
            "a_child_that_cannot_drop_privileges_never_runs_the_program",
            "needs root and setpriv",
        );
        return;
    }
    let port = free_port();
    let dir = TempDir::new("failclosed");
    let marker = dir.path("ran");
    // summond is root but lacks CAP_SETGID/CAP_SETUID: setgroups fails.
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"drop\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nuser = \"nobody\"\n",
                sh(&format!("touch {}; id -u", marker.display()))
            ),
            wrapper: &["/usr/bin/setpriv", "--bounding-set", "-setuid,-setgid"],
            ..Start::default()
        },
    );
    assert!(closed_at_once(port), "the client is closed");
    assert!(
        s.wait_log("drop: child ") && s.log_text().contains("failed to setgroups before exec /"),
        "{}",
        s.log_text()
    );
    assert!(s.log_text().contains("Operation not permitted"));
    assert!(!marker.exists(), "the program never ran");
}
