//! Internal services (RFC 862-868) answered in summond's loop without a
//! child: over TCP and UDP, with the loop protection, bounded memory for
//! clients that do not read, and limits and access rules as for any
//! service.

use std::io::{Read, Write};
use std::net::{Shutdown, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::*;

fn internal(name: &str, scheme: &str, port: u16, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}-{scheme}\"\nlisten = \"{scheme}://127.0.0.1:{port}\"\nexec = [\"internal:{name}\"]\n{extra}"
    )
}

fn now_1900() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2_208_988_800
}

#[test]
fn tcp_echo_discard_chargen_daytime_and_time_are_answered_without_a_child() {
    let p: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let s = Summond::start(&format!(
        "{}{}{}{}{}",
        internal("echo", "tcp", p[0], ""),
        internal("discard", "tcp", p[1], ""),
        internal("chargen", "tcp", p[2], ""),
        internal("daytime", "tcp", p[3], ""),
        internal("time", "tcp", p[4], ""),
    ));
    assert_eq!(tcp_port_exchange(p[0], b"ping\npong\n"), "ping\npong\n");
    assert_eq!(tcp_port_exchange(p[1], &[b'x'; 100_000]), "");
    let mut c = connect_tcp(([127, 0, 0, 1], p[2]).into());
    let mut buf = vec![0u8; 74 * 100];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..3], b" !\"");
    assert_eq!(
        &buf[72..77],
        b"\r\n!\"#",
        "lines of 72, each one further on"
    );
    drop(c);
    let day = tcp_port_exchange(p[3], b"");
    assert!(day.ends_with("\r\n") && day.len() == 26, "{day:?}");
    let mut t = connect_tcp(([127, 0, 0, 1], p[4]).into());
    let mut four = Vec::new();
    t.read_to_end(&mut four).unwrap();
    assert_eq!(four.len(), 4);
    let secs = u64::from(u32::from_be_bytes([four[0], four[1], four[2], four[3]]));
    assert!(secs.abs_diff(now_1900()) <= 2, "{secs}");
    assert_eq!(s.log_count("started pid"), 0, "no child for any of them");
    assert!(s.children().0.is_empty());
}

#[test]
fn udp_answers_are_one_bounded_datagram_and_other_internal_ports_are_never_answered() {
    let p: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let s = Summond::start(&format!(
        "{}{}{}{}{}{}",
        internal("echo", "udp", p[0], ""),
        internal("discard", "udp", p[1], ""),
        internal("chargen", "udp", p[2], ""),
        internal("daytime", "udp", p[3], ""),
        internal("time", "udp", p[4], ""),
        internal("echo", "tcp", p[5], ""),
    ));
    assert_eq!(udp_exchange(p[0], b"hello").as_deref(), Some(&b"hello"[..]));
    let big = vec![b'y'; 1400];
    assert_eq!(
        udp_exchange(p[0], &big).map(|r| r.len()),
        Some(512),
        "at most 512 bytes back"
    );
    // chargen: as long as the question (no amplification), at most 512.
    assert_eq!(udp_exchange(p[2], b"").map(|r| r.len()), Some(0));
    let chargen = udp_exchange(p[2], &[b'q'; 100]).unwrap();
    assert_eq!(chargen.len(), 100);
    assert_eq!(&chargen[..3], b" !\"");
    assert_eq!(udp_exchange(p[2], &big).map(|r| r.len()), Some(512));
    let day = String::from_utf8(udp_exchange(p[3], b"").unwrap()).unwrap();
    assert!(day.ends_with("\r\n"), "{day:?}");
    let t = udp_exchange(p[4], b"").unwrap();
    let secs = u64::from(u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
    assert!(secs.abs_diff(now_1900()) <= 2);
    // discard: nothing comes back, once summond has handled the datagram.
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet.send_to(b"x", ("127.0.0.1", p[1])).unwrap();
    assert!(loop_turns(s.pid(), 2));
    assert!(no_datagram_waiting(&quiet));
    // A datagram from the port of an internal service (here the TCP echo's
    // port, free for UDP) is never answered: the classic echo loop.
    let looped = UdpSocket::bind(("127.0.0.1", p[5])).unwrap();
    looped.send_to(b"loop?", ("127.0.0.1", p[0])).unwrap();
    assert!(loop_turns(s.pid(), 2));
    assert!(
        no_datagram_waiting(&looped),
        "no answer to an internal port"
    );
    assert!(
        s.wait_log("ignored a datagram from 127.0.0.1:"),
        "{}",
        s.log_text()
    );
    assert_eq!(udp_exchange(p[0], b"still").as_deref(), Some(&b"still"[..]));
}

/// summond's private memory (heap and the like): what a client's buffers
/// cost. Code pages are left out: summond drops the ones only startup
/// used, and serving maps some of them again.
fn rss_kb(pid: i32) -> u64 {
    proc_status_kb(pid, "RssAnon")
}

#[test]
fn clients_that_never_read_cost_a_fixed_buffer_and_block_nothing() {
    let (chargen, echo) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "{}{}",
        internal("chargen", "tcp", chargen, ""),
        internal("echo", "tcp", echo, ""),
    ));
    let before = rss_kb(s.pid());
    // Stalled readers: chargen fills their windows and waits; echo
    // clients that write without reading stop being read.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(connect_tcp(([127, 0, 0, 1], chargen).into()));
        let mut e = connect_tcp(([127, 0, 0, 1], echo).into());
        e.set_nonblocking(true).unwrap();
        let chunk = [b'z'; 65536];
        for _ in 0..64 {
            if e.write(&chunk).is_err() {
                break;
            }
        }
        stalled.push(e);
    }
    // Everyone else is served meanwhile.
    for i in 0..5 {
        let line = format!("meanwhile {i}\n");
        assert_eq!(tcp_port_exchange(echo, line.as_bytes()), line);
    }
    let after = rss_kb(s.pid());
    eprintln!("RssAnon {before} kB -> {after} kB with 40 stalled internal clients");
    assert!(
        after < before + 2048,
        "RSS grew from {before} to {after} kB"
    );
    for c in &stalled {
        let _ = c.shutdown(Shutdown::Both);
    }
}

