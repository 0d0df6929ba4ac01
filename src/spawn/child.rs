//! The child, from `clone` to `execve`: it resets what summond changed
//! (signal dispositions, the signal mask), takes a part of the fd table of
//! its own, places its fds, applies the limits, the sandbox and the
//! credentials, and execs; a failure is written as (`Stage`, errno) into
//! the `Report` the parent reads once `clone` returns.
//!
//! Nothing here allocates, locks, logs, formats or touches Rust I/O: the
//! child shares summond's memory (`CLONE_VM`) while summond is suspended,
//! so it makes only raw, async-signal-safe syscalls on memory the parent
//! prepared. A function added here keeps to that.

use std::fmt;
use std::os::fd::RawFd;
use std::ptr;

use nix::libc::{self, c_char, c_int};

use super::fds::FdMove;
use super::image::SandboxImage;
use crate::config::Credentials;

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

    pub(super) fn from_u32(n: u32) -> Option<Stage> {
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

/// Where the child writes how it failed; read by the parent once `clone`
/// returns (the child has exec'd or exited by then).
#[repr(C)]
pub(super) struct Report {
    pub(super) stage: u32,
    pub(super) errno: i32,
}

/// Raw pointers and values the child uses; no owned data, nothing to drop.
pub(super) struct ChildArgs<'a> {
    pub(super) program: *const c_char,
    pub(super) argv: *const *const c_char,
    pub(super) envp: *const *const c_char,
    pub(super) fds: &'a [FdMove],
    pub(super) temp_fds: *mut RawFd,
    pub(super) first_temp: RawFd,
    pub(super) listen_pid_digits: *mut u8,
    pub(super) nofile: Option<libc::rlimit>,
    pub(super) subreaper: bool,
    pub(super) credentials: Option<&'a Credentials>,
    pub(super) groups: &'a [libc::gid_t],
    pub(super) sandbox: &'a SandboxImage,
    pub(super) reset: &'a [c_int],
    pub(super) unshare_from: Option<RawFd>,
    pub(super) report: *mut Report,
}

pub(super) extern "C" fn child_entry(arg: *mut libc::c_void) -> c_int {
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
/// Each step is a plain function of the same kind: raw syscalls on memory
/// the parent prepared, and on a failure `fail` with its stage (it never
/// returns).
///
/// SAFETY: only for the cloned child of a single-threaded parent that
/// waits (CLONE_VFORK); every pointer in `a` points into memory the parent
/// prepared before `clone`.
unsafe fn child_after_clone(a: &ChildArgs<'_>) -> ! {
    reset_signal_dispositions(a.reset);
    unshare_fd_table(a);
    // Its own session and process group, so a signal to the child's group
    // never reaches summond, and a terminal's ^C never reaches the child.
    libc::syscall(libc::SYS_setsid);
    // Best effort (Linux 3.4 on): without it a daemonizing backend's
    // orphans go to init, as before.
    if a.subreaper {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    place_fds(a);

    // The sandbox, in the documented order: rlimits, umask, nice, chroot,
    // chdir, credentials, no_new_privs. Every step is checked; a child
    // that cannot apply one never runs with less isolation than asked.
    set_rlimits(a);
    set_umask_and_nice(a);
    change_root_and_directory(a);
    if let Some(c) = a.credentials {
        drop_privileges(a, c);
    }
    if a.sandbox.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        fail(a, Stage::NoNewPrivs);
    }

    exec(a)
}

/// Default dispositions for what summond changed: Rust ignores SIGPIPE
/// and an ignored signal survives execve; legacy filters rely on dying
/// of SIGPIPE. An all-zero kernel sigaction is SIG_DFL with no flags and
/// an empty mask on every architecture.
///
/// SAFETY: only for the cloned child.
unsafe fn reset_signal_dispositions(signals: &[c_int]) {
    let dfl = [0u64; 8];
    for sig in signals {
        sigaction(*sig, &dfl, ptr::null_mut());
    }
}

/// A table of our own, copied only below the base: summond's listeners
/// above it are neither copied here nor closed by execve.
///
/// SAFETY: only for the cloned child.
unsafe fn unshare_fd_table(a: &ChildArgs<'_>) {
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
}

/// Every `FdMove` carried out. Two passes: lift every source above the
/// target range (CLOEXEC, so the copies vanish at exec), then dup2 down;
/// dup2 clears CLOEXEC on the target, which `dup2(fd, fd)` would not.
///
/// SAFETY: only for the cloned child; `a.temp_fds` has room for one fd
/// per move.
unsafe fn place_fds(a: &ChildArgs<'_>) {
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
}

/// The RLIMIT_NOFILE summond was started with, then the service's rlimits.
///
/// SAFETY: only for the cloned child.
unsafe fn set_rlimits(a: &ChildArgs<'_>) {
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
}

/// SAFETY: only for the cloned child.
unsafe fn set_umask_and_nice(a: &ChildArgs<'_>) {
    let sb = a.sandbox;
    if let Some(mask) = sb.umask {
        libc::umask(mask);
    }
    if let Some(nice) = sb.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            fail(a, Stage::Nice);
        }
    }
}

/// SAFETY: only for the cloned child.
unsafe fn change_root_and_directory(a: &ChildArgs<'_>) {
    let sb = a.sandbox;
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
}

/// setgroups → setgid → setuid: each needs the privilege the next drops.
/// Each is checked; a child that cannot drop privileges never runs.
/// Raw syscalls: glibc's wrappers would signal every thread glibc knows
/// of to change theirs too, which in a CLONE_VM child are the parent's.
///
/// SAFETY: only for the cloned child.
unsafe fn drop_privileges(a: &ChildArgs<'_>, c: &Credentials) {
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

/// The child's pid into its `LISTEN_PID` slot, an empty signal mask, and
/// `execve`, which returns only when it failed.
///
/// SAFETY: only for the cloned child.
unsafe fn exec(a: &ChildArgs<'_>) -> ! {
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
pub(super) unsafe fn sigaction(
    sig: c_int,
    act: *const [u64; 8],
    old: *mut [u64; 8],
) -> libc::c_long {
    libc::syscall(libc::SYS_rt_sigaction, sig, act, old, 8usize)
}

/// The raw rt_sigprocmask syscall (SIG_SETMASK), with the kernel's 64-bit
/// mask; the old one into `old` unless it is null.
///
/// SAFETY: `old` is null or points to a writable u64.
pub(super) unsafe fn set_sigmask(mask: u64, old: *mut u64) {
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
    fn stage_codes_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_u32(s as u32), Some(s));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
