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
