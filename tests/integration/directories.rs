//! Directories summond makes for its services (issue 16 items 2 and 6):
//! `runtime_directory` under /run (or $XDG_RUNTIME_DIR) owned by the
//! service's user, `socket_directory_mode` for a unix socket's missing
//! parents, never through a symbolic link; and `extra_groups` in the
//! child's supplementary groups. Each across reload and upgrade.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::util::*;

fn needs_root(test: &str) -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        skip(test, "needs root");
    }
    ok
}

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

/// A name directly under /run for this test, removed (whatever it is
/// then) when dropped.
struct RunName(PathBuf);

impl RunName {
    fn new(tag: &str) -> RunName {
        let p = PathBuf::from(format!("/run/summond-test-{}-{tag}", std::process::id()));
        remove(&p);
        RunName(p)
    }

    fn name(&self) -> &str {
        self.0.file_name().unwrap().to_str().unwrap()
    }
}

impl Drop for RunName {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// uid, gid and permission bits of `p` (not following a link).
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// A service on `port` whose child prints `stat` of each path: what the
/// child sees.
fn stat_service(name: &str, port: u16, paths: &[&Path], keys: &str) -> String {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n{keys}",
        sh(&format!("stat -c '%n %u:%g %a %F' {} 2>&1", list.join(" ")))
    )
}

#[test]
fn a_runtime_directory_is_there_for_the_child_with_the_services_owner_and_mode_and_stays_at_stop() {
    if !needs_root("a_runtime_directory_is_there_for_the_child_...") {
        return;
    }
    let run = RunName::new("made");
    let inner = run.0.join("inner");
    let port = free_port();
    let (uid, gid) = nobody();
    let mut s = Summond::start(&stat_service(
        "rd",
        port,
        &[&run.0, &inner],
        &format!(
            "user = \"nobody\"\nruntime_directory = [\"{0}\", \"{0}/inner\"]\nruntime_directory_mode = \"0710\"\n",
            run.name()
        ),
    ));
    let out = tcp_port_exchange(port, b"");
    for p in [&run.0, &inner] {
        let want = format!("{} {uid}:{gid} 710 directory", p.display());
        assert!(out.contains(&want), "want {want}, the child saw:\n{out}");
    }
    s.signal(nix::libc::SIGTERM);
    assert!(s.wait_exit(TIMEOUT).is_some());
    assert_eq!(
        owner_mode(&inner),
        (uid, gid, 0o710),
        "left in place at stop"
    );
}

#[test]
fn a_link_or_file_at_a_runtime_directorys_place_is_refused_for_that_service_alone() {
    if !needs_root("a_link_or_file_at_a_runtime_directorys_place_...") {
        return;
    }
    let (uid, gid) = nobody();
    let link = RunName::new("link");
    let file = RunName::new("file");
    let dir = TempDir::new("rd-link");
    let victim = dir.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&victim, &link.0).unwrap();
    std::fs::write(&file.0, "").unwrap();
    let (p1, p2) = (free_port(), free_port());
    let config = format!(
        "{}{}",
        stat_service(
            "rd",
            p1,
            &[&link.0.join("inner")],
            &format!(
                "user = \"nobody\"\nruntime_directory = [\"{}/inner\", \"{}\"]\n",
                link.name(),
                file.name()
            ),
        ),
        stat_service("other", p2, &[Path::new("/run")], "")
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let log = s.log_text();
    let said = format!(
        "rd: runtime_directory {}/inner: {} is a symbolic link",
        link.0.display(),
        link.0.display()
    );
    assert!(log.contains(&said), "{log}");
    let said = format!("{} exists and is not a directory", file.0.display());
    assert!(log.contains(&said), "{log}");
    assert!(!victim.join("inner").exists(), "the link was followed");
    assert_eq!(
        owner_mode(&victim),
        (0, 0, 0o700),
        "the link's target was changed"
    );
    assert!(
        tcp_port_exchange(p2, b"").contains("/run 0:0"),
        "the other service is served"
    );
    // The service's child still starts (it sees what is there).
    assert!(tcp_port_exchange(p1, b"").contains("inner"));

    // With the link and the file gone, a reload of the same config makes
    // what failed: a failure is tried again.
    remove(&link.0);
    remove(&file.0);
    assert!(s.reload(&config));
    assert_eq!(owner_mode(&link.0.join("inner")), (uid, gid, 0o755));
    assert_eq!(
        owner_mode(&link.0),
        (0, 0, 0o755),
        "a parent made on the way is root's"
    );
    assert_eq!(owner_mode(&file.0), (uid, gid, 0o755));
    assert_eq!(s.log_count("is a symbolic link"), 1, "logged once");
}

