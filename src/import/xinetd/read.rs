//! The files as xinetd's parse_conf_file reads them: `service NAME` and
//! `defaults` blocks of `attribute op values` lines, `include FILE` and
//! `includedir DIR`, with the limits that keep a loop or a FIFO from
//! stalling the import. What it gathers is each block's attributes as
//! written, and the defaults' lines in the order read.

use std::path::{Path, PathBuf};

use super::super::{readable, ImportError};
use super::{Attrs, IGNORED_DEFAULTS};

/// includedir inside includedir: deeper than this is a loop.
const MAX_DEPTH: usize = 8;

/// Files read through include and includedir, in all: more is a loop or
/// a fan-out no configuration needs.
const MAX_FILES: usize = 1000;

/// An included file larger than this is not an xinetd configuration.
const MAX_SIZE: u64 = 4 << 20;

/// A `service` block as written, and where.
pub struct Block {
    pub name: String,
    pub line: usize,
    pub path: String,
    pub attrs: Attrs,
    /// How many of the defaults' lines xinetd had read when it read this
    /// service: it copies the defaults' lists into a service then
    /// (parse.c get_service_entry), so later ones do not reach it.
    pub defaults_seen: usize,
}

/// What reading the files gathers.
pub struct Reader {
    pub blocks: Vec<Block>,
    pub defaults: Attrs,
    pub errors: Vec<ImportError>,
    /// The files being read, outermost first: one of them again is a loop.
    pub stack: Vec<PathBuf>,
    pub files: usize,
}

fn err(path: &Path, line: usize, message: impl Into<String>) -> ImportError {
    ImportError {
        path: path.to_path_buf(),
        line: Some(line),
        message: message.into(),
    }
}

/// A line in an error message: quoted when the file may be read by anyone
/// (the importer runs as root and must not print what others cannot read).
fn quoted(line: &str, quote: bool) -> String {
    if quote {
        format!("`{line}`")
    } else {
        "line (not quoted: the file is not world-readable)".into()
    }
}

