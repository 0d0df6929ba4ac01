//! One `[[service]]` table → a `ServiceSpec`, read the way ripgrep reads
//! its flags: each key has one handler in `HANDLERS` (the names and order
//! of `keys::SERVICE_KEYS`, which a test holds together) that reads the
//! key's value into a `Draft` and reports what is wrong with that value.
//! Then named steps check the keys against each other (what is required,
//! what a service that does not accept, or an internal one, can never
//! use) and build the spec.
//!
//! The handlers run in the table's order, so a key may use what one before
//! it read: `accept`, `allow`, `deny` and the socket keys look at
//! `listen`, `stderr` at `pass`, `passenv` at `clear_env`.
//! `working_directory` needs `chroot`, which comes after it, so it is
//! checked in a step after the handlers.

use std::collections::hash_map::Entry;
use std::ops::Range;
use std::path::PathBuf;

use super::draft::Draft;
use super::error::ErrorKind;
use super::forward;
use super::keys::{REQUIRED_SERVICE_KEYS, SERVICE_KEYS};
use super::options;
use super::parse::{Checker, Seen, Table, Value};
use super::runtime_dir;
use super::units;
use super::{Credentials, Internal, Pass, ServiceSpec, StderrMode, MAX_INSTANCES};
use crate::access::Cidr;

/// Reads one key's value (the key is given, for its messages) into the
/// draft, reporting every mistake in the value with its span.
pub(super) type Handler = for<'v> fn(&mut Checker<'_>, &'static str, &'v Value<'v>, &mut Draft<'v>);

