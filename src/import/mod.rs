//! `summond import`: an existing inetd.conf or xinetd configuration as
//! summond TOML. Each input is parsed into `Entry` values (one per
//! service), which are written out as `[[service]]` tables; every setting
//! that cannot be carried over becomes a comment at its service saying
//! what it was and why it was left out, so nothing is dropped silently.
//! The format is detected when `--from` is not given. Unreadable or
//! unparsable input is an `ImportError` (`PATH:LINE: message`, exit 2).
//!
//! - `inetd.rs`: inetd.conf lines, including update-inetd's `#<off>#`.
//! - `xinetd/`: xinetd.conf and /etc/xinetd.d files, with `defaults`,
//!   `include` and `includedir`, each service block resolved as xinetd
//!   does.
//! - `systemd/`: a `.socket` unit with the `.service` it starts.
//! - `wrappers.rs`: tcpd and hosts.allow/hosts.deny, for both inetds.

mod inetd;
mod systemd;
mod wrappers;
mod xinetd;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where service names are turned into ports.
const SERVICES_DB: &str = "/etc/services";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Inetd,
    Xinetd,
    /// A `.socket` unit, with its service beside it.
    Systemd,
}

/// Why an input cannot be imported.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// One service as it will be written: keys with their TOML values, and
/// what was left out.
#[derive(Debug, Default, PartialEq)]
pub struct Entry {
    pub name: String,
    /// Where it came from, for the comment above it.
    pub origin: String,
    /// `key = value` with the value already TOML.
    pub keys: Vec<(String, String)>,
    /// The input's settings that the keys carry over, by their input
    /// name, in input order: with `dropped`, every setting of the input is
    /// named in the output.
    pub carried: Vec<String>,
    /// Settings not carried over, each with why.
    pub dropped: Vec<String>,
    /// The whole entry cannot be served; written commented out.
    pub unusable: Option<String>,
}

impl Entry {
    pub fn set(&mut self, key: &str, value: String) {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.to_string(), value));
    }

    pub fn drop_setting(&mut self, what: impl Into<String>) {
        self.dropped.push(what.into());
    }

    /// Say that the input setting `name` is carried over by the keys.
    pub fn carry(&mut self, name: &str) {
        if !self.carried.iter().any(|c| c == name) {
            self.carried.push(name.to_string());
        }
    }

    /// The entry cannot be served as the input meant it: it is written
    /// commented out, with every reason found (fail closed: a service is
    /// never written wider open than its input).
    pub fn refuse(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.unusable = Some(match self.unusable.take() {
            Some(earlier) => format!("{earlier}; {why}"),
            None => why,
        });
    }
}

/// A TOML string literal, always on one line: a basic string with every
/// control character escaped. (The toml crate writes a value with a
/// newline as a multi-line string, whose lines after the first escaped
/// the `# ` of a service written commented out and became live TOML.)
pub fn s(v: &str) -> String {
    key(v)
}

/// A TOML key: always a basic string with every control character
/// escaped (a key may not be a multi-line string).
pub fn key(k: &str) -> String {
    let mut out = String::from("\"");
    for c in k.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number as TOML (`096` is `96`); anything else as a string, which
/// `summond --check` then reports as the wrong type at its line.
pub fn num(v: &str) -> String {
    match v.trim().parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => s(v),
    }
}

/// A TOML array of strings.
pub fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.into_iter().map(s).collect();
    format!("[{}]", v.join(", "))
}

/// `exec` for inetd's or xinetd's internal service `name`, if summond
/// serves one by that name too.
pub fn internal_exec(name: &str) -> Option<String> {
    crate::config::Internal::ALL
        .iter()
        .any(|(n, _)| *n == name)
        .then(|| list([format!("internal:{name}").as_str()]))
}

/// The name of the user `name` (a name or a uid) if there is one here:
/// the importers refuse a service whose user is unknown.
pub fn user_name(name: &str) -> Option<String> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(uid.into()),
        Err(_) => nix::unistd::User::from_name(name),
    };
    user.ok().flatten().map(|u| u.name)
}

/// The name of the group `name` (a name or a gid) if there is one here.
pub fn group_name(name: &str) -> Option<String> {
    let group = match name.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(gid.into()),
        Err(_) => nix::unistd::Group::from_name(name),
    };
    group.ok().flatten().map(|g| g.name)
}

/// /etc/services: (name or alias, protocol) → port.
pub struct Services(HashMap<(String, String), u16>);

