//! `summond import` on what Debian 12 really ships (tests/import-corpus,
//! its README says where each file came from): every `.socket` unit with
//! its service, every inetd.conf entry a package registers with
//! update-inetd, and xinetd's own files. Each input is imported and
//! - exits 0;
//! - names every input setting in the output: a `# carried over:` line
//!   or a `# not carried over: Key=...` comment (or the reason a service
//!   is written commented out names it);
//! - passes `summond --check`, after each program that is missing here is
//!   replaced by /bin/true (the failure says which were);
//! - is no wider open than the input: a service whose input restricts who
//!   may connect (IPAddressAllow/Deny on an inet socket, only_from,
//!   no_access, a hosts.allow rule here for a tcpd-wrapped program) or what
//!   the child is (User, Group, DynamicUser, RootDirectory) is written
//!   commented out or keeps an equivalent key; a bound address, a socket
//!   mode and owner, and a disabled service stay what they were.
//!
//! One test per format; each lists every failure with the file and the
//! key, so one run says everything that is still wrong.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::util::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import-corpus")
}

/// Every failure of one format, each naming its file and key.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn add(&mut self, file: &str, key: &str, what: impl Display) {
        self.0.push(format!("{file}: {key}: {what}"));
    }

    fn assert_none(self, what: &str, inputs: usize) {
        assert!(inputs > 0, "no {what} in the corpus");
        assert!(
            self.0.is_empty(),
            "{} failures in {inputs} {what}:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// One service of the output: the lines from its origin comment on.
struct Chunk<'a>(&'a str);

impl Chunk<'_> {
    /// Written commented out, with the reason.
    fn refused(&self) -> bool {
        self.0
            .lines()
            .any(|l| l.starts_with("# not imported:") || l == "# [[service]]")
    }

    /// Is the input setting `key` named: carried over, or said not to be?
    fn names(&self, key: &str) -> bool {
        self.0.lines().any(|l| {
            if let Some(list) = l.strip_prefix("# carried over: ") {
                return list.split(", ").any(|item| {
                    item == key
                        || item.starts_with(&format!("{key}="))
                        || item.starts_with(&format!("{key} "))
                });
            }
            if let Some(rest) = l.strip_prefix("# not carried over: ") {
                return rest
                    .strip_prefix(key)
                    .is_some_and(|after| after.starts_with('=') || after.starts_with(' '));
            }
            // The reason a service is refused may name the setting.
            l.starts_with("# not imported:")
                && [format!("{key}="), format!("{key} ="), format!("`{key}`")]
                    .iter()
                    .any(|form| l.contains(form.as_str()))
        })
    }

    /// The value of summond key `key`, live or commented out.
    fn value(&self, key: &str) -> Option<toml::Value> {
        let prefix = format!("{key} = ");
        self.0.lines().find_map(|l| {
            let l = l.strip_prefix("# ").unwrap_or(l);
            let v = l.strip_prefix(&prefix)?;
            let t: toml::Table = format!("v = {v}").parse().ok()?;
            t.get("v").cloned()
        })
    }

    fn string(&self, key: &str) -> Option<String> {
        self.value(key).and_then(|v| v.as_str().map(str::to_string))
    }

    /// Every listen address, as written.
    fn listens(&self) -> Vec<String> {
        let strings = |v: &toml::Value| -> Vec<String> {
            match v {
                toml::Value::String(s) => vec![s.clone()],
                toml::Value::Table(t) => t
                    .get("address")
                    .and_then(|a| a.as_str())
                    .map(|a| vec![a.to_string()])
                    .unwrap_or_default(),
                toml::Value::Array(a) => a
                    .iter()
                    .flat_map(|x| match x {
                        toml::Value::String(s) => vec![s.clone()],
                        toml::Value::Table(t) => t
                            .get("address")
                            .and_then(|a| a.as_str())
                            .map(|a| vec![a.to_string()])
                            .unwrap_or_default(),
                        _ => vec![],
                    })
                    .collect(),
                _ => vec![],
            }
        };
        self.value("listen")
            .map(|v| strings(&v))
            .unwrap_or_default()
    }
}

