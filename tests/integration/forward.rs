//! Forward mode with real backends: `python3 -m http.server` (binds its
//! own port) started at the first client, `socat` echoing through
//! `cat`, and nginx reading `forward_proxy_protocol`. Clients are real
//! sockets; bytes are compared whole.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

pub(crate) fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `len` bytes that do not repeat at a short period.
pub(crate) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The pid in the log's "starting the backend (pid N)" line, the `nth`
/// one (from 0).
pub(crate) fn backend_pid(s: &Summond, nth: usize) -> i32 {
    let log = s.log_text();
    let line = log
        .lines()
        .filter(|l| l.contains("starting the backend (pid "))
        .nth(nth)
        .unwrap_or_else(|| panic!("no backend start #{nth}:\n{log}"));
    let rest = line.split("(pid ").nth(1).unwrap();
    rest.split(')').next().unwrap().parse().unwrap()
}

/// `python3 -m http.server` with a listen backlog of 64, not its 5: 20
/// connects at once to a backlog of 5 overflow the kernel's accept queue,
/// and each dropped SYN or handshake ACK waits for the kernel's
/// retransmit (1, 3, 7, 15, 31 s): under load a client then waited past
/// `get`'s 30 s read timeout, a test of the machine, not of summond.
pub(crate) const BACKLOG_64: &str =
    "import runpy, socketserver; socketserver.TCPServer.request_queue_size = 64; \
    runpy.run_module('http.server', run_name='__main__')";

/// http.server serving `{dir}/www` on `backend`, as `exec`.
fn http(backend: u16) -> String {
    format!(
        "[\"python3\", \"-c\", \"{BACKLOG_64}\", \"--bind\", \"127.0.0.1\", \"--directory\", \"{{dir}}/www\", \"{backend}\"]"
    )
}

/// GET `path` over HTTP/1.0; the body, if the whole response came.
fn get(port: u16, path: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(all.split_off(at + 4))
}

pub(crate) fn with_www(file: &[u8]) -> TempDir {
    let dir = TempDir::new("fwd");
    std::fs::create_dir(dir.path("www")).unwrap();
    std::fs::write(dir.path("www/file"), file).unwrap();
    dir
}

/// 20 clients at a cold start are all served by one backend process;
/// idle_stop stops it, and the next client starts it again.
#[test]
fn twenty_clients_at_a_cold_start_share_one_backend_which_stops_when_idle() {
    if !have("python3") {
        return skip("forward cold start", "python3 is not installed");
    }
    let body = pattern(1 << 20, 7);
    let mport = free_port();
    let f = Fwd::start_in(
        with_www(&body),
        &format!("[daemon]\ncontrol = \"{{dir}}/ctl\"\nmetrics = \"tcp://127.0.0.1:{mport}\"\n"),
        "web",
        http,
        "stderr = \"null\"\nidle_stop = \"1s\"",
    );
    let (s, port) = (&f.s, f.port);
    let clients: Vec<_> = (0..20)
        .map(|_| thread::spawn(move || get(port, "/file")))
        .collect();
    for c in clients {
        assert!(
            c.join().unwrap().as_deref() == Some(&body[..]),
            "a client was not served whole:\n{}",
            s.log_text()
        );
    }
    assert_eq!(s.log_count("starting the backend"), 1, "{}", s.log_text());
    let pid = backend_pid(s, 0);
    let ctl = s.dir.path("ctl");
    let (_, table, _) = run_to_exit(&["status", "--control", ctl.to_str().unwrap()]);
    assert!(
        table.contains(&format!("web: backend ready, pid {pid}, ready in ")),
        "{table}"
    );
    assert!(table.contains("0 open, 20 relayed, "), "{table}");
    let page = tcp_exchange(([127, 0, 0, 1], mport), b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        page.contains("summond_backend_state{service=\"web\",state=\"ready\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("summond_relayed_connections_total{service=\"web\"} 20"),
        "{page}"
    );
    let down = "summond_relayed_bytes_total{service=\"web\",direction=\"down\"} ";
    let bytes: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix(down))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 20 * body.len() as u64, "{page}");
    assert!(s.wait_log("idle: stopping it"), "{}", s.log_text());
    assert!(
        wait_until(TIMEOUT, || s.log_count(" stopped (") == 1),
        "{}",
        s.log_text()
    );
    assert_eq!(get(port, "/file").as_deref(), Some(&body[..]));
    assert_eq!(s.log_count("starting the backend"), 2, "{}", s.log_text());
}

/// A forward service under a summond of its own, on ports picked now:
/// the setup these tests share. Dropped, it kills the backends its log
/// names that still run (a failed test must not leave python3 behind),
/// then stops summond.
pub(crate) struct Fwd {
    pub s: Summond,
    pub port: u16,
    pub backend: u16,
    name: String,
    exec: String,
}

impl Fwd {
    /// Service `name` on `port`, running `exec` (a TOML array made from
    /// the backend's port) and forwarding to it, then the `extra` keys.
    pub(crate) fn start(name: &str, exec: impl FnOnce(u16) -> String, extra: &str) -> Fwd {
        Fwd::start_with(name, exec, extra, Summond::start)
    }

    /// The same in `dir`, after the `daemon` lines.
    pub(crate) fn start_in(
        dir: TempDir,
        daemon: &str,
        name: &str,
        exec: impl FnOnce(u16) -> String,
        extra: &str,
    ) -> Fwd {
        Fwd::start_with(name, exec, extra, |config| {
            Summond::start_in(
                dir,
                Start {
                    config: &format!("{daemon}{config}"),
                    ..Start::default()
                },
            )
        })
    }

    fn start_with(
        name: &str,
        exec: impl FnOnce(u16) -> String,
        extra: &str,
        start: impl FnOnce(&str) -> Summond,
    ) -> Fwd {
        let (port, backend) = (free_port(), free_port());
        let exec = exec(backend);
        let config = service(name, port, &exec, backend, extra);
        Fwd {
            s: start(&config),
            port,
            backend,
            name: name.to_string(),
            exec,
        }
    }

    /// The service again with other `extra` keys, for a reload.
    pub(crate) fn config(&self, extra: &str) -> String {
        service(&self.name, self.port, &self.exec, self.backend, extra)
    }
}

impl Drop for Fwd {
    fn drop(&mut self) {
        drop(KillOnDropLater(&self.s));
    }
}

fn service(name: &str, port: u16, exec: &str, backend: u16, extra: &str) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {exec}\n\
         forward = \"tcp://127.0.0.1:{backend}\"\n{extra}\n"
    )
}

/// A TCP echo through `cat` on `backend`, as `exec`. A backlog of 64
/// (socat's own is 5): a burst of clients is not left to SYN retries.
pub(crate) fn echo(backend: u16) -> String {
    format!("[\"socat\", \"TCP-LISTEN:{backend},bind=127.0.0.1,reuseaddr,fork,backlog=64\", \"EXEC:cat\"]")
}

/// Kills the backends the log names when dropped, if still running (a
/// failed test must not leave python3 behind).
pub(crate) struct KillOnDropLater<'a>(pub(crate) &'a Summond);

impl Drop for KillOnDropLater<'_> {
    fn drop(&mut self) {
        for line in self
            .0
            .log_text()
            .lines()
            .filter(|l| l.contains("starting the backend (pid "))
        {
            if let Some(pid) = line
                .split("(pid ")
                .nth(1)
                .and_then(|r| r.split(')').next()?.parse().ok())
            {
                drop(KillOnDrop::new(pid));
            }
        }
    }
}

/// The backend killed while a client downloads: that client's connection
/// is closed (not hung), the log says so, and the next client starts a
/// new backend.
#[test]
fn a_backend_killed_mid_transfer_closes_its_clients_and_the_next_one_restarts_it() {
    if !have("python3") {
        return skip("forward backend killed", "python3 is not installed");
    }
    let body = pattern(64 << 20, 3);
    let f = Fwd::start_in(with_www(&body), "", "web", http, "stderr = \"null\"");
    let (s, port) = (&f.s, f.port);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET /file HTTP/1.0\r\n\r\n").unwrap();
    // Some bytes came: the transfer is under way, held back by us.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = c.read(&mut buf).unwrap();
    assert!(got > 0);
    let pid = backend_pid(s, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the client was not closed: {e}\n{}", s.log_text()),
        }
    }
    assert!(
        got < body.len(),
        "the whole file came through a killed backend"
    );
    assert!(
        s.wait_log("its 1 relayed connections were closed"),
        "{}",
        s.log_text()
    );
    assert!(s.wait_log("relayed 127.0.0.1:"), "{}", s.log_text());
    let small = &body[..1000];
    std::fs::write(s.dir.path("www/small"), small).unwrap();
    assert_eq!(get(port, "/small").as_deref(), Some(small));
    assert_eq!(s.log_count("starting the backend"), 2);
}

