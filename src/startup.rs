//! Starting to serve, for `summond` and `summond wrap`: take what a live
//! upgrade or a service manager handed over before anything opens an fd,
//! load the config, then the steps of `serve` in the order the kernel and
//! an upgrade need them (fds, RLIMIT_NOFILE, the pidfile's lock, `-d`,
//! the server, the pid, the parent's report), and run the loop. A failure
//! is a `Failure` tier, never an exit status: `main` maps it (SPEC: 1 at
//! run time, 2 for a bad config or command line), except that a detached
//! daemon's waiting parent exits with the status it is sent.

use std::path::{Path, PathBuf};

use log::warn;
use nix::libc;

use crate::cli::{PassArg, RunArgs, WrapArgs};
use crate::config::{self, Host};
use crate::daemonize::{self, Pidfile};
use crate::logging;
use crate::notify::Notifier;
use crate::server::{RunOptions, Server};
use crate::upgrade;

/// SPEC's exit statuses, for `main` (and a detached daemon's parent,
/// which exits with the status it is sent): a failure at run time, and a
/// bad config or command line.
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;

/// Why summond did not start, or stopped with an error.
#[derive(Debug)]
pub enum Failure {
    /// The config or the command line is not valid; the errors are on
    /// stderr.
    Config,
    /// Startup failed at run time; the message is not shown yet.
    Runtime(String),
    /// Failed at run time, and logged (or shown by the waiting parent).
    Reported,
}

/// `summond wrap`: the same server as a one-service config, in the
/// foreground.
pub fn wrap(w: WrapArgs) -> Result<(), Failure> {
    let incoming = upgrade::take();
    let listen_fds = listen_fds_at_exec(&incoming);
    logging::init(w.log_level, false);
    let incoming = arrived(incoming)?;
    let spec = config::WrapSpec {
        listen: w.listen,
        accept: w.accept,
        pass: w.pass.map(|p| match p {
            PassArg::Stdio => "stdio",
            PassArg::ListenFds => "listen_fds",
        }),
        exec: w.program,
        proxy_protocol: w.proxy_protocol,
        proxy_from: w.proxy_from,
        forward: w.forward,
        idle_stop: w.idle_stop,
    };
    let loaded = match incoming.as_ref().and_then(upgrade::Incoming::config_ran) {
        Some(config) => Ok(config),
        None => config::wrap(&spec, &Host::current()),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", errors.render(stderr_is_terminal()));
            return Err(go_back_or(
                incoming,
                "its command line is not valid",
                Failure::Config,
            ));
        }
    };
    serve(config, false, None, incoming, listen_fds, None)
}

/// Colour in diagnostics only for a person at a terminal.
pub fn stderr_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stderr()).unwrap_or(false)
}

/// What a live upgrade handed this process, if anything; an unusable
/// state sends it back to the previous binary at once.
fn arrived(taken: upgrade::Taken) -> Result<Option<upgrade::Incoming>, Failure> {
    match taken {
        upgrade::Taken::Fresh => Ok(None),
        upgrade::Taken::Ready(incoming) => Ok(Some(*incoming)),
        upgrade::Taken::Unreadable(why, back) => {
            let err =
                back.map_or_else(|| std::io::Error::other("no way back"), |b| b.go_back(&why));
            Err(Failure::Runtime(format!(
                "upgrade: {why}; cannot go back to the previous binary: {err}"
            )))
        }
    }
}

/// This process cannot start: if it is the new image of an upgrade, the
/// previous one takes over again (this returns only if that fails).
fn go_back_or(incoming: Option<upgrade::Incoming>, why: &str, failure: Failure) -> Failure {
    if let Some(incoming) = incoming {
        log::error!("upgrade: the new binary cannot start: {why}; going back to the previous one");
        let err = incoming.go_back(why);
        log::error!("upgrade: cannot go back: {err}");
    }
    failure
}

