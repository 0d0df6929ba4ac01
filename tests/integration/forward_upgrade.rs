//! Forward mode across a live upgrade, in every state a backend can be
//! in: starting (its clients held, its readiness and start_timeout),
//! stopping (its SIGKILL), retired by a reload (its connections).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::forward::{
    backend_pid, clients_that_sent, echo, have, let_the_backend_accept_and_each_get_its_line,
    slow_unix_backend, slow_unix_services, stubborn, Fwd, KillOnDropLater,
};
use crate::util::*;

/// SIGUSR2, and wait for the new image to serve.
fn upgrade(s: &Summond) {
    let before = s.log_count(" serving ");
    s.signal(nix::libc::SIGUSR2);
    assert!(
        wait_until(TIMEOUT, || s.log_count(" serving ") > before),
        "{}",
        s.log_text()
    );
}

fn running(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z')
}

/// A backend that ignores SIGTERM, stopping (idle_stop) when summond
/// upgrades: the next image sends its SIGKILL at stop_timeout, so it
/// does not live on, orphaned, on the port the next backend binds.
#[test]
fn an_upgrade_while_a_backend_stops_keeps_its_sigkill() {
    if !have("python3") {
        return skip("forward upgrade stopping", "python3 is not installed");
    }
    let f = Fwd::start(
        "stubborn",
        stubborn,
        "idle_stop = \"100ms\"\nstop_timeout = \"3s\"",
    );
    let (s, port) = (&f.s, f.port);
    assert_eq!(tcp_port_exchange(port, b"one\n"), "one\n");
    let pid = backend_pid(s, 0);
    assert!(s.wait_log("idle: stopping it"), "{}", s.log_text());
    upgrade(s);
    assert!(running(pid), "the backend did not ignore SIGTERM");
    assert!(
        wait_until(TIMEOUT, || !running(pid)),
        "the stopping backend outlived the upgrade\n{}",
        s.log_text()
    );
    assert!(
        s.log_text()
            .contains("still running after stop_timeout: SIGKILL"),
        "{}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b"two\n"), "two\n");
    assert_eq!(s.log_count("starting the backend"), 2, "{}", s.log_text());
}

/// Backends starting when summond upgrades: their held clients are
/// relayed once each is ready (one by READY=1 on its NOTIFY_SOCKET, one
/// by accepting a connect), and a third's start_timeout still ends it.
#[test]
fn an_upgrade_while_backends_start_keeps_their_clients_and_deadlines() {
    if !have("socat") || !have("python3") {
        return skip(
            "forward upgrade starting",
            "socat or python3 is not installed",
        );
    }
    let (p1, b1, p2, b2, p3, b3) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let dir = TempDir::new("fwdup");
    let flag = dir.path("go");
    let wait_flag = |f: &Path| {
        format!(
            "i=0; while [ ! -e {f} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; ",
            f = f.display()
        )
    };
    let send =
        "import os,socket; a=os.environ['NOTIFY_SOCKET']; a='\\0'+a[1:] if a[0]=='@' else a; \
         socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', a); os.wait()";
    let notify = format!(
        "socat TCP-LISTEN:{b1},bind=127.0.0.1,reuseaddr,fork EXEC:cat & {} exec python3 -c \"{send}\"",
        wait_flag(&flag)
    );
    let late = format!(
        "{} exec socat TCP-LISTEN:{b2},bind=127.0.0.1,reuseaddr,fork EXEC:cat",
        wait_flag(&flag)
    );
    let config = format!(
        r#"
[[service]]
name = "notify"
listen = "tcp://127.0.0.1:{p1}"
exec = {notify}
forward = "tcp://127.0.0.1:{b1}"
ready = "notify"
start_timeout = "60s"

[[service]]
name = "late"
listen = "tcp://127.0.0.1:{p2}"
exec = {late}
forward = "tcp://127.0.0.1:{b2}"
start_timeout = "60s"

[[service]]
name = "never"
listen = "tcp://127.0.0.1:{p3}"
exec = ["sleep", "60"]
forward = "tcp://127.0.0.1:{b3}"
start_timeout = "5s"
stop_timeout = "1s"
"#,
        notify = sh(&notify),
        late = sh(&late),
    );
    let s = Summond::start(&config);
    let _guard = KillOnDropLater(&s);
    let clients: Vec<TcpStream> = [p1, p2, p3]
        .iter()
        .map(|p| {
            let c = TcpStream::connect(("127.0.0.1", *p)).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            (&c).write_all(b"early\n").unwrap();
            c
        })
        .collect();
    assert!(
        wait_until(TIMEOUT, || s.log_count("starting the backend") == 3),
        "{}",
        s.log_text()
    );
    upgrade(&s);
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(read_line(&clients[0]), "early\n", "{}", s.log_text());
    assert_eq!(read_line(&clients[1]), "early\n", "{}", s.log_text());
    assert!(
        s.wait_log("never: backend pid"),
        "start_timeout was lost\n{}",
        s.log_text()
    );
    assert!(
        s.log_text().contains("not ready within start_timeout"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("starting the backend"), 3, "{}", s.log_text());
}

/// A backend a reload retired, still finishing a connection, when
/// summond upgrades: that connection goes on, and the backend stops when
/// it ends, which lets the new backend start on the same address.
#[test]
fn an_upgrade_while_a_retired_backend_drains_keeps_its_connection() {
    if !have("socat") {
        return skip("forward upgrade retired", "socat is not installed");
    }
    crate::forward::drain_after_reload(upgrade);
}

/// A backend with `ready = "notify"` that says STATUS= after READY=1:
/// `summond status` (text and JSON) and the status page show it, and it
/// is still read after an upgrade (the NOTIFY_SOCKET is handed over).
#[test]
fn a_backends_status_shows_in_status_and_on_the_page_across_an_upgrade() {
    if !have("python3") {
        return skip("forward STATUS=", "python3 is not installed");
    }
    let mport = free_port();
    let dir = TempDir::new("fwdstatus");
    let control = dir.path("control.sock");
    // An echo of one line per connection that counts them in STATUS=.
    let script = |backend: u16| {
        let py = format!(
            "import os, socket\n\
         a = os.environ['NOTIFY_SOCKET']; a = '\\0' + a[1:]\n\
         n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s = socket.create_server(('127.0.0.1', {backend}))\n\
         n.sendto(b'READY=1\\nSTATUS=served 0', a)\n\
         i = 0\n\
         while True:\n    \
             c, _ = s.accept(); c.sendall(c.recv(100)); c.close(); i += 1\n    \
             n.sendto(b'STATUS=served %d' % i, a)\n"
        );
        format!("[\"python3\", \"-c\", {}]", toml_str(&py))
    };
    let f = Fwd::start_in(
        dir,
        &format!(
            "{}metrics = \"tcp://127.0.0.1:{mport}\"\n",
            daemon_control(&control)
        ),
        "web",
        script,
        "ready = \"notify\"",
    );
    let (s, port) = (&f.s, f.port);
    let said = |n: u32| {
        let want = format!("served {n}");
        wait_until(TIMEOUT, || {
            status_json(&control)["services"][0]["backend"]["status"] == want.as_str()
        })
    };
    assert_eq!(tcp_port_exchange(port, b"one\n"), "one\n");
    assert!(said(1), "{}\n{}", status_json(&control), s.log_text());
    let (code, table, _) = run_to_exit(&["status", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0);
    let pid = backend_pid(s, 0);
    assert!(
        table.contains(&format!("web: backend ready, pid {pid}, "))
            && table.contains(", \"served 1\"\n"),
        "{table}"
    );
    let mut page = String::new();
    let mut c = TcpStream::connect(("127.0.0.1", mport)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    std::io::Read::read_to_string(&mut c, &mut page).unwrap();
    assert!(page.contains("&quot;served 1&quot;"), "{page}");
    upgrade(s);
    assert_eq!(
        status_json(&control)["services"][0]["backend"]["status"],
        "served 1"
    );
    assert_eq!(tcp_port_exchange(port, b"two\n"), "two\n");
    assert!(said(2), "{}\n{}", status_json(&control), s.log_text());
    assert_eq!(s.log_count("starting the backend"), 1, "{}", s.log_text());
}

/// A relayed connection's `max_runtime` goes on across an upgrade: the
/// new image closes it at the deadline it started with (it was handed
/// over with no deadline, and ran on for good).
#[test]
fn a_relayed_connections_max_runtime_crosses_an_upgrade() {
    use std::io::Read;
    if !have("socat") {
        return skip("forward upgrade max_runtime", "socat is not installed");
    }
    let f = Fwd::start("echo", crate::forward::echo, "max_runtime = \"4s\"");
    let (s, port) = (&f.s, f.port);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c.write_all(b"before\n").unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before\n");
    upgrade(s);
    c.write_all(b"after\n").unwrap();
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after\n", "{}", s.log_text());
    // Closed by the new image at the deadline (the read ends, well
    // before the 30 s read timeout would).
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(end.is_ok(), "not closed: {end:?}\n{}", s.log_text());
    assert!(
        s.wait_log("ran past max_runtime: closed"),
        "{}",
        s.log_text()
    );
}

/// Attack review (atk3): the tree a stop read (the daemons that left the
/// backend's group) is not handed over: after an upgrade while the
/// backend stops, its exit kills its group but not the daemon, which goes
/// to init and runs on (holding whatever it holds: the forward port, as
/// the backend's uid). Without the upgrade the daemon is SIGKILLed at the
/// backend's exit. Fails on main: the daemon outlives the stop.
#[test]
fn an_upgrade_while_a_backend_stops_keeps_the_daemons_its_stop_found() {
    if !have("socat") {
        return skip("forward upgrade tree", "socat is not installed");
    }
    let f = Fwd::start(
        "daemonish",
        |b| {
            format!(
                r#"["sh", "-c", "setsid sh -c 'trap \"\" TERM; while :; do sleep 1; done' & trap 'sleep 1.5; exit 0' TERM; socat TCP-LISTEN:{b},bind=127.0.0.1,reuseaddr,fork EXEC:cat & wait"]"#
            )
        },
        "idle_stop = \"100ms\"\nstop_timeout = \"20s\"",
    );
    let (s, port) = (&f.s, f.port);
    assert_eq!(tcp_port_exchange(port, b"one\n"), "one\n");
    assert!(
        s.wait_log("a daemon): SIGTERM to it too"),
        "{}",
        s.log_text()
    );
    upgrade(s);
    assert!(s.wait_log("stopped (exited"), "{}", s.log_text());
    let daemons: Vec<i32> = s
        .log_text()
        .lines()
        .filter(|l| l.contains("left backend pid"))
        .filter_map(|l| l.split(": pid ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(!daemons.is_empty(), "{}", s.log_text());
    let _kill: Vec<KillOnDrop> = daemons.iter().map(|p| KillOnDrop::new(*p)).collect();
    let gone = wait_until(Duration::from_secs(3), || {
        daemons.iter().all(|p| !running(*p))
    });
    assert!(
        gone,
        "daemons {daemons:?} outlived their backend's stop across an upgrade\n{}",
        s.log_text()
    );
}

/// An upgrade to an image that reads only format 1 of the upgrade state
/// (as an older summond, which would drop forward state without a word:
/// its backends orphaned, its relayed clients' fds never served) while a
/// backend serves a relayed connection: that image refuses the state and
/// goes back; the old one serves on with the backend and the connection,
/// and says at ERROR what the state held. An image that reads format 2
/// then takes it all.
#[test]
fn an_upgrade_to_an_image_that_cannot_read_forward_state_goes_back_with_it() {
    if !have("socat") {
        return skip("forward upgrade format", "socat is not installed");
    }
    let (port, backend) = (free_port(), free_port());
    let (s, bin, control) = start_upgradable(
        TempDir::new("fwdformat"),
        &format!(
            "[[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n\
             forward = \"tcp://127.0.0.1:{backend}\"\n",
            echo(backend)
        ),
        Start::default(),
    );
    let _guard = KillOnDropLater(&s);
    let client = connect_tcp(([127, 0, 0, 1], port).into());
    (&client).write_all(b"one\n").unwrap();
    assert_eq!(read_line(&client), "one\n", "{}", s.log_text());
    let pid = backend_pid(&s, 0);
    // The same binary, standing for one that reads format 1 only.
    install_executable(
        &bin,
        format!("#!/bin/sh\nSUMMOND_TEST_READS_FORMAT=1 exec {BIN} \"$@\"\n").as_bytes(),
    );
    let (code, _, err) = upgrade_with(&control);
    assert_eq!(code, 1, "{err}\n{}", s.log_text());
    assert!(
        err.contains("has format 2; this binary reads formats 1 to 1"),
        "{err}"
    );
    assert!(
        s.wait_log("handed state format 2 (1 forward backend, 1 relayed connection)"),
        "{}",
        s.log_text()
    );
    assert_eq!(status_json(&control)["pid"], s.pid());
    (&client).write_all(b"two\n").unwrap();
    assert_eq!(read_line(&client), "two\n", "{}", s.log_text());
    assert!(running(pid));

    copy_executable(Path::new(BIN), &bin);
    upgrade_ok(&s, &control);
    (&client).write_all(b"three\n").unwrap();
    assert_eq!(read_line(&client), "three\n", "{}", s.log_text());
    assert_eq!(tcp_port_exchange(port, b"four\n"), "four\n");
    assert_eq!(s.log_count("starting the backend"), 1, "{}", s.log_text());
}

fn upgrade_with(control: &Path) -> (i32, String, String) {
    run_to_exit(&["upgrade", "--control", control.to_str().unwrap()])
}

/// Clients held for a ready `unix://` backend's full listen backlog
/// cross an upgrade (their sockets, nothing read from them): the new
/// image connects them again and relays each once the backend accepts.
#[test]
fn an_upgrade_while_clients_wait_for_a_full_backlog_keeps_them() {
    if !have("python3") {
        return skip("forward upgrade full backlog", "python3 is not installed");
    }
    let (s, port, _) = slow_unix_backend("");
    let _guard = KillOnDropLater(&s);
    let clients = clients_that_sent(port, 5);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    upgrade(&s);
    let_the_backend_accept_and_each_get_its_line(&s, clients);
    let log = s.log_text();
    assert!(
        !log.contains("refused") && !log.contains("pausing all"),
        "{log}"
    );
}

/// A client held for a full backlog keeps its deadline across upgrades:
/// each upgrade started its `start_timeout` again, so upgrades more
/// often than that held it for ever (atk10: 22 s with 6 s). Upgrades
/// go on here, one each 100 ms or so, until the held clients are
/// refused, for 10 s at most: five times their `start_timeout`.
#[test]
fn clients_held_for_a_full_backlog_keep_their_deadline_across_upgrades() {
    if !have("python3") {
        return skip("forward upgrade held deadline", "python3 is not installed");
    }
    let (s, port, _) = slow_unix_backend("start_timeout = \"2s\"\n");
    let _guard = KillOnDropLater(&s);
    let clients = clients_that_sent(port, 3);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    let why = "listen backlog stayed full for 2s";
    let mut upgrades = 0;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !s.log_text().contains(why) && std::time::Instant::now() < until {
        upgrade(&s);
        upgrades += 1;
        // Pacing only: an upgrade takes some 30 ms here.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.log_text().contains(why),
        "held through {upgrades} upgrades\n{}",
        s.log_text()
    );
    for (i, mut c) in clients.into_iter().enumerate().skip(1) {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.is_empty(), "client {i} got {got:?}");
    }
}

/// Clients held for a ready backend's full backlog make the state
/// format 4: an image that reads format 3 (standing for a binary older
/// than the hold, which would neither relay nor refuse them) refuses it
/// and goes back; the running one keeps them and relays them once the
/// backend accepts (atk10: they were orphaned).
#[test]
fn an_upgrade_to_an_image_older_than_the_hold_goes_back_with_the_held_clients() {
    if !have("python3") {
        return skip("forward upgrade format 4", "python3 is not installed");
    }
    let (port, other) = (free_port(), free_port());
    let services = slow_unix_services(port, other, "");
    let dir = TempDir::new("fwdformat4");
    let (s, bin, control) = start_upgradable(dir, &services, Start::default());
    let _guard = KillOnDropLater(&s);
    assert_eq!(
        tcp_port_exchange(port, b"warm\n"),
        "warm\n",
        "{}",
        s.log_text()
    );
    let clients = clients_that_sent(port, 4);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    install_executable(
        &bin,
        format!("#!/bin/sh\nSUMMOND_TEST_READS_FORMAT=3 exec {BIN} \"$@\"\n").as_bytes(),
    );
    let (code, _, err) = upgrade_with(&control);
    assert_eq!(code, 1, "{err}\n{}", s.log_text());
    assert!(
        err.contains("has format 4; this binary reads formats 1 to 3"),
        "{err}"
    );
    assert_eq!(status_json(&control)["pid"], s.pid());
    let_the_backend_accept_and_each_get_its_line(&s, clients);
}
