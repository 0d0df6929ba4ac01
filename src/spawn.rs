//! Starting a child: `ExecImage` (argv, base environment, credentials)
//! built once per service when the config loads, the per-child fd moves and
//! variables built before `fork`, then `fork` and a child that makes only
//! async-signal-safe syscalls up to `execve`. A failure in the child is
//! reported as (stage, errno) over a close-on-exec pipe, the way s6's
//! `cspawn` does; EOF on that pipe means `execve` succeeded.
//!
//! Nothing after `fork` allocates, locks, logs or touches Rust I/O: the
//! child of a (future) multi-threaded or vfork'ed parent must not.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;

use nix::libc::{self, c_char, c_int};
use nix::unistd::Pid;

use crate::config::{Credentials, Pass, RlimitKind, Sandbox, ServiceSpec, StderrMode};
use crate::env::is_reserved_env;

/// The first fd `LISTEN_FDS` hands over (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Where in the child a failure happened; sent with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Fds = 1,
    Rlimit = 2,
    Setgroups = 3,
    Setgid = 4,
    Setuid = 5,
    Exec = 6,
    Nice = 7,
    Chroot = 8,
    Chdir = 9,
    NoNewPrivs = 10,
}

impl Stage {
    const ALL: [Stage; 10] = [
        Stage::Fds,
        Stage::Rlimit,
        Stage::Setgroups,
        Stage::Setgid,
        Stage::Setuid,
        Stage::Exec,
        Stage::Nice,
        Stage::Chroot,
        Stage::Chdir,
        Stage::NoNewPrivs,
    ];

    fn from_u32(n: u32) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u32 == n)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Fds => "set up fds",
            Stage::Rlimit => "set rlimits",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Exec => "exec",
            Stage::Nice => "set nice",
            Stage::Chroot => "chroot",
            Stage::Chdir => "chdir to working_directory",
            Stage::NoNewPrivs => "set no_new_privs",
        })
    }
}

/// What a service runs, prepared when the config loads so a spawn only
/// adds the per-child part.
pub struct ExecImage {
    program: CString,
    _argv: Vec<CString>,
    /// NULL-terminated pointers into `_argv` (heap data: stable).
    argv_ptrs: Vec<*const c_char>,
    base_env: Vec<CString>,
    credentials: Option<Credentials>,
    /// For the `setgroups` call: gid_t is u32 on Linux.
    groups: Vec<libc::gid_t>,
    sandbox: SandboxImage,
}

/// `Sandbox` in the form the child applies it: C strings and libc values.
struct SandboxImage {
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    umask: Option<libc::mode_t>,
    nice: Option<c_int>,
    chroot: Option<CString>,
    working_directory: CString,
    no_new_privs: bool,
}

fn rlimit_resource(kind: RlimitKind) -> libc::__rlimit_resource_t {
    match kind {
        RlimitKind::Nofile => libc::RLIMIT_NOFILE,
        RlimitKind::Nproc => libc::RLIMIT_NPROC,
        RlimitKind::As => libc::RLIMIT_AS,
        RlimitKind::Cpu => libc::RLIMIT_CPU,
        RlimitKind::Core => libc::RLIMIT_CORE,
        RlimitKind::Fsize => libc::RLIMIT_FSIZE,
        RlimitKind::Data => libc::RLIMIT_DATA,
        RlimitKind::Stack => libc::RLIMIT_STACK,
        RlimitKind::Memlock => libc::RLIMIT_MEMLOCK,
    }
}

impl SandboxImage {
    fn new(sb: &Sandbox) -> SandboxImage {
        let cpath = |p: &std::path::Path| {
            CString::new(p.as_os_str().as_bytes()).expect("config paths contain no NUL")
        };
        SandboxImage {
            rlimits: sb
                .rlimits
                .iter()
                .map(|r| {
                    let v = r.value.unwrap_or(libc::RLIM_INFINITY);
                    (
                        rlimit_resource(r.resource),
                        libc::rlimit {
                            rlim_cur: v,
                            rlim_max: v,
                        },
                    )
                })
                .collect(),
            umask: sb.umask.map(|m| m as libc::mode_t),
            nice: sb.nice,
            chroot: sb.chroot.as_deref().map(cpath),
            working_directory: cpath(&sb.working_directory),
            no_new_privs: sb.no_new_privs,
        }
    }
}

