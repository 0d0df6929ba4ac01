//! tcp_wrappers at import: tcpd in front of a program (inetd.conf, or
//! xinetd with NAMEINARGS) is unwrapped to the program it runs, and
//! /etc/hosts.allow and /etc/hosts.deny, which tcpd (and xinetd's own
//! libwrap check) read at each connection and summond never reads, are
//! read once here: a rule that may apply to the daemon makes the service
//! refused, since summond would serve it wider open (fail closed).

use std::path::Path;

/// Where Debian's tcpd looks for a program named without a path
/// (tcpd.c's REAL_DAEMON_DIR).
const REAL_DAEMON_DIR: &str = "/usr/sbin";
const HOSTS_ALLOW: &str = "/etc/hosts.allow";
const HOSTS_DENY: &str = "/etc/hosts.deny";

/// Is `program` tcp_wrappers' tcpd?
pub fn is_tcpd(program: &str) -> bool {
    program.rsplit('/').next() == Some("tcpd")
}

/// What tcpd runs for `argv` (its own argv: argv[0] the program, a bare
/// name meaning REAL_DAEMON_DIR/name): the program's path with the
/// arguments, and the daemon name hosts.allow rules use.
pub fn unwrap(argv: &[String]) -> Option<(Vec<String>, String)> {
    let first = argv.first()?;
    let program = if first.starts_with('/') {
        first.clone()
    } else {
        format!("{REAL_DAEMON_DIR}/{first}")
    };
    let daemon = daemon_name(first);
    let mut out = vec![program];
    out.extend(argv[1..].iter().cloned());
    Some((out, daemon))
}

/// The daemon name of a program path (its last component), as tcpd and
/// xinetd's libwrap check give it to hosts_access.
pub fn daemon_name(program: &str) -> String {
    program.rsplit('/').next().unwrap_or(program).to_string()
}

/// The rules of hosts.allow and hosts.deny that may apply to `daemon`:
/// those whose daemon list names it, `ALL`, or a `daemon@host` form this
/// reading cannot settle (an `EXCEPT` is not evaluated: `ALL EXCEPT x`
/// counts as applying, which can only refuse more). Each as
/// `FILE: rule`.
fn rules_for(daemon: &str, files: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in files {
        for rule in logical_lines(text) {
            let Some((daemons, _)) = rule.split_once(':') else {
                // Not a rule tcpd can use; it logs it and skips it.
                continue;
            };
            let applies = daemons
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
                .any(|w| daemon_matches(w, daemon));
            if applies {
                found.push(format!("{file}: {rule}"));
            }
        }
    }
    found
}

/// Whether the daemon-list pattern `pattern` may name `daemon`, as
/// tcp_wrappers' server_match and string_match decide (case-insensitive;
/// `ALL` and `KNOWN` name every daemon, `.x` is a suffix, `x.` a prefix,
/// and Debian's build takes `*` and `?` as wildcards). A `daemon@host`
/// pattern, which this reading does not settle, counts as applying.
fn daemon_matches(pattern: &str, daemon: &str) -> bool {
    let (tok, daemon) = (pattern.to_ascii_lowercase(), daemon.to_ascii_lowercase());
    if tok == "all" || tok == "known" || tok.contains('@') {
        true
    } else if tok.contains(['*', '?']) {
        glob(tok.as_bytes(), daemon.as_bytes())
    } else if tok.starts_with('.') {
        daemon.len() > tok.len() && daemon.ends_with(&tok)
    } else if tok.ends_with('.') {
        daemon.starts_with(&tok)
    } else {
        tok == daemon
    }
}