#[test]
fn limits_and_access_rules_apply_to_internal_services() {
    let (tcp, udp) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "{}{}",
        internal("discard", "tcp", tcp, "max_instances = 1\n"),
        internal("echo", "udp", udp, "deny = [\"127.0.0.0/8\"]\n"),
    ));
    let first = connect_tcp(([127, 0, 0, 1], tcp).into());
    assert!(wait_until(TIMEOUT, || s.log_count("internal:discard for") == 1));
    let _second = connect_tcp(([127, 0, 0, 1], tcp).into());
    assert!(
        wait_in_backlog(tcp, 1),
        "max_instances = 1 holds the second client"
    );
    drop(first);
    assert!(wait_in_backlog(tcp, 0), "taken once the first is gone");
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet.send_to(b"x", ("127.0.0.1", udp)).unwrap();
    assert!(loop_turns(s.pid(), 2));
    assert!(no_datagram_waiting(&quiet), "denied: no answer");
    assert!(
        s.wait_log("echo-udp: refused 127.0.0.1:"),
        "{}",
        s.log_text()
    );
}

/// A loopback port below 1024, free for UDP and TCP, not handed out
/// before in this run (root only: binding it needs privilege).
fn low_port() -> u16 {
    static USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap();
    // Spread from the process id so parallel runs rarely meet.
    let start = 600 + (std::process::id() % 300) as u16;
    (0..400u16)
        .map(|i| 600 + (start - 600 + i) % 400)
        .find(|p| {
            !used.contains(p)
                && UdpSocket::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
        })
        .inspect(|p| used.push(*p))
        .expect("a free port below 1024")
}

/// Send one UDP datagram to loopback port `to` that claims to come from
/// port `from` (a raw socket; the kernel adds the IP header, a zero UDP
/// checksum means none over IPv4): a spoofed request, as an attacker
/// sends it.
fn spoof_udp(from: u16, to: u16, payload: &[u8]) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
    let mut packet = Vec::with_capacity(8 + payload.len());
    packet.extend_from_slice(&from.to_be_bytes());
    packet.extend_from_slice(&to.to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    let dest: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    raw.send_to(&packet, &SockAddr::from(dest)).unwrap();
}

fn service_status(s: &Summond, name: &str) -> serde_json::Value {
    let st = status_json(&s.dir.path("control.sock"));
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {st}"))
        .clone()
}

fn control(s: &str) -> String {
    format!(
        "{}{s}",
        daemon_control(std::path::Path::new("{dir}/control.sock"))
    )
}

