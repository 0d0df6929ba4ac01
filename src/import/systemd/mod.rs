//! systemd socket units: a `.socket` with the `.service` it starts, found
//! beside it (`Service=`, else the same name, or `name@.service` with
//! `Accept=yes`). The [Socket] settings become the listen addresses and
//! their options, the [Service] settings the program and its sandbox;
//! specifiers (`%n`, `%N`, `%p`, `%t`, `%%`) are expanded; everything else
//! becomes a comment saying why it was left out.
//!
//! - `unit.rs`: the unit-file syntax (sections, comments, continuations).
//! - `exec.rs`: a command line as an argv, with the specifiers.
//! - `keys.rs`: what the keys map to, as tables.
//! - here: the shape: read the pair, build the `Entry` section by section.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod exec;
mod keys;
mod unit;

use exec::{specifiers, words};
use keys::{
    address, ONE_PROGRAM, RLIMITS, SANDBOX_SETTINGS, SOCKET_FLAGS, SOCKET_KNOWN, UNSERVED_LISTEN,
};
use unit::{err, parse_unit};

use super::{key, list, num, s, Entry, ImportError};

pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, Vec<ImportError>> {
    parse_with(path, text, |p| std::fs::read_to_string(p))
}

/// A section of a unit: key → values.
type Section = HashMap<String, Vec<String>>;

fn last(sec: &Section, k: &str) -> Option<String> {
    sec.get(k).and_then(|v| v.last().cloned())
}

fn all(sec: &Section, k: &str) -> Vec<String> {
    sec.get(k).cloned().unwrap_or_default()
}

fn yes(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on"))
}

