//! The services file: TOML text → a validated, immutable `Config`, or every
//! mistake in it as a `ConfigError` printing `PATH:LINE:COL: message`.
//!
//! We walk toml's spanned document tree by hand instead of deriving
//! `Deserialize` with `deny_unknown_fields`: serde stops at the first
//! error and loses positions for cross-field checks, and SPEC wants every
//! error in the file at once, each with its line. Resolving `exec` in PATH
//! and user/group names happens here, at load, so nothing after `fork`
//! reads the filesystem or the group database. Nothing here binds, logs or
//! panics on any input.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::access::{AccessList, Cidr, CidrError};
use crate::addr::{AddrError, ListenAddr};
use crate::spawn::is_reserved_env;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/summond/summond.toml";
pub const DEFAULT_MAX_CHILDREN: u32 = 1024;
/// Used when summond's own environment has no PATH, as execvp does.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The keys each section accepts (also the fuzzer's dictionary).
pub const TOP_KEYS: &[&str] = &["daemon", "service"];
pub const DAEMON_KEYS: &[&str] = &["max_children", "control"];
pub const SERVICE_KEYS: &[&str] = &[
    "name",
    "listen",
    "exec",
    "accept",
    "pass",
    "stderr",
    "user",
    "group",
    "env",
    "max_instances",
    "max_per_source",
    "allow",
    "deny",
    "socket_mode",
];
pub const LISTEN_TABLE_KEYS: &[&str] = &["address", "name"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonSpec,
    pub services: Vec<ServiceSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSpec {
    pub max_children: u32,
    pub control: Option<PathBuf>,
}

impl Default for DaemonSpec {
    fn default() -> Self {
        DaemonSpec {
            max_children: DEFAULT_MAX_CHILDREN,
            control: None,
        }
    }
}

/// How the socket reaches the child (SPEC "The four ways").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Stdio,
    ListenFds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StderrMode {
    Inherit,
    Socket,
    Null,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: ListenAddr,
    /// The `LISTEN_FDNAMES` entry for `accept = false` services.
    pub name: Option<String>,
}

/// Who the child runs as, resolved when the config loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `None`: only `group` was given; the child keeps summond's uid.
    pub uid: Option<u32>,
    pub gid: u32,
    /// The full supplementary list, set with `setgroups` before `setgid`.
    pub groups: Vec<u32>,
}

/// One `[[service]]` as the file says it. Immutable and comparable, so a
/// reload can tell an unchanged service from a changed one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub listen: Vec<ListenSpec>,
    /// argv as written; `argv[0]` stays as the user wrote it.
    pub exec: Vec<String>,
    /// `exec[0]` resolved to an absolute path when the config loaded.
    pub program: PathBuf,
    pub accept: bool,
    pub pass: Pass,
    pub stderr: StderrMode,
    pub credentials: Option<Credentials>,
    pub env: Vec<(String, String)>,
    pub max_instances: Option<u32>,
    pub max_per_source: Option<u32>,
    pub access: AccessList,
    pub socket_mode: Option<u32>,
}

impl ServiceSpec {
    /// The SPEC table's name for this start mode, for logs and status.
    pub fn mode(&self) -> &'static str {
        match (self.accept, self.pass) {
            (true, Pass::Stdio) => "accept/stdio",
            (true, Pass::ListenFds) => "accept/listen_fds",
            (false, Pass::ListenFds) => "pass/listen_fds",
            (false, Pass::Stdio) => "pass/stdio",
        }
    }
}

/// What the config is checked against: summond's PATH and whether it runs
/// as root. Passed in so tests can describe the host they want.
#[derive(Clone, Debug)]
pub struct Host {
    pub path_var: OsString,
    pub is_root: bool,
}

impl Host {
    pub fn current() -> Host {
        Host {
            path_var: std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
            is_root: nix::unistd::geteuid().is_root(),
        }
    }
}

