//! A reload's config load, off the loop. Reading the config can wait on
//! the world: drop-ins on NFS, user and group names through NSS (LDAP,
//! sssd), programs looked up in PATH. On SIGHUP summond forks a helper
//! that loads and checks the config and writes the result back over a
//! pipe as JSON; the loop serves on meanwhile, and applies the result
//! once the pipe reached EOF and the helper was reaped (so "reload done"
//! is never logged while the helper is still a child). The helper has the
//! running config in its copy of summond's memory, and no other load can
//! change it before this one is applied: a service equal to a running
//! one is sent as that one's index, so the loop decodes only what
//! changed (a 10,000-service file with one change: one spec, not 10,000).
//!
//! A process, not a thread: summond has one thread (STYLE), and the umask
//! around bind(2) in `listener.rs` and the raw set*id calls in `spawn/child.rs`
//! rely on it. After fork(2) in a one-thread process the child may
//! allocate and run the same code as the parent; it only must never
//! return into the loop's frames (dropping the server would remove socket
//! files), so it leaves with `_exit` whatever happens, panics included.
//!
//! The helper is a process an operator can deal with: it is named
//! `summond-load` (comm, as `ps -o comm`, `top` and `pgrep` show it), and
//! it unblocks the signals summond blocks for its signalfd (their
//! dispositions are the defaults already, see `signals.rs`), so the
//! `kill -TERM` of the pid the log names ends it. It is bounded in time:
//! a load still running after `LOAD_WARN_AFTER` is logged, and one still
//! running at `LOAD_LIMIT` is killed and given up (the reload fails; a
//! later SIGHUP starts afresh), so a drop-in on a hung NFS server or a
//! FIFO does not hold every later reload for ever.
//!
//! `unsafe` here: fork(2) and the helper's fd clean-up and `_exit`, below
//! what std offers.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{fork, ForkResult, Pid};

use super::timers::TimerKey;
use crate::config::{self, Config, Host, ServiceSpec};
use crate::stats::ExitText;

/// What the helper writes: the checked config (its services apart), or
/// every error rendered as summond would log it.
#[derive(serde::Serialize, serde::Deserialize)]
enum Outcome {
    Loaded {
        config: Box<Config>,
        services: Vec<Service>,
    },
    Failed(Vec<String>),
    /// The config has errors: each as the log says it, and all as
    /// `summond --check` prints them (for `summond reload`).
    Invalid {
        lines: Vec<String>,
        rendered: String,
    },
}

/// A service of the new config: the running one at this index (equal
/// spec), or a spec of its own.
#[derive(serde::Serialize, serde::Deserialize)]
enum Service {
    Same(usize),
    New(Box<ServiceSpec>),
}

/// The last panic's message in the helper.
static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The fd the result is written to in the helper.
const RESULT_FD: RawFd = 3;

/// A load running this long is logged as slow (docs/faults.md).
pub(super) const LOAD_WARN_AFTER: Duration = Duration::from_secs(30);
/// A load running this long is killed and the reload fails (docs/faults.md).
pub(super) const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// The two bounds above, or for the test suite only (which cannot wait
/// five minutes) what `SUMMOND_TEST_LOAD_LIMITS=WARN_MS,KILL_MS` says.
pub(super) fn load_limits() -> (Duration, Duration) {
    std::env::var("SUMMOND_TEST_LOAD_LIMITS")
        .ok()
        .and_then(|v| {
            let (warn, kill) = v.split_once(',')?;
            Some((
                Duration::from_millis(warn.trim().parse().ok()?),
                Duration::from_millis(kill.trim().parse().ok()?),
            ))
        })
        .unwrap_or((LOAD_WARN_AFTER, LOAD_LIMIT))
}

/// A config load in a helper process.
#[derive(Debug)]
pub(super) struct ConfigLoad {
    pub pid: Pid,
    pipe: File,
    output: Vec<u8>,
    /// The pipe reached EOF: the helper wrote all it will.
    eof: bool,
    /// The helper was reaped (its pid is no longer ours to signal): how
    /// it ended.
    reaped: Option<String>,
    pub started_at: Instant,
    /// The warning and the limit (`LOAD_WARN_AFTER`, `LOAD_LIMIT`), to be
    /// cancelled when the load ends first.
    pub timers: Vec<TimerKey>,
}