/// socat with `cat` behind it echoes: 24 MiB up while reading 24 MiB
/// down, each byte in order, and the client's EOF comes back as EOF.
#[test]
fn large_transfers_both_ways_are_byte_exact_and_eof_is_passed_on() {
    if !have("socat") {
        return skip("forward echo", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let (s, port) = (&f.s, f.port);
    let data = pattern(24 << 20, 9);
    for _ in 0..2 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = c.try_clone().unwrap();
        let up = data.clone();
        let writer = thread::spawn(move || {
            w.write_all(&up).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&c).read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    }
    assert_eq!(s.log_count("starting the backend"), 1);
}

/// A client that asks for a large file and never reads holds its own
/// connection back, no one else's: another client downloads it whole
/// meanwhile.
#[test]
fn a_client_that_never_reads_does_not_slow_another() {
    if !have("python3") {
        return skip("forward slow client", "python3 is not installed");
    }
    let body = pattern(32 << 20, 5);
    let f = Fwd::start_in(with_www(&body), "", "web", http, "stderr = \"null\"");
    let (s, port) = (&f.s, f.port);
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stuck, "GET /file HTTP/1.0\r\n\r\n").unwrap();
    assert!(s.wait_log("relaying 127.0.0.1:"), "{}", s.log_text());
    for _ in 0..3 {
        assert_eq!(
            get(port, "/file").as_deref().map(<[u8]>::len),
            Some(body.len())
        );
    }
    // Still open, still not read: summond holds it without closing it.
    stuck.set_nonblocking(true).unwrap();
    let mut one = [0u8; 1];
    assert!(stuck.peek(&mut one).is_ok_and(|n| n == 1));
}

/// A client's urgent byte (telnet's Synch, FTP's ABOR send one) does not
/// hold back what follows it: a TCP read stops at the urgent mark, short
/// of what is queued behind, and a relay that took a short read for an
/// empty socket waited for an edge that never came (atk8: 0 of 20
/// clients got their bytes after the mark, until they sent again).
#[test]
fn bytes_after_a_clients_urgent_byte_are_relayed_at_once() {
    if !have("socat") {
        return skip("forward urgent data", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let port = f.port;
    assert_eq!(tcp_port_exchange(port, b"warm\n"), "warm\n");
    for round in 0..5 {
        let c = socket2::Socket::from(TcpStream::connect(("127.0.0.1", port)).unwrap());
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.send(b"AAAA").unwrap();
        c.send_out_of_band(b"X").unwrap();
        c.send(b"CCCC").unwrap();
        let mut got = Vec::new();
        let mut buf = [std::mem::MaybeUninit::new(0u8); 16];
        while got.len() < 8 {
            match c.recv(&mut buf) {
                // SAFETY: recv wrote the first n bytes.
                Ok(n) if n > 0 => got.extend(buf[..n].iter().map(|b| unsafe { b.assume_init() })),
                other => panic!("round {round}: {other:?} after {got:?}\n{}", f.s.log_text()),
            }
        }
        assert_eq!(got, b"AAAACCCC", "round {round}");
    }
}

/// A relayed request and its reply cost summond one read each: a short
/// TCP read is taken for an emptied socket, so the read that would say
/// EAGAIN is not made (counted in /proc/PID/io's `syscr`, which every
/// read(2) adds to, EAGAIN or not). The urgent-data test above is the
/// case where a short read is not the end.
#[test]
fn a_relayed_round_trip_costs_one_read_each_way() {
    if !have("socat") {
        return skip("forward reads per message", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let syscr = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", f.s.pid())).unwrap();
        let line = io
            .lines()
            .find(|l| l.starts_with("syscr:"))
            .unwrap()
            .to_owned();
        line[6..].trim().parse::<u64>().unwrap()
    };
    let mut c = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let mut round_trip = |c: &mut TcpStream| {
        c.write_all(&[b'x'; 64]).unwrap();
        c.read_exact(&mut buf).unwrap();
    };
    // The backend started and connected before counting.
    round_trip(&mut c);
    const N: u64 = 500;
    let before = syscr();
    for _ in 0..N {
        round_trip(&mut c);
    }
    let reads = syscr() - before;
    // Two reads per round trip (the request, the reply); four with the
    // read that says EAGAIN after each. A little room for the loop's own.
    assert!(reads < N * 5 / 2, "{reads} reads for {N} round trips");
}

/// Many relayed connections leave nothing open behind them in summond.
#[test]
fn many_relayed_connections_leak_no_fds() {
    if !have("socat") {
        return skip("forward fd leak", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let (s, port) = (&f.s, f.port);
    // (sockets, pipes) open in summond: the relay holds no pipe.
    let fds = || {
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.display().to_string())
            .collect();
        let count = |kind: &str| {
            let of_kind = |l: &&String| l.starts_with(kind) && !is_netlink(l);
            links.iter().filter(of_kind).count()
        };
        (count("socket:"), count("pipe:"))
    };
    assert_eq!(tcp_port_exchange(port, b"warm\n"), "warm\n");
    assert!(wait_until(TIMEOUT, || s.log_count("(0 bytes up")
        + s.log_count("(5 bytes up")
        >= 1));
    let before = fds();
    for i in 0..300 {
        let line = format!("hello {i}\n");
        assert_eq!(tcp_port_exchange(port, line.as_bytes()), line);
    }
    // A hundred more reset by the client instead of closed.
    for _ in 0..100 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        (&c).write_all(b"x").unwrap();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    // No socket left, no pipe made.
    assert!(
        wait_until(TIMEOUT, || fds().0 <= before.0 && fds().1 <= before.1),
        "{:?} (sockets, pipes) open, {before:?} before",
        fds()
    );
}

#[test]
fn forward_config_mistakes_are_named() {
    let (port, backend) = (free_port(), free_port());
    let bad = [
        (format!("listen = \"udp://127.0.0.1:{port}\"\nforward = \"tcp://127.0.0.1:{backend}\""), "relays stream connections"),
        (format!("listen = \"tcp://127.0.0.1:{port}\"\nforward = \"udp://127.0.0.1:{backend}\""), "is a datagram address"),
        (format!("listen = \"tcp://127.0.0.1:{port}\"\nforward = \"tcp://127.0.0.1:{backend}\"\naccept = false"), "must be true with `forward`"),
        (format!("listen = \"tcp://127.0.0.1:{port}\"\nforward = \"tcp://127.0.0.1:{backend}\"\npass = \"listen_fds\""), "has no use with `forward`"),
        (format!("listen = \"tcp://127.0.0.1:{port}\"\nidle_stop = \"1m\""), "`idle_stop`: needs `forward`"),
        (format!("listen = \"tcp://127.0.0.1:{port}\"\nforward = \"tcp://127.0.0.1:{backend}\"\nstart_timeout = \"soon\""), "not a duration"),
    ];
    let dir = TempDir::new("fwdcfg");
    for (keys, expect) in bad {
        let path = dir.path("bad.toml");
        std::fs::write(
            &path,
            format!("[[service]]\nname = \"x\"\nexec = [\"/bin/cat\"]\n{keys}\n"),
        )
        .unwrap();
        let (code, _, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{keys}: {err}");
        assert!(
            err.contains(expect) && err.contains("bad.toml:"),
            "{keys}: wanted {expect:?} in:\n{err}"
        );
    }
}

/// A reload that changes the service: the old backend finishes its open
/// connection, then stops; a client that came meanwhile is served by a
/// new backend (on the same address, so started once the old is gone).
#[test]
fn a_reload_that_changes_the_service_drains_the_old_backend_then_starts_a_new_one() {
    if !have("socat") {
        return skip("forward reload", "socat is not installed");
    }
    drain_after_reload(|_| {});
}

/// The reload test's steps, with `between` (an upgrade) once the new
/// client waits and before the old connection is used again.
pub(crate) fn drain_after_reload(between: impl FnOnce(&Summond)) {
    let tag = |tag: &str| format!("env = {{ TAG = \"{tag}\" }}");
    let f = Fwd::start("echo", echo, &tag("one"));
    let (s, port) = (&f.s, f.port);
    let old = TcpStream::connect(("127.0.0.1", port)).unwrap();
    old.set_read_timeout(Some(TIMEOUT)).unwrap();
    (&old).write_all(b"a\n").unwrap();
    assert_eq!(read_line(&old), "a\n");
    assert!(s.reload(&f.config(&tag("two"))), "{}", s.log_text());
    assert!(
        s.wait_log("finishes its 1 open connections"),
        "{}",
        s.log_text()
    );
    let new = TcpStream::connect(("127.0.0.1", port)).unwrap();
    new.set_read_timeout(Some(TIMEOUT)).unwrap();
    (&new).write_all(b"b\n").unwrap();
    between(s);
    // The old connection still works, on the old backend.
    (&old).write_all(b"c\n").unwrap();
    assert_eq!(read_line(&old), "c\n", "{}", s.log_text());
    assert_eq!(s.log_count("starting the backend"), 1);
    drop(old);
    assert_eq!(read_line(&new), "b\n", "{}", s.log_text());
    assert!(
        s.log_text().contains("retired backend pid"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("starting the backend"), 2, "{}", s.log_text());
}

/// An upgrade hands the backend and its relayed connections over with
/// the bytes in flight: a transfer going on both ways across it arrives
/// whole, and the next client is relayed to the same backend.
#[test]
fn an_upgrade_hands_relayed_connections_over_with_bytes_in_flight() {
    if !have("socat") {
        return skip("forward upgrade", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let (s, port) = (&f.s, f.port);
    let data = pattern(16 << 20, 11);
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut w = c.try_clone().unwrap();
    let up = data.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        // The first half, then wait for the upgrade, then the rest.
        w.write_all(&up[..up.len() / 2]).unwrap();
        rx.recv().unwrap();
        w.write_all(&up[up.len() / 2..]).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    // Some bytes are back: the relay is mid-transfer.
    let mut back = vec![0u8; 4096];
    (&c).read_exact(&mut back).unwrap();
    s.signal(nix::libc::SIGUSR2);
    assert!(
        wait_until(TIMEOUT, || s.log_count(" serving ") == 2),
        "{}",
        s.log_text()
    );
    tx.send(()).unwrap();
    (&c).read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == data,
        "{} bytes back of {}\n{}",
        back.len(),
        data.len(),
        s.log_text()
    );
    assert_eq!(
        tcp_port_exchange(port, b"after\n"),
        "after\n",
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("starting the backend"), 1, "{}", s.log_text());
    assert!(!s.log_text().contains("closing"), "{}", s.log_text());
}

/// `summond wrap --forward`: one program in forward mode without a file.
#[test]
fn wrap_forward_starts_the_program_at_the_first_client_and_relays_to_it() {
    if !have("socat") {
        return skip("wrap --forward", "socat is not installed");
    }
    let (port, backend) = (free_port(), free_port());
    let dir = TempDir::new("wrapfwd");
    let log = std::fs::File::create(dir.path("log")).unwrap();
    let listen = format!("tcp://127.0.0.1:{port}");
    let to = format!("tcp://127.0.0.1:{backend}");
    let socat_listen = format!("TCP-LISTEN:{backend},bind=127.0.0.1,reuseaddr,fork");
    let mut child = std::process::Command::new(BIN)
        .args([
            "wrap",
            "-l",
            &listen,
            "--forward",
            &to,
            "--idle-stop",
            "1m",
            "--",
        ])
        .args(["socat", &socat_listen, "EXEC:cat"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = KillOnDrop::new(child.id() as i32);
    let text = || std::fs::read_to_string(dir.path("log")).unwrap_or_default();
    assert!(
        wait_until(TIMEOUT, || text().contains(" serving ")),
        "{}",
        text()
    );
    assert_eq!(
        tcp_port_exchange(port, b"through\n"),
        "through\n",
        "{}",
        text()
    );
    assert!(
        text().contains("wrap: starting the backend (pid "),
        "{}",
        text()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(wait_until(TIMEOUT, || matches!(
        child.try_wait(),
        Ok(Some(_))
    )));
    // The backend was told to stop with summond.
    assert!(text().contains("SIGTERM to backend pid"), "{}", text());
    let (code, _, err) = run_to_exit(&[
        "wrap",
        "-l",
        &listen,
        "--forward",
        &to,
        "--no-accept",
        "--",
        "cat",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must be true with `forward`"), "{err}");
}

/// A backend that never listens: after start_timeout its waiting client
/// is closed, the backend stopped, and the failed start counted.
#[test]
fn a_backend_never_ready_within_start_timeout_is_stopped_and_its_clients_closed() {
    let f = Fwd::start_in(
        TempDir::new("fwdslow"),
        "[daemon]\ncontrol = \"{dir}/ctl\"\n",
        "slow",
        |_| "[\"sleep\", \"60\"]".into(),
        "start_timeout = \"300ms\"\nstop_timeout = \"1s\"",
    );
    let (s, port) = (&f.s, f.port);
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        (&c).read(&mut buf).unwrap_or(0),
        0,
        "the client was not closed"
    );
    assert!(
        s.wait_log("not ready within start_timeout: stopping it"),
        "{}",
        s.log_text()
    );
    assert!(s.wait_log("closing 127.0.0.1:"), "{}", s.log_text());
    assert!(
        s.wait_log(" stopped (killed by signal 15"),
        "{}",
        s.log_text()
    );
    let ctl = s.dir.path("ctl");
    let (_, json, _) = run_to_exit(&["status", "--control", ctl.to_str().unwrap(), "--json"]);
    assert!(json.contains("\"spawn_failures\":1"), "{json}");
    assert!(json.contains("\"state\":\"stopped\""), "{json}");
}

/// A backend that exits at once: each exit counts toward the restart
/// guard, which holds the service (clients then wait in the backlog)
/// instead of restarting it for ever.
#[test]
fn a_backend_that_keeps_exiting_is_held_by_the_restart_guard() {
    let f = Fwd::start("dies", |_| "[\"false\"]".into(), "");
    let (s, port) = (&f.s, f.port);
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        (&c).read(&mut buf).unwrap_or(0),
        0,
        "the client was not closed"
    );
    assert!(s.wait_log("not restarting it for"), "{}", s.log_text());
    assert!(s.wait_log("held by the restart guard"), "{}", s.log_text());
    assert!(s.log_count("starting the backend") <= 5, "{}", s.log_text());
}

/// `forwarding` to a socat echo backend listening on the Unix socket
/// `path`.
fn unix_echo(name: &str, path: &Path) -> (Summond, u16) {
    let p = path.display();
    let exec = format!("[\"socat\", \"UNIX-LISTEN:{p},fork\", \"EXEC:cat\"]");
    forwarding(name, &exec, &format!("unix://{p}"), "")
}

/// A socat listening on the Unix socket `{dir}/target.sock` (a listener
/// of summond's uid that is not the backend) that writes what it is sent
/// into `{dir}/got`, killed when dropped.
struct Sink {
    child: std::process::Child,
    _kill: KillOnDrop,
    target: std::path::PathBuf,
    dir: TempDir,
}

impl Sink {
    /// Once it listens.
    fn start(dir: TempDir) -> Sink {
        let (target, got) = (dir.path("target.sock"), dir.path("got"));
        let child = std::process::Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", target.display()))
            .arg(format!("CREATE:{}", got.display()))
            .spawn()
            .unwrap();
        let _kill = KillOnDrop::new(child.id() as i32);
        assert!(wait_until(TIMEOUT, || target.exists()));
        Sink {
            child,
            _kill,
            target,
            dir,
        }
    }

    /// Stopped, it was sent nothing.
    fn sent_nothing(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let sent = std::fs::read(self.dir.path("got")).unwrap_or_default();
        assert!(sent.is_empty(), "the link's target was sent {sent:?}");
    }
}

/// summond with service `name` on a port picked now (and that port),
/// running `exec` and forwarding to `forward`, then the `more` keys.
fn forwarding(name: &str, exec: &str, forward: &str, more: &str) -> (Summond, u16) {
    let port = free_port();
    let config = format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\n\
         exec = {exec}\nforward = \"{forward}\"\n{more}"
    );
    (Summond::start(&config), port)
}

/// `forwarding` to a backend that never listens there: its start times
/// out after 1 s.
fn never_ready(name: &str, forward: &str) -> (Summond, u16) {
    let more = "start_timeout = \"1s\"\nstop_timeout = \"1s\"\n";
    forwarding(name, "[\"sh\", \"-c\", \"sleep 60\"]", forward, more)
}

/// `forwarding` to the Python `script` run as summond's uid, its stderr
/// to /dev/null.
fn python_forwarding(name: &str, script: &str, forward: &str) -> (Summond, u16) {
    let exec = format!("[\"/usr/bin/python3\", \"-c\", {}]", toml_str(script));
    forwarding(name, &exec, forward, "stderr = \"null\"\n")
}

/// A client of `port` that sends `bytes`: what came back until the end.
fn sent_to_end(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    got
}

/// A backend on a Unix socket.
#[test]
fn a_backend_on_a_unix_socket_is_relayed_to() {
    if !have("socat") {
        return skip("forward unix", "socat is not installed");
    }
    let dir = TempDir::new("fwdunix");
    let (s, port) = unix_echo("unix", &dir.path("backend.sock"));
    let _guard = KillOnDropLater(&s);
    assert_eq!(
        tcp_port_exchange(port, b"over unix\n"),
        "over unix\n",
        "{}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b"again\n"), "again\n");
    assert_eq!(s.log_count("starting the backend"), 1);
}

/// `ready = "notify"`: the backend listens at once but is ready only when
/// it says READY=1 on its NOTIFY_SOCKET; a READY=1 from a process outside
/// its group is ignored. The backend's own process (the shell, exec'd
/// into python3, which then waits for socat) sends it: a sender that has
/// exited before summond reads its datagram can no longer be placed in a
/// group, so a short-lived sender would be ignored under load.
#[test]
fn a_backend_that_says_ready_late_is_relayed_to_only_then() {
    if !have("socat") || !have("python3") {
        return skip("forward notify", "socat or python3 is not installed");
    }
    let dir = TempDir::new("fwdnotify");
    let flag = dir.path("go");
    let send =
        "import os,socket; a=os.environ['NOTIFY_SOCKET']; a='\\0'+a[1:] if a[0]=='@' else a; \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'STATUS=up\\nREADY=1', a); \
                os.wait()";
    let script = |backend: u16| {
        sh(&format!(
            "socat TCP-LISTEN:{backend},bind=127.0.0.1,reuseaddr,fork EXEC:cat & \
             i=0; while [ ! -e {f} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
             exec python3 -c \"{send}\"",
            f = flag.display()
        ))
    };
    let f = Fwd::start("late", script, "ready = \"notify\"");
    let (s, port) = (&f.s, f.port);
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    (&c).write_all(b"early\n").unwrap();
    assert!(s.wait_log("starting the backend"), "{}", s.log_text());
    let pid = backend_pid(s, 0);
    // A READY=1 from the test itself (not the backend's group).
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let name = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET=@"))
        .expect("NOTIFY_SOCKET");
    let mut abs = vec![0u8];
    abs.extend_from_slice(name);
    let forged = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).unwrap();
    let to = socket2::SockAddr::unix(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&abs),
    )
    .unwrap();
    forged.send_to(b"READY=1", &to).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        (&c).read(&mut buf).is_err(),
        "relayed before the backend said READY=1"
    );
    assert!(!s.log_text().contains("ready after"), "{}", s.log_text());
    std::fs::write(&flag, b"").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(read_line(&c), "early\n", "{}", s.log_text());
    assert!(s.log_text().contains("ready after"), "{}", s.log_text());
}

/// Clients that leave while the backend starts (closed or reset) cost
/// nothing once it is ready: each is relayed, ends, and leaves no fd.
#[test]
fn clients_that_leave_while_the_backend_starts_leave_nothing_behind() {
    if !have("socat") {
        return skip("forward departed clients", "socat is not installed");
    }
    let script = |backend: u16| {
        sh(&format!(
            "sleep 0.5; exec socat TCP-LISTEN:{backend},bind=127.0.0.1,reuseaddr,fork,backlog=1024 EXEC:cat"
        ))
    };
    let f = Fwd::start("slowstart", script, "");
    let (s, port) = (&f.s, f.port);
    let sockets = || {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.display().to_string())
            .filter(|l| l.starts_with("socket:") && !is_netlink(l))
            .count()
    };
    let before = sockets();
    for i in 0..500 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        (&c).write_all(b"bye").unwrap();
        if i % 2 == 0 {
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    assert!(s.wait_log("ready after"), "{}", s.log_text());
    assert_eq!(tcp_port_exchange(port, b"still here\n"), "still here\n");
    assert!(
        wait_until(Duration::from_secs(30), || sockets() <= before),
        "{} sockets open, {before} before",
        sockets()
    );
    assert_eq!(s.log_count("starting the backend"), 1);
}

/// Out of fds when connecting to the backend: one line for the episode
/// (not one per client), the listeners rest, and clients are relayed
/// again once fds are back.
#[test]
fn out_of_fds_for_the_backend_is_one_episode_and_clients_are_served_after() {
    if !have("socat") {
        return skip("forward out of fds", "socat is not installed");
    }
    let f = Fwd::start("echo", echo, "");
    let (s, port) = (&f.s, f.port);
    assert_eq!(tcp_port_exchange(port, b"warm\n"), "warm\n");
    leave_free_fds(s.pid(), 1);
    // Accepted with the one fd left, then no fd for the backend: closed.
    let first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    first.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!((&first).read(&mut buf).unwrap_or(0), 0);
    assert!(s.wait_log("pausing all listeners"), "{}", s.log_text());
    let waiting: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &waiting {
        (&*c).write_all(b"later\n").unwrap();
    }
    set_nofile(s.pid(), 4096);
    for c in &waiting {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert_eq!(read_line(c), "later\n", "{}", s.log_text());
    }
    assert_eq!(s.log_count("pausing all listeners"), 1, "{}", s.log_text());
    // The clients closed meanwhile are debug lines, not a warning each.
    let warned = s
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cannot connect to the backend"))
        .count();
    assert_eq!(warned, 0, "{}", s.log_text());
}

/// A backend whose leader dies leaves nothing of its group behind (here
/// the server its shell started, which would hold the port): the next
/// client starts a new backend that can bind it.
#[test]
fn a_backends_group_is_killed_with_its_leader_so_the_next_one_can_bind() {
    if !have("socat") {
        return skip("forward group", "socat is not installed");
    }
    let script = |backend: u16| {
        sh(&format!(
            "socat TCP-LISTEN:{backend},bind=127.0.0.1,reuseaddr,fork EXEC:cat & wait"
        ))
    };
    let f = Fwd::start("group", script, "");
    let (s, port) = (&f.s, f.port);
    assert_eq!(tcp_port_exchange(port, b"one\n"), "one\n");
    let leader = backend_pid(s, 0);
    let members = children_of(leader);
    assert!(!members.is_empty(), "the shell started no server");
    let _members: Vec<KillOnDrop> = members.iter().map(|p| KillOnDrop::new(*p)).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(TIMEOUT, || members.iter().all(|p| gone(*p))),
        "the backend's server outlived its leader"
    );
    assert_eq!(
        tcp_port_exchange(port, b"two\n"),
        "two\n",
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("starting the backend"), 2);
}

/// `forward_proxy_protocol`: each backend connection starts with a PROXY
/// header naming the client; an echo backend sends it back ahead of the
/// client's own bytes.
#[test]
fn forward_proxy_protocol_sends_the_client_to_the_backend_first() {
    if !have("socat") {
        return skip("forward_proxy_protocol", "socat is not installed");
    }
    for version in ["v1", "v2"] {
        let f = Fwd::start(
            "pp",
            echo,
            &format!("forward_proxy_protocol = \"{version}\""),
        );
        let port = f.port;
        for _ in 0..2 {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let client_port = c.local_addr().unwrap().port();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            (&c).write_all(b"hi\n").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            (&c).read_to_end(&mut back).unwrap();
            assert!(back.ends_with(b"hi\n"), "{back:?}");
            let header = &back[..back.len() - 3];
            if version == "v1" {
                let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n");
                assert_eq!(String::from_utf8_lossy(header), want);
            } else {
                // Signature, v2 PROXY, TCP over IPv4, 12 bytes of addresses.
                assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
                assert_eq!(&header[12..16], &[0x21, 0x11, 0, 12]);
                assert_eq!(&header[16..24], &[127, 0, 0, 1, 127, 0, 0, 1]);
                assert_eq!(u16::from_be_bytes([header[24], header[25]]), client_port);
                assert_eq!(u16::from_be_bytes([header[26], header[27]]), port);
                assert_eq!(header.len(), 28);
            }
        }
    }
}

/// Debian's nginx as the backend, `listen … proxy_protocol`, started at
/// the first client: with `forward_proxy_protocol` v1 and v2 it sees
/// each client's own address and port (`$proxy_protocol_addr`), which
/// it sends back; everything of it (pid, logs, temp paths) in a temp dir.
#[test]
fn nginx_behind_forward_proxy_protocol_sees_the_clients_own_address() {
    let nginx = "/usr/sbin/nginx";
    if !std::path::Path::new(nginx).exists() {
        return skip("forward nginx", "nginx is not installed");
    }
    for version in ["v1", "v2"] {
        let dir = TempDir::new("fwdnginx");
        let d = dir.path("").display().to_string();
        let temps: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {d}/{t};\n"))
            .collect();
        let conf = |backend: u16| {
            format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\naccess_log off;\n{temps}\
             server {{\nlisten 127.0.0.1:{backend} proxy_protocol;\n\
             location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port\\n\"; }}\n}}\n}}\n"
        )
        };
        let exec = |backend: u16| {
            std::fs::write(dir.path("nginx.conf"), conf(backend)).unwrap();
            format!("[\"{nginx}\", \"-e\", \"{d}/error.log\", \"-p\", \"{d}\", \"-c\", \"{d}/nginx.conf\"]")
        };
        let f = Fwd::start(
            "nginx",
            exec,
            &format!("forward_proxy_protocol = \"{version}\""),
        );
        let (s, port) = (&f.s, f.port);
        assert_eq!(s.log_count("starting the backend"), 0);
        for _ in 0..2 {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let client_port = c.local_addr().unwrap().port();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            (&c).write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut back = String::new();
            (&c).read_to_string(&mut back).unwrap();
            let errors = std::fs::read_to_string(dir.path("error.log")).unwrap_or_default();
            assert!(
                back.starts_with("HTTP/1.1 200")
                    && back.ends_with(&format!("\r\n\r\n127.0.0.1:{client_port}\n")),
                "{version}: {back}\n{errors}\n{}",
                s.log_text()
            );
        }
        assert_eq!(s.log_count("starting the backend"), 1, "{}", s.log_text());
    }
}

/// Another local user who binds `forward` before the backend (here it
/// never does) is not taken as the backend: its listener's uid is not
/// the backend's, so the client is never relayed to it, the start times
/// out, and the log names the uid.
#[test]
fn a_forward_port_held_by_another_user_is_not_taken_as_the_backend() {
    if !nobody_or_skip("forward port held by nobody") {
        return;
    }
    let backend = free_port();
    let thief = format!(
        "import socket,sys\n\
         l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1',{backend})); l.listen(16); print('listening', flush=True)\n\
         while True:\n try:\n  c,_=l.accept(); d=c.recv(100)\n  print('got', d, flush=True); c.sendall(b'STOLEN')\n except OSError: pass\n"
    );
    let (mut child, _kill, mut out) = listening_as_nobody(&thief);
    let (s, port) = never_ready("held", &format!("tcp://127.0.0.1:{backend}"));
    let _guard = KillOnDropLater(&s);
    let got = sent_to_end(port, b"Authorization: secret\r\n");
    assert!(
        got.is_empty(),
        "the client reached uid nobody's listener: {got:?}"
    );
    assert!(
        s.wait_log("is held by uid 65534, not the backend's"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.log_count("is held by uid"), 1, "{}", s.log_text());
    assert!(
        s.wait_log("not ready within start_timeout"),
        "{}",
        s.log_text()
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(!rest.contains("got"), "nobody's listener was sent: {rest}");
}

/// A `unix://` forward in a directory others may write (no sticky bit)
/// is a config error at its line.
#[test]
fn a_unix_forward_in_a_world_writable_directory_is_a_config_error() {
    let dir = TempDir::new("fwdwr");
    let open = dir.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let path = dir.path("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[[service]]\nname = \"x\"\nexec = [\"/bin/cat\"]\nlisten = \"tcp://127.0.0.1:{}\"\nforward = \"unix://{}/b.sock\"\n",
            free_port(),
            open.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:5:") && err.contains("is writable by others"),
        "{err}"
    );
}

/// The socket `forward` names is a symbolic link (in a safe directory):
/// not followed, so the client never reaches the link's target; the
/// start times out with one warning.
#[test]
fn a_unix_forward_that_is_a_symlink_is_not_followed() {
    if !have("socat") {
        return skip("forward unix symlink", "socat is not installed");
    }
    let mut sink = Sink::start(TempDir::new("fwdlink"));
    let link = sink.dir.path("backend.sock");
    std::os::unix::fs::symlink(&sink.target, &link).unwrap();
    let (s, port) = never_ready("link", &format!("unix://{}", link.display()));
    let _guard = KillOnDropLater(&s);
    sent_to_end(port, b"for the target\n");
    assert!(s.wait_log("is not a socket"), "{}", s.log_text());
    assert_eq!(s.log_count("is not a socket"), 1, "{}", s.log_text());
    assert!(
        s.wait_log("not ready within start_timeout"),
        "{}",
        s.log_text()
    );
    sink.sent_nothing();
}

/// The socket `forward` names is swapped for a symbolic link to another
/// socket of the same uid after the backend is ready (as another user
/// could in a sticky directory once the backend removed its socket):
/// `SO_PEERCRED` names the same uid, so only the walk at each client's
/// connection keeps the client from the link's target.
#[test]
fn a_unix_forward_swapped_for_a_symlink_after_readiness_is_not_followed() {
    if !have("socat") {
        return skip("forward unix swapped", "socat is not installed");
    }
    let mut sink = Sink::start(TempDir::new("fwdswap"));
    let sock = sink.dir.path("backend.sock");
    let (s, port) = unix_echo("swap", &sock);
    let _guard = KillOnDropLater(&s);
    assert_eq!(
        tcp_port_exchange(port, b"one\n"),
        "one\n",
        "{}",
        s.log_text()
    );
    let link = sink.dir.path("link.new");
    std::os::unix::fs::symlink(&sink.target, &link).unwrap();
    std::fs::rename(&link, &sock).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = c.write_all(b"for the target\n");
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{buf:?}");
    assert!(s.wait_log("is not a socket"), "{}", s.log_text());
    sink.sent_nothing();
}

/// A backend whose server daemonizes (fork, setsid, fork: out of the
/// backend's process group and session) while its shell lives on: its
/// idle stop ends the daemon too, so it does not keep the port, and the
/// next client is served by a new daemon of a new backend.
#[test]
fn a_daemon_a_backend_starts_does_not_outlive_its_stop() {
    if !have("python3") {
        return skip("forward daemonizing backend", "python3 is not installed");
    }
    let daemonize = "import os, sys\n\
                     if os.fork(): sys.exit(0)\n\
                     os.setsid()\n\
                     if os.fork(): os._exit(0)\n";
    let p = PyBackend::start("daemon", daemonize, "&& exec sleep 600", "5s");
    let (s, port) = (&p.f.s, p.f.port);
    let (first, _kill) = p.first_client();
    assert!(s.wait_log("idle: stopping it"), "{}", s.log_text());
    assert!(
        wait_until(TIMEOUT, || gone(first)),
        "the daemon outlived its backend's stop\n{}",
        s.log_text()
    );
    std::fs::remove_file(&p.pidfile).unwrap();
    assert_eq!(
        tcp_port_exchange(port, b"two\n"),
        "two\n",
        "{}",
        s.log_text()
    );
    let second = p.pid().expect("a new daemon served");
    let _kill2 = KillOnDrop::new(second);
    assert_ne!(first, second);
    assert!(
        s.log_text().contains("left backend pid"),
        "{}",
        s.log_text()
    );
}

/// A backend's child that leaves its group once the stop's tree was
/// read (setsid() in its SIGTERM handler, which it otherwise ignores):
/// the SIGKILL at the backend's exit reaches it all the same, its group
/// read again then, long before its `stop_timeout`. Before, the kill
/// looked at the group the stop had read, and it ran on under init,
/// holding the port.
#[test]
fn a_child_leaving_the_group_at_its_sigterm_does_not_outlive_the_stop() {
    if !have("python3") {
        return skip("forward setsid at SIGTERM", "python3 is not installed");
    }
    let setsid_at_term = "import os, signal\n\
                          def term(*_):\n    \
                              try: os.setsid()\n    \
                              except OSError: pass\n\
                          signal.signal(signal.SIGTERM, term)\n";
    // The shell (the leader) dies at SIGTERM; its child lives on.
    let p = PyBackend::start("setsid", setsid_at_term, "& wait", "1h");
    let s = &p.f.s;
    let (pid, _kill) = p.first_client();
    assert!(s.wait_log("stopped ("), "{}", s.log_text());
    assert!(
        wait_until(TIMEOUT, || gone(pid)),
        "pid {pid} left the group at SIGTERM and outlived its backend\n{}",
        s.log_text()
    );
}

/// A backend whose shell runs `python3 FILE {shell}`, FILE holding
/// `prelude` then `py_echo`'s echo; `idle_stop = "200ms"` and
/// `stop_timeout`. The shape of the tests of what a backend's processes
/// do at its stop.
struct PyBackend {
    f: Fwd,
    pidfile: std::path::PathBuf,
    _dir: TempDir,
}

impl PyBackend {
    fn start(name: &str, prelude: &str, shell: &str, stop_timeout: &str) -> PyBackend {
        let dir = TempDir::new("fwdpy");
        let (file, pidfile) = (dir.path("backend.py"), dir.path("backend.pid"));
        let exec = |backend: u16| {
            std::fs::write(&file, py_echo(prelude, backend, Some(&pidfile))).unwrap();
            sh(&format!("python3 {} {shell}", file.display()))
        };
        let extra = format!("idle_stop = \"200ms\"\nstop_timeout = \"{stop_timeout}\"");
        let f = Fwd::start(name, exec, &extra);
        PyBackend {
            f,
            pidfile,
            _dir: dir,
        }
    }

    /// The pid the Python wrote once it listened, if it did.
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile).ok()?.parse().ok()
    }

    /// A first client served, and the Python's pid, killed when the
    /// guard drops.
    fn first_client(&self) -> (i32, KillOnDrop) {
        assert_eq!(tcp_port_exchange(self.f.port, b"one\n"), "one\n");
        let pid = self.pid().expect("the backend's Python wrote its pid");
        (pid, KillOnDrop::new(pid))
    }
}

/// Whether `pid` is gone (or a zombie).
fn gone(pid: i32) -> bool {
    !matches!(proc_state(pid), Some(c) if c != 'Z')
}

/// An echo of one line per connection on `backend` that ignores
/// SIGTERM, as `exec`.
pub(crate) fn stubborn(backend: u16) -> String {
    let py = py_echo(
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n",
        backend,
        None,
    );
    format!("[\"python3\", \"-c\", {}]", toml_str(&py))
}

/// A Python backend: `prelude` (its own lines), then an echo of one
/// read per connection on 127.0.0.1:`backend`, writing its pid to
/// `pidfile` once it listens.
fn py_echo(prelude: &str, backend: u16, pidfile: Option<&std::path::Path>) -> String {
    let pid = pidfile.map_or(String::new(), |p| {
        format!(
            "open({:?}, 'w').write(str(os.getpid()))\n",
            p.display().to_string()
        )
    });
    format!(
        "{prelude}import os, socket\n\
         s = socket.create_server(('127.0.0.1', {backend}))\n\
         {pid}\
         while True:\n    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n"
    )
}

/// At summond's own stop a backend that ignores SIGTERM gets SIGKILL at
/// its stop_timeout, before summond exits: it does not run on, holding
/// its port, unmanaged.
#[test]
fn summonds_stop_kills_a_backend_that_ignores_sigterm_at_its_stop_timeout() {
    if !have("python3") {
        return skip("forward stop", "python3 is not installed");
    }
    let mut f = Fwd::start("stubborn", stubborn, "stop_timeout = \"1s\"");
    assert_eq!(tcp_port_exchange(f.port, b"one\n"), "one\n");
    let pid = backend_pid(&f.s, 0);
    f.s.signal(nix::libc::SIGTERM);
    assert!(
        f.s.wait_exit(TIMEOUT).is_some(),
        "summond did not exit\n{}",
        f.s.log_text()
    );
    assert!(
        gone(pid),
        "the backend outlived summond\n{}",
        f.s.log_text()
    );
    let log = f.s.log_text();
    assert!(
        log.contains("still running after stop_timeout: SIGKILL"),
        "{log}"
    );
    assert!(log.contains(" stopped (killed by signal 9"), "{log}");
}

/// Whether this test can run Python as uid nobody: root, setpriv and
/// /usr/bin/python3 (a pyenv shim under /root is not nobody's to run);
/// if not, the test is skipped, saying so.
fn nobody_or_skip(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() || !have("setpriv") || !have("/usr/bin/python3") {
        skip(test, "needs root, setpriv and /usr/bin/python3");
        return false;
    }
    true
}

/// Python `script` run as uid nobody, its stdout piped; killed when the
/// guard drops.
fn as_nobody(script: &str) -> (std::process::Child, KillOnDrop) {
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kill = KillOnDrop::new(child.id() as i32);
    (child, kill)
}

/// The same, once it said "listening": its stdout after that line.
fn listening_as_nobody(
    script: &str,
) -> (
    std::process::Child,
    KillOnDrop,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let (mut child, kill) = as_nobody(script);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "listening\n");
    (child, kill, out)
}

/// Attack review (atk3): the uid check is made on the readiness probe
/// only. A ready backend whose listener goes away while its leader lives
/// (a restart loop, a dev server's reloader, socat without fork) leaves
/// `forward` free; every later client is connected to whoever binds it,
/// with no check and no warning. Failed before: nobody's listener got
/// the second client's bytes.
#[test]
fn a_ready_backends_port_taken_by_another_user_gets_no_client() {
    let backend = free_port();
    port_taken_by_nobody(
        &format!("tcp://127.0.0.1:{backend}"),
        &format!("socket.create_server(('127.0.0.1', {backend}))"),
    );
}

/// The same through an abstract Unix name, which no directory guards:
/// `SO_PEERCRED` of each client's connection names nobody, not the
/// backend's uid.
#[test]
fn a_ready_backends_abstract_socket_taken_by_another_user_gets_no_client() {
    let name = format!("summond-it-taken-{}", free_port());
    port_taken_by_nobody(
        &format!("unix://@{name}"),
        &format!("socket.socket(socket.AF_UNIX); l.bind('\\0{name}'); l.listen(16)"),
    );
}

/// A backend on `forward` (`listen`: Python making its listener `l`)
/// that serves one client, then closes its listener and runs on; uid
/// nobody then listens there: the next client must not reach it.
fn port_taken_by_nobody(forward: &str, listen: &str) {
    if !nobody_or_skip("ready backend's forward taken") {
        return;
    }
    // One client served, then the listener closed (not at its accept, as
    // socat without fork does: the readiness probe finds it listening).
    // Closed before the echo goes back: the client's echo is the event
    // that says the address is free. Closed after it, nobody's bind could
    // come first under load (EADDRINUSE: no thief, the test failed).
    let oneshot = format!(
        "import socket, time\n\
         l = {listen}\n\
         c, _ = l.accept(); got = b''\n\
         while (d := c.recv(100)): got += d\n\
         l.close(); c.sendall(got); c.close(); time.sleep(60)\n"
    );
    let (s, port) = python_forwarding("oneshot", &oneshot, forward);
    let _guard = KillOnDropLater(&s);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"first").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_eq!(got, b"first", "{}", s.log_text());
    // The backend served its one client and closed its listener: it
    // lives on, its port free. nobody takes it.
    let thief = format!(
        "import socket\n\
         l = {listen}; print('listening', flush=True)\n\
         c,_=l.accept(); c.sendall(b'STOLEN:'+c.recv(100))\n"
    );
    let (mut child, _kill, _out) = listening_as_nobody(&thief);
    let got = sent_to_end(port, b"secret");
    assert!(
        !got.starts_with(b"STOLEN"),
        "the client reached uid nobody's listener: {:?}\n{}",
        String::from_utf8_lossy(&got),
        s.log_text()
    );
    drop(_kill);
    let _ = child.wait();
}

/// atk3: a backend whose listener comes and goes (a reloader, a restart
/// loop: docs/forward.md says such a backend "leaves no port for another
/// user to take its clients") and uid nobody, which binds the port
/// whenever it is free, accepts one connection and closes its listener
/// at once. When nobody's accepted socket fails the connection lookup,
/// `held::owner_uid` falls back to the listener on `forward` *now*: the
/// backend's again, so the client is relayed to nobody's socket. Bounded:
/// 15 s of clients, or the first stolen one.
#[test]
fn a_user_who_accepts_and_lets_go_between_connect_and_lookup_gets_no_client() {
    if !nobody_or_skip("accepts and lets go") {
        return;
    }
    let backend = free_port();
    // Binds, serves for 2 ms, closes, binds again (as summond's uid).
    let reloader = format!(
        "import socket, select, time\n\
         end = time.time() + 60\n\
         while time.time() < end:\n\
         \x20   l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   try: l.bind(('127.0.0.1', {backend})); l.listen(64)\n\
         \x20   except OSError: l.close(); continue\n\
         \x20   t = time.time() + 0.002\n\
         \x20   while time.time() < t:\n\
         \x20       if select.select([l], [], [], 0.001)[0]:\n\
         \x20           c, _ = l.accept(); c.settimeout(0.5)\n\
         \x20           try: c.sendall(b'backend:' + c.recv(100))\n\
         \x20           except OSError: pass\n\
         \x20           c.close()\n\
         \x20   l.close()\n"
    );
    let forward = format!("tcp://127.0.0.1:{backend}");
    let (s, port) = python_forwarding("reloader", &reloader, &forward);
    let _guard = KillOnDropLater(&s);
    let thief = format!(
        "import socket, select, time\n\
         end = time.time() + 20\n\
         while time.time() < end:\n\
         \x20   l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   try: l.bind(('127.0.0.1', {backend})); l.listen(64)\n\
         \x20   except OSError: l.close(); continue\n\
         \x20   if select.select([l], [], [], 0.002)[0]:\n\
         \x20       c, _ = l.accept(); l.close(); c.settimeout(0.3)\n\
         \x20       try: d = c.recv(100)\n\
         \x20       except OSError: d = b''\n\
         \x20       if d: print('STOLEN', d, flush=True); break\n\
         \x20       c.close()\n\
         \x20   else: l.close()\n"
    );
    let (mut child, _kill) = as_nobody(&thief);
    let stolen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (stolen, out) = (stolen.clone(), child.stdout.take().unwrap());
        thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            *stolen.lock().unwrap() = line;
        })
    };
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let mut clients = 0;
    while std::time::Instant::now() < end && stolen.lock().unwrap().is_empty() {
        clients += 1;
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = c.write_all(b"secret");
            let _ = c.read(&mut [0u8; 64]);
        }
    }
    drop(_kill);
    let _ = child.wait();
    let _ = reader.join();
    let stolen = stolen.lock().unwrap().clone();
    assert!(
        stolen.is_empty(),
        "uid nobody got a client's bytes after {clients} clients: {stolen}"
    );
}

/// A backend whose accept queue is full when the first clients connect
/// (backlog 0, the readiness probe's connection in it, nothing accepted
/// for 2 s): the kernel drops their SYNs, so each connect is still in
/// progress when summond would check whose listener it reached. It is
/// checked once connected (at the SYN's retransmit, after the backend
/// made room), not refused; a refusal there turned every client of a
/// busy backend with a full queue away.
#[test]
fn clients_whose_connect_waits_for_a_full_accept_queue_are_served() {
    if !have("python3") {
        return skip("forward full queue", "python3 is not installed");
    }
    let f = Fwd::start(
        "queue",
        |backend| {
            let py = format!(
                "import socket, time\n\
                 s = socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', {backend})); s.listen(0)\n\
                 time.sleep(2); s.listen(64)\n\
                 while True:\n    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n"
            );
            format!("[\"python3\", \"-c\", {}]", toml_str(&py))
        },
        "",
    );
    let port = f.port;
    let clients: Vec<_> = (0..3)
        .map(|i| thread::spawn(move || tcp_port_exchange(port, format!("c{i}\n").as_bytes())))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap(), format!("c{i}\n"), "{}", f.s.log_text());
    }
}

