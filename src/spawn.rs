//! Starting a child: `ExecImage` (argv, base environment, credentials)
//! built once per service (at its first child), the per-child fd moves and
//! variables built before the spawn, then `clone(CLONE_VM | CLONE_VFORK)`
//! on a stack of our own and a child that makes only raw, async-signal-safe
//! syscalls up to `execve`, the way glibc's `posix_spawn` does. The
//! parent's page tables are never copied; it waits (vfork semantics) until
//! the child has exec'd or failed, and a failure is reported as (stage,
//! errno) in memory the two share, so the parent knows how the exec went
//! when `clone` returns, with no pipe.
//!
//! With an fd base (`Spawner::new`), summond keeps its long-lived fds
//! (listeners) at or above it and the child shares the parent's fd table
//! (`CLONE_FILES`) until it unshares only the part below the base
//! (`close_range(base, ~0, CLOSE_RANGE_UNSHARE)`): the cost of a spawn no
//! longer grows with the number of sockets summond holds. A listener lent
//! to a child is handed over as a copy below the base (`SocketTable`).
//!
//! Nothing in the child allocates, locks, logs or touches Rust I/O; it
//! runs on memory the parent prepared and the parent is suspended.

use rustc_hash::FxHashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::rc::Rc;

use nix::libc::{self, c_char, c_int};
use nix::unistd::Pid;

use crate::config::{Credentials, Pass, RlimitKind, Sandbox, ServiceSpec, StderrMode};
use crate::env::{is_reserved_env, EnvBlock};

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
    /// Shared by every service whose environment comes out the same (most
    /// of them: the inherited one), not one copy per service.
    base_env: Rc<[CString]>,
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
    pub fn new(spec: &ServiceSpec, pool: &mut EnvPool) -> ExecImage {
        let program = cstring(spec.program.as_os_str().as_bytes());
        let argv: Vec<CString> = spec.exec.iter().map(|a| cstring(a.as_bytes())).collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(ptr::null());
        let base_env = pool.base_env(spec);
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

/// Config validation and the OS rule out NULs in all of these.
fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("config and environ strings contain no NUL")
}

/// What a service's base environment depends on: clear_env, passenv, env.
type EnvKey = (bool, Vec<String>, Vec<(String, String)>);

/// The base environments of the services, built once for each distinct
/// (clear_env, passenv, env): most services share one.
pub struct EnvPool {
    inherited: Vec<(OsString, OsString)>,
    built: FxHashMap<EnvKey, Rc<[CString]>>,
}

impl EnvPool {
    /// `inherited` is summond's environment at startup.
    pub fn new(inherited: Vec<(OsString, OsString)>) -> EnvPool {
        EnvPool {
            inherited,
            built: FxHashMap::default(),
        }
    }

    /// Forget the environments no image holds any more (after a reload).
    pub fn prune(&mut self) {
        self.built.retain(|_, env| Rc::strong_count(env) > 1);
    }

