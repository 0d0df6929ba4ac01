//! xinetd.conf and /etc/xinetd.d files: `service NAME { attr = value … }`
//! blocks, a `defaults { … }` block applied to every service, `include
//! FILE` and `includedir DIR` (whose files are read in sorted order,
//! skipping names with a `.` or ending in `~`, as xinetd does).
//! Attributes become summond keys; the rest become comments saying why.

use std::path::Path;

use super::xinetd_entry::Attrs;
use super::{readable, Entry, ImportError, Services};
/// includedir inside includedir: deeper than this is a loop.
const MAX_DEPTH: usize = 8;

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

fn entry(b: Block, defaults: &Attrs, services: &Services) -> Entry {
    let origin = format!("{}:{}: service {}", b.path, b.line, b.name);
    super::xinetd_entry::entry(&b.name, origin, defaults, &b.attrs, services)
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
            has("allow", "[\"10.0.0.0/8\", \"127.0.0.1/32\"]"),
            "+= adds to the default"
        );
        assert!(has("rate", "\"25/1s\""));
        assert!(has("nodelay", "true"));
        assert!(has("user", "\"nobody\""));
        let why = e[0].unusable.clone().unwrap_or_default();
        assert!(why.contains("only_from host.example"), "{why}");
        let dropped = e[0].dropped.join("\n");
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
