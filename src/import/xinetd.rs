//! xinetd.conf and /etc/xinetd.d files: `service NAME { attr = value … }`
//! blocks, a `defaults { … }` block applied to every service, `include
//! FILE` and `includedir DIR` (whose files are read in sorted order,
//! skipping names with a `.` or ending in `~`, as xinetd does).
//! Attributes become summond keys; the rest become comments saying why.

use std::collections::HashMap;
use std::path::Path;

use super::{key, list, num, readable, s, Entry, ImportError, Services};

const INTERNAL: &[&str] = &["echo", "discard", "chargen", "daytime", "time"];
/// includedir inside includedir: deeper than this is a loop.
const MAX_DEPTH: usize = 8;

type Attrs = Vec<(String, String, Vec<String>)>;

struct Block {
    name: String,
    line: usize,
    path: String,
    attrs: Attrs,
}

pub fn parse(path: &Path, text: &str, services: &Services) -> Result<Vec<Entry>, Vec<ImportError>> {
    let mut blocks = Vec::new();
    let mut defaults: Attrs = Vec::new();
    let mut errors = Vec::new();
    read_file(path, text, 0, &mut blocks, &mut defaults, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(blocks
        .into_iter()
        .map(|b| entry(b, &defaults, services))
        .collect())
}

fn err(path: &Path, line: usize, message: impl Into<String>) -> ImportError {
    ImportError {
        path: path.to_path_buf(),
        line: Some(line),
        message: message.into(),
    }
}

fn read_file(
    path: &Path,
    text: &str,
    depth: usize,
    blocks: &mut Vec<Block>,
    defaults: &mut Attrs,
    errors: &mut Vec<ImportError>,
) {
    let mut current: Option<(Block, bool)> = None; // (block, is_defaults)
    let mut awaiting_brace = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some((block, is_defaults)) = current.as_mut() {
            if awaiting_brace {
                if line == "{" {
                    awaiting_brace = false;
                    continue;
                }
                errors.push(err(
                    path,
                    line_no,
                    format!("expected {{ after `{}`", block.name),
                ));
                return;
            }
            if line == "}" {
                let (block, is_defaults) = current.take().expect("a block is open");
                if is_defaults {
                    defaults.extend(block.attrs);
                } else {
                    blocks.push(block);
                }
                continue;
            }
            let Some((name, op, values)) = attribute(line) else {
                errors.push(err(
                    path,
                    line_no,
                    format!("`{line}` is not `attribute = value`"),
                ));
                continue;
            };
            let _ = is_defaults;
            block.attrs.push((name, op, values));
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("service"), Some(name)) | (Some("defaults"), Some(name @ "{")) => {
                let is_defaults = line.starts_with("defaults");
                awaiting_brace = !line.ends_with('{');
                current = Some((
                    Block {
                        name: if is_defaults {
                            "defaults".into()
                        } else {
                            name.to_string()
                        },
                        line: line_no,
                        path: path.display().to_string(),
                        attrs: Vec::new(),
                    },
                    is_defaults,
                ));
            }
            (Some("defaults"), None) => {
                awaiting_brace = true;
                current = Some((
                    Block {
                        name: "defaults".into(),
                        line: line_no,
                        path: path.display().to_string(),
                        attrs: Vec::new(),
                    },
                    true,
                ));
            }
            (Some("includedir"), Some(dir)) => {
                if depth >= MAX_DEPTH {
                    errors.push(err(path, line_no, "includes nested too deep (a loop?)"));
                    continue;
                }
                let Ok(read) = std::fs::read_dir(dir) else {
                    errors.push(err(path, line_no, format!("cannot read directory {dir}")));
                    continue;
                };
                let mut files: Vec<_> = read
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                        !n.contains('.') && !n.ends_with('~') && readable(p)
                    })
                    .collect();
                files.sort();
                for f in files {
                    match std::fs::read_to_string(&f) {
                        Ok(t) => read_file(&f, &t, depth + 1, blocks, defaults, errors),
                        Err(e) => errors.push(err(&f, 0, format!("cannot read it: {e}"))),
                    }
                }
            }
            (Some("include"), Some(file)) => {
                if depth >= MAX_DEPTH {
                    errors.push(err(path, line_no, "includes nested too deep (a loop?)"));
                    continue;
                }
                match std::fs::read_to_string(file) {
                    Ok(t) => read_file(Path::new(file), &t, depth + 1, blocks, defaults, errors),
                    Err(e) => errors.push(err(path, line_no, format!("cannot read {file}: {e}"))),
                }
            }
            _ => errors.push(err(path, line_no, format!("unexpected `{line}`"))),
        }
    }
    if let Some((block, _)) = current {
        errors.push(err(
            path,
            block.line,
            format!("`{}` is never closed with }}", block.name),
        ));
    }
}

