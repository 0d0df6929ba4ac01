//! Log output. In the foreground: env_logger to stderr. With `-d`: a small
//! `log::Log` that sends RFC 3164 lines to the local syslog socket
//! (`/dev/log`, datagrams, facility daemon). The level comes from
//! `--log-level` or, without it, `RUST_LOG` (default `info`). Callers
//! format their messages.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use log::kv::{self, Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogFormat;
use crate::timefmt::rfc3339_millis;

/// Where syslog listens; `SUMMOND_SYSLOG_SOCKET` overrides it (containers
/// with a relay elsewhere, and the tests).
const SYSLOG_SOCKET: &str = "/dev/log";
const LOG_DAEMON: u8 = 3 << 3;

fn filter(level: Option<LevelFilter>) -> env_filter::Filter {
    let mut b = env_filter::Builder::new();
    match level {
        Some(l) => {
            b.filter_level(l);
        }
        None => {
            b.filter_level(LevelFilter::Info);
            if let Ok(spec) = std::env::var("RUST_LOG") {
                b.parse(&spec);
            }
        }
    }
    b.build()
}

/// Log to stderr (foreground) or to syslog (`-d`).
pub fn init(level: Option<LevelFilter>, to_syslog: bool) {
    let filter = filter(level);
    log::set_max_level(filter.filter());
    // A second init (tests) keeps the first logger.
    let _ = if to_syslog {
        log::set_boxed_logger(Box::new(Syslog::new(filter)))
    } else {
        let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref());
        let mut builder = env_logger::Builder::new();
        builder
            .filter_level(filter.filter())
            .format(move |buf, record| {
                let from = Drainer(DRAINER.load(Ordering::Relaxed));
                if journal {
                    // journald reads the priority and adds its own time.
                    let level = severity(record.level());
                    writeln!(buf, "<{level}>{from}{}", record.args())
                } else {
                    let (ts, level) = (buf.timestamp_millis(), record.level());
                    writeln!(buf, "{ts} {level:<5} {from}{}", record.args())
                }
            });
        if level.is_none() {
            if let Ok(spec) = std::env::var("RUST_LOG") {
                builder.parse_filters(&spec);
            }
        }
        log::set_boxed_logger(Box::new(Stderr {
            text: builder.build(),
            journal,
        }))
    };
}

/// systemd connects a service's stderr to the journal and says so in
/// `JOURNAL_STREAM=DEVICE:INODE`; it only applies if fd 2 is still that
/// stream (a shell redirect in between makes it someone else's file).
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The fd of the syslog socket, if summond logs there: a process forked
/// to go on alone (a drainer) closes every other fd but must keep it, or
/// its lines are lost.
static SYSLOG_FD: AtomicI32 = AtomicI32::new(-1);

/// The fds the logger writes to, besides stdio.
pub fn fds() -> Option<RawFd> {
    Some(SYSLOG_FD.load(Ordering::Relaxed)).filter(|fd| *fd >= 0)
}

/// Set in a drainer (its pid): every line it logs says it comes from
/// it, not from summond (whose pid syslog lines also carry).
static DRAINER: AtomicU32 = AtomicU32::new(0);

pub fn set_drainer(pid: u32) {
    DRAINER.store(pid, Ordering::Relaxed);
}

/// `drainer pid N: ` before a drainer's lines, nothing before summond's.
struct Drainer(u32);

impl std::fmt::Display for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            pid => write!(f, "drainer pid {pid}: "),
        }
    }
}

/// `[daemon] log_format`, read by the stderr logger for every line, so a
/// reload can switch it. The logger is process-global by the `log`
/// crate's design; this one flag goes with it.
static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// stderr: env_logger's text lines, or one JSON object per line.
struct Stderr {
    text: env_logger::Logger,
    /// stderr is the journal's stream: `<N>` priority prefixes.
    journal: bool,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.text.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.text.matches(record) {
            return;
        }
        if !JSON.load(Ordering::Relaxed) {
            self.text.log(record);
            return;
        }
        let mut line = json_line(record, SystemTime::now());
        if self.journal {
            line.insert_str(0, &format!("<{}>", severity(record.level())));
        }
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        self.text.flush();
    }
}

/// The JSON form of a log line: `ts`, `level`, the event's fields
/// (`event`, `service`, `peer`, `pid`, `status`, `duration_s`, whichever
/// the line has) and `msg`, the text line's message.
pub fn json_line(record: &Record<'_>, now: SystemTime) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), rfc3339_millis(now).into());
    obj.insert(
        "level".into(),
        record.level().as_str().to_ascii_lowercase().into(),
    );
    struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);
    impl<'kvs> VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
            let v = if let Some(i) = value.to_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = value.to_u64() {
                serde_json::Value::from(u)
            } else if let Some(f) = value.to_f64() {
                serde_json::Value::from(f)
            } else if let Some(b) = value.to_bool() {
                serde_json::Value::from(b)
            } else {
                // An empty string is a field the line does not have (a
                // child without a client has no peer).
                let s = value.to_string();
                if s.is_empty() {
                    return Ok(());
                }
                serde_json::Value::from(s)
            };
            self.0.insert(key.as_str().to_string(), v);
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Fields(&mut obj));
    let from = Drainer(DRAINER.load(Ordering::Relaxed));
    obj.insert("msg".into(), format!("{from}{}", record.args()).into());
    serde_json::Value::Object(obj).to_string()
}

struct Syslog {
    filter: env_filter::Filter,
    socket: Option<UnixDatagram>,
    path: PathBuf,
    /// Lines dropped because the syslog daemon's queue was full; reported
    /// with the next line that gets through.
    dropped: AtomicU64,
}

impl Syslog {
    fn new(filter: env_filter::Filter) -> Syslog {
        let path = std::env::var_os("SUMMOND_SYSLOG_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSLOG_SOCKET));
        // Unconnected, addressed per message: a syslog daemon restarting
        // under us costs the lines sent while it is down, nothing more.
        // Non-blocking: the event loop logs, and a slow /dev/log reader
        // must cost lines, never a stalled loop.
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok();
        if let Some(s) = &socket {
            SYSLOG_FD.store(s.as_raw_fd(), Ordering::Relaxed);
        }
        Syslog {
            filter,
            socket,
            path,
            dropped: AtomicU64::new(0),
        }
    }
}

fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Syslog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let Some(socket) = &self.socket else {
            return;
        };
        let pid = std::process::id();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "<{}>summond[{pid}]: {dropped} log lines dropped: the syslog socket was full",
                LOG_DAEMON | severity(Level::Warn),
            );
            if socket.send_to(note.as_bytes(), &self.path).is_ok() {
                self.dropped.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        let line = format!(
            "<{}>summond[{pid}]: {}{}",
            LOG_DAEMON | severity(record.level()),
            Drainer(DRAINER.load(Ordering::Relaxed)),
            record.args()
        );
        if let Err(e) = socket.send_to(line.as_bytes(), &self.path) {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}
