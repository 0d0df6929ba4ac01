//! Life under systemd. `Type=notify`: a real datagram socket in systemd's
//! place, checking the
//! messages' order and timing: READY=1 once every socket is bound,
//! watchdog pings at half WATCHDOG_USEC from the loop, RELOADING=1 with
//! MONOTONIC_USEC then READY=1 around a reload, STOPPING=1 at stop; an
//! abstract `@name` socket; garbage in the variables is reported and
//! ignored. Handed sockets: the real systemd-socket-activate passes them
//! and summond adopts them. The shipped unit passes systemd-analyze.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::util::*;

fn recv(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One message and when the kernel queued it on the socket (its
/// SO_TIMESTAMPNS, which the caller turned on).
fn recv_stamped(sock: &UnixDatagram) -> Option<(String, Duration)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 512];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let (n, at) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .ok()?;
        let at = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(t) => Some(Duration::from(t)),
            _ => None,
        })?;
        (msg.bytes, at)
    };
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), at))
}

/// The next message that is not a watchdog ping.
fn next_event(sock: &UnixDatagram) -> Option<String> {
    loop {
        let m = recv(sock)?;
        if m != "WATCHDOG=1" && !m.starts_with("WATCHDOG=1\n") {
            return Some(m);
        }
    }
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

#[test]
fn ready_watchdog_reloading_and_stopping_arrive_in_order_and_on_time() {
    let dir = TempDir::new("notify");
    let path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = free_port();
    let mut s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
            ),
            env: &[
                ("NOTIFY_SOCKET", path.to_str().unwrap()),
                ("WATCHDOG_USEC", "200000"),
            ],
            ..Start::default()
        },
    );
    let ready = recv(&sock).expect("READY=1");
    assert_eq!(ready, "READY=1\nSTATUS=1 services, 0 children");
    // Sent after binding: the port answers now.
    assert_eq!(tcp_port_exchange(port, b"up\n"), "up\n");

    // Watchdog pings every 100 ms (half of WATCHDOG_USEC), timed by the
    // kernel as each reached the socket (SO_TIMESTAMPNS), not by when this
    // test got to read it. A busy machine only makes gaps longer, so each
    // gap must be at least half the interval (no spin, nothing early), and
    // the pings keep coming (each within the generous TIMEOUT); at least
    // one gap of ten is shorter than WATCHDOG_USEC itself (pinging at the
    // full interval would have none).
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .unwrap();
    let mut stamps = Vec::new();
    while stamps.len() < 11 {
        let (m, at) = recv_stamped(&sock).expect("a watchdog ping");
        assert!(m.starts_with("WATCHDOG=1\nSTATUS="), "{m}");
        stamps.push(at);
    }
    let gaps: Vec<Duration> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(50)),
        "ping intervals {gaps:?}"
    );
    assert!(
        gaps.iter().any(|g| *g < Duration::from_millis(200)),
        "ping intervals {gaps:?}"
    );

    let before = monotonic_usec();
    s.signal(nix::libc::SIGHUP);
    let reloading = next_event(&sock).expect("RELOADING=1");
    let after = monotonic_usec();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(
        next_event(&sock).as_deref(),
        Some("READY=1\nSTATUS=1 services, 0 children")
    );
    assert!(
        s.log_text().contains("reload done"),
        "READY=1 came after the reload"
    );

    s.signal(nix::libc::SIGTERM);
    assert_eq!(next_event(&sock).as_deref(), Some("STOPPING=1"));
    assert!(s.wait_exit(TIMEOUT).is_some_and(|st| st.success()));
}

#[test]
fn an_abstract_notify_socket_is_used_and_garbage_is_reported_and_ignored() {
    let name = format!("summond-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = free_port();
    let config = format!(
        "[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"sh\", \"-c\", \"echo ${{NOTIFY_SOCKET:-unset}}\"]\n"
    );
    let at = format!("@{name}");
    let s = Summond::start_with(Start {
        config: &config,
        env: &[("NOTIFY_SOCKET", &at)],
        ..Start::default()
    });
    assert_eq!(
        recv(&sock).as_deref(),
        Some("READY=1\nSTATUS=1 services, 0 children")
    );
    assert_eq!(
        tcp_port_exchange(port, b""),
        "unset\n",
        "children never see it"
    );
    drop(s);

    let port2 = free_port();
    let s = Summond::start_with(Start {
        config: &config.replace(&port.to_string(), &port2.to_string()),
        env: &[
            ("NOTIFY_SOCKET", "relative/notify"),
            ("WATCHDOG_USEC", "soon"),
        ],
        ..Start::default()
    });
    assert!(
        s.log_text()
            .contains("NOTIFY_SOCKET=\"relative/notify\" is neither an absolute path nor @name"),
        "{}",
        s.log_text()
    );
    assert_eq!(
        tcp_port_exchange(port2, b""),
        "unset\n",
        "serving regardless"
    );
}

/// The shipped unit passes systemd's own checker without a warning (an
/// unknown or misspelt directive is only a warning to systemd, and would
/// silently drop a hardening line).
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        skip(
            "the_systemd_unit_passes_systemd_analyze_verify_without_warnings",
            "systemd-analyze is not installed",
        );
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("conf/summond.service")).unwrap();
    let dir = TempDir::new("unit");
    let path = dir.path("summond.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/summond", BIN).replace(
            "/etc/summond/summond.toml",
            root.join("conf/summond.toml").to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
}

