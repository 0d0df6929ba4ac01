//! The readers of the service keys beyond the core: environment hygiene,
//! the sandbox, socket options, rlimits, per-source prefixes, banners
//! (handlers in service.rs's table, or what they call). Each is validated
//! here when the config loads (paths exist, names resolve, numbers are in
//! range); a socket key that can never take effect for the service's
//! addresses is an error, not ignored (the checks against its mode, accept
//! or internal, are service.rs's).

use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::ceilings::RlimitCeilings;
use super::draft::Draft;
use super::parse::{Checker, Value};
use super::units;
use super::{ErrorKind, Rlimit, RlimitKind, SourcePrefix};
use crate::addr::ListenAddr;
use crate::listener::ListenOptions;

/// A banner is written with one non-blocking send to a fresh connection;
/// a fresh socket's send buffer always has room for this much.
pub const MAX_BANNER: usize = 4096;

type AddrTest = fn(&ListenAddr) -> bool;

/// What each socket key needs among the service's addresses to take
/// effect, named for the message: a key none of them can take is an error.
const SOCKET_KEY_NEEDS: &[(&str, AddrTest, &str)] = &[
    (
        "socket_directory_mode",
        has_socket_file,
        "unix socket files",
    ),
    ("socket_mode", has_socket_file, "unix socket files"),
    ("socket_user", has_socket_file, "unix socket files"),
    ("socket_group", has_socket_file, "unix socket files"),
    ("backlog", ListenAddr::is_stream, "stream sockets"),
    ("v6only", is_ipv6, "IPv6 addresses"),
    ("reuse_port", is_ip, "TCP and UDP addresses"),
    ("freebind", is_ip, "TCP and UDP addresses"),
    ("keepalive", is_tcp, "TCP addresses"),
    ("nodelay", is_tcp, "TCP addresses"),
];

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        key,
        reason: reason.into(),
    }
}

/// A socket key the service's addresses cannot take is an error (told
/// before anything about its value).
fn check_socket_key(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &Draft<'_>) {
    let Some(&(_, applies, what)) = SOCKET_KEY_NEEDS.iter().find(|(k, _, _)| *k == key) else {
        return;
    };
    if !d.listen.iter().any(|l| applies(&l.addr)) {
        let reason = format!("applies to {what}, and this service listens on none");
        cx.at(v.span(), invalid(key, reason));
    }
}

/// `socket_mode`: the unix socket files' mode; `socket_directory_mode`:
/// the mode of the missing parents of a socket file, which are made.
pub(super) fn socket_modes(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &Value<'_>,
    d: &mut Draft<'_>,
) {
    check_socket_key(cx, key, v, d);
    let (field, example) = match key {
        "socket_mode" => (&mut d.socket.socket_mode, "file mode like \"0660\""),
        _ => (&mut d.socket.directory_mode, "directory mode like \"0755\""),
    };
    *field = cx.parsed(key, v, |s| {
        units::octal(s, 0o7777).ok_or(format!("\"{s}\" is not an octal {example}"))
    });
}

/// `socket_user` and `socket_group`: the socket files' owner.
pub(super) fn socket_owner(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &Value<'_>,
    d: &mut Draft<'_>,
) {
    check_socket_key(cx, key, v, d);
    let id = cx.owner_id(key, v);
    if key == "socket_user" {
        d.socket.owner = id;
    } else {
        d.socket.group = id;
    }
}

/// `backlog`: a positive integer that listen(2) takes as an int.
pub(super) fn backlog(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    check_socket_key(cx, key, v, d);
    d.socket.backlog = cx.positive(key, v).and_then(|n| {
        i32::try_from(n).ok().or_else(|| {
            cx.at(
                v.span(),
                invalid(key, format!("must be at most {}", i32::MAX)),
            );
            None
        })
    });
}

/// A boolean socket option (`field` of the listen options), its default
/// kept after a wrong type.
pub(super) fn socket_flag(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &Value<'_>,
    d: &mut Draft<'_>,
    field: fn(&mut ListenOptions) -> &mut bool,
) {
    check_socket_key(cx, key, v, d);
    if let Some(b) = cx.boolean(key, v) {
        *field(&mut d.socket) = b;
    }
}