#[derive(Debug)]
pub enum ErrorKind {
    Read(std::io::Error),
    Syntax(String),
    UnknownKey {
        key: String,
        section: &'static str,
        expected: &'static [&'static str],
    },
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    Missing {
        key: &'static str,
    },
    Invalid {
        key: &'static str,
        reason: String,
    },
    Address(AddrError),
    Cidr {
        key: &'static str,
        err: CidrError,
    },
    DuplicateName {
        name: String,
        first_line: usize,
    },
    AddressTaken {
        addr: ListenAddr,
        other: String,
    },
    AcceptOnDatagram {
        addr: ListenAddr,
    },
    NeedsAccept {
        key: &'static str,
    },
    AccessOnUnix {
        key: &'static str,
    },
    ProgramNotFound {
        name: String,
    },
    ProgramRelative {
        path: String,
    },
    ProgramNotExecutable {
        path: PathBuf,
        why: &'static str,
    },
    UnknownUser(String),
    UnknownGroup(String),
    NotRoot {
        key: &'static str,
    },
    ReservedEnv(String),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match self {
            Read(e) => write!(f, "cannot read config: {e}"),
            Syntax(m) => write!(f, "TOML syntax: {m}"),
            UnknownKey {
                key,
                section,
                expected,
            } => write!(
                f,
                "unknown key `{key}` in {section} (expected one of: {})",
                expected.join(", ")
            ),
            WrongType {
                key,
                expected,
                found,
            } => write!(f, "`{key}` must be {expected}, found {found}"),
            Missing { key } => write!(f, "missing required key `{key}`"),
            Invalid { key, reason } => write!(f, "`{key}`: {reason}"),
            Address(e) => write!(f, "`listen`: {e}"),
            Cidr { key, err } => write!(f, "`{key}`: {err}"),
            DuplicateName { name, first_line } => write!(
                f,
                "duplicate service name \"{name}\" (first defined at line {first_line})"
            ),
            AddressTaken { addr, other } => {
                write!(f, "address {addr} is already used by service \"{other}\"")
            }
            AcceptOnDatagram { addr } => write!(
                f,
                "`accept = true` is impossible on datagram socket {addr}: nothing to accept, \
                 the service must read the datagrams itself (accept = false)"
            ),
            NeedsAccept { key } => write!(
                f,
                "`{key}` needs `accept = true`: with accept = false the child accepts \
                 connections, so summond could never apply it"
            ),
            AccessOnUnix { key } => write!(
                f,
                "`{key}` filters IP addresses and cannot apply to a unix socket"
            ),
            ProgramNotFound { name } => write!(f, "`exec`: \"{name}\" not found in PATH"),
            ProgramRelative { path } => write!(
                f,
                "`exec`: \"{path}\" must be an absolute path or a bare name looked up in PATH"
            ),
            ProgramNotExecutable { path, why } => {
                write!(f, "`exec`: {} {why}", path.display())
            }
            UnknownUser(u) => write!(f, "`user`: no such user \"{u}\""),
            UnknownGroup(g) => write!(f, "`group`: no such group \"{g}\""),
            NotRoot { key } => write!(
                f,
                "`{key}` needs summond to run as root (it cannot change a child's identity otherwise)"
            ),
            ReservedEnv(name) => write!(
                f,
                "`env`: {name} is set by summond itself and cannot be configured"
            ),
        }
    }
}

/// One mistake in a config file. Prints `PATH:LINE:COL: message`, or
/// `PATH: service "x": message` when no position applies.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub pos: Option<(usize, usize)>,
    pub service: Option<String>,
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        match (self.pos, &self.service) {
            (Some((line, col)), _) => write!(f, "{line}:{col}: {}", self.kind),
            (None, Some(name)) => write!(f, " service \"{name}\": {}", self.kind),
            (None, None) => write!(f, " {}", self.kind),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the errors of one load, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A file-level error with no position (unreadable, not TOML).
    fn one(path: &Path, kind: ErrorKind) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            pos: None,
            service: None,
            kind,
        }])
    }
}

/// Read and validate the file at `path`.
pub fn load(path: &Path, host: &Host) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, host),
        Err(e) => Err(ConfigErrors::one(path, ErrorKind::Read(e))),
    }
}