impl ExecImage {
    /// `inherited` is summond's environment at startup; activation and
    /// per-connection variables are dropped from it, then `env` is added
    /// (a service's `env` overrides an inherited variable of the same name).
    pub fn new<I>(spec: &ServiceSpec, inherited: I) -> ExecImage
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let cstring = |bytes: &[u8]| {
            // Config validation and the OS rule out NULs in all of these.
            CString::new(bytes).expect("config and environ strings contain no NUL")
        };
        let program = cstring(spec.program.as_os_str().as_bytes());
        let argv: Vec<CString> = spec.exec.iter().map(|a| cstring(a.as_bytes())).collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(ptr::null());

        let overridden = |name: &OsStr| {
            name.to_str().is_some_and(is_reserved_env)
                || spec.env.iter().any(|(k, _)| OsStr::new(k) == name)
        };
        // clear_env: only PATH and the names in `passenv` pass through.
        let kept = |name: &OsStr| {
            !spec.clear_env || name == "PATH" || spec.passenv.iter().any(|p| OsStr::new(p) == name)
        };
        let mut base_env: Vec<CString> = inherited
            .into_iter()
            .filter(|(k, _)| kept(k) && !overridden(k))
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect();
        base_env.extend(
            spec.env
                .iter()
                .map(|(k, v)| cstring(format!("{k}={v}").as_bytes())),
        );

        let groups = spec
            .credentials
            .as_ref()
            .map(|c| c.groups.clone())
            .unwrap_or_default();
        ExecImage {
            program,
            _argv: argv,
            argv_ptrs,
            base_env,
            credentials: spec.credentials.clone(),
            groups,
            sandbox: SandboxImage::new(&spec.sandbox),
        }
    }
}

/// One fd the child gets: `from` in summond becomes `to` in the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdMove {
    pub from: RawFd,
    pub to: RawFd,
}

/// The per-child part, built by the caller before `spawn`.
pub struct ChildSetup<'a> {
    pub fds: &'a [FdMove],
    /// `NAME=value` strings: LISTEN_FDS, REMOTE_ADDR and the like.
    pub env: &'a [CString],
    /// Add `LISTEN_PID=<the child's own pid>`, written in the child.
    pub listen_pid: bool,
    /// The RLIMIT_NOFILE summond was started with, restored in the child.
    pub nofile: Option<libc::rlimit>,
}

#[derive(Debug)]
pub enum SpawnError {
    /// `pipe2` for the exec-status pipe failed (EMFILE/ENFILE).
    Pipe(io::Error),
    /// `fork` failed (EAGAIN: process limit; ENOMEM).
    Fork(io::Error),
}