/// Every `[[service]]` key and its handler, in `SERVICE_KEYS` order.
const HANDLERS: &[(&str, Handler)] = &[
    ("name", name),
    ("listen", |cx, _, v, d| {
        d.listen = cx.listen(v, &d.label, d.seen)
    }),
    ("exec", |cx, _, v, d| d.exec = cx.exec(v, d.jail.as_deref())),
    ("accept", accept),
    ("pass", |cx, k, v, d| {
        let passes = &[("stdio", Pass::Stdio), ("listen_fds", Pass::ListenFds)];
        d.pass = cx.choice(k, v, passes).unwrap_or(Pass::Stdio);
    }),
    ("stderr", stderr),
    ("user", |cx, k, v, d| d.user = Some((v, cx.string(k, v)))),
    ("group", |cx, k, v, d| d.group = Some((v, cx.string(k, v)))),
    ("env", |cx, _, v, d| d.env = cx.env(v)),
    ("max_instances", |cx, k, v, d| {
        d.max_instances = cx.positive(k, v)
    }),
    ("max_per_source", |cx, k, v, d| {
        d.max_per_source = cx.positive(k, v)
    }),
    ("allow", access),
    ("deny", access),
    ("proxy_protocol", |cx, k, v, d| {
        use crate::proxy::Version;
        let versions = &[
            ("v1", Version::V1),
            ("v2", Version::V2),
            ("any", Version::Any),
        ];
        d.proxy_protocol = cx.choice(k, v, versions);
        // Its clients speak first: accepted once the header is in, it
        // is read at accept, with no wait in the loop.
        d.socket.defer_accept = Some(crate::proxy::DEFER_SECS);
    }),
    ("proxy_from", |cx, k, v, d| {
        let mut blocks = Vec::new();
        for (text, item_span) in cx.string_list(k, v).unwrap_or_default() {
            match text.parse::<Cidr>() {
                Ok(c) => {
                    if c.is_wide() {
                        cx.at(item_span, wide_proxy_from(k, text));
                    }
                    blocks.push(c);
                }
                Err(_) if text == "any" => blocks.extend(Cidr::ANY),
                Err(err) => cx.at(item_span, ErrorKind::Cidr { key: k, err }),
            }
        }
        d.proxy_from = Some(blocks);
    }),
    ("socket_mode", options::socket_modes),
    ("socket_user", options::socket_owner),
    ("socket_group", options::socket_owner),
    ("socket_directory_mode", options::socket_modes),
    ("clear_env", |cx, k, v, d| {
        set_flag(cx, k, v, &mut d.clear_env)
    }),
    ("passenv", options::passenv),
    ("working_directory", |_, _, v, d| {
        d.working_directory = Some(v)
    }),
    ("chroot", options::chroot),
    ("umask", options::umask),
    ("nice", options::nice),
    ("rlimits", |cx, _, v, d| d.sandbox.rlimits = cx.rlimits(v)),
    ("no_new_privs", |cx, k, v, d| {
        set_flag(cx, k, v, &mut d.sandbox.no_new_privs)
    }),
    ("supplementary_groups", |cx, k, v, d| {
        set_flag(cx, k, v, &mut d.supplementary_groups)
    }),
    ("extra_groups", |cx, _, v, d| {
        d.extra_groups = cx.extra_groups(v)
    }),
    ("runtime_directory", runtime_dir::names),
    ("runtime_directory_mode", runtime_dir::mode),
    ("max_runtime", |cx, k, v, d| {
        d.max_runtime = cx.parsed(k, v, units::duration)
    }),
    ("instances", |cx, k, v, d| {
        // 0 and a huge count are one mistake: a pool's size out of range.
        let n = match v.get_ref() {
            toml::de::DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => return d.instances = cx.positive(k, v),
        };
        match n {
            Some(n) if (1..=i64::from(MAX_INSTANCES)).contains(&n) => d.instances = Some(n as u32),
            _ => {
                let why = format!("must be from 1 to {MAX_INSTANCES}");
                cx.at(v.span(), options::invalid(k, why));
            }
        }
    }),
    ("start", |cx, k, v, d| {
        d.eager = cx.choice(k, v, &[("demand", false), ("eager", true)])
    }),
    ("ready_timeout", |cx, k, v, d| {
        d.ready_timeout = cx.parsed(k, v, units::duration)
    }),
    ("idle_timeout", |cx, k, v, d| {
        d.idle_timeout = cx.parsed(k, v, units::duration)
    }),
    ("rate", |cx, k, v, d| d.rate = cx.parsed(k, v, units::rate)),
    ("per_source_rate", |cx, k, v, d| {
        d.per_source_rate = cx.parsed(k, v, units::rate)
    }),
    ("per_source_prefix", |cx, _, v, d| {
        d.per_source_prefix = cx.prefix(v).unwrap_or_default()
    }),
    ("banner", |cx, k, v, d| d.banner = cx.banner(k, v)),
    ("banner_fail", |cx, k, v, d| d.banner_fail = cx.banner(k, v)),
    ("backlog", options::backlog),
    ("v6only", |cx, k, v, d| {
        options::socket_flag(cx, k, v, d, |o| &mut o.v6only)
    }),
    ("reuse_port", |cx, k, v, d| {
        options::socket_flag(cx, k, v, d, |o| &mut o.reuse_port)
    }),
    ("keepalive", |cx, k, v, d| {
        options::socket_flag(cx, k, v, d, |o| &mut o.keepalive)
    }),
    ("nodelay", |cx, k, v, d| {
        options::socket_flag(cx, k, v, d, |o| &mut o.nodelay)
    }),
    ("freebind", |cx, k, v, d| {
        options::socket_flag(cx, k, v, d, |o| &mut o.freebind)
    }),
    ("disabled", |cx, k, v, d| {
        set_flag(cx, k, v, &mut d.disabled)
    }),
    ("forward", forward::to),
    ("ready", forward::ready),
    ("start_timeout", forward::start_timeout),
    ("idle_stop", forward::idle_stop),
    ("stop_timeout", forward::stop_timeout),
    ("forward_proxy_protocol", forward::proxy),
    ("tls", super::tls::tls),
];

/// Keys that act on the clients summond accepts or sees: with
/// `accept = false` (and not internal) a child accepts, hidden from
/// summond, so they could never take effect.
const NEEDS_ACCEPT: &[&str] = &[
    "allow",
    "deny",
    "max_per_source",
    "max_runtime",
    "per_source_rate",
    "per_source_prefix",
    "banner",
    "banner_fail",
    "proxy_protocol",
    "proxy_from",
    "tls",
];