#[test]
fn udp_datagrams_from_ports_below_1024_are_never_answered() {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "udp_datagrams_from_ports_below_1024_are_never_answered",
            "binding a port below 1024 needs root",
        );
    }
    let (echo, chargen, daytime) = (free_port(), free_port(), free_port());
    let s = Summond::start(&control(&format!(
        "{}{}{}",
        internal("echo", "udp", echo, ""),
        internal("chargen", "udp", chargen, ""),
        internal("daytime", "udp", daytime, ""),
    )));
    // What a spoofed request from DNS, NTP or another echo looks like.
    let server = UdpSocket::bind(("127.0.0.1", low_port())).unwrap();
    let port = server.local_addr().unwrap().port();
    for to in [echo, chargen, daytime] {
        server.send_to(b"reflect me", ("127.0.0.1", to)).unwrap();
    }
    let ignored = format!("ignored a datagram from 127.0.0.1:{port}: its port is below 1024");
    assert!(
        wait_until(TIMEOUT, || s.log_count(&ignored) == 3),
        "{}",
        s.log_text()
    );
    // Each service has read past those datagrams: a later one is answered,
    // and nothing came back to the low port.
    assert_eq!(udp_exchange(echo, b"after").as_deref(), Some(&b"after"[..]));
    assert_eq!(udp_exchange(chargen, b"12345").map(|a| a.len()), Some(5));
    assert!(udp_exchange(daytime, b"").is_some());
    server.set_nonblocking(true).unwrap();
    assert_eq!(
        server
            .recv_from(&mut [0u8; 600])
            .map_err(|e| e.kind())
            .err(),
        Some(std::io::ErrorKind::WouldBlock),
        "an answer reached the port below 1024"
    );
    for name in ["echo-udp", "chargen-udp", "daytime-udp"] {
        assert_eq!(service_status(&s, name)["served"], 1, "{name}");
    }
}

#[test]
fn two_summonds_echoes_aimed_at_each_other_do_not_loop() {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "two_summonds_echoes_aimed_at_each_other_do_not_loop",
            "a raw socket and ports below 1024 need root",
        );
    }
    // Two hosts' echo services on their well-known (low) ports; one
    // spoofed datagram "from" the other's echo starts the classic loop.
    let (pa, pb) = (low_port(), low_port());
    let a = Summond::start(&control(&internal("echo", "udp", pa, "")));
    let b = Summond::start(&control(&internal("echo", "udp", pb, "")));
    spoof_udp(pb, pa, b"ping-pong");
    assert!(
        a.wait_log(&format!("ignored a datagram from 127.0.0.1:{pb}")),
        "{}",
        a.log_text()
    );
    // A later datagram is answered by each, and each answered only that.
    assert_eq!(udp_exchange(pa, b"a").as_deref(), Some(&b"a"[..]));
    assert_eq!(udp_exchange(pb, b"b").as_deref(), Some(&b"b"[..]));
    assert_eq!(service_status(&a, "echo-udp")["served"], 1);
    assert_eq!(service_status(&b, "echo-udp")["served"], 1);
    assert_eq!(b.log_count("ignored a datagram"), 0, "nothing reached b");
}

#[test]
fn a_port_that_becomes_an_internal_services_at_a_reload_or_upgrade_is_never_answered() {
    let (echo, added) = (free_port(), free_port());
    let first = control(&internal("echo", "udp", echo, ""));
    let s = Summond::start(&first);
    // `added` is not an internal port yet: answered.
    let from = UdpSocket::bind(("127.0.0.1", added)).unwrap();
    from.set_read_timeout(Some(TIMEOUT)).unwrap();
    let ask = |payload: &[u8]| {
        from.send_to(payload, ("127.0.0.1", echo)).unwrap();
    };
    ask(b"before");
    let mut buf = [0u8; 64];
    let (n, _) = from.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");
    // A reload adds an internal service on `added` (over TCP, so the
    // test keeps the UDP port): from now on its datagrams are ignored.
    assert!(s.reload(&format!("{first}{}", internal("discard", "tcp", added, ""))));
    let ignored =
        format!("ignored a datagram from 127.0.0.1:{added}: its port is one summond listens on");
    ask(b"after reload");
    assert!(
        wait_until(TIMEOUT, || s.log_count(&ignored) == 1),
        "{}",
        s.log_text()
    );
    // The next image computes the set from its config too.
    s.signal(nix::libc::SIGUSR2);
    assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
    ask(b"after upgrade");
    assert!(
        wait_until(TIMEOUT, || s.log_count(&ignored) == 2),
        "{}",
        s.log_text()
    );
    assert_eq!(
        udp_exchange(echo, b"others").as_deref(),
        Some(&b"others"[..])
    );
    from.set_nonblocking(true).unwrap();
    assert!(
        from.recv_from(&mut buf).is_err(),
        "no answer to an internal port"
    );
    // Removed again: answered again.
    assert!(s.reload(&first));
    from.set_nonblocking(false).unwrap();
    ask(b"removed");
    let (n, _) = from.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"removed");
}

