//! Telling the service manager how summond is doing: sd_notify(3)'s
//! datagram protocol, written directly (no libsystemd). When summond was
//! started with `NOTIFY_SOCKET` (a socket path, or `@name` for an abstract
//! one) it sends `READY=1` once every socket is bound, `RELOADING=1` with
//! `MONOTONIC_USEC=` and then `READY=1` around a reload, `STOPPING=1` at
//! stop, `STATUS=` lines, and with `WATCHDOG_USEC` a `WATCHDOG=1` at half
//! that interval from the event loop, so a wedged loop is noticed.
//!
//! Sends never block the loop (a non-blocking datagram socket; a full
//! queue loses the message, which the manager tolerates for all but READY,
//! and that one goes first into an empty queue). A malformed
//! `NOTIFY_SOCKET` is reported once and ignored, as sd_notify does.

use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why the environment's notification settings were not used.
#[derive(Debug, PartialEq, Eq)]
pub enum NotifyError {
    /// NOTIFY_SOCKET is neither an absolute path nor `@name`.
    BadSocket(String),
    /// WATCHDOG_USEC is not a positive number of microseconds.
    BadWatchdog(String),
    /// WATCHDOG_USEC (in microseconds) asks for pings more often than
    /// `MIN_WATCHDOG_PING`: pinged at that interval instead.
    ShortWatchdog(u64),
}

/// The shortest interval between two `WATCHDOG=1` pings. Half of
/// WATCHDOG_USEC, as sd_watchdog_enabled(3) suggests, would be every turn
/// of the loop for `WATCHDOG_USEC=1`: a core spent pinging (and, with
/// nobody reading, a log line per failed send). 10 ms keeps every
/// watchdog an event loop can honour working (any WATCHDOG_USEC from 20 ms
/// up is pinged at exactly half) and bounds the pings at 100 a second,
/// which cost nothing measurable; a manager asking for less than 20 ms
/// may then find summond late, which it would be at any interval.
pub const MIN_WATCHDOG_PING: Duration = Duration::from_millis(10);

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::BadSocket(s) => write!(
                f,
                "NOTIFY_SOCKET=\"{s}\" is neither an absolute path nor @name; not notifying"
            ),
            NotifyError::BadWatchdog(s) => write!(
                f,
                "WATCHDOG_USEC=\"{s}\" is not a positive number of microseconds; no watchdog pings"
            ),
            NotifyError::ShortWatchdog(us) => write!(
                f,
                "WATCHDOG_USEC={us}: pinging at half that would be more often than every {ms} ms; pinging every {ms} ms instead",
                ms = MIN_WATCHDOG_PING.as_millis()
            ),
        }
    }
}

/// Where notifications go, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of WATCHDOG_USEC: how often to ping.
    watchdog: Option<Duration>,
    /// The last send failed: the failures that follow are not reported
    /// until one succeeds (a manager that stopped reading fails every
    /// ping).
    failing: std::cell::Cell<bool>,
}

impl Notifier {
    /// Nowhere: not under a service manager.
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            failing: std::cell::Cell::new(false),
        }
    }

    /// From the variables summond was started with (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, `WATCHDOG_PID`). Problems are returned to be
    /// logged; what is usable is used.
    pub fn from_env(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> (Notifier, Vec<NotifyError>) {
        let mut errors = Vec::new();
        let target = notify_socket.and_then(|s| match parse_address(s) {
            Some(addr) => match UnixDatagram::unbound().and_then(|d| {
                d.set_nonblocking(true)?;
                Ok(d)
            }) {
                Ok(d) => Some((d, addr)),
                Err(_) => None,
            },
            None => {
                errors.push(NotifyError::BadSocket(s.to_string()));
                None
            }
        });
        // WATCHDOG_PID names the process the watchdog is for; another
        // process's watchdog is not ours to feed.
        let for_us = watchdog_pid.is_none_or(|p| p.trim() == own_pid.to_string());
        let watchdog = match (watchdog_usec, for_us, &target) {
            (Some(v), true, Some(_)) => match v.trim().parse::<u64>() {
                Ok(us) if us > 0 => {
                    let half = Duration::from_micros(us / 2);
                    if half < MIN_WATCHDOG_PING {
                        errors.push(NotifyError::ShortWatchdog(us));
                    }
                    Some(half.max(MIN_WATCHDOG_PING))
                }
                _ => {
                    errors.push(NotifyError::BadWatchdog(v.to_string()));
                    None
                }
            },
            _ => None,
        };
        let notifier = Notifier {
            target,
            watchdog,
            failing: std::cell::Cell::new(false),
        };
        (notifier, errors)
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`, if a watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one notification (`KEY=value` lines). Never blocks. Returns
    /// the error of the first failure of a run of them, once: the caller
    /// logs it without a line per lost message.
    pub fn send(&self, message: &str) -> Option<io::Error> {
        let (socket, addr) = self.target.as_ref()?;
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => {
                self.failing.set(false);
                None
            }
            Err(e) => (!self.failing.replace(true)).then_some(e),
        }
    }
}

/// `/run/systemd/notify` or `@name` (abstract).
fn parse_address(s: &str) -> Option<SocketAddr> {
    if let Some(name) = s.strip_prefix('@') {
        if name.is_empty() {
            return None;
        }
        return SocketAddr::from_abstract_name(name.as_bytes()).ok();
    }
    if s.starts_with('/') {
        return SocketAddr::from_pathname(s).ok();
    }
    None
}

/// `MONOTONIC_USEC=`: CLOCK_MONOTONIC in microseconds, as systemd wants
/// with RELOADING=1.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(parse_address("/run/systemd/notify").is_some());
        assert!(parse_address("@sd-notify").is_some());
        for bad in ["", "@", "relative/path", "run"] {
            assert!(parse_address(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bad_variables_are_reported_and_ignored() {
        let (n, errors) = Notifier::from_env(Some("notify"), Some("x"), None, 1);
        assert!(!n.is_active());
        assert_eq!(errors, vec![NotifyError::BadSocket("notify".into())]);
        let (n, errors) = Notifier::from_env(Some("@x"), Some("abc"), None, 1);
        assert!(n.is_active() && n.watchdog_interval().is_none());
        assert_eq!(errors, vec![NotifyError::BadWatchdog("abc".into())]);
        let (n, _) = Notifier::from_env(Some("@x"), Some("2000000"), Some("1"), 1);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        for (usec, every) in [
            ("1", 10_000),
            ("19999", 10_000),
            ("20000", 10_000),
            ("20002", 10_001),
        ] {
            let (n, errors) = Notifier::from_env(Some("@x"), Some(usec), None, 1);
            assert_eq!(
                n.watchdog_interval(),
                Some(Duration::from_micros(every)),
                "{usec}"
            );
            let short = usec.parse::<u64>().unwrap() < 20_000;
            assert_eq!(!errors.is_empty(), short, "{usec}: {errors:?}");
        }
        let (n, errors) = Notifier::from_env(Some("@x"), Some("2000000"), Some("2"), 1);
        assert!(
            n.watchdog_interval().is_none() && errors.is_empty(),
            "another pid's watchdog"
        );
    }
}
