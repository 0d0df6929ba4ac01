//! The [Service] section: the program (ExecStart= as systemd would run
//! it), its environment, credentials, standard streams, directories and
//! limits. A setting whose loss would run the program as someone else or
//! with more than the unit allows refuses the service.

use super::envfile::{self, EnvFile};
use super::exec::{self, Prefixes, Specifiers, Used};
use super::keys::RLIMITS;
use super::unit::Section;
use super::{yes, File, Import};
use crate::import::{group_name, key, list, num, s, user_name};

const SECTION: &str = "Service";

/// The unit's variables and the environment files not read.
#[derive(Default)]
struct Env {
    vars: Vec<(String, String)>,
    /// "FILE (why)" for each file the importer did not read.
    unread: Vec<String>,
    /// Names UnsetEnvironment= removes (systemd's own variables too).
    unset: Vec<String>,
}

impl Env {
    fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(n, _)| n != k);
        self.vars.push((k.to_string(), v.to_string()));
    }

    fn get(&self, k: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    }
}

pub fn apply(im: &mut Import, svc: &Section, spec: &Specifiers<'_>, accept: bool) {
    let env = environment(im, svc, spec);
    let prefixes = exec_start(im, svc, spec, &env);
    credentials(im, svc, spec, &prefixes);
    standard_streams(im, svc, accept);
    process(im, svc, spec, accept);
    directories(im, svc, spec);
    rlimits(im, svc);
    im.access_keys(File::Service, SECTION, svc);
}

/// `Environment=` and `EnvironmentFile=` (in systemd's order: the files
/// after the assignments) into `env`; every file read at import, named
/// with its variables, since a change there needs the import run again.
fn environment(im: &mut Import, svc: &Section, spec: &Specifiers<'_>) -> Env {
    let mut env = Env::default();
    for v in svc.all("Environment") {
        let words = match spec.expand(&v).and_then(|v| exec::split(&v, true, false)) {
            Ok(words) => words,
            Err(why) => {
                let text = format!("Environment={v}: {why}; systemd ignores the line");
                im.drop_key(File::Service, SECTION, "Environment", text);
                continue;
            }
        };
        for w in words {
            if let Some((k, val)) = w.text.split_once('=').filter(|(k, _)| exec::is_env_name(k)) {
                env.set(k, val);
            }
        }
        im.carry(File::Service, SECTION, "Environment");
    }
    for f in svc.all("EnvironmentFile") {
        environment_file(im, &mut env, &f, spec);
    }
    // UnsetEnvironment= (NAME, or NAME=VALUE for that assignment only)
    // removes the unit's own variables too, before ExecStart is expanded.
    let unset: Vec<String> = svc
        .all("UnsetEnvironment")
        .iter()
        .flat_map(|v| exec::split(v, true, true).unwrap_or_default())
        .map(|w| w.text)
        .collect();
    for u in &unset {
        match u.split_once('=') {
            Some((k, v)) => env.vars.retain(|(n, val)| !(n == k && val == v)),
            None => {
                env.vars.retain(|(n, _)| n != u);
                env.unset.push(u.clone());
            }
        }
    }
    if !unset.is_empty() {
        let text = format!(
            "UnsetEnvironment={}: applied to the unit's variables (not in env, nor in exec); \
             the child still gets summond's own variables of those names (clear_env, passenv)",
            unset.join(" ")
        );
        im.drop_key(File::Service, SECTION, "UnsetEnvironment", text);
    }
    if !env.vars.is_empty() {
        let pairs: Vec<String> = env
            .vars
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), s(v)))
            .collect();
        im.e.set("env", format!("{{ {} }}", pairs.join(", ")));
    }
    env
}

