//! `-d` and `--pidfile`: the classic detach, a pidfile held with flock so a
//! second instance refuses naming the first one's pid, a stale pidfile
//! taken over, startup errors still on the terminal, logs to syslog.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::util::*;

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Process `pid`'s parent, process group and session, from /proc.
fn parent_group_session(pid: i32) -> (i32, i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<i32> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

/// A summond started with `-d`, its config, pidfile and a syslog socket
/// of the test's own in a fresh directory.
struct Daemon {
    /// Removed when the test ends.
    _dir: TempDir,
    port: u16,
    pidfile: std::path::PathBuf,
    syslog: UnixDatagram,
    syslog_path: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Daemon {
    fn new(tag: &str) -> Daemon {
        let dir = TempDir::new(tag);
        let port = free_port();
        let config = dir.path("c.toml");
        std::fs::write(
            &config,
            format!(
                "[[service]]\nname = \"d\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
            ),
        )
        .unwrap();
        let syslog_path = dir.path("log.sock");
        Daemon {
            pidfile: dir.path("summond.pid"),
            syslog: UnixDatagram::bind(&syslog_path).unwrap(),
            syslog_path,
            config,
            port,
            _dir: dir,
        }
    }

    /// `-d --pidfile P -c C` plus `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["-d"];
        a.extend_from_slice(extra);
        a.extend([
            "--pidfile",
            self.pidfile.to_str().unwrap(),
            "-c",
            self.config.to_str().unwrap(),
        ]);
        a
    }

    /// Run `summond ARGS` with syslog pointed at the test's socket.
    fn run(&self, args: &[&str]) -> (i32, String) {
        run_with_env(
            args,
            &[("SUMMOND_SYSLOG_SOCKET", self.syslog_path.to_str().unwrap())],
        )
    }

    /// A second instance with `args` refuses, naming `pid`.
    fn assert_second_refused(&self, args: &[&str], pid: i32) {
        let (code, err) = self.run(args);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("already running as pid {pid}")),
            "{err}"
        );
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn daemon_mode_detaches_holds_its_pidfile_logs_to_syslog_and_cleans_up() {
    let d = Daemon::new("daemon");
    let (port, pidfile, syslog) = (d.port, &d.pidfile, &d.syslog);
    syslog.set_read_timeout(Some(TIMEOUT)).unwrap();
    let args = d.args(&[]);
    let (code, err) = d.run(&args);
    assert_eq!(code, 0, "{err}");
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    assert_eq!(tcp_port_exchange(port, b"daemon\n"), "daemon\n");

    let (ppid, pgrp, session) = parent_group_session(pid);
    assert_ne!(ppid, std::process::id() as i32, "detached from us");
    assert_ne!(session, pid, "not a session leader (second fork)");
    assert_eq!(pgrp, session, "in the session setsid made");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .unwrap()
            .to_str(),
        Some("/")
    );
    for fd in 0..3 {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .unwrap()
                .to_str(),
            Some("/dev/null")
        );
    }
    let mut buf = [0u8; 512];
    let n = syslog.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(
        line.starts_with(&format!("<30>summond[{pid}]: summond "))
            && line.contains(" serving 1 services"),
        "{line}"
    );

    // a second instance refuses, naming the first
    d.assert_second_refused(&args, pid);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        wait_until(TIMEOUT, || !pidfile.exists()),
        "pidfile removed on a clean exit"
    );
    assert!(wait_until(
        TIMEOUT,
        || !matches!(proc_state(pid), Some(s) if s != 'Z')
    ));
}

#[test]
fn a_stale_pidfile_is_taken_over() {
    let dir = TempDir::new("stalepid");
    let pidfile = dir.path("s.pid");
    std::fs::write(&pidfile, "999999\n").unwrap();
    let port = free_port();
    let p = pidfile.to_str().unwrap().to_string();
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!("[[service]]\nname = \"e\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"),
            args: &["--pidfile", &p],
            ..Start::default()
        },
    );
    assert!(wait_until(TIMEOUT, || std::fs::read_to_string(&p)
        .unwrap_or_default()
        == format!("{}\n", s.pid())));
}

#[test]
fn a_startup_error_in_daemon_mode_reaches_the_terminal_with_status_1() {
    let dir = TempDir::new("daemonfail");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let config = dir.path("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"x\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
        ),
    )
    .unwrap();
    let pidfile = dir.path("x.pid");
    let stderr = dir.path("stderr");
    // The parent must return with the error, not wait for something: it
    // exits within the (generous) bound or the test fails.
    let mut parent = std::process::Command::new(BIN)
        .args([
            "-d",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let _reaper = KillOnDrop::new(parent.id() as i32);
    let mut status = None;
    let exited = wait_until(TIMEOUT, || {
        status = parent.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "the parent did not return with the error");
    let code = status.and_then(|s| s.code()).unwrap_or(-1);
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "bind tcp://127.0.0.1:{port} for service \"x\": Address already in use"
        )),
        "{err}"
    );
    assert!(!pidfile.exists(), "no pidfile left behind");
}

