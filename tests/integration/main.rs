//! Integration tests: the real `summond` binary, configs generated per
//! test, real sockets on loopback ports picked at run time.

mod access;
mod config_errors;
mod control;
mod daemon;
mod directories;
mod docs;
mod faults;
mod forward;
mod import;
mod import_corpus;
mod import_units;
mod imported_services;
mod include;
mod inheritance;
mod internal;
mod lifecycle;
mod limits;
mod metrics;
mod modes;
mod privileges;
mod proxy;
mod rates;
mod regressions;
mod reload;
mod requests;
mod runtime;
mod sandbox;
mod schema;
mod sockets;
mod status_page;
mod systemd;
mod unix_sockets;
mod upgrade;
mod util;
mod wrap;
