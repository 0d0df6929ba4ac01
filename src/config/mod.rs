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
//!
//! The folder: `mod.rs` the validated model and the entry points;
//! `keys.rs` the key tables the checker, the man page (and the fuzzer)
//! share; `error.rs` the error types; `parse.rs` the TOML walk that
//! collects every error with its span, and the core keys' readers;
//! `program.rs` `exec` and its program found in PATH; `credentials.rs`
//! `user`, `group` and `extra_groups` as ids; `service.rs` one
//! `[[service]]` table read by one handler per key into a `Draft`
//! (`draft.rs`), then checked as a whole; `options.rs` and
//! `runtime_dir.rs` the handlers of the sandbox, socket, rate and banner
//! keys and of the runtime directories; `include.rs` the drop-ins;
//! `units.rs` durations, rates, sizes and modes; `ceilings.rs` how high a
//! child's rlimits can go; `raw_path.rs` paths in summond's own JSON (the
//! upgrade state).

mod ceilings;
mod credentials;
mod draft;
mod error;
mod forward;
mod include;
mod keys;
mod options;
mod parse;
mod program;
pub mod raw_path;
mod runtime_dir;
#[cfg(test)]
mod schema;
mod service;
mod tls;
pub mod units;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use std::time::Duration;

use crate::access::AccessList;
use crate::addr::ListenAddr;
use crate::listener::ListenOptions;

pub use ceilings::rlimit_ceiling;
pub use forward::{DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT};
pub use units::Rate;

pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use keys::{
    KeyDoc, ValueWord, DAEMON_KEYS, KEY_DOCS, LISTEN_TABLE_KEYS, REQUIRED_SERVICE_KEYS,
    SERVICE_KEYS, TOP_KEYS, VALUE_WORDS,
};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/summond/summond.toml";
pub const DEFAULT_MAX_CHILDREN: u32 = 1024;
/// An internal service's idle TCP client is closed after this long
/// (`idle_timeout`'s default; SPEC: five minutes).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Used when summond's own environment has no PATH, as execvp does.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    #[serde(with = "raw_path")]
    pub path: PathBuf,
    pub daemon: DaemonSpec,
    pub services: Vec<ServiceSpec>,
    /// False for `summond wrap`: there is no file to re-read on SIGHUP.
    pub reloadable: bool,
}

/// What `summond wrap` was given: one service, named "wrap".
#[derive(Clone, Debug, Default)]
pub struct WrapSpec {
    pub listen: Vec<String>,
    pub accept: bool,
    /// "stdio" or "listen_fds"; the service default when absent.
    pub pass: Option<&'static str>,
    pub exec: Vec<String>,
    /// `--proxy-protocol`, `--proxy-from`: the keys' values as written.
    pub proxy_protocol: Option<String>,
    pub proxy_from: Vec<String>,
    /// Forward mode: `forward` and `idle_stop`.
    pub forward: Option<String>,
    pub idle_stop: Option<String>,
}

/// The label wrap's errors carry where a file name would be.
pub const WRAP_LABEL: &str = "summond wrap";

/// The config of `summond wrap`: the same checks as a one-service file
/// (addresses, the program in PATH, the mode), with errors labelled
/// `summond wrap: ...` instead of positions in a file nobody wrote.
pub fn wrap(spec: &WrapSpec, host: &Host) -> Result<Config, ConfigErrors> {
    let mut svc = toml::Table::new();
    svc.insert("name".into(), "wrap".into());
    let listen: Vec<toml::Value> = spec.listen.iter().map(|a| a.as_str().into()).collect();
    svc.insert("listen".into(), listen.into());
    let exec: Vec<toml::Value> = spec.exec.iter().map(|a| a.as_str().into()).collect();
    svc.insert("exec".into(), exec.into());
    // SPEC: accept is true unless --no-accept, even for a udp address
    // (which then needs --no-accept, as a file would need accept = false).
    svc.insert("accept".into(), spec.accept.into());
    if let Some(pass) = spec.pass {
        svc.insert("pass".into(), pass.into());
    }
    if let Some(version) = &spec.proxy_protocol {
        svc.insert("proxy_protocol".into(), version.as_str().into());
        let from: Vec<toml::Value> = spec.proxy_from.iter().map(|c| c.as_str().into()).collect();
        svc.insert("proxy_from".into(), from.into());
    }
    if let Some(to) = &spec.forward {
        svc.insert("forward".into(), to.as_str().into());
    }
    if let Some(idle) = &spec.idle_stop {
        svc.insert("idle_stop".into(), idle.as_str().into());
    }
    let mut root = toml::Table::new();
    root.insert("service".into(), toml::Value::Array(vec![svc.into()]));
    let text = toml::to_string(&root)
        .map_err(|e| ConfigErrors::one(Path::new(WRAP_LABEL), ErrorKind::Syntax(e.to_string())))?;
    match parse(Path::new(WRAP_LABEL), &text, host) {
        Ok(mut c) => {
            c.reloadable = false;
            Ok(c)
        }
        Err(ConfigErrors(errors)) => Err(ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    pos: None,
                    service: None,
                    ..e
                })
                .collect(),
        )),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonSpec {
    pub max_children: u32,
    #[serde(with = "raw_path::option")]
    pub control: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Glob patterns of drop-in files (`[[service]]` entries), relative
    /// ones against the main file's directory.
    pub include: Vec<String>,
    /// Where Prometheus scrapes `GET /metrics` (a TCP or unix stream address).
    pub metrics: Option<ListenAddr>,
}