/// The services of an import's output, after its header.
fn chunks(toml: &str) -> Vec<Chunk<'_>> {
    toml.split("\n\n").skip(1).map(Chunk).collect()
}

/// Import `paths` (`--from FORMAT` when given); a failure is recorded
/// and None returned. Without XDG_RUNTIME_DIR, as in CI, so a user unit's
/// `%t` imports the same everywhere.
fn import(f: &mut Failures, name: &str, from: Option<&str>, paths: &[&Path]) -> Option<String> {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("import").env_remove("XDG_RUNTIME_DIR");
    if let Some(format) = from {
        cmd.args(["--from", format]);
    }
    let output = cmd
        .args(paths)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run summond import");
    let code = output.status.code().unwrap_or(-1);
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr);
    if code != 0 {
        f.add(
            name,
            "exit",
            format!("summond import exited {code}: {}", err.trim()),
        );
        return None;
    }
    Some(out)
}

/// `summond --check` on the output, each program missing here replaced
/// by /bin/true first.
fn check(f: &mut Failures, name: &str, toml: &str, dir: &TempDir) {
    let mut missing = Vec::new();
    let text: String = toml
        .lines()
        .map(|l| match missing_program(l) {
            Some(p) => {
                let fixed = l.replacen(&format!("{:?}", p), "\"/bin/true\"", 1);
                missing.push(p);
                fixed
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = dir.path(&format!("{}.toml", name.replace('/', "_")));
    std::fs::write(&out, text + "\n").unwrap();
    let (code, _, err) = run_to_exit(&["--check", "-c", out.to_str().unwrap()]);
    if code != 0 {
        let note = if missing.is_empty() {
            String::new()
        } else {
            format!(
                " (missing here, checked as /bin/true: {})",
                missing.join(", ")
            )
        };
        let errors = check_errors(&err, &out);
        f.add(name, "--check", format!("exit {code}{note}: {errors}"));
    }
}

/// The error lines of `--check` on `file`, without the file's name.
fn check_errors(stderr: &str, file: &Path) -> String {
    let prefix = format!("{}:", file.display());
    let lines: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    if lines.is_empty() {
        first_lines(stderr, 4)
    } else {
        lines.join(" | ")
    }
}

/// The program of a live `exec = [...]` line, when it is an absolute
/// path that does not exist on this machine.
fn missing_program(line: &str) -> Option<String> {
    let v = line.strip_prefix("exec = ")?;
    let t: toml::Table = format!("v = {v}").parse().ok()?;
    let program = t.get("v")?.as_array()?.first()?.as_str()?.to_string();
    (program.starts_with('/') && !Path::new(&program).exists()).then_some(program)
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" | ")
}

fn octal(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim(), 8).ok()
}

fn yes(v: &str) -> bool {
    matches!(v, "yes" | "true" | "on" | "1")
}

// ---- systemd ----------------------------------------------------------

/// One setting of a unit file: (section, key, value).
type Setting = (String, String, String);
/// A socket unit's settings and its service's.
type Units = (Vec<Setting>, Vec<Setting>);

/// A unit file's settings in order, with backslash continuations joined
/// and comments left out.
fn unit_settings(text: &str) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The last value of `key` in `section`.
fn setting<'a>(s: &'a [(String, String, String)], section: &str, key: &str) -> Option<&'a str> {
    s.iter()
        .rev()
        .find(|(sec, k, _)| sec == section && k == key)
        .map(|(_, _, v)| v.as_str())
}

/// The service a socket starts (systemd.socket(5)); `@%i.` is the template.
fn service_name(socket_file: &str, socket: &[Setting]) -> String {
    let base = socket_file.trim_end_matches(".socket");
    match setting(socket, "Socket", "Service") {
        Some(s) => s.replace("@%i.", "@."),
        None if setting(socket, "Socket", "Accept").is_some_and(yes) => format!("{base}@.service"),
        None => format!("{base}.service"),
    }
}

