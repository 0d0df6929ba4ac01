//! One xinetd service block, with the `defaults` that apply to it, as a
//! summond entry. Each attribute is resolved the way xinetd's parser does
//! (confparse.c, parsers.c, addr.c), then every one of them is named in
//! the output: carried over by a key, or dropped with the reason, or the
//! service is refused when dropping it would serve it wider open.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use super::{key, list, s, wrappers, Entry, Services};

const INTERNAL: &[&str] = &["echo", "discard", "chargen", "daytime", "time"];

/// The attributes xinetd reads in a `defaults` block (default_attributes
/// in parse.c); it ignores any other there.
const DEFAULTS_ATTRS: &[&str] = &[
    "log_type",
    "log_on_success",
    "log_on_failure",
    "disabled",
    "no_access",
    "only_from",
    "instances",
    "passenv",
    "banner",
    "bind",
    "interface",
    "per_source",
    "groups",
    "banner_success",
    "banner_fail",
    "cps",
    "enabled",
    "max_load",
    "v6only",
    "umask",
    "mdns",
];

/// Set attributes: `+=` and `-=` work on them, may repeat, and in
/// `defaults` `=` adds (log_type is one there only).
const SETS: &[&str] = &[
    "only_from",
    "no_access",
    "log_on_success",
    "log_on_failure",
    "passenv",
    "env",
];

/// Set attributes a service starts from the defaults' value, which its
/// own `=` replaces and `+=`/`-=` change.
const SEEDED: &[&str] = &[
    "only_from",
    "no_access",
    "log_on_success",
    "log_on_failure",
    "passenv",
];

pub type Attrs = Vec<(String, String, Vec<String>)>;

/// The op given to the lines of a defaults block xinetd ignores (the
/// reader marks them, `resolve_defaults` names them).
pub const IGNORED_DEFAULTS: &str = "ignored";

/// How many values an attribute takes, when xinetd fixes the number
/// (parse.c's a_nvalues > 0): a line with another count is ignored.
fn fixed_values(name: &str) -> Option<usize> {
    match name {
        "redirect" | "cps" => Some(2),
        "socket_type" | "protocol" | "wait" | "user" | "group" | "server" | "instances"
        | "rpc_version" | "rpc_number" | "id" | "port" | "nice" | "banner" | "bind"
        | "interface" | "per_source" | "groups" | "banner_success" | "banner_fail" | "disable"
        | "max_load" | "rlimit_as" | "rlimit_cpu" | "rlimit_data" | "rlimit_files"
        | "rlimit_rss" | "rlimit_stack" | "v6only" | "deny_time" | "umask" | "libwrap" => Some(1),
        _ => None,
    }
}

/// The attribute a name sets: `interface` is xinetd's other name for
/// `bind` (both A_BIND), so whichever comes first is the one set.
fn slot(name: &str) -> &str {
    if name == "interface" {
        "bind"
    } else {
        name
    }
}

/// Why xinetd ignores the line `name op v`, if it does, because of its
/// number of values.
fn wrong_count(name: &str, op: &str, v: &[String], place: &str) -> Option<String> {
    let n = fixed_values(name)?;
    (v.len() != n).then(|| {
        format!(
            "{name} {op} {}{place}: xinetd ignores it (it takes {n} value{})",
            v.join(" "),
            if n == 1 { "" } else { "s" }
        )
        .replace("  ", " ")
    })
}

/// A service's attributes after xinetd's rules.
#[derive(Default)]
struct Resolved {
    values: HashMap<String, Vec<String>>,
    /// Names in the order first seen: the block's own, then the defaults'.
    order: Vec<String>,
    /// Names whose value comes from `defaults` alone.
    from_defaults: HashSet<String>,
    /// Each attribute as written (`= a b`, `+= c`), for the comments.
    written: HashMap<String, Vec<String>>,
    /// Lines xinetd itself ignores, with why.
    ignored: Vec<String>,
    /// defaults' `enabled` (service ids; None: not given) and `disabled`.
    enabled: Option<Vec<String>>,
    disabled: Vec<String>,
}

impl Resolved {
    fn get(&self, k: &str) -> Option<&Vec<String>> {
        self.values.get(k)
    }
    fn one(&self, k: &str) -> Option<String> {
        self.values.get(k).and_then(|v| v.first().cloned())
    }
    fn words(&self, k: &str) -> Vec<String> {
        self.values.get(k).cloned().unwrap_or_default()
    }
}