/// `parse`, with the service unit read by `read_service` (the fuzzer
/// supplies it instead of the filesystem).
pub fn parse_with(
    path: &Path,
    text: &str,
    read_service: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Vec<Entry>, Vec<ImportError>> {
    let socket = parse_unit(path, text)?;
    let unit_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unit.socket")
        .to_string();
    let base = unit_name.trim_end_matches(".socket").to_string();
    let sock = socket.get("Socket").cloned().unwrap_or_default();
    let accept = yes(last(&sock, "Accept"));
    let mut e = Entry {
        name: base.clone(),
        origin: format!("{} and its service", path.display()),
        ..Entry::default()
    };
    if !listen_addresses(&mut e, &sock, &unit_name, accept) {
        return Ok(vec![e]);
    }
    socket_options(&mut e, &sock);

    // The service beside it.
    let service_name = last(&sock, "Service").unwrap_or_else(|| {
        if accept {
            format!("{base}@.service")
        } else {
            format!("{base}.service")
        }
    });
    let service_path: PathBuf = path.with_file_name(&service_name);
    let service_text = read_service(&service_path).map_err(|x| {
        vec![err(
            &service_path,
            None,
            format!("cannot read the socket's service: {x}"),
        )]
    })?;
    let service = parse_unit(&service_path, &service_text)?;
    let svc = service.get("Service").cloned().unwrap_or_default();
    if !exec_line(&mut e, &svc, &service_path, &service_name) {
        return Ok(vec![e]);
    }
    start_mode(&mut e, &svc, accept);
    credentials(&mut e, &svc, accept);
    environment(&mut e, &svc);
    rlimits(&mut e, &svc);
    dropped_service_settings(&mut e, &svc);
    Ok(vec![e])
}

/// The `Listen*=` lines as `listen`; false when there is none to serve
/// (the entry is then refused).
fn listen_addresses(e: &mut Entry, sock: &Section, unit_name: &str, accept: bool) -> bool {
    let names = all(sock, "FileDescriptorName");
    let mut listen = Vec::new();
    for (key, stream) in [("ListenStream", true), ("ListenDatagram", false)] {
        for v in all(sock, key) {
            let v = specifiers(&v, unit_name).unwrap_or(v);
            match address(&v, stream) {
                Some(a) => listen.push(a),
                None => e.drop_setting(format!("{key}={v}: not an address summond listens on")),
            }
        }
    }
    for key in UNSERVED_LISTEN {
        for v in all(sock, key) {
            e.drop_setting(format!("{key}={v}: not served by summond"));
        }
    }
    if listen.is_empty() {
        e.refuse("no stream or datagram address to listen on");
        return false;
    }
    let name = names.last().cloned();
    let items: Vec<String> = listen
        .iter()
        .map(|a| match &name {
            Some(n) if !accept => format!("{{ address = {}, name = {} }}", s(a), s(n)),
            _ => s(a),
        })
        .collect();
    e.set("listen", format!("[{}]", items.join(", ")));
    let bind = last(sock, "BindIPv6Only");
    let any_v6_wildcard = listen.iter().any(|a| a.contains("[::]"));
    match bind.as_deref() {
        Some("ipv6-only") => {}
        _ if any_v6_wildcard => e.set("v6only", "false".into()),
        _ => {}
    }
    true
}

/// The [Socket] options with a summond key; the rest as comments.
fn socket_options(e: &mut Entry, sock: &Section) {
    let one = |k: &str| last(sock, k);
    if let Some(n) = one("MaxConnections") {
        e.set("max_instances", num(&n));
    }
    if let Some(n) = one("MaxConnectionsPerSource") {
        e.set("max_per_source", num(&n));
    }
    if let Some(m) = one("SocketMode") {
        e.set("socket_mode", s(&m));
    }
    if let Some(u) = one("SocketUser") {
        e.set("socket_user", s(&u));
    }
    if let Some(g) = one("SocketGroup") {
        e.set("socket_group", s(&g));
    }
    if let Some(b) = one("Backlog") {
        e.set("backlog", num(&b));
    }
    for (key, ours) in SOCKET_FLAGS {
        if yes(one(key)) {
            e.set(ours, "true".into());
        }
    }
    for (k, v) in sock {
        if !SOCKET_KNOWN.contains(&k.as_str()) && !UNSERVED_LISTEN.contains(&k.as_str()) {
            e.drop_setting(format!(
                "{k}={}: socket tuning summond does not carry",
                v.join(" ")
            ));
        }
    }
}

/// `ExecStart=` as `exec`; false when there is none (the entry is then
/// refused).
fn exec_line(e: &mut Entry, svc: &Section, service_path: &Path, service_name: &str) -> bool {
    let Some(exec) = last(svc, "ExecStart") else {
        e.refuse(format!("{} has no ExecStart", service_path.display()));
        return false;
    };
    // Prefixes: - (failure ignored), @ (second word is argv[0]), +, !, !!.
    let mut line = exec.as_str();
    let mut at = false;
    while let Some(c) = line.chars().next().filter(|c| "-@+!:".contains(*c)) {
        match c {
            '@' => at = true,
            '-' => e.drop_setting("ExecStart's `-` (failure ignored): summond logs every failure"),
            _ => e.drop_setting(format!(
                "ExecStart's `{c}` prefix: privileges are set with user and group"
            )),
        }
        line = &line[1..];
    }
    let expanded = match specifiers(line, service_name) {
        Ok(x) => x,
        Err(c) => {
            e.unusable = Some(format!(
                "ExecStart uses the specifier %{c}, which has no value outside systemd"
            ));
            return false;
        }
    };
    let mut argv = words(&expanded);
    if at && argv.len() > 1 {
        argv.remove(1);
    }
    if argv.is_empty() {
        e.refuse("ExecStart is empty");
        return false;
    }
    e.set("exec", list(argv.iter().map(String::as_str)));
    true
}

/// Accept mode and how the sockets are handed over.
fn start_mode(e: &mut Entry, svc: &Section, accept: bool) {
    let stdin_socket = last(svc, "StandardInput").as_deref() == Some("socket");
    if !accept {
        e.set("accept", "false".into());
    }
    if !stdin_socket {
        e.set("pass", s("listen_fds"));
    }
}

/// Who the child runs as and what it starts with.
fn credentials(e: &mut Entry, svc: &Section, accept: bool) {
    let sone = |k: &str| last(svc, k);
    if let Some(u) = sone("User").filter(|u| u != "root") {
        e.set("user", s(&u));
    }
    if let Some(g) = sone("Group") {
        e.set("group", s(&g));
    }
    if let Some(w) = sone("WorkingDirectory") {
        match w.trim_start_matches('-') {
            d if d.starts_with('/') => e.set("working_directory", s(d)),
            d => e.drop_setting(format!("WorkingDirectory={d}: not an absolute path")),
        }
    }
    if let Some(m) = sone("UMask") {
        e.set("umask", s(&m));
    }
    if let Some(n) = sone("Nice") {
        e.set("nice", num(&n));
    }
    // systemd's default is off; summond's is on.
    let no_new_privs = yes(sone("NoNewPrivileges"));
    e.set("no_new_privs", no_new_privs.to_string());
    if let Some(t) = sone("RuntimeMaxSec") {
        if accept && t.chars().all(|c| c.is_ascii_digit()) {
            e.set("max_runtime", s(&format!("{t}s")));
        } else {
            e.drop_setting(format!("RuntimeMaxSec={t}: summond's max_runtime is for accept mode, in plain seconds here"));
        }
    }
}

/// `Environment=` and `EnvironmentFile=` as `env`.
fn environment(e: &mut Entry, svc: &Section) {
    let mut env: Vec<(String, String)> = Vec::new();
    for v in all(svc, "Environment") {
        for w in words(&v) {
            if let Some((k, val)) = w.split_once('=').filter(|(k, _)| !k.is_empty()) {
                env.retain(|(n, _)| n != k);
                env.push((k.to_string(), val.to_string()));
            }
        }
    }
    for f in all(svc, "EnvironmentFile") {
        let optional = f.starts_with('-');
        let file = f.trim_start_matches('-');
        match std::fs::read_to_string(file) {
            Ok(t) => {
                for l in t
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    if let Some((k, val)) = l.split_once('=') {
                        let val = val.trim().trim_matches('"');
                        env.retain(|(n, _)| n != k.trim());
                        env.push((k.trim().to_string(), val.to_string()));
                    }
                }
            }
            Err(_) if optional => {}
            Err(x) => e.drop_setting(format!("EnvironmentFile={file}: cannot read it here ({x})")),
        }
    }
    if !env.is_empty() {
        let pairs: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), s(v)))
            .collect();
        e.set("env", format!("{{ {} }}", pairs.join(", ")));
    }
}

