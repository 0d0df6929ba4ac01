//! The TOML walk: toml's spanned document tree visited by hand, every
//! mistake recorded with its span and the walk carried on, so one load
//! reports every error in the file. Here: the `Checker` and its typed
//! readers, the document and `[daemon]`, and the core service readers the
//! handlers in service.rs call (`listen`, `env`), all at load; `exec` is
//! program.rs's, `user`, `group` and `extra_groups` credentials.rs's.

use rustc_hash::FxHashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::closest;
use super::keys::{DAEMON_KEYS, LISTEN_TABLE_KEYS, TOP_KEYS};
use super::{Config, ConfigError, DaemonSpec, ErrorKind, Host, ListenSpec, LogFormat};
use crate::addr::ListenAddr;
use crate::env::is_reserved_env;

/// Walk `text` (the contents of `path`): the config as far as it is valid,
/// and every error found. `seen` carries names and addresses across the
/// main file and its drop-ins; a `dropin` (named by `[daemon] include`)
/// holds `[[service]]` entries only.
pub(super) fn check(
    path: &Path,
    text: &str,
    host: &Host,
    seen: &mut Seen,
    dropin: bool,
) -> (Config, Vec<ConfigError>) {
    let mut cx = Checker {
        path,
        text,
        host,
        errors: Vec::new(),
        shared: None,
        line_starts: line_starts(text),
        programs: FxHashMap::default(),
        rlimit_ceilings: None,
    };
    let config = cx.document(seen, dropin);
    (config, cx.errors)
}

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// A `[[service]]` table's entries, gathered once. A service has a handful
/// of keys and is asked for each of about 40; a scan of a flat list that
/// compares lengths first beats the map's ordered search (which compares
/// bytes at each step) and its iterator: at 10,000 services the lookups
/// were a fifth of the walk.
pub(super) struct Table<'t, 'i> {
    entries: Vec<(&'t str, &'t Value<'i>)>,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(super) fn new(t: &'t DeTable<'i>) -> Self {
        Table {
            entries: t.iter().map(|(k, v)| (k.get_ref().as_ref(), v)).collect(),
        }
    }
}

impl<'i> Table<'_, 'i> {
    pub(super) fn field(&self, key: &str) -> Option<&Value<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) host: &'a Host,
    pub(super) errors: Vec<ConfigError>,
    /// `text`, shared by the errors that show it (made once, on the first).
    pub(super) shared: Option<Arc<str>>,
    /// Where each line of `text` starts: a position's line is a binary
    /// search, not a scan from the top (a 10,000-service file asks 10,000
    /// times).
    pub(super) line_starts: Vec<usize>,
    /// Programs found so far, by name and jail.
    pub(super) programs: FxHashMap<(String, Option<PathBuf>), PathBuf>,
    /// How high `rlimits` can go here, read at the first that asks.
    pub(super) rlimit_ceilings: Option<super::ceilings::RlimitCeilings>,
}

/// The offset of every line's first byte.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