impl Checker<'_> {
    /// A `[[service]]` table (at `span`) read key by key, then checked as a
    /// whole; None when anything in it was wrong.
    pub(super) fn service(
        &mut self,
        table: &toml::de::DeTable<'_>,
        span: Range<usize>,
        seen: &mut Seen,
    ) -> Option<ServiceSpec> {
        let errors_before = self.errors.len();
        self.check_keys(table, "[[service]]", SERVICE_KEYS);
        let t = &Table::new(table);
        // `chroot` as written (its handler checks it), for `exec`.
        let jail = t
            .field("chroot")
            .and_then(|v| v.get_ref().as_str())
            .filter(|s| s.starts_with('/'))
            .map(PathBuf::from);
        let mut d = Draft::new(seen, jail);
        for &(key, read) in HANDLERS {
            if let Some(v) = t.field(key) {
                read(self, key, v, &mut d);
            }
        }
        self.report_missing(t, span);
        self.check_runtime_directory_mode(t);
        self.check_working_directory(&mut d);
        self.check_against_mode(t, &d);
        self.check_proxy(t, &d);
        self.check_forward(t, &d);
        let credentials = self.service_credentials(&d);
        self.check_shared_runtime_dirs(t, &mut d, credentials.as_ref());
        if self.errors.len() != errors_before {
            return None;
        }
        d.build(credentials)
    }

    /// A `runtime_directory` another enabled service names too must get
    /// the same owner and mode from both: each service gives it its own
    /// when set up, so which one it had would depend on which service a
    /// reload touched last.
    fn check_shared_runtime_dirs(
        &mut self,
        t: &Table<'_, '_>,
        d: &mut Draft<'_>,
        credentials: Option<&Credentials>,
    ) {
        let (Some((names, base)), Some(mode), Some(v), false) = (
            &d.runtime_directory,
            d.runtime_directory_mode,
            t.field("runtime_directory"),
            d.disabled,
        ) else {
            return;
        };
        let Some(label) = d.name.as_ref().map(|n| n.0.clone()) else {
            return;
        };
        let uid = credentials
            .and_then(|c| c.uid)
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
        let gid = credentials.map_or_else(|| nix::unistd::getegid().as_raw(), |c| c.gid);
        for name in names {
            let claim = (label.clone(), (uid, gid, mode));
            let other = match d.seen.runtime_dirs.entry(base.join(name)) {
                Entry::Vacant(e) => {
                    e.insert(claim);
                    continue;
                }
                Entry::Occupied(e) if e.get().1 == claim.1 => continue,
                Entry::Occupied(e) => e.get().0.clone(),
            };
            let reason = format!(
                "\"{name}\" is also service \"{other}\"'s runtime directory, with another \
                 owner or mode (it can have only one)"
            );
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "runtime_directory",
                    reason,
                },
            );
        }
    }

    fn report_missing(&mut self, t: &Table<'_, '_>, span: Range<usize>) {
        for &key in REQUIRED_SERVICE_KEYS {
            if t.field(key).is_none() {
                self.at(span.clone(), ErrorKind::Missing { key });
            }
        }
    }

    /// `working_directory`, inside `chroot` when that is set.
    fn check_working_directory(&mut self, d: &mut Draft<'_>) {
        if let Some(v) = d.working_directory {
            let root = d.sandbox.chroot.clone();
            if let Some(dir) = self.directory("working_directory", v, root.as_deref(), true) {
                d.sandbox.working_directory = dir;
            }
        }
    }

    /// Keys the service's mode can never use, each reported at its value.
    fn check_against_mode(&mut self, t: &Table<'_, '_>, d: &Draft<'_>) {
        // An internal service serves each TCP connection and sees every
        // datagram itself, so its rules always apply.
        if !d.accepts() && d.internal().is_none() {
            for &key in NEEDS_ACCEPT {
                if let Some(v) = t.field(key) {
                    self.at(v.span(), ErrorKind::NeedsAccept { key });
                }
            }
        }
        if let Some(internal) = d.internal() {
            self.check_internal(t, d, internal);
        }
        if let (Some(v), Some(_)) = (t.field("banner_fail"), t.field("tls")) {
            let why = "cannot be sent to a TLS client before its handshake; leave it out with tls";
            self.at(v.span(), options::invalid("banner_fail", why));
        }
        // Long-running children only: a pool of them, started eagerly, or
        // saying READY=1 (a forward backend's wait is start_timeout).
        for key in ["instances", "start", "ready_timeout"] {
            if let (Some(v), true) = (t.field(key), d.accepts() || d.internal().is_some()) {
                let why = "needs accept = false (long-running children)";
                self.at(v.span(), options::invalid(key, why));
            }
        }
        // A pool the limit could never let whole: it would stay short
        // for ever, the missing instance retried at every client.
        if let (Some(v), Some(n), Some(max)) = (t.field("instances"), d.instances, d.max_instances)
        {
            if n > max {
                let why =
                    format!("is {n}, above max_instances = {max}: the pool could never be whole");
                self.at(v.span(), options::invalid("instances", why));
            }
        }
        // Every instance is a child: nor can a pool above the daemon's
        // limit on children ever be whole.
        if let (Some(v), Some(max)) = (t.field("instances"), d.seen.max_children) {
            if d.instances.is_some_and(|n| n > max) {
                let why = format!(
                    "is {}, above [daemon] max_children = {max}: the pool could never be whole",
                    d.instances.unwrap_or_default()
                );
                self.at(v.span(), options::invalid("instances", why));
            }
        }
        if let Some(v) = t.field("idle_timeout") {
            // Only summond's own TCP clients idle in summond.
            let reason = if d.internal().is_none() {
                Some("applies to internal services only (a child keeps its own connection)")
            } else if !d.listen.iter().any(|l| l.addr.is_stream()) {
                Some("has no use without a TCP address (a datagram is answered at once)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.at(v.span(), options::invalid("idle_timeout", reason));
            }
        }
    }

    /// `proxy_protocol` and `proxy_from` go together, on stream sockets
    /// with an IP peer (a unix socket's peer has no address `proxy_from`
    /// could name). Accept mode is checked with the other `NEEDS_ACCEPT`
    /// keys; forward mode, when it comes, takes them too.
    fn check_proxy(&mut self, t: &Table<'_, '_>, d: &Draft<'_>) {
        let (protocol, from) = (t.field("proxy_protocol"), t.field("proxy_from"));
        let reason = match (protocol, from) {
            (None, None) => return,
            (Some(_), None) => Some(("proxy_protocol", "needs proxy_from: the load balancers that may send a header")),
            (None, Some(_)) => Some(("proxy_from", "has no use without proxy_protocol")),
            (Some(_), Some(f)) if f.get_ref().as_array().is_some_and(|a| a.is_empty()) => Some((
                "proxy_from",
                "is empty: no balancer could send a header, so every connection would be refused",
            )),
            (Some(_), Some(_)) if d.listen.iter().any(|l| !l.addr.is_stream()) => {
                Some(("proxy_protocol", "needs stream sockets (a datagram carries no header)"))
            }
            (Some(_), Some(_)) if d.listen.iter().any(|l| l.addr.is_unix()) => Some((
                "proxy_protocol",
                "needs TCP sockets (proxy_from names the balancers by address; a unix peer has none)",
            )),
            (Some(_), Some(_)) => None,
        };
        if let Some((key, why)) = reason {
            let v = t.field(key).or(protocol).or(from);
            if let Some(v) = v {
                self.at(v.span(), options::invalid(key, why));
            }
        }
    }

    /// An internal service: served in the loop over TCP and UDP, with no
    /// child to limit, greet, make directories for or give groups to.
    fn check_internal(&mut self, t: &Table<'_, '_>, d: &Draft<'_>, internal: Internal) {
        if let Some(v) = t.field("exec") {
            let stream = d.listen.iter().any(|l| l.addr.is_stream());
            let explicit_no_accept =
                t.field("accept").and_then(|v| v.get_ref().as_bool()) == Some(false);
            let reason = if d.pass == Pass::ListenFds {
                Some("is served inside summond and takes no pass = \"listen_fds\"")
            } else if stream && explicit_no_accept {
                Some("over a stream socket needs accept = true (summond serves each connection)")
            } else if d.listen.iter().any(|l| l.addr.is_unix()) {
                Some("is served over TCP and UDP only")
            } else {
                None
            };
            if let Some(reason) = reason {
                let reason = format!("\"internal:{}\" {reason}", internal.name());
                self.at(
                    v.span(),
                    ErrorKind::Invalid {
                        key: "exec",
                        reason,
                    },
                );
            }
        }
        for key in ["banner", "banner_fail", "max_runtime", "tls"] {
            if let Some(v) = t.field(key) {
                let why = "has no use with an internal service (no child, a fixed protocol)";
                self.at(v.span(), options::invalid(key, why));
            }
        }
        // Made for, or given to, a child: an internal service has none.
        for key in ["runtime_directory", "extra_groups"] {
            if let Some(v) = t.field(key) {
                let reason = "has no use with an internal service (no child)".into();
                self.at(v.span(), ErrorKind::Invalid { key, reason });
            }
        }
    }

    /// `user`, `group`, `supplementary_groups` and `extra_groups` as the
    /// credentials the child gets.
    fn service_credentials(&mut self, d: &Draft<'_>) -> Option<Credentials> {
        let mut credentials = self.credentials(d.user, d.group);
        if let (false, Some(c)) = (d.supplementary_groups, credentials.as_mut()) {
            // Only the primary group, as xinetd and systemd do without
            // SupplementaryGroups=.
            c.groups = vec![c.gid];
        }
        super::credentials::with_extra_groups(credentials, &d.extra_groups, d.supplementary_groups)
    }
}

