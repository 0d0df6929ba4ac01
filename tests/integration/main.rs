//! Integration tests: the real `summond` binary, configs generated per
//! test, real sockets on loopback ports picked at run time.

mod config_errors;
mod lifecycle;
mod modes;
mod unix_sockets;
mod util;