/// `summond -c FILE`: the file's config (or, back after a failed upgrade,
/// the one this image ran before it) served until stopped.
pub fn run(args: RunArgs) -> Result<(), Failure> {
    // Before anything marks inherited fds close-on-exec: the state names
    // fds that must survive a way back to the previous binary.
    let incoming = upgrade::take();
    let listen_fds = listen_fds_at_exec(&incoming);
    logging::init(args.log_level, args.daemon);
    let incoming = arrived(incoming)?;
    // Absolute, so SIGHUP and the next image of an upgrade read the same
    // files (and a clean stop removes the same pidfile) after `-d`
    // chdirs to /.
    let path = std::fs::canonicalize(&args.config).unwrap_or_else(|_| absolute(&args.config));
    let pidfile = args.pidfile.as_deref().map(absolute);
    let argv = upgrade_argv(&path, pidfile.as_deref(), &args);
    let loaded = match incoming.as_ref().and_then(upgrade::Incoming::config_ran) {
        Some(config) => Ok(config),
        None => config::load(&path, &Host::current()),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", errors.render(stderr_is_terminal()));
            if incoming.is_some() {
                for e in &errors.0 {
                    log::error!("{e}");
                }
            }
            let why = match errors.0.len() {
                1 => errors.0[0].to_string(),
                n => format!("{} (and {} more errors)", errors.0[0], n - 1),
            };
            return Err(go_back_or(incoming, &why, Failure::Config));
        }
    };
    logging::set_format(config.daemon.log_format);
    serve(
        config,
        args.daemon,
        pidfile.as_deref(),
        incoming,
        listen_fds,
        Some(argv),
    )
}

/// The sockets a service manager handed over (LISTEN_PID, LISTEN_FDS),
/// and what was wrong with them, taken before summond opens anything (a
/// log socket, its config, its pidfile, /dev/null): the fds LISTEN_FDS
/// names are then ones open at exec, never one summond opened itself in
/// the place of a closed one (with fd 3 closed, `LISTEN_FDS=1` took the
/// pidfile's fd). Before `-d` forks too: LISTEN_PID names the pid the
/// service manager started, which the daemon no longer has. None for a
/// live upgrade, which hands its own.
fn listen_fds_at_exec(taken: &upgrade::Taken) -> (Vec<socket2::Socket>, Option<String>) {
    if !matches!(taken, upgrade::Taken::Fresh) {
        return (Vec::new(), None);
    }
    daemonize::take_listen_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )
}

/// `path` made absolute against the working directory of now.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The command line the next image of an upgrade runs with: this one's,
/// its paths absolute (it starts in / under `-d`).
fn upgrade_argv(config: &Path, pidfile: Option<&Path>, args: &RunArgs) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut argv: Vec<Vec<u8>> = upgrade::own_argv().into_iter().take(1).collect();
    argv.push(b"-c".to_vec());
    argv.push(config.as_os_str().as_bytes().to_vec());
    if args.daemon {
        argv.push(b"-d".to_vec());
    }
    if let Some(p) = pidfile {
        argv.push(b"--pidfile".to_vec());
        argv.push(p.as_os_str().as_bytes().to_vec());
    }
    if let Some(level) = args.log_level {
        argv.push(b"--log-level".to_vec());
        argv.push(level.as_str().to_ascii_lowercase().into_bytes());
    }
    argv
}

/// Start serving `config` (detached with `daemon`, holding `pidfile`) and
/// run until stopped.
fn serve(
    config: config::Config,
    daemon: bool,
    pidfile: Option<&Path>,
    incoming: Option<upgrade::Incoming>,
    listen_fds: (Vec<socket2::Socket>, Option<String>),
    argv: Option<Vec<Vec<u8>>>,
) -> Result<(), Failure> {
    prepare_fds()?;
    let child_nofile = raise_nofile(incoming.as_ref());
    // The lock first: a second instance must say "already running", not
    // fail to bind the first one's ports. An upgrade holds it already.
    let mut pidfile = lock_pidfile(pidfile, incoming.as_ref())?;
    let handed = sockets_handed_over(incoming.as_ref(), listen_fds);
    let detached = match (daemon, &incoming) {
        (true, None) => Some(
            daemonize::detach().map_err(|e| Failure::Runtime(format!("cannot daemonize: {e}")))?,
        ),
        _ => None,
    };
    let opts = RunOptions {
        child_nofile,
        detached: daemon,
        pidfile: pidfile
            .as_ref()
            .map(|p| (p.raw_fd(), p.path().to_path_buf())),
        resumed: incoming.is_some(),
        fd_base: daemonize::fd_base(),
        argv,
    };
    let started = start_server(config, opts, handed, &mut pidfile);
    let mut server = match incoming {
        Some(incoming) => resume(started, incoming, &mut pidfile)?,
        None => report_start(started, detached)?,
    };
    let result = server.run();
    drop(pidfile);
    result.map_err(log_fatal)
}

/// fds 0, 1 and 2 open (/dev/null where closed), every inherited fd >= 3
/// close-on-exec.
fn prepare_fds() -> Result<(), Failure> {
    daemonize::ensure_std_fds()
        .and_then(|()| daemonize::mark_inherited_cloexec())
        .map_err(|e| Failure::Runtime(format!("cannot prepare file descriptors: {e}")))
}

