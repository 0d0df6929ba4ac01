//! The four ways a service is started (SPEC table), over TCP, UDP and
//! IPv6, and what the child finds: environment, fds, signal state,
//! process group.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::util::*;

/// A child that describes itself on stdout: `KEY=value` lines.
/// `ls` is external, so the shell's own fd table is listed without the
/// temporary fds a builtin redirect would add.
const REPORT: &str = "echo PID=$$; env; echo FDS-BEGIN; ls /proc/$$/fd; echo FDS-END; \
    for f in 0 1 2 3; do echo FD$f=$(readlink /proc/$$/fd/$f); done; \
    grep -E '^Sig(Ign|Blk)' /proc/$$/status | tr -d ' \\t' | tr ':' '='; \
    echo STAT=$(cat /proc/$$/stat)";

fn fds(report: &str) -> Vec<i32> {
    let start = report.find("FDS-BEGIN\n").expect("fd list") + "FDS-BEGIN\n".len();
    let end = report.find("FDS-END").expect("fd list end");
    let mut v: Vec<i32> = report[start..end]
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    v.sort();
    v
}

/// (pid, pgrp, session) from /proc/PID/stat fields 1, 5, 6.
fn ids(report: &str) -> (i32, i32, i32) {
    let stat = field(report, "STAT").expect("stat line");
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let pid = field(report, "PID").unwrap().parse().unwrap();
    (pid, f[2].parse().unwrap(), f[3].parse().unwrap())
}

#[test]
fn accept_stdio_echoes_each_connection_over_tcp() {
    let port = free_port();
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
    ));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                (
                    i,
                    tcp_port_exchange(port, format!("hello {i}\n").as_bytes()),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, got) = h.join().unwrap();
        assert_eq!(got, format!("hello {i}\n"));
    }
}

#[test]
fn accept_stdio_child_gets_connection_env_clean_fds_and_default_signals() {
    let port = free_port();
    let s = Summond::start_with(Start {
        config: &format!(
            "[[service]]\nname = \"report\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nenv = {{ GREETING = \"hi there\" }}\n",
            sh(REPORT)
        ),
        // activation variables summond was started with must not leak
        env: &[
            ("LISTEN_FDS", "7"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "x"),
            ("NOTIFY_SOCKET", "/run/nowhere"),
            ("WATCHDOG_USEC", "100"),
            ("REMOTE_ADDR", "6.6.6.6"),
        ],
        ..Start::default()
    });
    let mut conn = connect_tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    let my_port = conn.local_addr().unwrap().port();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut conn, &mut out).unwrap();

    assert_eq!(field(&out, "REMOTE_ADDR"), Some("127.0.0.1"), "{out}");
    assert_eq!(
        field(&out, "REMOTE_PORT"),
        Some(my_port.to_string().as_str())
    );
    assert_eq!(field(&out, "PROTO"), Some("TCP"));
    assert_eq!(field(&out, "TCPREMOTEIP"), Some("127.0.0.1"));
    assert_eq!(
        field(&out, "TCPREMOTEPORT"),
        Some(my_port.to_string().as_str())
    );
    assert_eq!(field(&out, "TCPLOCALIP"), Some("127.0.0.1"));
    assert_eq!(field(&out, "TCPLOCALPORT"), Some(port.to_string().as_str()));
    assert_eq!(field(&out, "GREETING"), Some("hi there"));
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        assert_eq!(
            field(&out, var),
            None,
            "{var} leaked into the child:\n{out}"
        );
    }
    assert_eq!(fds(&out), vec![0, 1, 2], "{out}");
    let fd0 = field(&out, "FD0").unwrap();
    assert!(fd0.starts_with("socket:"), "{out}");
    assert_eq!(field(&out, "FD1"), Some(fd0));
    assert_eq!(
        field(&out, "FD2"),
        Some(s.log.to_str().unwrap()),
        "stderr = inherit"
    );
    assert_eq!(
        field(&out, "SigIgn"),
        Some("0000000000000000"),
        "SIGPIPE must not stay ignored"
    );
    assert_eq!(field(&out, "SigBlk"), Some("0000000000000000"));
    let (pid, pgrp, session) = ids(&out);
    assert_eq!(pgrp, pid, "own process group");
    assert_eq!(session, pid, "own session");
}