fn connect_to(port: u16) -> std::net::TcpStream {
    connect_tcp(([127, 0, 0, 1], port).into())
}

/// `n` clients wait in `port`'s backlog, and still do after summond has
/// answered a status request made after they connected: it has looked at
/// its listeners since, and left them there.
fn still_waiting(s: &Summond, port: u16, n: u32) -> bool {
    wait_in_backlog(port, n) && {
        status_json(&s.dir.path("control.sock"));
        accept_queue(port) == Some(n)
    }
}

fn active(s: &Summond, name: &str) -> u64 {
    service_status(s, name)["active"].as_u64().unwrap()
}

fn internal_clients(s: &Summond) -> u64 {
    status_json(&s.dir.path("control.sock"))["internal_clients"]
        .as_u64()
        .expect("status has internal_clients")
}

#[test]
fn max_instances_holds_an_internal_services_third_client_in_the_backlog_until_one_leaves() {
    let port = free_port();
    let s = Summond::start(&control(&internal(
        "discard",
        "tcp",
        port,
        "max_instances = 2\n",
    )));
    let first = connect_to(port);
    let _second = connect_to(port);
    assert!(wait_until(TIMEOUT, || s.log_count("internal:discard for") == 2));
    let _third = connect_to(port);
    assert!(
        still_waiting(&s, port, 1),
        "max_instances = 2 holds the third"
    );
    assert_eq!(service_status(&s, "discard-tcp")["active"], 2);
    drop(first);
    assert!(wait_in_backlog(port, 0), "taken once one has left");
    assert!(wait_until(TIMEOUT, || s.log_count("internal:discard for") == 3));
    assert_eq!(service_status(&s, "discard-tcp")["active"], 2);
}

#[test]
fn internal_clients_count_toward_max_children_with_the_children() {
    let (discard, cat) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[daemon]\nmax_children = 2\ncontrol = \"{{dir}}/control.sock\"\n{}\
         [[service]]\nname = \"cat\"\nlisten = \"tcp://127.0.0.1:{cat}\"\nexec = [\"/bin/cat\"]\n",
        internal("discard", "tcp", discard, "")
    ));
    let a = connect_to(discard);
    let b = connect_to(discard);
    assert!(wait_until(TIMEOUT, || active(&s, "discard-tcp") == 2));
    // The limit is reached: a child of another service waits, and so
    // does a third internal client.
    let mut c = connect_to(cat);
    let _d = connect_to(discard);
    assert!(
        still_waiting(&s, cat, 1),
        "cat waits for a slot under max_children"
    );
    assert!(
        still_waiting(&s, discard, 1),
        "the third internal client waits too"
    );
    assert_eq!(s.log_count("cat: started pid"), 0);
    drop((a, b));
    c.write_all(b"through\n").unwrap();
    assert_eq!(read_line(&c), "through\n");
    assert!(wait_in_backlog(discard, 0));
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 1));
    assert_eq!(active(&s, "discard-tcp"), 1);
}

#[test]
fn an_idle_internal_client_is_closed_after_idle_timeout_and_a_talking_one_is_not() {
    let port = free_port();
    let config = |timeout: &str| {
        control(&internal(
            "echo",
            "tcp",
            port,
            &format!("idle_timeout = \"{timeout}\"\n"),
        ))
    };
    let s = Summond::start(&config("2s"));
    let mut silent = connect_to(port);
    let mut talker = connect_to(port);
    // The talker speaks more often than the timeout, for longer than it:
    // never closed. The silent one is closed meanwhile.
    let mut silent_closed = false;
    for i in 0..200 {
        let line = format!("line {i}\n");
        talker.write_all(line.as_bytes()).unwrap();
        assert_eq!(read_line(&talker), line, "the talker is still served");
        silent.set_nonblocking(true).unwrap();
        if matches!(silent.read(&mut [0u8; 8]), Ok(0)) {
            silent_closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(silent_closed, "{}", s.log_text());
    assert!(s.log_text().contains("idle for 2.0s"), "{}", s.log_text());
    assert_eq!(internal_clients(&s), 1, "the talker only");
    // Silent now: closed too, and nothing is counted any more.
    talker.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(talker.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 0));
    assert_eq!(service_status(&s, "echo-tcp")["active"], 0);
    // A reload that shortens the timeout applies to open clients.
    assert!(s.reload(&config("1h")));
    let mut waiting = connect_to(port);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 1));
    assert!(s.reload(&config("500ms")));
    waiting.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        waiting.read(&mut [0u8; 8]).unwrap(),
        0,
        "closed at the new timeout"
    );
}

