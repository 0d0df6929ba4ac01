//! Regression tests for defects found by review, each named after its bug
//! and each failing on the code before its fix: a kept socket renamed by a
//! reload stayed dead, a pass-mode child exiting 0 without reading was
//! restarted in a busy loop, the exec-status pipe could land among the fds
//! handed to the child, counts drifted when a service was removed and
//! re-added under running children, max_children touched every listener,
//! refusals were logged one line per connection, and a connection kept
//! through a back-off skipped the access rules of a reloaded config.

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::*;

/// A udp wait-mode child that answers one datagram, but only once the
/// file `go` exists in the test's directory (bounded: 10 s).
fn gated_udp_answer() -> String {
    toml_str(
        "for (1..200) { last if -e '{dir}/go'; select(undef, undef, undef, 0.05) } \
         my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc($buf), 0, $peer)",
    )
}

fn udp_service(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"udp://127.0.0.1:{port}\"\n\
         exec = [\"perl\", \"-e\", {}]\n{extra}",
        gated_udp_answer()
    )
}

/// Send `payload` from `client` and wait for the answer.
fn ask(client: &UdpSocket, port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    client.send_to(payload, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = client.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// One datagram starts a child that holds the socket; a reload gives the
/// address to `after_reload`; the child answers and exits; the next
/// datagram must be served by whichever service owns the address now.
fn kept_socket_follows_its_new_owner(after_reload: &str) {
    let (port, other) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "{}{}",
        udp_service("a", port, ""),
        udp_service("c", other, "")
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.send_to(b"one", ("127.0.0.1", port)).unwrap();
    assert!(s.wait_log("a: started pid"), "{}", s.log_text());
    assert!(s.reload(
        &after_reload
            .replace("PORT", &port.to_string())
            .replace("OTHER", &other.to_string())
    ));
    std::fs::write(s.dir.path("go"), "").unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).expect("the old child answers");
    assert_eq!(&buf[..n], b"ONE");
    assert!(s.wait_log("a: pid "), "the old child exited");
    assert_eq!(
        ask(&client, port, b"two").as_deref(),
        Some(&b"TWO"[..]),
        "the socket is watched again under its new owner"
    );
}

#[test]
fn a_kept_socket_renamed_by_a_reload_is_watched_again_when_its_child_exits() {
    kept_socket_follows_its_new_owner(&format!(
        "{}{}",
        udp_service("b", 0, "").replace("udp://127.0.0.1:0", "udp://127.0.0.1:PORT"),
        udp_service("c", 0, "").replace("udp://127.0.0.1:0", "udp://127.0.0.1:OTHER")
    ));
}

#[test]
fn a_kept_socket_moved_to_another_service_by_a_reload_is_watched_again_when_its_child_exits() {
    // `a` is gone; `c` keeps its own address and takes a's.
    kept_socket_follows_its_new_owner(&udp_service("c", 0, "").replace(
        "listen = \"udp://127.0.0.1:0\"",
        "listen = [\"udp://127.0.0.1:OTHER\", \"udp://127.0.0.1:PORT\"]",
    ));
}

#[test]
fn a_pass_mode_child_that_exits_0_without_reading_is_held_not_restarted_in_a_busy_loop() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"t\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"true\"]\n"
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"x", ("127.0.0.1", port)).unwrap();
    assert!(
        s.wait_log("t: failed 5 times in 10s; not restarting it for 10s"),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    assert_eq!(log.matches("t: started pid").count(), 5, "{log}");
    assert_eq!(
        log.matches("INFO  t: pid ").count(),
        1,
        "one info line for the episode, not one per child:\n{log}"
    );
    assert!(log.contains("leaving its socket unread"), "{log}");
}

#[test]
fn a_stream_pass_mode_child_that_exits_0_without_accepting_is_held_not_restarted_in_a_busy_loop() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"t\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\nexec = [\"true\"]\n"
    ));
    let _client = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        s.wait_log("t: failed 5 times in 10s; not restarting it for 10s"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("t: started pid"), 5);
}

#[test]
fn tftpd_style_children_that_read_their_datagram_and_exit_0_are_never_held() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"tftp\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
        toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc($buf), 0, $peer)")
    ));
    for i in 0..20 {
        let reply = udp_exchange(port, format!("req{i}").as_bytes());
        assert_eq!(reply, Some(format!("REQ{i}").into_bytes()), "request {i}");
    }
    assert!(wait_until(TIMEOUT, || s.log_count("tftp: pid ") == 20));
    let log = s.log_text();
    assert!(!log.contains("not restarting"), "{log}");
    assert!(!log.contains("unread"), "{log}");
}

