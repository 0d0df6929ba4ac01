//! summond: an inetd-style socket-activation super-server for Linux.
//! The modules are in a library so they can be unit-tested; `main.rs` only
//! picks what to run and maps the result to an exit status.

pub mod access;
pub mod addr;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemonize;
pub mod env;
pub mod footprint;
pub mod handed;
pub mod import;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod queue;
pub mod refusals;
pub mod safe_dir;
pub mod server;
pub mod signals;
pub mod spawn;
pub mod startup;
pub mod stats;
pub mod timefmt;
pub mod upgrade;
