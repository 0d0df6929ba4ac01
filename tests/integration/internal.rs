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
    let chargen = udp_exchange(p[2], b"").unwrap();
    assert!(
        !chargen.is_empty() && chargen.len() <= 512,
        "{}",
        chargen.len()
    );
    let day = String::from_utf8(udp_exchange(p[3], b"").unwrap()).unwrap();
    assert!(day.ends_with("\r\n"), "{day:?}");
    let t = udp_exchange(p[4], b"").unwrap();
    let secs = u64::from(u32::from_be_bytes([t[0], t[1], t[2], t[3]]));
    assert!(secs.abs_diff(now_1900()) <= 2);
    // discard: nothing comes back.
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    quiet.send_to(b"x", ("127.0.0.1", p[1])).unwrap();
    assert!(quiet.recv_from(&mut [0u8; 16]).is_err());
    // A datagram from the port of an internal service (here the TCP echo's
    // port, free for UDP) is never answered: the classic echo loop.
    let looped = UdpSocket::bind(("127.0.0.1", p[5])).unwrap();
    looped
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    looped.send_to(b"loop?", ("127.0.0.1", p[0])).unwrap();
    assert!(
        looped.recv_from(&mut [0u8; 16]).is_err(),
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
    quiet
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    quiet.send_to(b"x", ("127.0.0.1", udp)).unwrap();
    assert!(
        quiet.recv_from(&mut [0u8; 16]).is_err(),
        "denied: no answer"
    );
    assert!(
        s.wait_log("echo-udp: refused 127.0.0.1:"),
        "{}",
        s.log_text()
    );
}
