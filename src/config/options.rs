//! The service keys beyond the core: environment hygiene, the sandbox,
//! limits in time and rate, socket options, banners. Each is validated
//! here when the config loads (paths exist, names resolve, numbers are in
//! range) and checked against the service's shape: a key that can never
//! take effect for its addresses or mode is an error, not ignored.

use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::parse::{Checker, Table, Value};
use super::units;
use super::{ErrorKind, ListenSpec, Rlimit, RlimitKind, Sandbox, SourcePrefix};
use crate::addr::ListenAddr;
use crate::listener::ListenOptions;

/// A banner is written with one non-blocking send to a fresh connection;
/// a fresh socket's send buffer always has room for this much.
pub const MAX_BANNER: usize = 4096;

/// An internal service's idle TCP client is closed after this long
/// (`idle_timeout`'s default; SPEC: five minutes).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// What the checker already knows about the service.
struct Shape<'a> {
    listen: &'a [ListenSpec],
    accept: bool,
}

impl Shape<'_> {
    fn any(&self, f: impl Fn(&ListenAddr) -> bool) -> bool {
        self.listen.iter().any(|l| f(&l.addr))
    }
}

/// The values of the keys this file reads.
pub(super) struct Options {
    pub socket: ListenOptions,
    pub clear_env: bool,
    pub passenv: Vec<String>,
    pub sandbox: Sandbox,
    pub supplementary_groups: bool,
    pub max_runtime: Option<std::time::Duration>,
    pub idle_timeout: std::time::Duration,
    pub rate: Option<units::Rate>,
    pub per_source_rate: Option<units::Rate>,
    pub per_source_prefix: SourcePrefix,
    pub banner: Option<String>,
    pub banner_fail: Option<String>,
    pub disabled: bool,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Checker<'_> {
    pub(super) fn options(
        &mut self,
        t: &Table<'_, '_>,
        listen: &[ListenSpec],
        accept: bool,
        internal: bool,
    ) -> Options {
        let shape = &Shape { listen, accept };
        let clear_env = self.flag(t, "clear_env", false);
        let passenv = self.passenv(t, clear_env);
        let sandbox = self.sandbox(t);
        let supplementary_groups = self.flag(t, "supplementary_groups", true);
        let disabled = self.flag(t, "disabled", false);
        let socket = self.socket_options(t, shape);

        let max_runtime = self.parsed(t, "max_runtime", units::duration);
        let idle_timeout = self.parsed(t, "idle_timeout", units::duration);
        let rate = self.parsed(t, "rate", units::rate);
        let per_source_rate = self.parsed(t, "per_source_rate", units::rate);
        let per_source_prefix = t
            .field("per_source_prefix")
            .and_then(|v| self.prefix(v))
            .unwrap_or_default();
        let banner = self.banner(t, "banner");
        let banner_fail = self.banner(t, "banner_fail");

        if !shape.accept {
            let keys: &[&'static str] = if internal {
                // summond sees each datagram of an internal service
                &["max_runtime", "banner", "banner_fail"]
            } else {
                &[
                    "max_runtime",
                    "per_source_rate",
                    "per_source_prefix",
                    "banner",
                    "banner_fail",
                ]
            };
            for &key in keys {
                if let Some(v) = t.field(key) {
                    self.at(v.span(), ErrorKind::NeedsAccept { key });
                }
            }
        }
        if internal {
            for key in ["banner", "banner_fail", "max_runtime"] {
                if let (Some(v), true) = (t.field(key), shape.accept) {
                    self.at(
                        v.span(),
                        invalid(
                            key,
                            "has no use with an internal service (no child, a fixed protocol)",
                        ),
                    );
                }
            }
        }
        if let Some(v) = t.field("idle_timeout") {
            // Only summond's own TCP clients idle in summond.
            let reason = if !internal {
                Some("applies to internal services only (a child keeps its own connection)")
            } else if !shape.any(ListenAddr::is_stream) {
                Some("has no use without a TCP address (a datagram is answered at once)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.at(v.span(), invalid("idle_timeout", reason));
            }
        }
        Options {
            socket,
            clear_env,
            passenv,
            sandbox,
            supplementary_groups,
            max_runtime,
            idle_timeout: idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            rate,
            per_source_rate,
            per_source_prefix,
            banner,
            banner_fail,
            disabled,
        }
    }

    /// A boolean key, `default` when absent (a wrong type is reported).
    fn flag(&mut self, t: &Table<'_, '_>, key: &'static str, default: bool) -> bool {
        t.field(key)
            .and_then(|v| self.boolean(key, v))
            .unwrap_or(default)
    }

    /// A string key read by `parse`, its error reported at the value.
    fn parsed<T>(
        &mut self,
        t: &Table<'_, '_>,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = t.field(key)?;
        let s = self.string(key, v)?;
        match parse(s) {
            Ok(x) => Some(x),
            Err(reason) => {
                self.at(v.span(), invalid(key, reason));
                None
            }
        }
    }

    fn passenv(&mut self, t: &Table<'_, '_>, clear_env: bool) -> Vec<String> {
        let Some(v) = t.field("passenv") else {
            return Vec::new();
        };
        if !clear_env {
            self.at(
                v.span(),
                invalid(
                    "passenv",
                    "has effect only with clear_env = true (otherwise the child \
                     inherits summond's whole environment)",
                ),
            );
        }
        let mut out = Vec::new();
        for (name, span) in self.string_list("passenv", v).unwrap_or_default() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.at(
                    span,
                    invalid(
                        "passenv",
                        format!("\"{name}\" is not an environment variable name"),
                    ),
                );
            } else if crate::env::is_reserved_env(name) {
                self.at(
                    span,
                    ErrorKind::ReservedEnv {
                        key: "passenv",
                        name: name.to_string(),
                    },
                );
            } else {
                out.push(name.to_string());
            }
        }
        out
    }

    /// An existing directory: absolute, under `root` if given; or, with
    /// `relative_ok` and no root, relative to the config file's directory
    /// (so a config kept beside its programs works from anywhere).
    fn directory(
        &mut self,
        key: &'static str,
        v: &Value<'_>,
        root: Option<&Path>,
        relative_ok: bool,
    ) -> Option<PathBuf> {
        let s = self.string(key, v)?;
        let on_disk = match root {
            _ if !s.starts_with('/') && (!relative_ok || root.is_some()) => {
                let why = if root.is_some() {
                    "must be an absolute path inside `chroot`"
                } else {
                    "must be an absolute path"
                };
                self.at(v.span(), invalid(key, format!("\"{s}\" {why}")));
                return None;
            }
            Some(r) => r.join(s.trim_start_matches('/')),
            None if s.starts_with('/') => PathBuf::from(s),
            None => {
                let dir = match self.path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                std::fs::canonicalize(&dir).unwrap_or(dir).join(s)
            }
        };
        let reason = match std::fs::metadata(&on_disk) {
            Ok(m) if m.is_dir() => {
                return Some(if root.is_some() {
                    PathBuf::from(s)
                } else {
                    on_disk
                })
            }
            Ok(_) => "is not a directory",
            Err(_) => "does not exist",
        };
        let shown = on_disk.display();
        self.at(v.span(), invalid(key, format!("{shown} {reason}")));
        None
    }

    fn sandbox(&mut self, t: &Table<'_, '_>) -> Sandbox {
        let mut sb = Sandbox::default();
        if let Some(v) = t.field("chroot") {
            if !self.host.is_root {
                self.at(v.span(), ErrorKind::NotRoot { key: "chroot" });
            } else {
                sb.chroot = self.directory("chroot", v, None, false);
            }
        }
        if let Some(v) = t.field("working_directory") {
            let root = sb.chroot.clone();
            if let Some(dir) = self.directory("working_directory", v, root.as_deref(), true) {
                sb.working_directory = dir;
            }
        }
        sb.umask = self.parsed(t, "umask", |s| {
            units::octal(s, 0o777).ok_or(format!("\"{s}\" is not an octal mask like \"0022\""))
        });
        sb.nice = t.field("nice").and_then(|v| {
            let n = self.integer("nice", v)?;
            if (-20..=19).contains(&n) {
                Some(n as i32)
            } else {
                self.at(v.span(), invalid("nice", format!("{n} is outside -20..19")));
                None
            }
        });
        if let Some(v) = t.field("rlimits") {
            sb.rlimits = self.rlimits(v);
        }
        if let Some(v) = t.field("no_new_privs") {
            if let Some(b) = self.boolean("no_new_privs", v) {
                sb.no_new_privs = b;
            }
        }
        sb
    }

    fn integer(&mut self, key: &'static str, v: &Value<'_>) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(key, v, "an integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.at(v.span(), invalid(key, "is out of range"));
                None
            }
        }
    }

    fn rlimits(&mut self, v: &Value<'_>) -> Vec<Rlimit> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(
                "rlimits",
                v,
                "a table like { nofile = 1024, as = \"512M\" }",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in t.iter() {
            let name = key.get_ref().as_ref();
            let Some((_, resource, is_size)) =
                RlimitKind::ALL.iter().find(|(n, _, _)| *n == name).copied()
            else {
                let names: Vec<&str> = RlimitKind::ALL.iter().map(|(n, _, _)| *n).collect();
                self.at(
                    key.span(),
                    invalid(
                        "rlimits",
                        format!(
                            "unknown limit \"{name}\" (expected one of: {})",
                            names.join(", ")
                        ),
                    ),
                );
                continue;
            };
            let parsed = match value.get_ref() {
                DeValue::Integer(_) => self.integer("rlimits", value).and_then(|n| {
                    if n < 0 {
                        self.at(
                            value.span(),
                            invalid("rlimits", format!("{name} = {n} is negative")),
                        );
                        None
                    } else {
                        Some((Some(n as u64), None))
                    }
                }),
                DeValue::String(s) => {
                    let s: &str = s.as_ref();
                    let result = if is_size {
                        units::size(s)
                    } else if s == "infinity" || s == "unlimited" {
                        Ok(None)
                    } else {
                        Err(format!("\"{s}\" is not a number or \"infinity\""))
                    };
                    match result {
                        Ok(x) => Some((x, Some(s))),
                        Err(reason) => {
                            self.at(
                                value.span(),
                                invalid("rlimits", format!("{name}: {reason}")),
                            );
                            None
                        }
                    }
                }
                _ => {
                    self.wrong_type(name, value, "an integer or a string");
                    None
                }
            };
            if let Some((limit, text)) = parsed {
                let ceilings = *self
                    .rlimit_ceilings
                    .get_or_insert_with(|| RlimitCeilings::current(self.host.is_root));
                let (ceiling, why) = ceilings.of(resource);
                let value = match (limit, ceiling) {
                    // "infinity" is the most the kernel lets a child have,
                    // as systemd's LimitNOFILE=infinity is fs.nr_open.
                    (None, Some(max)) => Some(max),
                    (Some(n), Some(max)) if n > max => {
                        // As written, with the bytes a suffix makes: the
                        // bound is in bytes.
                        let written = match text {
                            Some(s) if s.parse::<u64>().is_err() => format!("\"{s}\" ({n} bytes)"),
                            Some(s) => format!("\"{s}\""),
                            None => n.to_string(),
                        };
                        self.at(
                            value.span(),
                            invalid(
                                "rlimits",
                                format!(
                                    "{name} = {written} is more than the kernel allows ({why})"
                                ),
                            ),
                        );
                        continue;
                    }
                    (v, _) => v,
                };
                out.push(Rlimit { resource, value });
            }
        }
        out
    }

    fn prefix(&mut self, v: &Value<'_>) -> Option<SourcePrefix> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type("per_source_prefix", v, "a table like { v4 = 32, v6 = 64 }");
            return None;
        };
        self.check_keys(t, "`per_source_prefix`", &["v4", "v6"]);
        let mut p = SourcePrefix::default();
        for (family, max) in [("v4", 32i64), ("v6", 128)] {
            let Some(n) = t.get(family) else { continue };
            let Some(bits) = self.integer("per_source_prefix", n) else {
                continue;
            };
            if !(1..=max).contains(&bits) {
                self.at(
                    n.span(),
                    invalid(
                        "per_source_prefix",
                        format!("{family} = {bits}: an IP{family} prefix is 1 to {max} bits"),
                    ),
                );
                continue;
            }
            if family == "v4" {
                p.v4 = bits as u8;
            } else {
                p.v6 = bits as u8;
            }
        }
        Some(p)
    }

    fn banner(&mut self, t: &Table<'_, '_>, key: &'static str) -> Option<String> {
        let v = t.field(key)?;
        let s = self.string(key, v)?;
        if s.len() > MAX_BANNER {
            self.at(
                v.span(),
                invalid(key, format!("is {} bytes; at most {MAX_BANNER}", s.len())),
            );
            return None;
        }
        Some(s.to_string())
    }

    fn socket_options(&mut self, t: &Table<'_, '_>, shape: &Shape<'_>) -> ListenOptions {
        let mut o = ListenOptions::default();
        // (key, applies, what it needs)
        let needs: [(&'static str, bool, &str); 10] = [
            (
                "socket_directory_mode",
                shape.any(|a| a.socket_file().is_some()),
                "unix socket files",
            ),
            (
                "socket_mode",
                shape.any(|a| a.socket_file().is_some()),
                "unix socket files",
            ),
            (
                "socket_user",
                shape.any(|a| a.socket_file().is_some()),
                "unix socket files",
            ),
            (
                "socket_group",
                shape.any(|a| a.socket_file().is_some()),
                "unix socket files",
            ),
            (
                "backlog",
                shape.any(ListenAddr::is_stream),
                "stream sockets",
            ),
            ("v6only", shape.any(is_ipv6), "IPv6 addresses"),
            ("reuse_port", shape.any(is_ip), "TCP and UDP addresses"),
            ("freebind", shape.any(is_ip), "TCP and UDP addresses"),
            ("keepalive", shape.any(is_tcp), "TCP addresses"),
            ("nodelay", shape.any(is_tcp), "TCP addresses"),
        ];
        for (key, applies, what) in needs {
            if let (Some(v), false) = (t.field(key), applies) {
                self.at(
                    v.span(),
                    invalid(
                        key,
                        format!("applies to {what}, and this service listens on none"),
                    ),
                );
            }
        }
        o.socket_mode = self.parsed(t, "socket_mode", |s| {
            units::octal(s, 0o7777)
                .ok_or(format!("\"{s}\" is not an octal file mode like \"0660\""))
        });
        o.directory_mode = self.parsed(t, "socket_directory_mode", |s| {
            units::octal(s, 0o7777).ok_or(format!(
                "\"{s}\" is not an octal directory mode like \"0755\""
            ))
        });
        o.owner = t
            .field("socket_user")
            .and_then(|v| self.socket_owner("socket_user", v));
        o.group = t
            .field("socket_group")
            .and_then(|v| self.socket_owner("socket_group", v));
        o.backlog = t.field("backlog").and_then(|v| {
            let n = self.positive("backlog", v)?;
            i32::try_from(n).ok().or_else(|| {
                self.at(
                    v.span(),
                    invalid("backlog", format!("must be at most {}", i32::MAX)),
                );
                None
            })
        });
        o.v6only = self.flag(t, "v6only", true);
        o.reuse_port = self.flag(t, "reuse_port", false);
        o.freebind = self.flag(t, "freebind", false);
        o.keepalive = self.flag(t, "keepalive", false);
        o.nodelay = self.flag(t, "nodelay", false);
        o
    }

    /// `socket_user` / `socket_group`: a name resolved now; chown to
    /// another user needs root.
    fn socket_owner(&mut self, key: &'static str, v: &Value<'_>) -> Option<u32> {
        let name = self.string(key, v)?;
        if !self.host.is_root {
            self.at(v.span(), ErrorKind::NotRoot { key });
            return None;
        }
        let id = if key == "socket_user" {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        } else {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        };
        if id.is_none() {
            let what = if key == "socket_user" {
                "user"
            } else {
                "group"
            };
            self.at(v.span(), invalid(key, format!("no such {what} \"{name}\"")));
        }
        id
    }
}