#[test]
fn accept_listen_fds_hands_the_connection_over_as_fd3() {
    let (p_inherit, p_null) = (free_port(), free_port());
    // With stderr = "inherit" the child's fd 1 is summond's stderr, so the
    // fd listing goes to summond's log with no redirection (a redirected
    // command makes dash keep a saved copy of the fd, which would show up).
    let inherit = "echo LFD-BEGIN; ls /proc/$$/fd; echo LFD-END; \
        for f in 0 1 2; do echo FD$f=$(readlink /proc/$$/fd/$f) >&3; done; env >&3; echo PID=$$ >&3";
    let null = "for f in 0 1 2; do echo FD$f=$(readlink /proc/$$/fd/$f) >&3; done";
    let s = Summond::start(&format!(
        "[[service]]\nname = \"lfd\"\nlisten = \"tcp://127.0.0.1:{p_inherit}\"\nexec = {}\npass = \"listen_fds\"\n\
         [[service]]\nname = \"lfdnull\"\nlisten = \"tcp://127.0.0.1:{p_null}\"\nexec = {}\npass = \"listen_fds\"\nstderr = \"null\"\n",
        sh(inherit),
        sh(null)
    ));
    let out = tcp_port_exchange(p_inherit, b"");
    assert!(s.wait_log("LFD-END"));
    let log = s.log_text();
    let listing = &log[log.find("LFD-BEGIN").unwrap()..log.find("LFD-END").unwrap()];
    let listed: HashSet<i32> = listing
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(listed, HashSet::from([0, 1, 2, 3]), "{listing}");
    let log_path = s.log.to_str().unwrap();
    assert_eq!(field(&out, "FD0"), Some("/dev/null"), "{out}");
    assert_eq!(
        field(&out, "FD1"),
        Some(log_path),
        "fd 1 follows stderr = inherit"
    );
    assert_eq!(field(&out, "FD2"), Some(log_path));
    assert_eq!(field(&out, "LISTEN_FDS"), Some("1"));
    assert_eq!(field(&out, "LISTEN_FDNAMES"), Some("connection"));
    assert_eq!(
        field(&out, "LISTEN_PID"),
        field(&out, "PID"),
        "LISTEN_PID is the child's own pid"
    );
    assert_eq!(field(&out, "REMOTE_ADDR"), Some("127.0.0.1"));

    let out = tcp_port_exchange(p_null, b"");
    assert_eq!(field(&out, "FD0"), Some("/dev/null"), "{out}");
    assert_eq!(
        field(&out, "FD1"),
        Some("/dev/null"),
        "fd 1 follows stderr = null"
    );
    assert_eq!(field(&out, "FD2"), Some("/dev/null"));
}

#[test]
fn pass_listen_fds_starts_one_daemon_that_serves_every_client_on_every_socket() {
    let port = free_port();
    let dir = TempDir::new("lfd");
    let sock = dir.path("hello.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"hello\"\nlisten = [\"tcp://127.0.0.1:{port}\", {{ address = \"unix://{}\", name = \"local\" }}]\nexec = [{}]\naccept = false\npass = \"listen_fds\"\n",
                sock.display(),
                toml_str(example("hello_listenfd").to_str().unwrap())
            ),
            ..Start::default()
        },
    );
    let a = tcp_port_exchange(port, b"");
    let b = unix_exchange(&sock, b"");
    let c = tcp_port_exchange(port, b"");
    let pid = |line: &str| line.split_whitespace().nth(3).map(str::to_string);
    assert!(
        a.starts_with("hello from pid ") && a.contains(" on hello, "),
        "{a}"
    );
    assert!(b.contains(" on local, "), "the unix socket's name: {b}");
    assert_eq!(pid(&a), pid(&b));
    assert_eq!(pid(&a), pid(&c), "one daemon serves all clients");
    assert!(c.ends_with("client 3\n"), "{c}");
    assert_eq!(
        s.log_text().matches("hello: started pid").count(),
        1,
        "{}",
        s.log_text()
    );
}

