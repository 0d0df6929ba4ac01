//! The environment variables summond itself sets for a child: the
//! socket-activation ones (systemd's LISTEN_*, which summond may also have
//! been started with) and the ones describing a client (systemd's REMOTE_*,
//! ucspi-tcp's TCP*). Here, not in `spawn` or `config`, so both can know
//! them without knowing each other.

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

/// The variables summond sets for one child, as `NAME=value\0` strings in
/// one buffer that is cleared and reused, so a connection's variables cost
/// no allocation once the buffer has grown to fit them.
#[derive(Debug, Default)]
pub struct EnvBlock {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl EnvBlock {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }

    /// Add `name=value`. Names are summond's own and values are numbers,
    /// addresses and config strings, none holding a NUL.
    pub fn push(&mut self, name: &str, value: impl fmt::Display) {
        use std::io::Write;
        self.starts.push(self.bytes.len());
        let _ = write!(self.bytes, "{name}={value}\0");
    }

    /// Each string's address, NUL-terminated; valid until the next change.
    pub fn pointers(&self) -> impl Iterator<Item = *const std::ffi::c_char> + '_ {
        self.starts.iter().map(|s| self.bytes[*s..].as_ptr().cast())
    }

    /// The strings, for tests and logs.
    pub fn strings(&self) -> Vec<String> {
        self.starts
            .iter()
            .map(|s| {
                let rest = &self.bytes[*s..];
                let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            })
            .collect()
    }
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
