//! What summond inherits from whoever starts it, and what of that must not
//! reach its children or steer summond itself: client-looking variables in
//! its environment, an ignored SIGCHLD and a blocked signal mask, a
//! watchdog interval too short to honour. Each in accept and pass mode
//! where it applies, and again after a live upgrade (the new image starts
//! from what the old one had).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::util::*;

/// Variables of every client family, as if whoever started summond (or an
/// attacker who can set its environment) described a client; and two that
/// configure the host and must pass as usual.
const STARTED_WITH: &[(&str, &str)] = &[
    ("TCPREMOTEHOST", "evil"),
    ("TCPREMOTEINFO", "evil"),
    ("TCPLOCALHOST", "evil"),
    ("TCP6REMOTEIP", "evil"),
    ("REMOTE_HOST", "evil"),
    ("REMOTE_USER", "evil"),
    ("PROTO", "evil"),
    ("UNIXREMOTEEUID", "evil"),
    ("IPCREMOTEPATH", "evil"),
    ("SSLREMOTEIP", "evil"),
    ("SSL_CLIENT_S_DN", "evil"),
    ("PROXY_ADDR", "evil"),
    ("SSL_CERT_FILE", "/etc/ssl/host-ca.pem"),
    ("KEEP_ME", "kept"),
];

/// No line of a child's `env` output carries one of the planted values;
/// the host's variables are there.
fn assert_clean(what: &str, env: &str, keep: bool) {
    let leaked: Vec<&str> = env.lines().filter(|l| l.contains("evil")).collect();
    assert!(leaked.is_empty(), "{what}: {leaked:?} leaked:\n{env}");
    assert_eq!(
        field(env, "SSL_CERT_FILE"),
        Some("/etc/ssl/host-ca.pem"),
        "{what}:\n{env}"
    );
    assert_eq!(
        field(env, "KEEP_ME"),
        keep.then_some("kept"),
        "{what}:\n{env}"
    );
}

#[test]
fn client_variables_summond_was_started_with_reach_no_child_in_any_mode_nor_after_an_upgrade() {
    let (acc, clear, wait) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("client-env");
    let wait_env = dir.path("wait.env");
    let services = format!(
        "[[service]]\nname = \"acc\"\nlisten = \"tcp://127.0.0.1:{acc}\"\nexec = [\"env\"]\n\
         [[service]]\nname = \"clear\"\nlisten = \"tcp://127.0.0.1:{clear}\"\nexec = [\"env\"]\n\
         clear_env = true\npassenv = [\"SSL_CERT_FILE\", \"KEEP_ME\"]\n\
         [[service]]\nname = \"wait\"\nlisten = \"udp://127.0.0.1:{wait}\"\naccept = false\nexec = {}\n",
        // Read the datagram (so the child did its work), then report.
        sh("head -c 1 >/dev/null; env > {dir}/wait.tmp && mv {dir}/wait.tmp {dir}/wait.env")
    );
    let (s, _, control) = start_upgradable(
        dir,
        &services,
        Start {
            env: STARTED_WITH,
            ..Start::default()
        },
    );
    let check_all = |when: &str| {
        let out = tcp_port_exchange(acc, b"");
        assert_clean(&format!("accept {when}"), &out, true);
        // The connection's own variables are still set, by summond.
        assert_eq!(field(&out, "PROTO"), Some("TCP"), "{out}");
        assert_eq!(field(&out, "TCPREMOTEIP"), Some("127.0.0.1"), "{out}");
        assert_clean(
            &format!("clear_env {when}"),
            &tcp_port_exchange(clear, b""),
            true,
        );
        let _ = std::fs::remove_file(&wait_env);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(b"x", ("127.0.0.1", wait)).unwrap();
        assert!(
            wait_until(TIMEOUT, || wait_env.exists()),
            "the pass-mode child ran {when}"
        );
        let out = std::fs::read_to_string(&wait_env).unwrap();
        assert_clean(&format!("pass mode {when}"), &out, true);
        assert_eq!(field(&out, "PROTO"), None, "{out}");
    };
    check_all("at start");
    // The new image inherits summond's environment, planted variables and
    // all, and must filter them again.
    upgrade_ok(&s, &control);
    check_all("after an upgrade");

    // Nor may a service pass one through or set one.
    let cfg = s.dir.path("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[service]]\nname = \"p\"\nlisten = \"tcp://127.0.0.1:{acc}\"\nexec = [\"env\"]\n\
             clear_env = true\npassenv = [\"TCPREMOTEHOST\", \"SSL_CERT_DIR\"]\nenv = {{ REMOTE_HOST = \"x\" }}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":6:12: `passenv`: TCPREMOTEHOST would describe the client, which only summond does; it cannot be configured"),
        "{err}"
    );
    assert!(
        err.contains(":7:9: `env`: REMOTE_HOST would describe the client"),
        "{err}"
    );
    assert_eq!(err.matches("would describe the client").count(), 2, "{err}");
}