impl Services {
    pub fn load() -> Services {
        Services::parse(&std::fs::read_to_string(SERVICES_DB).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Services {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut f = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            for n in std::iter::once(name).chain(f) {
                map.entry((n.to_string(), proto.to_string()))
                    .or_insert(port);
            }
        }
        Services(map)
    }

    /// A number, or a name looked up for `proto` ("tcp" or "udp").
    pub fn port(&self, service: &str, proto: &str) -> Option<u16> {
        service.parse().ok().or_else(|| {
            self.0
                .get(&(service.to_string(), proto.to_string()))
                .copied()
        })
    }
}

/// Guess the format from the file name and text.
pub fn detect_file(path: &Path, text: &str) -> Option<Format> {
    if path.extension().is_some_and(|e| e == "socket") || text.contains("[Socket]") {
        return Some(Format::Systemd);
    }
    detect(text)
}

/// Guess the format from the text.
pub fn detect(text: &str) -> Option<Format> {
    let meaningful = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with("#<off>#")));
    for l in meaningful {
        if l.starts_with("service ")
            || l.starts_with("defaults")
            || l.starts_with("includedir ")
            || l == "{"
        {
            return Some(Format::Xinetd);
        }
        let fields = l.trim_start_matches("#<off>#").split_whitespace().count();
        if fields >= 6 {
            return Some(Format::Inetd);
        }
    }
    None
}

/// Import every file of `paths` and write one summond config.
pub fn import(paths: &[PathBuf], from: Option<Format>) -> Result<String, Vec<ImportError>> {
    let services = Services::load();
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = match read_input(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ImportError {
                    path: path.clone(),
                    line: None,
                    message: format!("cannot read it: {e}"),
                });
                continue;
            }
        };
        let format = match from.or_else(|| detect_file(path, &text.text)) {
            Some(f) => f,
            None => {
                errors.push(ImportError {
                    path: path.clone(),
                    line: None,
                    message: "neither inetd.conf lines, xinetd service blocks nor a \
                              systemd .socket unit; name the format with --from"
                        .into(),
                });
                continue;
            }
        };
        let result = match format {
            Format::Inetd => inetd::parse(path, &text.text, &services),
            Format::Xinetd => xinetd::parse(path, &text.text, &services),
            Format::Systemd if !text.every_user => Err(vec![ImportError {
                path: path.clone(),
                line: None,
                message: systemd::NOT_EVERY_USER.into(),
            }]),
            Format::Systemd => systemd::parse(path, &text.text),
        };
        match result {
            Ok(mut e) => entries.append(&mut e),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(render(paths, entries))
}

/// One input's text as summond TOML (no files are read but, for xinetd,
/// those its include directives name).
pub fn convert(path: &Path, text: &str, format: Format) -> Result<String, Vec<ImportError>> {
    let services = Services::load();
    let entries = match format {
        Format::Inetd => inetd::parse(path, text, &services)?,
        Format::Xinetd => xinetd::parse(path, text, &services)?,
        Format::Systemd => systemd::parse(path, text)?,
    };
    Ok(render(&[path.to_path_buf()], entries))
}

/// A `.socket` unit's text and its service's, as summond TOML, without
/// reading any file (for the fuzzer).
pub fn convert_units(
    socket_path: &Path,
    socket: &str,
    service: &str,
) -> Result<String, Vec<ImportError>> {
    let service = service.to_string();
    let entries = systemd::parse_with(socket_path, socket, |_| Ok(service.clone()))?;
    Ok(render(&[socket_path.to_path_buf()], entries))
}

/// Names unique and made of the characters summond allows.
fn unique_names(entries: &mut [Entry]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in entries.iter_mut() {
        let mut name: String = e
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if name.is_empty() {
            name = "service".into();
        }
        let n = seen.entry(name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            name = format!("{name}-{n}");
        }
        e.name = name;
    }
}

/// One address, one service: a later entry whose address is taken is
/// written commented out (xinetd allows duplicates while at most one of
/// them is enabled; summond refuses them).
fn one_service_per_address(entries: &mut [Entry]) {
    let mut owner: HashMap<String, String> = HashMap::new();
    for e in entries.iter_mut().filter(|e| e.unusable.is_none()) {
        let Some((_, listen)) = e.keys.iter().find(|(k, _)| k == "listen") else {
            continue;
        };
        match owner.get(listen) {
            Some(first) => e.refuse(format!(
                "its address {listen} is already used by \"{first}\" above; \
                     enable one of the two"
            )),
            None => {
                owner.insert(listen.clone(), e.name.clone());
            }
        }
    }
}

/// Text fit for a TOML comment: one line, no control characters (the
/// input's own bytes end up here).
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