/// Every corpus socket: (package directory, socket path, user unit?).
fn corpus_sockets() -> Vec<(PathBuf, PathBuf, bool)> {
    let mut out = Vec::new();
    for pkg in sorted_dir(&corpus().join("systemd")) {
        for (dir, user) in [(pkg.clone(), false), (pkg.join("user"), true)] {
            for f in sorted_dir(&dir) {
                if f.extension().is_some_and(|e| e == "socket") {
                    out.push((pkg.clone(), f, user));
                }
            }
        }
    }
    out
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(r) => r.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The socket and its service copied where systemd keeps them (a user
/// unit under usr/lib/systemd/user), an EnvironmentFile= the package
/// ships pointed at the corpus's copy (so the import does not depend on
/// this machine's /etc/default).
fn stage_units(pkg: &Path, socket: &Path, service: &str, user: bool, dir: &TempDir) -> PathBuf {
    let units = dir.0.join(if user {
        "usr/lib/systemd/user"
    } else {
        "lib/systemd/system"
    });
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(socket, units.join(socket.file_name().unwrap())).unwrap();
    if let Ok(text) = std::fs::read_to_string(socket.with_file_name(service)) {
        let text: String = text
            .lines()
            .map(|l| env_file_in_corpus(pkg, l).unwrap_or_else(|| l.to_string()) + "\n")
            .collect();
        std::fs::write(units.join(service), text).unwrap();
    }
    units.join(socket.file_name().unwrap())
}

fn env_file_in_corpus(pkg: &Path, line: &str) -> Option<String> {
    let value = line.trim().strip_prefix("EnvironmentFile=")?;
    let (dash, path) = match value.strip_prefix('-') {
        Some(p) => ("-", p),
        None => ("", value),
    };
    let copy = pkg.join(path.trim_start_matches('/'));
    copy.is_file()
        .then(|| format!("EnvironmentFile={dash}{}", copy.display()))
}

#[test]
fn every_debian_socket_unit_imports_named_checked_and_no_wider_open() {
    let mut f = Failures::default();
    let sockets = corpus_sockets();
    for (pkg, socket, user) in &sockets {
        one_socket(&mut f, pkg, socket, *user);
    }
    f.assert_none("socket units", sockets.len());
}

/// Import one corpus socket with its service and check the output.
fn one_socket(f: &mut Failures, pkg: &Path, socket: &Path, user: bool) {
    let name = socket.strip_prefix(corpus()).unwrap().display().to_string();
    let sock = unit_settings(&std::fs::read_to_string(socket).unwrap());
    let socket_file = socket.file_name().unwrap().to_string_lossy().to_string();
    let service = service_name(&socket_file, &sock);
    let svc = unit_settings(
        &std::fs::read_to_string(socket.with_file_name(&service)).unwrap_or_default(),
    );
    let dir = TempDir::new("corpus-systemd");
    let staged = stage_units(pkg, socket, &service, user, &dir);
    let Some(toml) = import(f, &name, None, &[&staged]) else {
        return;
    };
    let all = chunks(&toml);
    let [chunk] = all.as_slice() else {
        let what = format!("{} services written, not one", all.len());
        return f.add(&name, "output", what);
    };
    // A template's `Service=NAME@%i.service` names no file outside systemd:
    // the importer cannot read that service, and must refuse the socket.
    let unnamed_instance = setting(&sock, "Socket", "Service").is_some_and(|s| s.contains('%'));
    if unnamed_instance && !chunk.refused() {
        f.add(
            &name,
            "Service=",
            "names an instance (%i) but the socket is served",
        );
    }
    let inputs = [(socket_file.as_str(), &sock), (service.as_str(), &svc)];
    for (file, unit) in inputs
        .into_iter()
        .take(if unnamed_instance { 1 } else { 2 })
    {
        let keys: BTreeSet<(&str, &str)> = unit
            .iter()
            .map(|(s, k, _)| (s.as_str(), k.as_str()))
            .collect();
        for (section, key) in keys.into_iter().filter(|(_, k)| !chunk.names(k)) {
            let at = format!("{file} [{section}] {key}=");
            f.add(&name, &at, "not named in the output");
        }
    }
    systemd_no_wider(f, &name, chunk, &sock, &svc);
    exec_expanded(f, &name, chunk, &svc);
    systemd_fidelity(f, &name, chunk, &(sock.clone(), svc.clone()), user);
    check(f, &name, &toml, &dir);
}

/// Identity, access, addresses and the socket's mode and owner: kept, or
/// the service is written commented out.
fn systemd_no_wider(
    f: &mut Failures,
    name: &str,
    chunk: &Chunk,
    sock: &[Setting],
    svc: &[Setting],
) {
    if chunk.refused() {
        return;
    }
    let keep = |f: &mut Failures, input: &str, ours: &str, want: &str| {
        if chunk.string(ours).as_deref() != Some(want) {
            f.add(
                name,
                &format!("{input}={want}"),
                format!("served without it: {ours} is {:?}", chunk.string(ours)),
            );
        }
    };
    for (input, ours) in [("User", "user"), ("Group", "group")] {
        if let Some(v) = setting(svc, "Service", input).filter(|v| *v != "root" && !v.is_empty()) {
            keep(f, input, ours, v);
        }
    }
    if setting(svc, "Service", "DynamicUser").is_some_and(yes)
        && chunk.string("user").is_none_or(|u| u == "root")
    {
        f.add(
            name,
            "DynamicUser=yes",
            "served as root: neither commented out nor given a user",
        );
    }
    if let Some(v) = setting(svc, "Service", "RootDirectory") {
        keep(f, "RootDirectory", "chroot", v);
    }
    // On an inet socket IPAddressAllow/Deny say who may connect; on a unix
    // one they only limit the child's own traffic (sandboxing, a comment).
    for key in ["IPAddressAllow", "IPAddressDeny"] {
        if listens_on_inet(sock)
            && setting(svc, "Service", key)
                .or(setting(sock, "Socket", key))
                .is_some()
            && chunk.value("allow").is_none()
            && chunk.value("deny").is_none()
        {
            f.add(name, &format!("{key}="), "served with no allow or deny");
        }
    }
    for (input, ours) in [
        ("SocketUser", "socket_user"),
        ("SocketGroup", "socket_group"),
    ] {
        if let Some(v) = setting(sock, "Socket", input) {
            keep(f, input, ours, v);
        }
    }
    if let Some(mode) = setting(sock, "Socket", "SocketMode") {
        let ours = chunk.string("socket_mode");
        if ours.as_deref().and_then(octal) != octal(mode) {
            f.add(
                name,
                &format!("SocketMode={mode}"),
                format!("socket_mode is {ours:?}"),
            );
        }
    }
}

/// A live service's argv is what systemd would run: no `${VAR}`, no
/// word that is `$VAR` alone (systemd.service(5): `$VAR` inside a longer
/// word is left for the program, as in an `sh -c` script) and no `%x`
/// specifier, unless the unit escaped it (`$$`, `%%`).
fn exec_expanded(f: &mut Failures, name: &str, chunk: &Chunk, svc: &[Setting]) {
    if chunk.refused() {
        return;
    }
    let exec_start = setting(svc, "Service", "ExecStart").unwrap_or("");
    let argv = chunk.value("exec");
    let words = argv.as_ref().and_then(|v| v.as_array());
    for word in words.into_iter().flatten().filter_map(|w| w.as_str()) {
        let alone = word.strip_prefix('$').is_some_and(|v| {
            !v.is_empty() && v.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
        });
        if (alone || word.contains("${")) && !exec_start.contains("$$") {
            f.add(
                name,
                "ExecStart=",
                format!("a variable is left unexpanded: {word:?}"),
            );
        }
        let spec = word
            .split('%')
            .skip(1)
            .any(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic()));
        if spec && !exec_start.contains("%%") {
            f.add(
                name,
                "ExecStart=",
                format!("a specifier is left unexpanded: {word:?}"),
            );
        }
    }
}

fn listens_on_inet(sock: &[Setting]) -> bool {
    sock.iter().any(|(s, k, v)| {
        s == "Socket"
            && (k == "ListenStream" || k == "ListenDatagram")
            && (v.parse::<u16>().is_ok() || v.parse::<std::net::SocketAddr>().is_ok())
    })
}

/// What systemd does that summond must be told (the decisions of issue
/// 16): the socket handed as stdio only with StandardInput=socket, else
/// as LISTEN_FDS; the unit's addresses in the unit's order
/// (sd_listen_fds(3)); `%t` as /run for a system unit and never /run for
/// a user unit; a socket file's mode (systemd's default 0666) and its
/// directory's (DirectoryMode=, default 0755); RuntimeDirectory=,
/// RuntimeDirectoryMode= and SupplementaryGroups= in their summond keys.
fn systemd_fidelity(f: &mut Failures, name: &str, chunk: &Chunk, units: &Units, user: bool) {
    if chunk.refused() {
        return;
    }
    let (sock, svc) = units;
    addresses_in_order(f, name, chunk, sock, user);
    // A socket file (an abstract name has no mode and no directory).
    let file = |l: &String| l.starts_with("unix:///") || l.starts_with("unixgram:///");
    if chunk.listens().iter().any(file) {
        let mode = setting(sock, "Socket", "SocketMode").unwrap_or("0666");
        let dir_mode = setting(sock, "Socket", "DirectoryMode").unwrap_or("0755");
        for (ours, want) in [("socket_mode", mode), ("socket_directory_mode", dir_mode)] {
            let got = chunk.string(ours);
            if got.as_deref().and_then(octal) != octal(want) {
                f.add(
                    name,
                    &format!("{ours} (systemd's {want})"),
                    format!("is {got:?}"),
                );
            }
        }
    }
    // StandardInput=socket: the socket is the child's stdin and stdout;
    // otherwise it gets LISTEN_FDS (sd_listen_fds(3)).
    let stdio = setting(svc, "Service", "StandardInput") == Some("socket");
    let pass = chunk.string("pass");
    if stdio == (pass.as_deref() == Some("listen_fds")) {
        let input = format!(
            "StandardInput={}",
            setting(svc, "Service", "StandardInput").unwrap_or("")
        );
        f.add(
            name,
            &input,
            format!("the socket is handed as pass = {pass:?}"),
        );
    }
    let homes = [
        ("RuntimeDirectory", "runtime_directory"),
        ("SupplementaryGroups", "extra_groups"),
    ];
    for (input, ours) in homes {
        let got = strings(chunk.value(ours));
        let values = svc.iter().filter(|(s, k, _)| s == "Service" && k == input);
        for want in values.flat_map(|(_, _, v)| v.split_whitespace()) {
            if !want.contains('%') && !got.iter().any(|g| g == want) {
                f.add(
                    name,
                    &format!("{input}={want}"),
                    format!("{ours} is {got:?}"),
                );
            }
        }
    }
    if let Some(want) = setting(svc, "Service", "RuntimeDirectoryMode") {
        let got = chunk.string("runtime_directory_mode");
        if got.as_deref().and_then(octal) != octal(want) {
            let at = format!("RuntimeDirectoryMode={want}");
            f.add(name, &at, format!("runtime_directory_mode is {got:?}"));
        }
    }
}

/// A string or an array of strings, as strings.
fn strings(v: Option<toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::String(s)) => vec![s],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Each address the unit binds (a host, a path) is served, in the unit's
/// order.
fn addresses_in_order(f: &mut Failures, name: &str, chunk: &Chunk, sock: &[Setting], user: bool) {
    let listens = chunk.listens();
    let mut last: Option<usize> = None;
    for (_, key, v) in sock.iter().filter(|(s, _, _)| s == "Socket") {
        let (inet, unix) = match key.as_str() {
            "ListenStream" => ("tcp", "unix"),
            "ListenDatagram" => ("udp", "unixgram"),
            _ => continue,
        };
        if user && v.starts_with("%t/") {
            if let Some(l) = listens
                .iter()
                .find(|l| l.contains("//run/") || l.contains("/%t/"))
            {
                let at = format!("{key}={v}");
                f.add(
                    name,
                    &at,
                    format!("a user unit's %t is $XDG_RUNTIME_DIR, not {l}"),
                );
            }
            continue;
        }
        let path = v.strip_prefix("%t/").map(|p| format!("/run/{p}"));
        let want = match (path, v.parse::<std::net::SocketAddr>()) {
            (Some(p), _) => format!("{unix}://{p}"),
            (None, _) if v.starts_with('/') && !v.contains('%') => format!("{unix}://{v}"),
            (None, Ok(addr)) => format!("{inet}://{addr}"),
            _ => continue,
        };
        match listens.iter().position(|l| *l == want) {
            None => f.add(
                name,
                &format!("{key}={v}"),
                format!("served on {listens:?}, not {want}"),
            ),
            Some(i) if last.is_some_and(|l| i < l) => f.add(
                name,
                &format!("{key}={v}"),
                format!("out of the unit's order in {listens:?}"),
            ),
            Some(i) => last = Some(i),
        }
    }
}

// ---- inetd ------------------------------------------------------------

/// The entries of an inetd.conf: (line number, fields, disabled), from
/// live lines and update-inetd's `#<off>#` ones.
fn inetd_entries(text: &str) -> Vec<(usize, Vec<String>, bool)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        let (disabled, body) = match t.strip_prefix("#<off>#") {
            Some(rest) => (true, rest),
            None if t.is_empty() || t.starts_with('#') => continue,
            None => (false, t),
        };
        out.push((
            i + 1,
            body.split_whitespace().map(str::to_string).collect(),
            disabled,
        ));
    }
    out
}