#[test]
fn pass_stdio_tcp_wait_mode_gives_the_listening_socket_to_each_child_in_turn() {
    let port = free_port();
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"wait\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\nexec = [\"perl\", \"-e\", {}]\n",
        toml_str("accept(my $c, STDIN) or die \"accept: $!\"; print $c \"pid $$\\n\"; close $c")
    ));
    let first = tcp_port_exchange(port, b"");
    assert!(first.starts_with("pid "), "{first}");
    // the socket is watched again once the first child has exited;
    // otherwise this client would wait in the backlog until the timeout
    let second = tcp_port_exchange(port, b"");
    assert!(
        second.starts_with("pid ") && second != first,
        "{first} / {second}"
    );
}

#[test]
fn udp_wait_mode_serves_two_exchanges_in_a_row() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"up\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
        toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc($buf) . \" $$\", 0, $peer)")
    ));
    let one = String::from_utf8(udp_exchange(port, b"first").expect("first reply")).unwrap();
    assert!(one.starts_with("FIRST "), "{one}");
    let two = String::from_utf8(udp_exchange(port, b"second").expect("second reply")).unwrap();
    assert!(two.starts_with("SECOND "), "{two}");
    assert_ne!(
        one.split(' ').nth(1),
        two.split(' ').nth(1),
        "a new child per datagram burst"
    );
    assert!(s.wait_log("up: pid "));
}

#[test]
fn ipv6_loopback_service_sees_an_ipv6_peer() {
    if !ipv6_available() {
        skip(
            "ipv6_loopback_service_sees_an_ipv6_peer",
            "no ::1 on this machine",
        );
        return;
    }
    let port = free_port();
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"v6\"\nlisten = \"tcp://[::1]:{port}\"\nexec = {}\n",
        sh("echo REMOTE_ADDR=$REMOTE_ADDR; echo TCPLOCALIP=$TCPLOCALIP")
    ));
    let out = tcp_exchange(
        "[::1]:0"
            .parse::<SocketAddr>()
            .map(|mut a| {
                a.set_port(port);
                a
            })
            .unwrap(),
        b"",
    );
    assert_eq!(field(&out, "REMOTE_ADDR"), Some("::1"), "{out}");
    assert_eq!(field(&out, "TCPLOCALIP"), Some("::1"));
}

#[test]
fn stderr_socket_sends_the_childs_errors_to_the_client_and_null_discards_them() {
    let (p1, p2) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[[service]]\nname = \"loud\"\nlisten = \"tcp://127.0.0.1:{p1}\"\nexec = {}\nstderr = \"socket\"\n\
         [[service]]\nname = \"quiet\"\nlisten = \"tcp://127.0.0.1:{p2}\"\nexec = {}\nstderr = \"null\"\n",
        sh("echo out; echo err-loud >&2"),
        sh("echo FD2=$(readlink /proc/$$/fd/2); echo err-quiet >&2")
    ));
    assert_eq!(tcp_port_exchange(p1, b""), "out\nerr-loud\n");
    let quiet = tcp_port_exchange(p2, b"");
    assert_eq!(field(&quiet, "FD2"), Some("/dev/null"));
    assert!(!s.log_text().contains("err-quiet"));
    assert!(!s.log_text().contains("err-loud"));
}

#[test]
fn inherited_stderr_reaches_summonds_log() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"inh\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n",
        sh("echo to-summond-stderr >&2; echo ok")
    ));
    assert_eq!(tcp_port_exchange(port, b""), "ok\n");
    assert!(s.wait_log("to-summond-stderr"));
}

