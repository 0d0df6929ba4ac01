//! inetd.conf: `service socktype proto wait[.max] user[.group] server args…`
//! per line, as Debian's update-inetd writes it (a line it disabled starts
//! with `#<off>#`). `internal` servers become summond's internal services;
//! a tcpd wrapper is unwrapped, and said so, when hosts.allow and
//! hosts.deny have no rule that may apply to its program; a service they
//! may restrict is refused (summond does not read them).

use std::path::Path;

use super::{internal_exec, list, s, wrappers, Entry, ImportError, Services};

pub fn parse(path: &Path, text: &str, services: &Services) -> Result<Vec<Entry>, Vec<ImportError>> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        let (disabled, body) = match trimmed.strip_prefix("#<off>#") {
            Some(rest) => (true, rest.trim()),
            None if trimmed.is_empty() || trimmed.starts_with('#') => continue,
            None => (false, trimmed),
        };
        match entry(path, line_no, body, disabled, services) {
            Ok(e) => entries.push(e),
            Err(message) => errors.push(ImportError {
                path: path.to_path_buf(),
                line: Some(line_no),
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn entry(
    path: &Path,
    line_no: usize,
    body: &str,
    disabled: bool,
    services: &Services,
) -> Result<Entry, String> {
    let f: Vec<&str> = body.split_whitespace().collect();
    if f.len() < 6 {
        return Err(format!(
            "expected `service socktype proto wait user server [args]`, found {} fields",
            f.len()
        ));
    }
    let (service, socktype, proto, wait, user, server) = (f[0], f[1], f[2], f[3], f[4], f[5]);
    let args = &f[6..];
    let mut e = Entry {
        name: service.rsplit(':').next().unwrap_or(service).to_string(),
        origin: format!("{}:{line_no}: {body}", path.display()),
        ..Entry::default()
    };
    // `host:service` binds one address (OpenBSD and FreeBSD inetd).
    let (host, service) = match service.rsplit_once(':') {
        Some((h, svc)) => (Some(h), svc),
        None => (None, service),
    };
    let Some(stream) = listen(&mut e, host, service, socktype, proto, services)? else {
        return Ok(e);
    };
    if !accept_mode(&mut e, wait, stream, server)? {
        return Ok(e);
    }
    if !exec(&mut e, service, server, args)? {
        return Ok(e);
    }
    let (u, g) = match user.split_once(['.', ':']) {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    credentials(&mut e, u, g);
    if disabled {
        e.set("disabled", "true".into());
    }
    Ok(e)
}

/// socktype, proto and the service's port (with its host, if given): the
/// `listen` address. The result says whether the socket is a stream;
/// None: refused.
fn listen(
    e: &mut Entry,
    host: Option<&str>,
    service: &str,
    socktype: &str,
    proto: &str,
    services: &Services,
) -> Result<Option<bool>, String> {
    let stream = match socktype {
        "stream" => true,
        "dgram" => false,
        other => {
            e.refuse(format!("socket type {other} is not served by summond"));
            return Ok(None);
        }
    };
    let (family_any, base_proto) = match proto {
        "tcp" | "tcp4" => ("0.0.0.0", "tcp"),
        "udp" | "udp4" => ("0.0.0.0", "udp"),
        "tcp6" => ("[::]", "tcp"),
        "udp6" => ("[::]", "udp"),
        other if other.starts_with("rpc/") => {
            e.refuse("ONC RPC services (portmapper registration) are not supported");
            return Ok(None);
        }
        other => return Err(format!("unknown protocol {other}")),
    };
    if (base_proto == "tcp") != stream {
        return Err(format!("{socktype} does not go with {proto}"));
    }
    let Some(port) = services.port(service, base_proto) else {
        return Err(format!(
            "no port for service {service}/{base_proto} in /etc/services"
        ));
    };
    let addr = match host {
        Some("*") | None => family_any.to_string(),
        Some(h) if h.contains(':') => format!("[{h}]"),
        Some(h) => h.to_string(),
    };
    e.set("listen", s(&format!("{base_proto}://{addr}:{port}")));
    Ok(Some(stream))
}

/// The wait field, `wait` or `nowait` with inetd's `.max` counts:
/// `accept`, `rate` and `max_per_source`. False: refused.
fn accept_mode(e: &mut Entry, wait: &str, stream: bool, server: &str) -> Result<bool, String> {
    let (mode, max) = match wait.split_once('.') {
        Some((m, n)) => (m, Some(n)),
        None => (wait, None),
    };
    match (mode, stream) {
        ("nowait", true) => {}
        ("wait", _) => e.set("accept", "false".into()),
        ("nowait", false) => {
            e.refuse("a datagram service in nowait mode has nothing to accept");
            return Ok(false);
        }
        (other, _) => return Err(format!("wait field must be wait or nowait, found {other}")),
    }
    if let Some(n) = max {
        // inetd's nowait.N: N per minute, then the service is disabled for
        // ten minutes; summond's rate pauses instead.
        match n.split('.').next().and_then(|n| n.parse::<u32>().ok()) {
            Some(n) if n > 0 => e.set("rate", s(&format!("{n}/1m"))),
            _ => e.drop_setting(format!("{wait}: not a count")),
        }
        if let Some(per_source) = n.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()) {
            if mode == "nowait" || server == "internal" {
                e.set("max_per_source", per_source.to_string());
            } else {
                // The child accepts: summond never sees its clients.
                e.drop_setting(format!(
                    "{wait}'s {per_source} per source: with wait the server accepts its own clients, so summond cannot count them"
                ));
            }
        }
    }
    Ok(true)
}

/// server and args: `exec`, an internal service or the program's argv.
/// False: refused.
fn exec(e: &mut Entry, service: &str, server: &str, args: &[&str]) -> Result<bool, String> {
    if server == "internal" {
        if let Some(exec) = internal_exec(service) {
            e.set("exec", exec);
        } else {
            e.refuse(format!(
                "inetd's internal {service} has no summond equivalent"
            ));
            return Ok(false);
        }
    } else {
        match program(e, server, args) {
            Some(argv) => e.set("exec", list(argv.iter().map(String::as_str))),
            None => return Err("tcpd without a program to run".into()),
        }
    }
    Ok(true)
}

/// The argv summond runs: inetd's args are the program's argv (args[0]
/// its name); tcpd in front is unwrapped to the program it runs, a bare
/// name being /usr/sbin's. None: tcpd with nothing to run.
fn program(e: &mut Entry, server: &str, args: &[&str]) -> Option<Vec<String>> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if wrappers::is_tcpd(server) {
        let (argv, daemon) = wrappers::unwrap(&args)?;
        match wrappers::refusal(&daemon, "tcpd") {
            Some(why) => e.refuse(why),
            None => e.drop_setting(format!(
                "{server}: tcp_wrappers' tcpd is unwrapped to the program it runs; hosts.allow \
                 and hosts.deny had no rule for {daemon} at import, and summond never reads \
                 them (write such rules as allow and deny)"
            )),
        }
        return Some(argv);
    }
    if let Some(argv0) = args.first() {
        if wrappers::daemon_name(argv0) != wrappers::daemon_name(server) {
            e.drop_setting(format!(
                "argv[0] {argv0}: summond gives {server} its own path as argv[0]"
            ));
        }
    }
    let mut argv = vec![server.to_string()];
    argv.extend(args.into_iter().skip(1));
    Some(argv)
}

/// user and group: one unknown here refuses the service (run as root
/// instead, it would be more than the input allowed).
fn credentials(e: &mut Entry, user: &str, group: Option<&str>) {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) if user == "root" => {}
        Ok(Some(_)) => e.set("user", s(user)),
        _ => e.refuse(format!(
            "user {user} does not exist here: create it or name another user \
             (the program is not run as root instead)"
        )),
    }
    if let Some(g) = group {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(_)) => e.set("group", s(g)),
            _ => e.refuse(format!(
                "group {g} does not exist here: create it or name another group"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Services {
        Services::parse("daytime 13/tcp\ndaytime 13/udp\ntftp 69/udp\nftp 21/tcp\ndiscard 9/tcp\n")
    }

    #[test]
    fn update_inetd_lines_become_services() {
        let text = "# comment\n\
            daytime\tstream\ttcp\tnowait\troot\tinternal\n\
            #<off># tftp\tdgram\tudp\twait\tnobody\t/usr/sbin/tcpd\t/usr/sbin/in.tftpd /srv/tftp\n\
            discard stream tcp6 nowait.40 nobody.nogroup internal\n\
            127.0.0.1:ftp stream tcp nowait root /usr/sbin/in.ftpd in.ftpd -l\n";
        let e = parse(Path::new("inetd.conf"), text, &db()).unwrap();
        assert_eq!(e.len(), 4);
        let keys = |i: usize| e[i].keys.clone();
        assert!(keys(0).contains(&("listen".into(), "\"tcp://0.0.0.0:13\"".into())));
        assert!(keys(0).contains(&("exec".into(), "[\"internal:daytime\"]".into())));
        assert!(keys(1).contains(&(
            "exec".into(),
            "[\"/usr/sbin/in.tftpd\", \"/srv/tftp\"]".into()
        )));
        assert!(keys(1).contains(&("accept".into(), "false".into())));
        assert!(keys(1).contains(&("disabled".into(), "true".into())));
        assert!(e[1].dropped[0].contains("tcpd"));
        assert!(keys(2).contains(&("listen".into(), "\"tcp://[::]:9\"".into())));
        assert!(keys(2).contains(&("rate".into(), "\"40/1m\"".into())));
        assert!(keys(2).contains(&("group".into(), "\"nogroup\"".into())));
        assert!(keys(3).contains(&("listen".into(), "\"tcp://127.0.0.1:21\"".into())));
        assert!(keys(3).contains(&("exec".into(), "[\"/usr/sbin/in.ftpd\", \"-l\"]".into())));
    }

    #[test]
    fn bad_lines_are_located() {
        let err = parse(Path::new("i.conf"), "ok\nfoo stream\n", &db()).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "i.conf:1: expected `service socktype proto wait user server [args]`, found 1 fields"
        );
        assert_eq!(err[1].line, Some(2));
        let err = parse(
            Path::new("i.conf"),
            "nosuch stream tcp nowait root /bin/cat cat\n",
            &db(),
        )
        .unwrap_err();
        assert!(err[0].message.contains("no port for service nosuch/tcp"));
    }

    #[test]
    fn tcpd_lines_run_the_wrapped_program_and_unknown_users_refuse() {
        let db = Services::parse("tftp 69/udp\nfinger 79/tcp\n");
        let text = "tftp\tdgram\tudp\twait\troot\t/usr/sbin/tcpd\tin.tftpd -s /srv/tftp\n\
                    finger stream tcp nowait no-such-user-here /usr/sbin/tcpd /usr/sbin/in.fingerd\n\
                    tftp dgram udp wait.10.2 root /usr/sbin/in.tftpd in.tftpd\n";
        let e = parse(Path::new("inetd.conf"), text, &db).unwrap();
        assert!(e[0].keys.contains(&(
            "exec".into(),
            "[\"/usr/sbin/in.tftpd\", \"-s\", \"/srv/tftp\"]".into()
        )));
        let why = e[1].unusable.clone().unwrap_or_default();
        assert!(
            why.contains("user no-such-user-here does not exist"),
            "{why}"
        );
        assert!(
            !e[2].keys.iter().any(|(k, _)| k == "max_per_source"),
            "{:?}",
            e[2].keys
        );
        assert!(e[2].dropped.iter().any(|d| d.contains("2 per source")));
    }
}