#[test]
fn every_update_inetd_entry_imports_checked_and_no_wider_open() {
    let mut f = Failures::default();
    let mut count = 0;
    for conf in sorted_dir(&corpus().join("inetd")) {
        if conf.extension().is_none_or(|e| e != "conf") {
            continue;
        }
        let name = conf.strip_prefix(corpus()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&conf).unwrap();
        let entries = inetd_entries(&text);
        count += entries.len();
        let Some(toml) = import(&mut f, &name, Some("inetd"), &[&conf]) else {
            continue;
        };
        let all = chunks(&toml);
        for (line, fields, disabled) in &entries {
            let at = format!("{name}:{line}");
            let origin = format!(":{line}: ");
            let Some(chunk) = all
                .iter()
                .find(|c| c.0.lines().next().is_some_and(|l| l.contains(&origin)))
            else {
                f.add(&at, &fields.join(" "), "no service written for this entry");
                continue;
            };
            inetd_no_wider(&mut f, &at, chunk, fields, *disabled);
        }
        check(&mut f, &name, &toml, &TempDir::new("corpus-inetd"));
    }
    f.assert_none("inetd entries", count);
}

fn inetd_no_wider(f: &mut Failures, at: &str, chunk: &Chunk, fields: &[String], disabled: bool) {
    if chunk.refused() || fields.len() < 6 {
        return;
    }
    if disabled && chunk.value("disabled").and_then(|v| v.as_bool()) != Some(true) {
        f.add(at, "#<off>#", "a disabled entry is served enabled");
    }
    let (u, g) = match fields[4].split_once(['.', ':']) {
        Some((u, g)) => (u, Some(g)),
        None => (fields[4].as_str(), None),
    };
    if u != "root" && chunk.string("user").as_deref() != Some(u) {
        f.add(
            at,
            &format!("user {u}"),
            format!("user is {:?}", chunk.string("user")),
        );
    }
    if let Some(g) = g.filter(|g| chunk.string("group").as_deref() != Some(*g)) {
        f.add(
            at,
            &format!("group {g}"),
            format!("group is {:?}", chunk.string("group")),
        );
    }
    if let Some((host, _)) = fields[0].rsplit_once(':').filter(|(h, _)| *h != "*") {
        if !chunk.listens().iter().any(|l| l.contains(host)) {
            f.add(
                at,
                &format!("bound to {host}"),
                format!("served on {:?}", chunk.listens()),
            );
        }
    }
    let program = fields.get(6).map(|p| p.rsplit('/').next().unwrap_or(p));
    if fields[5] == "/usr/sbin/tcpd"
        && program.is_some_and(tcpd_rule_may_apply)
        && chunk.value("allow").is_none()
        && chunk.value("deny").is_none()
    {
        f.add(
            at,
            "/usr/sbin/tcpd",
            "a hosts.allow/hosts.deny rule here may apply, and no allow or deny replaces it",
        );
    }
}

