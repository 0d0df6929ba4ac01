//! The status socket: its protocol, the `Status` snapshot, the table
//! `summond status` prints, and the client side of it.
//!
//! Protocol: a client connects to the Unix socket (mode 0600) and sends
//! one request line (`Request`: `reload`, `pause NAME`, `resume NAME`,
//! `restart NAME`, `status`), or shuts down its sending side without a
//! word, which asks for the status; summond answers with one JSON
//! document and a newline (the `Status` below, or an `Answer`) and
//! closes. A client that says nothing for `REQUEST_GRACE` is one from
//! before requests existed ("connect, read one JSON line") and gets the
//! status (a client whose request came later asks again); one that began
//! its line has the client timeout to end it. The request is
//! read without blocking, at most `MAX_REQUEST` bytes (a longer one is
//! answered `BadRequest`), so a client can never stall the loop; summond
//! writes without blocking and finishes a long answer when the socket is
//! writable again. This module only renders snapshots and answers; the
//! server fills them in.
//!
//! Who is at either end is the kernel's word (`SO_PEERCRED`, and the
//! `SCM_CREDENTIALS` it attaches to the answer), never the answer's:
//! summond answers only root and its own uid, and a client believes only a
//! socket made and an answer written by root or by its own uid, signals
//! only the pid the kernel names as the writer (and only when the answer
//! names the same one), and reads at most `MAX_ANSWER` bytes within
//! `CLIENT_TIMEOUT`. Whoever can bind the control path (a world-writable
//! directory, a leftover file) then learns nothing and makes no client
//! kill anything.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use serde::{Deserialize, Serialize};
use socket2::Socket;

/// How long `summond status` waits for the whole answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest answer a client reads: the status of 10,000 services is
/// about 2.5 MB. More is not a status, and must not cost unbounded memory.
pub const MAX_ANSWER: usize = 16 << 20;
/// How summond's one-line answer to a client it refuses starts; the
/// reason follows.
pub const REFUSED: &str = "refused: ";

/// The longest request line summond reads (a service name is far
/// shorter).
pub const MAX_REQUEST: usize = 512;
/// A client silent this long gets the status (see the protocol above).
/// Short, so such a client is answered promptly; a request that comes
/// later (its client was not scheduled in time) was not read, only
/// answered with the status, so the client asks again
/// (`REQUEST_ATTEMPTS`).
pub const REQUEST_GRACE: Duration = Duration::from_millis(100);
/// How often a client asks again when a request is answered with the
/// status; a summond from before requests answers every one so.
const REQUEST_ATTEMPTS: usize = 5;
/// How long `summond reload` waits for its answer: summond answers by
/// the config loader's limit (300 s) at the latest.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(310);

/// What a control client asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Reload,
    Pause(String),
    Resume(String),
    Restart(String),
}

impl Request {
    /// Its first word.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Reload => "reload",
            Request::Pause(_) => "pause",
            Request::Resume(_) => "resume",
            Request::Restart(_) => "restart",
        }
    }

    /// The line a client sends.
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::Reload => "reload\n".into(),
            Request::Pause(n) => format!("pause {n}\n"),
            Request::Resume(n) => format!("resume {n}\n"),
            Request::Restart(n) => format!("restart {n}\n"),
        }
    }

    /// A request line (without its newline); Err: what is wrong with it,
    /// bounded and printable.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(line)
            .map_err(|_| "a request is one line of UTF-8".to_string())?
            .trim();
        let (verb, name) = match text.split_once(' ') {
            Some((v, n)) => (v, Some(n.trim())),
            None => (text, None),
        };
        let has_name = name.is_some();
        let name = || match name {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err(format!("{verb} needs a service name")),
        };
        match (verb, has_name) {
            ("status", false) | ("", false) => Ok(Request::Status),
            ("reload", false) => Ok(Request::Reload),
            ("pause", _) => name().map(Request::Pause),
            ("resume", _) => name().map(Request::Resume),
            ("restart", _) => name().map(Request::Restart),
            _ => {
                let shown: String = text.chars().take(64).collect();
                Err(format!("unknown request {:?}", shown))
            }
        }
    }
}

/// summond's answer to a request other than `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The config was reloaded: its services, and how many were added,
    /// removed and changed.
    Reloaded {
        services: u64,
        added: u64,
        removed: u64,
        changed: u64,
    },
    /// The config has errors, as `summond --check` prints them; the old
    /// config serves on.
    Invalid(String),
    /// The request could not be carried out, and why (a reload whose
    /// sockets could not be opened, a stop, an upgrade).
    Failed(String),
    /// Done, as one line to print.
    Done(String),
    /// No service has that name.
    Unknown(String),
    /// The request was not understood.
    BadRequest(String),
}