/// A boolean key: `slot` keeps its default after a wrong type.
fn set_flag(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, slot: &mut bool) {
    if let Some(b) = cx.boolean(key, v) {
        *slot = b;
    }
}

/// `name`: its form, and unique over the main file and its drop-ins.
fn name<'v>(cx: &mut Checker<'_>, key: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let Some(s) = cx.string(key, v) else { return };
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        let reason = format!("\"{s}\" may use only letters, digits, '_', '.' and '-'");
        cx.at(v.span(), ErrorKind::Invalid { key, reason });
        return;
    }
    let (name, name_span) = (s.to_string(), v.span());
    d.label = name.as_str().into();
    let line = cx.line_col(name_span.start).0;
    let seen = &mut *d.seen;
    let file = seen.file(cx.path);
    if let Some(&(first_file, first_line)) = seen.names.get(name.as_str()) {
        let first_file = (first_file != file).then(|| seen.files[first_file].clone());
        let kind = ErrorKind::DuplicateName {
            name: name.clone(),
            first_line,
            first_file,
        };
        cx.at(name_span.clone(), kind);
    } else {
        seen.names.insert(d.label.clone(), (file, line));
    }
    d.name = Some((name, name_span));
}

/// `accept = true` on a datagram address is an error: a datagram socket
/// has no connections to accept.
fn accept<'v>(cx: &mut Checker<'_>, key: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let accept = cx.boolean(key, v);
    if accept == Some(true) {
        if let Some(l) = d.listen.iter().find(|l| !l.addr.is_stream()) {
            let addr = l.addr.clone();
            cx.at(v.span(), ErrorKind::AcceptOnDatagram { addr });
        }
    }
    d.accept = Some(accept.unwrap_or(false));
}