/// Does a rule in this machine's hosts.allow or hosts.deny name the
/// daemon `program` (or ALL)? Without one, tcpd lets everyone in, and
/// unwrapping it opens nothing.
fn tcpd_rule_may_apply(program: &str) -> bool {
    ["/etc/hosts.allow", "/etc/hosts.deny"].iter().any(|file| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.split_once(':').map(|(daemons, _)| daemons.to_string()))
            .any(|daemons| {
                daemons
                    .split([' ', ',', '\t'])
                    .any(|d| d == "ALL" || d == program || d.starts_with(&format!("{program}@")))
            })
    })
}

// ---- xinetd -----------------------------------------------------------

/// An xinetd block: (line of `service NAME`, name, attribute names and
/// their values).
type XBlock = (usize, String, Vec<(String, Vec<String>)>);

/// The `service` blocks of a file, and the attributes of its `defaults`.
fn xinetd_blocks(text: &str) -> (Vec<XBlock>, Vec<(String, Vec<String>)>) {
    let (mut blocks, mut defaults) = (Vec::new(), Vec::new());
    let mut open: Option<XBlock> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix("service ") {
            open = Some((i + 1, name.trim().to_string(), Vec::new()));
        } else if line == "defaults" {
            open = Some((i + 1, String::new(), Vec::new()));
        } else if line == "}" {
            match open.take() {
                Some((_, n, attrs)) if n.is_empty() => defaults = attrs,
                Some(b) => blocks.push(b),
                None => {}
            }
        } else if let (Some(b), Some((k, v))) = (open.as_mut(), line.split_once('=')) {
            let k = k.trim_end_matches(['+', '-']).trim().to_string();
            b.2.push((k, v.split_whitespace().map(str::to_string).collect()));
        }
    }
    (blocks, defaults)
}

