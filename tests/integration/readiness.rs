//! Readiness of long-running (`accept = false`) children: the
//! NOTIFY_SOCKET summond gives each, READY=1 and STATUS= in status, and
//! `ready_timeout`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const TIMEOUT: Duration = Duration::from_secs(10);
const PYTHON: &str = "/usr/bin/python3";

fn have_python_systemd() -> bool {
    Path::new("/usr/lib/python3/dist-packages/systemd/daemon.py").exists()
        && Path::new(PYTHON).exists()
}

/// A datagram to the NOTIFY_SOCKET named in `pid`'s environment, sent by
/// the test itself (a process outside the child's group).
fn forge(pid: i32, text: &[u8]) {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let name = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"NOTIFY_SOCKET=@"))
        .expect("a NOTIFY_SOCKET");
    let mut abs = vec![0u8];
    abs.extend_from_slice(name);
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).unwrap();
    let to = socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&abs)).unwrap();
    sock.send_to(text, &to).unwrap();
}

/// The one instance of service 0, as status --json shows it.
fn instance(control: &Path) -> serde_json::Value {
    status_json(control)["services"][0]["instances"][0].clone()
}

/// A pass-mode child gets a NOTIFY_SOCKET of its own (not summond's) and
/// shows, from python3-systemd's `systemd.daemon.notify`, not ready, then
/// READY=1 and its STATUS= in status; a forged READY=1 and STATUS= from
/// outside its group change nothing.
#[test]
fn a_long_running_child_says_ready_and_status_with_sd_notify() {
    if !have_python_systemd() {
        return skip("readiness sd_notify", "python3-systemd is not installed");
    }
    let port = free_port();
    let dir = TempDir::new("ready");
    let control = dir.path("control.sock");
    let flag = dir.path("go");
    let script = format!(
        "import os, socket, time\n\
         from systemd.daemon import notify\n\
         notify('STATUS=warming up')\n\
         for _ in range(600):\n    \
             if os.path.exists({flag:?}): break\n    \
             time.sleep(0.05)\n\
         notify('READY=1\\nSTATUS=serving')\n\
         s = socket.socket(fileno=3)\n\
         while True:\n    \
             c, _ = s.accept(); c.sendall(b'hi\\n'); c.close()\n",
        flag = flag.display().to_string()
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\n\
                 pass = \"listen_fds\"\nexec = [{PYTHON:?}, \"-c\", {}]\n",
                daemon_control(&control),
                toml_str(&script)
            ),
            env: &[("NOTIFY_SOCKET", "@summond-test-own-notify")],
            ..Start::default()
        },
    );
    let _client = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        wait_until(TIMEOUT, || instance(&control)["status"] == "warming up"),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    let pid = instance(&control)["pid"].as_i64().unwrap() as i32;
    let _kill = KillOnDrop::new(pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let own = environ
        .split(|b| *b == 0)
        .filter(|v| v.starts_with(b"NOTIFY_SOCKET="))
        .collect::<Vec<_>>();
    assert_eq!(own.len(), 1);
    // An abstract name of the kernel's choosing: `@` and five hex digits.
    let name = own[0].strip_prefix(b"NOTIFY_SOCKET=@").unwrap_or_default();
    assert!(
        name.len() == 5 && name.iter().all(u8::is_ascii_hexdigit),
        "{own:?}"
    );
    forge(pid, b"READY=1\nSTATUS=forged");
    // The forged datagram is read (the loop turns) and dropped.
    assert!(loop_turns(s.pid(), 3));
    let i = instance(&control);
    assert_eq!(i["ready"], false, "{i}");
    assert_eq!(i["status"], "warming up", "{i}");
    std::fs::write(&flag, b"").unwrap();
    assert!(
        wait_until(TIMEOUT, || instance(&control)["ready"] == true),
        "{}",
        s.log_text()
    );
    assert_eq!(instance(&control)["status"], "serving");
    let (code, table, _) = run_to_exit(&["status", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&format!("n: pid {pid}, ready, \"serving\"")),
        "{table}"
    );
    assert_eq!(tcp_port_exchange(port, b""), "hi\n");
}

/// systemd's own `systemd-notify --ready`, run by a shell child (a process
/// of the child's group, not the child itself), makes it ready.
#[test]
fn systemd_notify_from_the_childs_group_makes_it_ready() {
    if !Path::new("/usr/bin/systemd-notify").exists() {
        return skip(
            "readiness systemd-notify",
            "systemd-notify is not installed",
        );
    }
    let (port, mport) = (free_port(), free_port());
    let dir = TempDir::new("readysd");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}metrics = \"tcp://127.0.0.1:{mport}\"\n[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\n\
                 pass = \"listen_fds\"\nready_timeout = \"20s\"\nexec = {}\n",
                daemon_control(&control),
                sh("systemd-notify --ready --status='up from systemd-notify'; exec sleep 60")
            ),
            ..Start::default()
        },
    );
    let _client = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        wait_until(TIMEOUT, || instance(&control)["ready"] == true),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    assert_eq!(instance(&control)["status"], "up from systemd-notify");
    let pid = instance(&control)["pid"].as_i64().unwrap() as i32;
    let _kill = KillOnDrop::new(pid);
    let page = tcp_exchange(([127, 0, 0, 1], mport), b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        page.contains("summond_children_ready{service=\"n\"} 1"),
        "{page}"
    );
    // Ready in time: not stopped.
    assert!(!s.log_text().contains("ready_timeout"), "{}", s.log_text());
}