impl Default for DaemonSpec {
    fn default() -> Self {
        DaemonSpec {
            max_children: DEFAULT_MAX_CHILDREN,
            control: None,
            log_format: LogFormat::Text,
            include: Vec::new(),
            metrics: None,
        }
    }
}

/// `[daemon] log_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogFormat {
    Text,
    Json,
}

/// A service summond answers itself, in the event loop, without a child
/// (`exec = ["internal:NAME"]`, RFC 862-868).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Internal {
    Echo,
    Discard,
    Chargen,
    Daytime,
    Time,
}

impl Internal {
    pub const ALL: &'static [(&'static str, Internal)] = &[
        ("echo", Internal::Echo),
        ("discard", Internal::Discard),
        ("chargen", Internal::Chargen),
        ("daytime", Internal::Daytime),
        ("time", Internal::Time),
    ];

    pub fn name(self) -> &'static str {
        Internal::ALL
            .iter()
            .find(|(_, i)| *i == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A resource limit a child gets (`rlimits`): soft and hard both set to
/// `value`, as systemd's `LimitX=` does; `None` is infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rlimit {
    pub resource: RlimitKind,
    pub value: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RlimitKind {
    Nofile,
    Nproc,
    As,
    Cpu,
    Core,
    Fsize,
    Data,
    Stack,
    Memlock,
}

impl RlimitKind {
    /// The names `rlimits` takes, with whether the value is a size (K/M/G
    /// suffixes) rather than a count or seconds.
    pub const ALL: &'static [(&'static str, RlimitKind, bool)] = &[
        ("nofile", RlimitKind::Nofile, false),
        ("nproc", RlimitKind::Nproc, false),
        ("as", RlimitKind::As, true),
        ("cpu", RlimitKind::Cpu, false),
        ("core", RlimitKind::Core, true),
        ("fsize", RlimitKind::Fsize, true),
        ("data", RlimitKind::Data, true),
        ("stack", RlimitKind::Stack, true),
        ("memlock", RlimitKind::Memlock, true),
    ];
}

/// What a child is confined to. Applied between fork and exec in this
/// order: rlimits, umask, nice, chroot, chdir, credentials, no_new_privs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    /// Inside `chroot` when both are set.
    #[serde(with = "raw_path")]
    pub working_directory: PathBuf,
    #[serde(with = "raw_path::option")]
    pub chroot: Option<PathBuf>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            working_directory: PathBuf::from("/"),
            chroot: None,
            umask: None,
            nice: None,
            rlimits: Vec::new(),
            no_new_privs: true,
        }
    }
}

/// How clients are grouped for `max_per_source` and `per_source_rate`:
/// by network prefix, so an IPv6 host that owns a /64 is one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourcePrefix {
    pub v4: u8,
    pub v6: u8,
}

impl Default for SourcePrefix {
    fn default() -> Self {
        SourcePrefix { v4: 32, v6: 64 }
    }
}

/// How the socket reaches the child (SPEC "The four ways").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pass {
    Stdio,
    ListenFds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StderrMode {
    Inherit,
    Socket,
    Null,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenSpec {
    pub addr: ListenAddr,
    /// The `LISTEN_FDNAMES` entry for `accept = false` services.
    pub name: Option<String>,
}

/// Who the child runs as, resolved when the config loads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// `None`: only `group` was given; the child keeps summond's uid.
    pub uid: Option<u32>,
    pub gid: u32,
    /// The full supplementary list, set with `setgroups` before `setgid`.
    pub groups: Vec<u32>,
}

