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
//! The folder: `mod.rs` the validated model and the entry points; `keys.rs`
//! the key tables the checker (and the fuzzer) share; `error.rs` the error
//! types; `parse.rs` the TOML walk that collects every error with its span.

mod error;
mod keys;
mod parse;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use crate::access::AccessList;
use crate::addr::ListenAddr;

pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use keys::{DAEMON_KEYS, LISTEN_TABLE_KEYS, SERVICE_KEYS, TOP_KEYS};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/summond/summond.toml";
pub const DEFAULT_MAX_CHILDREN: u32 = 1024;
/// Used when summond's own environment has no PATH, as execvp does.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

/// Read and validate the file at `path`.
pub fn load(path: &Path, host: &Host) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, host),
        Err(e) => Err(ConfigErrors::one(path, ErrorKind::Read(e))),
    }
}

/// Validate `text` as the contents of `path` (the path only labels errors).
pub fn parse(path: &Path, text: &str, host: &Host) -> Result<Config, ConfigErrors> {
    let (config, mut errors) = parse::check(path, text, host);
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

#[cfg(test)]
mod tests;
