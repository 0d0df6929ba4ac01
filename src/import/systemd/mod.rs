//! systemd socket units: a `.socket` with the `.service` it starts, found
//! beside it (`Service=`, a unit name, else the same name, or
//! `name@.service` with `Accept=yes`). The [Socket] settings become the
//! listen addresses (one fd per `Listen*=` line, in line order) and their
//! options, the [Service] settings the program (its `ExecStart=` split
//! and expanded as systemd does, from `Environment=` and the
//! `EnvironmentFile=`s read at import) and its credentials. Every key of
//! every section is named in the output: carried over, or not with the
//! reason; a setting whose loss would run the program wider open than
//! the unit (DynamicUser=, a User= unknown here, an environment file the
//! importer may not read whose variables ExecStart uses ...) refuses the
//! service, written commented out with every reason.
//!
//! - `unit.rs`: the unit-file syntax (sections, comments, continuations).
//! - `exec.rs`: a command line as an argv: prefixes, quoting, specifiers,
//!   `$VAR`.
//! - `envfile.rs`: `EnvironmentFile=`, read only where every user may.
//! - `socket.rs`: the [Socket] section; `service.rs`: the [Service]
//!   section; `conditions.rs`: `Condition*=` evaluated at import.
//! - `keys.rs`: what the keys map to, and why the others are not carried.
//! - `dropins.rs`: the drop-ins, overrides and masks systemd would apply,
//!   which refuse the unit (the importer reads none of them).
//! - here: the shape: read the pair, build the `Entry`, name every key.

mod conditions;
mod dropins;
mod envfile;
mod exec;
mod keys;
mod service;
mod socket;
mod unit;

use std::path::{Path, PathBuf};

use unit::{err, parse_unit, Section, Unit};

use super::{Entry, ImportError};

/// Which of the two files a key is in.
#[derive(Clone, Copy, PartialEq)]
enum File {
    Socket,
    Service,
}

/// An import in progress: the entry and the keys already named in it
/// (carried, dropped with a reason of their own, or refused).
struct Import {
    e: Entry,
    named: Vec<(File, String, String)>,
    /// Some address is TCP or UDP (which IP access rules are about).
    listens_on_ip: bool,
}

impl Import {
    fn mark(&mut self, file: File, section: &str, key: &str) {
        self.named
            .push((file, section.to_string(), key.to_string()));
    }

    /// `key` is carried over by the keys written.
    fn carry(&mut self, file: File, section: &str, key: &str) {
        self.e.carry(key);
        self.mark(file, section, key);
    }

    /// `key` is not carried over, for the reason in `text`
    /// ("Key=value: why").
    fn drop_key(&mut self, file: File, section: &str, key: &str, text: String) {
        self.e.drop_setting(text);
        self.mark(file, section, key);
    }

    /// `key` refuses the service: named by the reason (`Key=value: why`)
    /// the service is written commented out for, as the xinetd importer
    /// names its refusing settings.
    fn refuse(&mut self, file: File, section: &str, key: &str, why: String) {
        self.e.refuse(why);
        self.mark(file, section, key);
    }

    /// IPAddressAllow=/IPAddressDeny= (in [Socket] or [Service]): on a
    /// service listening on IP they restrict who may connect, which
    /// summond's allow/deny cannot carry as they are: refused; otherwise
    /// the program's own sandbox: a comment.
    fn access_keys(&mut self, file: File, section: &str, sec: &Section) {
        for k in keys::ACCESS {
            let Some(v) = sec.last(k) else { continue };
            if self.listens_on_ip {
                let why = format!(
                    "{k}={v}: restricts which addresses may reach the program, which \
                     summond's allow/deny do only for accepted connections: write them by hand"
                );
                self.refuse(file, section, k, why);
            } else {
                let why = format!(
                    "{k}={v}: the program's own IP sandbox (it listens on no IP address \
                     here); summond has no home for it: the program runs without it"
                );
                self.drop_key(file, section, k, why);
            }
        }
    }

    fn is_named(&self, file: File, section: &str, key: &str) -> bool {
        self.named
            .iter()
            .any(|(f, s, k)| *f == file && s == section && k == key)
    }