/// A finished load: the config, or the lines saying why there is none.
/// The reloads' state in the loop: the load in flight, whether another
/// is owed after it, and the `summond reload` clients waiting for each.
#[derive(Default)]
pub(super) struct Reloads {
    /// A reload's config load running in a helper process.
    pub load: Option<ConfigLoad>,
    /// A SIGHUP or a `summond reload` came while a load ran: the files
    /// may have changed since the helper read them, so load again when
    /// it is done.
    pub again: bool,
    /// Control clients told the outcome of the load in flight.
    pub waiting: Vec<mio::Token>,
    /// Control clients that asked while a load ran: told the outcome of
    /// the next one, which reads the files as they are after their
    /// request (the one in flight may have read them before).
    pub waiting_next: Vec<mio::Token>,
}

pub(super) type Loaded = Result<Config, LoadFailure>;

/// Why a load gave no config: the lines the log says, and for errors in
/// the config, all of them as `summond --check` prints them (file, line
/// and the text pointed at); none for a loader that failed.
#[derive(Debug)]
pub(super) struct LoadFailure {
    pub lines: Vec<String>,
    pub rendered: Option<String>,
}

impl LoadFailure {
    /// A failure of the loading, not of the config.
    pub fn of(why: String) -> LoadFailure {
        LoadFailure {
            lines: vec![why],
            rendered: None,
        }
    }
}

impl ConfigLoad {
    /// Fork a helper that loads `path`; `running` are the specs of the
    /// running services, in order.
    pub fn start(path: &Path, running: &[&ServiceSpec]) -> io::Result<ConfigLoad> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let started_at = Instant::now();
        let parent = nix::unistd::getpid();
        // SAFETY: summond has one thread, so the child starts with no lock
        // held by another; it leaves only through `_exit` (helper_main).
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(read);
                helper_main(path, running, write, parent)
            }
            ForkResult::Parent { child } => Ok(ConfigLoad {
                pid: child,
                pipe: File::from(read),
                output: Vec::new(),
                eof: false,
                reaped: None,
                started_at,
                timers: Vec::new(),
            }),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    /// Read what the helper wrote so far; true once the pipe is at EOF.
    pub fn read_output(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        while !self.eof {
            match self.pipe.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.output.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Nothing more will come.
                Err(_) => self.eof = true,
            }
        }
        self.eof
    }

    pub fn mark_reaped(&mut self, status: &WaitStatus) {
        self.reaped = Some(ExitText(status).to_string());
    }

    /// Both ends done: the helper wrote all and was reaped.
    pub fn is_done(&self) -> bool {
        self.eof && self.reaped.is_some()
    }

    /// The result, once done; `running` as given to `start`.
    pub fn outcome(self, running: &[&ServiceSpec]) -> Loaded {
        // The helper writes why it failed as its result; what is left is
        // a helper killed (the OOM killer, an operator) or a bug.
        let ended = self.reaped.as_deref().unwrap_or("ended");
        let no_result = |why: &str| {
            LoadFailure::of(format!(
                "the config loader (pid {}) {ended} without a result: {why}",
                self.pid
            ))
        };
        match serde_json::from_slice::<Outcome>(&self.output) {
            Ok(Outcome::Loaded { config, services }) => {
                let mut config = *config;
                config.services = services
                    .into_iter()
                    .map(|s| match s {
                        Service::Same(i) => running.get(i).map(|spec| (*spec).clone()),
                        Service::New(spec) => Some(*spec),
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| no_result("it named a service that is not running"))?;
                Ok(config)
            }
            Ok(Outcome::Failed(lines)) => Err(LoadFailure {
                lines,
                rendered: None,
            }),
            Ok(Outcome::Invalid { lines, rendered }) => Err(LoadFailure {
                lines,
                rendered: Some(rendered),
            }),
            Err(_) if self.output.is_empty() => Err(no_result("it wrote nothing")),
            Err(e) => Err(no_result(&format!("what it wrote does not read: {e}"))),
        }
    }

    /// Give up on the load (stop, upgrade): the helper is killed, if it is
    /// still ours to kill.
    pub fn cancel(self) {
        if self.reaped.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    /// Give up on a load that ran `limit` without finishing: the helper is
    /// killed and not waited for (a process in uninterruptible sleep on a
    /// dead NFS server dies only when the server answers; its reap later
    /// matches no load and is dropped). The lines saying why.
    pub fn give_up(self, limit: Duration) -> LoadFailure {
        let pid = self.pid;
        self.cancel();
        LoadFailure::of(format!(
            "the config loader (pid {pid}) did not finish within {}; it was killed",
            HumanSecs(limit)
        ))
    }
}

/// A duration as seconds, milliseconds below one (the tests' short bounds).
pub(super) struct HumanSecs(pub Duration);

impl std::fmt::Display for HumanSecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= Duration::from_secs(1) {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

/// The helper: load, write the outcome, `_exit`. Never returns.
fn helper_main(path: &Path, running: &[&ServiceSpec], write: OwnedFd, parent: Pid) -> ! {
    become_helper(write, parent);
    let code = load_and_send(path, running);
    // SAFETY: _exit runs no destructor of the frames below (the server's).
    unsafe { libc::_exit(code) }
}

/// The helper's own process: killed with summond (or gone if summond
/// went already), named `summond-load`, its signals unblocked, and
/// `write` at RESULT_FD with every fd above it closed.
fn become_helper(write: OwnedFd, parent: Pid) {
    // SAFETY: plain syscalls on fds this process owns; the write end is
    // moved to RESULT_FD and everything above it closed, so the helper
    // holds no listener or client of summond's (a client must see EOF
    // when summond closes it, however long NSS keeps the helper).
    unsafe {
        // A helper stuck on NFS goes when summond goes; if summond went
        // before this took effect, there is nobody to load for.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent.as_raw() {
            libc::_exit(1);
        }
        // Told apart from summond in ps/top/pgrep (comm; the command line
        // stays summond's).
        libc::prctl(libc::PR_SET_NAME, c"summond-load".as_ptr());
        // summond blocks the signals it reads from its signalfd; the mask
        // is inherited, and with it a `kill -TERM` of the helper would stay
        // pending for ever. Their dispositions are the defaults already
        // (signals.rs), SIGPIPE stays ignored (a write to a pipe summond
        // closed is an EPIPE, handled below), and nothing is pending in a
        // new process: an empty mask is all it takes.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if write.as_raw_fd() != RESULT_FD {
            libc::dup2(write.as_raw_fd(), RESULT_FD);
        }
        // close_range(2) is Linux 5.9; before it, one close per open fd.
        if libc::syscall(libc::SYS_close_range, RESULT_FD as u32 + 1, u32::MAX, 0) != 0 {
            for fd in open_fds() {
                if fd > RESULT_FD {
                    libc::close(fd);
                }
            }
        }
    }
    std::mem::forget(write);
}