impl Answer {
    /// Is this an answer to `request`? `Failed` and `BadRequest` answer
    /// any; the rest one kind each.
    pub fn answers(&self, request: &Request) -> bool {
        match self {
            Answer::Failed(_) | Answer::BadRequest(_) => true,
            Answer::Reloaded { .. } | Answer::Invalid(_) => *request == Request::Reload,
            Answer::Done(_) | Answer::Unknown(_) => matches!(
                request,
                Request::Pause(_) | Request::Resume(_) | Request::Restart(_)
            ),
        }
    }

    /// Its kind, as the JSON names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Answer::Reloaded { .. } => "reloaded",
            Answer::Invalid(_) => "invalid",
            Answer::Failed(_) => "failed",
            Answer::Done(_) => "done",
            Answer::Unknown(_) => "unknown",
            Answer::BadRequest(_) => "bad_request",
        }
    }

    pub fn to_json_line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("an Answer always serialises");
        out.push(b'\n');
        out
    }
}

/// Why summond's control socket refuses a client of another uid.
pub fn refusal_reason() -> String {
    format!("only root and uid {} are answered", nix::unistd::geteuid())
}

/// Who the kernel says is at the other end of a control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
}

impl PeerCred {
    /// `SO_PEERCRED` of a connected Unix socket: for a client, the process
    /// that listened on the socket; for summond, the connecting one.
    pub fn of(socket: &impl std::os::fd::AsFd) -> io::Result<PeerCred> {
        let c = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
        Ok(PeerCred {
            pid: c.pid(),
            uid: c.uid(),
        })
    }

    /// SPEC: root and summond's own uid, and nobody else, on either side.
    pub fn is_trusted(&self) -> bool {
        self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub addresses: Vec<String>,
    pub mode: String,
    /// Children of this service running now.
    pub active: u64,
    /// Children started: connections served in accept mode.
    pub served: u64,
    /// Clients turned away by allow/deny or max_per_source.
    pub refused: u64,
    /// fork/pipe failures and failed execs.
    pub spawn_failures: u64,
    /// How the last child ended, e.g. "exited with status 0".
    pub last_exit: Option<String>,
    /// Why new children wait now and for how long, e.g. "rate 50/1s,
    /// 0.12s left" or "crash hold, 8s left"; none when it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The clients refused most (by limits and access rules), most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_refused: Vec<RefusedSource>,
    /// Forward mode: the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendStatus>,
    /// `accept = false`: each long-running child, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// With `proxy_protocol` or `tls`: balancers' health checks closed
    /// without a child (neither served nor refused).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub health_checks: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A long-running child as status shows it: what it said on its
/// NOTIFY_SOCKET.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub pid: u32,
    /// It sent READY=1.
    pub ready: bool,
    /// Its last STATUS= (at most 200 bytes, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = if self.ready { "ready" } else { "not ready" };
        write!(f, "pid {}, {ready}", self.pid)?;
        if let Some(s) = &self.status {
            write!(f, ", {s:?}")?;
        }
        Ok(())
    }
}

/// A forward service's backend, as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// "stopped", "starting", "ready" or "stopping".
    pub state: String,
    pub pid: Option<u32>,
    /// How long its last start took to become ready.
    pub ready_us: Option<u64>,
    /// Relayed connections open now, and ever.
    pub open: u64,
    pub relayed: u64,
    /// Bytes relayed client → backend and back, open connections included.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Its last STATUS= (`ready = "notify"`; at most 200 bytes, no
    /// control characters), as an `accept = false` child's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl std::fmt::Display for BackendStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend {}", self.state)?;
        if let Some(pid) = self.pid {
            write!(f, ", pid {pid}")?;
        }
        if let Some(us) = self.ready_us {
            write!(f, ", ready in {:.1} ms", us as f64 / 1e3)?;
        }
        write!(
            f,
            ", {} open, {} relayed, {} bytes up, {} down",
            self.open, self.relayed, self.bytes_up, self.bytes_down
        )?;
        if let Some(s) = &self.status {
            write!(f, ", {s:?}")?;
        }
        Ok(())
    }
}