fn environment_file(im: &mut Import, env: &mut Env, value: &str, spec: &Specifiers<'_>) {
    let optional = value.starts_with('-');
    let file = match spec.expand(value.trim_start_matches('-')) {
        Ok(f) => f,
        Err(why) => {
            env.unread.push(format!("{value} ({why})"));
            let text = format!("EnvironmentFile={value}: not read: {why}");
            return im.drop_key(File::Service, SECTION, "EnvironmentFile", text);
        }
    };
    let text = match envfile::read(&file) {
        EnvFile::Read(vars) => {
            let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
            let text = format!(
                "EnvironmentFile={value} as a file: read at import, its variables ({}) are in \
                 env and exec; run the import again after changing it",
                names.join(", ")
            );
            for (k, v) in &vars {
                env.set(k, v);
            }
            text
        }
        EnvFile::Missing if optional => format!(
            "EnvironmentFile={value}: not there at import (optional: systemd goes on without \
             it); run the import again if it appears"
        ),
        EnvFile::Missing => {
            let why = format!(
                "EnvironmentFile={value} is not there, and systemd does not start the \
                 service without it"
            );
            return im.refuse(File::Service, SECTION, "EnvironmentFile", why);
        }
        EnvFile::NotRead(why) => {
            env.unread.push(format!("EnvironmentFile={value} ({why})"));
            format!(
                "EnvironmentFile={value}: not read: {why} (the importer copies only what every \
                 user may read)"
            )
        }
    };
    im.drop_key(File::Service, SECTION, "EnvironmentFile", text);
}

/// The variables systemd gives every program, which a command line may
/// use (systemd.exec(5), "Environment variables in spawned processes"),
/// where the importer knows their value.
fn static_var(name: &str, svc: &Section, spec: &Specifiers<'_>) -> Option<String> {
    let user = svc.last("User").unwrap_or_else(|| "root".into());
    let entry = || nix::unistd::User::from_name(&user).ok().flatten();
    let dirs = |key: &str, base: &str| {
        let dirs: Vec<String> = svc
            .all(key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|d| spec.expand(&d).ok())
            .map(|d| format!("{base}/{}", d.trim_matches('/')))
            .collect();
        (!dirs.is_empty()).then(|| dirs.join(":"))
    };
    match name {
        "USER" | "LOGNAME" => Some(user.clone()),
        "HOME" => entry().map(|u| u.dir.display().to_string()),
        "SHELL" => entry().map(|u| u.shell.display().to_string()),
        "RUNTIME_DIRECTORY" => dirs("RuntimeDirectory", spec.runtime_dir.ok()?),
        _ if spec.user_unit => None,
        "STATE_DIRECTORY" => dirs("StateDirectory", "/var/lib"),
        "CACHE_DIRECTORY" => dirs("CacheDirectory", "/var/cache"),
        "LOGS_DIRECTORY" => dirs("LogsDirectory", "/var/log"),
        "CONFIGURATION_DIRECTORY" => dirs("ConfigurationDirectory", "/etc"),
        _ => None,
    }
}