/// Debian's real systemd-socket-activate holds the sockets and execs
/// summond (same pid) on the first connection, with LISTEN_FDS.
#[test]
fn sockets_handed_by_systemd_socket_activate_are_adopted_not_bound_again() {
    let test = "sockets_handed_by_systemd_socket_activate_are_adopted_not_bound_again";
    let Some(activate) = activate_or_skip(test) else {
        return;
    };
    let (port, stray) = (free_port(), free_port());
    let a = format!("127.0.0.1:{port}");
    let b = format!("127.0.0.1:{stray}");
    let s = Summond::start_with(Start {
        config: &says("sa", &a, "served $REMOTE_ADDR", ""),
        wrapper: &[activate, "-l", &a, "-l", &b, "--"],
        wait_ready: false,
        ..Start::default()
    });
    // The socket exists before summond does.
    assert!(wait_until(TIMEOUT, || listening_inode(port).is_some()));
    let inode = listening_inode(port).unwrap();
    // This client starts summond, and is served by it.
    assert_eq!(tcp_port_exchange(port, b""), "served 127.0.0.1\n");
    assert!(s.wait_log(" serving 1 services"), "{}", s.log_text());
    assert!(
        s.log_text()
            .contains(&format!("sa: tcp://{a} adopted from the service manager")),
        "{}",
        s.log_text()
    );
    assert!(
        s.wait_log(&format!(
            "passed socket tcp://{b} (fd 4) matches no configured listen; closing it"
        )),
        "{}",
        s.log_text()
    );
    assert_eq!(
        listening_inode(port),
        Some(inode.clone()),
        "the same socket, not a new bind"
    );
    assert_eq!(listening_inode(stray), None, "the stray socket was closed");
    assert_eq!(tcp_port_exchange(port, b""), "served 127.0.0.1\n");
    // Adopted sockets survive reloads like bound ones.
    assert!(s.reload(&std::fs::read_to_string(&s.config).unwrap()));
    assert_eq!(
        listening_inode(port),
        Some(inode.clone()),
        "kept across a reload"
    );
    assert_eq!(tcp_port_exchange(port, b""), "served 127.0.0.1\n");
}

#[test]
fn listen_fds_meant_for_another_process_are_ignored() {
    let port = free_port();
    let s = Summond::start_with(Start {
        config: &format!(
            "[[service]]\nname = \"own\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
        ),
        env: &[("LISTEN_PID", "1"), ("LISTEN_FDS", "2")],
        ..Start::default()
    });
    assert!(
        s.log_text().contains("LISTEN_PID=1 is not summond's pid"),
        "{}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b"own\n"), "own\n", "bound itself");
}

/// LISTEN_FDS naming an fd that was closed at exec: summond says so and
/// serves, and the fd it opens there itself (its pidfile) is never taken
/// for a handed socket.
#[test]
fn listen_fds_naming_a_closed_fd_never_take_one_summond_opened() {
    let port = free_port();
    let dir = TempDir::new("listen-fds-closed");
    let pidfile = dir.path("summond.pid");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"own\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
            ),
            args: &["--pidfile", pidfile.to_str().unwrap()],
            wrapper: &[
                "sh",
                "-c",
                "exec 3>&-; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"",
            ],
            ..Start::default()
        },
    );
    assert!(
        s.log_text().contains("LISTEN_FDS=1, but fd 3 is not open"),
        "{}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b"own\n"), "own\n");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        s.pid().to_string()
    );
}

/// systemd-socket-activate's path, or None (the test skipped, saying so).
fn activate_or_skip(test: &str) -> Option<&'static str> {
    let activate = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(activate).exists() {
        skip(test, "systemd-socket-activate is not installed");
        return None;
    }
    Some(activate)
}

