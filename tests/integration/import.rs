//! `summond import` on real inputs: the xinetd package's own xinetd.conf
//! and /etc/xinetd.d entries (unpacked, not installed, by .ci/run into the
//! directory SUMMOND_XINETD_ROOT names) and inetd.conf lines as
//! update-inetd writes them. The output passes `summond --check`, an
//! imported service is started and answers its real client, and input in
//! no known format is exit 2.

use std::path::PathBuf;

use crate::util::*;

fn xinetd_root() -> Option<PathBuf> {
    let root = std::env::var_os("SUMMOND_XINETD_ROOT").map(PathBuf::from);
    match root.filter(|r| r.join("etc/xinetd.d/daytime").exists()) {
        Some(r) => Some(r),
        None => {
            skip(
                "import of the xinetd package's files",
                "SUMMOND_XINETD_ROOT does not name an unpacked xinetd package (.ci/run sets it up)",
            );
            None
        }
    }
}

/// Serve `toml` with every address moved to a loopback port picked now
/// and nothing disabled.
fn serve_imported(toml: &str, moves: &[(&str, u16)]) -> Summond {
    let mut text = toml.replace("disabled = true\n", "");
    for (from, port) in moves {
        let (scheme, _) = from.split_once("://").unwrap();
        text = text.replace(from, &format!("{scheme}://127.0.0.1:{port}"));
    }
    Summond::start(&text)
}