/// An address list item: a CIDR block, or `?word` for what summond cannot
/// match (a host, domain or network name, or no address xinetd reads).
fn address_items(word: &str) -> Vec<String> {
    if word == "localhost" {
        // The addresses whose reverse lookup is `localhost` in Debian's
        // /etc/hosts; all of 127.0.0.0/8 would be wider than xinetd.
        return vec!["127.0.0.1/32".into(), "::1/128".into()];
    }
    if word.contains('{') {
        return factorized(word).unwrap_or_else(|| vec![format!("?{word}")]);
    }
    if word.contains('/') {
        return match word.parse::<crate::access::Cidr>() {
            Ok(c) => vec![c.to_string()],
            Err(_) => vec![format!("?{word}")],
        };
    }
    match word.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if word.split('.').count() == 4 => vec![trailing_zeros(a)],
        // IPv6 addresses match exactly (addr.c: the zero rule is IPv4's).
        Ok(IpAddr::V6(_)) => match format!("{word}/128").parse::<crate::access::Cidr>() {
            Ok(c) => vec![c.to_string()],
            Err(_) => vec![format!("?{word}")],
        },
        _ => vec![format!("?{word}")],
    }
}

/// xinetd's numeric IPv4 rule: zero octets at the right are wildcards
/// (`10.0.0.0` is 10/8, `0.0.0.0` every IPv4 address).
fn trailing_zeros(a: Ipv4Addr) -> String {
    let bits = u32::from(a);
    let prefix = if bits == 0 {
        0
    } else {
        32 - (bits.trailing_zeros() / 8) * 8
    };
    format!("{a}/{prefix}")
}

/// `a.b.{c,d}`: one block per number, the braces standing for the octet
/// after the given ones and the prefix covering up to it (addr.c).
fn factorized(word: &str) -> Option<Vec<String>> {
    let (head, rest) = word.split_once('{')?;
    let body = rest.strip_suffix('}')?;
    let given: Vec<u8> = if head.is_empty() {
        Vec::new()
    } else {
        let h = head.strip_suffix('.')?;
        h.split('.')
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?
    };
    if given.len() > 3 {
        return None;
    }
    let mut out = Vec::new();
    for n in body.split(',') {
        let mut octets = given.clone();
        octets.push(n.trim().parse().ok()?);
        let prefix = octets.len() * 8;
        octets.resize(4, 0);
        let a = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
        out.push(format!("{a}/{prefix}"));
    }
    Some(out)
}

fn normalized(name: &str, v: &[String]) -> Vec<String> {
    if name == "only_from" || name == "no_access" {
        v.iter().flat_map(|w| address_items(w)).collect()
    } else {
        v.to_vec()
    }
}

fn apply_set(cur: &mut Vec<String>, op: &str, v: Vec<String>) {
    match op {
        "-=" => cur.retain(|x| !v.contains(x)),
        "+=" => cur.extend(v),
        _ => *cur = v,
    }
}

/// defaults' values: only its attributes, sets cumulative, others first
/// assignment wins.
fn resolve_defaults(
    defaults: &Attrs,
    seen: usize,
    r: &mut Resolved,
) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let mut d: HashMap<String, Vec<String>> = HashMap::new();
    let mut order = Vec::new();
    for (i, (name, op, v)) in defaults.iter().enumerate() {
        if op == IGNORED_DEFAULTS {
            let why = format!(
                "{name} = {} in a second defaults block of its file: xinetd ignores that whole block",
                v.join(" ")
            );
            if !r.ignored.contains(&why) {
                r.ignored.push(why);
            }
            continue;
        }
        if !DEFAULTS_ATTRS.contains(&name.as_str()) {
            let why =
                format!("{name} in defaults: xinetd ignores it there (not a defaults attribute)");
            if !r.ignored.contains(&why) {
                r.ignored.push(why);
            }
            continue;
        }
        if let Some(why) = wrong_count(name, op, v, " in defaults") {
            r.ignored.push(why);
            continue;
        }
        let shown = format!("{op} {}", v.join(" "));
        let v = normalized(name, v);
        match name.as_str() {
            "enabled" => {
                let cur = r.enabled.get_or_insert_with(Vec::new);
                apply_set(cur, if op == "-=" { "-=" } else { "+=" }, v);
                continue;
            }
            "disabled" => {
                apply_set(&mut r.disabled, if op == "-=" { "-=" } else { "+=" }, v);
                continue;
            }
            _ => {}
        }
        if SEEDED.contains(&name.as_str()) && i >= seen {
            // xinetd copied the defaults' lists into the service when it
            // read it, before this line.
            r.ignored.push(format!(
                "{name} {shown} in defaults: it comes after this service, whose lists xinetd took from defaults when it read the service"
            ).replace("  ", " "));
            continue;
        }
        if !order.contains(name) {
            order.push(name.clone());
        }
        r.written.entry(name.clone()).or_default().push(shown);
        if SETS.contains(&name.as_str()) || name == "log_type" {
            let cur = d.entry(name.clone()).or_default();
            apply_set(cur, if op == "-=" { "-=" } else { "+=" }, v);
        } else if d.contains_key(slot(name)) || d.contains_key(name) || op != "=" {
            r.ignored.push(format!(
                "{name} {op} {} in defaults: xinetd ignores it (set once, with =)",
                v.join(" ")
            ));
        } else {
            d.insert(name.clone(), v);
        }
    }
    (d, order)
}