/// `ready_timeout`: a child that never says READY=1 is sent SIGTERM and
/// counted as a failed start, even though it exits 0 on SIGTERM.
#[test]
fn a_child_that_never_says_ready_is_stopped_as_a_failed_start() {
    let port = free_port();
    let dir = TempDir::new("readyto");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}[[service]]\nname = \"mute\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\n\
                 pass = \"listen_fds\"\nready_timeout = \"300ms\"\nexec = {}\n",
                daemon_control(&control),
                sh("trap 'exit 0' TERM; sleep 60 & wait")
            ),
            ..Start::default()
        },
    );
    let _client = connect_tcp(([127, 0, 0, 1], port).into());
    assert!(
        s.wait_log("did not send READY=1 within ready_timeout"),
        "{}",
        s.log_text()
    );
    assert!(
        wait_until(TIMEOUT, || {
            status_json(&control)["services"][0]["spawn_failures"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        }),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    assert_eq!(
        status_json(&control)["services"][0]["last_exit"],
        "exited with status 0"
    );
}

/// The status of the one instance of service `name`.
fn instance_of(control: &Path, name: &str) -> serde_json::Value {
    let status = status_json(control);
    let services = status["services"].as_array().cloned().unwrap_or_default();
    services
        .into_iter()
        .find(|s| s["name"] == name)
        .map(|s| s["instances"][0].clone())
        .unwrap_or_default()
}

/// A live upgrade carries each long-running child's readiness: one that
/// said READY=1 and STATUS= (python3-systemd's `notify`) is still ready
/// with its text after it, what it says after the upgrade is heard (its
/// NOTIFY_SOCKET was handed over), and a `ready_timeout` under way still
/// stops the child that never gets ready. A child started after the
/// upgrade gets a NOTIFY_SOCKET of its own too (the new image once
/// named its sockets from 0 again, and the names the handed-over ones
/// held made its bind fail: no readiness for it).
#[test]
fn readiness_status_and_ready_timeout_survive_an_upgrade() {
    if !have_python_systemd() {
        return skip("readiness upgrade", "python3-systemd is not installed");
    }
    let (port, mute_port, late_port) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("readyup");
    let flag = dir.path("go");
    let script = format!(
        "import os, socket, time\n\
         from systemd.daemon import notify\n\
         notify('READY=1\\nSTATUS=before')\n\
         for _ in range(600):\n    \
             if os.path.exists({flag:?}): break\n    \
             time.sleep(0.05)\n\
         notify('STATUS=after')\n\
         s = socket.socket(fileno=3)\n\
         while True:\n    \
             c, _ = s.accept(); c.sendall(b'hi\\n'); c.close()\n",
        flag = flag.display().to_string()
    );
    let services = format!(
        "[[service]]\nname = \"n\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\n\
         start = \"eager\"\npass = \"listen_fds\"\nready_timeout = \"30s\"\n\
         exec = [{PYTHON:?}, \"-c\", {}]\n\
         [[service]]\nname = \"mute\"\nlisten = \"tcp://127.0.0.1:{mute_port}\"\naccept = false\n\
         start = \"eager\"\npass = \"listen_fds\"\nready_timeout = \"6s\"\nexec = {}\n\
         [[service]]\nname = \"late\"\nlisten = \"tcp://127.0.0.1:{late_port}\"\naccept = false\n\
         pass = \"listen_fds\"\nexec = [{PYTHON:?}, \"-c\", {}]\n",
        toml_str(&script),
        sh("trap 'exit 0' TERM; sleep 60 & wait"),
        toml_str(&script),
    );
    let (s, _bin, control) = start_upgradable(dir, &services, Start::default());
    assert!(
        wait_until(TIMEOUT, || instance_of(&control, "n")["status"] == "before"),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    let pid = instance_of(&control, "n")["pid"].as_i64().unwrap() as i32;
    let _kill = KillOnDrop::new(pid);
    let mute = instance_of(&control, "mute")["pid"].as_i64().unwrap() as i32;
    let _kill_mute = KillOnDrop::new(mute);
    assert_eq!(instance_of(&control, "n")["ready"], true);
    upgrade_ok(&s, &control);
    // Not yet due (6 s from its start): the timeout must come from the
    // new image.
    assert!(
        !s.log_text().contains("did not send READY=1"),
        "{}",
        s.log_text()
    );
    let i = instance_of(&control, "n");
    assert_eq!(
        (i["pid"].as_i64(), &i["ready"]),
        (Some(pid as i64), &true.into()),
        "{i}"
    );
    assert_eq!(i["status"], "before", "{i}");
    std::fs::write(&flag, b"").unwrap();
    assert!(
        wait_until(TIMEOUT, || instance_of(&control, "n")["status"] == "after"),
        "a STATUS= sent after the upgrade: {}\n{}",
        status_json(&control),
        s.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(20), || s
            .log_text()
            .contains(&format!("mute: pid {mute} did not send READY=1"))),
        "the ready_timeout of a child handed over: {}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b""), "hi\n");
    // A child the new image starts: its READY=1 is heard.
    assert_eq!(tcp_port_exchange(late_port, b""), "hi\n");
    assert!(
        wait_until(TIMEOUT, || instance_of(&control, "late")["ready"] == true),
        "a child started after the upgrade: {}\n{}",
        status_json(&control),
        s.log_text()
    );
    let late = instance_of(&control, "late")["pid"].as_i64().unwrap() as i32;
    let _kill_late = KillOnDrop::new(late);
}