/// `SigIgn` and `SigBlk` of /proc/PID/status (or of a child's report).
fn sig_masks(status: &str) -> (String, String) {
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_start_matches([':', '=']).trim().to_string())
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    };
    (get("SigIgn"), get("SigBlk"))
}

/// SIGHUP, SIGINT, SIGUSR2, SIGTERM, SIGCHLD: the signals summond reads
/// from its signalfd, and nothing else blocked.
const HANDLED_MASK: &str = "0000000000014803";
/// SIGPIPE's bit in SigIgn.
const SIGPIPE_BIT: u64 = 1 << (13 - 1);

#[test]
fn an_ignored_sigchld_and_a_blocked_mask_at_start_still_reap_every_child() {
    let port = free_port();
    // Started the way a careless parent might: SIGCHLD, SIGHUP and SIGINT
    // ignored, SIGQUIT, SIGUSR1 and SIGALRM blocked (both survive execve).
    let wrapper = [
        "perl",
        "-MPOSIX",
        "-e",
        "$SIG{CHLD} = 'IGNORE'; $SIG{HUP} = 'IGNORE'; $SIG{INT} = 'IGNORE'; \
         sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGQUIT, SIGUSR1, SIGALRM)) or die; \
         exec @ARGV or die",
    ];
    // One child at a time: each connection after the first is served
    // only once the previous child's exit was reaped and counted.
    let (s, _, control) = start_upgradable(
        TempDir::new("sigchld-ignored"),
        &format!(
            "[[service]]\nname = \"sig\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_instances = 1\nexec = {}\n",
            // exec: the program's own state, not a shell's mid-wait.
            sh("exec grep -E '^Sig(Ign|Blk)' /proc/self/status")
        ),
        Start {
            wrapper: &wrapper,
            ..Start::default()
        },
    );
    let mut exits = 0;
    let mut serve_three = |when: &str| {
        for i in 0..3 {
            let out = tcp_port_exchange(port, b"");
            assert_eq!(
                sig_masks(&out),
                ("0000000000000000".into(), "0000000000000000".into()),
                "connection {i} {when}: the child's dispositions and mask"
            );
            exits += 1;
            assert!(
                wait_until(TIMEOUT, || s.log_count("exited with status 0") >= exits),
                "exit {exits} {when} logged:\n{}",
                s.log_text()
            );
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        let (ignored, blocked) = sig_masks(&status);
        assert_eq!(blocked, HANDLED_MASK, "summond's own mask {when}");
        // What else it was started ignoring (glibc's 32 and 33 may come
        // that way from the test's parents) is not summond's business.
        let ignored = u64::from_str_radix(&ignored, 16).unwrap();
        let handled = u64::from_str_radix(HANDLED_MASK, 16).unwrap();
        assert_eq!(
            ignored & (handled | SIGPIPE_BIT),
            SIGPIPE_BIT,
            "summond ignores SIGPIPE and none of the signals it handles {when}"
        );
        assert!(wait_until(TIMEOUT, || s.children().0.is_empty()), "{when}");
        assert_eq!(status_json(&control)["children"], 0, "{when}");
    };
    serve_three("at start");
    upgrade_ok(&s, &control);
    serve_three("after an upgrade");
}

#[test]
fn a_one_microsecond_watchdog_is_pinged_at_a_bounded_rate_and_logged_once() {
    let dir = TempDir::new("watchdog-1us");
    let path = dir.path("notify.sock");
    // Bound and never read while measuring: the queue fills and every
    // later ping fails, the case that logged a line per failure.
    let sock = UnixDatagram::bind(&path).unwrap();
    let port = free_port();
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
            ),
            env: &[
                ("NOTIFY_SOCKET", path.to_str().unwrap()),
                ("WATCHDOG_USEC", "1"),
            ],
            ..Start::default()
        },
    );
    assert!(
        s.log_text().contains(
            "WATCHDOG_USEC=1: pinging at half that would be more often than every 10 ms; pinging every 10 ms instead"
        ),
        "{}",
        s.log_text()
    );
    assert!(
        s.wait_log("NOTIFY_SOCKET: "),
        "the queue fills at 100 pings a second"
    );
    // A measuring window, not a wait for an event: a loop spinning on the
    // watchdog uses a whole core (about 100 ticks a second); pinging every
    // 10 ms costs well under one. The bound, a tenth of a core, is 10
    // times below a spin and far above what a ping costs.
    let (t0, ticks0) = (Instant::now(), cpu_ticks(s.pid()));
    std::thread::sleep(Duration::from_secs(2));
    let (elapsed, used) = (t0.elapsed(), cpu_ticks(s.pid()) - ticks0);
    let bound = (elapsed.as_secs_f64() * 100.0 / 10.0).ceil() as u64;
    assert!(
        used <= bound,
        "summond used {used} ticks in {elapsed:?} (bound {bound})"
    );
    // One line for the whole run of failed sends, not one per ping
    // (a spin wrote 78,000 a second).
    assert_eq!(s.log_count("NOTIFY_SOCKET: "), 1, "{}", s.log_text());
    assert!(
        std::fs::metadata(&s.log).unwrap().len() < 64 * 1024,
        "{}",
        s.log_text()
    );
    // And the pings are real: the queue holds them.
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 512];
    let mut got = String::new();
    for _ in 0..3 {
        let n = sock.recv(&mut buf).unwrap();
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    assert!(got.contains("WATCHDOG=1"), "{got}");
}

