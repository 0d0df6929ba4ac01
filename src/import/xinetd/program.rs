//! server, server_args, flags NAMEINARGS, redirect, an internal service,
//! libwrap and tcpd: the `exec` argv, and the tcp_wrappers rules that
//! may refuse the service.

use super::super::{internal_exec, list, wrappers};
use super::{Shape, Svc};

/// server, server_args, flags NAMEINARGS, redirect, libwrap, and the
/// tcp_wrappers check xinetd makes itself: `exec`. False: refused.
pub fn program(svc: &mut Svc, name: &str, shape: &Shape) -> bool {
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
        let Some(exec) = internal_exec(name) else {
            svc.refuse(
                "type",
                format!("xinetd's internal `{name}` has no summond equivalent"),
            );
            return false;
        };
        svc.e.set("exec", exec);
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
