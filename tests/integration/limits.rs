//! max_instances and max_children make clients wait in the kernel backlog
//! (the listener is unwatched, never accept-and-drop); max_per_source
//! closes the extra connection at once and logs who it was.

use std::io::Write;
use std::net::TcpStream;

use crate::util::*;

const HOLD: &str = "echo start; read x; echo done";

fn connect(port: u16) -> TcpStream {
    connect_tcp(([127, 0, 0, 1], port).into())
}

#[test]
fn max_instances_makes_the_next_client_wait_in_the_backlog_until_a_child_exits() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"one\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nmax_instances = 1\n",
        sh(HOLD)
    ));
    let mut first = connect(port);
    assert_eq!(read_line(&first), "start\n");
    let mut waiting: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    assert!(
        wait_in_backlog(port, 3),
        "no child while at the limit: all three wait in the backlog"
    );
    assert_eq!(s.log_count("one: started pid"), 1);
    // Free the slot: each waiting client is served in turn, none dropped.
    first.write_all(b"go\n").unwrap();
    for w in &mut waiting {
        assert_eq!(read_line(w), "start\n");
        w.write_all(b"go\n").unwrap();
    }
    assert!(wait_until(TIMEOUT, || s.log_count("one: started pid") == 4));
    assert!(!s.log_text().contains("refused"));
}

#[test]
fn max_children_caps_all_services_together() {
    let (pa, pb) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[daemon]\nmax_children = 1\n\
         [[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:{pa}\"\nexec = {}\n\
         [[service]]\nname = \"b\"\nlisten = \"tcp://127.0.0.1:{pb}\"\nexec = {}\n",
        sh(HOLD),
        sh(HOLD)
    ));
    let mut a = connect(pa);
    assert_eq!(read_line(&a), "start\n");
    let b = connect(pb);
    assert!(wait_in_backlog(pb, 1), "b waits for a's child");
    a.write_all(b"go\n").unwrap();
    assert_eq!(read_line(&b), "start\n");
    assert!(!s.log_text().contains("refused"));
}

#[test]
fn max_per_source_closes_the_extra_connection_at_once_and_logs_the_client() {
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"ps\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nmax_per_source = 1\n",
        sh(HOLD)
    ));
    let mut first = connect(port);
    assert_eq!(read_line(&first), "start\n");
    let extra = connect(port);
    let extra_port = extra.local_addr().unwrap().port();
    let mut buf = [0u8; 8];
    assert_eq!(
        std::io::Read::read(&mut &extra, &mut buf).unwrap(),
        0,
        "closed at once"
    );
    assert!(
        s.wait_log(&format!(
            "ps: refused 127.0.0.1:{extra_port} (max_per_source 1 reached)"
        )),
        "{}",
        s.log_text()
    );
    assert_eq!(
        s.log_count("ps: started pid"),
        1,
        "no fork for a refused client"
    );
    // once the first child is gone the same client may connect again
    first.write_all(b"go\n").unwrap();
    assert_eq!(read_line(&first), "done\n");
    assert!(wait_until(TIMEOUT, || s.log_count("ps: pid ") == 1));
    assert_eq!(read_line(&connect(port)), "start\n");
}

#[test]
fn on_a_unix_socket_max_per_source_counts_the_peers_uid() {
    let dir = TempDir::new("unixps");
    let sock = dir.path("ps.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"ups\"\nlisten = \"unix://{}\"\nexec = {}\nmax_per_source = 1\n",
                sock.display(),
                sh(HOLD)
            ),
            ..Start::default()
        },
    );
    let first = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&first), &mut line).unwrap();
    assert_eq!(line, "start\n");
    let second = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    second.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        std::io::Read::read(&mut &second, &mut buf).unwrap(),
        0,
        "closed at once"
    );
    let uid = nix::unistd::getuid();
    assert!(
        s.wait_log(&format!(
            "ups: refused uid {uid} pid {} (max_per_source 1 reached)",
            std::process::id()
        )),
        "{}",
        s.log_text()
    );
}

#[test]
fn max_runtime_terms_the_childs_process_group_then_kills_what_ignores_it() {
    let (port, stubborn) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[[service]]\nname = \"slow\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nmax_runtime = \"1s\"\n\
         [[service]]\nname = \"deaf\"\nlisten = \"tcp://127.0.0.1:{stubborn}\"\nexec = {}\nmax_runtime = \"500ms\"\n",
        // a grandchild in the same process group, then wait
        sh("sleep 30 & echo $!; wait"),
        sh("trap '' TERM; echo $$; exec sleep 30")
    ));
    let slow = connect(port);
    let slow_port = slow.local_addr().unwrap().port();
    let grandchild: i32 = read_line(&slow).trim().parse().unwrap();
    let slow_pid = parent_pid(grandchild).expect("the child is the grandchild's parent");
    let deaf = connect(stubborn);
    let deaf_pid: i32 = read_line(&deaf).trim().parse().unwrap();

    assert!(
        s.wait_log(&format!(
            "slow: pid {slow_pid} for 127.0.0.1:{slow_port} ran past max_runtime 1s; \
             SIGTERM to its process group, SIGKILL in 5s"
        )),
        "{}",
        s.log_text()
    );
    assert!(
        wait_until(
            TIMEOUT,
            || !matches!(proc_state(grandchild), Some(s) if s != 'Z')
        ),
        "the whole process group got SIGTERM"
    );
    assert!(s.wait_log(&format!(
        "slow: pid {slow_pid} for 127.0.0.1:{slow_port} killed by signal 15 (SIGTERM)"
    )));

    // SIGTERM ignored: SIGKILL 5 s later (a generous bound past it).
    let killed_line = format!(
        "deaf: pid {deaf_pid} for 127.0.0.1:{} killed by signal 9 (SIGKILL)",
        deaf.local_addr().unwrap().port()
    );
    assert!(
        wait_until(TIMEOUT * 3, || s.log_text().contains(&killed_line)),
        "{}",
        s.log_text()
    );
    let log = s.log_text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .map(log_millis)
            .unwrap_or_else(|| panic!("no line with {needle}:\n{log}"))
    };
    let term = line(&format!(
        "deaf: pid {deaf_pid} for 127.0.0.1:{}",
        deaf.local_addr().unwrap().port()
    ));
    let killed = line("is still running 5s after SIGTERM; SIGKILL to its process group");
    // The grace runs from the SIGTERM's instant; its line is stamped
    // later by however long summond was off the CPU in between, so a
    // second of slack (a missing grace kills within milliseconds).
    assert!(
        killed + 1000 >= term + 5000,
        "SIGKILL {} ms after SIGTERM",
        killed - term
    );
}
