//! `[daemon] include`: drop-in files of `[[service]]` entries merged into
//! the config; an error in one names that file and line; a reload picks
//! up added, changed and removed files; a pattern matching nothing is
//! fine, a matched file that cannot be read is an error.

use crate::util::*;

fn service(name: &str, port: u16) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n"
    )
}

#[test]
fn drop_ins_are_merged_and_a_reload_picks_up_added_changed_and_removed_files() {
    let (main, a, b) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("include");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::write(confd.join("10-a.toml"), service("a", a)).unwrap();
    std::fs::write(confd.join("README"), "not matched").unwrap();
    let config = format!(
        "[daemon]\ninclude = [\"conf.d/*.toml\", \"/nonexistent-summond-dir/*.toml\"]\n{}",
        service("main", main)
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    assert!(
        s.log_text().contains("serving 2 services"),
        "{}",
        s.log_text()
    );
    let (code, out, err) = run_to_exit(&["--check", "-c", s.config.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "ok: 2 services\n"), "{err}");
    assert_eq!(tcp_port_exchange(a, b"a\n"), "a\n");

    // Added and changed: b appears, a moves to another port.
    let a2 = free_port();
    std::fs::write(confd.join("20-b.toml"), service("b", b)).unwrap();
    std::fs::write(confd.join("10-a.toml"), service("a", a2)).unwrap();
    assert!(s.reload(&config));
    assert_eq!(tcp_port_exchange(b, b"b\n"), "b\n");
    assert_eq!(tcp_port_exchange(a2, b"a2\n"), "a2\n");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", a)).is_err(),
        "a's old port closed"
    );
    // Removed.
    std::fs::remove_file(confd.join("20-b.toml")).unwrap();
    assert!(s.reload(&config));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", b)).is_err(),
        "b is gone"
    );
    assert_eq!(tcp_port_exchange(main, b"m\n"), "m\n");
}