/// Load, encode and write the outcome to RESULT_FD; the exit status:
/// 0 when a loaded config was sent. Nothing unwinds out of it.
fn load_and_send(path: &Path, running: &[&ServiceSpec]) -> i32 {
    // A panic's message goes into the result, not to a stderr that is
    // /dev/null under -d.
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = PANIC.lock() {
            *last = Some(info.to_string());
        }
    }));
    // Nothing may unwind out of here (into the loop's frames).
    std::panic::catch_unwind(|| {
        let encoded =
            std::panic::catch_unwind(|| load_encoded(path, running)).unwrap_or_else(|_| {
                let message = PANIC.lock().ok().and_then(|mut p| p.take());
                Err(format!(
                    "the config loader panicked: {}",
                    message.as_deref().unwrap_or("no message")
                ))
            });
        // A failure is a result too, so the log says why.
        let (bytes, code) = match encoded {
            Ok(bytes) => (bytes, 0),
            Err(why) => (
                serde_json::to_vec(&Outcome::Failed(vec![why])).unwrap_or_default(),
                1,
            ),
        };
        // SAFETY: RESULT_FD is the pipe's write end, set up above.
        let mut out = unsafe { File::from_raw_fd(RESULT_FD) };
        if out.write_all(&bytes).is_ok() {
            code
        } else {
            1
        }
    })
    .unwrap_or(1)
}

/// Load the config at `path` and encode the outcome for the loop, a
/// service equal to one of `running` as its index; Err: why there is no
/// outcome to send.
fn load_encoded(path: &Path, running: &[&ServiceSpec]) -> Result<Vec<u8>, String> {
    let outcome = match config::load(path, &Host::current()) {
        Ok(mut c) => {
            let by_name: rustc_hash::FxHashMap<&str, usize> = running
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect();
            let services = std::mem::take(&mut c.services)
                .into_iter()
                .map(|spec| match by_name.get(spec.name.as_str()) {
                    Some(&i) if *running[i] == spec => Service::Same(i),
                    _ => Service::New(Box::new(spec)),
                })
                .collect();
            Outcome::Loaded {
                config: Box::new(c),
                services,
            }
        }
        Err(errors) => Outcome::Invalid {
            lines: errors.0.iter().map(|e| e.to_string()).collect(),
            rendered: errors.render(false),
        },
    };
    serde_json::to_vec(&outcome)
        .map_err(|e| format!("the config loader cannot send the config it loaded: {e}"))
}

/// The fds open in this process (without close_range).
fn open_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
