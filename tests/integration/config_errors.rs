//! Bad configs: each one exits 2 with `PATH:LINE:COL: message` on stderr,
//! every error in the file at once, and never a panic.

use crate::util::*;

const OK: &str = "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n";

fn check(text: &str) -> (i32, String, String, String) {
    let dir = TempDir::new("cfg");
    let path = dir.path("bad.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    let (code, out, err) = run_to_exit(&["--check", "-c", &p]);
    (code, out, err, p)
}

/// (config, expected `LINE:COL: message` start) — the message is matched
/// from its start so the test pins the wording a user sees.
fn table() -> Vec<(String, String)> {
    let svc = |extra: &str| format!("{OK}{extra}");
    let is_root = nix::unistd::geteuid().is_root();
    let mut t: Vec<(String, &str)> = vec![
        ("bogus = 1\n".into(), "1:1: unknown key `bogus` in the top level"),
        (svc("colour = \"red\"\n"), "5:1: unknown key `colour` in [[service]] (expected one of: name, listen"),
        ("[[service]]\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\n".into(), "1:1: missing required key `name`"),
        ("[[service]]\nname = \"a\"\nexec = [\"cat\"]\n".into(), "1:1: missing required key `listen`"),
        ("[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\n".into(), "1:1: missing required key `exec`"),
        (format!("{OK}\n[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:2\"\nexec = [\"cat\"]\n"), "7:8: duplicate service name \"a\" (first defined at line 2)"),
        (format!("{OK}\n[[service]]\nname = \"b\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n"), "8:10: address tcp://127.0.0.1:7007 is already used by service \"a\""),
        (OK.replace("127.0.0.1:7007", "localhost:80"), "3:10: `listen`: \"localhost:80\" is not IP:PORT"),
        (OK.replace("tcp://", "sctp://"), "3:10: `listen`: unknown address scheme \"sctp://\""),
        (OK.replace("7007", "0"), "3:10: `listen`: port 0 is not allowed"),
        (OK.replace("tcp://127.0.0.1:7007", "unix://run/x.sock"), "3:10: `listen`: unix socket path \"run/x.sock\" must be absolute"),
        (svc("allow = [\"10.0.0.0/33\"]\n"), "5:10: `allow`: prefix length \"33\" must be a number from 0 to 32"),
        (svc("deny = [\"127.0.0.1\", \"not-an-ip\"]\n"), "5:22: `deny`: \"not-an-ip\" is not an IP address"),
        (OK.replace("tcp://", "udp://") + "accept = true\n", "5:10: `accept = true` is impossible on datagram socket udp://127.0.0.1:7007"),
        (OK.replace("tcp://127.0.0.1:7007", "unixgram:///tmp/g.sock") + "accept = true\n", "5:10: `accept = true` is impossible on datagram socket unixgram:///tmp/g.sock"),
        (svc("accept = false\nallow = [\"127.0.0.1\"]\n"), "6:9: `allow` needs `accept = true`"),
        (svc("accept = false\nmax_per_source = 2\n"), "6:18: `max_per_source` needs `accept = true`"),
        (OK.replace("tcp://127.0.0.1:7007", "unix:///tmp/a.sock") + "deny = [\"10.0.0.0/8\"]\n", "5:8: `deny` filters IP addresses and cannot apply to a unix socket"),
        (OK.replace("[\"cat\"]", "\"cat\""), "4:8: `exec` must be an array of strings like [\"/bin/cat\"], found a string"),
        (OK.replace("[\"cat\"]", "[]"), "4:8: `exec`: is empty: name the program to run"),
        (OK.replace("[\"cat\"]", "[\"cat\", 3]"), "4:16: `exec` must be an array of strings"),
        (OK.replace("\"cat\"", "\"bin/cat\""), "4:9: `exec`: \"bin/cat\" must be an absolute path or a bare name looked up in PATH"),
        (OK.replace("\"cat\"", "\"no-such-program-xyz\""), "4:9: `exec`: \"no-such-program-xyz\" not found in PATH"),
        (OK.replace("\"cat\"", "\"/etc/passwd\""), "4:9: `exec`: /etc/passwd is not executable"),
        (OK.replace("\"cat\"", "\"/nonexistent/prog\""), "4:9: `exec`: /nonexistent/prog does not exist"),
        (svc("max_instances = 0\n"), "5:17: `max_instances`: must be from 1 to 4294967295"),
        (svc("max_instances = \"many\"\n"), "5:17: `max_instances` must be a positive integer, found a string"),
        ("[daemon]\nmax_children = 0\n".into(), "2:16: `max_children`: must be from 1 to 4294967295"),
        ("[daemon]\ncontrol = \"\"\n".into(), "2:11: `control`: must name a socket file"),
        (svc("pass = \"socket\"\n"), "5:8: `pass`: \"socket\" is not one of \"stdio\", \"listen_fds\""),
        (svc("stderr = \"file\"\n"), "5:10: `stderr`: \"file\" is not one of \"inherit\", \"socket\", \"null\""),
        (svc("pass = \"listen_fds\"\nstderr = \"socket\"\n"), "6:10: `stderr`: \"socket\" needs pass = \"stdio\""),
        (svc("accept = \"yes\"\n"), "5:10: `accept` must be true or false, found a string"),
        (svc("socket_mode = \"0660\"\n"), "5:15: `socket_mode`: applies to unix socket files, and this service listens on none"),
        (OK.replace("tcp://127.0.0.1:7007", "unix:///tmp/m.sock") + "socket_mode = \"rw\"\n", "5:15: `socket_mode`: \"rw\" is not an octal file mode"),
        (svc("env = { LISTEN_FDS = \"1\" }\n"), "5:9: `env`: LISTEN_FDS is set by summond itself"),
        (OK.replace("\"a\"", "\"my service\""), "2:8: `name`: \"my service\" may use only letters, digits"),
        ("[service]\nname = \"a\"\n".into(), "1:1: `service` must be an array of tables [[service]], found a table"),
        (OK.replace("exec", "exec = [\"cat\"]\nexec"), "5:1: TOML syntax:"),
        ("[[service]]\nname = \"a\nlisten = 1\n".into(), "2:10: TOML syntax:"),
        // the keys beyond the core (#6)
        (svc("max_runtime = \"5x\"\n"), "5:15: `max_runtime`: \"5x\" is not a duration like \"30s\""),
        (svc("max_runtime = \"0s\"\n"), "5:15: `max_runtime`: \"0s\" is zero"),
        (svc("ready_timeout = \"0s\"\n"), "5:17: `ready_timeout`: \"0s\" is zero"),
        (svc("ready_timeout = \"30s\"\n"), "5:17: `ready_timeout`: needs accept = false (long-running children)"),
        (svc("instances = 4\n"), "5:13: `instances`: needs accept = false (long-running children)"),
        (svc("start = \"eager\"\n"), "5:9: `start`: needs accept = false (long-running children)"),
        (svc("accept = false\ninstances = 0\n"), "6:13: `instances`: must be from 1 to 256"),
        (svc("accept = false\ninstances = 1000\n"), "6:13: `instances`: must be from 1 to 256"),
        (svc("accept = false\nmax_instances = 2\ninstances = 3\n"), "7:13: `instances`: is 3, above max_instances = 2: the pool could never be whole"),
        (format!("[daemon]\nmax_children = 2\n{}", svc("accept = false\ninstances = 3\n")), "8:13: `instances`: is 3, above [daemon] max_children = 2: the pool could never be whole"),
        // [daemon] after the services is read first all the same.
        (svc("accept = false\ninstances = 3\n\n[daemon]\nmax_children = 2\n"), "6:13: `instances`: is 3, above [daemon] max_children = 2: the pool could never be whole"),
        (svc("accept = false\nstart = \"lazy\"\n"), "6:9: `start`: \"lazy\" is not one of \"demand\", \"eager\""),
        (svc("rate = \"0/1s\"\n"), "5:8: `rate`: \"0/1s\" allows nothing"),
        (svc("rate = \"10/0s\"\n"), "5:8: `rate`: \"10/0s\": \"0s\" is zero"),
        (svc("per_source_rate = \"ten\"\n"), "5:19: `per_source_rate`: \"ten\" is not a rate like \"50/1s\""),
        (svc("rlimits = { nofiles = 10 }\n"), "5:13: `rlimits`: unknown limit \"nofiles\" (expected one of: nofile, nproc, as, cpu"),
        (svc("rlimits = { as = \"99999999999G\" }\n"), "5:18: `rlimits`: as: \"99999999999G\" is too large"),
        (svc("rlimits = { cpu = \"10M\" }\n"), "5:19: `rlimits`: cpu: \"10M\" is not a number or \"infinity\""),
        (svc("nice = 20\n"), "5:8: `nice`: 20 is outside -20..19"),
        (svc("umask = \"0999\"\n"), "5:9: `umask`: \"0999\" is not an octal mask"),
        (svc("working_directory = \"/nonexistent-dir-xyz\"\n"), "5:21: `working_directory`: /nonexistent-dir-xyz does not exist"),
        (svc("working_directory = \"/etc/passwd\"\n"), "5:21: `working_directory`: /etc/passwd is not a directory"),
        (svc("per_source_prefix = { v4 = 33 }\n"), "5:28: `per_source_prefix`: v4 = 33: an IPv4 prefix is 1 to 32 bits"),
        (svc("per_source_prefix = { v6 = 129 }\n"), "5:28: `per_source_prefix`: v6 = 129: an IPv6 prefix is 1 to 128 bits"),
        (OK.replace("[\"cat\"]", "[\"internal:echoo\"]"), "4:9: `exec`: \"internal:echoo\" is not an internal service (there are internal:echo, internal:discard"),
        (OK.replace("[\"cat\"]", "[\"internal:echo\", \"-v\"]"), "4:26: `exec`: \"internal:echo\" takes no arguments"),
        (svc("accept = false\nmax_runtime = \"5m\"\n"), "6:15: `max_runtime` needs `accept = true`"),
        (OK.replace("tcp://", "udp://") + "banner = \"hi\"\n", "5:10: `banner` needs `accept = true`"),
        (svc("passenv = [\"TZ\"]\n"), "5:11: `passenv`: has effect only with clear_env = true"),
        (svc("v6only = false\n"), "5:10: `v6only`: applies to IPv6 addresses, and this service listens on none"),
        (OK.replace("tcp://", "udp://") + "nodelay = true\n", "5:11: `nodelay`: applies to TCP addresses"),
        (svc("banner = \"x\"\nbanner_fail = 3\n"), "6:15: `banner_fail` must be a string, found an integer"),
        (svc("disabled = 1\n"), "5:12: `disabled` must be true or false, found an integer"),
        ("[daemon]\ninclude = [\"/etc/**\"]\n".into(), "2:12: `include`: \"/etc/**\": recursive patterns (**) are not supported"),
        ("[daemon]\ninclude = [\"conf.d/[\"]\n".into(), "2:12: `include`: \"conf.d/[\" is not a glob pattern"),
        (OK.replace("[\"cat\"]", "[\"internal:echo\"]") + "accept = false\n", "4:8: `exec`: \"internal:echo\" over a stream socket needs accept = true"),
        (OK.replace("tcp://127.0.0.1:7007", "unix:///tmp/i.sock").replace("[\"cat\"]", "[\"internal:echo\"]"), "4:8: `exec`: \"internal:echo\" is served over TCP and UDP only"),
        ("[daemon]\nmetrics = \"udp://127.0.0.1:9\"\n".into(), "2:11: `metrics`: udp://127.0.0.1:9 is a datagram address; HTTP needs tcp:// or unix://"),
        (svc("proxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n"), "6:29: `proxy_from`: \"0.0.0.0/0\" lets most of the Internet send a PROXY header and name any client, which defeats allow, deny and the per-source limits: list the balancers' addresses, or write \"any\" if only balancers can reach this port"),
        ("[daemon]\nlog_format = \"xml\"\n".into(), "2:14: `log_format`: \"xml\" is not one of \"text\", \"json\""),
    ];
    if is_root {
        t.push((
            svc("user = \"no-such-user-xyz\"\n"),
            "5:8: `user`: no such user \"no-such-user-xyz\"",
        ));
        t.push((
            svc("group = \"no-such-group-xyz\"\n"),
            "5:9: `group`: no such group \"no-such-group-xyz\"",
        ));
    } else {
        t.push((
            svc("user = \"nobody\"\n"),
            "5:8: `user` needs summond to run as root",
        ));
    }
    t.into_iter().map(|(c, e)| (c, e.to_string())).collect()
}

#[test]
fn each_bad_config_exits_2_with_its_line_and_column() {
    let mut failures = Vec::new();
    let cases = table();
    assert!(cases.len() >= 20);
    for (text, want) in &cases {
        let (code, out, err, path) = check(text);
        let expected = format!("{path}:{want}");
        if code != 2 || !err.lines().any(|l| l.starts_with(&expected)) || !out.is_empty() {
            failures.push(format!(
                "config:\n{text}\nwant exit 2 and a line starting {expected:?}\ngot exit {code}, stderr:\n{err}"
            ));
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n----\n")
    );
}

#[test]
fn every_error_in_the_file_is_reported_at_once() {
    let text = "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:0\"\nexec = [\"no-such-program-xyz\"]\nmax_instances = 0\n\n\
                [[service]]\nname = \"a\"\nlisten = \"bogus\"\nexec = [\"cat\"]\nwhat = 1\n";
    let (code, _, err, path) = check(text);
    assert_eq!(code, 2);
    // The error lines (what scripts grep); each is followed by its
    // source line and caret.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&path)).collect();
    assert_eq!(lines.len(), 6, "{err}");
    for (line, want) in lines
        .iter()
        .zip(["3:10:", "4:9:", "5:17:", "8:8:", "9:10:", "11:1:"])
    {
        assert!(
            line.starts_with(&format!("{path}:{want}")),
            "{line} should start {want}"
        );
    }
}

#[test]
fn check_prints_ok_with_the_service_count_and_binds_nothing() {
    let port = free_port();
    let (code, out, err, _) = check(&format!(
        "{}\n[[service]]\nname = \"b\"\nlisten = \"udp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n",
        OK.replace("7007", &port.to_string())
    ));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "ok: 2 services\n", "")
    );
    // the port is still free: --check bound nothing
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (code, out, _, _) = check("");
    assert_eq!((code, out.as_str()), (0, "ok: 0 services\n"));
}