/// Service `name` on `tcp://{addr}`, its child echoing `what`, then the
/// `more` keys.
fn says(name: &str, addr: &str, what: &str, more: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"tcp://{addr}\"\nexec = {}\n{more}",
        sh(&format!("echo {what}"))
    )
}

/// The keys of a service whose clients speak first.
const PROXY: &str = "proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.0/8\"]\n";

/// Services `plain` and `proxied` on two ports picked now, whose sockets
/// systemd-socket-activate makes and hands to summond at the first
/// client: the setup the handed-listener tests share.
struct Handed {
    activate: &'static str,
    plain: u16,
    proxied: u16,
    a: String,
    b: String,
}

impl Handed {
    /// None (the test skipped, saying so) without systemd-socket-activate.
    fn new(test: &str) -> Option<Handed> {
        let activate = activate_or_skip(test)?;
        let (plain, proxied) = (free_port(), free_port());
        let (a, b) = (format!("127.0.0.1:{plain}"), format!("127.0.0.1:{proxied}"));
        Some(Handed {
            activate,
            plain,
            proxied,
            a,
            b,
        })
    }

    /// `plain` echoing "plain", `proxied` echoing `proxied`; `on_a` and
    /// `on_b` their further keys.
    fn services(&self, proxied: &str, on_a: &str, on_b: &str) -> String {
        says("plain", &self.a, "plain", on_a) + &says("proxied", &self.b, proxied, on_b)
    }

