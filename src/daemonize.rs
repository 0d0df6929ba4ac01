//! The process around the loop, set up before it starts: make sure fds 0-2
//! exist (so no socket lands on them and a child's "inherit" stderr is
//! real), mark fds inherited from our parent close-on-exec (children must
//! get no fds but their own), raise RLIMIT_NOFILE while remembering the
//! limit we were started with (children get it back), the `-d` ritual, and
//! the locked pidfile.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::libc;

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Put /dev/null on fds 0, 1 and 2: all of them (`replace_open`), or
/// only those that are closed. The copies on 0-2 are inheritable (a
/// child's "inherit" stderr must survive exec).
fn null_onto_std_fds(replace_open: bool) -> io::Result<()> {
    // SAFETY: open, fcntl, dup2 and close on fds 0-2 and one fresh fd we own.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(io::Error::last_os_error());
        }
        for fd in 0..3 {
            if fd == null {
                // It landed in a closed std slot: dup2(fd, fd) would keep
                // CLOEXEC, so clear it instead.
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else if (replace_open || !fd_is_open(fd)) && libc::dup2(null, fd) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
}

/// Open /dev/null onto any of fds 0, 1, 2 that are closed, so no socket
/// lands there and a child's inherited stderr is real.
pub fn ensure_std_fds() -> io::Result<()> {
    null_onto_std_fds(false)
}

/// Set FD_CLOEXEC on every fd >= 3 we inherited, so that no child of ours
/// sees them (a shell or supervisor may have leaked some to us).
pub fn mark_inherited_cloexec() -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only change a descriptor flag; a fd that
        // vanished (the read_dir handle itself) just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// More sockets than this in LISTEN_FDS is garbage, not a configuration.
const MAX_LISTEN_FDS: i32 = 65_536;

/// The sockets a service manager passed, as sd_listen_fds(3) finds them:
/// fds 3, 4, … LISTEN_FDS of them, only when LISTEN_PID is summond's own
/// pid. Anything else (garbage, another process's variables, an fd that
/// is not open) is ignored, with a reason to log. The fds stay
/// close-on-exec (they were marked so at startup) and are owned by the
/// returned sockets.
pub fn take_listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> (Vec<socket2::Socket>, Option<String>) {
    let Some(fds) = listen_fds else {
        return (Vec::new(), None);
    };
    match listen_pid.map(str::trim) {
        Some(p) if p == own_pid.to_string() => {}
        Some(p) => {
            return (
                Vec::new(),
                Some(format!(
                    "LISTEN_PID={p} is not summond's pid {own_pid}; ignoring LISTEN_FDS"
                )),
            )
        }
        None => {
            return (
                Vec::new(),
                Some("LISTEN_FDS without LISTEN_PID; ignoring it".into()),
            )
        }
    }
    let n: i32 = match fds.trim().parse() {
        Ok(n) if (0..=MAX_LISTEN_FDS).contains(&n) => n,
        _ => {
            return (
                Vec::new(),
                Some(format!(
                    "LISTEN_FDS=\"{fds}\" is not a count of fds; ignoring it"
                )),
            )
        }
    };
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: F_GETFD only reads a descriptor flag.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return (
                out,
                Some(format!("LISTEN_FDS={n}, but fd {fd} is not open")),
            );
        }
        // SAFETY: fd is open, was passed to this process for it to own
        // (sd_listen_fds), and nothing else in summond has taken it.
        out.push(unsafe { socket2::Socket::from_raw_fd(fd) });
    }
    (out, None)
}

/// Where summond keeps its listening sockets: at or above this fd, so a
/// child's copy of the fd table (only the part below) stays small however
/// many sockets summond holds (see `spawn/mod.rs`). Half the fd limit, at most
/// 1024, leaving the low part for connections in flight; none when the
/// limit is too small to split.
pub fn fd_base() -> Option<RawFd> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let half = (lim.rlim_cur / 2).min(1024) as RawFd;
    (half >= 64).then_some(half)
}

/// Raise the soft RLIMIT_NOFILE to the hard limit and return the limit we
/// were started with. Children get that one back: legacy programs that
/// `select()` or close every fd up to the limit break with a huge one.
pub fn raise_nofile() -> io::Result<libc::rlimit> {
    let mut original = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut original) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let raised = libc::rlimit {
        rlim_cur: original.rlim_max,
        rlim_max: original.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(original)
}

/// The classic ritual for `-d`, split in two so startup errors still reach
/// the terminal: `detach` forks (the original parent stays, waiting on a
/// pipe), `setsid` to leave the terminal's session, forks again so we are
/// not a session leader and can never reacquire a controlling terminal,
/// `chdir("/")` so no mount is held busy, umask 022. The daemon then binds
/// its sockets and builds its event loop (after the forks: an epoll
/// instance only reports a signalfd for the process that registered it)
/// and calls `Detached::ready`, which puts stdin/stdout/stderr on
/// /dev/null and lets the parent exit 0; or `Detached::failed`, which makes
/// the parent print the error and exit with its status.
pub fn detach() -> io::Result<Detached> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: summond is single-threaded here; the parent only reads the
    // pipe and leaves with _exit, running no destructors (the pidfile).
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => drop(read),
        _ => {
            drop(write);
            wait_for_daemon(read)
        }
    }
    // SAFETY: plain syscalls in the only thread of the child.
    unsafe {
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::umask(0o022);
    }
    std::env::set_current_dir("/")?;
    Ok(Detached { report: write })
}