#[test]
fn xinetds_own_files_import_named_checked_and_no_wider_open() {
    let mut f = Failures::default();
    let root = corpus().join("xinetd");
    let dir = TempDir::new("corpus-xinetd");
    let conf = dir.path("xinetd.conf");
    let main_text = std::fs::read_to_string(root.join("xinetd.conf")).unwrap();
    let d = root.join("xinetd.d");
    std::fs::write(
        &conf,
        main_text.replace(
            "includedir /etc/xinetd.d",
            &format!("includedir {}", d.display()),
        ),
    )
    .unwrap();
    let (_, defaults) = xinetd_blocks(&main_text);
    let mut count = 0;
    // The whole configuration (defaults apply), then each file alone.
    if let Some(toml) = import(&mut f, "xinetd/xinetd.conf", None, &[&conf]) {
        for file in sorted_dir(&d) {
            count += xinetd_file(&mut f, &file, "via xinetd.conf", &toml, &defaults);
        }
        check(&mut f, "xinetd/xinetd.conf", &toml, &dir);
    }
    for file in sorted_dir(&d) {
        let name = format!(
            "xinetd/xinetd.d/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        if let Some(toml) = import(&mut f, &name, Some("xinetd"), &[&file]) {
            xinetd_file(&mut f, &file, "alone", &toml, &[]);
            check(&mut f, &name, &toml, &dir);
        }
    }
    f.assert_none("xinetd services", count);
}