/// `runtime_directory`: directories made for the service when it is set
/// up, owned by its user and group, with `mode`; left in place at stop.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeDirectory {
    /// Where the names are made: /run, or `$XDG_RUNTIME_DIR` when summond
    /// is not root (resolved when the config loads).
    #[serde(with = "raw_path")]
    pub base: PathBuf,
    /// Relative: `[A-Za-z0-9_.-]+` segments joined by `/`, none `.` or `..`.
    pub names: Vec<String>,
    pub mode: u32,
}

impl RuntimeDirectory {
    pub const DEFAULT_MODE: u32 = 0o755;

    pub fn paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.names.iter().map(|n| self.base.join(n))
    }
}

/// `instances` at most: a pool is a few processes per core, not a fork bomb.
pub const MAX_INSTANCES: u32 = 256;

/// One `[[service]]` as the file says it. Immutable and comparable, so a
/// reload can tell an unchanged service from a changed one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub listen: Vec<ListenSpec>,
    /// argv as written; `argv[0]` stays as the user wrote it.
    pub exec: Vec<String>,
    /// `exec[0]` resolved to an absolute path when the config loaded.
    #[serde(with = "raw_path")]
    pub program: PathBuf,
    pub accept: bool,
    pub pass: Pass,
    pub stderr: StderrMode,
    pub credentials: Option<Credentials>,
    pub env: Vec<(String, String)>,
    pub max_instances: Option<u32>,
    pub max_per_source: Option<u32>,
    pub access: AccessList,
    /// `proxy_protocol` with `proxy_from`: a PROXY header starts every
    /// connection (absent in the state an older image hands over).
    #[serde(default)]
    pub proxy: Option<ProxySpec>,
    /// How the listening sockets are made (mode, owner, backlog, options).
    pub socket: ListenOptions,
    /// `exec = ["internal:NAME"]`: served in the loop, no child.
    pub internal: Option<Internal>,
    /// The child gets only PATH, `passenv`, `env` and summond's variables.
    pub clear_env: bool,
    pub passenv: Vec<String>,
    pub sandbox: Sandbox,
    /// Accept mode: SIGTERM the child's group after this, SIGKILL 5 s later.
    pub max_runtime: Option<Duration>,
    /// `accept = false`: a child that has not sent READY=1 to its
    /// NOTIFY_SOCKET by then is stopped, a failed start.
    pub ready_timeout: Option<Duration>,
    /// `accept = false`: the children kept running, each with every
    /// listening socket (a pool); 1 without `instances`.
    pub instances: u32,
    /// `start = "eager"`: started with summond (and at a reload that adds
    /// it), not at the first client.
    pub eager: bool,
    /// An internal service's TCP client is closed after this long without
    /// a byte moved (SPEC: "its own timeout, default 5 minutes").
    pub idle_timeout: Duration,
    pub rate: Option<Rate>,
    pub per_source_rate: Option<Rate>,
    pub per_source_prefix: SourcePrefix,
    pub banner: Option<String>,
    pub banner_fail: Option<String>,
    /// Kept in the file, listening on nothing.
    pub disabled: bool,
    /// Absent in the state an older image hands over.
    #[serde(default)]
    pub runtime_directory: Option<RuntimeDirectory>,
    /// Forward mode: a backend started on demand, clients relayed to it.
    #[serde(default)]
    pub forward: Option<Forward>,
    /// `tls`: the handshake is summond's, the child gets the plaintext.
    #[serde(default)]
    pub tls: Option<Box<crate::tls::TlsSpec>>,
}

/// Forward mode (`forward` and its keys): `exec` is a backend that binds
/// `to` itself; summond starts it at the first client, waits until it is
/// ready, relays each client to its own connection to `to`, and stops it
/// after `idle_stop` without a relayed connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forward {
    /// Where the backend listens: tcp:// or unix://.
    pub to: ListenAddr,
    pub ready: Ready,
    /// Not ready by then: its waiting clients are closed, a failed start.
    pub start_timeout: Duration,
    /// No relayed connection for this long: the backend is stopped.
    pub idle_stop: Option<Duration>,
    /// SIGTERM to the backend's group, SIGKILL after this.
    pub stop_timeout: Duration,
    /// `forward_proxy_protocol`: a PROXY header sent to the backend
    /// first, with the client's address.
    #[serde(default)]
    pub proxy: Option<ProxyHeader>,
}

