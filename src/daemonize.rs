//! Process hygiene before the loop starts: make sure fds 0-2 exist (so no
//! socket lands on them and a child's "inherit" stderr is real), mark fds
//! inherited from our parent close-on-exec (children must get no fds but
//! their own), and raise RLIMIT_NOFILE while remembering the limit we were
//! started with, which children get back.

use std::io;
use std::os::fd::RawFd;

use nix::libc;

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Open /dev/null onto any of fds 0, 1, 2 that are closed. `open` returns
/// the lowest free fd, so opening until 2 is taken fills the gaps in order.
pub fn ensure_std_fds() -> io::Result<()> {
    while !(fd_is_open(0) && fd_is_open(1) && fd_is_open(2)) {
        // SAFETY: a NUL-terminated literal path; the fd is intentionally
        // leaked into the 0-2 slot it lands in.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if fd > 2 {
            // SAFETY: we just opened it and nothing else refers to it.
            unsafe { libc::close(fd) };
            break;
        }
    }
    Ok(())
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