impl SpawnError {
    pub fn io_error(&self) -> &io::Error {
        match self {
            SpawnError::Pipe(e) | SpawnError::Fork(e) => e,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Pipe(e) => write!(f, "cannot create exec-status pipe: {e}"),
            SpawnError::Fork(e) => write!(f, "fork: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// A started child and the read end of its exec-status pipe (non-blocking,
/// close-on-exec): register it with the poller and call `read_exec_status`.
pub struct Spawned {
    pub pid: Pid,
    pub status_pipe: OwnedFd,
}

/// The child's report, read from the status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    /// Nothing to read yet: the child has not reached `execve`.
    Pending,
    /// EOF: `execve` closed the pipe; the program is running.
    Running,
    Failed {
        stage: Stage,
        errno: i32,
    },
}

/// Read the status pipe once without blocking.
pub fn read_exec_status(pipe: &OwnedFd) -> ExecStatus {
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: reading into a local buffer of the stated length from an
        // fd we own.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 8 {
            let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            return match Stage::from_u32(stage) {
                Some(stage) => ExecStatus::Failed { stage, errno },
                None => ExecStatus::Running,
            };
        }
        if n >= 0 {
            // EOF (or a short write, which the child never makes).
            return ExecStatus::Running;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return ExecStatus::Pending,
            _ => return ExecStatus::Running,
        }
    }
}

/// Fork and exec `image` with `setup`. Everything the child needs is
/// allocated here, before `fork`.
pub fn spawn(image: &ExecImage, setup: &ChildSetup<'_>) -> Result<Spawned, SpawnError> {
    let mut listen_pid_slot: Vec<u8> = Vec::new();
    if setup.listen_pid {
        listen_pid_slot.extend_from_slice(LISTEN_PID_PREFIX);
        // room for any pid's digits plus the NUL, zero-filled
        listen_pid_slot.resize(LISTEN_PID_PREFIX.len() + 24, 0);
    }
    let mut envp: Vec<*const c_char> =
        Vec::with_capacity(image.base_env.len() + setup.env.len() + 2);
    envp.extend(image.base_env.iter().map(|e| e.as_ptr()));
    envp.extend(setup.env.iter().map(|e| e.as_ptr()));
    if setup.listen_pid {
        envp.push(listen_pid_slot.as_ptr().cast());
    }
    envp.push(ptr::null());
    let mut temp_fds: Vec<RawFd> = vec![-1; setup.fds.len()];
    // Temporaries go above every target so no dup2 clobbers a source.
    let first_temp = setup.fds.iter().map(|m| m.to + 1).max().unwrap_or(3).max(3);

    let mut pipe_fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the local array.
    if unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(SpawnError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both fds are fresh and ours.
    let (status_read, status_write) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };
    // pipe2 takes the lowest free fds, which can lie inside the target
    // range (3.. after a reload freed low fds): the child's dup2 would
    // then overwrite its own status pipe and report into a handed socket.
    // Its write end must sit above every target before the moves.
    let status_write = lift_above(status_write, first_temp).map_err(SpawnError::Pipe)?;

    let child = ChildArgs {
        program: image.program.as_ptr(),
        argv: image.argv_ptrs.as_ptr(),
        envp: envp.as_ptr(),
        fds: setup.fds,
        temp_fds: temp_fds.as_mut_ptr(),
        first_temp,
        listen_pid_digits: if setup.listen_pid {
            // SAFETY: the slot is PREFIX + 24 bytes long.
            unsafe { listen_pid_slot.as_mut_ptr().add(LISTEN_PID_PREFIX.len()) }
        } else {
            ptr::null_mut()
        },
        nofile: setup.nofile,
        credentials: image.credentials.as_ref(),
        groups: &image.groups,
        sandbox: &image.sandbox,
        status_fd: status_write.as_raw_fd(),
    };

    // SAFETY: summond is single-threaded, and the child runs only
    // `child_after_fork`, which makes async-signal-safe syscalls on memory
    // prepared above and leaves by execve or _exit.
    match unsafe { libc::fork() } {
        -1 => Err(SpawnError::Fork(io::Error::last_os_error())),
        // SAFETY: this is the forked child, which `child_after_fork` is for.
        0 => unsafe { child_after_fork(&child) },
        pid => {
            drop(status_write);
            Ok(Spawned {
                pid: Pid::from_raw(pid),
                status_pipe: status_read,
            })
        }
    }
}

/// `fd` itself if it is at or above `floor`, else a close-on-exec copy
/// there (the original is closed).
fn lift_above(fd: OwnedFd, floor: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= floor {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let lifted = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if lifted < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(lifted) })
}

/// Raw pointers and values the child uses; no owned data, nothing to drop.
struct ChildArgs<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    fds: &'a [FdMove],
    temp_fds: *mut RawFd,
    first_temp: RawFd,
    listen_pid_digits: *mut u8,
    nofile: Option<libc::rlimit>,
    credentials: Option<&'a Credentials>,
    groups: &'a [libc::gid_t],
    sandbox: &'a SandboxImage,
    status_fd: RawFd,
}