/// conf/examples/dbus.toml's way: the real dbus-daemon started on demand,
/// taking its listening socket with --address=systemd: (LISTEN_FDS), and
/// the real dbus-send talking to it.
#[test]
fn dbus_daemon_started_on_demand_answers_dbus_send() {
    if !std::path::Path::new("/usr/bin/dbus-daemon").exists()
        || !std::path::Path::new("/usr/bin/dbus-send").exists()
    {
        skip(
            "dbus_daemon_started_on_demand_answers_dbus_send",
            "dbus-daemon and dbus-send are not installed",
        );
        return;
    }
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples/dbus.toml"),
    )
    .unwrap();
    let s = Summond::start(&example.replace("/run/user/1000/bus", "{dir}/bus"));
    let bus = format!("unix:path={}", s.dir.path("bus").display());
    let (ok, reply) = dbus_call(&bus, "ListNames");
    assert!(
        ok && reply.contains("\"org.freedesktop.DBus\""),
        "{reply}\n{}",
        s.log_text()
    );
    // The reply can come before summond has logged the start.
    assert!(s.wait_log("dbus-kiosk: started pid"), "{}", s.log_text());
}

#[test]
fn a_wait_child_gets_the_listening_socket_itself_and_summond_holds_no_more_fds_per_child() {
    // summond keeps listeners above its fd base and lends a pass-mode
    // child a copy made below it, once per socket; the child must still
    // find the very socket summond listens on, summond's fds must not grow
    // with the children, and a reload that removes the service closes the
    // socket and its copy.
    let port = free_port();
    let config = |with: bool| {
        let mut c = format!(
            "[[service]]\nname = \"other\"\nlisten = \"tcp://127.0.0.1:{}\"\nexec = [\"cat\"]\n",
            free_port()
        );
        if with {
            c += &format!(
                "[[service]]\nname = \"inode\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
                toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, readlink(\"/proc/$$/fd/0\"), 0, $peer)")
            );
        }
        c
    };
    let s = Summond::start(&config(true));
    let summond_fds = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .expect("summond's fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let got = String::from_utf8(udp_exchange(port, b"x").expect("first reply")).unwrap();
    // Counted with no child running: each holds a NOTIFY_SOCKET of
    // summond's while it runs.
    assert!(wait_until(TIMEOUT, || s.children().0.is_empty()));
    let before = summond_fds();
    assert!(got.starts_with("socket:["), "{got}");
    assert!(
        before.contains(&got),
        "the child's fd 0 ({got}) is a socket summond holds: {before:?}"
    );
    // With an fd base (a soft limit of 128 or more), the listener and its
    // one copy below the base.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", s.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0);
    let held = before.iter().filter(|t| **t == got).count();
    assert_eq!(held, if soft >= 128 { 2 } else { 1 }, "{before:?}");
    for i in 0..20 {
        let again = String::from_utf8(udp_exchange(port, b"x").expect("reply")).unwrap();
        assert_eq!(again, got, "exchange {i}: the same listener each time");
    }
    assert!(
        wait_until(TIMEOUT, || summond_fds() == before),
        "summond's fds after 20 children: {:?}, before: {before:?}",
        summond_fds()
    );
    assert!(s.reload(&config(false)));
    assert!(
        wait_until(TIMEOUT, || !summond_fds().contains(&got)),
        "removed, the socket is closed with every copy: {:?}",
        summond_fds()
    );
}

#[test]
fn a_burst_of_datagrams_to_a_wait_service_is_served_one_child_each_and_the_socket_watched_after() {
    // Datagrams queued while a child runs are served as the child exits
    // (summond starts the next child at once, without watching the socket
    // in between); once the queue is empty the socket is watched again.
    let port = free_port();
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"burst\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
        toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); select(undef, undef, undef, 0.05); send(STDOUT, \"$buf $$\", 0, $peer)")
    ));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    for i in 0..10 {
        sock.send_to(format!("d{i}").as_bytes(), ("127.0.0.1", port))
            .unwrap();
    }
    let mut replies = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..10 {
        let n = sock.recv(&mut buf).expect("a reply to every datagram");
        replies.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let order: Vec<&str> = replies
        .iter()
        .map(|r| r.split(' ').next().unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    assert_eq!(order, expected, "in the order sent: {replies:?}");
    let pids: HashSet<&str> = replies
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(pids.len(), 10, "one child each: {replies:?}");
    let later = String::from_utf8(udp_exchange(port, b"later").expect("watched again")).unwrap();
    assert!(later.starts_with("later "), "{later}");
}
