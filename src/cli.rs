//! argv → `Command`. clap prints usage errors and exits 2, which is what
//! SPEC wants for bad usage.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use log::LevelFilter;

use crate::config::DEFAULT_CONFIG_PATH;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> LevelFilter {
        match l {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "summond",
    version,
    about = "inetd-style socket-activation super-server",
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
struct Args {
    /// The services file
    #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the config, print "ok: N services" and exit
    #[arg(long)]
    check: bool,
    /// Detach and log to syslog
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Write the pid here and hold a lock on it
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// error, warn, info (default), debug, trace; overrides RUST_LOG
    #[arg(long, value_enum, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print one row per service from a running summond
    Status {
        /// Find the control socket in this config's [daemon] control
        #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket (instead of reading the config)
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// One JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Replace the running summond's binary in place, without dropping a
    /// connection; exit 0 once the new binary serves
    Upgrade {
        /// Find the control socket in this config's [daemon] control
        #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket (instead of reading the config)
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Reload the running summond's config and print the outcome: exit 0
    /// once it serves, 2 with the config's errors (the old one serves on)
    Reload {
        /// Find the control socket in this config's [daemon] control
        #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket (instead of reading the config)
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Stop accepting on a service's sockets (clients wait in the backlog;
    /// its children run on) until summond resume
    Pause(ServiceArgs),
    /// Accept on a paused service's sockets again
    Resume(ServiceArgs),
    /// SIGTERM a service's long-running (accept = false) children; the
    /// next client starts them again
    Restart(ServiceArgs),
    /// Serve one program without a config file, in the foreground
    #[command(after_help = "Example: summond wrap -l tcp://127.0.0.1:9000 -- bc -q")]
    Wrap {
        /// An address to listen on (repeatable)
        #[arg(short = 'l', long = "listen", value_name = "ADDR", required = true)]
        listen: Vec<String>,
        /// One child holds the sockets (accept = false) instead of one per connection
        #[arg(long)]
        no_accept: bool,
        /// How the socket reaches the program
        #[arg(long, value_enum, value_name = "HOW")]
        pass: Option<PassArg>,
        /// Every connection starts with a PROXY header (v1, v2 or any)
        #[arg(long, value_name = "VERSION", requires = "proxy_from")]
        proxy_protocol: Option<String>,
        /// A load balancer that may send the header (CIDR, repeatable)
        #[arg(long, value_name = "CIDR", requires = "proxy_protocol")]
        proxy_from: Vec<String>,
        /// Forward mode: PROGRAM listens on ADDR itself (tcp:// or unix://); it is started at the first client and each client is relayed to it
        #[arg(long, value_name = "ADDR")]
        forward: Option<String>,
        /// With --forward: stop the program after this long without a client (e.g. 10m)
        #[arg(long, value_name = "DURATION", requires = "forward")]
        idle_stop: Option<String>,
        /// error, warn, info (default), debug, trace; overrides RUST_LOG
        #[arg(long, value_enum, value_name = "LEVEL")]
        log_level: Option<LogLevel>,
        /// The program and its arguments
        #[arg(last = true, required = true, value_name = "PROGRAM")]
        program: Vec<String>,
    },
    /// Print an inetd.conf, xinetd or systemd .socket configuration as summond TOML
    #[command(after_help = "Example: summond import /etc/xinetd.conf > /etc/summond/summond.toml")]
    Import {
        /// The input's format (detected when not given)
        #[arg(long, value_enum, value_name = "FORMAT")]
        from: Option<ImportFormat>,
        /// The files to read
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// A service of the running summond, and how to reach it.
#[derive(clap::Args, Debug)]
struct ServiceArgs {
    /// The service's name
    #[arg(value_name = "NAME")]
    name: String,
    /// Find the control socket in this config's [daemon] control
    #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The control socket (instead of reading the config)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// What `summond pause|resume|restart` asks of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Pause,
    Resume,
    Restart,
}

/// The formats `summond import` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    Inetd,
    Xinetd,
    Systemd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PassArg {
    Stdio,
    #[value(name = "listen_fds")]
    ListenFds,
}

/// `summond wrap`: one service from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrapArgs {
    pub listen: Vec<String>,
    pub accept: bool,
    pub pass: Option<PassArg>,
    /// `proxy_protocol` and `proxy_from`, checked as the config checks them.
    pub proxy_protocol: Option<String>,
    pub proxy_from: Vec<String>,
    pub log_level: Option<LevelFilter>,
    pub program: Vec<String>,
    /// Forward mode: where the program listens, and its idle_stop.
    pub forward: Option<String>,
    pub idle_stop: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub config: PathBuf,
    pub daemon: bool,
    pub pidfile: Option<PathBuf>,
    pub log_level: Option<LevelFilter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run(RunArgs),
    Check {
        config: PathBuf,
    },
    Status {
        config: PathBuf,
        control: Option<PathBuf>,
        json: bool,
    },
    Upgrade {
        config: PathBuf,
        control: Option<PathBuf>,
    },
    Reload {
        config: PathBuf,
        control: Option<PathBuf>,
    },
    Service {
        action: ServiceAction,
        name: String,
        config: PathBuf,
        control: Option<PathBuf>,
    },
    Wrap(WrapArgs),
    Import {
        from: Option<ImportFormat>,
        files: Vec<PathBuf>,
    },
}

/// The clap definition itself: build.rs writes summond(8) and the shell
/// completions from it, so they always match what the binary accepts.
pub fn command() -> clap::Command {
    Args::command()
}

/// Parse argv; on bad usage clap prints the error and exits 2.
pub fn parse() -> Command {
    from_args(Args::parse())
}

fn from_args(a: Args) -> Command {
    match a.command {
        Some(Sub::Status {
            config,
            control,
            json,
        }) => Command::Status {
            config,
            control,
            json,
        },
        Some(Sub::Upgrade { config, control }) => Command::Upgrade { config, control },
        Some(Sub::Reload { config, control }) => Command::Reload { config, control },
        Some(Sub::Pause(s)) => service(ServiceAction::Pause, s),
        Some(Sub::Resume(s)) => service(ServiceAction::Resume, s),
        Some(Sub::Restart(s)) => service(ServiceAction::Restart, s),
        Some(Sub::Wrap {
            listen,
            no_accept,
            pass,
            proxy_protocol,
            proxy_from,
            forward,
            idle_stop,
            log_level,
            program,
        }) => Command::Wrap(WrapArgs {
            listen,
            accept: !no_accept,
            pass,
            proxy_protocol,
            proxy_from,
            log_level: log_level.map(Into::into),
            program,
            forward,
            idle_stop,
        }),
        Some(Sub::Import { from, files }) => Command::Import { from, files },
        None if a.check => Command::Check { config: a.config },
        None => Command::Run(RunArgs {
            config: a.config,
            daemon: a.daemon,
            pidfile: a.pidfile,
            log_level: a.log_level.map(Into::into),
        }),
    }
}

fn service(action: ServiceAction, s: ServiceArgs) -> Command {
    Command::Service {
        action,
        name: s.name,
        config: s.config,
        control: s.control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_from(args: &[&str]) -> Result<Command, clap::Error> {
        Args::try_parse_from(args).map(from_args)
    }

    #[test]
    fn wrap_takes_addresses_options_and_the_program_after_the_dashes() {
        let w = parse_from(&[
            "summond",
            "wrap",
            "-l",
            "tcp://127.0.0.1:9000",
            "-l",
            "udp://127.0.0.1:9000",
            "--no-accept",
            "--pass",
            "listen_fds",
            "--",
            "bc",
            "-q",
        ])
        .unwrap();
        assert_eq!(
            w,
            Command::Wrap(WrapArgs {
                listen: vec!["tcp://127.0.0.1:9000".into(), "udp://127.0.0.1:9000".into()],
                accept: false,
                pass: Some(PassArg::ListenFds),
                proxy_protocol: None,
                proxy_from: Vec::new(),
                log_level: None,
                program: vec!["bc".into(), "-q".into()],
                forward: None,
                idle_stop: None,
            })
        );
        assert!(
            parse_from(&["summond", "wrap", "--", "bc"]).is_err(),
            "needs -l"
        );
        assert!(
            parse_from(&["summond", "wrap", "-l", "tcp://127.0.0.1:1"]).is_err(),
            "needs a program"
        );
    }

    #[test]
    fn run_with_defaults() {
        assert_eq!(
            parse_from(&["summond"]).unwrap(),
            Command::Run(RunArgs {
                config: PathBuf::from(DEFAULT_CONFIG_PATH),
                daemon: false,
                pidfile: None,
                log_level: None
            })
        );
    }

    #[test]
    fn check_and_flags() {
        assert_eq!(
            parse_from(&["summond", "--check", "-c", "x.toml"]).unwrap(),
            Command::Check {
                config: PathBuf::from("x.toml")
            }
        );
        let Command::Run(r) = parse_from(&[
            "summond",
            "-d",
            "--pidfile",
            "/run/s.pid",
            "--log-level",
            "debug",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(r.daemon);
        assert_eq!(r.log_level, Some(LevelFilter::Debug));
    }

    #[test]
    fn status_subcommand() {
        assert_eq!(
            parse_from(&["summond", "status", "--control", "/run/c.sock", "--json"]).unwrap(),
            Command::Status {
                config: PathBuf::from(DEFAULT_CONFIG_PATH),
                control: Some(PathBuf::from("/run/c.sock")),
                json: true
            }
        );
    }

    #[test]
    fn reload_and_service_subcommands() {
        assert_eq!(
            parse_from(&["summond", "reload", "--control", "/run/c.sock"]).unwrap(),
            Command::Reload {
                config: PathBuf::from(DEFAULT_CONFIG_PATH),
                control: Some(PathBuf::from("/run/c.sock")),
            }
        );
        assert_eq!(
            parse_from(&["summond", "pause", "web", "-c", "s.toml"]).unwrap(),
            Command::Service {
                action: ServiceAction::Pause,
                name: "web".into(),
                config: PathBuf::from("s.toml"),
                control: None,
            }
        );
        assert!(parse_from(&["summond", "restart"]).is_err(), "needs a name");
    }

    #[test]
    fn bad_usage_is_an_error_with_exit_2() {
        let e = parse_from(&["summond", "--log-level", "loud"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(parse_from(&["summond", "--bogus"]).is_err());
    }
}
