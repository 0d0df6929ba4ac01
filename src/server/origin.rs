//! What this process was started with: the options the process-wide
//! setup gave it, and the sockets handed over at startup (a service
//! manager's LISTEN_FDS, or an upgrade's previous image), by address,
//! until the first config takes them. Every listening socket comes from
//! here: the one handed over for its address, or a new one. Knows
//! nothing of `Server`.

use rustc_hash::FxHashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use log::{info, warn};
use nix::libc;
use socket2::Socket;

use crate::addr::ListenAddr;
use crate::listener::{self, ListenError, ListenOptions, Listener};

/// What the process-wide setup hands the server.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The RLIMIT_NOFILE summond was started with, for its children.
    pub child_nofile: Option<libc::rlimit>,
    /// `-d`: detached from the terminal (the next image of an upgrade
    /// must not detach again).
    pub detached: bool,
    /// The pidfile's open, locked fd and path, handed over on upgrade.
    pub pidfile: Option<(std::os::fd::RawFd, PathBuf)>,
    /// The sockets passed to `new` come from the previous image of a live
    /// upgrade, not from a service manager.
    pub resumed: bool,
    /// Listening sockets are kept at or above this fd, so a spawn copies
    /// only the fd table's low part (see `spawn/mod.rs`).
    pub fd_base: Option<std::os::fd::RawFd>,
    /// The command line the next image of an upgrade runs with, its
    /// paths absolute; none: this process's own.
    pub argv: Option<Vec<Vec<u8>>>,
}

pub(super) struct Origin {
    pub opts: RunOptions,
    /// Sockets handed over and not yet taken, by address.
    handed: FxHashMap<ListenAddr, Socket>,
}

impl Origin {
    /// `handed`: the sockets passed at startup; one whose address cannot
    /// be read is closed.
    pub fn new(opts: RunOptions, handed: Vec<Socket>) -> Origin {
        let mut by_addr = FxHashMap::default();
        for socket in handed {
            let fd = socket.as_raw_fd();
            match crate::handed::address_of(&socket) {
                Ok(addr) => {
                    by_addr.insert(addr, socket);
                }
                Err(e) => warn!("passed fd {fd}: {e}; closing it"),
            }
        }
        Origin {
            opts,
            handed: by_addr,
        }
    }

    /// Is the socket handed over for `addr` blocking? One lent to a wait
    /// child before an upgrade is, and stays so until the child exits.
    pub fn handed_blocking(&self, addr: &ListenAddr) -> bool {
        self.handed
            .get(addr)
            .is_some_and(|s| matches!(s.nonblocking(), Ok(false)))
    }

    /// A socket for `addr` (of `owner`: a service, the control socket,
    /// metrics): the one handed over for it, if any, or a new one; either
    /// way kept at the fd base.
    pub fn adopt_or_open(
        &mut self,
        addr: &ListenAddr,
        opts: ListenOptions,
        owner: &str,
    ) -> Result<Listener, ListenError> {
        let mut made = match self.handed.remove(addr) {
            Some(socket) => {
                // From the previous image of an upgrade it is no news.
                let mut adopted = listener::adopt(addr.clone(), socket)?;
                // An upgrade's socket takes its options at take_over.
                if !self.opts.resumed {
                    info!("{owner}: {addr} adopted from the service manager");
                    listener::defer_handed(&mut adopted, &opts)?;
                }
                Ok(adopted)
            }
            None => listener::open(addr, opts),
        }?;
        if let Some(base) = self.opts.fd_base {
            made.lift(base);
        }
        Ok(made)
    }

    /// After the first config: close the sockets it did not take.
    pub fn close_unclaimed(&mut self) {
        for (addr, socket) in self.handed.drain() {
            warn!(
                "passed socket {addr} (fd {}) matches no configured listen; closing it",
                socket.as_raw_fd()
            );
        }
    }
}