#[test]
fn internal_client_counts_are_kept_across_reload_and_upgrade_and_return_to_zero() {
    let (port, other) = (free_port(), free_port());
    let first = control(&internal("discard", "tcp", port, "max_instances = 3\n"));
    let s = Summond::start(&first);
    let mut clients: Vec<_> = (0..3).map(|_| connect_to(port)).collect();
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 3));
    let _fourth = connect_to(port);
    assert!(still_waiting(&s, port, 1));
    let check = |when: &str| {
        assert_eq!(internal_clients(&s), 3, "{when}");
        assert_eq!(service_status(&s, "discard-tcp")["active"], 3, "{when}");
        assert!(still_waiting(&s, port, 1), "{when}: the fourth still waits");
    };
    assert!(s.reload(&format!("{first}{}", internal("echo", "tcp", other, ""))));
    check("after a reload");
    // An upgrade hands the clients over: still counted, still limiting.
    s.signal(nix::libc::SIGUSR2);
    assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
    check("after an upgrade");
    for c in &mut clients {
        c.write_all(b"still served\n").unwrap();
    }
    clients.pop();
    assert!(
        wait_in_backlog(port, 0),
        "the fourth is taken when one leaves"
    );
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 3));
    drop(clients);
    drop(_fourth);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 0));
    assert_eq!(service_status(&s, "discard-tcp")["active"], 0);
}

#[test]
fn many_idle_internal_clients_under_a_low_nofile_leave_a_cat_service_answering() {
    let (discard, cat) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "{}[[service]]\nname = \"cat\"\nlisten = \"tcp://127.0.0.1:{cat}\"\nexec = [\"/bin/cat\"]\n",
        control(&internal("discard", "tcp", discard, "max_instances = 50\n"))
    ));
    // Room for summond's own fds and the 50 clients, not for the rest.
    let own = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .unwrap()
        .count() as u64;
    set_nofile(s.pid(), own + 70);
    let idle: Vec<_> = (0..200).map(|_| connect_to(discard)).collect();
    assert!(wait_until(TIMEOUT, || active(&s, "discard-tcp") == 50));
    assert!(
        still_waiting(&s, discard, 150),
        "the rest wait in the backlog"
    );
    for i in 0..3 {
        let line = format!("cat {i}\n");
        assert_eq!(tcp_port_exchange(cat, line.as_bytes()), line);
    }
    assert!(
        !s.log_text().contains("pausing all listeners"),
        "{}",
        s.log_text()
    );
    drop(idle);
    assert!(wait_until(TIMEOUT, || active(&s, "discard-tcp") == 0));
}

fn served(s: &Summond, name: &str) -> u64 {
    service_status(s, name)["served"].as_u64().unwrap()
}

/// The two summonds' counts of `name`'s answers, once they have stopped
/// growing: two reads two loop turns of each apart are equal (a live loop
/// moves at least one datagram a turn).
fn settled(a: &Summond, b: &Summond, name: &str) -> Option<(u64, u64)> {
    let mut last = None;
    for _ in 0..200 {
        let now = (served(a, name), served(b, name));
        if last == Some(now) {
            return last;
        }
        last = Some(now);
        if !(loop_turns(a.pid(), 2) && loop_turns(b.pid(), 2)) {
            return None;
        }
    }
    None
}