/// The syslog reader stalls (its socket is never read, so its queue of
/// net.unix.max_dgram_qlen datagrams fills): summond must go on serving,
/// dropping lines instead of blocking its loop, and say how many it
/// dropped once the reader catches up.
#[test]
fn a_stalled_syslog_reader_never_blocks_the_loop_and_dropped_lines_are_counted() {
    let d = Daemon::new("syslogfull");
    let (port, pidfile, syslog) = (d.port, &d.pidfile, &d.syslog);
    let (code, err) = d.run(&d.args(&["--log-level", "debug"]));
    assert_eq!(code, 0, "{err}");
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    // The queue holds net.unix.max_dgram_qlen datagrams at most (10 by
    // default; some systems raise it to 512): the flood is sized from it.
    // Each connection logs at least two debug lines: these are at least 80
    // more than the queue holds.
    let qlen: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .expect("read net.unix.max_dgram_qlen")
        .trim()
        .parse()
        .expect("a number");
    let connections = qlen / 2 + 40;
    for i in 0..connections {
        let line = format!("line {i}\n");
        assert_eq!(tcp_port_exchange(port, line.as_bytes()), line);
    }
    // Catch up: read what is queued; the first line summond manages to
    // send once there is room carries the count (connections provoke
    // more lines if the reader drained everything already).
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut note = None;
    for _ in 0..qlen + 200 {
        match syslog.recv(&mut buf) {
            Ok(n) => {
                let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                if line.contains("log lines dropped") {
                    note = Some(line);
                    break;
                }
            }
            Err(_) => assert_eq!(tcp_port_exchange(port, b"again\n"), "again\n"),
        }
    }
    let line = note.expect("a line saying how many were dropped");
    let dropped: u64 = line
        .split("]: ")
        .nth(1)
        .and_then(|r| r.strip_suffix(" log lines dropped: the syslog socket was full"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(dropped >= 40, "{dropped} lines dropped");
    assert!(line.starts_with("<28>"), "warning priority: {line}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(TIMEOUT, || !pidfile.exists()));
}

#[test]
fn a_daemon_upgraded_in_place_stays_detached_and_keeps_its_pidfile() {
    let d = Daemon::new("daemon-upgrade");
    d.syslog.set_read_timeout(Some(TIMEOUT)).unwrap();
    let args = d.args(&[]);
    let (code, err) = d.run(&args);
    assert_eq!(code, 0, "{err}");
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    let session = |pid| parent_group_session(pid).2;
    let before = session(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("upgraded in place"))
    {
        let n = d
            .syslog
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // The same process, still detached (no second fork), still holding
    // its pidfile, still serving, logging to syslog.
    assert_eq!(d.pid(), pid);
    assert_eq!(session(pid), before);
    assert_eq!(tcp_port_exchange(d.port, b"after\n"), "after\n");
    d.assert_second_refused(&args, pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(TIMEOUT, || !d.pidfile.exists()));
}

/// Issue 15 item 3: the pidfile followed symlinks and was truncated, so
/// root's summond wrote its pid over whatever a link in a writable
/// directory named. Now a symlink (and another uid's file) is refused,
/// with exit 1, before anything is written.
#[test]
fn a_pidfile_that_is_a_symlink_or_another_users_file_is_refused_untouched() {
    let d = Daemon::new("pidfile-link");
    let target = d._dir.path("precious");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, &d.pidfile).unwrap();
    let args = d.args(&[]);
    let (code, err) = d.run(&args);
    if code == 0 {
        // The old behaviour: it runs, its pid written through the link.
        if let Ok(pid) = std::fs::read_to_string(&target).unwrap().trim().parse() {
            drop(KillOnDrop::new(pid));
        }
    }
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "pidfile {} is a symbolic link; refusing",
            d.pidfile.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert!(d.pidfile.is_symlink(), "the link is left as it was");

    if !nix::unistd::geteuid().is_root() {
        skip(
            "a_pidfile_that_is_a_symlink_or_another_users_file_is_refused_untouched",
            "the other-uid half needs root to chown",
        );
        return;
    }
    std::fs::remove_file(&d.pidfile).unwrap();
    std::fs::write(&d.pidfile, "theirs\n").unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&d.pidfile, Some(nobody.uid), None).unwrap();
    let (code, err) = d.run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "is owned by uid {}, not by summond's uid 0",
            nobody.uid
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&d.pidfile).unwrap(), "theirs\n");
}