/// `Limit*=` as `rlimits`.
fn rlimits(e: &mut Entry, svc: &Section) {
    let mut rlimits = Vec::new();
    for (key, ours) in RLIMITS {
        if let Some(v) = last(svc, key) {
            // soft:hard: summond sets both to one value; the hard one.
            let Some(last) = v.split(':').rfind(|p| !p.trim().is_empty()) else {
                e.drop_setting(format!("{key}={v}: no value"));
                continue;
            };
            let last = last.trim();
            let v = num(last);
            rlimits.push(format!("{ours} = {v}"));
        }
    }
    if !rlimits.is_empty() {
        e.set("rlimits", format!("{{ {} }}", rlimits.join(", ")));
    }
}

/// The [Service] settings summond has no home for.
fn dropped_service_settings(e: &mut Entry, svc: &Section) {
    for k in SANDBOX_SETTINGS {
        if let Some(v) = svc.get(*k) {
            e.drop_setting(format!(
                "{k}={}: namespace sandboxing is systemd's; use chroot, user and no_new_privs",
                v.join(" ")
            ));
        }
    }
    for k in ONE_PROGRAM {
        if let Some(v) = svc.get(*k) {
            e.drop_setting(format!(
                "{k}={}: summond starts one program per activation",
                v.join(" ")
            ));
        }
    }
}