/// Validate `text` as the contents of `path` (the path only labels errors).
pub fn parse(path: &Path, text: &str, host: &Host) -> Result<Config, ConfigErrors> {
    let mut cx = Checker {
        path,
        text,
        host,
        errors: Vec::new(),
    };
    let config = cx.document();
    let mut errors = cx.errors;
    if errors.is_empty() {
        return Ok(config);
    }
    // Walk order is nearly file order; cross-service checks come last.
    errors.sort_by_key(|e| e.pos.unwrap_or((usize::MAX, usize::MAX)));
    Err(ConfigErrors(errors))
}

/// Only `[daemon] control` from the file at `path`, for `summond status`:
/// it must work for a user who could not load the whole config (services
/// with `user` need root to validate).
pub fn control_socket(path: &Path) -> Result<Option<PathBuf>, ConfigErrors> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigErrors::one(path, ErrorKind::Read(e)))?;
    let root = DeTable::parse(&text)
        .map_err(|e| ConfigErrors::one(path, ErrorKind::Syntax(e.message().trim().to_string())))?;
    let control = root
        .get_ref()
        .get("daemon")
        .and_then(|d| d.get_ref().as_table()?.get("control"))
        .and_then(|c| c.get_ref().as_str().map(PathBuf::from));
    Ok(control)
}