/// RLIMIT_NOFILE raised as far as it goes; the limit children get back:
/// the one summond started with, or after an upgrade the one the first
/// image started with (it raised the limit already).
fn raise_nofile(incoming: Option<&upgrade::Incoming>) -> Option<libc::rlimit> {
    let raised = match daemonize::raise_nofile() {
        Ok(original) => Some(original),
        Err(e) => {
            warn!("cannot raise RLIMIT_NOFILE: {e}");
            None
        }
    };
    match incoming {
        Some(i) => i.state.child_nofile.map(|(cur, max)| libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        }),
        None => raised,
    }
}

/// The pidfile `--pidfile` names, created and locked, or the one a live
/// upgrade handed over (locked already).
fn lock_pidfile(
    path: Option<&Path>,
    incoming: Option<&upgrade::Incoming>,
) -> Result<Option<Pidfile>, Failure> {
    match incoming.and_then(|i| i.state.pidfile.clone()) {
        // SAFETY: the state names this fd; only the pidfile takes it.
        Some((fd, path)) => Ok(Some(Pidfile::adopt(
            unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            path,
        ))),
        None => path
            .map(Pidfile::acquire)
            .transpose()
            .map_err(|e| Failure::Runtime(e.to_string())),
    }
}

/// The sockets a live upgrade, or else a service manager, handed over.
fn sockets_handed_over(
    incoming: Option<&upgrade::Incoming>,
    listen_fds: (Vec<socket2::Socket>, Option<String>),
) -> Vec<socket2::Socket> {
    match incoming {
        Some(i) => handed_over(&i.state),
        None => {
            let (handed, problem) = listen_fds;
            if let Some(p) = problem {
                warn!("{p}");
            }
            handed
        }
    }
}

/// The server built (its sockets bound) and then its pid written; the
/// service manager's notify socket taken from the environment.
fn start_server(
    config: config::Config,
    opts: RunOptions,
    handed: Vec<socket2::Socket>,
    pidfile: &mut Option<Pidfile>,
) -> Result<Server, String> {
    let (notifier, problems) = Notifier::from_env(
        std::env::var("NOTIFY_SOCKET").ok().as_deref(),
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    for p in problems {
        warn!("{p}");
    }
    Server::new(config, opts, notifier, handed)
        .map_err(|e| e.to_string())
        .and_then(|server| match pidfile.as_mut().map(Pidfile::write_pid) {
            Some(Err(e)) => Err(e.to_string()),
            _ => Ok(server),
        })
}

/// The new image of a live upgrade takes over the previous one's children
/// and clients; one that could not start goes back to the previous image.
fn resume(
    started: Result<Server, String>,
    incoming: upgrade::Incoming,
    pidfile: &mut Option<Pidfile>,
) -> Result<Server, Failure> {
    match started {
        Ok(mut server) => {
            server.resume(incoming);
            Ok(server)
        }
        Err(e) => {
            // The file is the previous image's again: not removed here.
            std::mem::forget(pidfile.take());
            Err(go_back_or(Some(incoming), &e, Failure::Reported))
        }
    }
}

/// A fresh start told to whoever waits for it: the parent of `-d` (which
/// exits 0, or prints the error on the terminal), or `main`.
fn report_start(
    started: Result<Server, String>,
    detached: Option<daemonize::Detached>,
) -> Result<Server, Failure> {
    match (started, detached) {
        (Ok(server), None) => Ok(server),
        (Ok(server), Some(d)) => match d.ready() {
            Ok(()) => Ok(server),
            Err(e) => Err(log_fatal(format!("cannot detach: {e}"))),
        },
        (Err(e), None) => Err(Failure::Runtime(e)),
        (Err(e), Some(d)) => {
            d.failed(EXIT_RUNTIME, &e);
            Err(Failure::Reported)
        }
    }
}

/// A fatal error once serving: stderr may be /dev/null by now, so log it.
fn log_fatal(e: impl std::fmt::Display) -> Failure {
    log::error!("{e}");
    Failure::Reported
}

/// The sockets a live upgrade handed over, as duplicates: the originals
/// stay as the state names them until this image serves, so the way back
/// to the previous binary finds them all.
fn handed_over(state: &upgrade::State) -> Vec<socket2::Socket> {
    state
        .listeners
        .iter()
        .filter_map(|l| match upgrade::dup(l.fd) {
            Ok(fd) => Some(socket2::Socket::from(fd)),
            Err(e) => {
                warn!("upgrade: {} (fd {}): {e}", l.addr, l.fd);
                None
            }
        })
        .collect()
}