/// A `unix://` backend (python3) with a listen backlog of 0 (room for
/// one connection not yet accepted): it takes its first connection,
/// then accepts no more until `{dir}/go` exists, then echoes each
/// connection's first read and closes it. At `{dir}/quit` (removed) it
/// closes its listener and exits (status 3) 300 ms later, as a daemon's
/// graceful stop does.
const SLOW_UNIX_BACKEND: &str = "import os, socket, time\n\
    p = '{dir}/b.sock'\n\
    try:\n    os.unlink(p)\nexcept OSError:\n    pass\n\
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
    s.bind(p); s.listen(0)\n\
    def serve():\n    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n\
    serve()\n\
    while not os.path.exists('{dir}/go'):\n\
    \x20   if os.path.exists('{dir}/quit'):\n\
    \x20       os.unlink('{dir}/quit'); s.close(); time.sleep(0.3); os._exit(3)\n\
    \x20   time.sleep(0.02)\n\
    while True:\n    serve()\n";

/// The config of `slow_unix_backend`.
fn slow_unix_config(port: u16, other: u16, more: &str) -> String {
    let services = slow_unix_services(port, other, more);
    format!("[daemon]\ncontrol = \"{{dir}}/control\"\n{services}")
}

/// Its services.
pub(crate) fn slow_unix_services(port: u16, other: u16, more: &str) -> String {
    format!(
        "[[service]]\nname = \"busy\"\nlisten = \"tcp://127.0.0.1:{port}\"\n\
         exec = [\"python3\", \"-c\", {}]\nforward = \"unix://{{dir}}/b.sock\"\n\
         stderr = \"null\"\n{more}\n\
         [[service]]\nname = \"other\"\nlisten = \"tcp://127.0.0.1:{other}\"\n\
         exec = [\"/bin/cat\"]\n",
        toml_str(SLOW_UNIX_BACKEND)
    )
}