type Value<'i> = Spanned<DeValue<'i>>;

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

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    host: &'a Host,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        // A span from the parser should sit on a char boundary; if one ever
        // does not, report the char it falls in rather than panic.
        let mut end = offset.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &self.text[..end];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn error(&mut self, span: Option<Range<usize>>, service: Option<&str>, kind: ErrorKind) {
        let pos = span.map(|s| self.line_col(s.start));
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            pos,
            service: service.map(str::to_string),
            kind,
        });
    }

    fn at(&mut self, span: Range<usize>, kind: ErrorKind) {
        self.error(Some(span), None, kind);
    }

    fn wrong_type(&mut self, key: &str, v: &Value<'_>, expected: &'static str) {
        self.at(
            v.span(),
            ErrorKind::WrongType {
                key: key.to_string(),
                expected,
                found: type_name(v.get_ref()),
            },
        );
    }

    fn check_keys(
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
                    },
                );
            }
        }
    }

    fn document(&mut self) -> Config {
        let mut config = Config {
            path: self.path.to_path_buf(),
            daemon: DaemonSpec::default(),
            services: Vec::new(),
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
        self.check_keys(root, "the top level", TOP_KEYS);
        if let Some(daemon) = root.get("daemon") {
            match daemon.get_ref() {
                DeValue::Table(t) => config.daemon = self.daemon(t),
                _ => self.wrong_type("daemon", daemon, "a table [daemon]"),
            }
        }
        let mut seen = Seen::default();
        if let Some(services) = root.get("service") {
            match services.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                if let Some(s) = self.service(t, item.span(), &mut seen) {
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
        if let Some(v) = t.get("control") {
            if let Some(p) = self.string("control", v) {
                if p.starts_with('/') {
                    d.control = Some(PathBuf::from(p));
                } else {
                    self.at(
                        v.span(),
                        ErrorKind::Invalid {
                            key: "control",
                            reason: format!("\"{p}\" must be an absolute path"),
                        },
                    );
                }
            }
        }
        d
    }

    fn string<'v>(&mut self, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, v: &Value<'_>) -> Option<bool> {
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
    fn positive(&mut self, key: &'static str, v: &Value<'_>) -> Option<u32> {
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

    fn string_list<'v>(
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

    fn choice<T: Copy>(
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
        self.at(
            v.span(),
            ErrorKind::Invalid {
                key,
                reason: format!("\"{s}\" is not one of {}", names.join(", ")),
            },
        );
        None
    }

    fn service(
        &mut self,
        t: &DeTable<'_>,
        span: Range<usize>,
        seen: &mut Seen,
    ) -> Option<ServiceSpec> {
        let errors_before = self.errors.len();
        self.check_keys(t, "[[service]]", SERVICE_KEYS);

        let name = match t.get("name") {
            Some(v) => self.string("name", v).and_then(|s| {
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    Some((s.to_string(), v.span()))
                } else {
                    self.at(
                        v.span(),
                        ErrorKind::Invalid {
                            key: "name",
                            reason: format!(
                                "\"{s}\" may use only letters, digits, '_', '.' and '-'"
                            ),
                        },
                    );
                    None
                }
            }),
            None => {
                self.at(span.clone(), ErrorKind::Missing { key: "name" });
                None
            }
        };
        if let Some((name, name_span)) = &name {
            let line = self.line_col(name_span.start).0;
            if let Some(first_line) = seen.names.get(name) {
                self.at(
                    name_span.clone(),
                    ErrorKind::DuplicateName {
                        name: name.clone(),
                        first_line: *first_line,
                    },
                );
            } else {
                seen.names.insert(name.clone(), line);
            }
        }
        let label = name
            .as_ref()
            .map_or_else(|| "(unnamed)".to_string(), |n| n.0.clone());

        let listen = match t.get("listen") {
            Some(v) => self.listen(v, &label, seen),
            None => {
                self.at(span.clone(), ErrorKind::Missing { key: "listen" });
                Vec::new()
            }
        };

        let (exec, program) = match t.get("exec") {
            Some(v) => self.exec(v).unzip(),
            None => {
                self.at(span.clone(), ErrorKind::Missing { key: "exec" });
                (None, None)
            }
        };

        let has_datagram = listen.iter().any(|l| !l.addr.is_stream());
        let has_unix = listen.iter().any(|l| l.addr.is_unix());
        let accept = match t.get("accept") {
            Some(v) => {
                let accept = self.boolean("accept", v);
                if accept == Some(true) {
                    if let Some(l) = listen.iter().find(|l| !l.addr.is_stream()) {
                        self.at(
                            v.span(),
                            ErrorKind::AcceptOnDatagram {
                                addr: l.addr.clone(),
                            },
                        );
                    }
                }
                accept.unwrap_or(false)
            }
            // inetd's nowait for stream sockets; datagram sockets can only
            // be handed over whole.
            None => !has_datagram,
        };

        let pass = t
            .get("pass")
            .and_then(|v| {
                self.choice(
                    "pass",
                    v,
                    &[("stdio", Pass::Stdio), ("listen_fds", Pass::ListenFds)],
                )
            })
            .unwrap_or(Pass::Stdio);
        let stderr = t
            .get("stderr")
            .and_then(|v| {
                self.choice(
                    "stderr",
                    v,
                    &[
                        ("inherit", StderrMode::Inherit),
                        ("socket", StderrMode::Socket),
                        ("null", StderrMode::Null),
                    ],
                )
            })
            .unwrap_or(StderrMode::Inherit);

        if let (Pass::ListenFds, StderrMode::Socket, Some(v)) = (pass, stderr, t.get("stderr")) {
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "stderr",
                    reason: "\"socket\" needs pass = \"stdio\" (with listen_fds the child's fds 1 and 2 are not the connection)".into(),
                },
            );
        }
        let credentials = self.credentials(t);
        let env = t.get("env").map(|v| self.env(v)).unwrap_or_default();
        let max_instances = t
            .get("max_instances")
            .and_then(|v| self.positive("max_instances", v));
        let max_per_source = t
            .get("max_per_source")
            .and_then(|v| self.positive("max_per_source", v));

        let mut access = AccessList::default();
        for key in ["allow", "deny"] {
            let Some(v) = t.get(key) else { continue };
            let mut blocks = Vec::new();
            for (text, item_span) in self.string_list(key, v).unwrap_or_default() {
                match text.parse::<Cidr>() {
                    Ok(c) => blocks.push(c),
                    Err(err) => self.at(item_span, ErrorKind::Cidr { key, err }),
                }
            }
            if key == "allow" {
                access.allow = Some(blocks);
            } else {
                access.deny = blocks;
            }
            if has_unix {
                self.at(v.span(), ErrorKind::AccessOnUnix { key });
            }
        }
        if !accept {
            for key in ["allow", "deny", "max_per_source"] {
                if let Some(v) = t.get(key) {
                    self.at(v.span(), ErrorKind::NeedsAccept { key });
                }
            }
        }

        let socket_mode = t.get("socket_mode").and_then(|v| {
            let s = self.string("socket_mode", v)?;
            let mode = u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777 && !s.is_empty());
            let reason = if mode.is_none() {
                format!("\"{s}\" is not an octal file mode like \"0660\"")
            } else if listen.iter().all(|l| l.addr.socket_file().is_none()) {
                "applies to unix socket files, and this service listens on none".to_string()
            } else {
                return mode;
            };
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "socket_mode",
                    reason,
                },
            );
            None
        });

        if self.errors.len() != errors_before {
            return None;
        }
        // Every field above reported its own error; with none, all are set.
        let (name, _) = name?;
        Some(ServiceSpec {
            name,
            listen,
            exec: exec?,
            program: program?,
            accept,
            pass,
            stderr,
            credentials,
            env,
            max_instances,
            max_per_source,
            access,
            socket_mode,
        })
    }

    fn listen(&mut self, v: &Value<'_>, service: &str, seen: &mut Seen) -> Vec<ListenSpec> {
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
        let mut out = Vec::new();
        for entry in entries {
            let (text, text_span, name) = match entry.get_ref() {
                DeValue::String(s) => (s.as_ref(), entry.span(), None),
                DeValue::Table(t) => {
                    self.check_keys(t, "a `listen` entry", LISTEN_TABLE_KEYS);
                    let name = t.get("name").and_then(|n| {
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
                    });
                    match t.get("address") {
                        Some(a) => match self.string("address", a) {
                            Some(s) => (s, a.span(), name),
                            None => continue,
                        },
                        None => {
                            self.at(entry.span(), ErrorKind::Missing { key: "address" });
                            continue;
                        }
                    }
                }
                _ => {
                    self.wrong_type(
                        "listen",
                        entry,
                        "an address string, a table, or an array of them",
                    );
                    continue;
                }
            };
            match text.parse::<ListenAddr>() {
                Ok(addr) => {
                    if let Some(other) = seen.addrs.get(&addr) {
                        self.at(
                            text_span,
                            ErrorKind::AddressTaken {
                                addr,
                                other: other.clone(),
                            },
                        );
                    } else {
                        seen.addrs.insert(addr.clone(), service.to_string());
                        out.push(ListenSpec { addr, name });
                    }
                }
                Err(e) => self.at(text_span, ErrorKind::Address(e)),
            }
        }
        out
    }

    fn exec(&mut self, v: &Value<'_>) -> Option<(Vec<String>, PathBuf)> {
        let argv = match v.get_ref() {
            DeValue::Array(_) => self.string_list("exec", v)?,
            _ => {
                self.wrong_type("exec", v, "an array of strings like [\"/bin/cat\"]");
                return None;
            }
        };
        let Some((first, first_span)) = argv.first().cloned() else {
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "exec",
                    reason: "is empty: name the program to run".into(),
                },
            );
            return None;
        };
        if let Some((_, span)) = argv.iter().find(|(a, _)| a.contains('\0')) {
            self.at(
                span.clone(),
                ErrorKind::Invalid {
                    key: "exec",
                    reason: "arguments cannot contain a NUL byte".into(),
                },
            );
            return None;
        }
        match resolve_program(first, &self.host.path_var) {
            Ok(program) => Some((argv.iter().map(|(a, _)| a.to_string()).collect(), program)),
            Err(kind) => {
                self.at(first_span, kind);
                None
            }
        }
    }

    fn env(&mut self, v: &Value<'_>) -> Vec<(String, String)> {
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
                self.at(key.span(), ErrorKind::ReservedEnv(name.to_string()));
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

    fn credentials(&mut self, t: &DeTable<'_>) -> Option<Credentials> {
        let user_v = t.get("user");
        let group_v = t.get("group");
        let user = user_v.and_then(|v| self.string("user", v));
        let group = group_v.and_then(|v| self.string("group", v));
        if user.is_none() && group.is_none() {
            return None;
        }
        if !self.host.is_root {
            for (key, v) in [("user", user_v), ("group", group_v)] {
                if let Some(v) = v {
                    self.at(v.span(), ErrorKind::NotRoot { key });
                }
            }
            return None;
        }
        let mut failed = false;
        let user_entry = user.and_then(|name| match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Some(u),
            _ => {
                self.at(user_v?.span(), ErrorKind::UnknownUser(name.to_string()));
                failed = true;
                None
            }
        });
        let group_gid = group.and_then(|name| match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            _ => {
                self.at(group_v?.span(), ErrorKind::UnknownGroup(name.to_string()));
                failed = true;
                None
            }
        });
        if failed {
            return None;
        }
        match user_entry {
            Some(u) => {
                let gid = group_gid.unwrap_or(u.gid.as_raw());
                // The group database is read here, never after fork.
                let mut groups: Vec<u32> = CString::new(u.name.clone())
                    .ok()
                    .and_then(|c| {
                        nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid)).ok()
                    })
                    .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_else(|| vec![gid]);
                if !groups.contains(&gid) {
                    groups.push(gid);
                }
                Some(Credentials {
                    uid: Some(u.uid.as_raw()),
                    gid,
                    groups,
                })
            }
            None => group_gid.map(|gid| Credentials {
                uid: None,
                gid,
                groups: vec![gid],
            }),
        }
    }
}