/// A variable systemd sets for the program with a value only it knows
/// when it starts the program: why the importer cannot expand it.
fn run_time_var(name: &str, svc: &Section, spec: &Specifiers<'_>) -> Option<&'static str> {
    const CREDENTIALS: [&str; 5] = [
        "LoadCredential",
        "LoadCredentialEncrypted",
        "SetCredential",
        "SetCredentialEncrypted",
        "ImportCredential",
    ];
    let dirs = [
        ("STATE_DIRECTORY", "StateDirectory"),
        ("CACHE_DIRECTORY", "CacheDirectory"),
        ("LOGS_DIRECTORY", "LogsDirectory"),
        ("CONFIGURATION_DIRECTORY", "ConfigurationDirectory"),
    ];
    match name {
        "CREDENTIALS_DIRECTORY" if CREDENTIALS.iter().any(|k| !svc.all(k).is_empty()) => Some(
            "systemd sets it at run time to the credentials it makes for the program, which \
             summond does not make",
        ),
        "INVOCATION_ID" | "JOURNAL_STREAM" | "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES"
        | "SYSTEMD_EXEC_PID" | "NOTIFY_SOCKET" | "WATCHDOG_USEC" | "WATCHDOG_PID"
        | "MEMORY_PRESSURE_WATCH" | "MEMORY_PRESSURE_WRITE" | "MANAGERPID" | "TRIGGER_UNIT"
        | "TRIGGER_PATH" | "TRIGGER_TIMER_REALTIME_USEC" | "TRIGGER_TIMER_MONOTONIC_USEC" => {
            Some("systemd sets it at run time, to a value the importer cannot know")
        }
        _ if spec.user_unit && dirs.iter().any(|(v, k)| *v == name && !svc.all(k).is_empty()) => {
            Some("systemd sets it at run time to a directory of the user's, which the importer does not guess")
        }
        _ => None,
    }
}

/// `ExecStart=` as `exec`: the argv systemd would run.
fn exec_start(im: &mut Import, svc: &Section, spec: &Specifiers<'_>, env: &Env) -> Prefixes {
    let lines = svc.all("ExecStart");
    let Some(line) = lines.last() else {
        im.e.refuse("the service has no ExecStart");
        return Prefixes::default();
    };
    if lines.len() > 1 {
        let why = "ExecStart= is given more than once, which systemd runs one after the \
                   other only for Type=oneshot; summond runs one program";
        im.refuse(File::Service, SECTION, "ExecStart", why.into());
        return Prefixes::default();
    }
    let (prefixes, command) = exec::prefixes(line);
    let lookup = |n: &str| {
        env.get(n)
            .or_else(|| static_var(n, svc, spec).filter(|_| !env.unset.iter().any(|u| u == n)))
    };
    let mut used = Used::default();
    match argv(command, spec, &prefixes, &lookup, &mut used) {
        Ok(argv) => {
            im.e.set("exec", list(argv.iter().map(String::as_str)));
            im.carry(File::Service, SECTION, "ExecStart");
            let run_time: Vec<String> = used
                .unset
                .iter()
                .filter_map(|n| run_time_var(n, svc, spec).map(|why| format!("${n}: {why}")))
                .collect();
            used.unset.retain(|n| run_time_var(n, svc, spec).is_none());
            if !run_time.is_empty() {
                im.e.refuse(format!("ExecStart uses {}", run_time.join("; ")));
            }
            exec_notes(im, &prefixes, &argv, line, &used, env);
        }
        Err(why) => {
            let why = format!("ExecStart={line}: {why}");
            im.refuse(File::Service, SECTION, "ExecStart", why);
        }
    }
    prefixes
}

/// The words of the command, expanded, with `@`'s argv[0] taken out.
fn argv(
    command: &str,
    spec: &Specifiers<'_>,
    prefixes: &Prefixes,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Used,
) -> Result<Vec<String>, String> {
    let words = exec::split(command, true, false)?;
    if words.iter().any(|w| w.separator) {
        return Err(
            "it holds several commands (a lone `;`), which systemd runs one \
                    after the other only for Type=oneshot; summond runs one program"
                .into(),
        );
    }
    if words.first().is_some_and(|w| w.text.starts_with('$')) {
        return Err("the program is a variable, which systemd does not allow".into());
    }
    let words = words
        .into_iter()
        .map(|w| spec.expand(&w.text))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv = if prefixes.no_env {
        words
    } else {
        exec::expand_env(words, lookup, used)?
    };
    if prefixes.argv0 && argv.len() > 1 {
        argv.remove(1);
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err("no program to run".into());
    }
    Ok(argv)
}

/// What the prefixes and the variables mean for the service, as
/// comments; a variable that may come from a file not read refuses it.
fn exec_notes(im: &mut Import, p: &Prefixes, argv: &[String], line: &str, used: &Used, env: &Env) {
    let mut notes = Vec::new();
    if p.ignore_failure {
        notes.push("its `-` (a failing exit counts as success): summond logs and counts every exit, and failing ones count toward the crash guard".to_string());
    }
    if p.argv0 {
        let (_, command) = exec::prefixes(line);
        let given = exec::split(command, true, true)
            .ok()
            .and_then(|w| w.into_iter().nth(1));
        if let Some(given) = given.map(|w| w.text) {
            let base = argv[0].rsplit('/').next().unwrap_or(&argv[0]);
            if given != argv[0] && given != base {
                notes.push(format!(
                    "its `@` argv[0] \"{given}\": summond passes the program's path as argv[0]"
                ));
            }
        }
    }
    if p.full_privileges || p.no_setuid {
        notes.push("its `+`/`!`: systemd runs the program as root without User=/Group= (the program drops privileges itself), and so does this service".into());
    }
    if p.ambient_fallback {
        notes.push(
            "its `!!`: no effect where the kernel has ambient capabilities (Linux 4.3 on)".into(),
        );
    }
    // With a file not read, an unset variable may be that file's: the
    // refusal below says so instead.
    let unset = used.unset.iter().filter(|n| !n.is_empty());
    for n in unset.filter(|_| env.unread.is_empty()) {
        notes.push(format!(
            "its ${n} is set nowhere the importer read: empty, as systemd makes it"
        ));
    }
    for n in notes {
        im.e.drop_setting(format!("ExecStart: {n}"));
    }
    if !used.unset.is_empty() && !env.unread.is_empty() {
        im.e.refuse(format!(
            "ExecStart uses ${}, which may come from {}, not read; make it readable by \
             every user or write the program's arguments by hand",
            used.unset.join(", $"),
            env.unread.join(", ")
        ));
    }
}

/// Who the program runs as: User=, Group=, SupplementaryGroups=,
/// DynamicUser=, RootDirectory=. A user or group unknown here, a dynamic
/// user, or a root that cannot be mapped refuses the service (summond
/// would run it as root, or unconfined).
fn credentials(im: &mut Import, svc: &Section, spec: &Specifiers<'_>, p: &Prefixes) {
    let privileged = p.full_privileges || p.no_setuid;
    if yes(svc.last("DynamicUser")) {
        let why = "DynamicUser=yes: systemd runs the program as a user allocated for it, \
                   summond has none; create a system user and name it in `user`";
        im.refuse(File::Service, SECTION, "DynamicUser", why.into());
    } else if svc.last("DynamicUser").is_some() {
        im.carry(File::Service, SECTION, "DynamicUser");
    }
    for (k, ours) in [("User", "user"), ("Group", "group")] {
        let Some(v) = svc.last(k) else { continue };
        let given = spec.expand(&v).unwrap_or(v.clone());
        let known = if k == "User" {
            user_name(&given)
        } else {
            group_name(&given)
        };
        // A number is written as its name: summond's user and group
        // are names.
        let Some(name) = known else {
            let why = format!("{k}={v}: no such {} here; create it or name another", ours);
            im.refuse(File::Service, SECTION, k, why);
            continue;
        };
        let is_root = k == "User" && name == "root";
        if !privileged && !is_root {
            im.e.set(ours, s(&name));
        }
        im.carry(File::Service, SECTION, k);
    }
    let groups: Vec<String> = svc
        .all("SupplementaryGroups")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|g| group_name(&g).unwrap_or(g))
        .collect();
    if !groups.is_empty() {
        if !privileged {
            im.e.set("extra_groups", list(groups.iter().map(String::as_str)));
        }
        im.carry(File::Service, SECTION, "SupplementaryGroups");
    }
    root_directory(im, svc, spec);
}