#[test]
fn an_error_in_a_drop_in_names_that_file_and_line() {
    let dir = TempDir::new("include-err");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let main = dir.path("summond.toml");
    std::fs::write(
        &main,
        format!(
            "[daemon]\ninclude = [\"conf.d/*.toml\"]\n{}",
            service("dup", 7101)
        ),
    )
    .unwrap();
    std::fs::write(
        confd.join("a.toml"),
        "# a drop-in\n[[service]]\nname = \"x\"\nlisten = \"tcp://127.0.0.1:0\"\nexec = [\"cat\"]\n",
    )
    .unwrap();
    std::fs::write(confd.join("b.toml"), service("dup", 7102)).unwrap();
    std::fs::write(confd.join("c.toml"), "[daemon]\nmax_children = 3\n").unwrap();
    std::os::unix::fs::symlink(dir.path("missing"), confd.join("d.toml")).unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let a = confd.join("a.toml");
    let b = confd.join("b.toml");
    let c = confd.join("c.toml");
    let d = confd.join("d.toml");
    for expected in [
        format!("{}:4:10: `listen`: port 0 is not allowed", a.display()),
        format!(
            "{}:2:8: duplicate service name \"dup\" (first defined at {}:4)",
            b.display(),
            main.display()
        ),
        format!(
            "{}:1:2: unknown key `daemon` in a drop-in (expected one of: service)",
            c.display()
        ),
        format!("{}: cannot read config:", d.display()),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

/// Issue 19: a pool in a drop-in larger than the main file's `[daemon]
/// max_children` could never be whole: an error at its `instances` line
/// in the drop-in.
#[test]
fn a_pool_in_a_drop_in_above_max_children_names_that_file_and_line() {
    let dir = TempDir::new("include-pool");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let main = dir.path("summond.toml");
    std::fs::write(
        &main,
        "[daemon]\ninclude = [\"conf.d/*.toml\"]\nmax_children = 2\n",
    )
    .unwrap();
    let pool = confd.join("pool.toml");
    std::fs::write(
        &pool,
        format!("{}accept = false\ninstances = 3\n", service("pool", 7131)),
    )
    .unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let expected = format!(
        "{}:6:13: `instances`: is 3, above [daemon] max_children = 2",
        pool.display()
    );
    assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
}

/// Issue 15 item 16: an editor's lock (`.#a.toml`, a dangling symlink
/// emacs leaves) or a hidden backup (`.old-a.toml`) beside the drop-ins
/// broke --check and every reload; names starting with a dot are skipped,
/// as run-parts and systemd do.
#[test]
fn include_globs_skip_dotfiles() {
    let (main, a, b) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("include-dot");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::write(confd.join("a.toml"), service("a", a)).unwrap();
    // emacs' lock: a symlink to "user@host.pid", which does not exist.
    std::os::unix::fs::symlink("root@host.1234:1700000000", confd.join(".#a.toml")).unwrap();
    std::fs::write(confd.join(".old-a.toml"), service("a", a)).unwrap();
    let config = format!(
        "[daemon]\ninclude = [\"conf.d/*.toml\"]\n{}",
        service("main", main)
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let (code, out, err) = run_to_exit(&["--check", "-c", s.config.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "ok: 2 services\n"), "{err}");
    std::fs::write(confd.join("b.toml"), service("b", b)).unwrap();
    std::fs::write(confd.join(".#b.toml"), "junk = [").unwrap();
    assert!(s.reload(&config), "{}", s.log_text());
    assert_eq!(tcp_port_exchange(b, b"b\n"), "b\n");
    assert_eq!(tcp_port_exchange(a, b"a\n"), "a\n");
}

/// Fs review finding 1: a file whose name is not UTF-8 beside the
/// drop-ins (`caf\xe9.bak`, a Latin-1 name) made the glob crate panic
/// while skipping dot names: --check exited 101, startup failed and every
/// reload ended "without a result". A name is bytes: it is skipped when
/// the pattern does not match it, and loaded when it does (an invalid
/// byte matches a wildcard only).
#[test]
fn a_drop_in_directory_with_a_non_utf8_name_checks_starts_and_reloads() {
    use std::os::unix::ffi::OsStrExt;
    let (main, a, b) = (free_port(), free_port(), free_port());
    let dir = TempDir::new("include-latin1");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::write(confd.join("a.toml"), service("a", a)).unwrap();
    let latin1 = confd.join(std::ffi::OsStr::from_bytes(b"caf\xe9.bak"));
    std::fs::write(&latin1, "junk = [").unwrap();
    let config = format!(
        "[daemon]\ninclude = [\"conf.d/*.toml\"]\n{}",
        service("main", main)
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let (code, out, err) = run_to_exit(&["--check", "-c", s.config.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "ok: 2 services\n"), "{err}");
    std::fs::write(confd.join("b.toml"), service("b", b)).unwrap();
    assert!(s.reload(&config), "{}", s.log_text());
    assert_eq!(tcp_port_exchange(b, b"b\n"), "b\n");
    // A matching name that is not UTF-8 is a drop-in like any other.
    let b2 = free_port();
    std::fs::remove_file(confd.join("b.toml")).unwrap();
    std::fs::write(
        confd.join(std::ffi::OsStr::from_bytes(b"b-caf\xe9.toml")),
        service("b", b2),
    )
    .unwrap();
    assert!(s.reload(&config), "{}", s.log_text());
    assert_eq!(tcp_port_exchange(b2, b"b2\n"), "b2\n");
    assert_eq!(tcp_port_exchange(a, b"a\n"), "a\n");
}

/// Fs review finding 2: a pattern that spells the leading dot out with a
/// wildcard in the same part (`conf.d/.*.toml`) matched nothing, silently;
/// only the whole name spelled out did. A dot name is skipped only where
/// the pattern's part does not begin with a literal dot.
#[test]
fn a_pattern_that_spells_the_leading_dot_matches_dot_names() {
    let dir = TempDir::new("include-dotpat");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::write(confd.join(".hidden.toml"), service("h", 7103)).unwrap();
    std::fs::write(confd.join(".#a.toml"), "junk = [").unwrap();
    let main = dir.path("summond.toml");
    for (pattern, n) in [
        ("conf.d/.h*.toml", 1),
        ("conf.d/.hidden.tom?", 1),
        ("conf.d/.hidden.toml", 1),
        ("conf.d/*.toml", 0),
        ("conf.d/?hidden.toml", 0),
    ] {
        std::fs::write(&main, format!("[daemon]\ninclude = [\"{pattern}\"]\n")).unwrap();
        let (code, out, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("ok: {n} services\n").as_str()),
            "{pattern}: {err}"
        );
    }
    // `.*.toml` matches `.#a.toml` too, which is not TOML: an error naming it.
    std::fs::write(&main, "[daemon]\ninclude = [\"conf.d/.*.toml\"]\n").unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(".#a.toml"), "{err}");
    std::fs::remove_file(confd.join(".#a.toml")).unwrap();
    let (code, out, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "ok: 1 services\n"), "{err}");
}

/// `--check -c FILE` run from `cwd`.
fn check_in(cwd: &std::path::Path, config: &str) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["--check", "-c", config])
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Attack review 5b: the main config was left out of the matches by its
/// spelling, so `-c s.toml` with `include = ["*.toml"]` (./s.toml matched)
/// or a config reached through a symlinked directory read the main file
/// as a drop-in ("unknown key `daemon` in a drop-in"). It is left out by
/// its file identity now.
#[test]
fn the_main_config_is_never_its_own_drop_in_however_it_is_spelled() {
    let dir = TempDir::new("include-self");
    let real = dir.path("etc");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("a.toml"), service("a", 7111)).unwrap();
    let main = format!("[daemon]\ninclude = [\"*.toml\"]\n{}", service("m", 7112));
    std::fs::write(real.join("s.toml"), &main).unwrap();
    // Relative: -c s.toml from its directory.
    let (code, out, err) = check_in(&real, "s.toml");
    assert_eq!((code, out.as_str()), (0, "ok: 2 services\n"), "{err}");
    // Through a symlinked directory, with an absolute pattern spelled
    // through the real one, and the other way round.
    let link = dir.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for (pattern, config) in [
        (real.join("*.toml"), link.join("s.toml")),
        (link.join("*.toml"), real.join("s.toml")),
    ] {
        std::fs::write(
            real.join("s.toml"),
            format!(
                "[daemon]\ninclude = [{}]\n{}",
                toml_str(pattern.to_str().unwrap()),
                service("m", 7112)
            ),
        )
        .unwrap();
        let (code, out, err) = check_in(&dir.0, config.to_str().unwrap());
        assert_eq!(
            (code, out.as_str()),
            (0, "ok: 2 services\n"),
            "{pattern:?} from {config:?}: {err}"
        );
    }
}