/// Issue 15 item 12: `summond -d -c summond.toml` re-read the relative
/// path from / at `summond upgrade`, and `--pidfile summond.pid` was
/// left behind at stop. Every path is absolute before detaching.
#[test]
fn relative_paths_under_daemon_mode_survive_upgrade_and_stop() {
    let d = Daemon::new("daemon-relative");
    let dir = d.config.parent().unwrap().to_path_buf();
    let control = dir.join("control.sock");
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{}{text}", daemon_control(&control))).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["-d", "-c", "c.toml", "--pidfile", "summond.pid"])
        .current_dir(&dir)
        .env("SUMMOND_SYSLOG_SOCKET", &d.syslog_path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    let (code, stdout, err) = run_to_exit(&["upgrade", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains(&format!("upgraded: pid {pid} serves")),
        "{stdout}"
    );
    assert_eq!(tcp_port_exchange(d.port, b"after\n"), "after\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        wait_until(TIMEOUT, || !matches!(proc_state(pid), Some(s) if s != 'Z')),
        "summond stopped"
    );
    assert!(!d.pidfile.exists(), "the relative pidfile removed at stop");
}

/// Issue 15 item 13: under `-d`, LISTEN_PID was compared with the
/// daemon's pid after the fork, so handed sockets were ignored (and
/// binding the same address failed). They are taken before detaching.
#[test]
fn daemon_mode_adopts_sockets_handed_by_systemd_socket_activate() {
    let activate = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(activate).exists() {
        skip(
            "daemon_mode_adopts_sockets_handed_by_systemd_socket_activate",
            "needs systemd-socket-activate",
        );
        return;
    }
    let d = Daemon::new("daemon-handed");
    d.syslog.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The control socket is handed too: listened on before the fork, so
    // the kernel's SO_PEERCRED names a pid that is not the daemon's.
    let control = d.config.with_file_name("control.sock");
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{}{text}", daemon_control(&control))).unwrap();
    let syslog_env = format!("SUMMOND_SYSLOG_SOCKET={}", d.syslog_path.display());
    let listen = format!("127.0.0.1:{}", d.port);
    let control_arg = control.to_str().unwrap();
    let mut args = vec![
        "-l",
        &listen,
        "-l",
        control_arg,
        "-E",
        &syslog_env,
        "--",
        BIN,
    ];
    args.extend(d.args(&[]));
    let mut activated = std::process::Command::new(activate)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _activate_reaper = KillOnDrop::new(activated.id() as i32);
    assert!(wait_until(TIMEOUT, || listening_inode(d.port).is_some()));
    // It starts summond at the first client, which waits in the backlog
    // of the handed socket until summond serves it.
    assert_eq!(tcp_port_exchange(d.port, b"handed\n"), "handed\n");
    let mut err = String::new();
    std::io::Read::read_to_string(activated.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(activated.wait().unwrap().success(), "{err}");
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    assert_ne!(pid, activated.id() as i32, "detached");
    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" serving ")) {
        let n = d
            .syslog
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen.iter().any(|l| l.contains(&format!(
            "d: tcp://127.0.0.1:{} adopted from the service manager",
            d.port
        ))),
        "{seen:?}"
    );
    // `summond upgrade` signals the daemon that writes the answers.
    let (code, out, err) = run_to_exit(&["upgrade", "--control", control_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("upgraded: pid {pid} serves")),
        "{out}"
    );
    assert_eq!(tcp_port_exchange(d.port, b"after\n"), "after\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(TIMEOUT, || !d.pidfile.exists()));
}

/// Start `-d` with `pidfile`; the daemon's pid.
fn start_with_pidfile(d: &Daemon, pidfile: &std::path::Path) -> i32 {
    let args = [
        "-d",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "-c",
        d.config.to_str().unwrap(),
    ];
    let (code, err) = d.run(&args);
    assert_eq!(code, 0, "{err}");
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn stop(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    assert!(wait_until(
        TIMEOUT,
        || !matches!(proc_state(pid), Some(s) if s != 'Z')
    ));
}

/// Review of issue 15 (F6a): the pidfile was removed by path at exit, so
/// whatever the path named by then went: a file put in its place, or,
/// after its directory was renamed and a symlink put at the old name,
/// the file of that name in the directory the link points to. Now the
/// file is removed from the directory it was opened in, and only while
/// its name there is still the file summond opened.
#[test]
fn only_the_pidfile_summond_opened_is_removed_at_exit() {
    let d = Daemon::new("pidfile-swap");
    // A file put in its place while summond runs is left alone.
    let pid = start_with_pidfile(&d, &d.pidfile);
    std::fs::rename(&d.pidfile, d._dir.path("moved.pid")).unwrap();
    std::fs::write(&d.pidfile, "someone else's\n").unwrap();
    stop(pid);
    assert_eq!(
        std::fs::read_to_string(&d.pidfile).unwrap(),
        "someone else's\n"
    );
    std::fs::remove_file(&d.pidfile).unwrap();

    // Its directory renamed, a symlink at the old name: the file in the
    // renamed directory goes, the one the link points at stays.
    let (run, other) = (d._dir.path("run"), d._dir.path("other"));
    std::fs::create_dir(&run).unwrap();
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("summond.pid"), "4242\n").unwrap();
    let pid = start_with_pidfile(&d, &run.join("summond.pid"));
    std::fs::rename(&run, d._dir.path("run.old")).unwrap();
    std::os::unix::fs::symlink(&other, &run).unwrap();
    stop(pid);
    assert_eq!(
        std::fs::read_to_string(other.join("summond.pid")).unwrap(),
        "4242\n"
    );
    assert!(
        wait_until(TIMEOUT, || !d._dir.path("run.old/summond.pid").exists()),
        "its own pidfile is removed"
    );
}

/// Review of issue 15 (F6b): a pidfile in a directory another user can
/// change was used, so they could swap it for a link to any file and
/// have root write or remove that. As OpenSSH's StrictModes: every
/// directory from / down must be owned by root or summond's uid and
/// writable by no one else unless sticky; the refusal names it.
#[test]
fn a_pidfile_in_a_directory_others_can_change_is_refused() {
    let d = Daemon::new("pidfile-dir");
    let open = d._dir.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pidfile = open.join("sub/summond.pid");
    std::fs::create_dir(open.join("sub")).unwrap();
    let run = |pidfile: &std::path::Path| {
        d.run(&[
            "-d",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-c",
            d.config.to_str().unwrap(),
        ])
    };
    let (code, err) = run(&pidfile);
    if code == 0 {
        // The old behaviour: it runs.
        if let Ok(pid) = std::fs::read_to_string(&pidfile).unwrap().trim().parse() {
            drop(KillOnDrop::new(pid));
        }
    }
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "directory {} is writable by others than its owner (mode 0777, no sticky bit)",
            open.display()
        )),
        "{err}"
    );
    assert!(!pidfile.exists(), "nothing created");
    // Sticky, as /tmp: fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    stop(start_with_pidfile(&d, &pidfile));

    if !nix::unistd::geteuid().is_root() {
        skip(
            "a_pidfile_in_a_directory_others_can_change_is_refused",
            "the other-owner half needs root to chown",
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&open.join("sub"), Some(nobody.uid), None).unwrap();
    let (code, err) = run(&pidfile);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "directory {} is owned by uid {}, neither root nor summond's uid 0",
            open.join("sub").display(),
            nobody.uid
        )),
        "{err}"
    );
}