    /// `start` (summond's start) given the options that make
    /// systemd-socket-activate hold both sockets and exec summond at the
    /// first client.
    fn start<R>(&self, start: impl FnOnce(Start<'_>) -> R) -> R {
        let wrapper = [self.activate, "-l", &self.a, "-l", &self.b, "--"];
        start(Start {
            wrapper: &wrapper,
            wait_ready: false,
            ..Start::default()
        })
    }

    /// The first client of `plain` (it starts summond) served, both
    /// services up, and `proxied`'s socket (not `plain`'s) defers accept.
    fn first_client(&self, s: &Summond) {
        let (plain, proxied) = (self.plain, self.proxied);
        assert!(wait_until(TIMEOUT, || listening_inode(plain).is_some()));
        // This client starts summond, and is served by it.
        assert_eq!(tcp_port_exchange(plain, b""), "plain\n");
        assert!(s.wait_log(" serving 2 services"), "{}", s.log_text());
        assert_eq!(listener_defer_accept(s.pid(), proxied), Some(1));
        assert_eq!(listener_defer_accept(s.pid(), plain), Some(0));
    }
}

/// A socket handed by the service manager keeps its own options, but the
/// listener of a service whose clients speak first (`proxy_protocol`)
/// gets TCP_DEFER_ACCEPT as a socket summond binds would; a plain one is
/// left as it came.
#[test]
fn a_handed_listener_of_a_proxy_service_gets_defer_accept() {
    let Some(h) = Handed::new("a_handed_listener_of_a_proxy_service_gets_defer_accept") else {
        return;
    };
    let config = h.services("proxied $REMOTE_ADDR", "", PROXY);
    let s = h.start(|opts| {
        Summond::start_with(Start {
            config: &config,
            ..opts
        })
    });
    h.first_client(&s);
    let header = b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\n";
    assert_eq!(tcp_port_exchange(h.proxied, header), "proxied 192.0.2.1\n");
}

/// atk3: a socket handed by the service manager keeps TCP_DEFER_ACCEPT
/// in step with its service across a live upgrade, as across a reload
/// (docs/tls.md: "a reload or upgrade that turns `tls` off clears it";
/// docs/proxy.md: a handed socket "gets it too"): an upgrade that turns
/// `proxy_protocol` off clears it, one that turns it on sets it.
#[test]
fn a_handed_listener_follows_defer_accept_across_an_upgrade() {
    let Some(h) = Handed::new("a_handed_listener_follows_defer_accept_across_an_upgrade") else {
        return;
    };
    let (plain, proxied) = (h.plain, h.proxied);
    let dir = TempDir::new("handed-defer-upgrade");
    let services = h.services("proxied", "", PROXY);
    let (s, _bin, control) = h.start(|opts| start_upgradable(dir, &services, opts));
    h.first_client(&s);

    // Upgrade with proxy_protocol moved from `proxied` to `plain`.
    s.write_config(&format!(
        "{}{}",
        daemon_control(&control),
        h.services("proxied", PROXY, "")
    ));
    upgrade_ok(&s, &control);
    assert!(wait_until(TIMEOUT, || listening_inode(plain).is_some()));
    // What a client sees: `proxied` now speaks first, and its client,
    // which waits for it, waits for the kernel's deferred second first.
    let t = std::time::Instant::now();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", proxied)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut c, &mut out).unwrap();
    assert_eq!(out, "proxied\n");
    let waited = t.elapsed();
    let pid = s.pid();
    assert_eq!(
        (
            listener_defer_accept(pid, proxied),
            listener_defer_accept(pid, plain)
        ),
        (Some(0), Some(1)),
        "(proxied, plain) after the upgrade; a client of `proxied` waited {waited:?}\n{}",
        s.log_text()
    );
}

/// Sockets a service manager hands (LISTEN_FDS) keep its options: a
/// reload that turns `proxy_protocol` on or off changes only the defer
/// (not SO_KEEPALIVE, which a full re-apply of summond's options would
/// clear); a `DeferAcceptSec=` it set stays; and at summond's stop the
/// service manager's copy gets back the defer it handed. The wrapper is
/// the service manager: it makes two listeners (one with defer 5 s, both
/// SO_KEEPALIVE), keeps a copy in a child of its own, and execs summond.
#[test]
fn handed_listeners_keep_the_service_managers_options_and_get_them_back() {
    use nix::libc;
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("handed options", "needs /usr/bin/python3");
    }
    let (admin, plain) = (free_port(), free_port());
    let dir = TempDir::new("handed-options");
    let copy = dir.path("copy");
    let manager = "import os, socket, sys, time\n\
        ports, out = [int(p) for p in sys.argv[1:3]], sys.argv[3]\n\
        socks = []\n\
        for i, port in enumerate(ports):\n\
        \x20   s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        \x20   s.bind(('127.0.0.1', port)); s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)\n\
        \x20   if i == 0: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)\n\
        \x20   s.listen(17); socks.append(s)\n\
        came = socks[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)\n\
        if os.fork() == 0:\n\
        \x20   open(out + '.tmp', 'w').write(f'{os.getpid()} {came}'); os.rename(out + '.tmp', out)\n\
        \x20   time.sleep(60); os._exit(0)\n\
        for i, s in enumerate(socks):\n\
        \x20   os.dup2(s.fileno(), 3 + i); os.set_inheritable(3 + i, True)\n\
        os.environ['LISTEN_FDS'] = '2'; os.environ['LISTEN_PID'] = str(os.getpid())\n\
        os.execv(sys.argv[4], sys.argv[4:])\n";
    let (a, b) = (admin.to_string(), plain.to_string());
    let config = |on: &str| {
        says("admin", &format!("127.0.0.1:{admin}"), "admin", on)
            + &says("plain", &format!("127.0.0.1:{plain}"), "plain", on)
    };
    let mut s = Summond::start_in(
        dir,
        Start {
            config: &config(PROXY),
            wrapper: &[
                "/usr/bin/python3",
                "-c",
                manager,
                &a,
                &b,
                copy.to_str().unwrap(),
            ],
            ..Start::default()
        },
    );
    assert!(wait_until(TIMEOUT, || copy.exists()));
    let text = std::fs::read_to_string(&copy).unwrap();
    let (holder, came) = text.split_once(' ').unwrap();
    let (holder, came): (i32, i32) = (holder.parse().unwrap(), came.parse().unwrap());
    let _holder = KillOnDrop::new(holder);
    assert!(s.wait_log(" serving 2 services"), "{}", s.log_text());
    let keepalive = |port| listener_sockopt(holder, port, libc::SOL_SOCKET, libc::SO_KEEPALIVE);
    let state = |pid| {
        (
            listener_defer_accept(pid, admin),
            listener_defer_accept(pid, plain),
            keepalive(admin),
            keepalive(plain),
        )
    };
    let with_proxy = (Some(came), Some(1), Some(1), Some(1));
    assert_eq!(state(s.pid()), with_proxy, "{}", s.log_text());
    assert!(s.reload(&config("")), "{}", s.log_text());
    let without = (Some(came), Some(0), Some(1), Some(1));
    assert_eq!(state(s.pid()), without, "proxy off\n{}", s.log_text());
    assert!(s.reload(&config(PROXY)), "{}", s.log_text());
    assert_eq!(state(s.pid()), with_proxy, "proxy on\n{}", s.log_text());
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(TIMEOUT).is_some(), "{}", s.log_text());
    assert_eq!(state(holder), without, "after the stop");
}