#[test]
fn the_xinetd_packages_files_import_check_and_serve() {
    let Some(root) = xinetd_root() else {
        return;
    };
    let dir = TempDir::new("import-xinetd");
    // The package's xinetd.conf, its includedir pointed at the unpacked copy.
    let conf = std::fs::read_to_string(root.join("etc/xinetd.conf"))
        .unwrap()
        .replace(
            "includedir /etc/xinetd.d",
            &format!("includedir {}", root.join("etc/xinetd.d").display()),
        );
    let main = dir.path("xinetd.conf");
    std::fs::write(&main, conf).unwrap();
    let (code, toml, err) = run_to_exit(&["import", main.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for name in [
        "daytime-stream",
        "daytime-dgram",
        "echo-stream",
        "chargen-dgram",
        "time-stream",
    ] {
        assert!(
            toml.contains(&format!("name = \"{name}\"")),
            "{name} missing:\n{toml}"
        );
    }
    assert!(
        toml.contains("# not imported: xinetd's internal `servers`"),
        "{toml}"
    );
    // Every attribute of every file is named in the output.
    for file in std::fs::read_dir(root.join("etc/xinetd.d")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || !line.contains('=') {
                continue;
            }
            let attr = line.split(['=', ' ', '\t']).next().unwrap();
            let named = toml.lines().any(|l| {
                (l.starts_with("# carried over:") && l.split([':', ',']).any(|w| w.trim() == attr))
                    || l.starts_with(&format!("# not carried over: {attr} "))
            });
            assert!(named, "{attr} is not named:\n{toml}");
        }
    }
    let out = dir.path("summond.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, ok, err) = run_to_exit(&["--check", "-c", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{toml}");
    assert!(ok.starts_with("ok: "), "{ok}");

    // The daytime file alone, moved to free loopback ports and enabled.
    let (_, daytime, _) = run_to_exit(&[
        "import",
        root.join("etc/xinetd.d/daytime").to_str().unwrap(),
    ]);
    let (t, u) = (free_port(), free_port());
    let s = serve_imported(
        &daytime,
        &[("tcp://0.0.0.0:13", t), ("udp://0.0.0.0:13", u)],
    );
    let answer = tcp_port_exchange(t, b"");
    assert!(answer.ends_with("\r\n") && answer.len() == 26, "{answer:?}");
    assert!(udp_exchange(u, b"").is_some_and(|d| d.ends_with(b"\r\n")));
    drop(s);
}

#[test]
fn update_inetd_lines_import_check_and_serve() {
    let dir = TempDir::new("import-inetd");
    let conf = dir.path("inetd.conf");
    // What update-inetd writes: tab-separated, disabled lines #<off>#.
    std::fs::write(
        &conf,
        "# /etc/inetd.conf:  see inetd(8) for further informations.\n\
         #:INTERNAL: Internal services\n\
         daytime\tstream\ttcp\tnowait\troot\tinternal\n\
         #<off># echo\tstream\ttcp\tnowait\tnobody\t/bin/cat\tcat\n\
         time\tdgram\tudp\twait\troot\tinternal\n",
    )
    .unwrap();
    let (code, toml, err) = run_to_exit(&["import", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path("summond.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, ok, err) = run_to_exit(&["--check", "-c", out.to_str().unwrap()]);
    assert_eq!(
        (code, ok.as_str()),
        (0, "ok: 3 services\n"),
        "{err}\n{toml}"
    );
    assert!(
        toml.contains("exec = [\"/bin/cat\"]") && toml.contains("user = \"nobody\""),
        "{toml}"
    );

    let (echo, day, time) = (free_port(), free_port(), free_port());
    let moved = toml.replace("user = \"nobody\"\n", "");
    let _s = serve_imported(
        &moved,
        &[
            ("tcp://0.0.0.0:7", echo),
            ("tcp://0.0.0.0:13", day),
            ("udp://0.0.0.0:37", time),
        ],
    );
    assert_eq!(
        tcp_port_exchange(echo, b"via inetd.conf\n"),
        "via inetd.conf\n"
    );
    assert!(tcp_port_exchange(day, b"").ends_with("\r\n"));
    assert_eq!(udp_exchange(time, b"").map(|t| t.len()), Some(4));
}

#[test]
fn input_in_no_known_format_is_exit_2_with_its_path() {
    let dir = TempDir::new("import-bad");
    let junk = dir.path("junk");
    std::fs::write(&junk, "hello there\n").unwrap();
    let (code, out, err) = run_to_exit(&["import", junk.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with(&format!(
            "{}: neither inetd.conf lines, xinetd service blocks nor a systemd .socket unit",
            junk.display()
        )),
        "{err}"
    );
    let broken = dir.path("broken");
    std::fs::write(&broken, "service x\n{\n  port 12\n}\n").unwrap();
    let (code, _, err) = run_to_exit(&["import", broken.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!("{}:3: ", broken.display())),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&["import", dir.path("missing").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read it"), "{err}");
}

/// The .socket units Debian packages installed here, with their services:
/// dbus.socket (the system bus) and uuidd.socket. Both pass --check; the
/// imported system bus, moved to a socket of the test's own, is started
/// by summond on the first client and answers the real dbus-send.
#[test]
fn installed_socket_units_import_check_and_the_system_bus_answers() {
    let units = std::path::Path::new("/lib/systemd/system");
    let dbus = units.join("dbus.socket");
    if !dbus.exists() || !std::path::Path::new("/usr/bin/dbus-send").exists() {
        skip(
            "installed_socket_units_import_check_and_the_system_bus_answers",
            "dbus.socket and dbus-send are not installed",
        );
        return;
    }
    let mut args = vec!["import", dbus.to_str().unwrap()];
    let uuidd = units.join("uuidd.socket");
    if uuidd.exists() {
        args.push(uuidd.to_str().unwrap());
    }
    let (code, toml, err) = run_to_exit(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("exec = [\"/usr/bin/dbus-daemon\", \"--system\""),
        "{toml}"
    );
    assert!(
        toml.contains("pass = \"listen_fds\"") && toml.contains("accept = false"),
        "{toml}"
    );
    assert!(toml.contains("# not carried over: Type=notify"), "{toml}");
    let dir = TempDir::new("import-systemd");
    let out = dir.path("summond.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, ok, err) = run_to_exit(&["--check", "-c", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{toml}");
    assert!(ok.starts_with("ok: "));

    if !nix::unistd::geteuid().is_root() {
        skip(
            "installed_socket_units_import_check_and_the_system_bus_answers",
            "the system bus drops to messagebus, which needs root",
        );
        return;
    }
    let (_, bus_only, _) = run_to_exit(&["import", dbus.to_str().unwrap()]);
    let s =
        Summond::start(&bus_only.replace("/run/dbus/system_bus_socket", "{dir}/system_bus_socket"));
    let bus = format!("unix:path={}", s.dir.path("system_bus_socket").display());
    let (ok, reply) = dbus_call(&bus, "GetId");
    assert!(
        ok && reply.contains("string \""),
        "{reply}\n{}",
        s.log_text()
    );
}

/// A TCP exchange with 127.0.0.1:`port` from the loopback address `from`
/// (the client socket bound to it first): "" when summond closes a
/// refused client.
fn exchange_from(from: [u8; 4], port: u16, input: &[u8]) -> String {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::io::{Read, Write};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SockAddr::from(std::net::SocketAddr::from((from, 0))))
        .unwrap();
    s.connect(&SockAddr::from(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        port,
    ))))
    .unwrap();
    let mut s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = s.write_all(input);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// No rule of this machine's hosts.allow/hosts.deny may apply to `daemon`
/// (else the importer refuses what tcpd would check).
fn no_tcp_wrappers_rules() -> bool {
    ["/etc/hosts.allow", "/etc/hosts.deny"].iter().all(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    })
}

fn xinetd_service(name: &str, port: u16, extra: &str) -> String {
    format!(
        "service {name}\n{{\n  port = {port}\n  bind = 127.0.0.1\n  socket_type = stream\n  \
         wait = no\n  user = root\n  server = /bin/cat\n{extra}}}\n"
    )
}

/// only_from and no_access as xinetd reads them: zero octets at the right
/// are wildcards, `{a,b}` lists, `localhost` its two addresses, defaults
/// that a service's `=` replaces; a host name, an unknown user, or an
/// address list on a wait = yes server (whose child accepts) makes the
/// service written commented out with the reason; NAMEINARGS with tcpd
/// runs the wrapped program. The output passes --check, and served, a
/// client from outside only_from is closed unserved.
#[test]
fn xinetd_access_lists_import_as_xinetd_means_them_and_outsiders_are_refused() {
    let dir = TempDir::new("import-xinetd-access");
    let p: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let text = [
        "defaults\n{\n  per_source = 4\n  only_from = 127.0.0.0\n  log_type = SYSLOG daemon info\n}\n".to_string(),
        xinetd_service("near", p[0], "  only_from = 127.0.0.2\n"),
        xinetd_service("wide", p[1], ""),
        xinetd_service("far", p[2], "  only_from = 10.0.0.0 192.168.1.{1,2}\n  no_access = 10.9.0.0\n"),
        xinetd_service("local", p[3], "  only_from = localhost\n"),
        xinetd_service("nobody", p[4], "  only_from =\n"),
        xinetd_service("named", p[5], "  only_from = host.example\n"),
        xinetd_service("stranger", p[6], "  user = no-such-user-here\n")
            .replace("  user = root\n", ""),
        xinetd_service("waiter", p[7], "").replace("wait = no", "wait = yes"),
        xinetd_service(
            "wrapped",
            p[8],
            "  flags = NAMEINARGS\n  server_args = /bin/cat -n\n  only_from += 127.0.0.1\n",
        )
        .replace("/bin/cat\n", "/usr/sbin/tcpd\n"),
    ]
    .concat();
    let conf = dir.path("xinetd.conf");
    std::fs::write(&conf, text).unwrap();
    let (code, toml, err) = run_to_exit(&["import", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "allow = [\"127.0.0.2/32\"]\n",
        "max_per_source = 4\nallow = [\"127.0.0.0/8\"]\n",
        "allow = [\"10.0.0.0/8\", \"192.168.1.1/32\", \"192.168.1.2/32\"]\ndeny = [\"10.9.0.0/16\"]\n",
        "allow = [\"127.0.0.1/32\", \"::1/128\"]\n",
        "allow = []\n",
        "# not imported: only_from host.example: xinetd matches host, domain and network names",
        "# not imported: user no-such-user-here does not exist here",
        "# not imported: only_from: with wait = yes the server accepts its own clients",
        "# not carried over: per_source (defaults) = 4: with wait = yes one server runs at a time",
        "# not carried over: log_type (defaults) = SYSLOG daemon info: summond logs",
        "# carried over: socket_type, port, bind, wait, server, user, per_source (defaults), only_from (defaults)\n",
    ] {
        assert!(toml.contains(want), "missing {want:?}:\n{toml}");
    }
    if no_tcp_wrappers_rules() {
        assert!(
            toml.contains("exec = [\"/bin/cat\", \"-n\"]\n")
                && toml.contains(
                    "# not carried over: server = /usr/sbin/tcpd: tcp_wrappers' tcpd is unwrapped"
                ),
            "{toml}"
        );
    }
    let out = dir.path("summond.toml");
    std::fs::write(&out, &toml).unwrap();
    let (code, ok, err) = run_to_exit(&["--check", "-c", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{toml}");
    assert!(ok.starts_with("ok: "), "{ok}");

    let s = Summond::start(&toml);
    assert_eq!(exchange_from([127, 0, 0, 2], p[0], b"in\n"), "in\n");
    assert_eq!(exchange_from([127, 0, 0, 1], p[0], b"out\n"), "");
    assert!(s.wait_log("near: refused 127.0.0.1:"), "{}", s.log_text());
    assert_eq!(exchange_from([127, 0, 0, 1], p[1], b"wide\n"), "wide\n");
    assert_eq!(exchange_from([127, 0, 0, 1], p[2], b"far\n"), "");
    assert_eq!(exchange_from([127, 0, 0, 3], p[3], b"not local\n"), "");
    assert_eq!(exchange_from([127, 0, 0, 1], p[3], b"local\n"), "local\n");
    assert_eq!(exchange_from([127, 0, 0, 1], p[4], b"nobody\n"), "");
    if no_tcp_wrappers_rules() {
        assert_eq!(exchange_from([127, 0, 0, 1], p[8], b"x\n"), "     1\tx\n");
    }
}

/// inetd.conf lines with tcpd in front, as update-inetd writes them: the
/// wrapped program runs (a bare name from /usr/sbin, as tcpd finds it),
/// and a user unknown here makes the line written commented out.
#[test]
fn inetd_tcpd_lines_run_the_wrapped_program() {
    let dir = TempDir::new("import-inetd-tcpd");
    let conf = dir.path("inetd.conf");
    let port = free_port();
    std::fs::write(
        &conf,
        format!(
            "127.0.0.1:{port}\tstream\ttcp\tnowait\troot\t/usr/sbin/tcpd\t/bin/cat -n\n\
             #<off># tftp\tdgram\tudp\twait\troot\t/usr/sbin/tcpd\tin.tftpd -s /srv/tftp\n\
             discard\tstream\ttcp\tnowait\tno-such-user-here\tinternal\n"
        ),
    )
    .unwrap();
    let (code, toml, err) = run_to_exit(&["import", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("exec = [\"/usr/sbin/in.tftpd\", \"-s\", \"/srv/tftp\"]"),
        "{toml}"
    );
    assert!(
        toml.contains("# not imported: user no-such-user-here does not exist here"),
        "{toml}"
    );
    if !no_tcp_wrappers_rules() {
        assert!(
            toml.contains("# not imported: tcpd checks each client"),
            "{toml}"
        );
        return;
    }
    assert!(toml.contains("exec = [\"/bin/cat\", \"-n\"]"), "{toml}");
    let cat_only: String = toml
        .split("\n\n")
        .filter(|b| !b.contains("in.tftpd"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let _s = Summond::start(&cat_only);
    assert_eq!(tcp_port_exchange(port, b"x\n"), "     1\tx\n");
}

/// Nothing xinetd would refuse to start, or bind more narrowly, comes out
/// live and wider: a program with no `user` (xinetd disables it; summond
/// would run it as root) is written commented out; `interface` then
/// `bind` binds the first, as xinetd's one A_BIND attribute does; a second
/// `defaults` block of a file, which xinetd ignores, adds nobody to
/// `only_from`; and `include` of a file others cannot read never quotes it.
#[test]
fn xinetd_import_never_serves_what_xinetd_would_not() {
    let dir = TempDir::new("import-xinetd-closed");
    let conf = dir.path("xinetd.conf");
    let secret = dir.path("secret");
    std::fs::write(&secret, "root:$y$not-for-print:20228:0:99999:7:::\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let service = |name: &str, port: u16, extra: &str| {
        format!(
            "service {name}\n{{\n  type = UNLISTED\n  port = {port}\n  socket_type = stream\n  \
             wait = no\n  server = /bin/cat\n{extra}}}\n"
        )
    };
    let text = [
        "defaults\n{\n  only_from = 127.0.0.1\n}\ndefaults\n{\n  only_from = 0.0.0.0\n}\n"
            .to_string(),
        service("rootless", 7201, ""),
        service(
            "loopback",
            7202,
            "  user = nobody\n  interface = 127.0.0.1\n  bind = 0.0.0.0\n",
        ),
    ]
    .concat();
    std::fs::write(&conf, &text).unwrap();
    let (code, toml, err) = run_to_exit(&["import", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "# not imported: no `user`: xinetd requires one",
        "listen = \"tcp://127.0.0.1:7202\"\n",
        "allow = [\"127.0.0.1/32\"]\n",
        "# not carried over: bind = 0.0.0.0: xinetd ignores it",
        "# not carried over: only_from = 0.0.0.0 in a second defaults block of its file",
    ] {
        assert!(toml.contains(want), "missing {want:?}:\n{toml}");
    }
    assert!(!toml.contains("0.0.0.0/0"), "{toml}");
    std::fs::write(&conf, format!("include {}\n", secret.display())).unwrap();
    let (code, _, err) = run_to_exit(&["import", "--from", "xinetd", conf.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("not-for-print"), "{err}");
}