#[test]
fn as_non_root_runtime_directories_are_made_under_xdg_runtime_dir_and_no_link_is_followed() {
    if !needs_root("as_non_root_runtime_directories_...") {
        return;
    }
    let (uid, gid) = nobody();
    let dir = TempDir::new("rd-xdg");
    let xdg = dir.path("xdg");
    let victim = xdg.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for p in [&xdg, &victim] {
        nix::unistd::chown(p, Some(uid.into()), Some(gid.into())).unwrap();
    }
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&victim, xdg.join("link")).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let made = xdg.join("made/deep");
    let config = format!(
        "{}{}",
        stat_service(
            "made",
            p1,
            &[&made],
            "runtime_directory = \"made/deep\"\nruntime_directory_mode = \"0750\"\n"
        ),
        stat_service(
            "linked",
            p2,
            &[&xdg],
            "runtime_directory = \"link/inner\"\n"
        ),
    );
    let (uid_arg, gid_arg) = (format!("--reuid={uid}"), format!("--regid={gid}"));
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            wrapper: &["/usr/bin/setpriv", &uid_arg, &gid_arg, "--clear-groups"],
            env: &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())],
            ..Start::default()
        },
    );
    let out = tcp_port_exchange(p1, b"");
    let want = format!("{} {uid}:{gid} 750 directory", made.display());
    assert!(out.contains(&want), "want {want}, the child saw:\n{out}");
    assert!(s.log_text().contains(&format!(
        "linked: runtime_directory {}/link/inner: {}/link is a symbolic link",
        xdg.display(),
        xdg.display()
    )));
    assert!(!victim.join("inner").exists(), "the link was followed");
    assert!(tcp_port_exchange(p2, b"").contains("directory"));
}

#[test]
fn reload_and_upgrade_make_runtime_directories() {
    if !needs_root("reload_and_upgrade_make_runtime_directories") {
        return;
    }
    let (uid, gid) = nobody();
    let run = RunName::new("reload");
    let port = free_port();
    let plain = stat_service("rd", port, &[&run.0], "user = \"nobody\"\n");
    let (s, _bin, control) = start_upgradable(TempDir::new("rd-reload"), &plain, Start::default());
    assert!(!run.0.exists());
    let with_dir = |user: &str| {
        let keys = format!("{user}runtime_directory = \"{}\"\n", run.name());
        format!(
            "{}{}",
            daemon_control(&control),
            stat_service("rd", port, &[&run.0], &keys)
        )
    };
    // A key added at reload is made for the service as it is.
    assert!(s.reload(&with_dir("user = \"nobody\"\n")));
    assert_eq!(owner_mode(&run.0), (uid, gid, 0o755));
    let want = format!("{} {uid}:{gid} 755 directory", run.0.display());
    assert!(tcp_port_exchange(port, b"").contains(&want));
    // A changed user: the directory follows it.
    assert!(s.reload(&with_dir("")));
    assert_eq!(owner_mode(&run.0), (0, 0, 0o755));
    // After an upgrade the new image sets every service up again.
    remove(&run.0);
    s.write_config(&with_dir("user = \"nobody\"\n"));
    upgrade_ok(&s, &control);
    assert!(
        wait_until(TIMEOUT, || run.0.exists()),
        "not made after the upgrade:\n{}",
        s.log_text()
    );
    assert_eq!(owner_mode(&run.0), (uid, gid, 0o755));
}

fn cat_on(name: &str, sock: &Path, keys: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n{keys}",
        sock.display()
    )
}

#[test]
fn socket_directory_mode_makes_a_sockets_missing_directories_across_reload_and_upgrade() {
    let dir = TempDir::new("sockdir");
    let root = dir.0.clone();
    let first = root.join("a/b/first.sock");
    let mode = "socket_directory_mode = \"0750\"\n";
    let (s, _bin, control) =
        start_upgradable(dir, &cat_on("first", &first, mode), Start::default());
    let me = nix::unistd::geteuid().as_raw();
    for d in ["a", "a/b"] {
        assert_eq!(owner_mode(&root.join(d)).2, 0o750, "{d}");
        assert_eq!(owner_mode(&root.join(d)).0, me, "{d}");
    }
    assert_eq!(unix_exchange(&first, b"one\n"), "one\n");

    // Without the key a missing directory is the error it always was.
    let second = root.join("c/d/second.sock");
    let base = format!(
        "{}{}",
        daemon_control(&control),
        cat_on("first", &first, mode)
    );
    assert!(!s.reload(&format!("{base}{}", cat_on("second", &second, ""))));
    assert!(!root.join("c").exists());
    // With it, a reload makes them.
    let two = format!(
        "{base}{}",
        cat_on("second", &second, "socket_directory_mode = \"0700\"\n")
    );
    assert!(s.reload(&two), "{}", s.log_text());
    assert_eq!(owner_mode(&root.join("c/d")).2, 0o700);
    assert_eq!(unix_exchange(&second, b"two\n"), "two\n");

    // A link on the way is not followed: the reload fails, nothing is
    // made at the link's target.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("link")).unwrap();
    let linked = root.join("link/x/third.sock");
    assert!(!s.reload(&format!("{two}{}", cat_on("third", &linked, mode))));
    assert!(s.log_text().contains(&format!(
        "{} is a symbolic link",
        root.join("link").display()
    )));
    assert!(!elsewhere.join("x").exists());

    // Carried through an upgrade, and a socket added after it is made.
    s.write_config(&two);
    upgrade_ok(&s, &control);
    assert_eq!(unix_exchange(&first, b"one\n"), "one\n");
    assert_eq!(unix_exchange(&second, b"two\n"), "two\n");
    let third = root.join("e/third.sock");
    assert!(
        s.reload(&format!("{two}{}", cat_on("third", &third, mode))),
        "{}",
        s.log_text()
    );
    assert_eq!(owner_mode(&root.join("e")).2, 0o750);
    assert_eq!(unix_exchange(&third, b"three\n"), "three\n");
}