impl Checker<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        // A span from the parser should sit on a char boundary; if one ever
        // does not, report the char it falls in rather than panic.
        let mut end = offset.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        // The last line starting at or before `end`.
        let line = self.line_starts.partition_point(|s| *s <= end);
        let line_start = self.line_starts[line - 1];
        let col = self.text[line_start..end].chars().count() + 1;
        (line, col)
    }

    fn error(&mut self, span: Option<Range<usize>>, service: Option<&str>, kind: ErrorKind) {
        let pos = span.as_ref().map(|s| self.line_col(s.start));
        let source = span.is_some().then(|| self.source());
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            pos,
            service: service.map(str::to_string),
            kind,
            span,
            source,
        });
    }

    fn source(&mut self) -> Arc<str> {
        self.shared
            .get_or_insert_with(|| Arc::from(self.text))
            .clone()
    }

    pub(super) fn at(&mut self, span: Range<usize>, kind: ErrorKind) {
        self.error(Some(span), None, kind);
    }

    pub(super) fn wrong_type(&mut self, key: &str, v: &Value<'_>, expected: &'static str) {
        self.at(
            v.span(),
            ErrorKind::WrongType {
                key: key.to_string(),
                expected,
                found: type_name(v.get_ref()),
            },
        );
    }

    pub(super) fn check_keys(
        &mut self,
        table: &DeTable<'_>,
        section: &'static str,
        allowed: &'static [&'static str],
    ) {
        for key in table.keys() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                self.at(
                    key.span(),
                    ErrorKind::UnknownKey {
                        key: key.get_ref().to_string(),
                        section,
                        expected: allowed,
                        suggestion: closest(key.get_ref(), allowed),
                    },
                );
            }
        }
    }

    fn document(&mut self, seen: &mut Seen, dropin: bool) -> Config {
        let mut config = Config {
            path: self.path.to_path_buf(),
            daemon: DaemonSpec::default(),
            services: Vec::new(),
            reloadable: true,
        };
        let root = match DeTable::parse(self.text) {
            Ok(root) => root,
            Err(e) => {
                let span = e.span();
                self.error(
                    span,
                    None,
                    ErrorKind::Syntax(e.message().trim().to_string()),
                );
                return config;
            }
        };
        let root = root.get_ref();
        if dropin {
            self.check_keys(root, "a drop-in", &["service"]);
        } else {
            self.check_keys(root, "the top level", TOP_KEYS);
        }
        if let (Some(daemon), false) = (root.get("daemon"), dropin) {
            match daemon.get_ref() {
                DeValue::Table(t) => config.daemon = self.daemon(t),
                _ => self.wrong_type("daemon", daemon, "a table [daemon]"),
            }
        }
        if !dropin {
            seen.max_children = Some(config.daemon.max_children);
        }
        if let Some(services) = root.get("service") {
            match services.get_ref() {
                DeValue::Array(items) => {
                    config.services.reserve_exact(items.len());
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(s) = self.service(t, item.span(), seen) {
                                    config.services.push(s);
                                }
                            }
                            _ => self.wrong_type("service", item, "a table [[service]]"),
                        }
                    }
                }
                _ => self.wrong_type("service", services, "an array of tables [[service]]"),
            }
        }
        config
    }

    fn daemon(&mut self, t: &DeTable<'_>) -> DaemonSpec {
        self.check_keys(t, "[daemon]", DAEMON_KEYS);
        let mut d = DaemonSpec::default();
        if let Some(v) = t.get("max_children") {
            if let Some(n) = self.positive("max_children", v) {
                d.max_children = n;
            }
        }
        if let Some(v) = t.get("include") {
            d.include = self.include_patterns(v);
        }
        if let Some(v) = t.get("metrics") {
            d.metrics = self.metrics_address(v);
        }
        if let Some(v) = t.get("log_format") {
            if let Some(f) = self.choice(
                "log_format",
                v,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            ) {
                d.log_format = f;
            }
        }
        if let Some(v) = t.get("control") {
            if let Some(p) = self.string("control", v) {
                if p.is_empty() {
                    self.at(
                        v.span(),
                        ErrorKind::Invalid {
                            key: "control",
                            reason: "must name a socket file".into(),
                        },
                    );
                } else {
                    d.control = Some(super::beside(self.path, p));
                }
            }
        }
        d
    }

    /// `include`: the glob patterns that are valid, each other one an error.
    fn include_patterns(&mut self, v: &Value<'_>) -> Vec<String> {
        let mut patterns = Vec::new();
        for (pattern, span) in self.string_list("include", v).unwrap_or_default() {
            if pattern.is_empty() {
                self.at(
                    span,
                    ErrorKind::Invalid {
                        key: "include",
                        reason: "an empty pattern".into(),
                    },
                );
            } else if pattern.contains("**") {
                // A recursive walk at every load (and reload, in the
                // loop) is never what a conf.d means.
                self.at(
                    span,
                    ErrorKind::Invalid {
                        key: "include",
                        reason: format!(
                            "\"{pattern}\": recursive patterns (**) are not supported; \
                             name a directory of drop-ins, like \"conf.d/*.toml\""
                        ),
                    },
                );
            } else if let Err(e) = glob::Pattern::new(pattern) {
                self.at(
                    span,
                    ErrorKind::Invalid {
                        key: "include",
                        reason: format!("\"{pattern}\" is not a glob pattern: {}", e.msg),
                    },
                );
            } else {
                patterns.push(pattern.to_string());
            }
        }
        patterns
    }

    /// `metrics`: a stream address (HTTP needs a connection).
    fn metrics_address(&mut self, v: &Value<'_>) -> Option<ListenAddr> {
        let s = self.string("metrics", v)?;
        match s.parse::<ListenAddr>() {
            Ok(a) if a.is_stream() => Some(a),
            Ok(a) => {
                self.at(
                    v.span(),
                    ErrorKind::Invalid {
                        key: "metrics",
                        reason: format!("{a} is a datagram address; HTTP needs tcp:// or unix://"),
                    },
                );
                None
            }
            Err(e) => {
                self.at(v.span(), ErrorKind::Address(e));
                None
            }
        }
    }

    pub(super) fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, v, "true or false");
                None
            }
        }
    }

    /// An integer from 1 to u32::MAX; 0 is an error (a limit of zero would
    /// make the service unreachable, which is never what was meant).
    pub(super) fn positive(&mut self, key: &'static str, v: &Value<'_>) -> Option<u32> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, v, "a positive integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Some(n as u32),
            _ => {
                self.at(
                    v.span(),
                    ErrorKind::Invalid {
                        key,
                        reason: format!("must be from 1 to {}", u32::MAX),
                    },
                );
                None
            }
        }
    }

    pub(super) fn string_list<'v>(
        &mut self,
        key: &str,
        v: &'v Value<'_>,
    ) -> Option<Vec<(&'v str, Range<usize>)>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                _ => {
                    self.wrong_type(key, item, "an array of strings");
                    return None;
                }
            }
        }
        Some(out)
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        v: &Value<'_>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(key, v)?;
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*t);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let plain: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = closest(s, &plain)
            .map(|c| format!("; did you mean \"{c}\"?"))
            .unwrap_or_default();
        self.at(
            v.span(),
            ErrorKind::Invalid {
                key,
                reason: format!("\"{s}\" is not one of {}{hint}", names.join(", ")),
            },
        );
        None
    }

    pub(super) fn listen(
        &mut self,
        v: &Value<'_>,
        service: &Rc<str>,
        seen: &mut Seen,
    ) -> Vec<ListenSpec> {
        let entries: Vec<&Value<'_>> = match v.get_ref() {
            DeValue::Array(items) => items.iter().collect(),
            _ => vec![v],
        };
        if entries.is_empty() {
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "listen",
                    reason: "needs at least one address".into(),
                },
            );
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some((text, text_span, name)) = self.listen_entry(entry) else {
                continue;
            };
            match text.parse::<ListenAddr>() {
                Ok(addr) => {
                    if let Some(other) = seen.addrs.get(&addr) {
                        self.at(
                            text_span,
                            ErrorKind::AddressTaken {
                                addr,
                                other: other.to_string(),
                            },
                        );
                    } else {
                        seen.addrs.insert(addr.clone(), service.clone());
                        out.push(ListenSpec { addr, name });
                    }
                }
                Err(e) => self.at(text_span, ErrorKind::Address(e)),
            }
        }
        out
    }

    /// One `listen` entry, an address or a table { address, name }: the
    /// address's text and span, and the fd's name.
    fn listen_entry<'v>(
        &mut self,
        entry: &'v Value<'_>,
    ) -> Option<(&'v str, Range<usize>, Option<String>)> {
        match entry.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), entry.span(), None)),
            DeValue::Table(t) => {
                self.check_keys(t, "a `listen` entry", LISTEN_TABLE_KEYS);
                let name = t.get("name").and_then(|n| self.fd_name(n));
                match t.get("address") {
                    Some(a) => Some((self.string("address", a)?, a.span(), name)),
                    None => {
                        self.at(entry.span(), ErrorKind::Missing { key: "address" });
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(
                    "listen",
                    entry,
                    "an address string, a table, or an array of them",
                );
                None
            }
        }
    }

    /// A listen table's `name`, as it goes into LISTEN_FDNAMES.
    fn fd_name(&mut self, n: &Value<'_>) -> Option<String> {
        let s = self.string("name", n)?;
        if s.is_empty() || s.len() > 255 || s.chars().any(|c| c == ':' || !c.is_ascii_graphic()) {
            self.at(
                n.span(),
                ErrorKind::Invalid {
                    key: "name",
                    reason: format!(
                        "\"{s}\" must be 1 to 255 printable ASCII characters without ':' (it goes into LISTEN_FDNAMES)"
                    ),
                },
            );
            return None;
        }
        Some(s.to_string())
    }

    pub(super) fn env(&mut self, v: &Value<'_>) -> Vec<(String, String)> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("env", v, "a table of strings like { NAME = \"value\" }");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in t.iter() {
            let name = key.get_ref().as_ref();
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.at(
                    key.span(),
                    ErrorKind::Invalid {
                        key: "env",
                        reason: format!("\"{name}\" is not a valid environment variable name"),
                    },
                );
                continue;
            }
            if is_reserved_env(name) {
                self.at(
                    key.span(),
                    ErrorKind::ReservedEnv {
                        key: "env",
                        name: name.to_string(),
                    },
                );
                continue;
            }
            match value.get_ref() {
                DeValue::String(s) if !s.contains('\0') => {
                    out.push((name.to_string(), s.to_string()))
                }
                DeValue::String(_) => self.at(
                    value.span(),
                    ErrorKind::Invalid {
                        key: "env",
                        reason: format!("the value of {name} contains a NUL byte"),
                    },
                ),
                _ => self.wrong_type(name, value, "a string"),
            }
        }
        out
    }
}