#[test]
fn under_d_an_ignored_sigchld_and_client_variables_are_shed_as_well() {
    let dir = TempDir::new("inherit-daemon");
    let port = free_port();
    let config = dir.path("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"sig\"\nlisten = \"tcp://127.0.0.1:{port}\"\nmax_instances = 1\nexec = {}\n",
            sh("env; exec grep -E '^Sig(Ign|Blk)' /proc/self/status")
        ),
    )
    .unwrap();
    let pidfile = dir.path("summond.pid");
    let syslog_path = dir.path("log.sock");
    let _syslog = UnixDatagram::bind(&syslog_path).unwrap();
    // The detach forks twice; what the first process was started with
    // reaches the daemon that serves.
    let out = std::process::Command::new("perl")
        .args([
            "-e",
            "$SIG{CHLD} = 'IGNORE'; exec @ARGV or die",
            BIN,
            "-d",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
        ])
        .env("SUMMOND_SYSLOG_SOCKET", &syslog_path)
        .env("TCPREMOTEHOST", "evil")
        .env("REMOTE_HOST", "evil")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _reaper = KillOnDrop::new(pid);
    for i in 0..3 {
        // Served only once the previous child's exit was counted.
        let out = tcp_port_exchange(port, b"");
        assert!(!out.contains("evil"), "connection {i}:\n{out}");
        assert_eq!(field(&out, "TCPREMOTEIP"), Some("127.0.0.1"), "{out}");
        assert_eq!(
            sig_masks(&out),
            ("0000000000000000".into(), "0000000000000000".into()),
            "connection {i}"
        );
    }
    assert!(wait_until(TIMEOUT, || children_of(pid).is_empty()));
}

/// Started with signals it does not handle blocked and pending (SIGUSR1,
/// SIGALRM, SIGTSTP and a real-time signal queued twice): summond drops
/// them and serves. Unblocked by summond's own mask, the first killed it
/// before it logged a line.
#[test]
fn unhandled_signals_pending_at_start_are_dropped_not_acted_on() {
    let port = free_port();
    let wrapper = [
        "perl",
        "-MPOSIX",
        "-e",
        "my $rt = POSIX::SIGRTMIN() + 2; \
         sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGUSR1, SIGALRM, SIGTSTP, $rt)) or die; \
         kill('USR1', $$); kill('ALRM', $$); kill('TSTP', $$); kill($rt, $$); kill($rt, $$); \
         exec @ARGV or die",
    ];
    let s = Summond::start_with(Start {
        config: &format!(
            "[[service]]\nname = \"cat\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
        ),
        wrapper: &wrapper,
        ..Start::default()
    });
    assert_eq!(tcp_port_exchange(port, b"up\n"), "up\n", "{}", s.log_text());
    let rt = nix::libc::SIGRTMIN() + 2;
    for sig in [
        nix::libc::SIGUSR1,
        nix::libc::SIGALRM,
        nix::libc::SIGTSTP,
        rt,
    ] {
        assert_eq!(signal_pending(s.pid(), sig), Some(false), "signal {sig}");
    }
    assert_eq!(proc_state(s.pid()).map(|c| c != 'T'), Some(true), "stopped");
}
