//! Real clients through services `summond import` made of the .socket
//! units Debian packages installed on this machine (.ci/run installs
//! them): `ssh-keyscan` through ssh.socket, `curl` through tang's
//! tangd.socket, `cgi-fcgi` through fcgiwrap.socket, `uuidd -t` as nobody
//! through uuidd.socket. The importer's output is used as written; a test
//! moves only the address (to a loopback port or a path of its own) and
//! the data directory a unit names, nothing else, so what fails here is
//! what a user importing the same unit would meet.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::*;

const UNITS: &str = "/lib/systemd/system";

/// `summond import` of the installed `unit` (its service found beside it
/// as systemd would): the output, which must be exit 0. `None`, with a
/// skip line, where the unit or one of `programs` is not installed or
/// this is not root (each of these services drops to a user of its own).
fn import_installed(test: &str, unit: &str, programs: &[&str]) -> Option<String> {
    let path = Path::new(UNITS).join(unit);
    let missing = std::iter::once(path.as_path())
        .chain(programs.iter().map(Path::new))
        .find(|p| !p.exists());
    if let Some(p) = missing {
        skip(test, &format!("{} is not installed", p.display()));
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        skip(
            test,
            "the imported service changes to its own user: needs root",
        );
        return None;
    }
    let (code, toml, err) = run_to_exit(&["import", path.to_str().unwrap()]);
    assert_eq!(code, 0, "import {unit}: {err}\n{toml}");
    Some(toml)
}

/// `toml` with the quoted listen address `from` (which it must hold once)
/// moved to `to`. A wildcard `[::]` comes with `v6only = false`, which
/// means nothing for the single loopback address it is moved to (and
/// `--check` refuses it there), so that line goes with the move.
fn move_listen(toml: &str, from: &str, to: &str) -> String {
    let quoted = format!("\"{from}\"");
    assert_eq!(toml.matches(&quoted).count(), 1, "{from} once in:\n{toml}");
    let moved = toml.replace(&quoted, &format!("\"{to}\""));
    if from.contains("[::]") {
        moved.replacen("v6only = false\n", "", 1)
    } else {
        moved
    }
}

/// Start summond on the moved import `config` in `dir` (its `{dir}`), after
/// `--check` has passed it, so a config error is reported as one.
fn serve_moved(dir: TempDir, config: &str) -> Summond {
    let file = dir.path("checked.toml");
    std::fs::write(&file, config.replace("{dir}", dir.0.to_str().unwrap())).unwrap();
    let (code, out, err) = run_to_exit(&["--check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 0, "--check: {out}{err}\n{config}");
    Summond::start_in(
        dir,
        Start {
            config,
            ..Start::default()
        },
    )
}

/// A temp dir every user may traverse (the services run as their own
/// users and must reach what the test puts there), whatever the umask.
fn open_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// "TYPE BASE64" of each key line in `lines` (known_hosts or .pub lines,
/// whose first field is the host or the type).
fn key_fields(lines: &str, skip_host: bool) -> BTreeSet<String> {
    lines
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().skip(skip_host as usize).collect();
            fields[..2].join(" ")
        })
        .collect()
}

/// Debian's ssh.socket (ListenStream=22, Accept=no) with ssh.service
/// (`sshd -D $SSHD_OPTS` from EnvironmentFile=-/etc/default/ssh,
/// RuntimeDirectory=sshd): sshd takes the listening socket through
/// LISTEN_FDS and must give `ssh-keyscan` the machine's host keys.
#[test]
fn ssh_keyscan_reads_the_host_keys_through_the_imported_ssh_socket() {
    let test = "ssh_keyscan_reads_the_host_keys_through_the_imported_ssh_socket";
    let programs = ["/usr/sbin/sshd", "/usr/bin/ssh-keyscan"];
    let Some(toml) = import_installed(test, "ssh.socket", &programs) else {
        return;
    };
    let pubs: String = std::fs::read_dir("/etc/ssh")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with("_key.pub")))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let want = key_fields(&pubs, false);
    assert!(!want.is_empty(), "no /etc/ssh/ssh_host_*_key.pub");

    let port = free_port();
    let moved = move_listen(&toml, "tcp://[::]:22", &format!("tcp://127.0.0.1:{port}"));
    let s = serve_moved(open_dir("import-ssh"), &moved);
    let port = port.to_string();
    let out = run(
        "/usr/bin/ssh-keyscan",
        &["-T", "10", "-p", &port, "127.0.0.1"],
    );
    let got = key_fields(&text(&out.stdout), true);
    assert_eq!(
        got,
        want,
        "ssh-keyscan: {}\n{moved}\n{}",
        text(&out.stderr),
        s.log_text()
    );
}