#[test]
fn unreadable_config_exits_2() {
    let (code, _, err) = run_to_exit(&["--check", "-c", "/nonexistent/summond.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("/nonexistent/summond.toml: cannot read config: No such file"),
        "{err}"
    );
    let (code, _, _) = run_to_exit(&["-c", "/nonexistent/summond.toml"]);
    assert_eq!(
        code, 2,
        "starting with an unreadable config is a config error too"
    );
}

#[test]
fn bad_config_at_startup_exits_2_and_bad_usage_exits_2() {
    let dir = TempDir::new("startbad");
    let path = dir.path("c.toml");
    std::fs::write(&path, "[[service]]\nname = 1\n").unwrap();
    let (code, _, err) = run_to_exit(&["-c", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(":2:8: `name` must be a string, found an integer"),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&["--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn binary_garbage_is_an_error_not_a_panic() {
    let dir = TempDir::new("garbage");
    let path = dir.path("g.toml");
    std::fs::write(&path, [0xffu8, 0xfe, 0x00, b'[', b'[', 0x80]).unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(!err.contains("panicked"), "{err}");
}

/// The documentation entries in conf/examples/ name programs this machine
/// may not have; everything else about them must be valid.
#[test]
fn example_service_entries_are_valid_but_for_missing_programs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, _, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
        let acceptable = |l: &str| {
            l.contains("not found in PATH")
                || l.contains("does not exist")
                || l.contains("needs summond to run as root")
                || l.contains("no such user")
                || l.contains("no such group")
        };
        // A failure must be a config error (exit 2) that names this file,
        // and every error it names must be one of the acceptable kinds: a
        // run with no such line (a panic, another message) is no pass.
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with(path.to_str().unwrap()))
            .collect();
        assert!(
            code == 0 || (code == 2 && !errors.is_empty() && errors.iter().all(|l| acceptable(l))),
            "{} (exit {code}):\n{err}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 4);
}

/// Each error shows its source line with a caret under the span (drawn by
/// annotate-snippets), unknown keys and misspelt values name the closest
/// choice, and colour appears only on a terminal.
#[test]
fn errors_show_the_source_line_with_a_caret_and_suggest_the_closest_key() {
    let text = "[daemon]\nmaxchildren = 5\n[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\npass = \"listen_fd\"\n";
    let dir = TempDir::new("caret");
    let file = dir.path("bad.toml");
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap().to_string();
    let (code, _, err) = run_to_exit(&["--check", "-c", &path]);
    assert_eq!(code, 2);
    let want = format!(
        "{path}:2:1: unknown key `maxchildren` in [daemon]; did you mean `max_children`?\n  \
         |\n2 | maxchildren = 5\n  | ^^^^^^^^^^^\n\
         {path}:7:8: `pass`: \"listen_fd\" is not one of \"stdio\", \"listen_fds\"; did you mean \"listen_fds\"?\n  \
         |\n7 | pass = \"listen_fd\"\n  |        ^^^^^^^^^^^\n"
    );
    assert_eq!(err, want);
    assert!(!err.contains('\x1b'), "no colour when stderr is a file");

    // On a terminal (script(1) gives summond a pty): the same, in colour.
    if std::path::Path::new("/usr/bin/script").exists() {
        let cmd = format!("{BIN} --check -c {path}");
        let out = std::process::Command::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(tty.contains('\x1b'), "colour on a terminal: {tty:?}");
        assert!(tty.contains("did you mean `max_children`?"), "{tty}");
    } else {
        skip(
            "errors_show_the_source_line_with_a_caret_and_suggest_the_closest_key",
            "script(1) is not installed for the terminal half",
        );
    }
}
