//! `summond wrap`: one program without a config file, the same server as
//! a one-service config: the four start modes, the same checks (exit 2
//! with `summond wrap: ...`), SIGHUP has nothing to re-read, SIGTERM
//! stops cleanly.

use std::process::{Command, Stdio};

use crate::util::*;

struct Wrapped {
    child: std::process::Child,
    _guard: KillOnDrop,
    log: std::path::PathBuf,
    _dir: TempDir,
}

/// Stop it the way a user does, so it stops its `--no-accept` daemon too
/// (SIGKILL, the guard's fallback, would leave that daemon running).
impl Drop for Wrapped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_until(TIMEOUT, || matches!(self.child.try_wait(), Ok(Some(_))));
    }
}

impl Wrapped {
    fn start(args: &[&str]) -> Wrapped {
        let dir = TempDir::new("wrap");
        let log = dir.path("log");
        let child = Command::new(BIN)
            .arg("wrap")
            .args(args)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Wrapped {
            _guard: KillOnDrop::new(child.id() as i32),
            child,
            log,
            _dir: dir,
        };
        assert!(
            wait_until(TIMEOUT, || w.text().contains(" serving 1 services")),
            "{}",
            w.text()
        );
        w
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { nix::libc::kill(self.child.id() as i32, sig) };
    }
}

#[test]
fn wrap_serves_a_filter_per_connection_with_the_connection_variables() {
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let mut w = Wrapped::start(&[
        "-l",
        &addr,
        "--",
        "sh",
        "-c",
        "echo REMOTE_ADDR=$REMOTE_ADDR; cat",
    ]);
    let out = tcp_port_exchange(port, b"hi\n");
    assert_eq!(out, "REMOTE_ADDR=127.0.0.1\nhi\n");
    w.signal(nix::libc::SIGHUP);
    assert!(
        wait_until(TIMEOUT, || w.text().contains("nothing to reload")),
        "{}",
        w.text()
    );
    assert_eq!(
        tcp_port_exchange(port, b"still\n"),
        "REMOTE_ADDR=127.0.0.1\nstill\n"
    );
    w.signal(nix::libc::SIGTERM);
    let status = w.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", w.text());
}

#[test]
fn wrap_runs_the_other_three_modes() {
    // accept + listen_fds: the connection as fd 3.
    let p1 = free_port();
    let a1 = format!("tcp://127.0.0.1:{p1}");
    let _w1 = Wrapped::start(&[
        "-l",
        &a1,
        "--pass",
        "listen_fds",
        "--",
        "sh",
        "-c",
        "echo LISTEN_FDS=$LISTEN_FDS LISTEN_FDNAMES=$LISTEN_FDNAMES >&3",
    ]);
    assert_eq!(
        tcp_port_exchange(p1, b""),
        "LISTEN_FDS=1 LISTEN_FDNAMES=connection\n"
    );
    // no accept + listen_fds: a daemon holding the listening socket.
    let p2 = free_port();
    let a2 = format!("tcp://127.0.0.1:{p2}");
    let hello = example("hello_listenfd");
    let _w2 = Wrapped::start(&[
        "-l",
        &a2,
        "--no-accept",
        "--pass",
        "listen_fds",
        "--",
        hello.to_str().unwrap(),
    ]);
    let out = tcp_port_exchange(p2, b"");
    assert!(
        out.starts_with("hello from pid ") && out.contains(" on wrap"),
        "{out}"
    );
    // no accept + stdio over UDP: the tftpd way.
    let p3 = free_port();
    let a3 = format!("udp://127.0.0.1:{p3}");
    let _w3 = Wrapped::start(&[
        "-l",
        &a3,
        "--no-accept",
        "--",
        "perl",
        "-e",
        "my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc $buf, 0, $peer)",
    ]);
    assert_eq!(udp_exchange(p3, b"udp").as_deref(), Some(&b"UDP"[..]));
}

#[test]
fn wrap_checks_its_arguments_like_a_config() {
    let (code, _, err) = run_to_exit(&["wrap", "-l", "tcp://localhost:80", "--", "cat"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("summond wrap: `listen`: \"localhost:80\" is not IP:PORT"),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&[
        "wrap",
        "-l",
        "tcp://127.0.0.1:9",
        "--",
        "no-such-program-xyz",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("summond wrap: `exec`: \"no-such-program-xyz\" not found in PATH"),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&["wrap", "-l", "udp://127.0.0.1:9", "--", "cat"]);
    assert_eq!(code, 2, "a udp socket cannot be accepted on");
    assert!(
        err.contains("summond wrap: `accept = true` is impossible on datagram socket"),
        "{err}"
    );
    let (code, _, _) = run_to_exit(&["wrap", "--", "cat"]);
    assert_eq!(code, 2, "no address: bad usage");
}

#[test]
fn wrap_makes_bc_a_network_calculator() {
    if !std::path::Path::new("/usr/bin/bc").exists() {
        skip("wrap_makes_bc_a_network_calculator", "bc is not installed");
        return;
    }
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let _w = Wrapped::start(&["-l", &addr, "--", "bc", "-q"]);
    assert_eq!(tcp_port_exchange(port, b"6*7\n2^10\n"), "42\n1024\n");
}

#[test]
fn wrap_reads_proxy_headers_from_the_balancers_named() {
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let _w = Wrapped::start(&[
        "-l",
        &addr,
        "--proxy-protocol",
        "v1",
        "--proxy-from",
        "10.0.0.0/8",
        "--proxy-from",
        "127.0.0.1",
        "--",
        "sh",
        "-c",
        "echo REMOTE_ADDR=$REMOTE_ADDR PROXY_ADDR=$PROXY_ADDR; cat",
    ]);
    let out = tcp_port_exchange(port, b"PROXY TCP4 192.0.2.9 192.0.2.1 4000 80\r\nhi\n");
    assert_eq!(out, "REMOTE_ADDR=192.0.2.9 PROXY_ADDR=127.0.0.1\nhi\n");
    // The config's checks and messages.
    let (code, _, err) = run_to_exit(&[
        "wrap",
        "-l",
        &addr,
        "--proxy-protocol",
        "v3",
        "--proxy-from",
        "10.0.0.0/8",
        "--",
        "cat",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("summond wrap: `proxy_protocol`: \"v3\" is not one of"),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&["wrap", "-l", &addr, "--proxy-protocol", "v1", "--", "cat"]);
    assert_eq!(code, 2, "--proxy-from is required: {err}");
}