pub(super) fn user_exists(name: &str) -> bool {
    user_name(name).is_some()
}

pub(super) fn group_exists(name: &str) -> bool {
    group_name(name).is_some()
}

/// RootDirectory= is `chroot`; RootImage= (a disk image) has no mapping.
fn root_directory(im: &mut Import, svc: &Section, spec: &Specifiers<'_>) {
    if let Some(v) = svc.last("RootDirectory") {
        match spec.expand(&v) {
            Ok(d) if d.starts_with('/') => {
                im.e.set("chroot", s(&d));
                im.carry(File::Service, SECTION, "RootDirectory");
            }
            Ok(_) => im.refuse(
                File::Service,
                SECTION,
                "RootDirectory",
                format!("RootDirectory={v}: not an absolute path; summond's chroot needs one"),
            ),
            Err(why) => im.refuse(
                File::Service,
                SECTION,
                "RootDirectory",
                format!("RootDirectory={v}: {why}"),
            ),
        }
    }
    if let Some(v) = svc.last("RootImage") {
        let why = format!(
            "RootImage={v}: the program runs inside a disk image, which summond cannot \
             mount; mount it and name the directory in `chroot`"
        );
        im.refuse(File::Service, SECTION, "RootImage", why);
    }
}

/// StandardInput=/Output=/Error=: the connection as stdin and stdout
/// (`pass = "stdio"`), else the sockets as LISTEN_FDS; stderr to
/// summond's log (systemd's journal), the connection or /dev/null.
fn standard_streams(im: &mut Import, svc: &Section, accept: bool) {
    let stdin = svc.last("StandardInput");
    let stdio = stdin.as_deref() == Some("socket");
    if !accept {
        im.e.set("accept", "false".into());
    }
    if !stdio {
        im.e.set("pass", s("listen_fds"));
    }
    let to_log = [
        "journal",
        "syslog",
        "kmsg",
        "journal+console",
        "syslog+console",
        "kmsg+console",
        "inherit",
    ];
    for (k, value) in [
        ("StandardInput", stdin),
        ("StandardOutput", svc.last("StandardOutput")),
        ("StandardError", svc.last("StandardError")),
    ] {
        let Some(v) = value else { continue };
        let carried = match (k, v.as_str()) {
            ("StandardInput", "socket" | "null") => true,
            ("StandardOutput", "socket" | "inherit") if stdio => true,
            ("StandardOutput", v) if !stdio => to_log.contains(&v),
            ("StandardError", v) if to_log.contains(&v) => true,
            ("StandardError", "null") => {
                im.e.set("stderr", s("null"));
                stdio
            }
            ("StandardError", "socket") if stdio => {
                im.e.set("stderr", s("socket"));
                true
            }
            _ => false,
        };
        if carried {
            im.carry(File::Service, SECTION, k);
        } else if k == "StandardOutput" && stdio {
            let why = format!(
                "{k}={v}: with StandardInput=socket summond gives the program's stdout the \
                 connection too, so what the unit sends elsewhere (its log) would go to the \
                 client; have the program write it to stderr, or write exec by hand"
            );
            im.refuse(File::Service, SECTION, k, why);
        } else {
            let text = format!("{k}={v}: summond gives fd 0 and 1 the connection (pass = \"stdio\") or /dev/null and its log (listen_fds), and fd 2 its log, the connection or /dev/null");
            im.drop_key(File::Service, SECTION, k, text);
        }
    }
}