/// One client (or client prefix) and how often it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedSource {
    pub source: String,
    pub refused: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: String,
    pub children: u64,
    /// TCP clients of internal services: with `children`, what counts
    /// toward `max_children`.
    #[serde(default)]
    pub internal_clients: u64,
    pub max_children: u64,
    pub services: Vec<ServiceStatus>,
    /// The running binary's version; absent from a summond that cannot
    /// upgrade in place.
    #[serde(default)]
    pub version: Option<String>,
    /// Live upgrades done and failed since summond started, and the last
    /// failure's reason: `summond upgrade` watches these move.
    #[serde(default)]
    pub upgrades: u64,
    #[serde(default)]
    pub upgrade_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade_error: Option<String>,
    /// An upgrade is under way (the new binary is being checked).
    #[serde(default)]
    pub upgrading: bool,
    /// Deadlines the loop holds (`max_runtime`, holds, rate refills, the
    /// SIGKILLs due): they follow what runs now, never what was served.
    #[serde(default)]
    pub pending_timers: u64,
    /// Drainers: processes forked at a live upgrade that relay the TLS
    /// connections open then (rustls's state cannot cross the exec)
    /// until the last ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drainers: Vec<u32>,
}

impl Status {
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a Status always serialises");
        out.push(b'\n');
        out
    }
}

const HEADERS: [&str; 8] = [
    "NAME",
    "ADDRESSES",
    "MODE",
    "ACTIVE",
    "SERVED",
    "REFUSED",
    "FAILED",
    "LAST EXIT",
];

/// A table with a header row and one row per service, columns padded to
/// their widest cell.
/// A status reply being written to a `summond status` client from the
/// event loop: non-blocking, finished over several writable events when
/// the status is larger than the socket buffer.
pub struct Reply {
    socket: Socket,
    bytes: Vec<u8>,
    written: usize,
}