/// summond with service "busy" forwarding to `SLOW_UNIX_BACKEND` (then
/// the `more` keys), "other" (`cat` per connection) beside it, and the
/// control socket `{dir}/control`; the ports of both, its first client
/// served (the backend's one connection before `go`).
pub(crate) fn slow_unix_backend(more: &str) -> (Summond, u16, u16) {
    let (port, other) = (free_port(), free_port());
    let s = Summond::start(&slow_unix_config(port, other, more));
    assert_eq!(
        tcp_port_exchange(port, b"warm\n"),
        "warm\n",
        "{}",
        s.log_text()
    );
    (s, port, other)
}

/// `n` clients of `port` that each sent "cI\n", I from 0.
pub(crate) fn clients_that_sent(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(format!("c{i}\n").as_bytes()).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c
        })
        .collect()
}

/// The slow backend told to accept (its `go` file): each of `clients`
/// (`clients_that_sent`) gets its own line back.
pub(crate) fn let_the_backend_accept_and_each_get_its_line(s: &Summond, clients: Vec<TcpStream>) {
    std::fs::write(s.dir.path("go"), b"").unwrap();
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        assert_eq!(got, format!("c{i}\n"), "client {i}\n{}", s.log_text());
    }
}

/// Sockets summond has open (not its netlink ones, which come and go).
fn sockets_open(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with("socket:") && !is_netlink(l))
        .count()
}