/// A client that retransmits the same request (same socket, same bytes)
/// to a tftpd-style service: each child reads one datagram, answers and
/// exits 0, and the next, identical datagram is often queued before the
/// exit is seen. It is a new datagram, not the one left unread: no exit
/// may count toward the restart guard.
#[test]
fn identical_datagrams_answered_one_child_each_never_trip_the_restart_guard() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"same\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
        toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc($buf), 0, $peer)")
    ));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    for i in 0..12 {
        assert_eq!(
            ask(&client, port, b"again").as_deref(),
            Some(&b"AGAIN"[..]),
            "request {i}:\n{}",
            s.log_text()
        );
    }
    assert!(wait_until(TIMEOUT, || s.log_count("same: pid ") == 12));
    let log = s.log_text();
    assert!(!log.contains("unread"), "{log}");
    assert!(!log.contains("not restarting"), "{log}");
}

/// The same, with a child that turns RX timestamps on for the socket it
/// shares with summond (SO_TIMESTAMP 29, SO_TIMESTAMPNS 35, SO_TIMESTAMPING
/// 37 with software generation and reporting), as chronyd/ntpd-style
/// servers do: the kernel then keeps no stamp for SIOCGSTAMPNS, and
/// attaches one to each read instead, peeks included. Every request is
/// answered, and no exit counts toward the restart guard.
#[test]
fn identical_datagrams_to_a_child_that_turns_on_rx_timestamps_never_trip_the_restart_guard() {
    for (option, value) in [(29, 1), (35, 1), (37, 0x18)] {
        let port = free_port();
        let s = Summond::start(&format!(
            "[[service]]\nname = \"ts\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"perl\", \"-e\", {}]\n",
            toml_str(&format!(
                "setsockopt(STDIN, 1, {option}, {value}) or die $!; \
                 my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc($buf), 0, $peer)"
            ))
        ));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        for i in 0..12 {
            assert_eq!(
                ask(&client, port, b"again").as_deref(),
                Some(&b"AGAIN"[..]),
                "option {option}, request {i}:\n{}",
                s.log_text()
            );
        }
        assert!(wait_until(TIMEOUT, || s.log_count("ts: pid ") == 12));
        let log = s.log_text();
        assert!(!log.contains("unread"), "option {option}: {log}");
        assert!(!log.contains("not restarting"), "option {option}: {log}");
    }
}