/// `passenv`: variable names, of use only with `clear_env` (read before).
pub(super) fn passenv(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    if !d.clear_env {
        cx.at(
            v.span(),
            invalid(
                key,
                "has effect only with clear_env = true (otherwise the child \
                 inherits summond's whole environment)",
            ),
        );
    }
    for (name, span) in cx.string_list(key, v).unwrap_or_default() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            cx.at(
                span,
                invalid(
                    key,
                    format!("\"{name}\" is not an environment variable name"),
                ),
            );
        } else if crate::env::is_reserved_env(name) {
            let name = name.to_string();
            cx.at(span, ErrorKind::ReservedEnv { key, name });
        } else {
            d.passenv.push(name.to_string());
        }
    }
}

/// `chroot`: an existing absolute directory; chroot(2) needs root.
pub(super) fn chroot(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    if !cx.host.is_root {
        cx.at(v.span(), ErrorKind::NotRoot { key });
    } else {
        d.sandbox.chroot = cx.directory(key, v, None, false);
    }
}

pub(super) fn umask(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    d.sandbox.umask = cx.parsed(key, v, |s| {
        units::octal(s, 0o777).ok_or(format!("\"{s}\" is not an octal mask like \"0022\""))
    });
}

pub(super) fn nice(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    let Some(n) = cx.integer(key, v) else { return };
    if (-20..=19).contains(&n) {
        d.sandbox.nice = Some(n as i32);
    } else {
        cx.at(v.span(), invalid(key, format!("{n} is outside -20..19")));
    }
}

impl Checker<'_> {
    /// A string value read by `parse`, its error reported at the value.
    pub(super) fn parsed<T>(
        &mut self,
        key: &'static str,
        v: &Value<'_>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(key, v)?;
        match parse(s) {
            Ok(x) => Some(x),
            Err(reason) => {
                self.at(v.span(), invalid(key, reason));
                None
            }
        }
    }

    /// An existing directory: absolute, under `root` if given; or, with
    /// `relative_ok` and no root, relative to the config file's directory
    /// (so a config kept beside its programs works from anywhere).
    pub(super) fn directory(
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

    /// `rlimits`: each limit named, its value read, and held under what
    /// the kernel lets a child have.
    pub(super) fn rlimits(&mut self, v: &Value<'_>) -> Vec<Rlimit> {
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
            let Some((limit, text)) = self.rlimit_value(name, is_size, value) else {
                continue;
            };
            if let Some(value) = self.rlimit_under_ceiling(name, resource, limit, text, value) {
                out.push(Rlimit { resource, value });
            }
        }
        out
    }

    /// One limit's value: a number (None for infinity) and, when written as
    /// a string, the string.
    fn rlimit_value<'v>(
        &mut self,
        name: &str,
        is_size: bool,
        value: &'v Value<'_>,
    ) -> Option<(Option<u64>, Option<&'v str>)> {
        match value.get_ref() {
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
        }
    }

    /// `limit` (None: infinity) as the child gets it, held under the
    /// ceiling: Some(value to set), or None when it is above the ceiling
    /// (an error at `value`).
    fn rlimit_under_ceiling(
        &mut self,
        name: &str,
        resource: RlimitKind,
        limit: Option<u64>,
        text: Option<&str>,
        value: &Value<'_>,
    ) -> Option<Option<u64>> {
        let ceilings = *self
            .rlimit_ceilings
            .get_or_insert_with(|| RlimitCeilings::current(self.host.is_root));
        let (ceiling, why) = ceilings.of(resource);
        match (limit, ceiling) {
            // "infinity" is the most the kernel lets a child have,
            // as systemd's LimitNOFILE=infinity is fs.nr_open.
            (None, Some(max)) => Some(Some(max)),
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
                        format!("{name} = {written} is more than the kernel allows ({why})"),
                    ),
                );
                None
            }
            (v, _) => Some(v),
        }
    }

    pub(super) fn prefix(&mut self, v: &Value<'_>) -> Option<SourcePrefix> {
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

    pub(super) fn banner(&mut self, key: &'static str, v: &Value<'_>) -> Option<String> {
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

    /// `socket_user` / `socket_group`: a name resolved now; chown to
    /// another user needs root.
    fn owner_id(&mut self, key: &'static str, v: &Value<'_>) -> Option<u32> {
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

fn has_socket_file(a: &ListenAddr) -> bool {
    a.socket_file().is_some()
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