    /// Every key of `unit` not named yet, as not carried over with the
    /// reason the key table gives.
    fn name_the_rest(&mut self, file: File, unit: &Unit) {
        for (name, section) in &unit.sections {
            for key in section.keys() {
                if self.is_named(file, name, key) {
                    continue;
                }
                let values: Vec<&str> = section
                    .entries
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .collect();
                let why = if section.all(key).is_empty() {
                    "an empty assignment, which resets the setting to systemd's default"
                } else {
                    keys::reason(key)
                };
                let text = format!("{key}={}: {why}", values.join(" "));
                self.drop_key(file, name, key, text);
            }
        }
    }
}

/// A systemd boolean.
fn yes(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.as_str(), "yes" | "true" | "1" | "on" | "y" | "t"))
}

/// Where the unit lives and what that decides.
struct Names {
    /// The socket unit's file name (`ssh.socket`).
    socket_unit: String,
    /// Its name without `.socket`: the service's name.
    base: String,
    /// A user unit (in a `systemd/user` directory): `%t` is the user's
    /// runtime directory.
    user_unit: bool,
    /// `%t`, or why it has no value.
    runtime_dir: Result<String, String>,
}

impl Names {
    fn of(path: &Path) -> Names {
        let socket_unit = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("unit.socket")
            .to_string();
        let base = socket_unit.trim_end_matches(".socket").to_string();
        let user_unit = path.ancestors().any(|a| a.ends_with("systemd/user"));
        let runtime_dir = if user_unit {
            match std::env::var("XDG_RUNTIME_DIR") {
                Ok(d) if d.starts_with('/') => Ok(d),
                _ => Err(
                    "a user unit's %t is $XDG_RUNTIME_DIR, which is not set for the \
                          import (run it as the user, in their session)"
                        .to_string(),
                ),
            }
        } else {
            Ok("/run".to_string())
        };
        Names {
            socket_unit,
            base,
            user_unit,
            runtime_dir,
        }
    }

    /// The specifiers of the unit named `unit_name` (`per_connection`:
    /// an `Accept=yes` service, whose instance systemd names after each
    /// connection).
    fn specifiers<'a>(&'a self, unit_name: &'a str, per_connection: bool) -> exec::Specifiers<'a> {
        let instance = if per_connection {
            Err("with Accept=yes systemd names an instance after each connection, and summond has no such name")
        } else {
            match unit_name.split_once('@') {
                Some((_, rest)) if rest.starts_with('.') => {
                    Err("a template's instance is named when it is started")
                }
                Some((_, rest)) => Ok(rest.rsplit_once('.').map_or(rest, |(i, _)| i)),
                None => Ok(""),
            }
        };
        exec::Specifiers {
            unit_name,
            instance,
            runtime_dir: self.runtime_dir.as_deref().map_err(String::as_str),
            user_unit: self.user_unit,
        }
    }
}

/// Why a unit file is not read: every key of a unit is printed, and the
/// import runs as root.
pub const NOT_EVERY_USER: &str = "not read: a unit file is printed key by key, and this one (or \
     a directory above it) is not readable by every user; the importer runs as root and \
     copies only what every user may read";

pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, Vec<ImportError>> {
    parse_with(path, text, |p| {
        let input = super::read_input(p)?;
        if input.every_user {
            Ok(input.text)
        } else {
            Err(std::io::Error::other(NOT_EVERY_USER))
        }
    })
}

