//! Integration tests: the real `summond` binary, configs generated per
//! test, real sockets on loopback ports picked at run time.

mod access;
mod config_errors;
mod lifecycle;
mod limits;
mod modes;
mod reload;
mod unix_sockets;
mod util;