/// A `unix://` backend whose listen backlog is full makes connect(2)
/// say EAGAIN: that is the backend busy, not summond out of fds. Its
/// clients are held (not dropped) and relayed once it accepts, and no
/// listener is paused meanwhile: another service goes on serving.
/// summond does not spin while it holds them, and keeps no socket after.
/// (Before, each EAGAIN closed its client and paused every listener.)
#[test]
fn clients_of_a_unix_backend_with_a_full_backlog_are_held_until_it_accepts() {
    let test = "clients_of_a_unix_backend_with_a_full_backlog_are_held_until_it_accepts";
    if !have("python3") {
        return skip(test, "python3 is not installed");
    }
    let (s, port, other) = slow_unix_backend("");
    let _guard = KillOnDropLater(&s);
    assert!(wait_until(TIMEOUT, || s.log_text().contains("(5 bytes up")));
    let before = sockets_open(s.pid());
    let clients = clients_that_sent(port, 20);
    // All accepted (none left in the kernel's queue), and two more turns
    // of the loop: each held client met EAGAIN by then.
    let paused = || s.log_text().contains("pausing all listeners");
    assert!(wait_until(TIMEOUT, || accept_queue(port) == Some(0) || paused()));
    assert!(loop_turns(s.pid(), 2));
    assert!(
        !paused(),
        "a busy backend paused every listener:\n{}",
        s.log_text()
    );
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    // The other service serves meanwhile.
    assert_eq!(tcp_port_exchange(other, b"meanwhile\n"), "meanwhile\n");
    // "Never spins" is a rate: this sleep measures CPU while clients are
    // held, it waits for nothing. A busy loop burns ~100 ticks a second.
    let cpu_before = cpu_ticks(s.pid());
    thread::sleep(Duration::from_secs(1));
    let cpu_used = cpu_ticks(s.pid()) - cpu_before;
    eprintln!("summond CPU while holding 19 clients: {cpu_used} ticks in 1 s");
    assert!(cpu_used <= 10, "{cpu_used} ticks in 1 s");
    let_the_backend_accept_and_each_get_its_line(&s, clients);
    let log = s.log_text();
    assert!(!log.contains("pausing all listeners"), "{log}");
    assert!(!log.contains("refused"), "{log}");
    assert!(
        wait_until(TIMEOUT, || sockets_open(s.pid()) <= before),
        "{} sockets open, {before} before\n{}",
        sockets_open(s.pid()),
        s.log_text()
    );
}

