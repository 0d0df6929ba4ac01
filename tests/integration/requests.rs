//! Requests over the control socket: `summond reload` answering the one
//! who asked, `summond pause|resume|restart NAME`, and what status says
//! a service is.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

fn echo_service(name: &str, port: u16, extra: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n{extra}\n")
}

fn ctl(control: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--control", control.to_str().unwrap()]);
    run_to_exit(&all)
}

#[test]
fn summond_reload_prints_the_changes_or_every_error_as_check_does() {
    let (a, b, c, d) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("reload-answer");
    let control = dir.path("control.sock");
    let head = daemon_control(&control);
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{head}{}{}{}",
                echo_service("a", a, ""),
                echo_service("b", b, ""),
                echo_service("c", c, "")
            ),
            ..Start::default()
        },
    );
    // a stays, b changes, c goes, d comes.
    s.write_config(&format!(
        "{head}{}{}{}",
        echo_service("a", a, ""),
        echo_service("b", b, "max_instances = 3"),
        echo_service("d", d, "")
    ));
    let (code, out, err) = ctl(&control, &["reload"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "reloaded: 3 services (+1 -1 ~1)\n"),
        "{err}"
    );
    assert_eq!(tcp_port_exchange(d, b"d\n"), "d\n");
    // Broken: the errors as --check prints them, exit 2, the old config on.
    let broken = format!(
        "{head}{}{}",
        echo_service("a", a, "acept = true"),
        echo_service("d", d, "max_instances = \"x\"")
    );
    s.write_config(&broken);
    let (code, out, err) = ctl(&control, &["reload"]);
    assert_eq!(code, 2, "{out}{err}");
    let (check_code, _, check_err) = run_to_exit(&["--check", "-c", s.config.to_str().unwrap()]);
    assert_eq!(check_code, 2);
    assert!(
        err.starts_with(check_err.trim_end()),
        "reload:\n{err}\ncheck:\n{check_err}"
    );
    let file = s.config.display().to_string();
    assert!(err.contains(&format!("{file}:7:1")), "{err}");
    assert!(err.contains(&format!("{file}:12:17")), "{err}");
    assert!(err.contains("the old config serves on"), "{err}");
    assert_eq!(tcp_port_exchange(d, b"still\n"), "still\n");
    assert_eq!(tcp_port_exchange(b, b"b\n"), "b\n");
    // A config that loads but cannot be applied: exit 1, and why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = taken.local_addr().unwrap().port();
    s.write_config(&format!(
        "{head}{}{}",
        echo_service("a", a, ""),
        echo_service("t", t, "")
    ));
    let (code, out, err) = ctl(&control, &["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("bind tcp://127.0.0.1:{t} for service \"t\"")),
        "{err}"
    );
    assert_eq!(tcp_port_exchange(d, b"on\n"), "on\n");
}

/// summond serving `echo_service("a", port)` with a control socket and a
/// drop-in directory whose `slow.toml` is a fifo: a load reads it until
/// `writer` writes and closes, so the test holds a reload in flight.
struct HungLoad {
    s: Summond,
    control: std::path::PathBuf,
    confd: std::path::PathBuf,
    fifo: std::path::PathBuf,
    writer: std::fs::File,
}

impl HungLoad {
    fn start(tag: &str, a: u16) -> HungLoad {
        let dir = TempDir::new(tag);
        let control = dir.path("control.sock");
        let confd = dir.path("conf.d");
        std::fs::create_dir(&confd).unwrap();
        let config = format!(
            "{}include = [\"conf.d/*.toml\"]\n{}",
            daemon_control(&control),
            echo_service("a", a, "")
        );
        let s = Summond::start_in(
            dir,
            Start {
                config: &config,
                ..Start::default()
            },
        );
        let fifo = confd.join("slow.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        HungLoad {
            s,
            control,
            confd,
            fifo,
            writer,
        }
    }
}

/// A child of summond (its config loader) has `fifo` open: the load it
/// runs reads the fifo, whatever is renamed over its name from now on.
fn loader_holds(s: &Summond, fifo: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(fifo) else {
        return false;
    };
    children_of(s.pid()).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .any(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()))
    })
}