fn resolve(defaults: &Attrs, seen: usize, own: &Attrs) -> Resolved {
    let mut r = Resolved::default();
    let (d, d_order) = resolve_defaults(defaults, seen, &mut r);
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    let mut own_written: HashMap<String, Vec<String>> = HashMap::new();
    for (name, op, v) in own {
        own_written
            .entry(name.clone())
            .or_default()
            .push(format!("{op} {}", v.join(" ")));
        if let Some(why) = wrong_count(name, op, v, "") {
            r.ignored.push(why);
            continue;
        }
        let v = normalized(name, v);
        if SETS.contains(&name.as_str()) {
            let seed = || {
                if SEEDED.contains(&name.as_str()) {
                    d.get(name).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                }
            };
            let cur = values.entry(name.clone()).or_insert_with(seed);
            apply_set(cur, op, v);
        } else if values.contains_key(name)
            || (slot(name) != name && values.contains_key(slot(name)))
            || (name == "bind" && values.contains_key("interface"))
            || op != "="
        {
            let alias = if slot(name) == "bind" {
                "; bind and interface are one attribute"
            } else {
                ""
            };
            r.ignored.push(format!(
                "{name} {op} {}: xinetd ignores it (set once, with ={alias})",
                v.join(" ")
            ));
            continue;
        } else {
            values.insert(name.clone(), v);
        }
        if !r.order.contains(name) {
            r.order.push(name.clone());
        }
    }
    let own_binds = values.contains_key("bind") || values.contains_key("interface");
    for name in d_order {
        let is_bind = name == "bind" || name == "interface";
        if values.contains_key(&name) || (is_bind && own_binds) {
            continue;
        }
        let Some(v) = d.get(&name) else {
            continue; // every line of it was ignored
        };
        values.insert(name.clone(), v.clone());
        r.from_defaults.insert(name.clone());
        r.order.push(name);
    }
    r.values = values;
    // A service's own lines are what it says; the defaults' stay for the
    // attributes it takes from there alone.
    r.written.retain(|n, _| r.from_defaults.contains(n));
    r.written.extend(own_written);
    r
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
pub fn entry_at(
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
    if let Some(shape) = socket(&mut svc, name, services) {
        if program(&mut svc, name, &shape) {
            identity(&mut svc, &shape);
            limits(&mut svc, &shape);
            access(&mut svc, &shape);
            environment(&mut svc);
            state(&mut svc, name);
            extras(&mut svc);
        }
    }
    name_the_rest(&mut svc);
    svc.e
}

/// type, socket_type, protocol, port, bind, flags IPv4/IPv6, v6only,
/// wait: the listen address and accept. None: refused.
fn socket(svc: &mut Svc, name: &str, services: &Services) -> Option<Shape> {
    let types = svc.r.words("type");
    if let Some(t) = types
        .iter()
        .find(|t| matches!(t.as_str(), "RPC" | "TCPMUX" | "TCPMUXPLUS"))
    {
        svc.refuse(
            "type",
            format!("type {t}: ONC RPC and TCPMUX services are not supported"),
        );
        return None;
    }
    svc.carry("type");
    let stream = match svc.r.one("socket_type").as_deref() {
        Some("stream") | None => true,
        Some("dgram") => false,
        Some(other) => {
            svc.refuse(
                "socket_type",
                format!("socket_type {other} is not served by summond"),
            );
            return None;
        }
    };
    svc.carry("socket_type");
    let proto = svc
        .r
        .one("protocol")
        .unwrap_or_else(|| if stream { "tcp" } else { "udp" }.into());
    if proto != "tcp" && proto != "udp" || (proto == "tcp") != stream {
        svc.refuse(
            "protocol",
            format!(
                "protocol {proto} with a {} socket is not served by summond",
                if stream { "stream" } else { "dgram" }
            ),
        );
        return None;
    }
    svc.carry("protocol");
    let given = svc.r.one("port");
    if given.as_ref().is_some_and(|p| p.parse::<u16>().is_err()) {
        unreadable(svc, "port");
        return None;
    }
    if given.is_none() && types.iter().any(|t| t == "UNLISTED") {
        svc.refuse(
            "type",
            "type UNLISTED without `port`: xinetd does not start it (\"must have a port entry\")"
                .into(),
        );
        return None;
    }
    let port = given
        .and_then(|p| p.parse::<u16>().ok())
        .or_else(|| services.port(name, &proto));
    let Some(port) = port.filter(|p| *p != 0) else {
        svc.refuse(
            "port",
            format!("no port: neither `port` nor {name}/{proto} in /etc/services"),
        );
        return None;
    };
    svc.carry("port");
    let v4_only = listen(svc, &proto, port)?;
    let internal = types.iter().any(|t| t == "INTERNAL");
    let child_accepts = accept_mode(svc, stream, internal)?;
    Some(Shape {
        internal,
        child_accepts,
        v4_only,
    })
}

/// bind (or interface), flags IPv6, v6only: the `listen` address. The
/// result says whether the socket is IPv4; None: refused.
fn listen(svc: &mut Svc, proto: &str, port: u16) -> Option<bool> {
    let flags = svc.r.words("flags");
    let bind_attr = if svc.has("bind") { "bind" } else { "interface" };
    let host = match svc.r.one(bind_attr) {
        Some(h) => match h.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{h}]"),
            Ok(IpAddr::V4(_)) => h,
            Err(_) => {
                svc.refuse(bind_attr, format!("{bind_attr} {h}: xinetd resolves it once at start; give the address to bind"));
                return None;
            }
        },
        None if flags.iter().any(|f| f == "IPv6") => "[::]".into(),
        None => "0.0.0.0".into(),
    };
    svc.carry(bind_attr);
    svc.e.set("listen", s(&format!("{proto}://{host}:{port}")));
    let v4_only = !host.starts_with('[');
    match svc.r.one("v6only") {
        Some(_) if v4_only => svc.drop("v6only", "the socket is IPv4"),
        Some(v6) => {
            svc.e
                .set("v6only", if v6 == "yes" { "true" } else { "false" }.into());
            svc.carry("v6only");
        }
        // xinetd's default is v6only = no: its [::] socket serves IPv4
        // clients too; summond's default is IPv6 only.
        None if host == "[::]" => svc.e.set("v6only", "false".into()),
        None => {}
    }
    Some(v4_only)
}