/// A client held for a full backlog is held at most `start_timeout`:
/// then it is refused (closed, counted, and logged saying why), and
/// still nothing else is paused.
#[test]
fn a_client_held_for_a_full_backlog_past_start_timeout_is_refused() {
    let test = "a_client_held_for_a_full_backlog_past_start_timeout_is_refused";
    if !have("python3") {
        return skip(test, "python3 is not installed");
    }
    let (s, port, other) = slow_unix_backend("start_timeout = \"1s\"\n");
    let _guard = KillOnDropLater(&s);
    // The first takes the backlog's one place (relayed, never accepted);
    // the others are held, then refused.
    let clients = clients_that_sent(port, 5);
    let why = "(the backend's listen backlog stayed full for 1s, its start_timeout)";
    assert!(s.wait_log(why), "{}", s.log_text());
    for (i, mut c) in clients.into_iter().enumerate().skip(1) {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.is_empty(), "client {i} got {got:?}");
    }
    let control = s.dir.path("control");
    let busy = &status_json(&control)["services"][0];
    assert_eq!(busy["refused"], 4, "{busy}");
    // Served (and summond_connections_total, the same count): the first
    // client and the one relayed into the backlog; the refused ones are
    // not counted served as well (they were: 6 served, 4 refused).
    assert_eq!(busy["served"], 2, "{busy}");
    assert_eq!(tcp_port_exchange(other, b"still\n"), "still\n");
    assert!(
        !s.log_text().contains("pausing all listeners"),
        "{}",
        s.log_text()
    );
}