/// tang's tangd.socket (ListenStream=80, Accept=true) with tangd@.service
/// (`tangd /var/lib/tang`, a stdio HTTP server, User=_tang): keys made
/// by tangd-keygen in a directory of the test's, which the data directory
/// argument is moved to. `curl /adv` must get the advertisement signed
/// with the test's signing key (checked by jose, tang's own JOSE tool).
#[test]
fn curl_gets_tangs_advertisement_through_the_imported_tangd_socket() {
    let test = "curl_gets_tangs_advertisement_through_the_imported_tangd_socket";
    let keygen = "/usr/libexec/tangd-keygen";
    let programs = [
        "/usr/libexec/tangd",
        keygen,
        "/usr/bin/jose",
        "/usr/bin/curl",
    ];
    let Some(toml) = import_installed(test, "tangd.socket", &programs) else {
        return;
    };
    let keys = open_dir("tang-keys");
    let made = run(keygen, &[keys.0.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let signing = std::fs::read_dir(&keys.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains("\"sign\""))
        .expect("tangd-keygen wrote a signing key");

    let port = free_port();
    let moved = move_listen(&toml, "tcp://[::]:80", &format!("tcp://127.0.0.1:{port}"));
    let data = "\"/var/lib/tang\"";
    assert!(moved.contains(data), "{moved}");
    let moved = moved.replace(data, &format!("\"{}\"", keys.0.display()));
    let s = serve_moved(open_dir("import-tang"), &moved);
    let url = format!("http://127.0.0.1:{port}/adv");
    let out = run("/usr/bin/curl", &["-sS", "-f", "-m", "10", &url]);
    let adv = text(&out.stdout);
    let log = s.log_text();
    assert!(
        out.status.success(),
        "curl: {}\n{moved}\n{log}",
        text(&out.stderr)
    );
    let jws: serde_json::Value = serde_json::from_str(&adv).expect(&adv);
    assert!(jws["payload"].is_string(), "{adv}");
    let advf = keys.path("adv.json");
    std::fs::write(&advf, &adv).unwrap();
    let sig = signing.to_str().unwrap();
    let ver = run(
        "/usr/bin/jose",
        &["jws", "ver", "-i", advf.to_str().unwrap(), "-k", sig],
    );
    assert!(ver.status.success(), "jose: {}\n{adv}", text(&ver.stderr));
}

/// fcgiwrap's fcgiwrap.socket (/run/fcgiwrap.socket, SocketMode=0660,
/// SocketUser/Group=www-data, Accept=no) with fcgiwrap.service
/// (`fcgiwrap ${DAEMON_OPTS}`, Environment=DAEMON_OPTS=-f, User=www-data):
/// the FastCGI client `cgi-fcgi` runs a CGI script of the test's through
/// it. The script runs as www-data; its stderr reaches the client, as
/// `-f` says, unless /etc/default/fcgiwrap sets other options.
#[test]
fn cgi_fcgi_runs_a_script_through_the_imported_fcgiwrap_socket() {
    let test = "cgi_fcgi_runs_a_script_through_the_imported_fcgiwrap_socket";
    let programs = ["/usr/sbin/fcgiwrap", "/usr/bin/cgi-fcgi"];
    let Some(toml) = import_installed(test, "fcgiwrap.socket", &programs) else {
        return;
    };
    let scripts = open_dir("cgi");
    let script = scripts.path("hello.cgi");
    install_executable(
        &script,
        b"#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
          echo \"cgi as $(id -un): $QUERY_STRING\"\necho 'cgi stderr line' >&2\n",
    );
    let moved = move_listen(
        &toml,
        "unix:///run/fcgiwrap.socket",
        "unix://{dir}/fcgiwrap.socket",
    );
    let s = serve_moved(open_dir("import-fcgiwrap"), &moved);
    let sock = s.dir.path("fcgiwrap.socket");
    let meta = std::fs::metadata(&sock).unwrap();
    let www = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o660, www.uid.as_raw(), www.gid.as_raw()),
        "the socket file as SocketMode/SocketUser/SocketGroup say"
    );
    let out = Command::new("/usr/bin/cgi-fcgi")
        .args(["-bind", "-connect", sock.to_str().unwrap()])
        .env_clear()
        .env("SCRIPT_FILENAME", &script)
        .env("REQUEST_METHOD", "GET")
        .env("QUERY_STRING", "from=summond")
        .stdin(Stdio::null())
        .output()
        .expect("run cgi-fcgi");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let log = s.log_text();
    assert!(
        out.status.success() && stdout.ends_with("\r\n\r\ncgi as www-data: from=summond\n"),
        "cgi-fcgi: {stdout:?} {stderr}\n{moved}\n{log}"
    );
    if !Path::new("/etc/default/fcgiwrap").exists() {
        assert_eq!(
            stderr, "cgi stderr line\n",
            "DAEMON_OPTS=-f\n{moved}\n{log}"
        );
    }
}

/// util-linux's uuidd.socket (ListenStream=/run/uuidd/request; systemd
/// makes the socket 0666 and its directory) with uuidd.service
/// (User=uuidd): the socket moved to a directory that does not exist yet
/// under the test's; `uuidd -t` and `uuidd -r` as nobody get a time-based
/// and a random UUID from the daemon.
#[test]
fn uuidd_as_nobody_gets_uuids_through_the_imported_uuidd_socket() {
    let test = "uuidd_as_nobody_gets_uuids_through_the_imported_uuidd_socket";
    let programs = ["/usr/sbin/uuidd", "/usr/bin/setpriv"];
    let Some(toml) = import_installed(test, "uuidd.socket", &programs) else {
        return;
    };
    let moved = move_listen(
        &toml,
        "unix:///run/uuidd/request",
        "unix://{dir}/run/uuidd/request",
    );
    let s = serve_moved(open_dir("import-uuidd"), &moved);
    let sock = s.dir.path("run/uuidd/request");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for (flag, version) in [("-t", '1'), ("-r", '4')] {
        let out = run(
            "/usr/bin/setpriv",
            &[
                &format!("--reuid={}", nobody.uid),
                &format!("--regid={}", nobody.gid),
                "--clear-groups",
                "/usr/sbin/uuidd",
                flag,
                "-s",
                sock.to_str().unwrap(),
            ],
        );
        let uuid = text(&out.stdout);
        assert!(
            out.status.success() && uuid.len() == 37 && uuid.chars().nth(14) == Some(version),
            "uuidd {flag} as nobody: {uuid:?} {}\n{moved}\n{}",
            text(&out.stderr),
            s.log_text()
        );
    }
}
