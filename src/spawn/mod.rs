//! Starting a child: `ExecImage` (argv, base environment, credentials,
//! sandbox) built once per service (at its first child), the per-child fd
//! moves and variables built before the spawn, then `clone(CLONE_VM |
//! CLONE_VFORK)` on a stack of our own and a child that makes only raw,
//! async-signal-safe syscalls up to `execve`, the way glibc's
//! `posix_spawn` does. The parent's page tables are never copied; it waits
//! (vfork semantics) until the child has exec'd or failed, and a failure is
//! reported as (stage, errno) in memory the two share, so the parent knows
//! how the exec went when `clone` returns, with no pipe.
//!
//! With an fd base (`Spawner::new`), summond keeps its long-lived fds
//! (listeners) at or above it and the child shares the parent's fd table
//! (`CLONE_FILES`) until it unshares only the part below the base
//! (`close_range(base, ~0, CLOSE_RANGE_UNSHARE)`): the cost of a spawn no
//! longer grows with the number of sockets summond holds. A listener lent
//! to a child is handed over as a copy below the base (`SocketTable`).
//!
//! The parts, in the order a spawn uses them:
//! - `image.rs`: what is prepared before any spawn (`ExecImage`, the
//!   shared base environments in `EnvPool`);
//! - `fds.rs`: the fd plan of a child (`plan_fds`: which fd becomes 0, 1,
//!   2, 3, …);
//! - here, `Spawner::spawn`: the per-child part put beside the image (envp,
//!   the `LISTEN_PID` slot, scratch for the fd moves), then `clone`, and
//!   the child's report read;
//! - `child.rs`: the child between `clone` and `execve`, and `Stage`, where
//!   it failed.
//!
//! Nothing in the child allocates, locks, logs or touches Rust I/O; it
//! runs on memory the parent prepared and the parent is suspended.

mod child;
mod fds;
mod image;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use nix::libc::{self, c_char, c_int};
use nix::unistd::Pid;

use crate::env::EnvBlock;
use child::{child_entry, set_sigmask, sigaction, ChildArgs, Report};

pub use child::Stage;
pub use fds::{plan_fds, plan_fds_into, FdMove, LISTEN_FDS_START};
pub use image::{EnvPool, ExecImage};

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// The per-child part, built by the caller before `spawn`.
pub struct ChildSetup<'a> {
    pub fds: &'a [FdMove],
    /// `NAME=value` strings: LISTEN_FDS, REMOTE_ADDR and the like.
    pub env: &'a EnvBlock,
    /// Add `LISTEN_PID=<the child's own pid>`, written in the child.
    pub listen_pid: bool,
    /// The RLIMIT_NOFILE summond was started with, restored in the child.
    pub nofile: Option<libc::rlimit>,
    /// Make the child a subreaper (PR_SET_CHILD_SUBREAPER, kept across
    /// execve): what its processes orphan is reparented to it, not to
    /// init, so a daemon's double fork stays in its tree.
    pub subreaper: bool,
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
            subreaper: setup.subreaper,
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