/// The PROXY header version forward mode sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProxyHeader {
    V1,
    V2,
}

/// How summond learns that a backend is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ready {
    /// When `forward` accepts a connection.
    Connect,
    /// When the backend (or a process of its group) sends `READY=1` to
    /// the `NOTIFY_SOCKET` summond gives it.
    Notify,
}

/// A service whose clients come through a load balancer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySpec {
    /// The headers taken.
    pub version: crate::proxy::Version,
    /// The peers that may send one; any other is refused unread.
    pub from: Vec<crate::access::Cidr>,
}

impl ProxySpec {
    /// May `peer` (the connection's own peer) send a header?
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.from.iter().any(|c| c.contains(peer))
    }
}

impl ServiceSpec {
    /// Summond itself takes what arrives on the sockets (accepts the
    /// connections, or answers as an internal service); otherwise it lends
    /// the sockets to a child.
    pub fn reads_itself(&self) -> bool {
        self.accept || self.internal.is_some()
    }

    /// The SPEC table's name for this start mode, for logs and status;
    /// what the service is where no child is started: `disabled` (it
    /// listens on nothing) or `internal` (summond answers itself).
    pub fn mode(&self) -> &'static str {
        if self.disabled {
            return "disabled";
        }
        if self.internal.is_some() {
            return "internal";
        }
        if self.forward.is_some() {
            return "forward";
        }
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
    /// Where `runtime_directory` names are made: /run for root, else
    /// `$XDG_RUNTIME_DIR` if it is set to an absolute path.
    pub runtime_base: Option<PathBuf>,
}

impl Host {
    pub fn current() -> Host {
        let is_root = nix::unistd::geteuid().is_root();
        Host {
            path_var: std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
            is_root,
            runtime_base: if is_root {
                Some(PathBuf::from("/run"))
            } else {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
            },
        }
    }
}

/// The most a config file or drop-in may hold: 10,000 services take
/// about 1 MB, and a drop-in that is a link to /dev/zero (or a huge file)
/// must be an error, not all of memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A config file's text, at most `MAX_FILE_BYTES` of it.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Read and validate the file at `path`.
pub fn load(path: &Path, host: &Host) -> Result<Config, ConfigErrors> {
    match read_text(path) {
        Ok(text) => parse(path, &text, host),
        Err(e) => Err(ConfigErrors::one(path, ErrorKind::Read(e))),
    }
}

/// Validate `text` as the contents of `path` (the path only labels errors).
pub fn parse(path: &Path, text: &str, host: &Host) -> Result<Config, ConfigErrors> {
    let mut seen = parse::Seen::default();
    let (mut config, mut errors) = parse::check(path, text, host, &mut seen, false);
    // Walk order is nearly file order; cross-service checks come last.
    errors.sort_by_key(|e| e.pos.unwrap_or((usize::MAX, usize::MAX)));
    for file in include::files(path, &config.daemon.include, &mut errors) {
        let text = match read_text(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::in_file(&file, ErrorKind::Read(e)));
                continue;
            }
        };
        let (dropin, mut file_errors) = parse::check(&file, &text, host, &mut seen, true);
        file_errors.sort_by_key(|e| e.pos.unwrap_or((usize::MAX, usize::MAX)));
        errors.extend(file_errors);
        config.services.extend(dropin.services);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Only `[daemon] control` from the file at `path`, for `summond status`:
/// it must work for a user who could not load the whole config (services
/// with `user` need root to validate).
pub fn control_socket(path: &Path) -> Result<Option<PathBuf>, ConfigErrors> {
    let text = read_text(path).map_err(|e| ConfigErrors::one(path, ErrorKind::Read(e)))?;
    let root = DeTable::parse(&text)
        .map_err(|e| ConfigErrors::one(path, ErrorKind::Syntax(e.message().trim().to_string())))?;
    let control = root
        .get_ref()
        .get("daemon")
        .and_then(|d| d.get_ref().as_table()?.get("control"))
        .and_then(|c| c.get_ref().as_str().map(|p| beside(path, p)));
    Ok(control)
}

/// `p` as the config file at `file` means it: relative paths are taken
/// from the file's directory (as `include` patterns are), so summond and
/// `summond status` find the same socket from any working directory. The
/// file's own directory, through any symlink to it: summond reads the
/// canonical path, so a link elsewhere must lead to the same socket.
fn beside(file: &Path, p: &str) -> PathBuf {
    if p.starts_with('/') {
        return PathBuf::from(p);
    }
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests;
