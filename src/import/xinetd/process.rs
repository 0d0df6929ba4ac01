//! The process a service runs: user, group and groups; instances,
//! per_source, cps, max_load, nice, umask and rlimits; env and passenv.

use super::super::{group_name, key, list, s, user_name};
use super::{unreadable, Shape, Svc};

/// user, group, groups. An unknown user or group refuses the service
/// (run as root instead, it would be more than the input allowed).
pub fn identity(svc: &mut Svc, shape: &Shape) {
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
        match user_name(&u) {
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
        match group_name(&g) {
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
pub fn limits(svc: &mut Svc, shape: &Shape) {
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

/// env and passenv.
pub fn environment(svc: &mut Svc) {
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