fn stderr<'v>(cx: &mut Checker<'_>, key: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let modes = &[
        ("inherit", StderrMode::Inherit),
        ("socket", StderrMode::Socket),
        ("null", StderrMode::Null),
    ];
    d.stderr = cx.choice(key, v, modes).unwrap_or(StderrMode::Inherit);
    if (d.pass, d.stderr) == (Pass::ListenFds, StderrMode::Socket) {
        let reason = "\"socket\" needs pass = \"stdio\" (with listen_fds the child's fds 1 and 2 are not the connection)".into();
        cx.at(v.span(), ErrorKind::Invalid { key, reason });
    }
}

/// `allow` and `deny`: lists of CIDR blocks, which a unix socket's
/// clients (no address) can never match.
fn access<'v>(cx: &mut Checker<'_>, key: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let mut blocks = Vec::new();
    for (text, item_span) in cx.string_list(key, v).unwrap_or_default() {
        match text.parse::<Cidr>() {
            Ok(c) => blocks.push(c),
            Err(err) => cx.at(item_span, ErrorKind::Cidr { key, err }),
        }
    }
    if key == "allow" {
        d.access.allow = Some(blocks);
    } else {
        d.access.deny = blocks;
    }
    if d.listen.iter().any(|l| l.addr.is_unix()) {
        cx.at(v.span(), ErrorKind::AccessOnUnix { key });
    }
}

/// A `proxy_from` block wider than any set of balancers needs: every
/// peer in it may name any client, and allow, deny and the per-source
/// limits then mean nothing. An error, not a warning (a line at startup
/// nobody reads): a mistake unless said in so many words, "any".
fn wide_proxy_from(key: &'static str, text: &str) -> ErrorKind {
    ErrorKind::Invalid {
        key,
        reason: format!(
            "\"{text}\" lets most of the Internet send a PROXY header and name any client, \
             which defeats allow, deny and the per-source limits: list the balancers' \
             addresses, or write \"any\" if only balancers can reach this port"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_key_has_one_handler_in_the_key_tables_order() {
        let handled: Vec<&str> = HANDLERS.iter().map(|(k, _)| *k).collect();
        assert_eq!(handled, SERVICE_KEYS);
    }
}