/// What earlier services claimed, for the duplicate checks. A service's
/// name is held once (shared by both maps) and its file by index: at
/// 10,000 services a copy of each per service was most of the checker's
/// allocations.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) files: Vec<PathBuf>,
    /// Name → the file (index into `files`) and line that first defined it.
    pub(super) names: FxHashMap<Rc<str>, (usize, usize)>,
    addrs: FxHashMap<ListenAddr, Rc<str>>,
    /// A `runtime_directory` path → the first enabled service naming it,
    /// and the uid, gid and mode it gives it.
    pub(super) runtime_dirs: FxHashMap<PathBuf, (String, (u32, u32, u32))>,
    /// `[daemon] max_children`, once the main file's `[daemon]` is walked
    /// (before its services and every drop-in's): no pool may need more.
    pub(super) max_children: Option<u32>,
}

impl Seen {
    /// The index of `path` in `files`: the file being walked is the last.
    pub(super) fn file(&mut self, path: &Path) -> usize {
        if self.files.last().map(PathBuf::as_path) != Some(path) {
            self.files.push(path.to_path_buf());
        }
        self.files.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(is_root: bool) -> Host {
        Host {
            path_var: "/usr/local/bin:/usr/bin:/bin".into(),
            is_root,
            runtime_base: Some("/run".into()),
        }
    }

    fn checker<'a>(text: &'a str, host: &'a Host) -> Checker<'a> {
        Checker {
            path: Path::new("t"),
            text,
            host,
            errors: Vec::new(),
            shared: None,
            line_starts: line_starts(text),
            programs: FxHashMap::default(),
            rlimit_ceilings: None,
        }
    }

    #[test]
    fn positions_inside_multibyte_text_do_not_panic() {
        let text = "name = \"日本\"";
        let host = host(true);
        let cx = checker(text, &host);
        for offset in 0..=text.len() + 3 {
            let (line, col) = cx.line_col(offset);
            assert_eq!(line, 1);
            assert!(col >= 1 && col <= text.chars().count() + 1);
        }
    }

    #[test]
    fn lines_and_columns_count_from_one_across_lines() {
        let text = "a = 1\n\nb = \"é\"\nc";
        let host = host(true);
        let cx = checker(text, &host);
        assert_eq!(cx.line_col(0), (1, 1));
        assert_eq!(cx.line_col(4), (1, 5));
        assert_eq!(cx.line_col(5), (1, 6), "the newline ends line 1");
        assert_eq!(cx.line_col(6), (2, 1));
        assert_eq!(cx.line_col(7), (3, 1));
        // After the two-byte é: column 7 in chars.
        assert_eq!(cx.line_col(7 + 7), (3, 7));
        assert_eq!(cx.line_col(text.len()), (4, 2));
    }
}
