//! Unix stream, datagram and abstract sockets: peer credentials, the
//! socket file's mode, stale files replaced, live ones refused, files
//! removed at stop.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

use crate::util::*;

#[test]
fn unix_stream_service_reports_the_peer_credentials() {
    let dir = TempDir::new("unix");
    let sock = dir.path("who.sock");
    let _s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"who\"\nlisten = \"unix://{}\"\nexec = {}\nsocket_mode = \"0640\"\n",
                sock.display(),
                sh("env")
            ),
            ..Start::default()
        },
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "socket_mode applied");
    let out = unix_exchange(&sock, b"");
    assert_eq!(
        field(&out, "REMOTE_PID"),
        Some(std::process::id().to_string().as_str()),
        "{out}"
    );
    let uid = nix::unistd::getuid().to_string();
    let gid = nix::unistd::getgid().to_string();
    assert_eq!(field(&out, "REMOTE_UID"), Some(uid.as_str()));
    assert_eq!(field(&out, "REMOTE_GID"), Some(gid.as_str()));
    assert_eq!(field(&out, "REMOTE_ADDR"), None);
}

#[test]
fn abstract_socket_service_answers() {
    let name = format!("summond-test-{}-{}", std::process::id(), free_port());
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"abs\"\nlisten = \"unix://@{name}\"\nexec = [\"cat\"]\n"
    ));
    assert_eq!(abstract_exchange(&name, b"abstract\n"), "abstract\n");
}

#[test]
fn unixgram_wait_mode_answers_each_datagram() {
    let dir = TempDir::new("gram");
    let sock = dir.path("gram.sock");
    let client_path = dir.path("client.sock");
    let _s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"gram\"\nlisten = \"unixgram://{}\"\nexec = [\"perl\", \"-e\", {}]\n",
                sock.display(),
                toml_str("my $peer = recv(STDIN, my $buf, 65536, 0); send(STDOUT, uc $buf, 0, $peer)")
            ),
            ..Start::default()
        },
    );
    let client = UnixDatagram::bind(&client_path).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for word in ["one", "two"] {
        client.send_to(word.as_bytes(), &sock).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], word.to_uppercase().as_bytes());
    }
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let sock = dir.path("stale.sock");
    drop(UnixListener::bind(&sock).unwrap()); // a dead server's leftover
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    let _s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"s\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n",
                sock.display()
            ),
            ..Start::default()
        },
    );
    assert_eq!(unix_exchange(&sock, b"fresh\n"), "fresh\n");
}

#[test]
fn live_unix_socket_is_an_error() {
    let dir = TempDir::new("live");
    let sock = dir.path("live.sock");
    let _live = UnixListener::bind(&sock).unwrap();
    let config = dir.path("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"s\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n",
            sock.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_to_exit(&["-c", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "bind unix://{} for service \"s\": {} is in use",
            sock.display(),
            sock.display()
        )),
        "{err}"
    );
    assert!(
        sock.exists(),
        "the live server's socket must not be removed"
    );
}

#[test]
fn socket_files_are_removed_on_sigterm() {
    let dir = TempDir::new("rm");
    let a = dir.path("a.sock");
    let b = dir.path("b.sock");
    let mut s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"a\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n\
                 [[service]]\nname = \"b\"\nlisten = \"unixgram://{}\"\nexec = [\"cat\"]\n",
                a.display(),
                b.display()
            ),
            ..Start::default()
        },
    );
    assert!(a.exists() && b.exists());
    s.signal(nix::libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(2))
        .expect("exits within a second or so");
    assert_eq!(status.code(), Some(0));
    assert!(!a.exists() && !b.exists(), "socket files removed");
}
