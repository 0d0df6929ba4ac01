//! xinetd.conf and /etc/xinetd.d files: `service NAME { attr = value … }`
//! blocks, a `defaults { … }` block applied to every service, `include
//! FILE` and `includedir DIR` (whose files are read in sorted order,
//! skipping names with a `.` or ending in `~`, as xinetd does). Each
//! service block, with the `defaults` that apply to it, becomes a summond
//! entry: each attribute is resolved the way xinetd's parser does
//! (confparse.c, parsers.c, addr.c), then every one of them is named in
//! the output: carried over by a key, or dropped with the reason, or the
//! service is refused when dropping it would serve it wider open.
//!
//! - `read.rs`: the file syntax, includes and `defaults` blocks: the
//!   service blocks and the defaults' lines, as written.
//! - `resolve.rs`: one service's attributes after xinetd's rules (the
//!   defaults it takes, sets and their operators, lines it ignores).
//! - `access.rs`: only_from and no_access as xinetd reads them, as allow
//!   and deny.
//! - `socket.rs`: the listen address and accept; `program.rs`: what runs,
//!   and tcp_wrappers; `process.rs`: its user, limits and environment;
//!   `extras.rs`: on or off, flags, and what summond has no home for.
//! - here: the shape: read the files, build each `Entry` step by step,
//!   name every attribute.

mod access;
mod extras;
mod process;
mod program;
mod read;
mod resolve;
mod socket;

use std::collections::HashSet;
use std::path::Path;

use read::{Block, Reader};
use resolve::{resolve, Resolved};

use super::{Entry, ImportError, Services};

/// Attribute lines as written, in order: (name, op, values).
pub type Attrs = Vec<(String, String, Vec<String>)>;

/// The op given to the lines of a defaults block xinetd ignores (the
/// reader marks them, `resolve_defaults` names them).
pub const IGNORED_DEFAULTS: &str = "ignored";

pub fn parse(path: &Path, text: &str, services: &Services) -> Result<Vec<Entry>, Vec<ImportError>> {
    let mut r = Reader {
        blocks: Vec::new(),
        defaults: Vec::new(),
        errors: Vec::new(),
        stack: Vec::new(),
        files: 0,
    };
    read::read_file(path, text, true, &mut r);
    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    let defaults = r.defaults;
    Ok(r.blocks
        .into_iter()
        .map(|b| block_entry(b, &defaults, services))
        .collect())
}

/// A service block read from the files, with the defaults, as an entry.
fn block_entry(b: Block, defaults: &Attrs, services: &Services) -> Entry {
    let origin = format!("{}:{}: service {}", b.path, b.line, b.name);
    entry_at(
        &b.name,
        origin,
        defaults,
        b.defaults_seen,
        &b.attrs,
        services,
    )
}

/// The entry being built, with the attribute names already named.
struct Svc {
    r: Resolved,
    e: Entry,
    named: HashSet<String>,
    /// Attributes a `# not imported:` reason names.
    refused: HashSet<String>,
}

impl Svc {
    fn label(&self, name: &str) -> String {
        if self.r.from_defaults.contains(name) {
            format!("{name} (defaults)")
        } else {
            name.to_string()
        }
    }
    fn carry(&mut self, name: &str) {
        // A setting that refuses the service is named by that reason.
        if self.refused.contains(name) {
            return;
        }
        if self.r.values.contains_key(name) {
            let label = self.label(name);
            self.e.carry(&label);
            self.named.insert(name.to_string());
        }
    }
    /// `name = value: why`, when the service has the attribute.
    fn drop(&mut self, name: &str, why: &str) {
        if let Some(v) = self.r.get(name) {
            let text = match self.r.written.get(name) {
                Some(w) => format!("{} {}: {why}", self.label(name), w.join(", ").trim_end()),
                None => format!("{} = {}: {why}", self.label(name), shown(name, v)),
            };
            self.e.drop_setting(text);
            self.named.insert(name.to_string());
        }
    }
    /// The service cannot be served as `name` says: the reason, which
    /// names it, is the `# not imported:` line.
    fn refuse(&mut self, name: &str, why: String) {
        self.named.insert(name.to_string());
        self.refused.insert(name.to_string());
        self.e.refuse(why);
    }
    fn has(&self, name: &str) -> bool {
        self.r.values.contains_key(name)
    }
}