/// Low fds freed by a reload (the 8 sockets of a removed service) are
/// where pipe2 puts the exec-status pipe; the child's moves to 3..10 must
/// not overwrite it, or the exec failure is reported into a socket and
/// the child dies of SIGPIPE instead.
#[test]
fn the_exec_status_pipe_never_lands_among_the_fds_handed_to_the_child() {
    let dir = TempDir::new("pipefd");
    let prog = dir.path("prog");
    copy_executable(Path::new("/bin/true"), &prog);
    let ports: Vec<u16> = (0..17).map(|_| free_port()).collect();
    let listen = |ps: &[u16]| {
        let v: Vec<String> = ps
            .iter()
            .map(|p| format!("\"tcp://127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", v.join(", "))
    };
    let first = format!(
        "[[service]]\nname = \"x\"\nlisten = {}\naccept = false\npass = \"listen_fds\"\nexec = [\"true\"]\n",
        listen(&ports[..8])
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &first,
            ..Start::default()
        },
    );
    let second = format!(
        "[[service]]\nname = \"z\"\nlisten = {}\naccept = false\npass = \"listen_fds\"\nexec = [{}]\n\
         [[service]]\nname = \"za\"\nlisten = \"tcp://127.0.0.1:{}\"\npass = \"listen_fds\"\nexec = [{}]\n",
        listen(&ports[8..16]),
        toml_str(prog.to_str().unwrap()),
        ports[16],
        toml_str(prog.to_str().unwrap()),
    );
    assert!(s.reload(&second));
    std::fs::remove_file(&prog).unwrap();
    let _c = connect_tcp(([127, 0, 0, 1], ports[8]).into());
    let expected = format!(
        "z: exec {}: No such file or directory (os error 2)",
        prog.display()
    );
    assert!(s.wait_log(&expected), "{}", s.log_text());
    // accept mode with listen_fds: the connection goes to fd 3
    assert!(closed_at_once(ports[16]));
    assert!(
        s.wait_log(&format!("za: exec {} for 127.0.0.1:", prog.display())),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    assert!(!log.contains("SIGPIPE"), "{log}");
}

fn status_active(s: &Summond, name: &str) -> u64 {
    let control = s.dir.path("control.sock");
    let (code, out, err) =
        run_to_exit(&["status", "--control", control.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|svc| svc["name"] == name)
        .map(|svc| svc["active"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no service {name} in {out}"))
}

#[test]
fn a_service_removed_and_readded_while_its_children_run_keeps_its_own_counts() {
    let port = free_port();
    let control = "[daemon]\ncontrol = \"{dir}/control.sock\"\n";
    let service = format!(
        "[[service]]\nname = \"x\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nmax_instances = 1\n",
        sh("echo start; read x")
    );
    let s = Summond::start(&format!("{control}{service}"));
    let mut old = connect_tcp(([127, 0, 0, 1], port).into());
    assert_eq!(read_line(&old), "start\n");
    assert!(s.reload(control), "x removed; its child runs on");
    assert!(s.reload(&format!("{control}{service}")), "x added again");
    // The re-added service has no child of its own yet.
    let mut new = connect_tcp(([127, 0, 0, 1], port).into());
    assert_eq!(read_line(&new), "start\n");
    assert_eq!(status_active(&s, "x"), 1);
    // The old child's exit must not free the new service's only slot.
    old.write_all(b"go\n").unwrap();
    assert!(wait_until(TIMEOUT, || s.children().0.len() == 1));
    let mut third = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        wait_in_backlog(port, 1),
        "max_instances = 1 holds the third client"
    );
    assert_eq!(s.log_count("x: started pid"), 2);
    assert_eq!(status_active(&s, "x"), 1);
    new.write_all(b"go\n").unwrap();
    assert_eq!(read_line(&third), "start\n", "served once the slot frees");
    third.write_all(b"go\n").unwrap();
}

#[test]
fn at_max_children_a_connection_unwatches_only_the_listener_it_came_on() {
    const N: usize = 300;
    let ports: Vec<u16> = (0..N).map(|_| free_port()).collect();
    let mut config = String::from("[daemon]\nmax_children = 1\n");
    for (i, p) in ports.iter().enumerate() {
        config.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"tcp://127.0.0.1:{p}\"\nexec = {}\n",
            sh("echo start; read x")
        ));
    }
    let s = Summond::start(&config);
    let idle = s.epoll_watched();
    assert!(idle > N, "every listener watched: {idle}");
    let mut first = connect_tcp(([127, 0, 0, 1], ports[0]).into());
    assert_eq!(read_line(&first), "start\n");
    let mut waiting = connect_tcp(([127, 0, 0, 1], ports[1]).into());
    assert!(wait_in_backlog(ports[1], 1), "s1 waits for the global slot");
    // At the cap only listeners that had a client were unwatched.
    let at_cap = s.epoll_watched();
    // At least s1's listener left the watch list (a count that did not
    // move would say nothing was unwatched), and no more than the two
    // that had a client; the others are still watched.
    assert!(
        (1..=2).contains(&(idle - at_cap)),
        "{} of {N} listeners unwatched at max_children",
        idle - at_cap
    );
    assert!(
        !epoll_watches_listener(s.pid(), ports[1]),
        "s1's listener, with a client at the cap, is unwatched"
    );
    assert!(
        ports[2..]
            .iter()
            .all(|p| epoll_watches_listener(s.pid(), *p)),
        "listeners without a client stay watched"
    );
    first.write_all(b"go\n").unwrap();
    assert_eq!(read_line(&waiting), "start\n");
    waiting.write_all(b"go\n").unwrap();
    assert!(wait_until(TIMEOUT, || s.children().0.is_empty()));
    assert!(
        wait_until(TIMEOUT, || s.epoll_watched() == idle),
        "all watched again"
    );
}

#[test]
fn a_flood_of_refused_clients_is_summarised_and_other_services_are_served_meanwhile() {
    let (denied, open) = (free_port(), free_port());
    let s = Summond::start_with(Start {
        config: &format!(
            "[[service]]\nname = \"shut\"\nlisten = \"tcp://127.0.0.1:{denied}\"\nexec = [\"cat\"]\ndeny = [\"127.0.0.0/8\"]\n\
             [[service]]\nname = \"open\"\nlisten = \"tcp://127.0.0.1:{open}\"\nexec = [\"cat\"]\n"
        ),
        args: &["--log-level", "info"],
        ..Start::default()
    });
    const CLIENTS: usize = 4;
    const EACH: usize = 300;
    let flood: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    let _ = std::net::TcpStream::connect(("127.0.0.1", denied));
                }
            })
        })
        .collect();
    for i in 0..5 {
        let line = format!("meanwhile {i}\n");
        assert_eq!(tcp_port_exchange(open, line.as_bytes()), line);
    }
    for f in flood {
        f.join().unwrap();
    }
    // The summary is due 10 s (REFUSAL_INTERVAL) after the first
    // refusal: wait that long and the usual bound on top.
    assert!(
        wait_until(TIMEOUT * 2, || s
            .log_text()
            .contains("shut: refused 127.0.0.1 ")),
        "a summary line after the interval:\n{}",
        s.log_text()
    );
    let log = s.log_text();
    let lines = log.matches("shut: refused 127.0.0.1").count();
    assert!(
        lines <= 4,
        "{lines} lines for {} refusals:\n{log}",
        CLIENTS * EACH
    );
    let summarised: usize = log
        .lines()
        .filter(|l| l.contains("more times in the last 10s (deny list)"))
        .filter_map(|l| {
            l.split("refused 127.0.0.1 ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    let first_lines = log.matches("shut: refused 127.0.0.1:").count();
    assert_eq!(
        summarised + first_lines,
        CLIENTS * EACH,
        "every refusal counted:\n{log}"
    );
}

/// fork fails with EAGAIN (summond as nobody under RLIMIT_NPROC, room for
/// two children), so the third client is kept; a reload lowers
/// max_instances to the two running, so the retry at the end of the
/// back-off keeps it again. When a child exits the kept client must be
/// served: nothing else wakes its listener (no other client waits).
#[test]
fn a_connection_kept_past_its_back_off_by_max_instances_is_served_when_a_child_exits() {
    let Some((wrapper, nproc)) = as_nobody_with_room_for(
        "a_connection_kept_past_its_back_off_by_max_instances_is_served_when_a_child_exits",
        2,
    ) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let port = free_port();
    let service = |extra: &str| {
        format!(
            "[[service]]\nname = \"np\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n{extra}",
            sh("echo start; read x; echo done")
        )
    };
    // nobody makes the control socket in the test's directory.
    let dir = TempDir::new("kept-max");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let control = dir.path("control.sock");
    let service = |extra: &str| format!("{}{}", daemon_control(&control), service(extra));
    let s = Summond::start_in(
        dir,
        Start {
            config: &service(""),
            wrapper: &wrapper,
            nproc: Some(nproc),
            ..Start::default()
        },
    );
    let held: Vec<_> = (0..2)
        .map(|_| connect_tcp(([127, 0, 0, 1], port).into()))
        .collect();
    for h in &held {
        assert_eq!(read_line(h), "start\n");
    }
    let kept = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        s.wait_log("np: cannot start a child for 127.0.0.1:"),
        "{}",
        s.log_text()
    );
    assert!(s.reload(&service("max_instances = 2\n")));
    // The back-off ends after the reload: its retry finds max_instances
    // reached and keeps the client.
    let paused = || status_json_of_other_uid(&control)["services"][0]["paused"].clone();
    assert!(
        wait_until(TIMEOUT, || paused().is_null()),
        "{}",
        s.log_text()
    );
    std::io::Write::write_all(&mut &held[0], b"go\n").unwrap();
    assert_eq!(read_line(&held[0]), "done\n");
    assert_eq!(read_line(&kept), "start\n", "{}", s.log_text());
}

/// fork fails with EAGAIN (summond as nobody under RLIMIT_NPROC), so the
/// client is kept; a reload then denies it. The retry must apply the new
/// rules, not start a child for a client the config now refuses.
#[test]
fn a_connection_kept_through_a_back_off_is_admitted_again_after_a_reload() {
    let Some((wrapper, nproc)) = as_nobody_with_room_for(
        "a_connection_kept_through_a_back_off_is_admitted_again_after_a_reload",
        2,
    ) else {
        return;
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let port = free_port();
    let service = |extra: &str| {
        format!(
            "[[service]]\nname = \"np\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n{extra}",
            sh("echo start; read x")
        )
    };
    let s = Summond::start_with(Start {
        config: &service(""),
        wrapper: &wrapper,
        nproc: Some(nproc),
        ..Start::default()
    });
    let held: Vec<_> = (0..2)
        .map(|_| connect_tcp(([127, 0, 0, 1], port).into()))
        .collect();
    for h in &held {
        assert_eq!(read_line(h), "start\n");
    }
    let kept = connect_tcp(([127, 0, 0, 1], port).into());
    let kept_port = kept.local_addr().unwrap().port();
    assert!(
        s.wait_log("np: cannot start a child for 127.0.0.1:"),
        "{}",
        s.log_text()
    );
    assert!(s.reload(&service("deny = [\"127.0.0.1/32\"]\n")));
    assert!(
        s.wait_log(&format!("np: refused 127.0.0.1:{kept_port} (deny list)")),
        "{}",
        s.log_text()
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        std::io::Read::read(&mut &kept, &mut buf).unwrap(),
        0,
        "closed, no child"
    );
    assert_eq!(s.log_count("np: started pid"), 2);
}