/// The original parent: relay the daemon's startup outcome and exit.
fn wait_for_daemon(mut read: File) -> ! {
    use std::io::Read;
    let mut report = Vec::new();
    let _ = read.read_to_end(&mut report);
    let code = match report.split_first() {
        Some((&b'0', _)) => 0,
        Some((&code, message)) => {
            eprintln!("summond: {}", String::from_utf8_lossy(message));
            code.saturating_sub(b'0').max(1)
        }
        None => {
            eprintln!("summond: the daemon exited during startup");
            1
        }
    };
    // SAFETY: leaving the process without running destructors.
    unsafe { libc::_exit(i32::from(code)) }
}

/// The daemon's half of the startup report.
pub struct Detached {
    report: File,
}

impl Detached {
    /// Serving: detach stdio and let the parent exit 0.
    pub fn ready(mut self) -> io::Result<()> {
        null_onto_std_fds(true)?;
        self.report.write_all(b"0")
    }

    /// Startup failed: the parent prints `message` and exits `code`.
    pub fn failed(mut self, code: u8, message: &str) {
        let mut report = vec![b'0' + code];
        report.extend_from_slice(message.as_bytes());
        let _ = self.report.write_all(&report);
    }
}

#[derive(Debug)]
pub enum PidfileError {
    Open(PathBuf, io::Error),
    /// Something summond will not write into (or remove at exit) is at
    /// the path: root writing through a symlink or into another user's
    /// file would hand them any file on the system.
    Refused(PathBuf, PidfileRefusal),
    /// Another summond holds the lock.
    Held {
        path: PathBuf,
        pid: Option<u32>,
    },
    Write(PathBuf, io::Error),
    /// A directory on the way to the pidfile can be changed by a user
    /// other than root and summond's: they could swap the file (or the
    /// directory) for another and have root write or remove that one.
    UnsafeDirectory {
        path: PathBuf,
        dir: PathBuf,
        why: crate::safe_dir::DirectoryRefusal,
    },
}

/// Why a pidfile is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PidfileRefusal {
    Symlink,
    NotRegular,
    /// Owned by this uid, not summond's.
    Owner(u32),
    /// A hard link to a file that has other names.
    Links(u64),
}

impl fmt::Display for PidfileRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidfileRefusal::Symlink => f.write_str("is a symbolic link"),
            PidfileRefusal::NotRegular => f.write_str("is not a regular file"),
            PidfileRefusal::Owner(uid) => write!(
                f,
                "is owned by uid {uid}, not by summond's uid {}",
                nix::unistd::geteuid()
            ),
            PidfileRefusal::Links(n) => write!(f, "has {n} hard links"),
        }
    }
}

impl fmt::Display for PidfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidfileError::Open(p, e) => write!(f, "pidfile {}: {e}", p.display()),
            PidfileError::Refused(p, why) => write!(
                f,
                "pidfile {} {why}; refusing to use it (remove it, or name another path)",
                p.display()
            ),
            PidfileError::Held {
                path,
                pid: Some(pid),
            } => write!(
                f,
                "already running as pid {pid} (pidfile {} is locked)",
                path.display()
            ),
            PidfileError::Held { path, pid: None } => write!(
                f,
                "already running (pidfile {} is locked by another process)",
                path.display()
            ),
            PidfileError::Write(p, e) => write!(f, "writing pidfile {}: {e}", p.display()),
            PidfileError::UnsafeDirectory { path, dir, why } => write!(
                f,
                "pidfile {}: directory {} {why}; refusing to use it (name a pidfile in a \
                 directory only root or summond's user can change)",
                path.display(),
                dir.display()
            ),
        }
    }
}

impl std::error::Error for PidfileError {}

/// A pidfile held with `flock`: a second instance finds it locked and
/// refuses; a file nobody holds is stale (its owner died) and is taken
/// over. The lock lives as long as the open file, so it follows summond
/// through `daemonize`'s forks. Removed on drop (a clean exit), from the
/// directory it was opened in and only while its name there is still
/// this file.
pub struct Pidfile {
    file: File,
    path: PathBuf,
    /// The directory holding it, opened once (every directory from / to
    /// it checked), and its name there: what is removed at exit. None
    /// when an adopted pidfile's directory could not be found again.
    dir: Option<(OwnedFd, CString)>,
}