/// An included file's text, or why it is not read: only a regular file of
/// sane size, not one already being read, and not too many in all.
fn include_text(file: &Path, r: &mut Reader) -> Result<(String, bool), String> {
    let meta =
        std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    if meta.len() > MAX_SIZE {
        return Err(format!(
            "{} is larger than {MAX_SIZE} bytes",
            file.display()
        ));
    }
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    if r.stack.contains(&canonical) {
        return Err(format!("{} includes itself (a loop)", file.display()));
    }
    r.files += 1;
    if r.files > MAX_FILES {
        return Err(format!("more than {MAX_FILES} files included (a loop?)"));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    use std::os::unix::fs::PermissionsExt;
    Ok((text, meta.permissions().mode() & 0o004 != 0))
}

fn read_included(file: &Path, from: &Path, line_no: usize, depth: usize, r: &mut Reader) {
    if depth >= MAX_DEPTH {
        r.errors
            .push(err(from, line_no, "includes nested too deep (a loop?)"));
        return;
    }
    match include_text(file, r) {
        Ok((text, quote)) => {
            let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            r.stack.push(canonical);
            read_at(file, &text, depth + 1, quote, r);
            r.stack.pop();
        }
        Err(why) => r.errors.push(err(from, line_no, why)),
    }
}

pub fn read_file(path: &Path, text: &str, quote: bool, r: &mut Reader) {
    r.stack
        .push(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
    read_at(path, text, 0, quote, r);
    r.stack.pop();
}

/// One file, as xinetd's parse_conf_file reads it: only a line whose first
/// non-blank is `#` is a comment, `{` and `}` stand alone on their lines,
/// and only the first `defaults` block of a file counts.
fn read_at(path: &Path, text: &str, depth: usize, quote: bool, r: &mut Reader) {
    let mut current: Option<(Block, bool)> = None; // (block, is_defaults)
    let mut awaiting_brace = false;
    let mut found_defaults = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((block, _)) = current.as_mut() {
            if awaiting_brace {
                if line == "{" {
                    awaiting_brace = false;
                    continue;
                }
                r.errors.push(err(path, line_no, no_opening_brace(block)));
                return;
            }
            if line == "}" {
                let (block, is_defaults) = current.take().expect("a block is open");
                close_block(block, is_defaults, &mut found_defaults, r);
                continue;
            }
            if !block_line(block, path, line_no, line, quote, r) {
                return;
            }
            continue;
        }
        current = outside_blocks(path, line_no, line, depth, quote, r);
        // xinetd reads the name and no more of the line: the `{` must
        // stand alone on the next one (find_next_entry).
        awaiting_brace = current.is_some();
    }
    if let Some((block, _)) = current {
        r.errors.push(err(
            path,
            block.line,
            format!("`{}` is never closed with }}", block.name),
        ));
    }
}

/// Why a block whose `{` is not on the next line is not read.
fn no_opening_brace(block: &Block) -> String {
    format!(
        "expected `{{` alone on the line after `{}` (xinetd does not read the block otherwise)",
        if block.name == "defaults" {
            "defaults".to_string()
        } else {
            format!("service {}", block.name)
        }
    )
}

/// A block's `}`: a service is read; a defaults block's lines join the
/// defaults, marked ignored when the file had one already.
fn close_block(block: Block, is_defaults: bool, found_defaults: &mut bool, r: &mut Reader) {
    if !is_defaults {
        r.blocks.push(block);
        return;
    }
    let ignored = *found_defaults;
    *found_defaults = true;
    for (name, op, values) in block.attrs {
        // xinetd: "only 1 defaults entry is allowed. This
        // entry will be ignored" (per file).
        let op = if ignored {
            IGNORED_DEFAULTS.to_string()
        } else {
            op
        };
        r.defaults.push((name, op, values));
    }
}

/// A line inside a block: an attribute, or an error. False: a brace not
/// alone on its line, after which the file is not read further.
fn block_line(
    block: &mut Block,
    path: &Path,
    line_no: usize,
    line: &str,
    quote: bool,
    r: &mut Reader,
) -> bool {
    if line.starts_with(['{', '}']) {
        r.errors.push(err(
            path,
            line_no,
            format!(
                "{}: xinetd takes a brace only alone on its line (a comment starts its own line), so it does not read `{}`",
                quoted(line, quote),
                block.name
            ),
        ));
        return false;
    }
    match attribute(line) {
        Ok(a) => block.attrs.push(a),
        Err(why) => r.errors.push(err(
            path,
            line_no,
            format!("{} is not `attribute = value`: {why}", quoted(line, quote)),
        )),
    }
    true
}

/// A line outside the blocks: the block it opens (with whether it is
/// `defaults`), or an include read at once, or an error.
fn outside_blocks(
    path: &Path,
    line_no: usize,
    line: &str,
    depth: usize,
    quote: bool,
    r: &mut Reader,
) -> Option<(Block, bool)> {
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let opened = |name: &str, r: &Reader| Block {
        name: name.to_string(),
        line: line_no,
        path: path.display().to_string(),
        attrs: Vec::new(),
        defaults_seen: r.defaults.len(),
    };
    match (words.next(), words.next()) {
        (Some("service"), Some(name)) => return Some((opened(name, r), false)),
        (Some("defaults"), _) => return Some((opened("defaults", r), true)),
        (Some("includedir"), Some(dir)) => read_included_dir(dir, path, line_no, depth, r),
        (Some("include"), Some(file)) => {
            read_included(Path::new(file), path, line_no, depth, r);
        }
        _ => r.errors.push(err(
            path,
            line_no,
            format!("unexpected {}", quoted(line, quote)),
        )),
    }
    None
}

/// `includedir DIR`: its files in sorted order, skipping names with a `.`
/// or ending in `~`, as xinetd does.
fn read_included_dir(dir: &str, path: &Path, line_no: usize, depth: usize, r: &mut Reader) {
    if depth >= MAX_DEPTH {
        r.errors
            .push(err(path, line_no, "includes nested too deep (a loop?)"));
        return;
    }
    let Ok(read) = std::fs::read_dir(dir) else {
        r.errors
            .push(err(path, line_no, format!("cannot read directory {dir}")));
        return;
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
        read_included(&f, path, line_no, depth, r);
    }
}

/// `name = a b c`, `name += …`, `name -= …`, as xinetd's get_attr_op
/// reads it: the name runs to the first blank (a `=` in it is an error),
/// then the operator; values are split on spaces and tabs only.
fn attribute(line: &str) -> Result<(String, String, Vec<String>), &'static str> {
    let end = line
        .find(|c: char| c.is_ascii_whitespace() || c == '=')
        .ok_or("nothing after the attribute")?;
    let (name, rest) = line.split_at(end);
    if name.is_empty() {
        return Err("no attribute name");
    }
    if rest.starts_with('=') {
        return Err("xinetd needs a space before the operator, and does not start the service");
    }
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (op, values) = if let Some(v) = rest.strip_prefix("+=") {
        ("+=", v)
    } else if let Some(v) = rest.strip_prefix("-=") {
        ("-=", v)
    } else if let Some(v) = rest.strip_prefix('=') {
        ("=", v)
    } else {
        return Err("no `=`, `+=` or `-=` after the attribute name");
    };
    Ok((
        name.to_string(),
        op.to_string(),
        values
            .split([' ', '\t'])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::super::{Entry, Services};
    use super::super::parse;
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
            "x:3: `this is not` is not `attribute = value`: no `=`, `+=` or `-=` after the attribute name"
        );
        let e = parse(Path::new("x"), "service a\n{\n  port = 1\n", &db).unwrap_err();
        assert_eq!(e[0].to_string(), "x:1: `a` is never closed with }");
    }
    fn svc(name: &str, extra: &str) -> String {
        format!("service {name}\n{{\n  port = 7000\n  socket_type = stream\n  wait = no\n  user = root\n  server = /bin/cat\n{extra}}}\n")
    }

    fn key_of(e: &Entry, k: &str) -> Option<String> {
        e.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_second_defaults_block_of_a_file_is_ignored_as_by_xinetd() {
        let db = Services::parse("");
        let text = format!(
            "defaults\n{{\n  only_from = 10.0.0.0\n}}\ndefaults\n{{\n  only_from = 0.0.0.0\n}}\n{}",
            svc("a", "")
        );
        let e = parse(Path::new("x"), &text, &db).unwrap();
        assert_eq!(key_of(&e[0], "allow").as_deref(), Some("[\"10.0.0.0/8\"]"));
        let all = e[0].dropped.join("\n");
        assert!(all.contains("a second defaults block"), "{all}");
    }

    #[test]
    fn defaults_lists_reach_only_the_services_read_after_them() {
        let db = Services::parse("");
        let text = format!(
            "{}defaults\n{{\n  only_from = 10.0.0.0\n  instances = 5\n}}\n{}",
            svc("early", ""),
            svc("late", "")
        );
        let e = parse(Path::new("x"), &text, &db).unwrap();
        assert_eq!(key_of(&e[0], "allow"), None, "{:?}", e[0].keys);
        let all = e[0].dropped.join("\n");
        assert!(all.contains("it comes after this service"), "{all}");
        // The other attributes xinetd fills in at the end, from them all.
        assert_eq!(key_of(&e[0], "max_instances").as_deref(), Some("5"));
        assert_eq!(key_of(&e[1], "allow").as_deref(), Some("[\"10.0.0.0/8\"]"));
    }

    #[test]
    fn only_whole_lines_are_comments_and_values_split_on_blanks() {
        let db = Services::parse("");
        let e = parse(
            Path::new("x"),
            &svc("a", "  # a comment\n  server_args = -n #1 a\rb\n"),
            &db,
        )
        .unwrap();
        assert_eq!(
            key_of(&e[0], "exec").as_deref(),
            Some("[\"/bin/cat\", \"-n\", \"#1\", \"a\\rb\"]")
        );
        let text = svc("a", "").replace("}\n", "} # end\n");
        let err = parse(Path::new("x"), &text, &db).unwrap_err();
        assert!(
            err[0]
                .message
                .contains("`} # end`: xinetd takes a brace only alone"),
            "{}",
            err[0]
        );
        let err = parse(Path::new("x"), &svc("a", "  nice=1\n"), &db).unwrap_err();
        assert!(err[0].message.contains("space"), "{}", err[0]);
        let e = parse(
            Path::new("x"),
            &svc("a", "  server_args = a+=b c-=d\n"),
            &db,
        )
        .unwrap();
        assert_eq!(
            key_of(&e[0], "exec").as_deref(),
            Some("[\"/bin/cat\", \"a+=b\", \"c-=d\"]")
        );
    }

    #[test]
    fn includes_read_regular_files_once_and_quote_only_readable_ones() {
        let dir = std::env::temp_dir().join(format!("summond-xinetd-inc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Services::parse("");
        // A FIFO would block for ever: refused without opening it.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = parse(
            Path::new("x"),
            &format!("include {}\n", fifo.display()),
            &db,
        )
        .unwrap_err();
        assert!(err[0].message.contains("not a regular file"), "{}", err[0]);
        // A file including itself, many times over, is one error, at once.
        let me = dir.join("me");
        std::fs::write(
            &me,
            format!("include {0}\ninclude {0}\ninclude {0}\n", me.display()),
        )
        .unwrap();
        let err = parse(&me, &std::fs::read_to_string(&me).unwrap(), &db).unwrap_err();
        assert!(err.len() <= 3, "{}", err.len());
        assert!(err[0].message.contains("includes itself"), "{}", err[0]);
        // A file others may not read is not quoted into the error.
        let secret = dir.join("secret");
        std::fs::write(&secret, "root:$y$secret-hash:20228:0:99999:7:::\n").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let err = parse(
            Path::new("x"),
            &format!("include {}\n", secret.display()),
            &db,
        )
        .unwrap_err();
        assert!(!err[0].to_string().contains("secret-hash"), "{}", err[0]);
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = parse(
            Path::new("x"),
            &format!("include {}\n", secret.display()),
            &db,
        )
        .unwrap_err();
        assert!(err[0].to_string().contains("secret-hash"), "{}", err[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn the_opening_brace_stands_alone_on_the_next_line() {
        let db = Services::parse("");
        let text = svc("a", "").replacen("a\n{", "a {", 1);
        let err = parse(Path::new("x"), &text, &db).unwrap_err();
        assert!(
            err[0].message.contains("alone on the line after"),
            "{}",
            err[0]
        );
        // `service a {` then `{`: xinetd reads the name and the brace.
        let text = svc("a", "").replacen("a\n{", "a {\n{", 1);
        assert_eq!(parse(Path::new("x"), &text, &db).unwrap().len(), 1);
    }
}
