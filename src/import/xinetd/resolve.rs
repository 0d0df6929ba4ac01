//! One service's attributes after xinetd's rules: the defaults' lines it
//! takes (only defaults attributes; the lists as they stood when xinetd
//! read the service), set attributes and their `=`, `+=` and `-=`,
//! attributes set once (`bind` and `interface` being one), and the lines
//! xinetd itself ignores, each with why.

use std::collections::{HashMap, HashSet};

use super::access::address_items;
use super::{Attrs, IGNORED_DEFAULTS};

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
pub struct Resolved {
    pub values: HashMap<String, Vec<String>>,
    /// Names in the order first seen: the block's own, then the defaults'.
    pub order: Vec<String>,
    /// Names whose value comes from `defaults` alone.
    pub from_defaults: HashSet<String>,
    /// Each attribute as written (`= a b`, `+= c`), for the comments.
    pub written: HashMap<String, Vec<String>>,
    /// Lines xinetd itself ignores, with why.
    pub ignored: Vec<String>,
    /// defaults' `enabled` (service ids; None: not given) and `disabled`.
    pub enabled: Option<Vec<String>>,
    pub disabled: Vec<String>,
}

impl Resolved {
    pub fn get(&self, k: &str) -> Option<&Vec<String>> {
        self.values.get(k)
    }
    pub fn one(&self, k: &str) -> Option<String> {
        self.values.get(k).and_then(|v| v.first().cloned())
    }
    pub fn words(&self, k: &str) -> Vec<String> {
        self.values.get(k).cloned().unwrap_or_default()
    }
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

pub fn resolve(defaults: &Attrs, seen: usize, own: &Attrs) -> Resolved {
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