    /// The inherited environment without activation and per-connection
    /// variables, then `env` (a service's `env` overrides an inherited
    /// variable of the same name); with clear_env only PATH and the names
    /// in `passenv` pass through.
    fn base_env(&mut self, spec: &ServiceSpec) -> Rc<[CString]> {
        let key = (spec.clear_env, spec.passenv.clone(), spec.env.clone());
        if let Some(env) = self.built.get(&key) {
            return env.clone();
        }
        let overridden = |name: &OsStr| {
            name.to_str().is_some_and(is_reserved_env)
                || spec.env.iter().any(|(k, _)| OsStr::new(k) == name)
        };
        let kept = |name: &OsStr| {
            !spec.clear_env || name == "PATH" || spec.passenv.iter().any(|p| OsStr::new(p) == name)
        };
        let mut env: Vec<CString> = self
            .inherited
            .iter()
            .filter(|(k, _)| kept(k) && !overridden(k))
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect();
        env.extend(
            spec.env
                .iter()
                .map(|(k, v)| cstring(format!("{k}={v}").as_bytes())),
        );
        let env: Rc<[CString]> = env.into();
        self.built.insert(key, env.clone());
        env
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
    pub env: &'a EnvBlock,
    /// Add `LISTEN_PID=<the child's own pid>`, written in the child.
    pub listen_pid: bool,
    /// The RLIMIT_NOFILE summond was started with, restored in the child.
    pub nofile: Option<libc::rlimit>,
}

#[derive(Debug)]
pub enum SpawnError {
    /// `clone` failed (EAGAIN: process limit; ENOMEM).
    Fork(io::Error),
    /// The child ran out of fds placing its sockets (EMFILE, ENFILE): a
    /// shortage like a failed fork, not a broken service. It has exited
    /// and is reaped as a stranger.
    Fds(io::Error),
}

impl SpawnError {
    pub fn io_error(&self) -> &io::Error {
        match self {
            SpawnError::Fork(e) | SpawnError::Fds(e) => e,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Fork(e) => write!(f, "clone: {e}"),
            SpawnError::Fds(e) => write!(f, "no fd left for the child's sockets: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// A started child. With `failed` set it never reached its program: it
/// exited with status 127 after the stage that failed (reap it as usual).
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub failed: Option<(Stage, i32)>,
}

/// Where the child writes how it failed; read by the parent once `clone`
/// returns (the child has exec'd or exited by then).
#[repr(C)]
struct Report {
    stage: u32,
    errno: i32,
}

/// The child's stack: one for every spawn, since with `CLONE_VFORK` the
/// parent waits until the child is done with it. Untouched pages cost
/// nothing; a guard page below catches an overflow.
const STACK_SIZE: usize = 256 * 1024;
const GUARD_SIZE: usize = 4096;

/// Spawns children; holds what every spawn reuses.
pub struct Spawner {
    stack: *mut libc::c_void,
    /// Signals that are not at their default disposition in summond (Rust
    /// ignores SIGPIPE and handles SIGSEGV/SIGBUS): the child resets just
    /// these, found once, not all 64 on every spawn.
    reset: Vec<c_int>,
    /// Some signal has a handler that could run asynchronously: block every
    /// signal across the clone so none runs on the child's side of the
    /// shared memory. Rust's only handlers (SIGSEGV, SIGBUS) are for faults
    /// of the process itself, and the signals summond handles are blocked
    /// already (signalfd), so normally this costs nothing per spawn.
    block_across_clone: bool,
    /// Share the fd table and unshare below this fd (see the module doc).
    fd_base: Option<RawFd>,
    /// Reused per spawn, so a spawn allocates nothing once warm.
    envp: Vec<*const c_char>,
    temp_fds: Vec<RawFd>,
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused once no child runs on it.
        unsafe { libc::munmap(self.stack, STACK_SIZE + GUARD_SIZE) };
    }
}

impl Spawner {
    /// `fd_base`: the fd at or above which summond keeps its listeners
    /// (`None`: the child gets a full copy of the fd table).
    pub fn new(fd_base: Option<RawFd>) -> io::Result<Spawner> {
        // SAFETY: an anonymous private mapping; checked below.
        let stack = unsafe {
            libc::mmap(
                ptr::null_mut(),
                STACK_SIZE + GUARD_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping just made.
        unsafe { libc::mprotect(stack, GUARD_SIZE, libc::PROT_NONE) };
        let mut reset = Vec::new();
        let mut block_across_clone = false;
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = [0u64; 8];
            // SAFETY: only reads the disposition into `old`.
            let rc = unsafe { sigaction(sig, ptr::null(), &mut old) };
            // The handler is the first word; 0 is SIG_DFL, 1 SIG_IGN.
            if rc == 0 && old[0] != 0 {
                reset.push(sig);
                let synchronous = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];
                if old[0] != 1 && !synchronous.contains(&sig) {
                    block_across_clone = true;
                }
            }
        }
        // close_range(2) is Linux 5.9; without it, no sharing.
        // SAFETY: closes the fd ~0, which never exists.
        let has_close_range =
            unsafe { libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0) } == 0;
        Ok(Spawner {
            stack,
            reset,
            block_across_clone,
            fd_base: fd_base.filter(|_| has_close_range),
            envp: Vec::new(),
            temp_fds: Vec::new(),
        })
    }

    /// Start `image` with `setup`. Everything the child needs is prepared
    /// here, before `clone`.
    pub fn spawn(
        &mut self,
        image: &ExecImage,
        setup: &ChildSetup<'_>,
    ) -> Result<Spawned, SpawnError> {
        let mut listen_pid_slot = [0u8; LISTEN_PID_PREFIX.len() + 24];
        listen_pid_slot[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
        self.envp.clear();
        self.envp.extend(image.base_env.iter().map(|e| e.as_ptr()));
        self.envp.extend(setup.env.pointers());
        if setup.listen_pid {
            self.envp.push(listen_pid_slot.as_ptr().cast());
        }
        self.envp.push(ptr::null());
        self.temp_fds.clear();
        self.temp_fds.resize(setup.fds.len(), -1);
        // Temporaries go above every target so no dup2 clobbers a source.
        let first_temp = setup.fds.iter().map(|m| m.to + 1).max().unwrap_or(3).max(3);
        // Share the table only if everything the child moves lies below
        // the base (the server lends a listener as a copy below it; a
        // connection accepted with the low range full lies above it).
        let unshare_from = self
            .fd_base
            .filter(|base| setup.fds.iter().all(|m| m.from < *base));
        let mut report = Report { stage: 0, errno: 0 };
        let child = ChildArgs {
            program: image.program.as_ptr(),
            argv: image.argv_ptrs.as_ptr(),
            envp: self.envp.as_ptr(),
            fds: setup.fds,
            temp_fds: self.temp_fds.as_mut_ptr(),
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
            reset: &self.reset,
            unshare_from,
            report: &mut report,
        };
        let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
        if unshare_from.is_some() {
            flags |= libc::CLONE_FILES;
        }
        let mut old = 0u64;
        if self.block_across_clone {
            // SAFETY: a valid mask and a place for the old one.
            unsafe { set_sigmask(!0, &mut old) };
        }
        // SAFETY: the top of our stack mapping (stacks grow down), aligned.
        let top = unsafe { self.stack.cast::<u8>().add(STACK_SIZE + GUARD_SIZE) };
        // SAFETY: the child runs `child_entry` on its own stack, using only
        // memory prepared above, which lives until clone returns: with
        // CLONE_VFORK that is after the child exec'd or exited.
        let pid = unsafe {
            libc::clone(
                child_entry,
                top.cast(),
                flags,
                (&child as *const ChildArgs<'_>).cast_mut().cast(),
            )
        };
        let clone_err = (pid < 0).then(io::Error::last_os_error);
        if self.block_across_clone {
            // SAFETY: restores summond's mask.
            unsafe { set_sigmask(old, ptr::null_mut()) };
        }
        if let Some(e) = clone_err {
            return Err(SpawnError::Fork(e));
        }
        // SAFETY: the child wrote it (or not) before exec or exit; read it
        // as memory the compiler did not see change.
        let (stage, errno) = unsafe {
            (
                ptr::read_volatile(&report.stage),
                ptr::read_volatile(&report.errno),
            )
        };
        let failed = Stage::from_u32(stage).map(|s| (s, errno));
        if failed == Some((Stage::Fds, libc::EMFILE)) || failed == Some((Stage::Fds, libc::ENFILE))
        {
            return Err(SpawnError::Fds(io::Error::from_raw_os_error(errno)));
        }
        Ok(Spawned {
            pid: Pid::from_raw(pid),
            failed,
        })
    }
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
    reset: &'a [c_int],
    unshare_from: Option<RawFd>,
    report: *mut Report,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> c_int {
    // SAFETY: `arg` is the ChildArgs `spawn` passed to clone; this runs in
    // the child only.
    unsafe { child_after_clone(&*arg.cast::<ChildArgs<'_>>()) }
}

/// Report (stage, errno) to the parent and leave without running any Rust
/// destructors or atexit handlers.
///
/// SAFETY: only for the cloned child.
unsafe fn fail(a: &ChildArgs<'_>, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    ptr::write_volatile(&mut (*a.report).errno, errno);
    ptr::write_volatile(&mut (*a.report).stage, stage as u32);
    libc::_exit(127)
}

/// The child between `clone` and `execve`: async-signal-safe syscalls only.
///
/// SAFETY: only for the cloned child of a single-threaded parent that
/// waits (CLONE_VFORK); every pointer in `a` points into memory the parent
/// prepared before `clone`.
unsafe fn child_after_clone(a: &ChildArgs<'_>) -> ! {
    // Default dispositions for what summond changed: Rust ignores SIGPIPE
    // and an ignored signal survives execve; legacy filters rely on dying
    // of SIGPIPE. An all-zero kernel sigaction is SIG_DFL with no flags and
    // an empty mask on every architecture.
    let dfl = [0u64; 8];
    for sig in a.reset {
        sigaction(*sig, &dfl, ptr::null_mut());
    }
    // A table of our own, copied only below the base: summond's
    // listeners above it are neither copied here nor closed by execve.
    if let Some(base) = a.unshare_from {
        if libc::syscall(
            libc::SYS_close_range,
            base as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) != 0
        {
            fail(a, Stage::Fds);
        }
    }

    // Its own session and process group, so a signal to the child's group
    // never reaches summond, and a terminal's ^C never reaches the child.
    libc::syscall(libc::SYS_setsid);

    // Two passes: lift every source above the target range (CLOEXEC, so
    // the copies vanish at exec), then dup2 down; dup2 clears CLOEXEC on
    // the target, which `dup2(fd, fd)` would not.
    let mut i = 0;
    while i < a.fds.len() {
        let t = libc::fcntl(a.fds[i].from, libc::F_DUPFD_CLOEXEC, a.first_temp);
        if t < 0 {
            fail(a, Stage::Fds);
        }
        *a.temp_fds.add(i) = t;
        i += 1;
    }
    i = 0;
    while i < a.fds.len() {
        if libc::dup2(*a.temp_fds.add(i), a.fds[i].to) < 0 {
            fail(a, Stage::Fds);
        }
        i += 1;
    }

    // The sandbox, in the documented order: rlimits, umask, nice, chroot,
    // chdir, credentials, no_new_privs. Every step is checked; a child
    // that cannot apply one never runs with less isolation than asked.
    if let Some(limit) = &a.nofile {
        if libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0 {
            fail(a, Stage::Rlimit);
        }
    }
    let sb = a.sandbox;
    let mut i = 0;
    while i < sb.rlimits.len() {
        let (resource, limit) = &sb.rlimits[i];
        if libc::setrlimit(*resource, limit) != 0 {
            fail(a, Stage::Rlimit);
        }
        i += 1;
    }
    if let Some(mask) = sb.umask {
        libc::umask(mask);
    }
    if let Some(nice) = sb.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            fail(a, Stage::Nice);
        }
    }
    if let Some(root) = &sb.chroot {
        if libc::chroot(root.as_ptr()) != 0 {
            fail(a, Stage::Chroot);
        }
    }
    // After chroot, so the directory is looked up inside it (and "/" is
    // the new root, never a directory outside it).
    if libc::chdir(sb.working_directory.as_ptr()) != 0 {
        fail(a, Stage::Chdir);
    }

    // setgroups → setgid → setuid: each needs the privilege the next drops.
    // Each is checked; a child that cannot drop privileges never runs.
    // Raw syscalls: glibc's wrappers would signal every thread glibc knows
    // of to change theirs too, which in a CLONE_VM child are the parent's.
    if let Some(c) = a.credentials {
        if libc::syscall(libc::SYS_setgroups, a.groups.len(), a.groups.as_ptr()) != 0 {
            fail(a, Stage::Setgroups);
        }
        if libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) != 0
            || libc::syscall(libc::SYS_getgid) != c.gid as libc::c_long
            || libc::syscall(libc::SYS_getegid) != c.gid as libc::c_long
        {
            fail(a, Stage::Setgid);
        }
        if let Some(uid) = c.uid {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                || libc::syscall(libc::SYS_getuid) != uid as libc::c_long
                || libc::syscall(libc::SYS_geteuid) != uid as libc::c_long
            {
                fail(a, Stage::Setuid);
            }
        }
    }

    if sb.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(a, Stage::NoNewPrivs);
    }

    if !a.listen_pid_digits.is_null() {
        write_decimal(a.listen_pid_digits, libc::syscall(libc::SYS_getpid) as u64);
    }

    // An empty mask: summond blocks the signals its signalfd reads, and a
    // blocked mask survives execve.
    set_sigmask(0, ptr::null_mut());
    libc::execve(a.program, a.argv, a.envp);
    fail(a, Stage::Exec)
}

/// The raw rt_sigaction syscall: glibc's sigaction() refuses the two
/// real-time signals it reserves (32, 33), which can still arrive ignored
/// from our own parent. `act` and `old` are kernel sigactions; 8 words is
/// larger than their layout on every architecture. Returns 0 on success.
///
/// SAFETY: `act` and `old` are null or point to 8 writable/readable words.
unsafe fn sigaction(sig: c_int, act: *const [u64; 8], old: *mut [u64; 8]) -> libc::c_long {
    libc::syscall(libc::SYS_rt_sigaction, sig, act, old, 8usize)
}

/// The raw rt_sigprocmask syscall (SIG_SETMASK), with the kernel's 64-bit
/// mask; the old one into `old` unless it is null.
///
/// SAFETY: `old` is null or points to a writable u64.
unsafe fn set_sigmask(mask: u64, old: *mut u64) {
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &mask,
        old,
        8usize,
    );
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
    let mut moves = Vec::with_capacity(payload.len() + 3);
    plan_fds_into(&mut moves, pass, stderr, payload, devnull);
    moves
}

/// `plan_fds` into a buffer the caller reuses.
pub fn plan_fds_into(
    moves: &mut Vec<FdMove>,
    pass: Pass,
    stderr: StderrMode,
    payload: &[RawFd],
    devnull: RawFd,
) {
    let mv = |from, to| FdMove { from, to };
    moves.clear();
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