/// Report (stage, errno) to the parent and leave without running any Rust
/// destructors or atexit handlers.
///
/// SAFETY: only for the forked child.
unsafe fn fail(status_fd: RawFd, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    let mut msg = [0u8; 8];
    let s = (stage as u32).to_ne_bytes();
    let e = errno.to_ne_bytes();
    let mut i = 0;
    while i < 4 {
        msg[i] = s[i];
        msg[4 + i] = e[i];
        i += 1;
    }
    libc::write(status_fd, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

/// The child between `fork` and `execve`: async-signal-safe syscalls only.
///
/// SAFETY: only for the forked child of a single-threaded parent; every
/// pointer in `a` points into memory the parent prepared before `fork`.
unsafe fn child_after_fork(a: &ChildArgs<'_>) -> ! {
    // Default dispositions: Rust ignores SIGPIPE and an ignored signal
    // survives execve; legacy filters rely on dying of SIGPIPE. Then an
    // empty mask: summond blocks the signals its signalfd reads, and a
    // blocked mask survives execve too.
    // The raw syscall, because glibc's signal()/sigaction() refuse the two
    // real-time signals it reserves (32, 33), which can still arrive
    // ignored from our own parent. An all-zero kernel sigaction is SIG_DFL
    // with no flags and an empty mask on every architecture; the buffer is
    // larger than any of their layouts.
    let dfl = [0u64; 8];
    let mut sig = 1;
    while sig < 65 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                ptr::null_mut::<u64>(),
                8usize,
            );
        }
        sig += 1;
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());

    // Its own session and process group, so a signal to the child's group
    // never reaches summond, and a terminal's ^C never reaches the child.
    libc::setsid();

    // Two passes: lift every source above the target range (CLOEXEC, so
    // the copies vanish at exec), then dup2 down; dup2 clears CLOEXEC on
    // the target, which `dup2(fd, fd)` would not.
    let mut i = 0;
    while i < a.fds.len() {
        let t = libc::fcntl(a.fds[i].from, libc::F_DUPFD_CLOEXEC, a.first_temp);
        if t < 0 {
            fail(a.status_fd, Stage::Fds);
        }
        *a.temp_fds.add(i) = t;
        i += 1;
    }
    i = 0;
    while i < a.fds.len() {
        if libc::dup2(*a.temp_fds.add(i), a.fds[i].to) < 0 {
            fail(a.status_fd, Stage::Fds);
        }
        i += 1;
    }

    // The sandbox, in the documented order: rlimits, umask, nice, chroot,
    // chdir, credentials, no_new_privs. Every step is checked; a child
    // that cannot apply one never runs with less isolation than asked.
    if let Some(limit) = &a.nofile {
        if libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0 {
            fail(a.status_fd, Stage::Rlimit);
        }
    }
    let sb = a.sandbox;
    let mut i = 0;
    while i < sb.rlimits.len() {
        let (resource, limit) = &sb.rlimits[i];
        if libc::setrlimit(*resource, limit) != 0 {
            fail(a.status_fd, Stage::Rlimit);
        }
        i += 1;
    }
    if let Some(mask) = sb.umask {
        libc::umask(mask);
    }
    if let Some(nice) = sb.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            fail(a.status_fd, Stage::Nice);
        }
    }
    if let Some(root) = &sb.chroot {
        if libc::chroot(root.as_ptr()) != 0 {
            fail(a.status_fd, Stage::Chroot);
        }
    }
    // After chroot, so the directory is looked up inside it (and "/" is
    // the new root, never a directory outside it).
    if libc::chdir(sb.working_directory.as_ptr()) != 0 {
        fail(a.status_fd, Stage::Chdir);
    }

    // setgroups → setgid → setuid: each needs the privilege the next drops.
    // Each is checked; a child that cannot drop privileges never runs.
    if let Some(c) = a.credentials {
        if libc::setgroups(a.groups.len(), a.groups.as_ptr()) != 0 {
            fail(a.status_fd, Stage::Setgroups);
        }
        if libc::setgid(c.gid) != 0 || libc::getgid() != c.gid || libc::getegid() != c.gid {
            fail(a.status_fd, Stage::Setgid);
        }
        if let Some(uid) = c.uid {
            if libc::setuid(uid) != 0 || libc::getuid() != uid || libc::geteuid() != uid {
                fail(a.status_fd, Stage::Setuid);
            }
        }
    }

    if sb.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(a.status_fd, Stage::NoNewPrivs);
    }

    if !a.listen_pid_digits.is_null() {
        write_decimal(a.listen_pid_digits, libc::getpid() as u64);
    }

    libc::execve(a.program, a.argv, a.envp);
    fail(a.status_fd, Stage::Exec)
}

