//! systemd socket units: a `.socket` with the `.service` it starts, found
//! beside it (`Service=`, else the same name, or `name@.service` with
//! `Accept=yes`). The [Socket] settings become the listen addresses and
//! their options, the [Service] settings the program and its sandbox;
//! specifiers (`%n`, `%N`, `%p`, `%t`, `%%`) are expanded; everything else
//! becomes a comment saying why it was left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{key, list, num, s, Entry, ImportError};

/// One unit file: section → key → values in order (a key may repeat; an
/// empty assignment resets it, as systemd does).
type Unit = HashMap<String, HashMap<String, Vec<String>>>;

fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> ImportError {
    ImportError {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn parse_unit(path: &Path, text: &str) -> Result<Unit, Vec<ImportError>> {
    let mut unit: Unit = HashMap::new();
    let mut section: Option<String> = None;
    let mut errors = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // A trailing backslash continues the line.
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let Some(sec) = &section else {
            errors.push(err(path, Some(start), "a setting before any [Section]"));
            continue;
        };
        let Some((k, v)) = line.split_once('=') else {
            errors.push(err(path, Some(start), format!("`{line}` is not Key=value")));
            continue;
        };
        let values = unit
            .entry(sec.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default();
        let v = v.trim();
        if v.is_empty() {
            values.clear();
        } else {
            values.push(v.to_string());
        }
    }
    if errors.is_empty() {
        Ok(unit)
    } else {
        Err(errors)
    }
}

/// Words of a command line, with "double" and 'single' quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Expand the specifiers a socket-activated service line may use.
fn specifiers(text: &str, unit_name: &str) -> Result<String, char> {
    let prefix = unit_name.split(['@', '.']).next().unwrap_or(unit_name);
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(unit_name),
            Some('N') => out.push_str(unit_name.rsplit_once('.').map_or(unit_name, |(n, _)| n)),
            Some('p') => out.push_str(prefix),
            Some('t') => out.push_str("/run"),
            Some(other) => return Err(other),
            None => out.push('%'),
        }
    }
    Ok(out)
}

/// `ListenStream=`/`ListenDatagram=` value → a summond address.
fn address(value: &str, stream: bool) -> Option<String> {
    let (inet, unix) = if stream {
        ("tcp", "unix")
    } else {
        ("udp", "unixgram")
    };
    // A path (unix:///run/x) or an abstract name (unix://@x).
    if value.starts_with('/') || value.starts_with('@') {
        return Some(format!("{unix}://{value}"));
    }
    if let Ok(port) = value.parse::<u16>() {
        return Some(format!("{inet}://[::]:{port}"));
    }
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return Some(format!("{inet}://{value}"));
    }
    None
}

/// Socket kinds summond does not serve (each is reported).
const UNSERVED_LISTEN: &[&str] = &[
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

const SANDBOX_SETTINGS: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "PrivateNetwork",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "MemoryDenyWriteExecute",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
];

pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, Vec<ImportError>> {
    parse_with(path, text, |p| std::fs::read_to_string(p))
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
    let get = |k: &str| sock.get(k).cloned().unwrap_or_default();
    let one = |k: &str| sock.get(k).and_then(|v| v.last().cloned());
    let yes =
        |v: Option<String>| v.is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on"));
    let accept = yes(one("Accept"));

    let mut e = Entry {
        name: base.clone(),
        origin: format!("{} and its service", path.display()),
        ..Entry::default()
    };
    // The addresses.
    let names = get("FileDescriptorName");
    let mut listen = Vec::new();
    for (key, stream) in [("ListenStream", true), ("ListenDatagram", false)] {
        for v in get(key) {
            let v = specifiers(&v, &unit_name).unwrap_or(v);
            match address(&v, stream) {
                Some(a) => listen.push(a),
                None => e.drop_setting(format!("{key}={v}: not an address summond listens on")),
            }
        }
    }
    for key in UNSERVED_LISTEN {
        for v in get(key) {
            e.drop_setting(format!("{key}={v}: not served by summond"));
        }
    }
    if listen.is_empty() {
        e.refuse("no stream or datagram address to listen on");
        return Ok(vec![e]);
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
    let bind = one("BindIPv6Only");
    let any_v6_wildcard = listen.iter().any(|a| a.contains("[::]"));
    match bind.as_deref() {
        Some("ipv6-only") => {}
        _ if any_v6_wildcard => e.set("v6only", "false".into()),
        _ => {}
    }
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
    for (key, ours) in [
        ("KeepAlive", "keepalive"),
        ("NoDelay", "nodelay"),
        ("ReusePort", "reuse_port"),
        ("FreeBind", "freebind"),
    ] {
        if yes(one(key)) {
            e.set(ours, "true".into());
        }
    }
    for (k, v) in &sock {
        let known = [
            "ListenStream",
            "ListenDatagram",
            "Accept",
            "MaxConnections",
            "MaxConnectionsPerSource",
            "SocketMode",
            "SocketUser",
            "SocketGroup",
            "Backlog",
            "BindIPv6Only",
            "KeepAlive",
            "NoDelay",
            "ReusePort",
            "FreeBind",
            "FileDescriptorName",
            "Service",
            "RemoveOnStop",
        ];
        if !known.contains(&k.as_str()) && !UNSERVED_LISTEN.contains(&k.as_str()) {
            e.drop_setting(format!(
                "{k}={}: socket tuning summond does not carry",
                v.join(" ")
            ));
        }
    }

    // The service beside it.
    let service_name = one("Service").unwrap_or_else(|| {
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
    let sone = |k: &str| svc.get(k).and_then(|v| v.last().cloned());
    let Some(exec) = sone("ExecStart") else {
        e.refuse(format!("{} has no ExecStart", service_path.display()));
        return Ok(vec![e]);
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
    let expanded = match specifiers(line, &service_name) {
        Ok(x) => x,
        Err(c) => {
            e.unusable = Some(format!(
                "ExecStart uses the specifier %{c}, which has no value outside systemd"
            ));
            return Ok(vec![e]);
        }
    };
    let mut argv = words(&expanded);
    if at && argv.len() > 1 {
        argv.remove(1);
    }
    if argv.is_empty() {
        e.refuse("ExecStart is empty");
        return Ok(vec![e]);
    }
    e.set("exec", list(argv.iter().map(String::as_str)));
    let stdin_socket = sone("StandardInput").as_deref() == Some("socket");
    if accept {
        if !stdin_socket {
            e.set("pass", s("listen_fds"));
        }
    } else {
        e.set("accept", "false".into());
        if !stdin_socket {
            e.set("pass", s("listen_fds"));
        }
    }
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
    e.set(
        "no_new_privs",
        if yes(sone("NoNewPrivileges")) {
            "true"
        } else {
            "false"
        }
        .into(),
    );
    if let Some(t) = sone("RuntimeMaxSec") {
        if accept && t.chars().all(|c| c.is_ascii_digit()) {
            e.set("max_runtime", s(&format!("{t}s")));
        } else {
            e.drop_setting(format!("RuntimeMaxSec={t}: summond's max_runtime is for accept mode, in plain seconds here"));
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for v in svc.get("Environment").cloned().unwrap_or_default() {
        for w in words(&v) {
            if let Some((k, val)) = w.split_once('=').filter(|(k, _)| !k.is_empty()) {
                env.retain(|(n, _)| n != k);
                env.push((k.to_string(), val.to_string()));
            }
        }
    }
    for f in svc.get("EnvironmentFile").cloned().unwrap_or_default() {
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
    let mut rlimits = Vec::new();
    for (key, ours) in [
        ("LimitNOFILE", "nofile"),
        ("LimitNPROC", "nproc"),
        ("LimitAS", "as"),
        ("LimitCPU", "cpu"),
        ("LimitCORE", "core"),
        ("LimitFSIZE", "fsize"),
        ("LimitDATA", "data"),
        ("LimitSTACK", "stack"),
        ("LimitMEMLOCK", "memlock"),
    ] {
        if let Some(v) = sone(key) {
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
    for k in SANDBOX_SETTINGS {
        if let Some(v) = svc.get(*k) {
            e.drop_setting(format!(
                "{k}={}: namespace sandboxing is systemd's; use chroot, user and no_new_privs",
                v.join(" ")
            ));
        }
    }
    for k in [
        "Type",
        "NotifyAccess",
        "ExecReload",
        "ExecStop",
        "ExecStartPre",
        "ExecStartPost",
        "Restart",
        "OOMScoreAdjust",
    ] {
        if let Some(v) = svc.get(k) {
            e.drop_setting(format!(
                "{k}={}: summond starts one program per activation",
                v.join(" ")
            ));
        }
    }
    Ok(vec![e])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_and_specifiers() {
        assert_eq!(
            words("/usr/sbin/sshd -i -o \"Banner none\" ''"),
            ["/usr/sbin/sshd", "-i", "-o", "Banner none", ""]
        );
        assert_eq!(
            specifiers("%t/%N.sock %% %p", "ssh@.service"),
            Ok("/run/ssh@.sock % ssh".into())
        );
        assert_eq!(specifiers("%i", "x.service"), Err('i'));
        assert_eq!(address("22", true), Some("tcp://[::]:22".into()));
        assert_eq!(
            address("127.0.0.1:53", false),
            Some("udp://127.0.0.1:53".into())
        );
        assert_eq!(address("@x", true), Some("unix://@x".into()));
        assert_eq!(
            address("/run/a.sock", false),
            Some("unixgram:///run/a.sock".into())
        );
        assert_eq!(address("eth0", true), None);
    }
}
