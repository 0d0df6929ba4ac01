//! Config validation on inline TOML, asserting whole error lines.

use super::*;

fn host(is_root: bool) -> Host {
    Host {
        path_var: "/usr/local/bin:/usr/bin:/bin".into(),
        is_root,
        runtime_base: Some("/run".into()),
    }
}

fn ok(text: &str) -> Config {
    parse(Path::new("t.toml"), text, &host(true)).unwrap_or_else(|e| panic!("{e}"))
}

fn errs(text: &str, is_root: bool) -> Vec<String> {
    match parse(Path::new("t.toml"), text, &host(is_root)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// `forward` written as an IPv4-mapped IPv6 address is the IPv4 address
/// (whose listeners the checks of who holds it search).
#[test]
fn a_mapped_forward_address_is_its_ipv4_address() {
    let c = ok(
        "[[service]]\nname = \"f\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n\
                forward = \"tcp://[::ffff:127.0.0.1]:7008\"\n",
    );
    let to = &c.services[0].forward.as_ref().unwrap().to;
    assert_eq!(to.to_string(), "tcp://127.0.0.1:7008");
    let c = ok(
        "[[service]]\nname = \"f\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n\
                forward = \"tcp://[::1]:7008\"\n",
    );
    let to = &c.services[0].forward.as_ref().unwrap().to;
    assert_eq!(to.to_string(), "tcp://[::1]:7008");
}

#[test]
fn minimal_service_gets_the_defaults() {
    let c =
        ok("[[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n");
    assert_eq!(c.daemon, DaemonSpec::default());
    let s = &c.services[0];
    assert_eq!(s.name, "echo");
    assert!(s.accept);
    assert_eq!(s.pass, Pass::Stdio);
    assert_eq!(s.stderr, StderrMode::Inherit);
    assert!(s.program.is_absolute() && s.program.ends_with("cat"));
    assert_eq!(s.exec, vec!["cat"]);
    assert_eq!(s.mode(), "accept/stdio");
}

#[test]
fn tcp_and_udp_on_one_port_are_different_addresses() {
    let c = ok("[[service]]\nname = \"dns\"\nlisten = [\"tcp://127.0.0.1:53\", \"udp://127.0.0.1:53\"]\nexec = [\"cat\"]\n");
    assert_eq!(c.services[0].listen.len(), 2);
    assert!(
        !c.services[0].accept,
        "a datagram address makes accept default to false"
    );
}

#[test]
fn empty_config_is_valid() {
    assert!(ok("").services.is_empty());
    assert_eq!(ok("[daemon]\nmax_children = 5\n").daemon.max_children, 5);
}

#[test]
fn datagram_services_default_to_pass_mode() {
    let c =
        ok("[[service]]\nname = \"u\"\nlisten = \"udp://127.0.0.1:6969\"\nexec = [\"/bin/cat\"]\n");
    assert!(!c.services[0].accept);
}

#[test]
fn full_service_parses() {
    let c = ok(r#"
[daemon]
max_children = 10
control = "/run/summond.sock"

[[service]]
name = "web"
listen = ["unix:///tmp/x.sock", { address = "unix:///tmp/y.sock", name = "second" }]
exec = ["/bin/sh", "-c", "exit 0"]
accept = false
pass = "listen_fds"
stderr = "null"
user = "nobody"
env = { A = "1", B = "two" }
max_instances = 3
socket_mode = "0660"
"#);
    let s = &c.services[0];
    assert_eq!(s.listen.len(), 2);
    assert_eq!(s.listen[1].name.as_deref(), Some("second"));
    assert_eq!(s.mode(), "pass/listen_fds");
    assert_eq!(s.socket.socket_mode, Some(0o660));
    assert_eq!(
        s.env,
        vec![("A".into(), "1".into()), ("B".into(), "two".into())]
    );
    let creds = s.credentials.as_ref().unwrap();
    assert!(creds.uid.is_some() && creds.groups.contains(&creds.gid));
    assert_eq!(c.daemon.control, Some(PathBuf::from("/run/summond.sock")));
}

#[test]
fn every_error_is_reported_with_its_line() {
    let got = errs(
        r#"[[service]]
name = "a"
listen = "tcp://127.0.0.1:0"
exec = ["cat"]
colour = "red"

[[service]]
name = "a"
listen = "udp://127.0.0.1:5000"
exec = "cat"
accept = true
"#,
        true,
    );
    let unknown = format!(
        "t.toml:5:1: unknown key `colour` in [[service]] (expected one of: {})",
        SERVICE_KEYS.join(", ")
    );
    assert_eq!(
        got,
        vec![
            "t.toml:3:10: `listen`: port 0 is not allowed: name the port to listen on",
            unknown.as_str(),
            "t.toml:8:8: duplicate service name \"a\" (first defined at line 2)",
            "t.toml:10:8: `exec` must be an array of strings like [\"/bin/cat\"], found a string",
            "t.toml:11:10: `accept = true` is impossible on datagram socket udp://127.0.0.1:5000: nothing to accept, the service must read the datagrams itself (accept = false)",
        ]
    );
}

#[test]
fn identity_keys_need_root() {
    let got = errs(
        "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\nuser = \"nobody\"\n",
        false,
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("t.toml:5:8: `user` needs summond to run as root"),
        "{got:?}"
    );
}

#[test]
fn reserved_environment_cannot_be_set() {
    let got = errs(
        "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\nenv = { LISTEN_FDS = \"3\" }\n",
        true,
    );
    assert_eq!(
        got,
        vec!["t.toml:5:9: `env`: LISTEN_FDS is set by summond itself and cannot be configured"]
    );
}

#[test]
fn a_reserved_name_in_passenv_is_reported_under_passenv() {
    let got = errs(
        "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\nclear_env = true\npassenv = [\"PROXY_ADDR\", \"LISTEN_PID\"]\n",
        true,
    );
    assert_eq!(
        got,
        vec![
            "t.toml:6:12: `passenv`: PROXY_ADDR would describe the client, which only summond does; it cannot be configured",
            "t.toml:6:26: `passenv`: LISTEN_PID is set by summond itself and cannot be configured",
        ]
    );
}

#[test]
fn syntax_errors_carry_a_position() {
    let got = errs("[[service]]\nname = \"a\nlisten = 1\n", true);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("t.toml:2:"), "{got:?}");
}

#[test]
fn a_relative_working_directory_is_resolved_against_the_config_files_directory() {
    let dir = std::env::temp_dir().join(format!("summond-cfg-wd-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let text = "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nworking_directory = \"sub\"\n";
    let config = parse(&dir.join("c.toml"), text, &host(false)).unwrap();
    let wd = &config.services[0].sandbox.working_directory;
    assert!(wd.is_absolute(), "{}", wd.display());
    assert_eq!(wd, &std::fs::canonicalize(&dir).unwrap().join("sub"));
    let jailed = "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nworking_directory = \"sub\"\nchroot = \"/\"\n";
    let got = errs(jailed, true);
    assert!(
        got.iter()
            .any(|e| e.contains("must be an absolute path inside `chroot`")),
        "{got:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_config_survives_the_upgrade_state_unchanged() {
    // The old image of a failed upgrade serves on with the config it ran,
    // carried through JSON: every kind of value must come back as it was.
    let c = ok(r#"
[daemon]
max_children = 7
control = "/run/s.sock"
log_format = "json"
metrics = "tcp://127.0.0.1:9101"

[[service]]
name = "all"
listen = ["tcp://127.0.0.1:7007", "tcp://[::1]:7007"]
exec = ["cat", "-u"]
stderr = "null"
env = { A = "1" }
max_instances = 3
rate = "10/1s"
per_source_rate = "2/1m"
per_source_prefix = { v4 = 24, v6 = 56 }
allow = ["10.0.0.0/8", "::1"]
deny = ["10.1.0.0/16"]
max_runtime = "1500ms"
umask = "027"
nice = 5
rlimits = { nofile = 1024, core = "infinity" }
backlog = 16
keepalive = true
banner = "hello"

[[service]]
name = "held"
listen = ["udp://[::1]:7", "unix:///run/a.sock", "unixgram://@abs"]
exec = ["cat"]
accept = false
pass = "listen_fds"
socket_mode = "0660"

[[service]]
name = "echo"
listen = "tcp://127.0.0.1:7"
exec = ["internal:echo"]
"#);
    let json = serde_json::to_value(&c).unwrap();
    let back: Config = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
    // Paths are bytes (fs review finding 3): every path a config holds
    // goes and comes back when it is not UTF-8.
    let odd = |s: &str| {
        use std::os::unix::ffi::OsStringExt;
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0xff);
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    };
    let mut c = c;
    c.path = odd("/etc/nu/s.toml");
    c.daemon.control = Some(odd("/etc/nu/control.sock"));
    for s in &mut c.services {
        s.program = odd("/opt/bin/prog");
        s.sandbox.working_directory = odd("/srv/work");
        s.sandbox.chroot = Some(odd("/srv/jail"));
    }
    let back: Config = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn idle_timeout_is_for_an_internal_services_tcp_clients() {
    let svc = |listen: &str, exec: &str, extra: &str| {
        format!("[[service]]\nname = \"s\"\nlisten = {listen}\nexec = [\"{exec}\"]\n{extra}")
    };
    let tcp = "\"tcp://127.0.0.1:9\"";
    let c = ok(&svc(tcp, "internal:discard", ""));
    assert_eq!(
        c.services[0].idle_timeout,
        Duration::from_secs(300),
        "SPEC's default"
    );
    let c = ok(&svc(tcp, "internal:discard", "idle_timeout = \"1500ms\"\n"));
    assert_eq!(c.services[0].idle_timeout, Duration::from_millis(1500));
    let both = "[\"tcp://127.0.0.1:7\", \"udp://127.0.0.1:7\"]";
    assert!(
        ok(&svc(both, "internal:echo", "idle_timeout = \"1m\"\n")).services[0].idle_timeout
            == Duration::from_secs(60)
    );
    for (listen, exec, value, want) in [
        (tcp, "cat", "\"1m\"", "applies to internal services only"),
        (
            "\"udp://127.0.0.1:7\"",
            "internal:echo",
            "\"1m\"",
            "has no use without a TCP address",
        ),
        (tcp, "internal:echo", "\"0s\"", "is zero"),
        (tcp, "internal:echo", "30", "string"),
    ] {
        let e = errs(
            &svc(listen, exec, &format!("idle_timeout = {value}\n")),
            true,
        );
        assert!(
            e.len() == 1 && e[0].starts_with("t.toml:5:") && e[0].contains(want),
            "{listen} {exec} {value}: {e:?}"
        );
    }
}

#[test]
fn a_relative_control_socket_is_taken_from_the_files_directory() {
    let text = "[daemon]\ncontrol = \"../run/c.sock\"\n";
    let c = parse(Path::new("/etc/summond/summond.toml"), text, &host(true)).unwrap();
    assert_eq!(
        c.daemon.control.as_deref(),
        Some(Path::new("/etc/summond/../run/c.sock"))
    );
    let c = ok("[daemon]\ncontrol = \"/run/c.sock\"\n");
    assert_eq!(c.daemon.control.as_deref(), Some(Path::new("/run/c.sock")));
    assert_eq!(beside(Path::new("t.toml"), "c.sock"), Path::new("c.sock"));
}

const SVC: &str =
    "[[service]]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n";

#[test]
fn runtime_directory_names_are_checked_with_their_positions() {
    let c = ok(&format!(
        "{SVC}runtime_directory = [\"sshd\", \"a/b\"]\nruntime_directory_mode = \"0700\"\n"
    ));
    let rd = c.services[0].runtime_directory.as_ref().unwrap();
    assert_eq!(rd.base, Path::new("/run"));
    assert_eq!(rd.names, ["sshd", "a/b"]);
    assert_eq!(rd.mode, 0o700);
    let c = ok(&format!("{SVC}runtime_directory = \"sshd\"\n"));
    assert_eq!(
        c.services[0].runtime_directory.as_ref().unwrap().mode,
        0o755
    );

    assert_eq!(
        errs(&format!("{SVC}runtime_directory = [\"ok\", \"/run/x\", \"a/../b\", \"a//b\", \"a b\"]\n"), true),
        [
            "t.toml:5:28: `runtime_directory`: \"/run/x\" must be relative (it is made under /run, or $XDG_RUNTIME_DIR)",
            "t.toml:5:38: `runtime_directory`: \"a/../b\" has a \".\" or \"..\" segment",
            "t.toml:5:48: `runtime_directory`: \"a//b\" has an empty segment",
            "t.toml:5:56: `runtime_directory`: \"a b\" may use only letters, digits, '_', '.', '-' and '/' between names",
        ]
    );
    assert_eq!(
        errs(&format!("{SVC}runtime_directory_mode = \"0700\"\n"), true),
        ["t.toml:5:26: `runtime_directory_mode`: has no use without runtime_directory"]
    );
    assert_eq!(
        errs(&format!("{SVC}runtime_directory = \"x\"\nruntime_directory_mode = \"rwx\"\n"), true),
        ["t.toml:6:26: `runtime_directory_mode`: \"rwx\" is not an octal file mode like \"0755\""]
    );
}

#[test]
fn a_runtime_directory_shared_by_services_must_have_one_owner_and_mode() {
    // Each service would give it its own owner and mode, and which one
    // wins would depend on which service a reload touched last.
    let two = |a: &str, b: &str| {
        format!(
            "{SVC}runtime_directory = \"shared\"\n{a}\n[[service]]\nname = \"t\"\n\
             listen = \"tcp://127.0.0.1:7008\"\nexec = [\"cat\"]\nruntime_directory = [\"own\", \"shared\"]\n{b}\n"
        )
    };
    assert_eq!(ok(&two("", "")).services.len(), 2);
    assert_eq!(
        errs(&two("", "runtime_directory_mode = \"0700\""), true),
        ["t.toml:11:21: `runtime_directory`: \"shared\" is also service \"s\"'s runtime directory, with another owner or mode (it can have only one)"]
    );
    // A disabled service makes none.
    assert_eq!(
        ok(&two("disabled = true", "runtime_directory_mode = \"0700\""))
            .services
            .len(),
        2
    );
}

#[test]
fn runtime_directory_as_non_root_needs_xdg_runtime_dir() {
    let text = format!("{SVC}runtime_directory = \"x\"\n");
    let mut h = host(false);
    h.runtime_base = Some("/run/user/1000".into());
    let c = parse(Path::new("t.toml"), &text, &h).unwrap();
    let rd = c.services[0].runtime_directory.as_ref().unwrap();
    assert_eq!(
        rd.paths().collect::<Vec<_>>(),
        [Path::new("/run/user/1000/x")]
    );
    h.runtime_base = None;
    let e = parse(Path::new("t.toml"), &text, &h).unwrap_err();
    assert_eq!(
        e.0[0].to_string(),
        "t.toml:5:21: `runtime_directory`: summond is not root and XDG_RUNTIME_DIR is not set to an absolute path, so there is no directory to make it in"
    );
}

#[test]
fn socket_directory_mode_is_for_unix_socket_files_only() {
    let unix = "[[service]]\nname = \"u\"\nlisten = \"unix:///run/x/s.sock\"\nexec = [\"cat\"]\n";
    let c = ok(&format!("{unix}socket_directory_mode = \"0750\"\n"));
    assert_eq!(c.services[0].socket.directory_mode, Some(0o750));
    assert_eq!(ok(unix).services[0].socket.directory_mode, None);
    assert_eq!(
        errs(&format!("{SVC}socket_directory_mode = \"0755\"\n"), true),
        ["t.toml:5:25: `socket_directory_mode`: applies to unix socket files, and this service listens on none"]
    );
}

#[test]
fn extra_groups_are_resolved_at_load_and_follow_the_users_groups() {
    let root = nix::unistd::Group::from_gid(0.into())
        .unwrap()
        .unwrap()
        .name;
    let c = ok(&format!(
        "{SVC}user = \"nobody\"\nextra_groups = [\"{root}\"]\n"
    ));
    let creds = c.services[0].credentials.as_ref().unwrap();
    assert_eq!(creds.groups.last(), Some(&0), "{:?}", creds.groups);
    let c = ok(&format!(
        "{SVC}user = \"nobody\"\nsupplementary_groups = false\nextra_groups = [\"{root}\"]\n"
    ));
    let creds = c.services[0].credentials.as_ref().unwrap();
    assert_eq!(creds.groups, [creds.gid, 0]);
    assert_eq!(
        errs(
            &format!("{SVC}extra_groups = [\"{root}\", \"no-such-group-here\"]\n"),
            true
        ),
        [format!(
            "t.toml:5:{}: `extra_groups`: no such group \"no-such-group-here\"",
            19 + root.len() + 2
        )]
    );
    assert_eq!(
        errs(&format!("{SVC}extra_groups = [\"{root}\"]\n"), false),
        ["t.toml:5:16: `extra_groups` needs summond to run as root (it cannot change a child's identity otherwise)"]
    );
}

#[test]
fn runtime_directory_and_extra_groups_have_no_use_with_an_internal_service() {
    let root = nix::unistd::Group::from_gid(0.into())
        .unwrap()
        .unwrap()
        .name;
    let text = format!(
        "[[service]]\nname = \"e\"\nlisten = \"tcp://127.0.0.1:7\"\nexec = [\"internal:echo\"]\nruntime_directory = \"x\"\nextra_groups = [\"{root}\"]\n"
    );
    assert_eq!(
        errs(&text, true),
        [
            "t.toml:5:21: `runtime_directory`: has no use with an internal service (no child)",
            "t.toml:6:16: `extra_groups`: has no use with an internal service (no child)",
        ]
    );
}

#[test]
fn proxy_protocol_needs_proxy_from_tcp_and_accept() {
    let base = "[[service]]\nname = \"p\"\nexec = [\"cat\"]\n";
    let c = ok(&format!(
        "{base}listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/8\"]\n"
    ));
    let p = c.services[0].proxy.as_ref().unwrap();
    assert_eq!(p.version, crate::proxy::Version::V2);
    assert!(p.trusts("10.1.2.3".parse().unwrap()) && !p.trusts("11.0.0.1".parse().unwrap()));
    assert!(
        ok(&format!("{base}listen = \"tcp://127.0.0.1:1\"\n")).services[0]
            .proxy
            .is_none()
    );
    let e = |rest: &str| errs(&format!("{base}{rest}"), true);
    assert_eq!(
        e("listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v2\"\n"),
        ["t.toml:5:18: `proxy_protocol`: needs proxy_from: the load balancers that may send a header"]
    );
    assert_eq!(
        e("listen = \"tcp://127.0.0.1:1\"\nproxy_from = [\"10.0.0.0/8\"]\n"),
        ["t.toml:5:14: `proxy_from`: has no use without proxy_protocol"]
    );
    assert_eq!(
        e("listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v3\"\nproxy_from = [\"10.0.0.0/33\"]\n"),
        [
            "t.toml:5:18: `proxy_protocol`: \"v3\" is not one of \"v1\", \"v2\", \"any\"; did you mean \"v1\"?",
            "t.toml:6:15: `proxy_from`: prefix length \"33\" must be a number from 0 to 32",
        ]
    );
    assert_eq!(
        e("listen = \"unix:///run/p.sock\"\nproxy_protocol = \"v1\"\nproxy_from = [\"10.0.0.0/8\"]\n"),
        ["t.toml:5:18: `proxy_protocol`: needs TCP sockets (proxy_from names the balancers by address; a unix peer has none)"]
    );
    assert_eq!(
        e("listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v1\"\nproxy_from = []\n"),
        ["t.toml:6:14: `proxy_from`: is empty: no balancer could send a header, so every connection would be refused"]
    );
    // Wider than any private block: the whole Internet may lie about
    // its address, unless that is said in so many words.
    let wide = "t.toml:6:15: `proxy_from`: \"0.0.0.0/0\" lets most of the Internet send a PROXY header and name any client";
    let got = e(
        "listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v1\"\nproxy_from = [\"0.0.0.0/0\"]\n",
    );
    assert!(got.len() == 1 && got[0].starts_with(wide), "{got:?}");
    for block in ["::/0", "0.0.0.0/7", "2000::/3", "::ffff:0.0.0.0/96"] {
        let got = e(&format!("listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v1\"\nproxy_from = [\"10.0.0.0/8\", \"{block}\"]\n"));
        assert!(
            got.len() == 1 && got[0].contains(&format!("`proxy_from`: \"{block}\" lets")),
            "{got:?}"
        );
    }
    for narrow in ["10.0.0.0/8", "fc00::/7", "192.168.0.0/16"] {
        ok(&format!("{base}listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v1\"\nproxy_from = [\"{narrow}\"]\n"));
    }
    let any = ok(&format!(
        "{base}listen = \"tcp://127.0.0.1:1\"\nproxy_protocol = \"v1\"\nproxy_from = [\"any\"]\n"
    ));
    let p = any.services[0].proxy.as_ref().unwrap();
    for peer in ["203.0.113.9", "2001:db8::1", "::ffff:198.51.100.1"] {
        assert!(p.trusts(peer.parse().unwrap()), "{peer}");
    }
    let no_accept = e("listen = \"tcp://127.0.0.1:1\"\naccept = false\nproxy_protocol = \"v1\"\nproxy_from = [\"10.0.0.0/8\"]\n");
    assert_eq!(no_accept.len(), 2, "{no_accept:?}");
    assert!(
        no_accept[0].starts_with("t.toml:6:18: `proxy_protocol`"),
        "{no_accept:?}"
    );
}
