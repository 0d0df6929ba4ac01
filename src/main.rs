//! The `summond` binary: parse the command line, run the chosen command,
//! and map its outcome to SPEC's exit status (0 clean, 1 runtime failure,
//! 2 bad usage or bad config).

use std::process::ExitCode;

use log::error;

use summond::cli::{self, Command, RunArgs};
use summond::config::{self, Host};
use summond::server::{RunOptions, Server};
use summond::{daemonize, logging};

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match cli::parse() {
        Command::Check { config } => check(&config),
        Command::Run(args) => run(args),
        Command::Status { .. } => {
            eprintln!(
                "summond: status needs a control socket, which this build does not serve yet"
            );
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path, &Host::current()) {
        Ok(c) => {
            println!("ok: {} services", c.services.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    logging::init(args.log_level);
    let config = match config::load(&args.config, &Host::current()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = daemonize::ensure_std_fds().and_then(|()| daemonize::mark_inherited_cloexec()) {
        error!("cannot prepare file descriptors: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let child_nofile = match daemonize::raise_nofile() {
        Ok(original) => Some(original),
        Err(e) => {
            log::warn!("cannot raise RLIMIT_NOFILE: {e}");
            None
        }
    };
    let mut server = match Server::new(config, RunOptions { child_nofile }) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