/// wait: `accept`. The result says whether the child accepts its own
/// clients (a program with wait = yes); None: refused.
fn accept_mode(svc: &mut Svc, stream: bool, internal: bool) -> Option<bool> {
    let wait = svc.r.one("wait");
    let child_accepts = match wait.as_deref() {
        Some("yes") if internal && stream => {
            svc.drop(
                "wait",
                "summond serves each connection of its internal services itself",
            );
            false
        }
        Some("yes") => {
            svc.e.set("accept", "false".into());
            svc.carry("wait");
            !internal
        }
        None => {
            // NECESSARY_ATTRS: "missing attribute wait - DISABLING".
            svc.e
                .refuse("no `wait`: xinetd requires it and does not start the service");
            return None;
        }
        Some("no") if stream => {
            svc.carry("wait");
            false
        }
        Some("no") if internal => {
            svc.e.set("accept", "false".into());
            svc.carry("wait");
            false
        }
        Some("no") => {
            svc.refuse(
                "wait",
                "a datagram service with wait = no has nothing to accept".into(),
            );
            return None;
        }
        Some(other) => {
            svc.refuse("wait", format!("wait = {other}: xinetd takes yes or no"));
            return None;
        }
    };
    Some(child_accepts)
}

/// server, server_args, flags NAMEINARGS, redirect, libwrap, and the
/// tcp_wrappers check xinetd makes itself: `exec`. False: refused.
fn program(svc: &mut Svc, name: &str, shape: &Shape) -> bool {
    let flags = svc.r.words("flags");
    if svc.has("redirect") {
        svc.refuse("redirect", "redirect: summond runs a program for each client, it does not forward connections to another host".into());
        return false;
    }
    if flags.iter().any(|f| f == "SENSOR") {
        svc.refuse(
            "flags",
            "flags SENSOR: summond has no sensor that bans a client from every service".into(),
        );
        return false;
    }
    let daemon = if shape.internal {
        if !INTERNAL.contains(&name) {
            svc.refuse(
                "type",
                format!("xinetd's internal `{name}` has no summond equivalent"),
            );
            return false;
        }
        svc.e
            .set("exec", list([format!("internal:{name}").as_str()]));
        svc.drop("server", "an internal service runs no program");
        svc.drop("server_args", "an internal service runs no program");
        name.to_string()
    } else {
        let Some(server) = svc.r.one("server") else {
            svc.e.refuse("no `server` to run");
            return false;
        };
        let args = svc.r.words("server_args");
        let nameinargs = flags.iter().any(|f| f == "NAMEINARGS");
        let argv = match external_argv(svc, &server, args, nameinargs) {
            Some(a) => a,
            None => return false,
        };
        svc.e.set("exec", list(argv.0.iter().map(String::as_str)));
        svc.carry("server");
        svc.carry("server_args");
        argv.1
    };
    libwrap(svc, &daemon, &flags);
    true
}