fn is_ip(a: &ListenAddr) -> bool {
    matches!(a, ListenAddr::Tcp(_) | ListenAddr::Udp(_))
}

fn is_tcp(a: &ListenAddr) -> bool {
    matches!(a, ListenAddr::Tcp(_))
}

fn is_ipv6(a: &ListenAddr) -> bool {
    matches!(a, ListenAddr::Tcp(s) | ListenAddr::Udp(s) if s.is_ipv6())
}

/// How high a child's limits can go: what setrlimit(2) in the child will
/// accept, known when the config loads, so --check and a reload catch a
/// value every child would fail on (EPERM). A process may raise a hard
/// limit only with CAP_SYS_RESOURCE, and never RLIMIT_NOFILE above
/// fs.nr_open.
#[derive(Clone, Copy, Debug)]
pub(super) struct RlimitCeilings {
    /// summond may raise hard limits (root with CAP_SYS_RESOURCE).
    may_raise: bool,
    nr_open: Option<u64>,
}

/// The most of the `rlimits` entry `name` a child can get here, and what
/// sets it: what --check lets through (None: nothing bounds it, or no
/// such name). For the importer, which writes no limit --check refuses.
pub fn rlimit_ceiling(name: &str) -> Option<(u64, String)> {
    let kind = RlimitKind::ALL.iter().find(|(n, ..)| *n == name)?.1;
    let (max, why) = RlimitCeilings::current(nix::unistd::geteuid().is_root()).of(kind);
    Some((max?, why))
}

