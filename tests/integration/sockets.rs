//! Listener options, read back from summond's own sockets (duplicated out
//! of it with pidfd_getfd): backlog, reuse_port, keepalive, nodelay,
//! freebind, v6only = false as one dual-stack socket whose IPv4 clients
//! are plain IPv4 everywhere, socket_user/socket_group, and options that
//! change on a reload applied to the kept socket.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::util::*;

#[test]
fn backlog_reuse_port_keepalive_nodelay_and_freebind_are_set_on_the_listener() {
    let (plain, tuned) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[[service]]\nname = \"plain\"\nlisten = \"tcp://127.0.0.1:{plain}\"\nexec = [\"cat\"]\n\
         [[service]]\nname = \"tuned\"\nlisten = \"tcp://127.0.0.1:{tuned}\"\nexec = [\"cat\"]\n\
         backlog = 17\nreuse_port = true\nkeepalive = true\nnodelay = true\nfreebind = true\n"
    ));
    let p = socket_of(s.pid(), &listening_inode(plain).unwrap());
    assert_eq!(listen_backlog(&p), 4096, "default backlog");
    assert!(!p.reuse_port().unwrap() && !p.keepalive().unwrap() && !p.tcp_nodelay().unwrap());
    let t = socket_of(s.pid(), &listening_inode(tuned).unwrap());
    assert_eq!(listen_backlog(&t), 17);
    assert!(t.reuse_port().unwrap());
    assert!(t.keepalive().unwrap());
    assert!(t.tcp_nodelay().unwrap());
    assert!(t.freebind_v4().unwrap());
    // A second server may share a reuse_port address.
    let twin = std::net::TcpListener::bind(("127.0.0.1", tuned));
    assert!(
        twin.is_err(),
        "std binds without SO_REUSEPORT, so it must fail"
    );
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], tuned)).into())
        .expect("reuse_port lets a second socket bind the address");
}

#[test]
fn accepted_connections_inherit_keepalive_and_nodelay() {
    let port = free_port();
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"k\"\nlisten = \"tcp://127.0.0.1:{port}\"\nkeepalive = true\nnodelay = true\n\
         exec = [\"perl\", \"-MSocket=:all\", \"-e\", {}]\n",
        toml_str(
            "print 'keepalive=', unpack('i', getsockopt(STDIN, SOL_SOCKET, SO_KEEPALIVE)), \"\\n\"; \
             print 'nodelay=', unpack('i', getsockopt(STDIN, IPPROTO_TCP, TCP_NODELAY)), \"\\n\";"
        )
    ));
    let out = tcp_port_exchange(port, b"");
    assert_eq!(field(&out, "keepalive"), Some("1"), "{out}");
    assert_eq!(field(&out, "nodelay"), Some("1"), "{out}");
}

#[test]
fn a_dual_stack_listener_sees_ipv4_clients_as_plain_ipv4_everywhere() {
    if !ipv6_available() {
        skip(
            "a_dual_stack_listener_sees_ipv4_clients_as_plain_ipv4_everywhere",
            "no IPv6 here",
        );
        return;
    }
    let port = free_port();
    let s = Summond::start(&format!(
        "[[service]]\nname = \"dual\"\nlisten = \"tcp://[::]:{port}\"\nv6only = false\n\
         allow = [\"127.0.0.1/32\", \"::1/128\"]\nmax_per_source = 1\nexec = {}\n",
        sh("echo REMOTE_ADDR=$REMOTE_ADDR; echo TCPREMOTEIP=$TCPREMOTEIP; read x")
    ));
    let sock = socket_of(s.pid(), &listening_inode(port).unwrap());
    assert!(!sock.only_v6().unwrap(), "one socket for both families");
    // IPv4 client through the IPv6 socket.
    let c = connect_tcp(([127, 0, 0, 1], port).into());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(&c));
    assert_eq!(lines.next().unwrap().unwrap(), "REMOTE_ADDR=127.0.0.1");
    assert_eq!(lines.next().unwrap().unwrap(), "TCPREMOTEIP=127.0.0.1");
    let local_port = c.local_addr().unwrap().port();
    assert!(
        s.wait_log(&format!("dual: connection from 127.0.0.1:{local_port} ")),
        "{}",
        s.log_text()
    );
    // The per-source key is the IPv4 address too.
    let extra = connect_tcp(([127, 0, 0, 1], port).into());
    let extra_port = extra.local_addr().unwrap().port();
    assert!(
        s.wait_log(&format!(
            "dual: refused 127.0.0.1:{extra_port} (max_per_source 1 reached)"
        )),
        "{}",
        s.log_text()
    );
}

#[test]
fn changed_socket_mode_and_owner_are_applied_to_a_kept_socket_file_on_reload() {
    let dir = TempDir::new("sockmode");
    let path = dir.path("s.sock");
    let service = |extra: &str| {
        format!(
            "[[service]]\nname = \"u\"\nlisten = \"unix://{}\"\nexec = [\"cat\"]\n{extra}",
            path.display()
        )
    };
    let s = Summond::start_in(
        dir,
        Start {
            config: &service("socket_mode = \"0600\"\n"),
            ..Start::default()
        },
    );
    // The listening socket itself, not its file's inode number (a file
    // removed and bound again may get the same number back): a duplicate
    // of it held here keeps its sockfs inode from being reused, and
    // summond must hold that very socket after the reload.
    let listener = unix_listener_inode(&path).expect("listening on the path");
    let _held = socket_of(s.pid(), &listener);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let root = nix::unistd::geteuid().is_root();
    let owner = if root {
        "socket_user = \"nobody\"\nsocket_group = \"nogroup\"\n"
    } else {
        ""
    };
    assert!(s.reload(&service(&format!("socket_mode = \"0640\"\n{owner}"))));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        unix_listener_inode(&path).as_deref(),
        Some(listener.as_str()),
        "the same socket, kept"
    );
    assert!(
        fd_of_socket(s.pid(), &listener).is_some(),
        "summond still holds the socket it listened on before the reload"
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o640,
        "new mode applied"
    );
    if root {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid.as_raw(), nogroup.gid.as_raw())
        );
    } else {
        skip(
            "changed_socket_mode_and_owner_are_applied_to_a_kept_socket_file_on_reload",
            "the owner part needs root",
        );
    }
    assert_eq!(unix_exchange(&path, b"still\n"), "still\n");
}