/// The argv summond runs and the daemon name libwrap uses. With
/// NAMEINARGS server_args' first word is argv[0]: dropped (summond's
/// argv[0] is the program) or, with tcpd as the server, the program tcpd
/// runs. None: refused.
fn external_argv(
    svc: &mut Svc,
    server: &str,
    args: Vec<String>,
    nameinargs: bool,
) -> Option<(Vec<String>, String)> {
    if !nameinargs {
        let mut argv = vec![server.to_string()];
        argv.extend(args);
        return Some((argv, wrappers::daemon_name(server)));
    }
    if args.is_empty() {
        svc.refuse(
            "flags",
            "flags NAMEINARGS without server_args: xinetd does not start it".into(),
        );
        return None;
    }
    if wrappers::is_tcpd(server) {
        let (argv, daemon) = wrappers::unwrap(&args)?;
        if let Some(why) = wrappers::refusal(&daemon, "tcpd") {
            svc.refuse("server", why);
        } else {
            svc.e.drop_setting(format!(
                "server = {server}: tcp_wrappers' tcpd is unwrapped to the program it runs; \
                 hosts.allow and hosts.deny had no rule for {daemon} at import, and summond \
                 never reads them (write such rules as allow and deny)"
            ));
        }
        return Some((argv, daemon));
    }
    let argv0 = args[0].clone();
    let mut argv = vec![server.to_string()];
    argv.extend(args[1..].iter().cloned());
    if wrappers::daemon_name(&argv0) != wrappers::daemon_name(server) {
        svc.e.drop_setting(format!(
            "server_args' first word {argv0} (argv[0] with NAMEINARGS): summond gives the program its own path as argv[0]"
        ));
    }
    Some((argv, wrappers::daemon_name(&argv0)))
}

/// Debian's xinetd checks hosts.allow/hosts.deny itself (built with
/// libwrap) for each client, unless NOLIBWRAP: a rule that may apply
/// refuses the service.
fn libwrap(svc: &mut Svc, daemon: &str, flags: &[String]) {
    if flags.iter().any(|f| f == "NOLIBWRAP") {
        svc.drop(
            "libwrap",
            "flags NOLIBWRAP turns xinetd's hosts.allow check off",
        );
        return;
    }
    let name = svc.r.one("libwrap").unwrap_or_else(|| daemon.to_string());
    if let Some(why) = wrappers::refusal(&name, "xinetd") {
        svc.refuse("libwrap", why);
    } else {
        svc.drop(
            "libwrap",
            "the name xinetd's hosts.allow/hosts.deny check uses; no rule there named it or ALL at import, and summond never reads those files",
        );
    }
}

fn lookup_user(u: &str) -> Option<String> {
    let found = match u.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(u),
    };
    found.ok().flatten().map(|u| u.name)
}

fn lookup_group(g: &str) -> Option<String> {
    let found = match g.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)),
        Err(_) => nix::unistd::Group::from_name(g),
    };
    found.ok().flatten().map(|g| g.name)
}