impl Reply {
    /// `bytes`, one JSON line, to be written to `socket` (non-blocking).
    pub fn new(socket: Socket, bytes: Vec<u8>) -> Reply {
        Reply {
            socket,
            bytes,
            written: 0,
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Write what the socket takes; true when the reply is done (or the
    /// client is gone).
    pub fn flush(&mut self) -> bool {
        use std::io::Write;
        while self.written < self.bytes.len() {
            match (&self.socket).write(&self.bytes[self.written..]) {
                Ok(0) => return true,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        true
    }
}

pub fn render_table(status: &Status) -> String {
    let rows: Vec<[String; 8]> = status
        .services
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                match s.addresses.is_empty() {
                    true => "-".into(),
                    false => s.addresses.join(","),
                },
                s.mode.clone(),
                s.active.to_string(),
                s.served.to_string(),
                s.refused.to_string(),
                s.spawn_failures.to_string(),
                s.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i == row.len() - 1 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for pid in &status.drainers {
        out.push_str(&format!(
            "drainer pid {pid}: TLS connections from before an upgrade\n"
        ));
    }
    // Pauses and the most refused clients, under the table where any.
    for svc in &status.services {
        if let Some(b) = &svc.backend {
            out.push_str(&format!("{}: {b}\n", svc.name));
        }
        for i in &svc.instances {
            out.push_str(&format!("{}: {i}\n", svc.name));
        }
        if let Some(p) = &svc.paused {
            out.push_str(&format!("{}: paused ({p})\n", svc.name));
        }
        if !svc.top_refused.is_empty() {
            let list: Vec<String> = svc
                .top_refused
                .iter()
                .map(|r| format!("{} ({})", r.source, r.refused))
                .collect();
            out.push_str(&format!(
                "{}: most refused: {}\n",
                svc.name,
                list.join(", ")
            ));
        }
    }
    out
}

#[derive(Debug)]
pub enum ControlError {
    NoControlSocket(PathBuf),
    Connect(PathBuf, io::Error),
    /// The connect did not end within `CLIENT_TIMEOUT` (a backlog that
    /// stays full).
    ConnectTimeout(PathBuf),
    Read(PathBuf, io::Error),
    BadAnswer(PathBuf, serde_json::Error),
    /// The socket was made by a uid that is neither root nor ours.
    Untrusted(PathBuf, PeerCred),
    /// The answer went on past `MAX_ANSWER` bytes.
    TooLong(PathBuf),
    /// The answer did not end within `CLIENT_TIMEOUT`.
    TooSlow(PathBuf),
    /// More than one process wrote the answer.
    MixedWriters(PathBuf),
    /// summond refused this client, saying why.
    Refused(PathBuf, String),
    /// The summond there answered a request with its status: a version
    /// from before requests.
    TooOld(PathBuf, Option<String>),
    /// The answer is not one to the request sent: the request, and the
    /// answer's kind.
    Mismatch(PathBuf, &'static str, &'static str),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::NoControlSocket(config) => write!(
                f,
                "{} sets no [daemon] control socket; set one or pass --control PATH",
                config.display()
            ),
            ControlError::Connect(p, e) => {
                write!(
                    f,
                    "cannot connect to {}: {e} (is summond running?)",
                    p.display()
                )
            }
            ControlError::ConnectTimeout(p) => write!(
                f,
                "{} did not accept the connection within {}s",
                p.display(),
                CLIENT_TIMEOUT.as_secs()
            ),
            ControlError::Read(p, e) => write!(f, "reading from {}: {e}", p.display()),
            ControlError::Untrusted(p, peer) => write!(
                f,
                "{} is served by pid {} of uid {}, neither root nor uid {}: not asking it",
                p.display(),
                peer.pid,
                peer.uid,
                nix::unistd::geteuid()
            ),
            ControlError::TooLong(p) => write!(
                f,
                "{} answered more than {} MiB: not a status",
                p.display(),
                MAX_ANSWER >> 20
            ),
            ControlError::MixedWriters(p) => write!(
                f,
                "{}: more than one process wrote the answer; not a status",
                p.display()
            ),
            ControlError::TooSlow(p) => write!(
                f,
                "{} did not finish its answer within {}s",
                p.display(),
                CLIENT_TIMEOUT.as_secs()
            ),
            ControlError::TooOld(p, version) => write!(
                f,
                "the summond behind {} (version {}) takes no requests; upgrade it first \
                 (summond upgrade), or send it SIGHUP to reload",
                p.display(),
                version.as_deref().unwrap_or("unknown")
            ),
            ControlError::Mismatch(p, request, kind) => write!(
                f,
                "{} answered `{request}` with a `{kind}` answer, which is not one to it; \
                 not taking it for the outcome",
                p.display()
            ),
            ControlError::Refused(p, why) => {
                write!(f, "{} refused this client: {why}", p.display())
            }
            ControlError::BadAnswer(p, e) => {
                write!(
                    f,
                    "{} answered something that is not a status: {e}",
                    p.display()
                )
            }
        }
    }
}

impl std::error::Error for ControlError {}

/// Why `summond upgrade` did not end with a new binary serving.
#[derive(Debug)]
pub enum UpgradeError {
    Control(ControlError),
    NotSupported(u32),
    AlreadyRunning(u32),
    Signal(u32, nix::errno::Errno),
    /// The answer names another pid than the kernel does for the socket.
    PidMismatch {
        claimed: u32,
        kernel: i32,
    },
    /// The kernel names no process summond could be (0: one in another
    /// pid namespace; 1: init).
    NoPid(i32),
    Failed(String),
    Died(u32),
    TimedOut(u32, Duration),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::Control(e) => e.fmt(f),
            UpgradeError::NotSupported(pid) => write!(
                f,
                "the summond running as pid {pid} is too old to upgrade in place; restart it"
            ),
            UpgradeError::AlreadyRunning(pid) => write!(
                f,
                "an upgrade of pid {pid} is already running; wait for it to finish"
            ),
            UpgradeError::Signal(pid, e) => write!(f, "cannot send SIGUSR2 to pid {pid}: {e}"),
            UpgradeError::PidMismatch { claimed, kernel } => write!(
                f,
                "the control socket's answer names pid {claimed}, but the kernel says pid \
                 {kernel} wrote it: signalling neither (send SIGUSR2 to summond yourself)"
            ),
            UpgradeError::NoPid(pid) => write!(
                f,
                "the kernel names pid {pid} as the writer of the control socket's answer, \
                 which cannot be signalled: send SIGUSR2 to summond yourself"
            ),
            UpgradeError::Failed(why) => {
                write!(f, "upgrade failed, the old binary serves on: {why}")
            }
            UpgradeError::Died(pid) => write!(
                f,
                "pid {pid} exited during the upgrade; see its log and start summond again"
            ),
            UpgradeError::TimedOut(pid, after) => write!(
                f,
                "pid {pid} did not finish its upgrade within {}s; see its log",
                after.as_secs()
            ),
        }
    }
}

impl std::error::Error for UpgradeError {}

/// `summond upgrade`: signal the summond behind `socket` and wait until
/// its new binary serves (its upgrade count moves) or the upgrade fails
/// (its failure count moves), for at most `timeout`. While the binary is
/// being replaced the socket may not answer for a moment; that is retried.
pub fn upgrade(socket: &Path, timeout: Duration) -> Result<Status, UpgradeError> {
    let (before, peer, handle) = ask(socket).map_err(UpgradeError::Control)?;
    // The pid to signal is the kernel's (the answer's writer); the answer
    // only has to agree.
    if peer.pid <= 1 {
        return Err(UpgradeError::NoPid(peer.pid));
    }
    if i64::from(before.pid) != i64::from(peer.pid) {
        return Err(UpgradeError::PidMismatch {
            claimed: before.pid,
            kernel: peer.pid,
        });
    }
    let pid = peer.pid.unsigned_abs();
    if before.version.is_none() {
        return Err(UpgradeError::NotSupported(pid));
    }
    if before.upgrading {
        return Err(UpgradeError::AlreadyRunning(pid));
    }
    signal_writer(peer.pid, handle).map_err(|e| match e {
        // The writer is gone: a process that took its pid is not it.
        nix::errno::Errno::ESRCH => UpgradeError::Died(pid),
        e => UpgradeError::Signal(pid, e),
    })?;
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        // Counters from another process at the path mean nothing.
        let now = match ask(socket) {
            Ok((now, p, _)) if p.pid == peer.pid => now,
            _ => {
                if !alive(pid) {
                    return Err(UpgradeError::Died(pid));
                }
                continue;
            }
        };
        if now.upgrades > before.upgrades {
            return Ok(now);
        }
        if now.upgrade_failures > before.upgrade_failures {
            return Err(UpgradeError::Failed(
                now.last_upgrade_error
                    .unwrap_or_else(|| "see its log".into()),
            ));
        }
    }
    Err(UpgradeError::TimedOut(pid, timeout))
}

