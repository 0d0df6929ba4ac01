//! The `summond` binary: parse the command line, run the chosen command,
//! and map its outcome to SPEC's exit status (0 clean, 1 runtime failure,
//! 2 bad usage or bad config).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use log::warn;

use summond::cli::{self, Command, ImportFormat, PassArg, RunArgs, WrapArgs};
use summond::config::{self, Host};
use summond::control;
use summond::daemonize::{self, Pidfile};
use summond::logging;
use summond::notify::Notifier;
use summond::server::{RunOptions, Server};

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match cli::parse() {
        Command::Check { config } => check(&config),
        Command::Run(args) => run(args),
        Command::Status {
            config,
            control,
            json,
        } => status(&config, control, json),
        Command::Wrap(w) => wrap(w),
        Command::Import { from, files } => import(from, &files),
    }
}

/// `summond import`: the TOML on stdout, or every problem and exit 2.
fn import(from: Option<ImportFormat>, files: &[PathBuf]) -> ExitCode {
    let format = from.map(|f| match f {
        ImportFormat::Inetd => summond::import::Format::Inetd,
        ImportFormat::Xinetd => summond::import::Format::Xinetd,
        ImportFormat::Systemd => summond::import::Format::Systemd,
    });
    match summond::import::import(files, format) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `summond wrap`: the same server as a one-service config, in the
/// foreground.
fn wrap(w: WrapArgs) -> ExitCode {
    logging::init(w.log_level, false);
    let spec = config::WrapSpec {
        listen: w.listen,
        accept: w.accept,
        pass: w.pass.map(|p| match p {
            PassArg::Stdio => "stdio",
            PassArg::ListenFds => "listen_fds",
        }),
        exec: w.program,
    };
    let config = match config::wrap(&spec, &Host::current()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", errors.render(stderr_is_terminal()));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    serve(config, false, None)
}

fn check(path: &Path) -> ExitCode {
    match config::load(path, &Host::current()) {
        Ok(c) => {
            println!("ok: {} services", c.services.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}", errors.render(stderr_is_terminal()));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Colour in diagnostics only for a person at a terminal.
fn stderr_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stderr()).unwrap_or(false)
}

fn fail(code: u8, what: impl std::fmt::Display) -> ExitCode {
    if logging::is_json() {
        log::error!(event = "fatal"; "{what}");
    } else {
        eprintln!("summond: {what}");
    }
    ExitCode::from(code)
}

fn run(args: RunArgs) -> ExitCode {
    logging::init(args.log_level, args.daemon);
    // Absolute, so SIGHUP re-reads the same file after `-d` chdirs to /.
    let path = std::fs::canonicalize(&args.config).unwrap_or(args.config);
    let config = match config::load(&path, &Host::current()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}", errors.render(stderr_is_terminal()));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::set_format(config.daemon.log_format);
    serve(config, args.daemon, args.pidfile.as_deref())
}

/// Start serving `config` (detached with `daemon`, holding `pidfile`) and
/// run until stopped.
fn serve(config: config::Config, daemon: bool, pidfile: Option<&Path>) -> ExitCode {
    if let Err(e) = daemonize::ensure_std_fds().and_then(|()| daemonize::mark_inherited_cloexec()) {
        return fail(
            EXIT_RUNTIME,
            format!("cannot prepare file descriptors: {e}"),
        );
    }
    let child_nofile = match daemonize::raise_nofile() {
        Ok(original) => Some(original),
        Err(e) => {
            warn!("cannot raise RLIMIT_NOFILE: {e}");
            None
        }
    };
    // The lock first: a second instance must say "already running", not
    // fail to bind the first one's ports.
    let mut pidfile = match pidfile.map(Pidfile::acquire).transpose() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_RUNTIME, e),
    };
    let detached = if daemon {
        match daemonize::detach() {
            Ok(d) => Some(d),
            Err(e) => return fail(EXIT_RUNTIME, format!("cannot daemonize: {e}")),
        }
    } else {
        None
    };
    let (notifier, problems) = Notifier::from_env(
        std::env::var("NOTIFY_SOCKET").ok().as_deref(),
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    for p in problems {
        warn!("{p}");
    }
    let (handed, problem) = daemonize::take_listen_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    if let Some(p) = problem {
        warn!("{p}");
    }
    let started = Server::new(config, RunOptions { child_nofile }, notifier, handed)
        .map_err(|e| e.to_string())
        .and_then(|server| match pidfile.as_mut().map(Pidfile::write_pid) {
            Some(Err(e)) => Err(e.to_string()),
            _ => Ok(server),
        });
    let mut server = match (started, detached) {
        (Ok(server), None) => server,
        (Ok(server), Some(d)) => match d.ready() {
            Ok(()) => server,
            Err(e) => return ExitCode::from(log_fatal(format!("cannot detach: {e}"))),
        },
        (Err(e), None) => return fail(EXIT_RUNTIME, e),
        (Err(e), Some(d)) => {
            // The waiting parent prints it on the terminal.
            d.failed(EXIT_RUNTIME, &e);
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = server.run();
    drop(pidfile);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(log_fatal(e)),
    }
}

/// A fatal error once serving: stderr may be /dev/null by now, so log it.
fn log_fatal(e: impl std::fmt::Display) -> u8 {
    log::error!("{e}");
    EXIT_RUNTIME
}

fn status(config: &Path, control_path: Option<PathBuf>, json: bool) -> ExitCode {
    let socket = match control_path {
        Some(p) => p,
        None => match config::control_socket(config) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return fail(
                    EXIT_CONFIG,
                    control::ControlError::NoControlSocket(config.into()),
                )
            }
            Err(errors) => {
                eprintln!("{}", errors.render(stderr_is_terminal()));
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    match control::query(&socket) {
        Ok(status) if json => {
            println!(
                "{}",
                serde_json::to_string(&status).expect("a Status always serialises")
            );
            ExitCode::SUCCESS
        }
        Ok(status) => {
            print!("{}", control::render_table(&status));
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_RUNTIME, e),
    }
}