/// The process: Type=, WorkingDirectory=, UMask=, Nice=,
/// NoNewPrivileges=, RuntimeMaxSec=.
fn process(im: &mut Import, svc: &Section, spec: &Specifiers<'_>, accept: bool) {
    if let Some(t) = svc.last("Type") {
        if t == "forking" {
            let why = "Type=forking: the program goes into the background and its first \
                       process exits, which summond takes as the end of the service; run \
                       it in the foreground (its own flag for that)";
            im.refuse(File::Service, SECTION, "Type", why.into());
        }
    }
    if let Some(w) = svc.last("WorkingDirectory") {
        let dir = spec.expand(w.trim_start_matches('-'));
        match dir {
            Ok(d) if d.starts_with('/') => {
                im.e.set("working_directory", s(&d));
                im.carry(File::Service, SECTION, "WorkingDirectory");
            }
            _ => im.drop_key(
                File::Service,
                SECTION,
                "WorkingDirectory",
                format!("WorkingDirectory={w}: not an absolute path here; the program starts in /"),
            ),
        }
    }
    for (k, ours, number) in [("UMask", "umask", false), ("Nice", "nice", true)] {
        if let Some(v) = svc.last(k) {
            im.e.set(ours, if number { num(&v) } else { s(&v) });
            im.carry(File::Service, SECTION, k);
        }
    }
    // systemd's default is off; summond's is on: always written.
    let nnp = svc.last("NoNewPrivileges");
    im.e.set("no_new_privs", yes(nnp.clone()).to_string());
    if nnp.is_some() {
        im.carry(File::Service, SECTION, "NoNewPrivileges");
    }
    if let Some(t) = svc.last("RuntimeMaxSec") {
        if let Some(secs) = timespan_secs(&t).filter(|_| accept) {
            im.e.set("max_runtime", s(&format!("{secs}s")));
            im.carry(File::Service, SECTION, "RuntimeMaxSec");
        } else {
            im.drop_key(File::Service, SECTION, "RuntimeMaxSec", format!("RuntimeMaxSec={t}: summond's max_runtime is for accept mode, in plain seconds here"));
        }
    }
}