/// Write `n` in decimal at `out`, NUL-terminated (at most 21 bytes).
///
/// SAFETY: `out` must have room for 21 bytes.
unsafe fn write_decimal(out: *mut u8, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut i = 0;
    while i < len {
        *out.add(i) = digits[len - 1 - i];
        i += 1;
    }
    *out.add(len) = 0;
}

/// The fds a child gets (SPEC "The four ways"). `payload` is the
/// connection (accept mode) or the service's sockets in `listen` order
/// (pass mode); `stdio` takes only the first.
///
/// stdio: payload → 0 and 1, and 2 with `stderr = "socket"`.
/// listen_fds: /dev/null → 0, payload → 3, 4, …; 1 and 2 follow `stderr`
/// (inherit: summond's fd 2; null: /dev/null). Config validation rules
/// out `stderr = "socket"` with listen_fds.
pub fn plan_fds(pass: Pass, stderr: StderrMode, payload: &[RawFd], devnull: RawFd) -> Vec<FdMove> {
    let mv = |from, to| FdMove { from, to };
    let mut moves = Vec::with_capacity(payload.len() + 3);
    match pass {
        Pass::Stdio => {
            let s = payload[0];
            moves.push(mv(s, 0));
            moves.push(mv(s, 1));
            match stderr {
                StderrMode::Socket => moves.push(mv(s, 2)),
                StderrMode::Null => moves.push(mv(devnull, 2)),
                StderrMode::Inherit => {}
            }
        }
        Pass::ListenFds => {
            moves.push(mv(devnull, 0));
            match stderr {
                StderrMode::Null => {
                    moves.push(mv(devnull, 1));
                    moves.push(mv(devnull, 2));
                }
                StderrMode::Inherit | StderrMode::Socket => moves.push(mv(2, 1)),
            }
            for (i, fd) in payload.iter().enumerate() {
                moves.push(mv(*fd, LISTEN_FDS_START + i as RawFd));
            }
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        for n in [0u64, 7, 10, 4194304, u64::MAX] {
            let mut buf = [0xffu8; 21];
            // SAFETY: 21 bytes of room.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|b| *b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn fd_plans_of_the_four_modes() {
        let mv = |from, to| FdMove { from, to };
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Inherit, &[9], 5),
            vec![mv(9, 0), mv(9, 1)]
        );
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Socket, &[9], 5),
            vec![mv(9, 0), mv(9, 1), mv(9, 2)]
        );
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Null, &[9], 5),
            vec![mv(9, 0), mv(9, 1), mv(5, 2)]
        );
        assert_eq!(
            plan_fds(Pass::ListenFds, StderrMode::Inherit, &[9, 7], 5),
            vec![mv(5, 0), mv(2, 1), mv(9, 3), mv(7, 4)]
        );
        assert_eq!(
            plan_fds(Pass::ListenFds, StderrMode::Null, &[9], 5),
            vec![mv(5, 0), mv(5, 1), mv(5, 2), mv(9, 3)]
        );
    }

    #[test]
    fn stage_codes_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_u32(s as u32), Some(s));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
