//! Unix stream, datagram and abstract sockets: peer credentials, the
//! socket file's mode, stale files replaced, live ones refused, files
//! removed at stop.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};

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
    let status = s.wait_exit(TIMEOUT).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(!a.exists() && !b.exists(), "socket files removed");
}

/// Issue 15 item 2: a reload that changes socket_mode/user/group must not
/// follow a symlink put in place of the socket file (root chmod'ed a 0600
/// root file to 0666 through one).
#[test]
fn reload_does_not_chmod_or_chown_through_a_symlink_swapped_in() {
    if !nix::unistd::getuid().is_root() {
        return skip(
            "reload_does_not_chmod_or_chown_through_a_symlink_swapped_in",
            "chown needs root",
        );
    }
    let dir = TempDir::new("symlink");
    let sock = dir.path("s.sock");
    let secret = dir.path("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = |mode: &str, extra: &str| {
        format!(
            "[[service]]\nname = \"s\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\nsocket_mode = \"{mode}\"\n{extra}",
            sock.display()
        )
    };
    let s = Summond::start_in(
        dir,
        Start {
            config: &config("0600", ""),
            ..Start::default()
        },
    );
    // Someone who can write the directory swaps the socket for a symlink.
    let moved = s.dir.path("moved.sock");
    std::fs::rename(&sock, &moved).unwrap();
    std::os::unix::fs::symlink(&secret, &sock).unwrap();
    let ok = s.reload(&config(
        "0666",
        "socket_user = \"nobody\"\nsocket_group = \"nogroup\"\n",
    ));
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "the symlink's target was chmod'ed:\n{}",
        s.log_text()
    );
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the target was chown'ed");
    assert!(ok, "the reload itself applies:\n{}", s.log_text());
    assert!(
        s.wait_log("is no longer the socket summond bound"),
        "the refusal is logged:\n{}",
        s.log_text()
    );
    drop(s);
    let _ = moved;
}

/// Issue 15 item 2: the socket file is born with socket_mode exactly,
/// whatever umask summond runs under (it used to be created by bind with
/// the umask's mode and chmod'ed by path afterwards).
#[test]
fn a_fresh_socket_file_has_exactly_socket_mode_whatever_the_umask() {
    let dir = TempDir::new("umask");
    let a = dir.path("a.sock");
    let b = dir.path("b.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"a\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\nsocket_mode = \"0600\"\n\
                 [[service]]\nname = \"b\"\nlisten = \"unixgram://{}\"\nexec = [\"cat\"]\nsocket_mode = \"0666\"\n",
                a.display(),
                b.display()
            ),
            wrapper: &["sh", "-c", "umask 0; exec \"$0\" \"$@\""],
            ..Start::default()
        },
    );
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&a), 0o600);
    assert_eq!(mode(&b), 0o666);
    // summond's own umask is left as it found it (children inherit it).
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert_eq!(field_colon(&status, "Umask"), Some("0000"), "{status}");
}

fn field_colon<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Issue 15 item 2: at stop summond removes only the socket file it bound;
/// a symlink or a file swapped in at its path stays.
#[test]
fn stop_leaves_a_file_swapped_in_for_the_socket() {
    let dir = TempDir::new("swapstop");
    let a = dir.path("a.sock");
    let b = dir.path("b.sock");
    let mut s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "[[service]]\nname = \"a\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n\
                 [[service]]\nname = \"b\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n",
                a.display(),
                b.display()
            ),
            ..Start::default()
        },
    );
    let target = s.dir.path("target");
    std::fs::write(&target, "keep\n").unwrap();
    std::fs::remove_file(&a).unwrap();
    std::os::unix::fs::symlink(&target, &a).unwrap();
    std::fs::remove_file(&b).unwrap();
    std::fs::write(&b, "plain\n").unwrap();
    s.signal(nix::libc::SIGTERM);
    assert!(s.wait_exit(TIMEOUT).is_some());
    assert!(std::fs::symlink_metadata(&a)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "plain\n");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Upgrade in place by SIGUSR2 and wait for the new image (the `n`th).