impl Pidfile {
    pub fn acquire(path: &Path) -> Result<Pidfile, PidfileError> {
        let (dir, name) = open_parent(path)?;
        // O_NOFOLLOW: a symlink at the path (even a dangling one, which
        // O_CREAT would follow to create its target) fails with ELOOP.
        // Nothing is truncated until the lock is held and the checks pass.
        let file = nix::fcntl::openat(
            &dir,
            name.as_c_str(),
            nix::fcntl::OFlag::from_bits_retain(
                libc::O_RDWR
                    | libc::O_CREAT
                    | libc::O_NOFOLLOW
                    | libc::O_CLOEXEC
                    | libc::O_NOCTTY
                    | libc::O_NONBLOCK,
            ),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map(File::from)
        .map_err(|e| match e {
            nix::errno::Errno::ELOOP => PidfileError::Refused(path.into(), PidfileRefusal::Symlink),
            e => PidfileError::Open(path.into(), e.into()),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| PidfileError::Open(path.into(), e))?;
        if let Some(why) = refusal(&meta) {
            return Err(PidfileError::Refused(path.into(), why));
        }
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                // From the file checked above, not the path again (which
                // may name something else by now), and no more than a
                // pid's worth of it.
                let mut text = String::new();
                let _ =
                    std::io::Read::read_to_string(&mut std::io::Read::take(&file, 32), &mut text);
                let pid = text.trim().parse().ok();
                return Err(PidfileError::Held {
                    path: path.into(),
                    pid,
                });
            }
            return Err(PidfileError::Open(path.into(), err));
        }
        Ok(Pidfile {
            file,
            path: path.into(),
            dir: Some((dir, name)),
        })
    }

    /// The pidfile the previous image of a live upgrade held: `fd` is its
    /// open file, still locked (the lock belongs to the open file). Its
    /// directory is looked up again and kept only if the name there still
    /// is this file; otherwise the file is left at exit.
    pub fn adopt(fd: OwnedFd, path: PathBuf) -> Pidfile {
        let mut pidfile = Pidfile {
            file: File::from(fd),
            path,
            dir: None,
        };
        // What an older image took (a relative path, a directory others
        // can write) is kept locked, but removed at stop only through a
        // directory that still names it; said once here, not at stop.
        match open_parent(&pidfile.path) {
            Ok(dir) if pidfile.is_named(&dir.0, &dir.1) => pidfile.dir = Some(dir),
            Ok(_) => log::warn!(
                "pidfile {}: that name no longer leads to the file summond holds; it is left in place at stop",
                pidfile.path.display()
            ),
            Err(e) => log::warn!("{e}; the pidfile is kept but left in place at stop"),
        }
        pidfile
    }

    /// Is `name` in `dir` (not following a symlink) our open file?
    fn is_named(&self, dir: &OwnedFd, name: &CStr) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ours) = self.file.metadata() else {
            return false;
        };
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_dev == ours.dev() && st.st_ino == ours.ino())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open, locked file, for the next image of an upgrade.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Record our pid (after daemonizing, so it is the final one).
    pub fn write_pid(&mut self) -> Result<(), PidfileError> {
        let pid = format!("{}\n", std::process::id());
        self.file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| PidfileError::Write(self.path.clone(), e))
    }
}

/// What is wrong with the file opened as the pidfile, if anything.
fn refusal(meta: &std::fs::Metadata) -> Option<PidfileRefusal> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return Some(PidfileRefusal::NotRegular);
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Some(PidfileRefusal::Owner(meta.uid()));
    }
    if meta.nlink() > 1 {
        return Some(PidfileRefusal::Links(meta.nlink()));
    }
    None
}

/// The directory that holds `path`, opened from / one component at a
/// time without following a symlink (`safe_dir::walk`; the path is made
/// canonical first),
/// each directory checked as OpenSSH's StrictModes does: owned by root or
/// summond's uid, and writable by no one else unless sticky. Nothing on
/// the way can then be swapped, and the fd names the directory for good.
fn open_parent(path: &Path) -> Result<(OwnedFd, CString), PidfileError> {
    use std::os::unix::ffi::OsStrExt;
    let open_err = |e: io::Error| PidfileError::Open(path.into(), e);
    let name = path
        .file_name()
        .ok_or_else(|| open_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| open_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let canonical = std::fs::canonicalize(parent).map_err(open_err)?;
    let dir = crate::safe_dir::walk(
        &canonical,
        None,
        |dir, walked| check_directory(dir, walked, path),
        |e| open_err(e.into_io()),
    )?;
    Ok((dir, name))
}

fn check_directory(dir: &OwnedFd, shown: &Path, path: &Path) -> Result<(), PidfileError> {
    let st = nix::sys::stat::fstat(dir).map_err(|e| PidfileError::Open(path.into(), e.into()))?;
    let why = crate::safe_dir::strict_refusal(st.st_uid, st.st_mode as u32);
    match why {
        None => Ok(()),
        Some(why) => Err(PidfileError::UnsafeDirectory {
            path: path.into(),
            dir: shown.into(),
            why,
        }),
    }
}

impl Drop for Pidfile {
    /// Remove the file from the directory it was opened in, and only if
    /// the name there is still our file: whatever else is there now
    /// (another file, a symlink) is not ours to remove.
    fn drop(&mut self) {
        if let Some((dir, name)) = &self.dir {
            if self.is_named(dir, name) {
                let _ = nix::unistd::unlinkat(
                    dir,
                    name.as_c_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
        }
    }
}