/// Is `pid` running (not gone, not a zombie waiting for its parent)?
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the parenthesised command name.
            let state = s.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Ask the summond behind `socket` for its status.
pub fn query(socket: &Path) -> Result<Status, ControlError> {
    ask(socket).map(|(status, _, _)| status)
}

/// The status behind `socket`, and who the kernel says wrote it. The
/// socket must have been made by root or our own uid (`SO_PEERCRED`),
/// and so must every byte of the answer have been written
/// (`SCM_CREDENTIALS`, which the kernel attaches to what a peer sends once
/// `SO_PASSCRED` is set). The writer, not the socket's maker, is the pid
/// that counts: a socket handed by a service manager, or made before `-d`
/// forked, was listened on by another process than the summond answering.
fn ask(socket: &Path) -> Result<(Status, PeerCred, Writer), ControlError> {
    let (text, writer, handle) = exchange(socket, &Request::Status, CLIENT_TIMEOUT)?;
    let status =
        serde_json::from_slice(&text).map_err(|e| ControlError::BadAnswer(socket.into(), e))?;
    Ok((status, writer, handle))
}

/// `summond reload|pause|resume|restart`: send `request` to the summond
/// behind `socket` and wait for its answer, at most `timeout` in all.
/// Answered with the status, the request was not read (it came after
/// `REQUEST_GRACE`, or this summond is from before requests): asked
/// again, `REQUEST_ATTEMPTS` times at most. An answer that is not one
/// to this request is an error, never taken for its outcome.
pub fn request(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Answer, ControlError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (text, _, _) = exchange(socket, request, left)?;
        attempts += 1;
        let e = match serde_json::from_slice::<Answer>(&text) {
            Ok(answer) if answer.answers(request) => return Ok(answer),
            Ok(answer) => {
                return Err(ControlError::Mismatch(
                    socket.into(),
                    request.verb(),
                    answer.kind(),
                ))
            }
            Err(e) => e,
        };
        match serde_json::from_slice::<Status>(&text) {
            Ok(_) if attempts < REQUEST_ATTEMPTS => continue,
            Ok(status) => return Err(ControlError::TooOld(socket.into(), status.version)),
            Err(_) => return Err(ControlError::BadAnswer(socket.into(), e)),
        }
    }
}