fn groups_of(report: &str) -> Vec<u32> {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap_or_else(|| panic!("no Groups line: {report}"));
    line.split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect()
}

#[test]
fn extra_groups_are_in_the_childs_groups_after_the_users_across_a_reload() {
    if !needs_root("extra_groups_are_in_the_childs_groups_after_the_users_across_a_reload") {
        return;
    }
    let (_, gid) = nobody();
    let name_of = |g: u32| {
        nix::unistd::Group::from_gid(g.into())
            .unwrap()
            .unwrap()
            .name
    };
    let (adm, sys) = (name_of(4), name_of(3));
    let (p1, p2) = (free_port(), free_port());
    let groups = "grep Groups: /proc/self/status";
    let svc = |name: &str, port: u16, keys: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nuser = \"nobody\"\n{keys}",
            sh(groups)
        )
    };
    let config = |extra: &str| {
        format!(
            "{}{}",
            svc("with", p1, &format!("extra_groups = [{extra}]\n")),
            svc(
                "alone",
                p2,
                &format!("supplementary_groups = false\nextra_groups = [{extra}]\n")
            )
        )
    };
    let s = Summond::start(&config(&format!("\"{adm}\"")));
    let mut got = groups_of(&tcp_port_exchange(p1, b""));
    got.sort();
    assert!(got.contains(&4) && got.contains(&gid), "{got:?}");
    let mut got = groups_of(&tcp_port_exchange(p2, b""));
    got.sort();
    let mut want = vec![gid, 4];
    want.sort();
    assert_eq!(
        got, want,
        "the primary group and the extra one, nothing else"
    );

    assert!(s.reload(&config(&format!("\"{adm}\", \"{sys}\""))));
    let got = groups_of(&tcp_port_exchange(p2, b""));
    assert!(
        got.contains(&3) && got.contains(&4),
        "after the reload: {got:?}"
    );
}

/// A component of a socket's path that someone else swaps for a link
/// (a directory they can write on the way) cannot send bind(2) through
/// the link after socket_directory_mode's walk: a directory on the path
/// that another user holds is refused. (The test swaps as root; the
/// directory holding the swapped pair belongs to nobody, as an
/// attacker's would.)
#[test]
fn a_component_swapped_for_a_link_after_the_directory_walk_does_not_move_the_bind() {
    if !needs_root("a_component_swapped_for_a_link_after_the_directory_walk_does_not_move_the_bind")
    {
        return;
    }
    let dir = TempDir::new("sockrace");
    let root = dir.0.join("att");
    std::fs::create_dir(&root).unwrap();
    nix::unistd::chown(&root, Some(65534.into()), None).unwrap();
    let (d, l, target) = (root.join("d"), root.join("l"), root.join("target"));
    std::fs::create_dir(&d).unwrap();
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, &l).unwrap();
    let sock = d.join("s.sock");
    let on = cat_on("u", &sock, "socket_directory_mode = \"0755\"\n");
    let off = format!(
        "[[service]]\nname = \"t\"\nlisten = \"tcp://127.0.0.1:{}\"\nexec = [\"cat\"]\n",
        free_port()
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &off,
            ..Start::default()
        },
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (a, b) = (
            std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap(),
            std::ffi::CString::new(l.as_os_str().as_encoded_bytes()).unwrap(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: two NUL-terminated paths.
                unsafe {
                    nix::libc::renameat2(
                        nix::libc::AT_FDCWD,
                        a.as_ptr(),
                        nix::libc::AT_FDCWD,
                        b.as_ptr(),
                        nix::libc::RENAME_EXCHANGE,
                    )
                };
            }
        })
    };
    let mut bound_through_link = false;
    for _ in 0..100 {
        s.reload(&format!("{off}{on}"));
        s.reload(&off);
        if std::fs::read_dir(&target).unwrap().next().is_some() {
            bound_through_link = true;
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    racer.join().unwrap();
    assert!(!bound_through_link, "a socket was bound through the link");
    assert!(
        s.log_text()
            .contains("another user could swap a directory on the path"),
        "{}",
        s.log_text()
    );
}
