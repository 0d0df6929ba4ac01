//! The environment variables summond itself sets for a child: the
//! socket-activation ones (systemd's LISTEN_*, which summond may also have
//! been started with) and the ones describing a client (systemd's REMOTE_*,
//! ucspi-tcp's TCP*). Here, not in `spawn` or `config`, so both can know
//! them without knowing each other.

use std::ffi::CString;
use std::fmt;

/// Variables of the socket-activation protocols that summond may itself
/// have been started with; a child must never inherit them (SPEC: "those
/// are removed, and set afresh only where this table says").
pub const ACTIVATION_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// The variables that describe an accepted client (systemd's and
/// ucspi-tcp's names).
pub const CONNECTION_ENV: &[&str] = &[
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_UID",
    "REMOTE_GID",
    "REMOTE_PID",
    "PROTO",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
];

/// Every variable summond sets per child: removed from the inherited
/// environment and refused in a service's `env`.
pub fn is_reserved_env(name: &str) -> bool {
    ACTIVATION_ENV.contains(&name) || CONNECTION_ENV.contains(&name)
}

/// Build a `NAME=value` environment string.
pub fn env_var(name: &str, value: impl fmt::Display) -> CString {
    CString::new(format!("{name}={value}")).expect("variable names and numbers contain no NUL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_and_connection_vars_are_reserved() {
        for v in ACTIVATION_ENV.iter().chain(CONNECTION_ENV) {
            assert!(is_reserved_env(v));
        }
        assert!(!is_reserved_env("PATH"));
    }
}