/// `*` any run of bytes, `?` one byte.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// hosts_access(5) lines: `#` comments and blank lines skipped, a
/// backslash at the end of a line joining the next.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if current.is_empty() && line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let rule = current.trim().to_string();
                if !rule.is_empty() {
                    out.push(rule);
                }
                current.clear();
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// Read this system's hosts.allow and hosts.deny (a missing file has no
/// rules) and return the rules that may apply to `daemon`, or why they
/// could not be read.
fn system_rules_for(daemon: &str) -> Result<Vec<String>, String> {
    let mut texts = Vec::new();
    for file in [HOSTS_ALLOW, HOSTS_DENY] {
        match std::fs::read_to_string(Path::new(file)) {
            Ok(t) => texts.push((file, t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {file}: {e}")),
        }
    }
    let files: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (*f, t.as_str())).collect();
    Ok(rules_for(daemon, &files))
}

/// Why a service whose clients `daemon`'s hosts.allow/hosts.deny rules
/// restrict is refused, or None when no rule may apply.
pub fn refusal(daemon: &str, checker: &str) -> Option<String> {
    match system_rules_for(daemon) {
        Ok(rules) if rules.is_empty() => None,
        Ok(rules) => Some(format!(
            "{checker} checks each client against hosts.allow and hosts.deny, and these \
             rules may apply to {daemon}: {}; summond does not read those files: write \
             them as allow and deny, then import again without tcpd",
            rules.join("; ")
        )),
        Err(e) => Some(format!(
            "{checker} checks each client against hosts.allow and hosts.deny, and {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpd_runs_its_argv0_from_usr_sbin_when_bare() {
        let argv: Vec<String> = ["in.tftpd", "-s", "/srv/tftp"].map(String::from).to_vec();
        let (exec, daemon) = unwrap(&argv).unwrap();
        assert_eq!(exec, ["/usr/sbin/in.tftpd", "-s", "/srv/tftp"]);
        assert_eq!(daemon, "in.tftpd");
        let (exec, daemon) = unwrap(&["/bin/cat".into(), "-n".into()]).unwrap();
        assert_eq!(
            (exec, daemon.as_str()),
            (vec!["/bin/cat".into(), "-n".into()], "cat")
        );
        assert!(unwrap(&[]).is_none());
        assert!(is_tcpd("/usr/sbin/tcpd") && is_tcpd("tcpd") && !is_tcpd("/bin/cat"));
    }

    #[test]
    fn only_rules_that_may_name_the_daemon_apply() {
        let allow = "# comment\n\nin.fingerd: 10.0.0.0/8\nsshd, in.tftpd : LOCAL\n";
        let deny = "ALL EXCEPT in.fingerd: ALL\nin.telnetd@192.0.2.1: ALL\nportmap: \\\n  ALL\n";
        let files = [("/etc/hosts.allow", allow), ("/etc/hosts.deny", deny)];
        let r = rules_for("in.tftpd", &files);
        assert_eq!(
            r,
            [
                "/etc/hosts.allow: sshd, in.tftpd : LOCAL",
                "/etc/hosts.deny: ALL EXCEPT in.fingerd: ALL",
                "/etc/hosts.deny: in.telnetd@192.0.2.1: ALL",
            ]
        );
        let comments_only = [
            ("/etc/hosts.allow", "# a\n#b: ALL\n"),
            ("/etc/hosts.deny", ""),
        ];
        assert!(rules_for("in.tftpd", &comments_only).is_empty());
        let r = rules_for("portmap", &[("/etc/hosts.deny", "portmap: \\\n  ALL\n")]);
        assert_eq!(r, ["/etc/hosts.deny: portmap:   ALL"]);
    }
    #[test]
    fn daemon_patterns_match_as_tcp_wrappers_matches_them() {
        for rule in [
            "IN.TFTPD: ALL",
            "in.: ALL",
            ".tftpd: ALL",
            "KNOWN: ALL",
            "in.tft*: ALL",
            "in.tftp?: ALL",
            "all: ALL",
            "In.Tftpd@192.0.2.1: ALL",
        ] {
            let r = rules_for("in.tftpd", &[("/etc/hosts.deny", rule)]);
            assert_eq!(r.len(), 1, "{rule} applies to in.tftpd");
        }
        for rule in [
            "in.fingerd: ALL",
            "tftpd: ALL",
            ".in.tftpd: ALL",
            "ssh*: ALL",
            "in.x.: ALL",
        ] {
            let r = rules_for("in.tftpd", &[("/etc/hosts.deny", rule)]);
            assert!(r.is_empty(), "{rule} does not apply to in.tftpd: {r:?}");
        }
    }
}