/// An attribute's value as written (address items back as words).
fn shown(name: &str, v: &[String]) -> String {
    if name == "only_from" || name == "no_access" {
        v.iter()
            .map(|x| x.strip_prefix('?').unwrap_or(x))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        v.join(" ")
    }
}

/// What the service is: its socket and whether summond sees each client.
struct Shape {
    internal: bool,
    /// `wait = yes` with a program: its child accepts.
    child_accepts: bool,
    v4_only: bool,
}

#[cfg(test)]
pub fn entry(
    name: &str,
    origin: String,
    defaults: &Attrs,
    own: &Attrs,
    services: &Services,
) -> Entry {
    entry_at(name, origin, defaults, defaults.len(), own, services)
}

/// The service `name`, read by xinetd after the first `seen` lines of
/// `defaults` (the lists it takes from them), with all of them for the
/// rest.
fn entry_at(
    name: &str,
    origin: String,
    defaults: &Attrs,
    seen: usize,
    own: &Attrs,
    services: &Services,
) -> Entry {
    let r = resolve(defaults, seen, own);
    let mut svc = Svc {
        e: Entry {
            name: r.one("id").unwrap_or_else(|| name.to_string()),
            origin,
            ..Entry::default()
        },
        r,
        named: HashSet::new(),
        refused: HashSet::new(),
    };
    for why in svc.r.ignored.clone() {
        svc.e.drop_setting(why);
    }
    if let Some(shape) = socket::socket(&mut svc, name, services) {
        if program::program(&mut svc, name, &shape) {
            process::identity(&mut svc, &shape);
            process::limits(&mut svc, &shape);
            access::access(&mut svc, &shape);
            process::environment(&mut svc);
            extras::state(&mut svc, name);
            extras::extras(&mut svc);
        }
    }
    name_the_rest(&mut svc);
    svc.e
}

/// xinetd disables a service whose attribute its parser cannot read
/// (identify_attribute: "DISABLING SERVICE").
fn unreadable(svc: &mut Svc, attr: &str) {
    let v = svc.r.words(attr).join(" ");
    svc.refuse(
        attr,
        format!("{attr} = {v}: xinetd cannot read it and does not start the service"),
    );
}