/// user, group, groups. An unknown user or group refuses the service
/// (run as root instead, it would be more than the input allowed).
fn identity(svc: &mut Svc, shape: &Shape) {
    if shape.internal {
        for attr in ["user", "group", "groups"] {
            svc.drop(
                attr,
                "summond serves its internal services itself, with no child to run as anyone",
            );
        }
        return;
    }
    let mut runs_as = false;
    if !svc.has("user") {
        // xinetd.conf(5): user is required for a service that runs a
        // program; confparse.c "missing attribute user - DISABLING".
        svc.e.refuse(
            "no `user`: xinetd requires one for a service that runs a program and does not start this one (summond would run it as root); add `user` to serve it",
        );
    }
    if let Some(u) = svc.r.one("user") {
        match lookup_user(&u) {
            Some(name) => {
                if name != "root" {
                    svc.e.set("user", s(&name));
                    runs_as = true;
                }
                svc.carry("user");
            }
            None => svc.refuse("user", format!("user {u} does not exist here: create it or name another user (the program is not run as root instead)")),
        }
    }
    if let Some(g) = svc.r.one("group") {
        match lookup_group(&g) {
            Some(name) => {
                svc.e.set("group", s(&name));
                runs_as = true;
                svc.carry("group");
            }
            None => svc.refuse(
                "group",
                format!("group {g} does not exist here: create it or name another group"),
            ),
        }
    }
    // xinetd gives the server no supplementary groups unless groups = yes
    // (child.c: setgroups(0) or initgroups); summond's default is the
    // user's groups.
    if svc.r.one("groups").as_deref() == Some("yes") {
        svc.carry("groups");
    } else {
        if runs_as {
            svc.e.set("supplementary_groups", "false".into());
        }
        svc.carry("groups");
    }
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

/// instances or per_source: a count, `UNLIMITED` (no key), 0 (xinetd
/// serves nobody: refused) or unreadable (refused).
fn count(svc: &mut Svc, attr: &str, key: &str, applies: bool) {
    let Some(v) = svc.r.one(attr) else { return };
    match v.parse::<u32>() {
        _ if v == "UNLIMITED" => svc.carry(attr),
        Ok(0) => svc.refuse(attr, format!("{attr} = 0: xinetd serves no client")),
        Ok(_) if !applies => svc.drop(
            attr,
            "with wait = yes one server runs at a time and accepts its own clients, so there is nothing to count per source",
        ),
        Ok(n) => {
            svc.e.set(key, n.to_string());
            svc.carry(attr);
        }
        Err(_) => unreadable(svc, attr),
    }
}

/// instances, per_source, cps, max_load, nice, umask, rlimit_*.
fn limits(svc: &mut Svc, shape: &Shape) {
    count(svc, "instances", "max_instances", true);
    count(svc, "per_source", "max_per_source", !shape.child_accepts);
    cps(svc);
    svc.drop("max_load", "summond does not watch the load average; at max_instances clients wait in the listen backlog");
    match svc.r.one("nice").map(|n| n.parse::<i32>()) {
        Some(Ok(n)) => {
            // nice(2) clamps, as it does for xinetd.
            svc.e.set("nice", n.clamp(-20, 19).to_string());
            svc.carry("nice");
        }
        Some(Err(_)) => unreadable(svc, "nice"),
        None => {}
    }
    match svc.r.one("umask") {
        Some(m) if u32::from_str_radix(&m, 8).is_ok_and(|m| m <= 0o777) => {
            svc.e.set("umask", s(&m));
            svc.carry("umask");
        }
        Some(_) => unreadable(svc, "umask"),
        None => {}
    }
    rlimits(svc);
}

fn cps(svc: &mut Svc) {
    let v = svc.r.words("cps");
    if v.is_empty() {
        return;
    }
    match v[0].parse::<u32>() {
        Ok(n) if n > 0 => {
            svc.e.set("rate", s(&format!("{n}/1s")));
            svc.carry("cps");
            if let Some(wait) = v.get(1) {
                svc.e.drop_setting(format!(
                    "cps's {wait} s shutdown: summond's rate pauses the listener until a token is back instead of disabling the service"
                ));
            }
        }
        // cps = 0 turns xinetd's rate check off: no rate.
        Ok(_) => svc.carry("cps"),
        Err(_) => unreadable(svc, "cps"),
    }
}

/// A size with xinetd's K and M suffixes (kilobytes, megabytes).
fn size(v: &str) -> Option<u64> {
    let (n, mult) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1024),
        b'M' | b'm' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

fn rlimits(svc: &mut Svc) {
    let mut rlimits = Vec::new();
    for (attr, name) in [
        ("rlimit_as", "as"),
        ("rlimit_cpu", "cpu"),
        ("rlimit_data", "data"),
        ("rlimit_files", "nofile"),
        ("rlimit_stack", "stack"),
    ] {
        let Some(v) = svc.r.one(attr) else { continue };
        let value = if v == "UNLIMITED" {
            Some(s("infinity"))
        } else {
            // Beyond a TOML integer is beyond any address space or count:
            // infinity in effect.
            size(&v).map(|n| {
                if i64::try_from(n).is_ok() {
                    n.to_string()
                } else {
                    s("infinity")
                }
            })
        };
        match value {
            Some(value) => {
                rlimits.push(format!("{name} = {value}"));
                svc.carry(attr);
            }
            None => unreadable(svc, attr),
        }
    }
    if !rlimits.is_empty() {
        svc.e
            .set("rlimits", format!("{{ {} }}", rlimits.join(", ")));
    }
    svc.drop("rlimit_rss", "Linux does not enforce RLIMIT_RSS");
}

/// only_from and no_access as allow and deny. A name summond cannot
/// match, or any restriction on a server that accepts its own clients,
/// refuses the service (never served wider open than xinetd's list).
fn access(svc: &mut Svc, shape: &Shape) {
    let allow = svc.r.get("only_from").cloned();
    let deny = svc.r.get("no_access").cloned();
    for (attr, items) in [("only_from", &allow), ("no_access", &deny)] {
        let names: Vec<&str> = items
            .iter()
            .flatten()
            .filter_map(|x| x.strip_prefix('?'))
            .collect();
        if !names.is_empty() {
            svc.refuse(attr, format!(
                "{attr} {}: xinetd matches host, domain and network names by looking each client up, summond only by address; write the addresses or CIDR blocks they stand for",
                names.join(" ")
            ));
        }
    }
    let blocks = |v: &Option<Vec<String>>| -> Option<Vec<String>> {
        v.as_ref().map(|v| {
            let mut out: Vec<String> = Vec::new();
            for x in v.iter().filter(|x| !x.starts_with('?')) {
                if !out.contains(x) {
                    out.push(x.clone());
                }
            }
            out
        })
    };
    let (allow, deny) = (blocks(&allow), blocks(&deny));
    if shape.child_accepts {
        let everyone = |a: &Vec<String>| {
            a.iter().any(|x| x == "0.0.0.0/0") && (shape.v4_only || a.iter().any(|x| x == "::/0"))
        };
        let open =
            deny.as_ref().is_none_or(|d| d.is_empty()) && allow.as_ref().is_none_or(everyone);
        for attr in ["only_from", "no_access"] {
            if open {
                svc.drop(
                    attr,
                    "restricts no client of this socket, so there is nothing to check",
                );
            } else if svc.has(attr) {
                svc.refuse(attr, format!(
                    "{attr}: with wait = yes the server accepts its own clients, so summond never sees them to check (xinetd checks only the datagram that starts such a server, and no stream client); restrict them in the server or a firewall and remove {attr}"
                ));
            }
        }
        return;
    }
    if let Some(a) = allow {
        // Empty: xinetd serves nobody, and so does allow = [].
        svc.e.set("allow", list(a.iter().map(String::as_str)));
        svc.carry("only_from");
    }
    if let Some(d) = deny {
        if !d.is_empty() {
            svc.e.set("deny", list(d.iter().map(String::as_str)));
        }
        svc.carry("no_access");
    }
}

/// env and passenv.
fn environment(svc: &mut Svc) {
    let env = svc.r.words("env");
    if !env.is_empty() {
        // NAME=value words; a later NAME wins, as in a shell.
        let mut vars: Vec<(String, String)> = Vec::new();
        for word in &env {
            match word.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    vars.retain(|(n, _)| n != k);
                    vars.push((k.to_string(), v.to_string()));
                }
                _ => svc
                    .e
                    .drop_setting(format!("env word `{word}`: not NAME=value")),
            }
        }
        if !vars.is_empty() {
            let pairs: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), s(v)))
                .collect();
            svc.e.set("env", format!("{{ {} }}", pairs.join(", ")));
        }
    }
    svc.carry("env");
    if let Some(passenv) = svc.r.get("passenv").cloned() {
        // Present, even empty: xinetd passes only these of its own.
        svc.e.set("clear_env", "true".into());
        svc.e
            .set("passenv", list(passenv.iter().map(String::as_str)));
        svc.carry("passenv");
    }
}