/// Attack review 5b: a symlink loop (`conf.d/loop -> ..`) under a deep
/// pattern matched the main config as
/// `conf.d/loop/conf.d/loop/conf.d/loop/s.toml`, and each drop-in many
/// times; and `*/../other/x.toml` read one file twice ("duplicate service
/// name"). Each file is read once, as the first spelling in sorted order.
#[test]
fn a_file_that_several_spellings_match_is_read_once() {
    let dir = TempDir::new("include-alias");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::create_dir(dir.path("other")).unwrap();
    std::os::unix::fs::symlink("..", confd.join("loop")).unwrap();
    std::fs::write(confd.join("a.toml"), service("a", 7121)).unwrap();
    std::fs::write(dir.path("other/x.toml"), service("x", 7122)).unwrap();
    let main = dir.path("s.toml");
    let check = |patterns: &str| {
        std::fs::write(
            &main,
            format!("[daemon]\ninclude = [{patterns}]\n{}", service("m", 7123)),
        )
        .unwrap();
        run_to_exit(&["--check", "-c", main.to_str().unwrap()])
    };
    for (patterns, n) in [
        (r#""conf.d/*.toml", "conf.d/*/*/*/*/*/*.toml""#, 2),
        (r#""*/../other/x.toml""#, 2),
        (
            r#""other/x.toml", "conf.d/loop/other/x.toml", "*/*.toml""#,
            3,
        ),
    ] {
        let (code, out, err) = check(patterns);
        assert_eq!(
            (code, out.as_str()),
            (0, format!("ok: {n} services\n").as_str()),
            "{patterns}: {err}"
        );
    }
    // An error names the file as the first spelling matched it, once.
    std::fs::write(dir.path("other/x.toml"), "[daemon]\nmax_children = 3\n").unwrap();
    let (code, _, err) = check(r#""*/../other/x.toml""#);
    assert_eq!(code, 2, "{err}");
    let first = dir.path("conf.d/../other/x.toml");
    assert_eq!(
        err.matches("unknown key `daemon` in a drop-in").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:1:2: unknown key `daemon`", first.display())),
        "{err}"
    );
}

/// Attack review 5b: repeats were removed with a linear search per match
/// (quadratic: --check took 8 s with 20,000 drop-ins, the upgrade's check
/// has 30 s). Many drop-ins, matched twice over, load once each.
#[test]
fn thousands_of_drop_ins_matched_twice_load_once_each() {
    let dir = TempDir::new("include-many");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let n = 5_000;
    for i in 0..n {
        std::fs::write(
            confd.join(format!("{i:05}.toml")),
            service(&format!("s{i}"), 20_000 + i as u16),
        )
        .unwrap();
    }
    let main = dir.path("s.toml");
    std::fs::write(
        &main,
        "[daemon]\ninclude = [\"conf.d/*.toml\", \"conf.d/0*.toml\", \"*/*.toml\"]\n",
    )
    .unwrap();
    let (code, out, err) = run_to_exit(&["--check", "-c", main.to_str().unwrap()]);
    assert_eq!(
        (code, out.as_str()),
        (0, format!("ok: {n} services\n").as_str()),
        "{err}"
    );
}

/// Final review of issue 15: a drop-in that is a link to /dev/zero was
/// read whole (4 GB before running out of memory). A config file or
/// drop-in holds at most 64 MiB; past that it is an error naming it, and
/// a running summond keeps its config through a reload that meets one.
#[test]
fn a_drop_in_without_end_is_an_error_not_all_of_memory() {
    let port = free_port();
    let dir = TempDir::new("include-zero");
    let confd = dir.path("conf.d");
    std::fs::create_dir(&confd).unwrap();
    let config = format!(
        "[daemon]\ninclude = [\"conf.d/*.toml\"]\n{}",
        service("main", port)
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    let zero = confd.join("z.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", s.config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{}: cannot read config: larger than 64 MiB",
            zero.display()
        )),
        "{err}"
    );
    s.signal(nix::libc::SIGHUP);
    assert!(
        wait_until(TIMEOUT, || s.log_text().contains("reload failed")),
        "{}",
        s.log_text()
    );
    assert_eq!(tcp_port_exchange(port, b"main\n"), "main\n");
}