/// Every attribute not named yet: xinetd ignores those it does not know.
fn name_the_rest(svc: &mut Svc) {
    let refused = svc.e.unusable.is_some();
    for name in svc.r.order.clone() {
        if svc.named.contains(&name) {
            continue;
        }
        let known = matches!(
            name.as_str(),
            "id" | "type"
                | "flags"
                | "socket_type"
                | "protocol"
                | "wait"
                | "user"
                | "group"
                | "server"
                | "server_args"
                | "instances"
                | "nice"
                | "port"
                | "bind"
                | "interface"
                | "only_from"
                | "no_access"
                | "env"
                | "passenv"
                | "groups"
                | "umask"
                | "cps"
                | "per_source"
                | "disable"
                | "v6only"
                | "libwrap"
                | "rlimit_as"
                | "rlimit_cpu"
                | "rlimit_data"
                | "rlimit_files"
                | "rlimit_stack"
                | "redirect"
        );
        let why = if refused && known {
            "not read: the service is not imported (see above)"
        } else if known {
            "has no meaning for this service"
        } else {
            "not an xinetd attribute; xinetd ignores it too"
        };
        svc.drop(&name, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(text: &str) -> Attrs {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (n, op, rest) = if let Some((n, r)) = l.split_once("+=") {
                    (n, "+=", r)
                } else if let Some((n, r)) = l.split_once("-=") {
                    (n, "-=", r)
                } else {
                    let (n, r) = l.split_once('=').unwrap();
                    (n, "=", r)
                };
                (
                    n.trim().to_string(),
                    op.to_string(),
                    rest.split_whitespace().map(String::from).collect(),
                )
            })
            .collect()
    }

    fn import(defaults: &str, own: &str) -> Entry {
        let db = Services::parse("");
        entry("svc", "test".into(), &attrs(defaults), &attrs(own), &db)
    }

    fn key_of(e: &Entry, k: &str) -> Option<String> {
        e.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    const CAT: &str =
        "port = 7000\nsocket_type = stream\nwait = no\nuser = root\nserver = /bin/cat\n";

    #[test]
    fn only_from_becomes_allow_and_names_refuse_the_service() {
        let e = import(
            "",
            &format!("{CAT}only_from = 10.0.0.0 192.168.1.{{1,2}}\nno_access = 10.9.0.0"),
        );
        assert_eq!(
            key_of(&e, "allow").as_deref(),
            Some("[\"10.0.0.0/8\", \"192.168.1.1/32\", \"192.168.1.2/32\"]")
        );
        assert_eq!(key_of(&e, "deny").as_deref(), Some("[\"10.9.0.0/16\"]"));
        assert!(e.unusable.is_none(), "{:?}", e.unusable);
        for list in ["only_from = .example.com", "no_access = badhost.example"] {
            let e = import("", &format!("{CAT}{list}"));
            let why = e.unusable.unwrap_or_default();
            assert!(
                why.contains("by address") && why.contains(list.split(" = ").nth(1).unwrap()),
                "{why}"
            );
        }
    }

    #[test]
    fn an_empty_only_from_serves_nobody() {
        let e = import("", &format!("{CAT}only_from ="));
        assert_eq!(key_of(&e, "allow").as_deref(), Some("[]"));
        assert!(e.carried.contains(&"only_from".to_string()));
        let e = import("only_from =", CAT);
        assert_eq!(
            key_of(&e, "allow").as_deref(),
            Some("[]"),
            "from defaults too"
        );
        assert!(
            e.carried.contains(&"only_from (defaults)".to_string()),
            "{:?}",
            e.carried
        );
    }

    #[test]
    fn defaults_lists_accumulate_and_the_service_changes_them() {
        let d = "only_from = 10.0.0.0\nonly_from = 192.168.0.0\ninstances = 10\ninstances = 20";
        let e = import(d, CAT);
        assert_eq!(
            key_of(&e, "allow").as_deref(),
            Some("[\"10.0.0.0/8\", \"192.168.0.0/16\"]")
        );
        assert_eq!(
            key_of(&e, "max_instances").as_deref(),
            Some("10"),
            "first wins"
        );
        let e = import(
            d,
            &format!("{CAT}only_from -= 10.0.0.0/8\nonly_from += 127.0.0.1"),
        );
        assert_eq!(
            key_of(&e, "allow").as_deref(),
            Some("[\"192.168.0.0/16\", \"127.0.0.1/32\"]")
        );
        let e = import(d, &format!("{CAT}only_from = 127.0.0.1"));
        assert_eq!(
            key_of(&e, "allow").as_deref(),
            Some("[\"127.0.0.1/32\"]"),
            "= replaces"
        );
    }

    #[test]
    fn a_wait_yes_server_gets_no_accept_only_key() {
        let wait =
            "port = 7000\nsocket_type = stream\nwait = yes\nuser = nobody\nserver = /bin/cat\n";
        let e = import("per_source = 5", wait);
        assert_eq!(key_of(&e, "max_per_source"), None);
        assert!(
            e.dropped
                .iter()
                .any(|d| d.starts_with("per_source (defaults) = 5: with wait = yes")),
            "{:?}",
            e.dropped
        );
        assert!(e.unusable.is_none());
        let e = import("only_from = 10.0.0.0", wait);
        assert_eq!(key_of(&e, "allow"), None);
        assert!(e
            .unusable
            .unwrap_or_default()
            .contains("only_from: with wait = yes"));
        let e = import("", &format!("{wait}only_from = 0.0.0.0"));
        assert!(
            e.unusable.is_none(),
            "0.0.0.0 restricts no client of an IPv4 socket"
        );
        // An internal service sees every datagram itself.
        let udp = "type = INTERNAL\nsocket_type = dgram\nwait = yes\nport = 13\n";
        let e = entry(
            "daytime",
            "t".into(),
            &attrs("only_from = 127.0.0.1\nper_source = 2"),
            &attrs(udp),
            &Services::parse(""),
        );
        assert_eq!(key_of(&e, "allow").as_deref(), Some("[\"127.0.0.1/32\"]"));
        assert_eq!(key_of(&e, "max_per_source").as_deref(), Some("2"));
    }

    #[test]
    fn nameinargs_with_tcpd_runs_the_wrapped_program() {
        let e = import("", "port = 7000\nwait = no\nflags = NAMEINARGS\nserver = /usr/sbin/tcpd\nserver_args = /bin/cat -n");
        assert_eq!(
            key_of(&e, "exec").as_deref(),
            Some("[\"/bin/cat\", \"-n\"]")
        );
        let e = import("", "port = 7000\nwait = no\nflags = NAMEINARGS\nserver = /usr/bin/foo\nserver_args = bar -x");
        assert_eq!(
            key_of(&e, "exec").as_deref(),
            Some("[\"/usr/bin/foo\", \"-x\"]")
        );
        assert!(
            e.dropped.iter().any(|d| d.contains("first word bar")),
            "{:?}",
            e.dropped
        );
    }

    #[test]
    fn unknown_users_refuse_and_xinetd_gives_no_supplementary_groups() {
        let e = import(
            "",
            "port = 7000\nwait = no\nserver = /bin/cat\nuser = no-such-user-here",
        );
        assert!(e
            .unusable
            .unwrap_or_default()
            .contains("user no-such-user-here does not exist here"));
        let e = import(
            "",
            "port = 7000\nwait = no\nserver = /bin/cat\nuser = nobody",
        );
        assert_eq!(key_of(&e, "supplementary_groups").as_deref(), Some("false"));
        let e = import(
            "",
            "port = 7000\nwait = no\nserver = /bin/cat\nuser = nobody\ngroups = yes",
        );
        assert_eq!(key_of(&e, "supplementary_groups"), None);
    }

    #[test]
    fn every_attribute_is_named_carried_or_dropped() {
        let d =
            "log_type = SYSLOG daemon\nserver = /bin/false\nper_source = 4\nbanner = /etc/issue";
        let own = "port = 7000\nsocket_type = stream\nprotocol = tcp\nwait = no\nuser = root\nserver = /bin/cat\n\
                   server_args = -n\nflags = NODELAY NORETRY\ncps = 10 5\nrlimit_rss = 100\nmax_load = 2\n\
                   frobnicate = 1\nlog_on_success += HOST\nonly_from = 127.0.0.1\ninstances = UNLIMITED";
        let e = import(d, own);
        let all = format!("{}\n{}", e.carried.join("\n"), e.dropped.join("\n"));
        for name in [
            "log_type",
            "server in defaults",
            "per_source",
            "banner",
            "port",
            "socket_type",
            "protocol",
            "wait",
            "user",
            "server",
            "server_args",
            "flags",
            "cps",
            "rlimit_rss",
            "max_load",
            "frobnicate",
            "log_on_success",
            "only_from",
            "instances",
        ] {
            assert!(all.contains(name), "{name} not named:\n{all}");
        }
        assert!(
            all.contains("frobnicate = 1: not an xinetd attribute"),
            "{all}"
        );
    }

    #[test]
    fn lines_xinetd_ignores_are_named_as_ignored() {
        let e = import(
            "instances += 5\nserver = /bin/false",
            &format!("{CAT}nice = 1\nnice = 2"),
        );
        let all = e.dropped.join("\n");
        assert!(
            all.contains("instances += 5 in defaults: xinetd ignores it"),
            "{all}"
        );
        assert!(
            all.contains("server in defaults: xinetd ignores it there"),
            "{all}"
        );
        assert!(
            all.contains("nice = 2: xinetd ignores it (set once"),
            "{all}"
        );
        assert_eq!(key_of(&e, "nice").as_deref(), Some("1"));
        assert_eq!(key_of(&e, "max_instances"), None);
    }

    #[test]
    fn values_xinetd_cannot_read_or_that_serve_nobody_refuse() {
        for (line, why) in [
            ("instances = 0", "instances = 0: xinetd serves no client"),
            ("per_source = 0", "per_source = 0: xinetd serves no client"),
            (
                "instances = many",
                "instances = many: xinetd cannot read it",
            ),
            ("umask = 999", "umask = 999: xinetd cannot read it"),
            (
                "rlimit_as = lots",
                "rlimit_as = lots: xinetd cannot read it",
            ),
        ] {
            let e = import("", &format!("{CAT}{line}"));
            let got = e.unusable.unwrap_or_default();
            assert!(got.contains(why), "{line}: {got}");
        }
        let e = import("", &format!("{CAT}nice = 99\ncps = 0 10\nrlimit_as = 8M"));
        assert!(e.unusable.is_none(), "{:?}", e.unusable);
        assert_eq!(key_of(&e, "nice").as_deref(), Some("19"));
        assert_eq!(key_of(&e, "rate"), None);
        assert_eq!(key_of(&e, "rlimits").as_deref(), Some("{ as = 8388608 }"));
    }

    #[test]
    fn an_ipv6_socket_serves_ipv4_too_as_xinetd_s_does() {
        let e = import("", &format!("{CAT}flags = IPv6"));
        assert_eq!(key_of(&e, "listen").as_deref(), Some("\"tcp://[::]:7000\""));
        assert_eq!(key_of(&e, "v6only").as_deref(), Some("false"));
        let e = import("", &format!("{CAT}flags = IPv6\nv6only = yes"));
        assert_eq!(key_of(&e, "v6only").as_deref(), Some("true"));
    }
    #[test]
    fn a_program_without_user_is_refused_as_xinetd_refuses_it() {
        let e = import(
            "",
            "port = 7000\nsocket_type = stream\nwait = no\nserver = /bin/cat",
        );
        let why = e.unusable.unwrap_or_default();
        assert!(why.contains("no `user`"), "{why}");
        // An internal service needs none.
        let e = entry(
            "daytime",
            "t".into(),
            &Vec::new(),
            &attrs("type = INTERNAL\nsocket_type = stream\nwait = no\nport = 13"),
            &Services::parse(""),
        );
        assert!(e.unusable.is_none(), "{:?}", e.unusable);
    }

    #[test]
    fn bind_and_interface_are_one_attribute_whose_first_line_wins() {
        let e = import("", &format!("{CAT}interface = 127.0.0.1\nbind = 0.0.0.0"));
        assert_eq!(
            key_of(&e, "listen").as_deref(),
            Some("\"tcp://127.0.0.1:7000\""),
            "{:?}",
            e.dropped
        );
        assert!(
            e.dropped
                .iter()
                .any(|d| d.starts_with("bind = 0.0.0.0: xinetd ignores it")),
            "{:?}",
            e.dropped
        );
        let e = import("bind = 0.0.0.0", &format!("{CAT}interface = 127.0.0.1"));
        assert_eq!(
            key_of(&e, "listen").as_deref(),
            Some("\"tcp://127.0.0.1:7000\"")
        );
    }

    #[test]
    fn a_line_with_the_wrong_number_of_values_is_ignored_as_by_xinetd() {
        let e = import("", &format!("{CAT}cps = 10\nnice = 1 2"));
        assert_eq!(key_of(&e, "rate"), None);
        assert_eq!(key_of(&e, "nice"), None);
        let all = e.dropped.join("\n");
        assert!(
            all.contains("cps = 10: xinetd ignores it (it takes 2 values)"),
            "{all}"
        );
        // `user = nobody # why` is three values: xinetd has no user, and
        // does not start the program.
        let e = import(
            "",
            "port = 7000\nsocket_type = stream\nwait = no\nserver = /bin/cat\nuser = nobody # why",
        );
        assert!(
            e.unusable.unwrap_or_default().contains("no `user`"),
            "{:?}",
            e.dropped
        );
    }

    #[test]
    fn an_rlimit_beyond_a_toml_integer_is_infinity() {
        let e = import("", &format!("{CAT}rlimit_as = 9999999999999999999"));
        assert_eq!(
            key_of(&e, "rlimits").as_deref(),
            Some("{ as = \"infinity\" }")
        );
        assert!(e.unusable.is_none());
    }
    #[test]
    fn an_address_list_that_refuses_the_service_is_not_also_carried_over() {
        let e = import("", &format!("{CAT}only_from = 10.0.0.1 host.example"));
        assert!(e
            .unusable
            .unwrap_or_default()
            .contains("only_from host.example"));
        assert!(
            !e.carried.iter().any(|c| c.starts_with("only_from")),
            "{:?}",
            e.carried
        );
    }
    #[test]
    fn what_xinetd_does_not_start_for_want_of_wait_or_port_is_refused() {
        let e = import(
            "",
            "port = 7000\nsocket_type = stream\nuser = nobody\nserver = /bin/cat",
        );
        assert!(e.unusable.unwrap_or_default().contains("no `wait`"));
        let db = Services::parse("svc 7000/tcp\n");
        let unlisted = attrs(
            "type = UNLISTED\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/cat",
        );
        let e = entry("svc", "t".into(), &Vec::new(), &unlisted, &db);
        assert!(
            e.unusable.unwrap_or_default().contains("UNLISTED"),
            "{:?}",
            e.keys
        );
        let bad =
            attrs("port = http\nsocket_type = stream\nwait = no\nuser = nobody\nserver = /bin/cat");
        let e = entry("svc", "t".into(), &Vec::new(), &bad, &db);
        assert!(
            e.unusable
                .unwrap_or_default()
                .contains("port = http: xinetd cannot read it"),
            "{:?}",
            e.keys
        );
    }
}
