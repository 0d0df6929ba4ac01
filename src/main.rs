//! The `summond` binary: parse the command line, run the chosen command,
//! and map its outcome to SPEC's exit status (0 clean, 1 runtime failure,
//! 2 bad usage or bad config).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use summond::cli::{self, Command, ImportFormat, ServiceAction};
use summond::config::{self, Host};
use summond::control;
use summond::logging;
use summond::startup::{self, stderr_is_terminal, Failure, EXIT_CONFIG, EXIT_RUNTIME};

/// How long `summond upgrade` waits: the new binary's check may take 30s.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    match cli::parse() {
        Command::Check { config } => check(&config),
        Command::Run(args) => exit_status(startup::run(args)),
        Command::Status {
            config,
            control,
            json,
        } => status(&config, control, json),
        Command::Upgrade { config, control } => upgrade(&config, control),
        Command::Reload { config, control } => reload(&config, control),
        Command::Service {
            action,
            name,
            config,
            control,
        } => service(action, name, &config, control),
        Command::Wrap(w) => exit_status(startup::wrap(w)),
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

/// A run's outcome as SPEC's exit status, its message shown if not yet.
fn exit_status(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config) => ExitCode::from(EXIT_CONFIG),
        Err(Failure::Runtime(what)) => fail(EXIT_RUNTIME, what),
        Err(Failure::Reported) => ExitCode::from(EXIT_RUNTIME),
    }
}

/// A failure before serving, on stderr (or as a JSON `fatal` event).
fn fail(code: u8, what: impl std::fmt::Display) -> ExitCode {
    if logging::is_json() {
        log::error!(event = "fatal"; "{what}");
    } else {
        eprintln!("summond: {what}");
    }
    ExitCode::from(code)
}

/// The control socket `--control` names, or the config's.
fn control_path(config: &Path, control_path: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    match control_path {
        Some(p) => Ok(p),
        None => match config::control_socket(config) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(fail(
                EXIT_CONFIG,
                control::ControlError::NoControlSocket(config.into()),
            )),
            Err(errors) => {
                eprintln!("{}", errors.render(stderr_is_terminal()));
                Err(ExitCode::from(EXIT_CONFIG))
            }
        },
    }
}

/// `summond upgrade`: 0 once the new binary serves, with its version.
fn upgrade(config: &Path, control_path_arg: Option<PathBuf>) -> ExitCode {
    let socket = match control_path(config, control_path_arg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match control::upgrade(&socket, UPGRADE_TIMEOUT) {
        Ok(status) => {
            println!(
                "upgraded: pid {} serves with summond {} ({} services)",
                status.pid,
                status.version.as_deref().unwrap_or("?"),
                status.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_RUNTIME, e),
    }
}

/// `summond reload`: the outcome of the reload it asked for.
fn reload(config: &Path, control_path_arg: Option<PathBuf>) -> ExitCode {
    let socket = match control_path(config, control_path_arg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let request = control::Request::Reload;
    answered(control::request(&socket, &request, control::RELOAD_TIMEOUT))
}

/// `summond pause|resume|restart NAME`.
fn service(
    action: ServiceAction,
    name: String,
    config: &Path,
    control_path_arg: Option<PathBuf>,
) -> ExitCode {
    let socket = match control_path(config, control_path_arg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let request = match action {
        ServiceAction::Pause => control::Request::Pause(name),
        ServiceAction::Resume => control::Request::Resume(name),
        ServiceAction::Restart => control::Request::Restart(name),
    };
    answered(control::request(&socket, &request, control::CLIENT_TIMEOUT))
}

/// An answer printed, as its exit status: 0 done, 2 a config with
/// errors, 1 anything else.
fn answered(answer: Result<control::Answer, control::ControlError>) -> ExitCode {
    use control::Answer;
    match answer {
        Ok(Answer::Reloaded {
            services,
            added,
            removed,
            changed,
        }) => {
            println!("reloaded: {services} services (+{added} -{removed} ~{changed})");
            ExitCode::SUCCESS
        }
        Ok(Answer::Done(what)) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Ok(Answer::Invalid(errors)) => {
            eprintln!("{errors}");
            eprintln!("summond: reload failed; the old config serves on");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok(Answer::Failed(why)) => fail(EXIT_RUNTIME, why),
        Ok(Answer::Unknown(why) | Answer::BadRequest(why)) => fail(EXIT_RUNTIME, why),
        Err(e) => fail(EXIT_RUNTIME, e),
    }
}

fn status(config: &Path, control_path_arg: Option<PathBuf>, json: bool) -> ExitCode {
    let socket = match control_path(config, control_path_arg) {
        Ok(p) => p,
        Err(code) => return code,
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