/// Send `request` and read the answer (at most `MAX_ANSWER` bytes by
/// `timeout`): its text, who the kernel says wrote it, and a handle on
/// the writer. The socket must have been made by root or our own uid
/// (`SO_PEERCRED`), and so must every byte of the answer have been
/// written (`SCM_CREDENTIALS`, which the kernel attaches to what a peer
/// sends once `SO_PASSCRED` is set). The writer, not the socket's maker,
/// is the pid that counts: a socket handed by a service manager, or made
/// before `-d` forked, was listened on by another process than the
/// summond answering. The status is asked by shutting down the sending
/// side without a word, which a summond from before requests took too.
fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(Vec<u8>, PeerCred, Writer), ControlError> {
    // One bound for the connect, the request and the answer together.
    let deadline = Instant::now() + timeout;
    let (stream, pidfds) = connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => ControlError::ConnectTimeout(socket.into()),
        _ => ControlError::Connect(socket.into(), e),
    })?;
    let maker = PeerCred::of(&stream).map_err(|e| ControlError::Read(socket.into(), e))?;
    if !maker.is_trusted() {
        return Err(ControlError::Untrusted(socket.into(), maker));
    }
    // Not sent (EPIPE) when summond closed at once: it refused this
    // client, and the refusal line is still there to read.
    let _ = match request {
        Request::Status => stream.shutdown(std::net::Shutdown::Write),
        // The line is far below a socket buffer: the write does not wait.
        r => stream.send(r.line().as_bytes()).map(drop),
    };
    let (text, writer, pidfd) =
        read_bounded(&stream, MAX_ANSWER, deadline).map_err(|e| match e {
            Bounded::Io(e) => ControlError::Read(socket.into(), e),
            Bounded::TooLong => ControlError::TooLong(socket.into()),
            Bounded::TooSlow => ControlError::TooSlow(socket.into()),
            Bounded::MixedWriters => ControlError::MixedWriters(socket.into()),
        })?;
    let writer = writer.unwrap_or(maker);
    if !writer.is_trusted() {
        return Err(ControlError::Untrusted(socket.into(), writer));
    }
    let text = text.trim_ascii_end();
    // A one-line refusal: its reason, bounded and printable.
    if let Some(why) = text.strip_prefix(REFUSED.as_bytes()) {
        if why.len() <= 200 && !why.contains(&b'\n') {
            let why = String::from_utf8_lossy(why).escape_debug().to_string();
            return Err(ControlError::Refused(socket.into(), why));
        }
    }
    let handle = match (pidfds, pidfd) {
        (true, Some(fd)) => Writer::Pidfd(fd),
        // The kernel attaches none when the writer has gone by the read.
        (true, None) => Writer::Gone,
        (false, _) => Writer::PidOnly,
    };
    Ok((text.to_vec(), writer, handle))
}

/// A socket connected to `socket`, passing credentials, and whether it
/// passes pidfds too.
fn connect(socket: &Path) -> io::Result<(Socket, bool)> {
    use socket2::{Domain, SockAddr, Type};
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // Before connecting: summond writes its answer at once.
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(io::Error::from)?;
    // And a pidfd of the writer with each read (Linux 6.5): the
    // process itself, which a pid reused meanwhile is not.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a local.
    let pidfds = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    // A Unix stream connect waits while the listener's backlog is
    // full, for at most SO_SNDTIMEO (then EAGAIN).
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    s.connect(&SockAddr::unix(socket)?)?;
    Ok((s, pidfds))
}

/// `SO_PASSPIDFD` and `SCM_PIDFD` (asm-generic values; the libc crate
/// has no names for them yet).
const SO_PASSPIDFD: libc::c_int = 76;
const SCM_PIDFD: libc::c_int = 4;

/// How `summond upgrade` can reach the writer of an answer.
enum Writer {
    /// Its pidfd: the process, never another that took its pid.
    Pidfd(OwnedFd),
    /// The kernel passes pidfds but attached none: the writer had exited.
    Gone,
    /// A kernel before 6.5: its pid is all there is.
    PidOnly,
}

/// SIGUSR2 to the writer: by its pidfd where there is one.
fn signal_writer(pid: i32, writer: Writer) -> Result<(), nix::errno::Errno> {
    match writer {
        Writer::Pidfd(fd) => {
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGUSR2,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            match r {
                0 => Ok(()),
                _ => match nix::errno::Errno::last() {
                    nix::errno::Errno::ENOSYS => kill_usr2(pid),
                    e => Err(e),
                },
            }
        }
        Writer::Gone => Err(nix::errno::Errno::ESRCH),
        Writer::PidOnly => kill_usr2(pid),
    }
}

fn kill_usr2(pid: i32) -> Result<(), nix::errno::Errno> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
}

/// An answer's bytes, its writer by the kernel's word, and the writer's
/// pidfd if the kernel attached one.
type Received = (Vec<u8>, Option<PeerCred>, Option<OwnedFd>);