fn render(paths: &[PathBuf], mut entries: Vec<Entry>) -> String {
    unique_names(&mut entries);
    one_service_per_address(&mut entries);
    let mut out = String::from("# Written by summond import from:\n");
    for p in paths {
        out.push_str(&format!("#   {}\n", comment(&p.display().to_string())));
    }
    out.push_str("# Check it with `summond --check -c FILE` before use.\n");
    for e in &entries {
        out.push('\n');
        out.push_str(&format!("# {}\n", comment(&e.origin)));
        if !e.carried.is_empty() {
            out.push_str(&format!(
                "# carried over: {}\n",
                comment(&e.carried.join(", "))
            ));
        }
        let prefix = if let Some(why) = &e.unusable {
            out.push_str(&format!("# not imported: {}\n", comment(why)));
            "# "
        } else {
            ""
        };
        out.push_str(&format!("{prefix}[[service]]\n"));
        out.push_str(&format!("{prefix}name = {}\n", s(&e.name)));
        for (k, v) in &e.keys {
            out.push_str(&format!("{prefix}{k} = {v}\n"));
        }
        for d in &e.dropped {
            out.push_str(&format!("# not carried over: {}\n", comment(d)));
        }
    }
    out
}

/// The most an input file may hold: configuration files are small, and
/// a larger one (or /dev/zero behind a link) must not fill memory.
const MAX_INPUT: u64 = 4 << 20;

/// A file read by the importer, and whether every user could read it.
pub struct Input {
    pub text: String,
    /// The file is readable by others and every directory above it
    /// searchable by others: printing it shows nothing root alone may see.
    pub every_user: bool,
}

/// Read `path` (following links: units are often aliases) only if it is
/// a regular file: it is looked at through an `O_PATH` handle first, so
/// a FIFO (which would block), a device (whose open acts: a watchdog, a
/// tape) or /dev/zero is never opened for reading; the same file is then
/// read through that handle, at most `MAX_INPUT` bytes.
pub fn read_input(path: &Path) -> std::io::Result<Input> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::{fstat, Mode, SFlag};
    use std::io::{Error, Read};
    use std::os::fd::AsRawFd;
    let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())?;
    let st = fstat(&fd)?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFCHR && st.st_rdev == nix::sys::stat::makedev(1, 3) {
        return Err(Error::other(
            "a link to /dev/null: the unit is masked, and systemd does not start it",
        ));
    }
    if kind != SFlag::S_IFREG {
        return Err(Error::other("not a regular file: not read"));
    }
    let handle = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = std::fs::File::open(&handle)?;
    let again = fstat(&file)?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err(Error::other("changed while it was read"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_INPUT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(Error::other(format!(
            "larger than {MAX_INPUT} bytes, which no configuration file is: not read"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))?;
    let real = std::fs::read_link(&handle)?;
    let every_user = st.st_mode & 0o004 != 0
        && real.ancestors().skip(1).all(|d| {
            std::fs::metadata(d).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o001 != 0
            })
        });
    Ok(Input { text, every_user })
}

/// Does `path` exist as a file the importer could read? For includedir.
fn readable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected() {
        assert_eq!(detect("# c\nservice echo\n{\n}\n"), Some(Format::Xinetd));
        assert_eq!(
            detect("defaults\n{\n}\nincludedir /etc/xinetd.d\n"),
            Some(Format::Xinetd)
        );
        assert_eq!(
            detect("#<off># tftp dgram udp wait nobody /usr/sbin/tcpd /usr/sbin/in.tftpd\n"),
            Some(Format::Inetd)
        );
        assert_eq!(detect("hello world\n"), None);
    }

    #[test]
    fn keys_and_numbers_are_always_valid_toml() {
        let odd = [
            "A",
            "a b",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "del\u{7f}",
            "'''x'''",
        ];
        for k in odd {
            let doc = format!("t = {{ {} = 1 }}", key(k));
            let parsed: toml::Table = doc.parse().unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert!(parsed["t"].as_table().unwrap().contains_key(k), "{doc}");
        }
        assert_eq!(num("096"), "96");
        assert_eq!(num("-3"), "-3");
        assert_eq!(num("12x"), "\"12x\"");
    }

    #[test]
    fn a_value_with_a_line_break_stays_inside_a_service_written_commented_out() {
        let odd = "a\nb\r\u{2028}c'''\"\"\"";
        let mut e = Entry {
            name: "x".into(),
            origin: "o".into(),
            ..Entry::default()
        };
        e.set("exec", list(["/bin/printf", odd]));
        e.refuse("a test");
        let out = render(&[PathBuf::from("in")], vec![e]);
        let doc: toml::Table = out.parse().unwrap_or_else(|err| panic!("{out}: {err}"));
        assert!(doc.is_empty(), "{out}");
        // Served live, the value comes back whole.
        let t: toml::Table = format!("v = {}", s(odd)).parse().unwrap();
        assert_eq!(t["v"].as_str(), Some(odd));
    }

    #[test]
    fn service_names_become_ports() {
        let db = Services::parse("daytime 13/tcp\ndaytime 13/udp\ntime 37/tcp timserver # x\n");
        assert_eq!(db.port("daytime", "udp"), Some(13));
        assert_eq!(db.port("timserver", "tcp"), Some(37));
        assert_eq!(db.port("9000", "tcp"), Some(9000));
        assert_eq!(db.port("nope", "tcp"), None);
    }
}