/// Ask `port`'s echo until it answers: right after a loop spent its
/// budget, a datagram is dropped until a token is back. A dropped ask is
/// answered never (loopback answers before sendto returns), so a short
/// wait per ask is enough.
fn answered_once_the_budget_refills(port: u16, payload: &[u8]) -> bool {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    wait_until(TIMEOUT, || {
        c.send_to(payload, ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        matches!(c.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload)
    })
}

#[test]
fn two_summonds_echoes_on_high_ports_stop_their_loop_by_themselves() {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "two_summonds_echoes_on_high_ports_stop_their_loop_by_themselves",
            "spoofing the other echo's port needs a raw socket (root)",
        );
    }
    // Ports no rule can tell from a client's: only a budget of answers
    // ends the loop, the first time either side has none left. One side
    // has a `rate` (its budget), the other the default.
    let (pa, pb) = (free_port(), free_port());
    let a = Summond::start(&control(&internal("echo", "udp", pa, "rate = \"50/1s\"\n")));
    let b = Summond::start(&control(&internal("echo", "udp", pb, "")));
    for round in ["at start", "after a's upgrade"] {
        let (a0, b0) = (served(&a, "echo-udp"), served(&b, "echo-udp"));
        spoof_udp(pb, pa, b"ping-pong");
        let (a1, b1) = settled(&a, &b, "echo-udp").expect("the loop never stopped");
        eprintln!("{round}: a answered {}, b {}", a1 - a0, b1 - b0);
        // A runaway loop answers hundreds of thousands a second.
        assert!(a1 - a0 >= 1 && a1 - a0 <= 200, "{round}: a {}", a1 - a0);
        assert!(b1 - b0 <= 200, "{round}: b {}", b1 - b0);
        // A client is answered after it, by each, and that is all either
        // answered since: the loop is over, not paused.
        assert!(answered_once_the_budget_refills(pa, b"a"), "{round}");
        assert!(answered_once_the_budget_refills(pb, b"b"), "{round}");
        assert!(loop_turns(a.pid(), 2) && loop_turns(b.pid(), 2));
        assert_eq!(
            (served(&a, "echo-udp"), served(&b, "echo-udp")),
            (a1 + 1, b1 + 1),
            "{round}"
        );
        let spent = a.log_count("over the service's 50/1s answers")
            + b.log_count("over the service's 100/1s answers");
        assert!(spent >= 1, "{round}: {}{}", a.log_text(), b.log_text());
        if round == "at start" {
            a.signal(nix::libc::SIGUSR2);
            assert!(a.wait_log("upgraded in place"), "{}", a.log_text());
        }
    }
    // Logged at info, so an operator sees it without debug.
    assert!(
        a.log_text()
            .lines()
            .chain(b.log_text().lines())
            .any(|l| l.contains(" INFO ") && l.contains("answers")),
        "{}{}",
        a.log_text(),
        b.log_text()
    );
}

#[test]
fn a_datagram_from_any_udp_port_summond_listens_on_is_never_answered_across_reload_and_upgrade() {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "a_datagram_from_any_udp_port_summond_listens_on_is_never_answered_across_reload_and_upgrade",
            "spoofing a service's port needs a raw socket (root)",
        );
    }
    // The sample config's loop: daytime answered a datagram "from" a wait
    // service's UDP port, whose child answered daytime, for ever.
    let (day, wait) = (free_port(), free_port());
    let config = control(&format!(
        "{}[[service]]\nname = \"waiter\"\nlisten = \"udp://127.0.0.1:{wait}\"\nexec = [\"/bin/sleep\", \"60\"]\n",
        internal("daytime", "udp", day, "")
    ));
    let s = Summond::start(&config);
    let ignored =
        format!("ignored a datagram from 127.0.0.1:{wait}: its port is one summond listens on");
    for (n, when) in [
        (1, "at start"),
        (2, "after a reload"),
        (3, "after an upgrade"),
    ] {
        match when {
            "after a reload" => assert!(s.reload(&format!("{config}# again\n"))),
            "after an upgrade" => {
                s.signal(nix::libc::SIGUSR2);
                assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
            }
            _ => {}
        }
        spoof_udp(wait, day, b"time?");
        assert!(
            wait_until(TIMEOUT, || s.log_count(&ignored) == n),
            "{when}: {}",
            s.log_text()
        );
        assert!(loop_turns(s.pid(), 2));
        assert_eq!(
            s.log_count("waiter: started pid"),
            0,
            "{when}: {}",
            s.log_text()
        );
    }
    assert!(udp_exchange(day, b"").is_some(), "a client is answered");
}

/// Run `f` in a thread of its own that has entered process `pid`'s
/// network namespace (setns changes the calling thread only); sockets it
/// makes stay in that namespace.
fn in_netns_of<T: Send>(pid: i32, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
                // SAFETY: setns on an fd this thread owns.
                let rc = unsafe { nix::libc::setns(ns.as_raw_fd(), nix::libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
    })
}