enum Bounded {
    Io(io::Error),
    TooLong,
    TooSlow,
    MixedWriters,
}

/// Everything `stream` sends until EOF, who the kernel says wrote it, and
/// the writer's pidfd if the kernel attached one:
/// at most `max` bytes, all by `deadline` (a server dripping a byte a
/// second gets no more time than one that is silent), all from one
/// process (a stream read never joins bytes of two writers).
fn read_bounded(stream: &Socket, max: usize, deadline: Instant) -> Result<Received, Bounded> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut writer: Option<PeerCred> = None;
    let mut pidfd: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Bounded::TooSlow);
        }
        stream.set_read_timeout(Some(left)).map_err(Bounded::Io)?;
        let mut cmsg = nix::cmsg_space!(UnixCredentials, std::os::fd::RawFd);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let (n, from) = match recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut from = None;
                // Every message is looked at: each pidfd is ours to close.
                for c in msg.cmsgs().into_iter().flatten() {
                    match c {
                        ControlMessageOwned::ScmCredentials(c) => {
                            from = Some(PeerCred {
                                pid: c.pid(),
                                uid: c.uid(),
                            });
                        }
                        ControlMessageOwned::Unknown(u)
                            if u.cmsg_header.cmsg_level == libc::SOL_SOCKET
                                && u.cmsg_header.cmsg_type == SCM_PIDFD =>
                        {
                            if let Ok(raw) =
                                <[u8; 4]>::try_from(&u.data_bytes[..4.min(u.data_bytes.len())])
                            {
                                // SAFETY: the kernel installed this fd for us.
                                let fd = unsafe { OwnedFd::from_raw_fd(i32::from_ne_bytes(raw)) };
                                // The first read's writer; the rest are the
                                // same process (checked by credentials).
                                pidfd.get_or_insert(fd);
                            }
                        }
                        _ => {}
                    }
                }
                (msg.bytes, from)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Err(Bounded::TooSlow),
            // A summond from before requests closed with the request
            // unread, after its whole answer.
            Err(nix::errno::Errno::ECONNRESET) if !out.is_empty() => {
                return Ok((out, writer, pidfd))
            }
            Err(e) => return Err(Bounded::Io(e.into())),
        };
        if n == 0 {
            return Ok((out, writer, pidfd));
        }
        if out.len() + n > max {
            return Err(Bounded::TooLong);
        }
        match (writer, from) {
            (None, _) => writer = from,
            (Some(w), Some(f)) if w == f => {}
            _ => return Err(Bounded::MixedWriters),
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            pid: 42,
            config: "/etc/summond/summond.toml".into(),
            children: 1,
            internal_clients: 0,
            max_children: 1024,
            services: vec![
                ServiceStatus {
                    name: "echo".into(),
                    addresses: vec!["tcp://127.0.0.1:7007".into()],
                    mode: "accept/stdio".into(),
                    active: 1,
                    served: 120,
                    refused: 3,
                    spawn_failures: 0,
                    last_exit: Some("exited with status 0".into()),
                    paused: None,
                    top_refused: Vec::new(),
                    backend: None,
                    instances: Vec::new(),
                    health_checks: 0,
                },
                ServiceStatus {
                    name: "tftp".into(),
                    addresses: vec!["udp://0.0.0.0:69".into(), "udp://[::]:69".into()],
                    mode: "pass/stdio".into(),
                    active: 0,
                    served: 0,
                    refused: 0,
                    spawn_failures: 2,
                    last_exit: None,
                    paused: Some("crash hold, 8.0s left".into()),
                    top_refused: vec![RefusedSource {
                        source: "10.1.2.0".into(),
                        refused: 12,
                    }],
                    backend: None,
                    instances: Vec::new(),
                    health_checks: 0,
                },
            ],
            version: Some("1.0.0".into()),
            upgrades: 0,
            upgrade_failures: 0,
            last_upgrade_error: None,
            upgrading: false,
            pending_timers: 0,
            drainers: Vec::new(),
        }
    }

    #[test]
    fn table_has_a_header_and_a_row_per_service() {
        let t = render_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[3], "tftp: paused (crash hold, 8.0s left)");
        assert_eq!(lines[4], "tftp: most refused: 10.1.2.0 (12)");
        assert!(lines[0].starts_with("NAME  ADDRESSES"));
        assert!(lines[0].ends_with("LAST EXIT"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &cols[..7],
            [
                "echo",
                "tcp://127.0.0.1:7007",
                "accept/stdio",
                "1",
                "120",
                "3",
                "0"
            ]
        );
        assert!(lines[2].contains("udp://0.0.0.0:69,udp://[::]:69"));
        assert!(lines[2].ends_with(" -"));
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let line = s.to_json_line();
        assert_eq!(*line.last().unwrap(), b'\n');
        let back: Status = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn request_lines_round_trip_and_bad_ones_say_why() {
        for r in [
            Request::Status,
            Request::Reload,
            Request::Pause("web".into()),
            Request::Resume("web".into()),
            Request::Restart("web".into()),
        ] {
            let line = r.line();
            assert_eq!(Request::parse(line.trim_end().as_bytes()), Ok(r));
        }
        assert_eq!(Request::parse(b""), Ok(Request::Status));
        assert_eq!(
            Request::parse(b"pause").unwrap_err(),
            "pause needs a service name"
        );
        assert!(Request::parse(b"reload now").is_err());
        assert!(Request::parse(b"\xff").is_err());
        let long = Request::parse("x".repeat(400).as_bytes()).unwrap_err();
        assert!(long.len() < 100, "{long}");
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Reloaded {
                services: 3,
                added: 1,
                removed: 1,
                changed: 1,
            },
            Answer::Invalid("x.toml:1:1: bad".into()),
            Answer::Unknown("no service is named \"x\"".into()),
        ] {
            let line = a.to_json_line();
            assert_eq!(serde_json::from_slice::<Answer>(&line).unwrap(), a);
            // Never taken for a status by a client.
            assert!(serde_json::from_slice::<Status>(&line).is_err());
        }
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A one-thread server on a fresh socket: `answers[i]` is written to
    /// the i-th client after reading what it sent (its line, or until it
    /// shut down its side). Returns the path and what each client sent.
    fn serve(answers: Vec<String>) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("summond-ctl-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let mut heard = Vec::new();
            for answer in answers {
                let (mut c, _) = listener.accept().unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while c.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                heard.push(String::from_utf8(line).unwrap());
                c.write_all(answer.as_bytes()).unwrap();
            }
            let _ = std::fs::remove_dir_all(&dir);
            heard
        });
        (path, handle)
    }

    const STATUS: &str = "{\"version\":\"9.9\",\"pid\":1,\"config\":\"c\",\"children\":0,\"max_children\":1,\"services\":[]}\n";

    /// A request answered with the status was not read (it came after
    /// the grace): asked again, and the answer to it taken.
    #[test]
    fn a_request_answered_with_the_status_is_asked_again() {
        let done = String::from_utf8(Answer::Done("a: paused".into()).to_json_line()).unwrap();
        let (path, server) = serve(vec![STATUS.into(), done]);
        let answer = request(&path, &Request::Pause("a".into()), CLIENT_TIMEOUT).unwrap();
        assert_eq!(answer, Answer::Done("a: paused".into()));
        assert_eq!(server.join().unwrap(), vec!["pause a", "pause a"]);
    }

    /// Only the status, however often asked: a summond from before
    /// requests.
    #[test]
    fn a_summond_that_only_answers_the_status_is_too_old() {
        let (path, server) = serve(vec![STATUS.into(); REQUEST_ATTEMPTS]);
        let err = request(&path, &Request::Reload, CLIENT_TIMEOUT).unwrap_err();
        assert!(
            matches!(err, ControlError::TooOld(_, Some(ref v)) if v == "9.9"),
            "{err}"
        );
        assert_eq!(server.join().unwrap().len(), REQUEST_ATTEMPTS);
    }

    /// An answer of another request's kind is an error, not an outcome.
    #[test]
    fn an_answer_to_another_request_is_an_error() {
        let done = String::from_utf8(Answer::Done("x: restarted".into()).to_json_line()).unwrap();
        let (path, server) = serve(vec![done]);
        let err = request(&path, &Request::Reload, CLIENT_TIMEOUT).unwrap_err();
        assert!(
            matches!(err, ControlError::Mismatch(_, "reload", "done")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("answered `reload` with a `done` answer"),
            "{err}"
        );
        server.join().unwrap();
        let reloaded = Answer::Reloaded {
            services: 1,
            added: 0,
            removed: 0,
            changed: 0,
        };
        assert!(!reloaded.answers(&Request::Pause("a".into())));
        assert!(Answer::Failed("x".into()).answers(&Request::Restart("a".into())));
    }
}