/// The services of one xinetd.d file in an import's output: every
/// attribute named, nothing wider open. How many there were.
fn xinetd_file(
    f: &mut Failures,
    file: &Path,
    how: &str,
    toml: &str,
    defaults: &[(String, Vec<String>)],
) -> usize {
    let (blocks, _) = xinetd_blocks(&std::fs::read_to_string(file).unwrap());
    let fname = file.file_name().unwrap().to_string_lossy().to_string();
    let all = chunks(toml);
    for (line, service, attrs) in &blocks {
        let at = format!("xinetd/xinetd.d/{fname}:{line} (service {service}, imported {how})");
        let origin = format!("{fname}:{line}: service {service}");
        let Some(chunk) = all
            .iter()
            .find(|c| c.0.lines().next().is_some_and(|l| l.contains(&origin)))
        else {
            f.add(&at, "service", "no service written for this block");
            continue;
        };
        let names: BTreeSet<&str> = attrs
            .iter()
            .chain(defaults)
            .map(|(k, _)| k.as_str())
            .collect();
        for key in names {
            if !chunk.names(key) {
                f.add(&at, key, "not named in the output");
            }
        }
        let resolved: Vec<(String, Vec<String>)> = defaults.iter().chain(attrs).cloned().collect();
        xinetd_no_wider(f, &at, chunk, &resolved);
    }
    blocks.len()
}