/// What earlier services claimed, for the duplicate checks.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    addrs: HashMap<ListenAddr, String>,
}

fn check_executable(path: &Path) -> Result<(), &'static str> {
    let meta = std::fs::metadata(path).map_err(|_| "does not exist")?;
    if !meta.is_file() {
        return Err("is not a regular file");
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return Err("is not executable");
    }
    Ok(())
}

/// `exec[0]`: an absolute path that must be executable, or a bare name
/// looked up in PATH now, so a typo is a config error rather than a
/// failure on the first connection.
fn resolve_program(name: &str, path_var: &OsString) -> Result<PathBuf, ErrorKind> {
    if name.contains('/') {
        if !name.starts_with('/') {
            return Err(ErrorKind::ProgramRelative { path: name.into() });
        }
        let path = PathBuf::from(name);
        return match check_executable(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(ErrorKind::ProgramNotExecutable { path, why }),
        };
    }
    if name.is_empty() {
        return Err(ErrorKind::ProgramNotFound { name: name.into() });
    }
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| check_executable(candidate).is_ok())
        .ok_or_else(|| ErrorKind::ProgramNotFound { name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(is_root: bool) -> Host {
        Host {
            path_var: "/usr/local/bin:/usr/bin:/bin".into(),
            is_root,
        }
    }

    fn ok(text: &str) -> Config {
        parse(Path::new("t.toml"), text, &host(true)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errs(text: &str, is_root: bool) -> Vec<String> {
        match parse(Path::new("t.toml"), text, &host(is_root)) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_service_gets_the_defaults() {
        let c = ok(
            "[[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:7007\"\nexec = [\"cat\"]\n",
        );
        assert_eq!(c.daemon, DaemonSpec::default());
        let s = &c.services[0];
        assert_eq!(s.name, "echo");
        assert!(s.accept);
        assert_eq!(s.pass, Pass::Stdio);
        assert_eq!(s.stderr, StderrMode::Inherit);
        assert!(s.program.is_absolute() && s.program.ends_with("cat"));
        assert_eq!(s.exec, vec!["cat"]);
        assert_eq!(s.mode(), "accept/stdio");
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_different_addresses() {
        let c = ok("[[service]]\nname = \"dns\"\nlisten = [\"tcp://127.0.0.1:53\", \"udp://127.0.0.1:53\"]\nexec = [\"cat\"]\n");
        assert_eq!(c.services[0].listen.len(), 2);
        assert!(
            !c.services[0].accept,
            "a datagram address makes accept default to false"
        );
    }

    #[test]
    fn empty_config_is_valid() {
        assert!(ok("").services.is_empty());
        assert_eq!(ok("[daemon]\nmax_children = 5\n").daemon.max_children, 5);
    }

    #[test]
    fn datagram_services_default_to_pass_mode() {
        let c = ok(
            "[[service]]\nname = \"u\"\nlisten = \"udp://127.0.0.1:6969\"\nexec = [\"/bin/cat\"]\n",
        );
        assert!(!c.services[0].accept);
    }

    #[test]
    fn full_service_parses() {
        let c = ok(r#"
[daemon]
max_children = 10
control = "/run/summond.sock"

[[service]]
name = "web"
listen = ["unix:///tmp/x.sock", { address = "unix:///tmp/y.sock", name = "second" }]
exec = ["/bin/sh", "-c", "exit 0"]
accept = false
pass = "listen_fds"
stderr = "null"
user = "nobody"
env = { A = "1", B = "two" }
max_instances = 3
socket_mode = "0660"
"#);
        let s = &c.services[0];
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.listen[1].name.as_deref(), Some("second"));
        assert_eq!(s.mode(), "pass/listen_fds");
        assert_eq!(s.socket_mode, Some(0o660));
        assert_eq!(
            s.env,
            vec![("A".into(), "1".into()), ("B".into(), "two".into())]
        );
        let creds = s.credentials.as_ref().unwrap();
        assert!(creds.uid.is_some() && creds.groups.contains(&creds.gid));
        assert_eq!(c.daemon.control, Some(PathBuf::from("/run/summond.sock")));
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let got = errs(
            r#"[[service]]
name = "a"
listen = "tcp://127.0.0.1:0"
exec = ["cat"]
colour = "red"

[[service]]
name = "a"
listen = "udp://127.0.0.1:5000"
exec = "cat"
accept = true
"#,
            true,
        );
        assert_eq!(
            got,
            vec![
                "t.toml:3:10: `listen`: port 0 is not allowed: name the port to listen on",
                "t.toml:5:1: unknown key `colour` in [[service]] (expected one of: name, listen, exec, accept, pass, stderr, user, group, env, max_instances, max_per_source, allow, deny, socket_mode)",
                "t.toml:8:8: duplicate service name \"a\" (first defined at line 2)",
                "t.toml:10:8: `exec` must be an array of strings like [\"/bin/cat\"], found a string",
                "t.toml:11:10: `accept = true` is impossible on datagram socket udp://127.0.0.1:5000: nothing to accept, the service must read the datagrams itself (accept = false)",
            ]
        );
    }

    #[test]
    fn identity_keys_need_root() {
        let got = errs(
            "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\nuser = \"nobody\"\n",
            false,
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("t.toml:5:8: `user` needs summond to run as root"),
            "{got:?}"
        );
    }

    #[test]
    fn reserved_environment_cannot_be_set() {
        let got = errs(
            "[[service]]\nname = \"a\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"cat\"]\nenv = { LISTEN_FDS = \"3\" }\n",
            true,
        );
        assert_eq!(
            got,
            vec!["t.toml:5:9: `env`: LISTEN_FDS is set by summond itself and cannot be configured"]
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let got = errs("[[service]]\nname = \"a\nlisten = 1\n", true);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("t.toml:2:"), "{got:?}");
    }

    #[test]
    fn positions_inside_multibyte_text_do_not_panic() {
        let text = "name = \"日本\"";
        let cx = Checker {
            path: Path::new("t"),
            text,
            host: &host(true),
            errors: Vec::new(),
        };
        for offset in 0..=text.len() + 3 {
            let (line, col) = cx.line_col(offset);
            assert_eq!(line, 1);
            assert!(col >= 1 && col <= text.chars().count() + 1);
        }
    }

    #[test]
    fn program_resolution() {
        let path: OsString = "/nonexistent:/usr/bin:/bin".into();
        assert!(resolve_program("sh", &path).unwrap().ends_with("sh"));
        assert!(matches!(
            resolve_program("no-such-program-xyz", &path),
            Err(ErrorKind::ProgramNotFound { .. })
        ));
        assert!(matches!(
            resolve_program("bin/sh", &path),
            Err(ErrorKind::ProgramRelative { .. })
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", &path),
            Err(ErrorKind::ProgramNotExecutable {
                why: "is not executable",
                ..
            })
        ));
        assert!(matches!(
            resolve_program("/tmp", &path),
            Err(ErrorKind::ProgramNotExecutable {
                why: "is not a regular file",
                ..
            })
        ));
    }
}