/// disable, the defaults' enabled and disabled id lists, id.
fn state(svc: &mut Svc, name: &str) {
    let id = svc.r.one("id").unwrap_or_else(|| name.to_string());
    svc.carry("id");
    let mut off = svc.r.one("disable").as_deref() == Some("yes");
    svc.carry("disable");
    if svc.r.words("flags").iter().any(|f| f == "DISABLE") {
        off = true;
    }
    if let Some(enabled) = &svc.r.enabled {
        if !enabled.contains(&id) {
            off = true;
        }
        svc.e.carry("enabled (defaults)");
    }
    if svc.r.disabled.contains(&id) {
        off = true;
        svc.e.carry("disabled (defaults)");
    }
    if off {
        svc.e.set("disabled", "true".into());
    }
}

/// flags, banners, logs, access_times and the attributes summond has no
/// home for.
fn extras(svc: &mut Svc) {
    flags(svc);
    for attr in ["banner", "banner_success", "banner_fail"] {
        svc.drop(
            attr,
            "summond's banner and banner_fail are text in the config, not files",
        );
    }
    for attr in ["log_type", "log_on_success", "log_on_failure"] {
        svc.drop(
            attr,
            "summond logs every connection to one log (stderr, syslog or JSON)",
        );
    }
    if let Some(times) = svc
        .r
        .one("access_times")
        .map(|_| svc.r.words("access_times").join(" "))
    {
        svc.refuse("access_times", format!(
            "access_times {times}: summond serves at all hours; remove it to serve the service always"
        ));
    }
    svc.drop(
        "deny_time",
        "it goes with flags SENSOR, which summond does not have",
    );
    svc.drop("mdns", "summond registers no service with mDNS");
    for attr in ["rpc_version", "rpc_number"] {
        svc.drop(attr, "only for type = RPC, which summond does not serve");
    }
}