/// A client's last bytes, followed at once by its reset (a client that
/// closes with bytes of the backend's unread, so its close is a reset),
/// reach the backend as they would without summond: the backend's own
/// read gives them before ECONNRESET. (The relay ended at the event that
/// said error, without reading what was still queued: nearly all lost.)
#[test]
fn bytes_a_client_sent_before_its_reset_reach_the_backend() {
    if !have("socat") || !have("python3") {
        return skip(
            "forward bytes before a reset",
            "socat or python3 is not installed",
        );
    }
    let dir = TempDir::new("fwd_reset");
    let got = dir.path("got");
    let got_s = got.display().to_string();
    let f = Fwd::start(
        "sink",
        |b| {
            format!(
                "[\"socat\", \"TCP-LISTEN:{b},bind=127.0.0.1,reuseaddr,fork,backlog=64\", \"SYSTEM:cat >> {got_s}\"]"
            )
        },
        "",
    );
    const N: usize = 20;
    let client = "import socket, struct, sys, time\n\
                  socks = []\n\
                  for i in range(int(sys.argv[2])):\n\
                  \x20   s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                  \x20   s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
                  \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
                  \x20   socks.append(s)\n\
                  time.sleep(1)\n\
                  for i, s in enumerate(socks):\n\
                  \x20   s.send(b'line %d\\n' % i)\n\
                  \x20   s.close()\n";
    let out = std::process::Command::new("python3")
        .args(["-c", client, &f.port.to_string(), &N.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = || {
        std::fs::read_to_string(&got)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(5), || lines() == N);
    assert_eq!(lines(), N, "{}", f.s.log_text());
}

/// A backend that answers and closes with part of the request unread
/// (an HTTP server's early 413/401: its close is a reset) gets its
/// answer to the client, as it does when the client talks to it
/// directly. (The relay ended at the reset's event without reading the
/// answer still queued in the back socket: most clients got nothing.)
#[test]
fn a_backends_answer_sent_before_its_reset_reaches_the_client() {
    if !have("python3") {
        return skip("forward answer before a reset", "python3 is not installed");
    }
    let script = "import socket, sys, time\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('127.0.0.1', int(sys.argv[1])))\n\
                  s.listen(64)\n\
                  while True:\n\
                  \x20   c, _ = s.accept()\n\
                  \x20   c.recv(5)\n\
                  \x20   time.sleep(0.05)\n\
                  \x20   c.sendall(b'REPLY\\n')\n\
                  \x20   c.close()\n";
    let f = Fwd::start(
        "early",
        |b| format!("[\"python3\", \"-c\", {}, \"{b}\"]", toml_str(script)),
        "",
    );
    let _k = KillOnDropLater(&f.s);
    const N: usize = 10;
    let mut answered = 0;
    for _ in 0..N {
        let mut c = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&[b'x'; 20000]).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        answered += usize::from(got == b"REPLY\n");
    }
    assert_eq!(answered, N, "{}", f.s.log_text());
}

/// Read `c` until it ends or `within`: what came, and whether it ended
/// (EOF, or a reset: a client closed with its bytes unread gets one).
fn read_for(c: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    c.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let ended = match c.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (got, ended)
}

/// A client held for a full backlog is refused at its deadline whatever
/// its backend does meanwhile. A reload that changes the service retires
/// the backend; the one connection relayed to it (in its backlog, never
/// accepted) keeps it running, so the new backend waits for the address:
/// nothing retried the held clients then, and they were held for ever
/// (atk10; once 1024 wait, the service accepts nobody).
#[test]
fn clients_held_for_a_full_backlog_are_refused_at_start_timeout_after_a_reload() {
    let test = "clients_held_for_a_full_backlog_are_refused_at_start_timeout_after_a_reload";
    if !have("python3") {
        return skip(test, "python3 is not installed");
    }
    let (s, port, other) = slow_unix_backend("start_timeout = \"1s\"\n");
    let _guard = KillOnDropLater(&s);
    let clients = clients_that_sent(port, 5);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    let more = "start_timeout = \"1s\"\nenv = { X = \"1\" }\n";
    assert!(s.reload(&slow_unix_config(port, other, more)));
    let t0 = Instant::now();
    for (i, mut c) in clients.into_iter().enumerate().skip(1) {
        let left = Duration::from_secs(4).saturating_sub(t0.elapsed());
        let (got, eof) = read_for(&mut c, left.max(Duration::from_millis(10)));
        assert!(
            eof && got.is_empty(),
            "client {i} still held {:?} after a reload, start_timeout 1s\n{}",
            t0.elapsed(),
            s.log_text()
        );
    }
}

/// A backend that closes its listener before it exits (a graceful stop)
/// leaves its held clients waiting for its next start: the retry's
/// "Connection refused" closed every one of them (a WARN line each), and
/// the next backend got none (atk10).
#[test]
fn clients_held_for_a_full_backlog_wait_for_the_next_start_when_the_backend_exits_gracefully() {
    let test =
        "clients_held_for_a_full_backlog_wait_for_the_next_start_when_the_backend_exits_gracefully";
    if !have("python3") {
        return skip(test, "python3 is not installed");
    }
    let (s, port, _) = slow_unix_backend("start_timeout = \"20s\"\n");
    let _guard = KillOnDropLater(&s);
    let clients = clients_that_sent(port, 6);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    std::fs::write(s.dir.path("quit"), b"").unwrap();
    assert!(s.wait_log("exited with status 3"), "{}", s.log_text());
    std::fs::write(s.dir.path("go"), b"").unwrap();
    // The first was relayed into the old backlog (lost with it); the
    // held ones reach the next backend.
    for (i, mut c) in clients.into_iter().enumerate().skip(1) {
        let (got, _) = read_for(&mut c, Duration::from_secs(10));
        assert_eq!(
            got,
            format!("c{i}\n").into_bytes(),
            "client {i}\n{}",
            s.log_text()
        );
    }
    let log = s.log_text();
    assert!(!log.contains("closing 127.0.0.1"), "{log}");
}

/// Held clients that reset give their places back (`max_instances`,
/// `max_per_source`, the queue's bound) and are not connected to the
/// backend once it makes room: they kept their places until their
/// deadline, and were connected first, ahead of live ones (atk10).
#[test]
fn held_clients_that_reset_give_their_places_back_and_reach_no_backend() {
    let test = "held_clients_that_reset_give_their_places_back_and_reach_no_backend";
    if !have("python3") {
        return skip(test, "python3 is not installed");
    }
    let (s, port, _) = slow_unix_backend("start_timeout = \"30s\"\n");
    let _guard = KillOnDropLater(&s);
    let mut clients = clients_that_sent(port, 6);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    let control = s.dir.path("control");
    let busy = || status_json(&control)["services"][0].clone();
    assert!(wait_until(TIMEOUT, || busy()["active"] == 6), "{}", busy());
    // Four held clients reset behind a live one (the head of the queue,
    // which each retry connects: those behind it are looked at by the
    // retry's sweep); c0 (relayed into the backlog) and c1 are left.
    for c in clients.drain(2..) {
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    assert!(
        wait_until(TIMEOUT, || busy()["active"] == 2),
        "{}\n{}",
        busy(),
        s.log_text()
    );
    std::fs::write(s.dir.path("go"), b"").unwrap();
    assert_eq!(
        tcp_port_exchange(port, b"live\n"),
        "live\n",
        "{}",
        s.log_text()
    );
    let mut got = String::new();
    let _ = clients[1].read_to_string(&mut got);
    assert_eq!(got, "c1\n", "{}", s.log_text());
    // Relayed: the first client, c0, c1 and the live one; none of the
    // four.
    assert_eq!(busy()["backend"]["relayed"], 4, "{}", busy());
}