/// A drainer's lines go where summond's go. With `-d` summond logs to
/// the syslog socket, an fd the drainer closed with every other one it
/// does not relay, so its end line was lost; now it keeps that socket,
/// and its lines say they come from it.
#[test]
fn a_drainers_lines_reach_syslog_in_daemon_mode() {
    use std::io::{Read, Write};
    if !crate::forward::have("openssl") {
        skip("drainer syslog", "openssl is not installed");
        return;
    }
    let d = Daemon::new("daemon-drainer");
    let pki = crate::tls::Pki::new(d._dir.0.as_path());
    std::fs::write(
        &d.config,
        format!(
            "[[service]]\nname = \"d\"\nlisten = \"tcp://127.0.0.1:{}\"\nexec = [\"cat\"]\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            d.port,
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    )
    .unwrap();
    d.syslog.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (code, err) = d.run(&d.args(&[]));
    assert_eq!(code, 0, "{err}");
    let pid = d.pid();
    let _reaper = KillOnDrop::new(pid);
    let mut c = crate::tls_forward::rustls_client(&pki, d.port);
    c.write_all(b"before\n").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    let mut seen = Vec::new();
    let mut wait_for = |what: &str| {
        let mut buf = [0u8; 512];
        while !seen.iter().any(|l: &String| l.contains(what)) {
            let n = (d.syslog.recv(&mut buf)).unwrap_or_else(|e| panic!("{e}: {what}: {seen:?}"));
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        seen.iter().find(|l| l.contains(what)).unwrap().clone()
    };
    let pid_ = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid_, nix::sys::signal::Signal::SIGUSR2).unwrap();
    let forked = wait_for("TLS connections go on in drainer pid ");
    let drainer = forked.rsplit(' ').next().unwrap().trim().to_string();
    wait_for("upgraded in place");
    // Still relayed, by the drainer; its end is the client's close.
    c.write_all(b"during\n").unwrap();
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"during\n");
    c.conn.send_close_notify();
    c.flush().unwrap();
    let end = wait_for("TLS connections ended");
    assert!(
        end.contains(&format!(
            "summond[{drainer}]: drainer pid {drainer}: its 1 TLS"
        )),
        "{end}"
    );
    nix::sys::signal::kill(pid_, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_until(TIMEOUT, || !d.pidfile.exists()));
}