fn flags(svc: &mut Svc) {
    let flags = svc.r.words("flags");
    let userid = ["log_on_success", "log_on_failure"]
        .iter()
        .any(|a| svc.r.words(a).iter().any(|w| w == "USERID"));
    for f in &flags {
        match f.as_str() {
            "NODELAY" => svc.e.set("nodelay", "true".into()),
            "KEEPALIVE" => svc.e.set("keepalive", "true".into()),
            "REUSE" | "IPv4" | "IPv6" | "NAMEINARGS" | "NOLIBWRAP" | "DISABLE" | "SENSOR" => {}
            "IDONLY" if userid => svc.e.refuse(
                "flags IDONLY: xinetd serves only clients whose ident server names the user; summond asks no ident server",
            ),
            "IDONLY" => svc.e.drop_setting("flags IDONLY: xinetd ignores it without USERID in log_on_success or log_on_failure"),
            "LABELED" => svc.e.refuse(
                "flags LABELED: xinetd runs the server in the client's SELinux context; summond sets no SELinux context",
            ),
            "INTERCEPT" => svc.e.drop_setting(
                "flags INTERCEPT: summond puts no filter process between a wait = yes server and its clients",
            ),
            "NORETRY" => svc.e.drop_setting("flags NORETRY: summond does not retry a failed fork either"),
            other => svc.e.drop_setting(format!("flags {other}: not an xinetd flag")),
        }
    }
    svc.carry("flags");
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
    fn addresses_are_read_as_xinetd_reads_them() {
        let one = |w: &str| address_items(w);
        assert_eq!(one("10.0.0.0"), ["10.0.0.0/8"]);
        assert_eq!(one("192.168.1.0"), ["192.168.1.0/24"]);
        assert_eq!(one("10.1.0.3"), ["10.1.0.3/32"], "only zeros at the right");
        assert_eq!(one("0.0.0.0"), ["0.0.0.0/0"]);
        assert_eq!(one("10.1.2.3/16"), ["10.1.0.0/16"]);
        assert_eq!(one("192.168.1.{4,5}"), ["192.168.1.4/32", "192.168.1.5/32"]);
        assert_eq!(one("10.{1,2}"), ["10.1.0.0/16", "10.2.0.0/16"]);
        assert_eq!(one("2001:db8::1"), ["2001:db8::1/128"]);
        assert_eq!(one("localhost"), ["127.0.0.1/32", "::1/128"]);
        for name in [
            "host.example",
            ".example.com",
            "10.1",
            "loopnet",
            "1.2.{3,x}",
        ] {
            assert_eq!(one(name), [format!("?{name}")], "{name}");
        }
    }

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
