//! `summond import` on small hand-written systemd units in a temp dir:
//! the command line as systemd would run it (with `$VAR` from the unit's
//! environment files), every key of every section named in the output,
//! refusals where a setting cannot be carried without opening the service
//! wider than the unit, and the output passing `summond --check`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::util::*;

/// Write `files` (name, text) into `dir` and import the first one, with
/// `env` added to the importer's environment. Returns (exit, stdout,
/// stderr).
fn import_with_env(
    dir: &TempDir,
    files: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    for (name, text) in files {
        let path = dir.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text.replace("{dir}", dir.0.to_str().unwrap())).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_summond"));
    cmd.arg("import")
        .arg(dir.path(files[0].0))
        .stdin(Stdio::null());
    cmd.env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run summond import");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `import_with_env` that must exit 0; the output.
fn import(dir: &TempDir, files: &[(&str, &str)]) -> String {
    let (code, toml, err) = import_with_env(dir, files, &[]);
    assert_eq!(code, 0, "{err}\n{toml}");
    toml
}

/// `summond --check` on `toml` with the programs it names that are not
/// here replaced by /bin/cat.
fn assert_check_passes(dir: &TempDir, toml: &str) {
    let path = dir.path("summond.toml");
    std::fs::write(&path, toml.replace("/usr/sbin/sshd", "/bin/cat")).unwrap();
    let (code, out, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{toml}");
    assert!(out.starts_with("ok: "), "{out}");
}

/// Every `Key=` line of `unit` is named in `toml`: carried over, not
/// carried over with a reason, or in the reason a service is not
/// imported.
fn assert_every_key_named(unit: &str, toml: &str) {
    let carried: Vec<&str> = toml
        .lines()
        .filter_map(|l| l.strip_prefix("# carried over: "))
        .flat_map(|l| l.split(", "))
        .collect();
    for line in unit.lines().map(str::trim) {
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') || line.starts_with(' ') {
            continue;
        }
        let dropped = toml.contains(&format!("# not carried over: {key}="))
            || toml
                .lines()
                .any(|l| l.starts_with("# not imported: ") && l.contains(&format!("{key}=")));
        assert!(
            carried.contains(&key) || dropped,
            "{key} is not named in the output:\n{toml}"
        );
    }
}

fn exec_line(toml: &str) -> &str {
    toml.lines()
        .find(|l| l.trim_start_matches("# ").starts_with("exec = "))
        .unwrap_or_else(|| panic!("no exec line:\n{toml}"))
}

const SSH_SOCKET: &str = "\
[Unit]
Description=OpenBSD Secure Shell server socket
Before=sockets.target
ConditionPathExists=!{dir}/sshd_not_to_be_run

[Socket]
ListenStream=22
Accept=yes

[Install]
WantedBy=sockets.target
";

const SSH_SERVICE: &str = "\
[Unit]
Description=OpenBSD Secure Shell server per-connection daemon
Documentation=man:sshd(8) man:sshd_config(5)
After=auditd.service

[Service]
EnvironmentFile=-{dir}/default/ssh
ExecStart=-/usr/sbin/sshd -i $SSHD_OPTS
StandardInput=socket
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
";

/// Debian 12's ssh.socket and ssh@.service: `$SSHD_OPTS` becomes the
/// words /etc/default/ssh gives it, split as systemd splits them (quotes
/// kept together), the variable goes into `env`, a comment says the file
/// was read at import, RuntimeDirectory= is carried, and every key of
/// both files is named. (Before: `exec = [..., "$SSHD_OPTS"]`, sshd's
/// "Extra argument", and RuntimeDirectory= dropped without a word.)
#[test]
fn debian_ssh_socket_gets_sshd_opts_from_its_environment_file() {
    let dir = TempDir::new("units-ssh");
    let opts = "# Options to pass to sshd\nSSHD_OPTS=\"-o 'Banner none' -4\"\n";
    let toml = import(
        &dir,
        &[
            ("ssh.socket", SSH_SOCKET),
            ("ssh@.service", SSH_SERVICE),
            ("default/ssh", opts),
        ],
    );
    assert_eq!(
        exec_line(&toml),
        r#"exec = ["/usr/sbin/sshd", "-i", "-o", "Banner none", "-4"]"#,
        "{toml}"
    );
    assert!(
        toml.contains(r#""SSHD_OPTS" = "-o 'Banner none' -4""#),
        "{toml}"
    );
    // systemd's MaxConnections= default for Accept=yes, written out.
    assert!(toml.contains("max_instances = 64"), "{toml}");
    assert!(toml.contains("runtime_directory = \"sshd\""), "{toml}");
    assert!(toml.contains("runtime_directory_mode = \"0755\""), "{toml}");
    assert!(
        toml.contains("default/ssh") && toml.contains("import again"),
        "{toml}"
    );
    assert!(!toml.contains("# not imported"), "{toml}");
    assert_every_key_named(SSH_SOCKET, &toml);
    assert_every_key_named(SSH_SERVICE, &toml);
    assert_check_passes(&dir, &toml);
}

/// Debian 12's /etc/default/ssh says `SSHD_OPTS=`: the empty variable
/// gives no word; a missing optional file is a comment, and the service
/// is written as systemd runs it then.
#[test]
fn an_empty_or_missing_optional_environment_file_gives_no_word() {
    let dir = TempDir::new("units-ssh-empty");
    let toml = import(
        &dir,
        &[
            ("ssh.socket", SSH_SOCKET),
            ("ssh@.service", SSH_SERVICE),
            ("default/ssh", "SSHD_OPTS=\n"),
        ],
    );
    assert_eq!(
        exec_line(&toml),
        r#"exec = ["/usr/sbin/sshd", "-i"]"#,
        "{toml}"
    );
    let dir = TempDir::new("units-ssh-missing");
    let toml = import(
        &dir,
        &[("ssh.socket", SSH_SOCKET), ("ssh@.service", SSH_SERVICE)],
    );
    assert_eq!(
        exec_line(&toml),
        r#"exec = ["/usr/sbin/sshd", "-i"]"#,
        "{toml}"
    );
    assert!(
        toml.contains("# not carried over: EnvironmentFile=-") && toml.contains("not there"),
        "{toml}"
    );
    assert!(!toml.contains("# not imported"), "{toml}");
    assert_check_passes(&dir, &toml);
}

/// root running the import must not copy a file only root may read into
/// an output anyone may read: an environment file that is not readable
/// by every user, or is reached through a symbolic link, is not read, and
/// a service whose ExecStart uses its variables is refused.
#[test]
fn an_environment_file_not_every_user_may_read_is_not_copied() {
    let dir = TempDir::new("units-ssh-secret");
    let toml_of = |dir: &TempDir| {
        import(
            dir,
            &[("ssh.socket", SSH_SOCKET), ("ssh@.service", SSH_SERVICE)],
        )
    };
    std::fs::create_dir_all(dir.path("default")).unwrap();
    std::fs::write(dir.path("default/ssh"), "SSHD_OPTS=hunter2\n").unwrap();
    std::fs::set_permissions(
        dir.path("default/ssh"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let toml = toml_of(&dir);
    assert!(!toml.contains("hunter2"), "{toml}");
    assert!(
        toml.contains("# not imported: ") && toml.contains("SSHD_OPTS"),
        "{toml}"
    );
    assert!(toml.contains("# [[service]]"), "{toml}");

    let dir = TempDir::new("units-ssh-link");
    std::fs::write(dir.path("secret"), "SSHD_OPTS=hunter2\n").unwrap();
    std::fs::create_dir_all(dir.path("default")).unwrap();
    std::os::unix::fs::symlink(dir.path("secret"), dir.path("default/ssh")).unwrap();
    let toml = toml_of(&dir);
    assert!(!toml.contains("hunter2"), "{toml}");
    assert!(toml.contains("symbolic link"), "{toml}");
    assert!(toml.contains("# [[service]]"), "{toml}");
}

const ECHO_SOCKET: &str = "[Socket]\nListenStream=127.0.0.1:7\nAccept=yes\n";

fn echo_service(service_lines: &str) -> String {
    format!("[Service]\nExecStart=/bin/cat\nStandardInput=socket\n{service_lines}")
}

/// DynamicUser=yes and a User= this system does not know are refused (the
/// program would otherwise run as root); a known User= is carried.
#[test]
fn dynamic_user_and_an_unknown_user_are_refused() {
    for (lines, why) in [
        ("DynamicUser=yes\n", "DynamicUser=yes"),
        ("User=no-such-user-here\n", "no-such-user-here"),
        ("Group=no-such-group-here\n", "no-such-group-here"),
    ] {
        let dir = TempDir::new("units-user");
        let toml = import(
            &dir,
            &[
                ("echo.socket", ECHO_SOCKET),
                ("echo@.service", &echo_service(lines)),
            ],
        );
        assert!(toml.contains("# [[service]]"), "{lines}: {toml}");
        let refusal = toml
            .lines()
            .find(|l| l.starts_with("# not imported: "))
            .unwrap_or("");
        assert!(refusal.contains(why), "{lines}: {toml}");
        assert_every_key_named(&echo_service(lines), &toml);
    }
    let dir = TempDir::new("units-user-nobody");
    let toml = import(
        &dir,
        &[
            ("echo.socket", ECHO_SOCKET),
            (
                "echo@.service",
                &echo_service("User=nobody\nDynamicUser=no\n"),
            ),
        ],
    );
    assert!(
        toml.contains("user = \"nobody\"") && !toml.contains("# not imported"),
        "{toml}"
    );
    assert_check_passes(&dir, &toml);
}

/// RootDirectory= is chroot, SupplementaryGroups= extra_groups,
/// LimitNOFILE=infinity the most the kernel allows.
#[test]
fn root_directory_groups_and_limits_are_carried() {
    let dir = TempDir::new("units-map");
    let toml = import(
        &dir,
        &[
            ("echo.socket", ECHO_SOCKET),
            (
                "echo@.service",
                &echo_service(
                    "RootDirectory=/\nSupplementaryGroups=adm\nSupplementaryGroups=daemon\nLimitNOFILE=infinity\nLimitAS=8M\n",
                ),
            ),
        ],
    );
    assert!(toml.contains("chroot = \"/\""), "{toml}");
    assert!(
        toml.contains("extra_groups = [\"adm\", \"daemon\"]"),
        "{toml}"
    );
    assert!(toml.contains("nofile = \"infinity\""), "{toml}");
    assert!(toml.contains("as = \"8M\""), "{toml}");
    assert!(!toml.contains("# not imported"), "{toml}");
    assert_check_passes(&dir, &toml);
}

/// `Service=` names a unit beside the socket, never a path: the file it
/// would reach is not read.
#[test]
fn service_that_is_a_path_is_refused_and_not_read() {
    let dir = TempDir::new("units-service-path");
    std::fs::create_dir_all(dir.path("etc")).unwrap();
    std::fs::write(
        dir.path("etc/shadow"),
        "[Service]\nExecStart=/bin/secret-stuff\n",
    )
    .unwrap();
    let toml = import(
        &dir,
        &[(
            "units/x.socket",
            "[Socket]\nListenStream=127.0.0.1:7\nService=../etc/shadow\n",
        )],
    );
    assert!(!toml.contains("secret-stuff"), "{toml}");
    assert!(
        toml.contains("# not imported: ") && toml.contains("Service=../etc/shadow"),
        "{toml}"
    );
}

/// The fds reach the program in the order of the unit's Listen*= lines,
/// whatever their kind (sd_listen_fds(3)); FileDescriptorName= names
/// each.
#[test]
fn fds_keep_the_order_of_the_listen_lines() {
    let dir = TempDir::new("units-order");
    let socket = "\
[Socket]
ListenDatagram=127.0.0.1:5353
ListenStream={dir}/a.sock
ListenStream=127.0.0.1:5353
FileDescriptorName=mdns
";
    let toml = import(
        &dir,
        &[
            ("mdns.socket", socket),
            ("mdns.service", "[Service]\nExecStart=/bin/cat\n"),
        ],
    );
    let listen = toml
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap_or("");
    let udp = listen.find("udp://127.0.0.1:5353").unwrap_or(usize::MAX);
    let unix = listen.find("unix://").unwrap_or(usize::MAX);
    let tcp = listen.find("tcp://127.0.0.1:5353").unwrap_or(usize::MAX);
    assert!(udp < unix && unix < tcp && tcp < usize::MAX, "{toml}");
    assert_eq!(listen.matches("name = \"mdns\"").count(), 3, "{toml}");
    assert_check_passes(&dir, &toml);

    // A kind summond does not serve among them would renumber the rest.
    let dir = TempDir::new("units-order-fifo");
    let toml = import(
        &dir,
        &[
            (
                "f.socket",
                "[Socket]\nListenFIFO={dir}/fifo\nListenStream=127.0.0.1:5353\n",
            ),
            ("f.service", "[Service]\nExecStart=/bin/cat\n"),
        ],
    );
    assert!(
        toml.contains("# not imported: ") && toml.contains("ListenFIFO"),
        "{toml}"
    );
}

/// systemd creates a unit's Unix socket 0666 and its missing directories
/// 0755 unless told otherwise: both are written out.
#[test]
fn socket_and_directory_modes_are_written_out() {
    let dir = TempDir::new("units-modes");
    let toml = import(
        &dir,
        &[
            ("u.socket", "[Socket]\nListenStream={dir}/run/u/request\n"),
            ("u.service", "[Service]\nExecStart=/bin/cat\n"),
        ],
    );
    assert!(toml.contains("socket_mode = \"0666\""), "{toml}");
    assert!(toml.contains("socket_directory_mode = \"0755\""), "{toml}");
    assert_check_passes(&dir, &toml);
    let dir = TempDir::new("units-modes-set");
    let toml = import(
        &dir,
        &[
            (
                "u.socket",
                "[Socket]\nListenStream={dir}/run/u/request\nSocketMode=0600\nDirectoryMode=0750\n",
            ),
            ("u.service", "[Service]\nExecStart=/bin/cat\n"),
        ],
    );
    assert!(toml.contains("socket_mode = \"0600\""), "{toml}");
    assert!(toml.contains("socket_directory_mode = \"0750\""), "{toml}");
}

/// `%i` has a value per connection under systemd and none here: the
/// service is refused with the reason. A user unit's `%t` is
/// $XDG_RUNTIME_DIR at import (refused when it is not set); a system
/// unit's is /run.
#[test]
fn specifiers_are_expanded_or_refused() {
    let dir = TempDir::new("units-spec");
    let toml = import(
        &dir,
        &[
            ("c.socket", ECHO_SOCKET),
            (
                "c@.service",
                "[Service]\nExecStart=/bin/cat %i\nStandardInput=socket\n",
            ),
        ],
    );
    assert!(
        toml.contains("# not imported: ") && toml.contains("%i"),
        "{toml}"
    );

    let socket = "[Socket]\nListenStream=%t/gnupg/S.gpg-agent\n";
    let service = "[Service]\nExecStart=/usr/bin/gpg-agent --supervised\n";
    let files = [
        ("systemd/user/gpg-agent.socket", socket),
        ("systemd/user/gpg-agent.service", service),
    ];
    let dir = TempDir::new("units-user-unit");
    let (code, toml, err) = import_with_env(&dir, &files, &[("XDG_RUNTIME_DIR", "/run/user/4242")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("unix:///run/user/4242/gnupg/S.gpg-agent"),
        "{toml}"
    );
    let (code, toml, err) = import_with_env(&dir, &files, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("# not imported: ") && toml.contains("XDG_RUNTIME_DIR"),
        "{toml}"
    );
    let dir = TempDir::new("units-system-unit");
    let toml = import(&dir, &[("g.socket", socket), ("g.service", service)]);
    assert!(toml.contains("unix:///run/gnupg/S.gpg-agent"), "{toml}");
}

/// Each key not carried over has a reason true for it: ExecStartPost= is
/// a command not run, not "socket tuning"; KillMode=, conditions and
/// RestartPreventExitStatus= are named with what summond does instead.
#[test]
fn every_key_is_named_with_a_true_reason() {
    let dir = TempDir::new("units-reasons");
    let socket = "\
[Unit]
Description=x
Requires=network.target
[Socket]
ListenStream=127.0.0.1:7
ExecStartPost=/bin/true
KeepAliveTimeSec=30
Symlinks=/run/x
[Install]
WantedBy=sockets.target
";
    let service = "\
[Unit]
ConditionPathExists=/
[Service]
ExecStart=/bin/cat
KillMode=process
RestartPreventExitStatus=255
Restart=on-failure
ProtectSystem=strict
Type=notify
SomethingNew=1
";
    let toml = import(&dir, &[("r.socket", socket), ("r.service", service)]);
    assert_every_key_named(socket, &toml);
    assert_every_key_named(service, &toml);
    let reason = |key: &str| {
        toml.lines()
            .find(|l| l.starts_with(&format!("# not carried over: {key}=")))
            .unwrap_or("")
            .to_string()
    };
    assert!(!reason("ExecStartPost").contains("socket tuning"), "{toml}");
    assert!(reason("ExecStartPost").contains("not run"), "{toml}");
    assert!(reason("KillMode").contains("process group"), "{toml}");
    assert!(
        reason("ConditionPathExists").contains("condition"),
        "{toml}"
    );
    assert!(
        reason("SomethingNew").contains("not a setting the importer knows"),
        "{toml}"
    );
    assert_check_passes(&dir, &toml);
}

/// A condition that does not hold here now (systemd would not start the
/// service) writes the service disabled.
#[test]
fn a_condition_that_does_not_hold_writes_the_service_disabled() {
    let dir = TempDir::new("units-condition");
    std::fs::write(dir.path("sshd_not_to_be_run"), "").unwrap();
    let toml = import(
        &dir,
        &[("ssh.socket", SSH_SOCKET), ("ssh@.service", SSH_SERVICE)],
    );
    assert!(toml.contains("disabled = true"), "{toml}");
}

/// IPAddressDeny=/IPAddressAllow= on a service listening on IP restrict
/// who may connect, which summond's allow/deny carry only for accepted
/// connections: refused. On a service listening only on a Unix socket
/// they are the program's own sandbox: a comment (journald's
/// IPAddressDeny=any). Type=forking and RootImage= cannot be served as
/// the unit means: refused.
#[test]
fn ip_rules_forking_and_root_images_refuse_where_they_cannot_be_carried() {
    for (socket, lines, why) in [
        (
            ECHO_SOCKET,
            "IPAddressDeny=any\nIPAddressAllow=127.0.0.0/8\n",
            "IPAddressDeny=any",
        ),
        (ECHO_SOCKET, "Type=forking\n", "Type=forking"),
        (ECHO_SOCKET, "RootImage=/srv/x.raw\n", "RootImage="),
    ] {
        let dir = TempDir::new("units-confine");
        let toml = import(
            &dir,
            &[
                ("echo.socket", socket),
                ("echo@.service", &echo_service(lines)),
            ],
        );
        let refusal = toml
            .lines()
            .find(|l| l.starts_with("# not imported: "))
            .unwrap_or("");
        assert!(refusal.contains(why), "{lines}: {toml}");
        assert_every_key_named(&echo_service(lines), &toml);
    }
    let dir = TempDir::new("units-confine-unix");
    let socket = "[Socket]\nListenStream={dir}/s\nAccept=yes\n";
    let toml = import(
        &dir,
        &[
            ("echo.socket", socket),
            ("echo@.service", &echo_service("IPAddressDeny=any\n")),
        ],
    );
    assert!(!toml.contains("# not imported"), "{toml}");
    assert!(
        toml.contains("# not carried over: IPAddressDeny=any: the program's own IP sandbox"),
        "{toml}"
    );
    assert_check_passes(&dir, &toml);
}

/// The imported service runs the argv systemd would: a client of the
/// imported socket reads what `printf` printed from the words of `$OPTS`
/// (quotes kept together) and `${WHO}` (one word, spaces and all).
#[test]
fn the_imported_service_runs_the_argv_systemd_would() {
    let dir = TempDir::new("units-run");
    let port = free_port();
    let socket = format!("[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n");
    let service = "\
[Service]
Environment=\"WHO=big  world\"
EnvironmentFile={dir}/opts
ExecStart=/usr/bin/printf %%s| $OPTS ${WHO} \\
    \"$$HOME\"
StandardInput=socket
";
    let toml = import(
        &dir,
        &[
            ("hello.socket", &socket),
            ("hello@.service", service),
            ("opts", "OPTS=\"a 'b c'\" \n"),
        ],
    );
    assert_eq!(
        exec_line(&toml),
        r#"exec = ["/usr/bin/printf", "%s|", "a", "b c", "big  world", "$HOME"]"#,
        "{toml}"
    );
    let s = Summond::start(&toml);
    let conn = connect_tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut &conn, &mut out).unwrap();
    assert_eq!(out, "a|b c|big  world|$HOME|", "{}", s.log_text());
}

/// The units are echoed key by key, so the importer (root) reads a unit
/// only if it is a regular file every user may read: a service beside
/// the socket that is a link to a root-only file is not printed, a FIFO
/// does not hang the import, /dev/zero does not fill memory.
#[test]
fn a_unit_only_root_may_read_or_no_regular_file_is_not_read() {
    let dir = TempDir::new("units-secret");
    let secret = dir.path("private/debian.cnf");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::set_permissions(secret.parent().unwrap(), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(
        &secret,
        "[client]\nuser=debian-sys-maint\npassword=Hunter2SECRET\n",
    )
    .unwrap();
    std::fs::write(dir.path("s.socket"), "[Socket]\nListenStream=127.0.0.1:7\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path("s.service")).unwrap();
    let (code, out, err) = import_with_env(
        &dir,
        &[("s.socket", "[Socket]\nListenStream=127.0.0.1:7\n")],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        !out.contains("Hunter2") && !err.contains("Hunter2"),
        "{out}{err}"
    );
    assert!(err.contains("every user"), "{err}");
    // The socket itself a link to it: the same.
    std::os::unix::fs::symlink(&secret, dir.path("t.socket")).unwrap();
    std::fs::write(dir.path("t.service"), "[Service]\nExecStart=/bin/cat\n").unwrap();
    let (code, out, err) = run_to_exit(&["import", dir.path("t.socket").to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        !out.contains("Hunter2") && !err.contains("Hunter2"),
        "{out}{err}"
    );
    // A FIFO and /dev/zero as the service: refused at once.
    nix::unistd::mkfifo(
        &dir.path("f.service"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let (code, _, err) = import_with_env(
        &dir,
        &[("f.socket", "[Socket]\nListenStream=127.0.0.1:7\n")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a regular file"), "{err}");
    std::os::unix::fs::symlink("/dev/zero", dir.path("z.service")).unwrap();
    let (code, _, err) = import_with_env(
        &dir,
        &[("z.socket", "[Socket]\nListenStream=127.0.0.1:7\n")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a regular file"), "{err}");
    // A masked service (a link to /dev/null) says so.
    std::os::unix::fs::symlink("/dev/null", dir.path("m.service")).unwrap();
    let (code, _, err) = import_with_env(
        &dir,
        &[("m.socket", "[Socket]\nListenStream=127.0.0.1:7\n")],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("masked"), "{err}");
}

/// A drop-in beside the unit (as `systemctl edit` writes them in
/// /etc/systemd/system) changes what systemd runs; the importer does not
/// read it, so the service is refused, never imported without it.
#[test]
fn a_unit_changed_by_a_drop_in_is_refused() {
    let dir = TempDir::new("units-dropin");
    let socket = "[Socket]\nListenStream=0.0.0.0:7783\n";
    let service = "[Service]\nExecStart=/bin/cat\n";
    let files = [
        ("d.socket", socket),
        ("d.service", service),
        (
            "d.socket.d/local.conf",
            "[Socket]\nIPAddressAllow=127.0.0.1\nIPAddressDeny=any\n",
        ),
    ];
    let toml = import(&dir, &files);
    let line = toml
        .lines()
        .find(|l| l.starts_with("# not imported: "))
        .unwrap_or_else(|| panic!("not refused:\n{toml}"));
    assert!(line.contains("d.socket.d/local.conf"), "{toml}");
    assert!(!toml.lines().any(|l| l == "[[service]]"), "{toml}");
}
