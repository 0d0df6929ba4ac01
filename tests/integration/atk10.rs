//! atk10's reproducers (review of edec7ad: clients held for a `unix://`
//! backend's full listen backlog). Each fails on 34f08de.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::forward::{clients_that_sent, have, KillOnDropLater};
use crate::util::*;

/// A unix backend with a listen backlog of 0: serves one client, then
/// accepts nothing until `{dir}/go`; at `{dir}/quit` (removed) it
/// closes its listener and exits 300 ms later, as a daemon's graceful
/// stop does.
const BACKEND: &str = "import os, socket, time\n\
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

fn config(port: u16, more: &str) -> String {
    format!(
        "[daemon]\ncontrol = \"{{dir}}/control\"\n\
         [[service]]\nname = \"busy\"\nlisten = \"tcp://127.0.0.1:{port}\"\n\
         exec = [\"python3\", \"-c\", {}]\nforward = \"unix://{{dir}}/b.sock\"\n\
         stderr = \"null\"\n{more}\n",
        toml_str(BACKEND)
    )
}

/// Read until EOF or `within`: what came, and whether EOF came.
fn read_for(c: &mut std::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    c.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let eof = c.read_to_end(&mut got).is_ok();
    (got, eof)
}

/// forward.md ("Faults"): "A client still held start_timeout after the
/// backlog was first found full for it is refused". A reload that
/// changes the service but not its address retires the backend; its
/// one relayed connection (in its backlog, never accepted) keeps it
/// running, so the new backend never starts, and the held clients sit
/// in a Stopped backend's queue where nothing enforces their deadline:
/// held for ever (and, once 1024 wait, the service accepts nobody).
#[test]
fn atk10_held_clients_are_refused_at_start_timeout_after_a_reload() {
    if !have("python3") {
        return skip("atk10_held_after_reload", "python3 is not installed");
    }
    let port = free_port();
    let s = Summond::start(&config(port, "start_timeout = \"1s\"\n"));
    let _guard = KillOnDropLater(&s);
    assert_eq!(tcp_port_exchange(port, b"warm\n"), "warm\n", "{}", s.log_text());
    let clients = clients_that_sent(port, 5);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    assert!(s.reload(&config(port, "start_timeout = \"1s\"\nenv = { X = \"1\" }\n")));
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

/// forward.md ("Faults"): "A backend that exits meanwhile leaves its
/// held clients waiting for its next start". A backend that closes its
/// listener before it exits (a graceful stop) has every held client
/// closed at the next retry ("Connection refused", one WARN line each)
/// instead; the next backend, which accepts, gets none of them.
#[test]
fn atk10_held_clients_wait_for_the_next_start_when_the_backend_exits_gracefully() {
    if !have("python3") {
        return skip("atk10_graceful_exit", "python3 is not installed");
    }
    let port = free_port();
    let s = Summond::start(&config(port, "start_timeout = \"20s\"\n"));
    let _guard = KillOnDropLater(&s);
    assert_eq!(tcp_port_exchange(port, b"warm\n"), "warm\n", "{}", s.log_text());
    let clients = clients_that_sent(port, 6);
    assert!(s.wait_log("listen backlog is full"), "{}", s.log_text());
    std::fs::write(s.dir.path("quit"), b"").unwrap();
    assert!(s.wait_log("exited with status 3"), "{}", s.log_text());
    std::fs::write(s.dir.path("go"), b"").unwrap();
    // The first was relayed into the old backlog (lost with it); the
    // held ones must reach the next backend.
    for (i, mut c) in clients.into_iter().enumerate().skip(1) {
        let (got, _) = read_for(&mut c, Duration::from_secs(10));
        assert_eq!(got, format!("c{i}\n").into_bytes(), "client {i}\n{}", s.log_text());
    }
}