#[test]
fn datagrams_sent_to_a_broadcast_or_multicast_address_are_never_answered() {
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "datagrams_sent_to_a_broadcast_or_multicast_address_are_never_answered",
            "a network namespace of the test's own needs root",
        );
    }
    // A network namespace of summond's own, with loopback and a veth pair
    // whose one end has 10.9.0.1/24 (broadcast 10.9.0.255): what the test
    // sends there never leaves it. summond listens on 0.0.0.0 in it, as a
    // host's echo does, so that broadcasts reach it.
    let port = free_port();
    let setup = "ip link set lo up && ip link add d0 type veth peer name d1 \
                 && ip addr add 10.9.0.1/24 brd + dev d0 && ip link set d0 up \
                 && ip link set d1 up && exec \"$0\" \"$@\"";
    let config = control(&format!(
        "[[service]]\nname = \"echo\"\nlisten = \"udp://0.0.0.0:{port}\"\nexec = [\"internal:echo\"]\n"
    ));
    let s = Summond::start_with(Start {
        config: &config,
        wrapper: &["unshare", "-n", "sh", "-c", setup],
        ..Start::default()
    });
    let to_many: [std::net::Ipv4Addr; 3] = [
        [10, 9, 0, 255].into(),
        [255, 255, 255, 255].into(),
        [224, 0, 0, 1].into(),
    ];
    let (answers, also) = in_netns_of(s.pid(), || {
        let c = UdpSocket::bind("10.9.0.1:40000").unwrap();
        c.set_broadcast(true).unwrap();
        c.set_multicast_loop_v4(true).unwrap();
        let sock = socket2::SockRef::from(&c);
        sock.set_multicast_if_v4(&[10, 9, 0, 1].into()).unwrap();
        for to in to_many {
            c.send_to(format!("to {to}").as_bytes(), (to, port))
                .unwrap();
        }
        // Then one to summond alone: answered, and the only answer.
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.send_to(b"to us", ("10.9.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = c.recv_from(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        (first, no_datagram_waiting(&c))
    });
    assert_eq!(answers, "to us", "a datagram to many was answered first");
    assert!(also, "another answer came");
    let ignored =
        "ignored a datagram from 10.9.0.1:40000: it was sent to a broadcast or multicast address";
    assert!(
        wait_until(TIMEOUT, || s.log_count(ignored) == 3),
        "{}",
        s.log_text()
    );
    assert_eq!(served(&s, "echo"), 1);
}

/// summond's side of the loopback connection whose client is `client`:
/// (tx_queue, rx_queue) from /proc/net/tcp, bytes the kernel holds for it.
fn server_queues(client: &socket2::Socket) -> Option<(u64, u64)> {
    let port = client.local_addr().unwrap().as_socket().unwrap().port();
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let rem_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
        if rem_port != port || *f.get(3)? != "01" {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// The queues once they stopped growing: three reads two loop turns of
/// summond apart are equal.
fn settled_queues(s: &Summond, client: &socket2::Socket) -> (u64, u64) {
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen.push(server_queues(client).expect("summond's side of the connection"));
        if seen.len() >= 3
            && seen[seen.len() - 3..]
                .iter()
                .all(|q| *q == seen[seen.len() - 1])
        {
            return seen[seen.len() - 1];
        }
        assert!(loop_turns(s.pid(), 2));
    }
    panic!("the queues never settled: {:?}", &seen[seen.len() - 5..]);
}

#[test]
fn a_client_that_never_reads_pins_a_bounded_socket_buffer_in_summond() {
    use socket2::{Domain, Socket, Type};
    let (chargen, echo) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "{}{}",
        internal("chargen", "tcp", chargen, ""),
        internal("echo", "tcp", echo, ""),
    ));
    let client = |port: u16| {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        // A small window, soon zero: the client never reads.
        c.set_recv_buffer_size(1024).unwrap();
        c.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        c
    };
    const BOUND: u64 = 64 * 1024;
    let reader = client(chargen);
    let (tx, rx) = settled_queues(&s, &reader);
    eprintln!("chargen, a client that never reads: Send-Q {tx}, Recv-Q {rx}");
    assert!(tx > 0, "chargen wrote");
    assert!(tx + rx < BOUND, "summond's socket holds {tx} + {rx} bytes");
    // echo: the client writes and never reads; summond stops reading
    // when it cannot write, and its socket holds a bounded amount.
    let writer = client(echo);
    writer.set_nonblocking(true).unwrap();
    let chunk = [b'e'; 65536];
    let mut sent = 0usize;
    for _ in 0..2000 {
        match (&writer).write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Full for now: let summond take what it will, then again.
                if !loop_turns(s.pid(), 2) {
                    break;
                }
                if (&writer).write(&chunk).is_err() {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (tx, rx) = settled_queues(&s, &writer);
    eprintln!("echo, a client that writes {sent} bytes and never reads: Send-Q {tx}, Recv-Q {rx}");
    assert!(
        tx + rx < 2 * BOUND,
        "summond's socket holds {tx} + {rx} bytes"
    );
}

#[test]
fn clients_of_an_internal_service_removed_by_a_reload_or_an_upgrade_stay_until_they_leave() {
    let (removed, kept, other) = (free_port(), free_port(), free_port());
    let base = control(&internal("echo", "tcp", kept, ""));
    let with = format!(
        "{base}[[service]]\nname = \"going\"\nlisten = \"tcp://127.0.0.1:{removed}\"\nexec = [\"internal:echo\"]\n"
    );
    let s = Summond::start(&with);
    let mut before_reload = connect_to(removed);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 1));
    assert!(s.reload(&base), "the service is removed by a reload");
    let check = |c: &mut std::net::TcpStream, when: &str| {
        c.write_all(when.as_bytes()).unwrap();
        c.write_all(b"\n").unwrap();
        assert_eq!(read_line(c), format!("{when}\n"), "{when}: still served");
        assert!(holds_connection(s.pid(), c), "{when}");
    };
    check(&mut before_reload, "after the reload");
    assert_eq!(internal_clients(&s), 1, "counted");
    // Added back, a client taken, removed by the new config of an upgrade.
    assert!(s.reload(&with));
    let mut before_upgrade = connect_to(removed);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 2));
    s.write_config(&format!("{base}{}", internal("discard", "tcp", other, "")));
    s.signal(nix::libc::SIGUSR2);
    assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
    check(&mut before_reload, "the first after the upgrade");
    check(&mut before_upgrade, "the second after the upgrade");
    assert_eq!(internal_clients(&s), 2, "both counted");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", removed)).is_err(),
        "its listener is closed"
    );
    drop(before_reload);
    drop(before_upgrade);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 0));
}