fn xinetd_no_wider(f: &mut Failures, at: &str, chunk: &Chunk, attrs: &[(String, Vec<String>)]) {
    if chunk.refused() {
        return;
    }
    let last = |k: &str| {
        attrs
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    if last("disable").is_some_and(|v| v.first().map(String::as_str) == Some("yes"))
        && chunk.value("disabled").and_then(|v| v.as_bool()) != Some(true)
    {
        f.add(at, "disable = yes", "served enabled");
    }
    // A dropped only_from entry narrows; a dropped no_access one widens.
    if let Some(v) = last("only_from") {
        if v.is_empty() {
            f.add(at, "only_from =", "empty (no one may connect) but served");
        } else if chunk.value("allow").is_none() {
            f.add(
                at,
                &format!("only_from = {}", v.join(" ")),
                "served with no allow",
            );
        }
    }
    if let Some(v) = last("no_access").filter(|v| !v.is_empty()) {
        let denied = chunk.value("deny").and_then(|d| d.as_array().map(Vec::len));
        if denied.unwrap_or(0) < v.len() {
            f.add(
                at,
                &format!("no_access = {}", v.join(" ")),
                format!("deny is {:?}", chunk.value("deny")),
            );
        }
    }
    for (attr, ours) in [("user", "user"), ("group", "group")] {
        if let Some(v) = last(attr)
            .and_then(|v| v.first().cloned())
            .filter(|v| v != "root")
        {
            if chunk.string(ours).as_deref() != Some(v.as_str()) {
                f.add(
                    at,
                    &format!("{attr} = {v}"),
                    format!("{ours} is {:?}", chunk.string(ours)),
                );
            }
        }
    }
    if let Some(host) = last("bind")
        .or(last("interface"))
        .and_then(|v| v.first().cloned())
    {
        if !chunk.listens().iter().any(|l| l.contains(&host)) {
            f.add(
                at,
                &format!("bind = {host}"),
                format!("served on {:?}", chunk.listens()),
            );
        }
    }
}