fn upgrade_by_signal(s: &Summond, n: usize) {
    s.signal(nix::libc::SIGUSR2);
    assert!(
        wait_until(TIMEOUT, || s.log_count("upgraded in place") == n),
        "{}",
        s.log_text()
    );
}

/// Review of issue 15 (fs, finding 6): an upgrade never applied a changed
/// socket_mode (or owner) to a unix socket it carried over, and no later
/// reload did either (0660 -> 0600, SIGUSR2, SIGHUP: still 0660); a
/// control socket path given to a service kept the control socket's
/// 0600. A carried socket takes the new config's options as a reload
/// gives a kept one, on the file summond bound only.
#[test]
fn an_upgrade_applies_changed_socket_options_to_the_sockets_it_carries() {
    let dir = TempDir::new("upgrade-sockmode");
    let path = dir.path("s.sock");
    let old_control = dir.path("control.sock");
    let service = |name: &str, path: &std::path::Path, mode: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\nsocket_mode = \"{mode}\"\n",
            path.display()
        )
    };
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}{}",
                daemon_control(&old_control),
                service("u", &path, "0660")
            ),
            ..Start::default()
        },
    );
    assert_eq!(mode_of(&path), 0o660);
    assert_eq!(mode_of(&old_control), 0o600);
    let listener = unix_listener_inode(&path).expect("listening");
    s.write_config(&format!(
        "{}{}",
        daemon_control(&old_control),
        service("u", &path, "0600")
    ));
    upgrade_by_signal(&s, 1);
    assert_eq!(
        unix_listener_inode(&path).as_deref(),
        Some(listener.as_str()),
        "the same socket, carried"
    );
    assert_eq!(mode_of(&path), 0o600, "{}", s.log_text());
    // A reload after it sees what was applied.
    assert!(s.reload(&format!(
        "{}{}",
        daemon_control(&old_control),
        service("u", &path, "0640")
    )));
    assert_eq!(mode_of(&path), 0o640, "{}", s.log_text());
    // The control socket's path becomes a service's, open to all.
    let new_control = s.dir.path("control2.sock");
    s.write_config(&format!(
        "{}{}{}",
        daemon_control(&new_control),
        service("u", &path, "0640"),
        service("c", &old_control, "0666")
    ));
    upgrade_by_signal(&s, 2);
    assert_eq!(mode_of(&old_control), 0o666, "{}", s.log_text());
    assert_eq!(mode_of(&new_control), 0o600);
    assert_eq!(unix_exchange(&old_control, b"c\n"), "c\n");
    assert_eq!(unix_exchange(&path, b"u\n"), "u\n");
}

/// Review of issue 15 (fs, finding 8): a reload whose change of a socket
/// file was refused (the path no longer named the socket summond bound)
/// recorded the new options anyway, so once the file was back no later
/// reload applied them. Options are recorded only once applied.
#[test]
fn a_socket_option_change_refused_at_a_reload_is_applied_by_the_next() {
    let dir = TempDir::new("reload-sockmode-retry");
    let path = dir.path("s.sock");
    let aside = dir.path("aside");
    let service = |mode: &str| {
        format!(
            "[[service]]\nname = \"u\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\nsocket_mode = \"{mode}\"\n",
            path.display()
        )
    };
    let s = Summond::start_in(
        dir,
        Start {
            config: &service("0660"),
            ..Start::default()
        },
    );
    assert_eq!(mode_of(&path), 0o660);
    std::fs::rename(&path, &aside).unwrap();
    assert!(s.reload(&service("0600")));
    assert!(
        s.log_text()
            .contains("is no longer the socket summond bound"),
        "{}",
        s.log_text()
    );
    assert_eq!(mode_of(&aside), 0o660, "not touched while away");
    std::fs::rename(&aside, &path).unwrap();
    assert!(s.reload(&service("0600")));
    assert_eq!(mode_of(&path), 0o600, "{}", s.log_text());
    assert_eq!(unix_exchange(&path, b"u\n"), "u\n");
}