/// An internal TCP client handed over by an upgrade got the default 5
/// minute idle timeout in the new image when its service was removed
/// (a reload keeps its own), and every client's idle clock started
/// again, so upgrades more often than the timeout kept a silent client
/// for ever. Both are carried: a silent client is closed after its own
/// timeout however many upgrades come in between.
#[test]
fn an_upgrade_keeps_an_internal_clients_idle_timeout_and_idle_clock() {
    let (kept, going) = (free_port(), free_port());
    let idle = "idle_timeout = \"3s\"\n";
    let base = control(&internal("discard", "tcp", kept, idle));
    let s = Summond::start(&format!("{base}{}", internal("echo", "tcp", going, idle)));
    let silent = connect_to(kept);
    let orphan = connect_to(going);
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 2));
    s.write_config(&base);
    // Upgrades a second apart, each well inside the timeout: the clock
    // of a silent client runs on through them.
    for n in 1..=8 {
        if !holds_connection(s.pid(), &silent) && !holds_connection(s.pid(), &orphan) {
            break;
        }
        s.signal(nix::libc::SIGUSR2);
        assert!(
            wait_until(TIMEOUT, || s.log_count("upgraded in place") == n),
            "{}",
            s.log_text()
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert!(
        wait_until(TIMEOUT, || !holds_connection(s.pid(), &orphan)),
        "the removed service's client lost its 3s timeout:\n{}",
        s.log_text()
    );
    assert!(
        !holds_connection(s.pid(), &silent),
        "the silent client's idle clock started again at each upgrade:\n{}",
        s.log_text()
    );
    assert!(wait_until(TIMEOUT, || internal_clients(&s) == 0));
}

/// An internal UDP service's budget of answers (its `rate`) was full
/// again after an upgrade, while a reload keeps it: a spent budget stays
/// spent across an upgrade too.
#[test]
fn an_upgrade_keeps_an_internal_udp_services_spent_budget_of_answers() {
    let port = free_port();
    let s = Summond::start(&control(&internal(
        "echo",
        "udp",
        port,
        "rate = \"2/1h\"\n",
    )));
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for n in 0..2 {
        client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
        assert_eq!(client.recv(&mut buf).unwrap(), 2, "answer {n}");
    }
    let spent = "over the service's 2/1h answers";
    client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
    assert!(
        wait_until(TIMEOUT, || s.log_count(spent) == 1),
        "{}",
        s.log_text()
    );
    s.signal(nix::libc::SIGUSR2);
    assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
    client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
    assert!(
        wait_until(TIMEOUT, || s.log_count(spent) == 2),
        "the budget was full again after the upgrade:\n{}",
        s.log_text()
    );
    assert!(no_datagram_waiting(&client), "answered over its budget");
}