/// CAP_SYS_RESOURCE's bit in the capability sets (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

impl RlimitCeilings {
    pub(super) fn current(is_root: bool) -> RlimitCeilings {
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            });
        RlimitCeilings {
            // Where /proc cannot tell, root is assumed to hold it.
            may_raise: is_root && cap_eff.is_none_or(|c| c & (1 << CAP_SYS_RESOURCE) != 0),
            nr_open: std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }

    /// The highest value of `kind` a child can get (None: no bound) and
    /// what sets it.
    fn of(self, kind: RlimitKind) -> (Option<u64>, String) {
        use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
        let resource = match kind {
            RlimitKind::Nofile => Resource::RLIMIT_NOFILE,
            RlimitKind::Nproc => Resource::RLIMIT_NPROC,
            RlimitKind::As => Resource::RLIMIT_AS,
            RlimitKind::Cpu => Resource::RLIMIT_CPU,
            RlimitKind::Core => Resource::RLIMIT_CORE,
            RlimitKind::Fsize => Resource::RLIMIT_FSIZE,
            RlimitKind::Data => Resource::RLIMIT_DATA,
            RlimitKind::Stack => Resource::RLIMIT_STACK,
            RlimitKind::Memlock => Resource::RLIMIT_MEMLOCK,
        };
        let nr_open = match (kind, self.nr_open) {
            (RlimitKind::Nofile, Some(n)) => Some(n),
            _ => None,
        };
        let hard = match getrlimit(resource) {
            Ok((_, hard)) if hard != RLIM_INFINITY && !self.may_raise => Some(hard),
            _ => None,
        };
        match (hard, nr_open) {
            (Some(h), Some(n)) if n < h => (Some(n), format!("fs.nr_open is {n}")),
            (Some(h), _) => (
                Some(h),
                format!("summond's hard limit is {h}, and raising it needs CAP_SYS_RESOURCE"),
            ),
            (None, Some(n)) => (Some(n), format!("fs.nr_open is {n}")),
            (None, None) => (None, String::new()),
        }
    }
}
