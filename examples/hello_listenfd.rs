//! A daemon that speaks the systemd socket-activation protocol, the way a
//! modern service started by summond (`accept = false`, `pass =
//! "listen_fds"`) or by systemd does:
//!
//! 1. `LISTEN_PID` must be our own pid, or the variables were meant for
//!    some other process (a parent that forgot to unset them);
//! 2. `LISTEN_FDS` sockets start at fd 3, named by `LISTEN_FDNAMES`;
//! 3. unset the variables so our own children do not take them.
//!
//! It then serves every client on every socket: one line saying which
//! process and which socket answered, and how many clients it has seen,
//! which shows that one process serves them all. It exits after
//! `HELLO_IDLE_EXIT` seconds without a client if that is set (summond
//! starts it again on the next client), otherwise it runs until killed.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SD_LISTEN_FDS_START: RawFd = 3;

fn listen_fds() -> Result<Vec<(RawFd, String)>, String> {
    let pid: u32 = std::env::var("LISTEN_PID")
        .map_err(|_| "LISTEN_PID is not set: start me from summond or systemd".to_string())?
        .parse()
        .map_err(|_| "LISTEN_PID is not a number".to_string())?;
    if pid != std::process::id() {
        return Err(format!(
            "LISTEN_PID={pid} is not my pid {}",
            std::process::id()
        ));
    }
    let n: RawFd = std::env::var("LISTEN_FDS")
        .map_err(|_| "LISTEN_FDS is not set".to_string())?
        .parse()
        .map_err(|_| "LISTEN_FDS is not a number".to_string())?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':').map(str::to_string);
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    Ok((0..n)
        .map(|i| {
            (
                SD_LISTEN_FDS_START + i,
                names.next().unwrap_or_else(|| "unknown".into()),
            )
        })
        .collect())
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// SAFETY: `fd` must be a listening stream socket this process owns.
    unsafe fn from_fd(fd: RawFd) -> Listener {
        let tcp = TcpListener::from_raw_fd(fd);
        if tcp.local_addr().is_ok() {
            Listener::Tcp(tcp)
        } else {
            // Not an IP socket: hand the fd over to the Unix type instead.
            let fd = std::os::fd::IntoRawFd::into_raw_fd(tcp);
            Listener::Unix(UnixListener::from_raw_fd(fd))
        }
    }

    /// Accept one client, then greet it with what `greeting` says for the
    /// count at that moment (counted after accept, so numbers follow the
    /// order clients were served in).
    fn serve_one(&self, greeting: impl FnOnce() -> String) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => l.accept()?.0.write_all(greeting().as_bytes()),
            Listener::Unix(l) => l.accept()?.0.write_all(greeting().as_bytes()),
        }
    }
}

fn main() {
    let fds = match listen_fds() {
        Ok(fds) if !fds.is_empty() => fds,
        Ok(_) => {
            eprintln!("hello_listenfd: LISTEN_FDS=0, nothing to serve");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("hello_listenfd: {e}");
            std::process::exit(1);
        }
    };
    let served = Arc::new(AtomicU64::new(0));
    let last_client = Arc::new(std::sync::Mutex::new(Instant::now()));
    for (fd, name) in fds {
        // SAFETY: LISTEN_FDS promised these fds are ours and listening.
        let listener = unsafe { Listener::from_fd(fd) };
        let served = Arc::clone(&served);
        let last_client = Arc::clone(&last_client);
        std::thread::spawn(move || loop {
            let greeting = || {
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                format!(
                    "hello from pid {} on {name}, client {n}\n",
                    std::process::id()
                )
            };
            if let Err(e) = listener.serve_one(greeting) {
                eprintln!("hello_listenfd: {name}: {e}");
            }
            *last_client.lock().unwrap() = Instant::now();
        });
    }
    let idle_exit = std::env::var("HELLO_IDLE_EXIT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(idle) = idle_exit {
            if last_client.lock().unwrap().elapsed() >= idle {
                std::process::exit(0);
            }
        }
    }
}