/// `parse`, with the service unit read by `read_service` (the fuzzer
/// supplies it instead of the filesystem).
pub fn parse_with(
    path: &Path,
    text: &str,
    read_service: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Vec<Entry>, Vec<ImportError>> {
    let socket_unit = parse_unit(path, text)?;
    let names = Names::of(path);
    let search: Vec<PathBuf> = if names.user_unit {
        Vec::new()
    } else {
        dropins::SYSTEM_UNIT_DIRS
            .iter()
            .map(PathBuf::from)
            .collect()
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut changed = dropins::changes(dir, &names.socket_unit, &search);
    let sock = socket_unit.section("Socket");
    let accept = yes(sock.last("Accept"));
    let mut im = Import {
        e: Entry {
            name: names.base.clone(),
            origin: format!("{} and its service", path.display()),
            ..Entry::default()
        },
        named: Vec::new(),
        listens_on_ip: false,
    };
    socket::listen(&mut im, &sock, &names, accept);
    socket::options(&mut im, &sock, accept);
    im.access_keys(File::Socket, "Socket", &sock);
    conditions::check(&mut im, File::Socket, &socket_unit);
    let service_name = match service_name(&sock, &names, accept) {
        Ok(n) => {
            if sock.last("Service").is_some() {
                im.carry(File::Socket, "Socket", "Service");
            }
            n
        }
        Err(why) => {
            im.refuse(File::Socket, "Socket", "Service", why);
            im.name_the_rest(File::Socket, &socket_unit);
            return Ok(vec![im.e]);
        }
    };
    changed.extend(dropins::changes(dir, &service_name, &search));
    if !changed.is_empty() {
        im.e.refuse(format!(
            "systemd changes the units with {}, which the importer does not read: copy the \
             units with those changes merged into a directory and import from there",
            changed.join(", ")
        ));
    }
    let service_path: PathBuf = path.with_file_name(&service_name);
    let service_text = read_service(&service_path).map_err(|x| {
        vec![err(
            &service_path,
            None,
            format!("cannot read the socket's service: {x}"),
        )]
    })?;
    let service_unit = parse_unit(&service_path, &service_text)?;
    let spec = names.specifiers(&service_name, accept);
    service::apply(&mut im, &service_unit.section("Service"), &spec, accept);
    conditions::check(&mut im, File::Service, &service_unit);
    im.name_the_rest(File::Socket, &socket_unit);
    im.name_the_rest(File::Service, &service_unit);
    Ok(vec![im.e])
}

/// The service unit the socket starts: `Service=`, which must be a unit
/// name (never a path: the importer reads the file beside the socket),
/// else the socket's own name.
fn service_name(sock: &Section, names: &Names, accept: bool) -> Result<String, String> {
    let Some(name) = sock.last("Service") else {
        let template = if accept { "@" } else { "" };
        return Ok(format!("{}{template}.service", names.base));
    };
    if accept {
        return Err(format!(
            "Service={name}: systemd refuses Service= with Accept=yes (each connection \
             starts an instance of {}@.service)",
            names.base
        ));
    }
    let valid = name.len() <= 255
        && name.strip_suffix(".service").is_some_and(|stem| {
            !stem.is_empty()
                && !stem.starts_with(['@', '.', '-'])
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c))
        });
    if valid && !name.contains("@.") {
        Ok(name)
    } else {
        Err(format!(
            "Service={name} is not the name of a service unit (NAME.service, no `/`): \
             not read"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(socket: &str, service: &str) -> Entry {
        let service = service.to_string();
        let mut entries = parse_with(Path::new("/x/t.socket"), socket, |p| {
            assert!(
                p == Path::new("/x/t.service") || p == Path::new("/x/t@.service"),
                "only the unit beside it is read: {}",
                p.display()
            );
            Ok(service.clone())
        })
        .unwrap();
        entries.remove(0)
    }

    #[test]
    fn service_is_a_unit_name_never_a_path() {
        let names = Names::of(Path::new("/x/t.socket"));
        let sock = |v: &str| {
            parse_unit(Path::new("t.socket"), &format!("[Socket]\nService={v}\n"))
                .unwrap()
                .section("Socket")
        };
        assert_eq!(
            service_name(&sock("a-b_c.d.service"), &names, false),
            Ok("a-b_c.d.service".into())
        );
        for bad in [
            "../../etc/shadow",
            "/etc/x.service",
            "a/b.service",
            "x.socket",
            ".service",
            "t@.service",
        ] {
            assert!(service_name(&sock(bad), &names, false).is_err(), "{bad}");
        }
        assert!(service_name(&sock("a.service"), &names, true).is_err());
    }

    #[test]
    fn every_key_is_named_once_with_a_reason() {
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\nListenStream=\nListenStream=127.0.0.1:2\nFrob=1\n",
            "[Service]\nExecStart=/bin/cat\nEnvironment=\nUser=root\n",
        );
        assert_eq!(
            e.keys
                .iter()
                .find(|(k, _)| k == "listen")
                .map(|(_, v)| v.as_str()),
            Some("[{ address = \"tcp://127.0.0.1:2\", name = \"t.socket\" }]")
        );
        assert!(e.carried.contains(&"ListenStream".to_string()), "{e:?}");
        assert!(
            e.dropped
                .iter()
                .any(|d| d.starts_with("Frob=1: not a setting the importer knows")),
            "{e:?}"
        );
        assert!(
            e.dropped
                .iter()
                .any(|d| d.starts_with("Environment=: an empty assignment")),
            "{e:?}"
        );
        assert!(
            !e.keys.iter().any(|(k, _)| k == "user"),
            "root is summond's own: {e:?}"
        );
        assert_eq!(e.unusable, None);
        assert!(
            !e.carried.contains(&"Service".to_string()),
            "no Service= key: {e:?}"
        );
    }

    /// With no address served, the address options are named as such,
    /// not as keys the importer does not know.
    #[test]
    fn address_options_without_an_address_have_their_own_reason() {
        let e = import(
            "[Socket]\nListenFIFO=/run/x\nFileDescriptorName=x\nBindIPv6Only=both\nSocketMode=0600\nDirectoryMode=0700\n",
            "[Service]\nExecStart=/bin/cat\n",
        );
        assert!(e.unusable.is_some());
        for d in &e.dropped {
            assert!(!d.contains("not a setting the importer knows"), "{d}");
        }
    }

    fn key<'a>(e: &'a Entry, k: &str) -> Option<&'a str> {
        e.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// The variables systemd sets for the program: the directories of
    /// StateDirectory= and the like are known at import; ones only
    /// systemd knows at run time (CREDENTIALS_DIRECTORY, INVOCATION_ID)
    /// refuse the service, never called "empty, as systemd makes it".
    #[test]
    fn variables_systemd_sets_are_its_values_or_refuse() {
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\n",
            "[Service]\nExecStart=/bin/echo --data $STATE_DIRECTORY ${CACHE_DIRECTORY}/x $LOGS_DIRECTORY $CONFIGURATION_DIRECTORY $RUNTIME_DIRECTORY\n\
             StateDirectory=a b\nCacheDirectory=c\nLogsDirectory=l\nConfigurationDirectory=e\nRuntimeDirectory=r\n",
        );
        assert_eq!(e.unusable, None, "{e:?}");
        assert_eq!(
            key(&e, "exec"),
            Some("[\"/bin/echo\", \"--data\", \"/var/lib/a:/var/lib/b\", \"/var/cache/c/x\", \"/var/log/l\", \"/etc/e\", \"/run/r\"]"),
            "{e:?}"
        );
        for (unit, var) in [
            ("LoadCredential=k:/etc/hostname\n", "CREDENTIALS_DIRECTORY"),
            ("", "INVOCATION_ID"),
        ] {
            let e = import(
                "[Socket]\nListenStream=127.0.0.1:1\n",
                &format!("[Service]\nExecStart=/bin/echo ${{{var}}}/k\n{unit}"),
            );
            let why = e.unusable.as_deref().unwrap_or("");
            assert!(why.contains(var) && why.contains("run time"), "{e:?}");
            assert!(
                !e.dropped.iter().any(|d| d.contains("as systemd makes it")),
                "{e:?}"
            );
        }
    }

    /// UnsetEnvironment= removes the unit's own variable too: it is
    /// neither in env nor in the argv.
    #[test]
    fn unset_environment_applies_to_the_units_variables() {
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\n",
            "[Service]\nEnvironment=A=1 B=2\nUnsetEnvironment=A\nExecStart=/bin/echo ${A} ${B} $USER\nUnsetEnvironment=USER\n",
        );
        assert_eq!(
            key(&e, "exec"),
            Some("[\"/bin/echo\", \"\", \"2\"]"),
            "{e:?}"
        );
        assert_eq!(key(&e, "env"), Some("{ \"B\" = \"2\" }"), "{e:?}");
    }

    /// With StandardInput=socket summond's stdout is the connection too:
    /// a unit that sends stdout elsewhere (its logs to the journal) is
    /// refused, never imported to write them to the client.
    #[test]
    fn stdout_away_from_the_socket_refuses_a_stdio_service() {
        for out in ["journal", "null", "syslog", "file:/var/log/x"] {
            let e = import(
                "[Socket]\nListenStream=127.0.0.1:1\n",
                &format!(
                    "[Service]\nExecStart=/bin/cat\nStandardInput=socket\nStandardOutput={out}\n"
                ),
            );
            let why = e.unusable.as_deref().unwrap_or("");
            assert!(why.contains(&format!("StandardOutput={out}")), "{e:?}");
        }
        for out in ["socket", "inherit"] {
            let e = import(
                "[Socket]\nListenStream=127.0.0.1:1\n",
                &format!(
                    "[Service]\nExecStart=/bin/cat\nStandardInput=socket\nStandardOutput={out}\n"
                ),
            );
            assert_eq!(e.unusable, None, "{e:?}");
        }
    }

    /// systemd's time spans (LimitCPU=1h, RuntimeMaxSec=5min) are
    /// seconds here, so the output passes --check.
    #[test]
    fn time_spans_become_seconds() {
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\nAccept=yes\n",
            "[Service]\nExecStart=/bin/cat\nLimitCPU=1h 30min\nRuntimeMaxSec=1.5s\n",
        );
        assert_eq!(key(&e, "rlimits"), Some("{ cpu = 5400 }"), "{e:?}");
        assert_eq!(key(&e, "max_runtime"), Some("\"2s\""), "{e:?}");
        assert_eq!(service::timespan_secs("90"), Some(90));
        assert_eq!(service::timespan_secs("2d4h"), Some(2 * 86400 + 4 * 3600));
        assert_eq!(service::timespan_secs("infinity"), None);
        assert_eq!(service::timespan_secs("5 parsecs"), None);
    }

    /// BindToDevice= lets only clients reaching the host through that
    /// interface connect: on an IP listener it refuses the service.
    #[test]
    fn bind_to_device_on_ip_refuses() {
        let svc = "[Service]\nExecStart=/bin/cat\n";
        let e = import("[Socket]\nListenStream=0.0.0.0:1\nBindToDevice=lo\n", svc);
        assert!(
            e.unusable
                .as_deref()
                .is_some_and(|u| u.contains("BindToDevice=lo")),
            "{e:?}"
        );
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\nSocketProtocol=sctp\n",
            svc,
        );
        assert!(
            e.unusable
                .as_deref()
                .is_some_and(|u| u.contains("SocketProtocol=sctp")),
            "{e:?}"
        );
        let e = import("[Socket]\nListenStream=/run/t.sock\nBindToDevice=lo\n", svc);
        assert_eq!(e.unusable, None, "{e:?}");
        assert!(e.dropped.iter().any(|d| d.starts_with("BindToDevice=lo:")));
    }

    /// Keys that would make the output fail `summond --check`: a
    /// per-source limit on an Accept=no socket (no effect in systemd
    /// either), numeric User=/Group= (summond takes names).
    #[test]
    fn output_passes_check_for_per_source_limits_and_numeric_ids() {
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\nMaxConnectionsPerSource=4\n",
            "[Service]\nExecStart=/bin/cat\nUser=65534\nGroup=0\nSupplementaryGroups=0\n",
        );
        assert_eq!(key(&e, "max_per_source"), None, "{e:?}");
        assert!(e
            .dropped
            .iter()
            .any(|d| d.starts_with("MaxConnectionsPerSource=4: no effect with Accept=no")));
        let nobody = nix::unistd::User::from_uid(65534.into())
            .unwrap()
            .unwrap()
            .name;
        assert_eq!(key(&e, "user"), Some(format!("\"{nobody}\"").as_str()));
        assert_eq!(key(&e, "group"), Some("\"root\""));
        assert_eq!(key(&e, "extra_groups"), Some("[\"root\"]"));
        let e = import(
            "[Socket]\nListenStream=127.0.0.1:1\n",
            "[Service]\nExecStart=/bin/cat\nUser=0\n",
        );
        assert_eq!(key(&e, "user"), None, "uid 0 is root, summond's own: {e:?}");
    }
}