/// `name = a b c`, `name += …`, `name -= …`.
fn attribute(line: &str) -> Option<(String, String, Vec<String>)> {
    let (name, op, rest) = if let Some((n, r)) = line.split_once("+=") {
        (n, "+=", r)
    } else if let Some((n, r)) = line.split_once("-=") {
        (n, "-=", r)
    } else {
        let (n, r) = line.split_once('=')?;
        (n, "=", r)
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((
        name.to_string(),
        op.to_string(),
        rest.split_whitespace().map(str::to_string).collect(),
    ))
}

/// The final value of each attribute: defaults first, then the block's
/// own assignments in order.
fn resolve(defaults: &Attrs, own: &Attrs) -> HashMap<String, Vec<String>> {
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for (name, op, v) in defaults.iter().chain(own) {
        let cur = values.entry(name.clone()).or_default();
        match op.as_str() {
            "+=" => cur.extend(v.iter().cloned()),
            "-=" => cur.retain(|x| !v.contains(x)),
            _ => *cur = v.clone(),
        }
    }
    values
}

fn entry(b: Block, defaults: &Attrs, services: &Services) -> Entry {
    let a = resolve(defaults, &b.attrs);
    let get = |k: &str| a.get(k).cloned().unwrap_or_default();
    let one = |k: &str| a.get(k).and_then(|v| v.first().cloned());
    let mut e = Entry {
        name: one("id").unwrap_or_else(|| b.name.clone()),
        origin: format!("{}:{}: service {}", b.path, b.line, b.name),
        ..Entry::default()
    };
    let types = get("type");
    let internal = types.iter().any(|t| t == "INTERNAL");
    if types
        .iter()
        .any(|t| t == "RPC" || t == "TCPMUX" || t == "TCPMUXPLUS")
    {
        e.refuse(format!("type {} is not supported", types.join(" ")));
        return e;
    }
    let socket_type = one("socket_type").unwrap_or_else(|| "stream".into());
    let stream = match socket_type.as_str() {
        "stream" => true,
        "dgram" => false,
        other => {
            e.refuse(format!("socket_type {other} is not served by summond"));
            return e;
        }
    };
    let proto = one("protocol").unwrap_or_else(|| if stream { "tcp" } else { "udp" }.into());
    let port = one("port")
        .and_then(|p| p.parse::<u16>().ok())
        .or_else(|| services.port(&b.name, &proto));
    let Some(port) = port else {
        e.unusable = Some(format!(
            "no port: neither `port` nor {}/{proto} in /etc/services",
            b.name
        ));
        return e;
    };
    let flags = get("flags");
    let bind = one("bind").or_else(|| one("interface"));
    let host = match bind.as_deref() {
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_string(),
        None if flags.iter().any(|f| f == "IPv6") => "[::]".into(),
        None => "0.0.0.0".into(),
    };
    e.set("listen", s(&format!("{proto}://{host}:{port}")));

    if internal {
        if INTERNAL.contains(&b.name.as_str()) {
            e.set("exec", list([format!("internal:{}", b.name).as_str()]));
        } else {
            e.unusable = Some(format!(
                "xinetd's internal `{}` has no summond equivalent",
                b.name
            ));
            return e;
        }
    } else if let Some(server) = one("server") {
        let mut argv = vec![server];
        argv.extend(get("server_args"));
        if flags.iter().any(|f| f == "NAMEINARGS") {
            // server_args begins with argv[0]; summond's exec[0] is the
            // program itself.
            argv.remove(1.min(argv.len() - 1));
            if argv.len() > 1 {
                argv.remove(0);
            }
        }
        e.set("exec", list(argv.iter().map(String::as_str)));
    } else {
        e.refuse("no `server` to run");
        return e;
    }

    match one("wait").as_deref() {
        Some("yes") => e.set("accept", "false".into()),
        Some("no") | None if stream => {}
        Some("no") | None => {
            e.refuse("a datagram service with wait = no has nothing to accept");
            return e;
        }
        Some(other) => e.drop_setting(format!("wait = {other}: not yes or no")),
    }
    if one("disable").as_deref() == Some("yes") || one("enabled").is_some_and(|v| v == "no") {
        e.set("disabled", "true".into());
    }
    if let Some(u) = one("user").filter(|u| u != "root") {
        e.set("user", s(&u));
    }
    if let Some(g) = one("group") {
        e.set("group", s(&g));
    }
    if one("groups").as_deref() == Some("no") {
        e.set("supplementary_groups", "false".into());
    }
    if let Some(n) = one("instances").filter(|n| n != "UNLIMITED") {
        if n.parse::<u32>().is_ok_and(|n| n > 0) {
            e.set("max_instances", num(&n));
        }
    }
    if let Some(n) = one("per_source").filter(|n| n != "UNLIMITED") {
        if n.parse::<u32>().is_ok_and(|n| n > 0) {
            e.set("max_per_source", num(&n));
        }
    }
    let cps = get("cps");
    if let Some(n) = cps
        .first()
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n > 0)
    {
        e.set("rate", s(&format!("{n}/1s")));
        if let Some(wait) = cps.get(1) {
            e.drop_setting(format!(
                "cps's {wait} s shutdown: summond's rate pauses the listener instead of disabling it"
            ));
        }
    }
    for (key, attr) in [("allow", "only_from"), ("deny", "no_access")] {
        let v = get(attr);
        if v.is_empty() {
            continue;
        }
        let (cidrs, names): (Vec<&String>, Vec<&String>) = v
            .iter()
            .partition(|x| x.parse::<crate::access::Cidr>().is_ok());
        if !cidrs.is_empty() {
            e.set(key, list(cidrs.iter().map(|x| x.as_str())));
        }
        if !names.is_empty() {
            e.drop_setting(format!(
                "{attr} {}: host names are not resolved; give addresses or CIDR blocks",
                names
                    .iter()
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    if let Some(n) = one("nice") {
        if n.parse::<i32>().is_ok_and(|n| (-20..=19).contains(&n)) {
            e.set("nice", num(&n));
        }
    }
    if let Some(m) = one("umask") {
        e.set("umask", s(&m));
    }
    let env = get("env");
    if !env.is_empty() {
        // NAME=value words; a later NAME wins, as in a shell.
        let mut vars: Vec<(&str, &str)> = Vec::new();
        for word in &env {
            match word.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    vars.retain(|(n, _)| *n != k);
                    vars.push((k, v));
                }
                _ => e.drop_setting(format!("env word `{word}`: not NAME=value")),
            }
        }
        if !vars.is_empty() {
            let pairs: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), s(v)))
                .collect();
            e.set("env", format!("{{ {} }}", pairs.join(", ")));
        }
    }
    let passenv = get("passenv");
    if !passenv.is_empty() {
        e.set("clear_env", "true".into());
        e.set("passenv", list(passenv.iter().map(String::as_str)));
    }
    let mut rlimits = Vec::new();
    for (attr, name) in [
        ("rlimit_as", "as"),
        ("rlimit_cpu", "cpu"),
        ("rlimit_data", "data"),
        ("rlimit_files", "nofile"),
        ("rlimit_stack", "stack"),
    ] {
        if let Some(v) = one(attr) {
            let v = if v == "UNLIMITED" {
                s("infinity")
            } else if v.parse::<u64>().is_ok() {
                v
            } else {
                s(&v)
            };
            rlimits.push(format!("{name} = {v}"));
        }
    }
    if !rlimits.is_empty() {
        e.set("rlimits", format!("{{ {} }}", rlimits.join(", ")));
    }
    for f in &flags {
        match f.as_str() {
            "NODELAY" => e.set("nodelay", "true".into()),
            "KEEPALIVE" => e.set("keepalive", "true".into()),
            "REUSE" | "IPv4" | "IPv6" | "NAMEINARGS" | "NOLIBWRAP" => {}
            other => e.drop_setting(format!("flags {other}: not supported")),
        }
    }
    if let Some(v6) = one("v6only") {
        if host.starts_with('[') {
            e.set("v6only", if v6 == "no" { "false" } else { "true" }.into());
        }
    }
    for attr in ["banner", "banner_success", "banner_fail"] {
        if let Some(file) = one(attr) {
            e.drop_setting(format!(
                "{attr} = {file}: summond's banners are text in the config, not files"
            ));
        }
    }
    for attr in [
        "redirect",
        "access_times",
        "max_load",
        "deny_time",
        "mdns",
        "rpc_version",
        "rpc_number",
        "libwrap",
    ] {
        if let Some(v) = a.get(attr) {
            e.drop_setting(format!("{attr} = {}: no summond equivalent", v.join(" ")));
        }
    }
    for attr in ["log_type", "log_on_success", "log_on_failure"] {
        if let Some(v) = a.get(attr) {
            e.drop_setting(format!(
                "{attr} = {}: summond logs every connection to one log (stderr, syslog or JSON)",
                v.join(" ")
            ));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_defaults_and_attributes_become_entries() {
        let text = "defaults\n{\n  instances = 60\n  log_type = SYSLOG daemon info\n  only_from = 10.0.0.0/8\n}\n\
            service git\n{\n  disable = no\n  socket_type = stream\n  protocol = tcp\n  port = 9418\n  wait = no\n  user = nobody\n\
              server = /usr/lib/git-core/git-daemon\n  server_args = --inetd --export-all /srv/git\n  only_from += 127.0.0.1 host.example\n\
              cps = 25 30\n  flags = NODELAY REUSE\n}\n";
        let db = Services::parse("");
        let e = parse(Path::new("git"), text, &db).unwrap();
        assert_eq!(e.len(), 1);
        let k = &e[0].keys;
        let has = |key: &str, v: &str| k.contains(&(key.to_string(), v.to_string()));
        assert!(has("listen", "\"tcp://0.0.0.0:9418\""), "{k:?}");
        assert!(has(
            "exec",
            "[\"/usr/lib/git-core/git-daemon\", \"--inetd\", \"--export-all\", \"/srv/git\"]"
        ));
        assert!(has("max_instances", "60"), "defaults apply");
        assert!(
            has("allow", "[\"10.0.0.0/8\", \"127.0.0.1\"]"),
            "+= adds to the default"
        );
        assert!(has("rate", "\"25/1s\""));
        assert!(has("nodelay", "true"));
        assert!(has("user", "\"nobody\""));
        let dropped = e[0].dropped.join("\n");
        assert!(dropped.contains("host.example"), "{dropped}");
        assert!(dropped.contains("log_type"), "{dropped}");
        assert!(dropped.contains("cps's 30 s"), "{dropped}");
    }

    #[test]
    fn unparsable_input_is_located() {
        let db = Services::parse("");
        let e = parse(Path::new("x"), "service a\n{\n  this is not\n}\n", &db).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "x:3: `this is not` is not `attribute = value`"
        );
        let e = parse(Path::new("x"), "service a\n{\n  port = 1\n", &db).unwrap_err();
        assert_eq!(e[0].to_string(), "x:1: `a` is never closed with }");
    }
}