/// RuntimeDirectory= (names under /run, created for the service's user)
/// and RuntimeDirectoryMode=.
fn directories(im: &mut Import, svc: &Section, spec: &Specifiers<'_>) {
    let names: Vec<String> = svc
        .all("RuntimeDirectory")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    if names.is_empty() {
        return;
    }
    let expanded: Result<Vec<String>, String> = names.iter().map(|n| spec.expand(n)).collect();
    let valid = expanded
        .as_ref()
        .is_ok_and(|ns| ns.iter().all(|n| runtime_name_ok(n)));
    match expanded {
        Ok(ns) if valid => {
            let value = match ns.as_slice() {
                [one] => s(one),
                many => list(many.iter().map(String::as_str)),
            };
            im.e.set("runtime_directory", value);
            im.carry(File::Service, SECTION, "RuntimeDirectory");
            if let Some(m) = svc.last("RuntimeDirectoryMode") {
                im.e.set("runtime_directory_mode", s(&m));
                im.carry(File::Service, SECTION, "RuntimeDirectoryMode");
            }
        }
        _ => im.drop_key(File::Service, SECTION, "RuntimeDirectory", format!("RuntimeDirectory={}: not a relative name summond creates under /run; create it by hand", names.join(" "))),
    }
}

/// `[A-Za-z0-9_.-]+` segments joined by `/`, none `.` or `..`.
fn runtime_name_ok(name: &str) -> bool {
    name.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    })
}

/// `Limit*=` as `rlimits` (soft:hard: summond sets both to one value,
/// the hard one; `infinity` is the most the kernel allows, as systemd's).
/// A value above what a child can get here is written as that most, with
/// a comment: lower, never refused, as `--check` would refuse it.
fn rlimits(im: &mut Import, svc: &Section) {
    let mut rlimits = Vec::new();
    for (k, ours) in RLIMITS {
        let Some(v) = svc.last(k) else { continue };
        let Some(hard) = v.split(':').rfind(|p| !p.trim().is_empty()) else {
            im.drop_key(File::Service, SECTION, k, format!("{k}={v}: no value"));
            continue;
        };
        let hard = hard.trim();
        // LimitCPU='s time span (1h) in seconds.
        let hard = match timespan_secs(hard) {
            Some(secs) if k == "LimitCPU" => secs.to_string(),
            _ => hard.to_string(),
        };
        let hard = hard.as_str();
        match over_ceiling(ours, hard) {
            Some((max, why)) => {
                rlimits.push(format!("{ours} = {max}"));
                let text = format!(
                    "{k}={v}: written as {ours} = {max}, the most a child can get here ({why})"
                );
                im.drop_key(File::Service, SECTION, k, text);
            }
            None => {
                rlimits.push(format!("{ours} = {}", num(hard)));
                im.carry(File::Service, SECTION, k);
            }
        }
    }
    if !rlimits.is_empty() {
        im.e.set("rlimits", format!("{{ {} }}", rlimits.join(", ")));
    }
}

/// A systemd time span (`90`, `5min`, `1h 30min`, `1.5s`) in whole
/// seconds, rounded up as systemd rounds LimitCPU=; `None` for anything
/// else (`infinity` included).
pub fn timespan_secs(text: &str) -> Option<u64> {
    const UNITS: &[(&str, f64)] = &[
        ("usec", 1e-6),
        ("us", 1e-6),
        ("msec", 1e-3),
        ("ms", 1e-3),
        ("seconds", 1.0),
        ("second", 1.0),
        ("sec", 1.0),
        ("s", 1.0),
        ("minutes", 60.0),
        ("minute", 60.0),
        ("min", 60.0),
        ("m", 60.0),
        ("hours", 3600.0),
        ("hour", 3600.0),
        ("hr", 3600.0),
        ("h", 3600.0),
        ("days", 86400.0),
        ("day", 86400.0),
        ("d", 86400.0),
        ("weeks", 604800.0),
        ("week", 604800.0),
        ("w", 604800.0),
    ];
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = rest[end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "" => 1.0,
            u => UNITS.iter().find(|(name, _)| *name == u)?.1,
        };
        total += n * factor;
        rest = rest[unit_end..].trim_start();
    }
    Some(total.ceil() as u64)
}

/// The most a child can get of `ours` when `value` asks for more
/// (`infinity` is not more: summond reads it as that most itself).
fn over_ceiling(ours: &str, value: &str) -> Option<(u64, String)> {
    let asked = crate::config::units::size(value).ok()??;
    let (max, why) = crate::config::rlimit_ceiling(ours)?;
    (asked > max).then_some((max, why))
}