/// Clients asking while a load runs are answered by the next load, which
/// reads the files after their request; the one who started the load
/// gets its own outcome.
#[test]
fn reload_requests_during_a_load_get_the_next_loads_outcome() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let HungLoad {
        s,
        control,
        confd,
        fifo,
        mut writer,
    } = HungLoad::start("reload-concurrent", a);
    let reload = || {
        Command::new(BIN)
            .args(["reload", "--control", control.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = reload();
    // Logged when the loader is forked, before it opens the drop-ins: the
    // rename below must wait until it holds the fifo (once, under load,
    // it found the plain file and its load was not held).
    assert!(
        wait_until(TIMEOUT, || loader_holds(&s, &fifo)),
        "{}",
        s.log_text()
    );
    // The drop-in as it will be for the later clients.
    let real = confd.join("real.tmp");
    std::fs::write(&real, echo_service("c", c, "")).unwrap();
    std::fs::rename(&real, &fifo).unwrap();
    let later: Vec<_> = (0..3).map(|_| reload()).collect();
    assert!(
        wait_until(TIMEOUT, || s.log_count("loading again after it") == 3),
        "{}",
        s.log_text()
    );
    // A client that gives up meanwhile costs nothing: its fd is closed
    // when it goes.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    let mut quitter = reload();
    assert!(wait_until(TIMEOUT, || s
        .log_count("loading again after it")
        == 4));
    assert_eq!(fds(), before + 1);
    quitter.kill().unwrap();
    quitter.wait().unwrap();
    assert!(wait_until(TIMEOUT, || fds() == before), "{}", s.log_text());
    writer
        .write_all(echo_service("b", b, "").as_bytes())
        .unwrap();
    drop(writer);
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "reloaded: 2 services (+1 -0 ~0)\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for client in later {
        let out = client.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "reloaded: 2 services (+1 -1 ~0)\n"
        );
    }
    assert_eq!(s.log_count("reload done"), 2, "{}", s.log_text());
    assert_eq!(tcp_port_exchange(c, b"c\n"), "c\n");
    // Every control client is gone: a status is answered.
    assert_eq!(
        status_json(&control)["services"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn a_paused_service_keeps_its_clients_waiting_until_resumed() {
    let (a, p) = (free_port(), free_port());
    let dir = TempDir::new("pause");
    let control = dir.path("control.sock");
    let config = format!(
        "{}{}[[service]]\nname = \"held\"\nlisten = \"tcp://127.0.0.1:{p}\"\naccept = false\npass = \"listen_fds\"\nexec = [\"python3\", \"-c\", {}]\n",
        daemon_control(&control),
        echo_service("a", a, ""),
        toml_str(
            "import os, socket\ns = socket.socket(fileno=3)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'pid %d\\n' % os.getpid())\n    c.close()\n"
        )
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let (code, out, err) = ctl(&control, &["pause", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a: paused"), "{out}");
    let v = status_json(&control);
    assert_eq!(v["services"][0]["paused"], "until summond resume");
    let (_, table, _) = ctl(&control, &["status"]);
    assert!(
        table.contains("a: paused (until summond resume)"),
        "{table}"
    );
    // A client connects and waits in the backlog, unserved.
    let mut waiting = connect_tcp(([127, 0, 0, 1], a).into());
    assert!(wait_in_backlog(a, 1), "{}", s.log_text());
    waiting.write_all(b"late\n").unwrap();
    // A reload that keeps the service keeps the pause.
    assert!(s.reload(&format!("{config}\n# touched\n")));
    assert!(wait_in_backlog(a, 1));
    assert_eq!(s.log_count("a: pid "), 0);
    let (code, out, _) = ctl(&control, &["resume", "a"]);
    assert_eq!((code, out.as_str()), (0, "a: resumed\n"));
    assert_eq!(read_line(&waiting), "late\n");
    assert!(status_json(&control)["services"][0]["paused"].is_null());
    // An unknown name: exit 1 and a message.
    let (code, _, err) = ctl(&control, &["pause", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no service is named \"nope\""), "{err}");
    // restart: the long-running child goes, the next client starts another.
    let pid_of = || {
        let c = connect_tcp(([127, 0, 0, 1], p).into());
        read_line(&c)
    };
    let before = pid_of();
    let (code, out, err) = ctl(&control, &["restart", "held"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("SIGTERM sent to 1 long-running child ("),
        "{out}"
    );
    assert!(
        wait_until(TIMEOUT, || s.log_count("held: pid ") == 1),
        "{}",
        s.log_text()
    );
    let after = pid_of();
    assert_ne!(before, after);
    assert_eq!(s.log_count("crash"), 0, "{}", s.log_text());
    // A pause of a service whose long-running child holds its sockets
    // says what happens: that child serves on.
    let (code, out, err) = ctl(&control, &["pause", "held"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("held: paused: its 1 long-running child goes on accepting"),
        "{out}"
    );
    assert_eq!(pid_of(), after, "served on while paused");
    assert_eq!(ctl(&control, &["resume", "held"]).0, 0);
}

/// summond with a control socket and one echo service `a`: it and its
/// control socket's path.
fn with_control(name: &str) -> (Summond, std::path::PathBuf) {
    let dir = TempDir::new(name);
    let control = dir.path("control.sock");
    let config = format!(
        "{}{}",
        daemon_control(&control),
        echo_service("a", free_port(), "")
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    (s, control)
}

/// A request line longer than summond reads gets an answer saying so,
/// not a close without a word.
#[test]
fn a_request_over_512_bytes_is_answered_with_an_error() {
    use std::io::Read;
    let (_s, control) = with_control("longreq");
    let mut c = std::os::unix::net::UnixStream::connect(&control).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(&[b'x'; 600]).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
    assert_eq!(
        v["bad_request"], "a request is one line of at most 512 bytes",
        "{answer:?}"
    );
}

/// A request written in two parts, the second well after the grace in
/// which a silent client is taken for one from before requests, is
/// answered as a request (it was closed without a word).
#[test]
fn a_request_written_slowly_is_answered() {
    use std::io::Read;
    let (_s, control) = with_control("slowreq");
    let mut c = std::os::unix::net::UnixStream::connect(&control).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"pau").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    c.write_all(b"se a\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("a: paused"), "{answer:?}");
}

#[test]
fn status_says_internal_and_disabled() {
    let (a, i, d) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("status-kinds");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}{}[[service]]\nname = \"i\"\nlisten = \"tcp://127.0.0.1:{i}\"\nexec = [\"internal:echo\"]\n{}",
                daemon_control(&control),
                echo_service("a", a, ""),
                echo_service("d", d, "disabled = true")
            ),
            ..Start::default()
        },
    );
    let v = status_json(&control);
    let modes: Vec<(&str, &str)> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        modes,
        [("a", "accept/stdio"), ("i", "internal"), ("d", "disabled")]
    );
    assert_eq!(v["services"][2]["addresses"], serde_json::json!([]));
    let (_, table, _) = ctl(&control, &["status"]);
    let row = table.lines().find(|l| l.starts_with("d ")).unwrap();
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        ["d", "-", "disabled"],
        "{table}"
    );
    drop(s);
}

/// A pause lasts across a live upgrade.
#[test]
fn a_pause_survives_an_upgrade() {
    let a = free_port();
    let dir = TempDir::new("pause-upgrade");
    let (s, _, control) = start_upgradable(dir, &echo_service("a", a, ""), Start::default());
    assert_eq!(ctl(&control, &["pause", "a"]).0, 0);
    upgrade_ok(&s, &control);
    let v = status_json(&control);
    assert_eq!(v["upgrades"], 1);
    assert_eq!(v["services"][0]["paused"], "until summond resume");
    let waiting = connect_tcp(([127, 0, 0, 1], a).into());
    (&waiting).write_all(b"after\n").unwrap();
    assert!(wait_in_backlog(a, 1));
    assert_eq!(ctl(&control, &["resume", "a"]).0, 0);
    assert_eq!(read_line(&waiting), "after\n");
}

/// `summond restart` of a child that ignores SIGTERM: SIGKILL to its
/// group 5 s later, and the next client gets a new one.
#[test]
fn restart_kills_a_child_that_ignores_sigterm() {
    let p = free_port();
    let dir = TempDir::new("restart-stubborn");
    let control = dir.path("control.sock");
    let config = format!(
        "{}[[service]]\nname = \"stubborn\"\nlisten = \"tcp://127.0.0.1:{p}\"\naccept = false\npass = \"listen_fds\"\nexec = [\"python3\", \"-c\", {}]\n",
        daemon_control(&control),
        toml_str(
            "import os, signal, socket\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ns = socket.socket(fileno=3)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'pid %d\\n' % os.getpid())\n    c.close()\n"
        )
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let pid_of = || read_line(&connect_tcp(([127, 0, 0, 1], p).into()));
    let before = pid_of();
    let (code, out, err) = ctl(&control, &["restart", "stubborn"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SIGKILL in 5s"), "{out}");
    assert!(
        s.wait_log("still running 5s after summond restart's SIGTERM; SIGKILL"),
        "{}",
        s.log_text()
    );
    assert!(
        s.wait_log("killed by signal 9 (SIGKILL)"),
        "{}",
        s.log_text()
    );
    let after = pid_of();
    assert_ne!(after, before);
    // It ignores SIGTERM: summond's stop would leave it to its SIGKILL
    // 5 s later, after the test is gone.
    let pid = after.trim().trim_start_matches("pid ").parse().unwrap();
    drop(KillOnDrop::new(pid));
}

/// Clients waiting for a hung load's outcome leave room for status; ones
/// that sent `reload` and closed at once are closed too, not kept until
/// the load ends.
#[test]
fn waiting_reload_clients_leave_room_for_status_and_gone_ones_are_closed() {
    let a = free_port();
    let HungLoad {
        s,
        control,
        confd,
        fifo,
        mut writer,
    } = HungLoad::start("reload-waiting", a);
    let reloads: Vec<_> = (0..20)
        .map(|_| {
            Command::new(BIN)
                .args(["reload", "--control", control.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        wait_until(TIMEOUT, || s.log_count("loading again after it") == 19),
        "{}",
        s.log_text()
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..20 {
        let mut c = std::os::unix::net::UnixStream::connect(&control).unwrap();
        c.write_all(b"reload\n").unwrap();
    }
    assert!(
        wait_until(TIMEOUT, || s.log_count("loading again after it") == 39),
        "{}",
        s.log_text()
    );
    assert!(wait_until(TIMEOUT, || fds() == before), "{}", s.log_text());
    // 20 wait for the load, more than MAX_CONTROL_CLIENTS: status answers.
    assert_eq!(
        status_json(&control)["services"].as_array().map(Vec::len),
        Some(1)
    );
    // The next load reads a plain file (the fifo would wait for a writer).
    let real = confd.join("real.tmp");
    std::fs::write(&real, "# nothing\n").unwrap();
    std::fs::rename(&real, &fifo).unwrap();
    writer.write_all(b"# nothing\n").unwrap();
    drop(writer);
    for client in reloads {
        let out = client.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
