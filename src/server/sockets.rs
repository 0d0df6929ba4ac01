//! The socket table: every open listening socket keyed by its address,
//! with its poll token, the service that owns it now, and its state; and
//! the reload diff as a pure function of the open addresses and the new
//! config (keep, open, close). Makes no decision about limits and never
//! logs.
//!
//! A socket's states, and what moves it between them:
//!
//! - watched: in the poll set. `set_watched`, called by the server's
//!   `sync_service` when its service may start a child and it is neither
//!   lent nor parked; a new socket starts unwatched until then.
//! - unwatched by a limit: its service may not start a child now
//!   (`max_instances`, a crash hold, `rate`): `sync_service` deregisters
//!   it, and registers it again once the limit lifts (a child's exit, the
//!   `HoldEnds` or `TokenBack` timer); its clients wait in the backlog.
//! - parked (`parked`): readable while the gate over all services
//!   (`max_children`, the resource back-off) was shut: the server's `park`
//!   unwatches it and notes it here (`park`), and its `unpark` watches it
//!   again (`take_parked`) when the gate opens.
//! - queued (`queued`): clients were left after a turn's accept budget:
//!   `queue_ready`, served at the next turn (`take_ready`) without waiting
//!   for epoll, which would not report them again.
//! - lent (`holders`): held by pass-mode children, unwatched while as many
//!   hold it as its service keeps (`instances`, 1 without): `lend` at each
//!   spawn, `give_back` at each exit (what it left there, who owns the
//!   socket now). With fewer holders than that it is watched again, so
//!   the next client starts the missing ones while the others serve.
//!
//! A reload moves a kept socket to its new owner (`reassign`) in whatever
//! state it is; `remove` closes one, `clear` all at stop. An upgrade hands
//! each socket to the next image (`to_state`), which takes it back as a
//! `Carried` socket.

use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::libc;
use nix::unistd::Pid;

use crate::addr::{ListenAddr, UnixPath};
use crate::config::Config;
use crate::listener::{ListenError, ListenOptions, Listener};
use crate::queue::QueueHead;
use crate::upgrade::ListenerState;

use super::children::HeldSocket;

pub(super) struct OpenSocket {
    pub listener: Listener,
    pub token: Token,
    /// Index into `Server::services`: the service owning the address now.
    pub service: usize,
    pub watched: bool,
    /// The pass-mode children holding this socket, each until it exits
    /// (more than one in a pool: `instances`).
    pub holders: Vec<Pid>,
    /// Unwatched because it became readable while the gate over all
    /// services (max_children, the resource back-off) was shut; watched
    /// again when the gate opens.
    pub parked: bool,
    /// Clients were left after the accept budget: served next turn.
    pub queued: bool,
    /// Blocking, as pass-mode children (tftpd) need it; summond makes it
    /// non-blocking again only when it accepts or reads on it itself, so a
    /// wait service costs no fcntl per child.
    pub blocking: bool,
    /// A copy of the listener below the fd base, made when a pass-mode
    /// child is first lent the socket and closed with it (`lent_fd`).
    low: Option<OwnedFd>,
}

/// What a pass-mode child left on the sockets it held, once given back.
pub(super) struct GivenBack {
    /// It left one exactly as it found it (the same datagram at the head,
    /// a client still waiting after a quick exit): it did no work,
    /// whatever its exit status.
    pub unread: bool,
    /// Something waits on one now (its place among the held sockets, and
    /// the head), to be served without epoll.
    pub waiting: Option<(usize, QueueHead)>,
    /// The services that own them now.
    pub owners: FxHashSet<usize>,
}

#[derive(Default)]
pub(super) struct SocketTable {
    sockets: FxHashMap<ListenAddr, OpenSocket>,
    parked: Vec<ListenAddr>,
    ready: VecDeque<ListenAddr>,
}

impl OpenSocket {
    /// Held by as many children as its service keeps (`instances`): not
    /// watched, nothing to start.
    pub fn lent_out(&self, instances: u32) -> bool {
        self.holders.len() >= instances.max(1) as usize
    }
}

impl SocketTable {
    pub fn get(&self, addr: &ListenAddr) -> Option<&OpenSocket> {
        self.sockets.get(addr)
    }

    pub fn get_mut(&mut self, addr: &ListenAddr) -> Option<&mut OpenSocket> {
        self.sockets.get_mut(addr)
    }

    pub fn contains(&self, addr: &ListenAddr) -> bool {
        self.sockets.contains_key(addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = &OpenSocket> {
        self.sockets.values()
    }

    pub fn addrs(&self) -> impl Iterator<Item = &ListenAddr> {
        self.sockets.keys()
    }

    /// A newly opened socket for service `service`, not yet watched;
    /// `blocking` as it came (a handed socket may be).
    pub fn insert(&mut self, listener: Listener, token: Token, service: usize, blocking: bool) {
        self.sockets.insert(
            listener.addr.clone(),
            OpenSocket {
                listener,
                token,
                service,
                watched: false,
                holders: Vec::new(),
                parked: false,
                queued: false,
                blocking,
                low: None,
            },
        );
    }

    /// The fd to hand `addr`'s socket to a child as. A child shares
    /// summond's fd table only if everything it is handed lies below the
    /// fd base (spawn/mod.rs), and listeners live above it: so a socket lent
    /// to pass-mode children is lent as a copy below the base, made once
    /// and kept with the socket (no syscall per child). If no copy can be
    /// made there (the low range is full), the listener itself: that
    /// child then copies the fd table.
    pub fn lent_fd(&mut self, addr: &ListenAddr, base: Option<RawFd>) -> Option<RawFd> {
        let sock = self.sockets.get_mut(addr)?;
        let fd = sock.listener.socket.as_raw_fd();
        let Some(base) = base.filter(|b| fd >= *b) else {
            return Some(fd);
        };
        if sock.low.is_none() {
            // SAFETY: duplicates the listener, which the table holds open.
            let low = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if low >= 0 {
                // SAFETY: a new fd that nothing else owns.
                let low = unsafe { OwnedFd::from_raw_fd(low) };
                if low.as_raw_fd() < base {
                    sock.low = Some(low);
                }
            }
        }
        Some(sock.low.as_ref().map_or(fd, |l| l.as_raw_fd()))
    }

    /// Close `addr` (the listener's file is removed when it drops; one
    /// the service manager handed goes back as it came).
    pub fn remove(&mut self, registry: &Registry, addr: &ListenAddr) -> Option<OpenSocket> {
        let _ = self.set_watched(registry, addr, false);
        let sock = self.sockets.remove(addr)?;
        sock.listener.give_back();
        Some(sock)
    }

    /// Register or deregister `addr` so its watching matches `want`.
    pub fn set_watched(
        &mut self,
        registry: &Registry,
        addr: &ListenAddr,
        want: bool,
    ) -> io::Result<()> {
        let Some(sock) = self.sockets.get_mut(addr) else {
            return Ok(());
        };
        if sock.watched == want {
            return Ok(());
        }
        let fd = sock.listener.socket.as_raw_fd();
        if want {
            registry.register(&mut SourceFd(&fd), sock.token, Interest::READABLE)?;
        } else {
            registry.deregister(&mut SourceFd(&fd))?;
        }
        sock.watched = want;
        Ok(())
    }

    /// The gate is shut and `addr` has clients: note it for `take_parked`.
    /// The caller unwatches it.
    pub fn park(&mut self, addr: &ListenAddr) {
        if let Some(sock) = self.sockets.get_mut(addr) {
            if !sock.parked {
                sock.parked = true;
                self.parked.push(addr.clone());
            }
        }
    }

    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Every parked socket still open, no longer marked parked.
    pub fn take_parked(&mut self) -> Vec<ListenAddr> {
        let parked = std::mem::take(&mut self.parked);
        self.take_marked(parked, |s| &mut s.parked)
    }

    /// The still-open sockets among `addrs`, each with its mark cleared.
    fn take_marked(
        &mut self,
        addrs: impl IntoIterator<Item = ListenAddr>,
        mark: fn(&mut OpenSocket) -> &mut bool,
    ) -> Vec<ListenAddr> {
        let mut out = Vec::new();
        for addr in addrs {
            if let Some(sock) = self.sockets.get_mut(&addr) {
                *mark(sock) = false;
                out.push(addr);
            }
        }
        out
    }

    /// `addr` has clients left after its accept budget.
    pub fn queue_ready(&mut self, addr: &ListenAddr) {
        if let Some(sock) = self.sockets.get_mut(addr) {
            if !sock.queued {
                sock.queued = true;
                self.ready.push_back(addr.clone());
            }
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The sockets queued so far, in order, no longer marked queued.
    pub fn take_ready(&mut self) -> Vec<ListenAddr> {
        let ready = std::mem::take(&mut self.ready);
        self.take_marked(ready, |s| &mut s.queued)
    }

    /// Lend sockets to pass-mode child `pid`: untouched until it gives
    /// them back, unwatched (`sync_service`) once its service's pool is
    /// full.
    pub fn lend<'a>(&mut self, addrs: impl IntoIterator<Item = &'a ListenAddr>, pid: Pid) {
        for a in addrs {
            if let Some(sock) = self.sockets.get_mut(a) {
                if !sock.holders.contains(&pid) {
                    sock.holders.push(pid);
                }
            }
        }
    }

    /// Give sockets back (`owner`: those it still holds; none: meant for
    /// a child that did not start, so never lent: the other holders keep
    /// them). Returns the services that own them now.
    pub fn release<'a>(
        &mut self,
        addrs: impl IntoIterator<Item = &'a ListenAddr>,
        owner: Option<Pid>,
    ) -> FxHashSet<usize> {
        let mut services = FxHashSet::default();
        for a in addrs {
            if let Some(sock) = self.sockets.get_mut(a) {
                if let Some(pid) = owner {
                    sock.holders.retain(|h| *h != pid);
                }
                services.insert(sock.service);
            }
        }
        services
    }

    /// Pass-mode child `pid`, which ran for `ran`, has exited: what it
    /// left on the sockets it still held (looked at before they are
    /// released), and who owns them now.
    pub fn give_back(&mut self, pid: Pid, held: &[HeldSocket], ran: Duration) -> GivenBack {
        let (mut unread, mut waiting) = (false, None);
        for (i, h) in held.iter().enumerate() {
            let Some(s) = self.sockets.get(&h.addr) else {
                continue;
            };
            if !s.holders.contains(&pid) {
                continue;
            }
            let now = QueueHead::of(&s.listener.socket, &h.addr);
            unread |= h.head.untouched_by(&now, ran);
            if now != QueueHead::Empty && waiting.is_none() {
                waiting = Some((i, now));
            }
        }
        // The table decides what is watched again: a reload may have given
        // a held socket to another service since the child started.
        let owners = self.release(held.iter().map(|h| &h.addr), Some(pid));
        GivenBack {
            unread,
            waiting,
            owners,
        }
    }

    /// Make `addr` blocking (for a pass-mode child) or not (for summond's
    /// own accept and reads), if it is not already.
    pub fn set_blocking(&mut self, addr: &ListenAddr, blocking: bool) {
        if let Some(sock) = self.sockets.get_mut(addr) {
            if sock.blocking != blocking && sock.listener.socket.set_nonblocking(!blocking).is_ok()
            {
                sock.blocking = blocking;
            }
        }
    }

    /// Point each kept socket at the service that owns its address now.
    pub fn reassign(&mut self, owners: &FxHashMap<ListenAddr, usize>) {
        for (addr, sock) in self.sockets.iter_mut() {
            if let Some(idx) = owners.get(addr) {
                sock.service = *idx;
            }
        }
    }

    /// Close everything (at stop).
    pub fn clear(&mut self, registry: &Registry) {
        let addrs: Vec<ListenAddr> = self.sockets.keys().cloned().collect();
        for a in &addrs {
            self.remove(registry, a);
        }
    }

    /// The open sockets, for the next image of an upgrade.
    pub fn to_state(&self) -> impl Iterator<Item = ListenerState> + '_ {
        self.sockets.values().map(|s| listener_state(&s.listener))
    }
}

/// What the next image of an upgrade needs of a listening socket: its
/// fd, its address, the file summond made for it, the options applied.
pub(super) fn listener_state(l: &Listener) -> ListenerState {
    ListenerState {
        fd: l.socket.as_raw_fd(),
        addr: l.addr.to_string(),
        file: l.created_file(),
        options: l.applied().copied(),
        handed: l.handed(),
    }
}

/// A listening socket the previous image of an upgrade handed over, as
/// it comes out of the state: the listener that serves it on was adopted
/// by `Server::new` (as a duplicate), and takes the rest over here.
pub(super) struct Carried {
    pub addr: ListenAddr,
    /// The socket file that image made, to be removed by whoever has it.
    file: Option<(PathBuf, u64, u64)>,
    /// The options it applied (none from an older image).
    options: Option<ListenOptions>,
    /// Handed by the service manager, with this TCP_DEFER_ACCEPT.
    handed: Option<u32>,
}

impl Carried {
    /// Close the state's fd (the original: `new` adopted a duplicate) and
    /// read its address; none if that does not read.
    pub fn take(l: ListenerState) -> Option<Carried> {
        // SAFETY: the state names this fd, and only here is it taken.
        drop(unsafe { OwnedFd::from_raw_fd(l.fd) });
        let addr = carried_addr(l.addr.parse().ok()?, l.file.as_ref());
        Some(Carried {
            addr,
            file: l.file,
            options: l.options,
            handed: l.handed,
        })
    }

    /// `listener`, bound at the same address, takes it over: the removal
    /// of its file, and the options `wanted` as a reload would give a kept
    /// socket (the mode, owner and group of its file, through
    /// `Listener::apply` on the file bound only; the backlog and so on)
    /// if they differ from what the previous image applied.
    pub fn take_over(
        self,
        listener: &mut Listener,
        wanted: &ListenOptions,
    ) -> Result<(), ListenError> {
        if let Some(came) = self.handed {
            // The service manager's: only its defer follows the service.
            listener.set_handed(came);
            return crate::listener::defer_handed(listener, wanted);
        }
        let due = options_due(self.options.as_ref(), wanted, self.file.is_some());
        if let Some(file) = self.file {
            listener.claim_file(file);
        }
        listener.set_applied(self.options);
        if due {
            listener.apply(wanted)?;
        }
        Ok(())
    }

    /// No listener of the new config has its address: its file, if the
    /// previous image made one, is removed now, as a reload would have
    /// (nobody else ever would). Whether there was one.
    pub fn forsake(self) -> bool {
        let had = self.file.is_some();
        if let Some(file) = self.file {
            crate::listener::remove_created_file(file);
        }
        had
    }
}

/// The address a carried socket is bound at: the state's text (lossy
/// where the path is not UTF-8, as a control socket beside such a config
/// is), with the path of the file bound, which is the bytes.
fn carried_addr(addr: ListenAddr, file: Option<&(PathBuf, u64, u64)>) -> ListenAddr {
    match (addr, file) {
        (ListenAddr::Unix(UnixPath::File(_)), Some(file)) => {
            ListenAddr::Unix(UnixPath::File(file.0.clone()))
        }
        (ListenAddr::UnixGram(UnixPath::File(_)), Some(file)) => {
            ListenAddr::UnixGram(UnixPath::File(file.0.clone()))
        }
        (other, _) => other,
    }
}

/// Are `wanted` options to be applied to a carried socket? If they differ
/// from those its previous image `applied`; one whose options that image
/// did not say (an older image) is set if summond made its file
/// (`had_file`), and one handed to summond is left as it came.
fn options_due(applied: Option<&ListenOptions>, wanted: &ListenOptions, had_file: bool) -> bool {
    match applied {
        Some(before) => before != wanted,
        None => had_file,
    }
}

/// What a reload does to the sockets, keyed by address.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SocketPlan {
    /// Addresses to bind, with the index of the service that wants them.
    pub open: Vec<(ListenAddr, usize)>,
    /// Every address of the new config (not disabled) → its service.
    pub owners: FxHashMap<ListenAddr, usize>,
    /// Open addresses no service wants any more.
    pub close: Vec<ListenAddr>,
}

/// The reload diff: open what is new, keep what stays (even if it moved
/// to another service), close what is gone. A disabled service listens
/// on nothing.
pub(super) fn plan<'a>(open_now: impl Iterator<Item = &'a ListenAddr>, new: &Config) -> SocketPlan {
    let mut owners = FxHashMap::default();
    let mut open = Vec::new();
    let open_now: FxHashSet<&ListenAddr> = open_now.collect();
    for (idx, spec) in new.services.iter().enumerate() {
        if spec.disabled {
            continue;
        }
        for l in &spec.listen {
            owners.insert(l.addr.clone(), idx);
            if !open_now.contains(&l.addr) {
                open.push((l.addr.clone(), idx));
            }
        }
    }
    let mut close: Vec<ListenAddr> = open_now
        .into_iter()
        .filter(|a| !owners.contains_key(*a))
        .cloned()
        .collect();
    close.sort_by_key(|a| a.to_string());
    SocketPlan {
        open,
        owners,
        close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Host};
    use std::path::Path;

    fn config(text: &str) -> Config {
        let host = Host {
            path_var: "/usr/bin:/bin".into(),
            is_root: false,
            runtime_base: None,
        };
        parse(Path::new("t.toml"), text, &host).unwrap()
    }

    fn addr(s: &str) -> ListenAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_carried_socket_keeps_its_file_path_and_takes_changed_options() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let bytes = PathBuf::from(OsStr::from_bytes(b"/run/s\xff.sock"));
        let file = (bytes.clone(), 1, 2);
        let lossy = addr(&format!("unix://{}", bytes.to_string_lossy()));
        assert_eq!(
            carried_addr(lossy, Some(&file)),
            ListenAddr::Unix(UnixPath::File(bytes)),
            "the path bound, not its text"
        );
        let tcp = addr("tcp://127.0.0.1:1");
        assert_eq!(carried_addr(tcp.clone(), Some(&file)), tcp);

        let plain = ListenOptions::default();
        let moded = ListenOptions {
            socket_mode: Some(0o600),
            ..plain
        };
        assert!(!options_due(Some(&plain), &plain, true), "unchanged");
        assert!(options_due(Some(&plain), &moded, false), "changed");
        assert!(options_due(None, &plain, true), "an older image's own file");
        assert!(!options_due(None, &moded, false), "a socket handed to it");
    }

    #[test]
    fn reload_keeps_moved_addresses_opens_new_ones_and_closes_the_rest() {
        let new = config(
            "[[service]]\nname = \"a\"\nlisten = [\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:2\"]\nexec = [\"cat\"]\n\
             [[service]]\nname = \"b\"\nlisten = \"tcp://127.0.0.1:3\"\nexec = [\"cat\"]\n\
             [[service]]\nname = \"off\"\nlisten = \"tcp://127.0.0.1:5\"\nexec = [\"cat\"]\ndisabled = true\n",
        );
        let now = [
            addr("tcp://127.0.0.1:3"),
            addr("tcp://127.0.0.1:4"),
            addr("tcp://127.0.0.1:5"),
        ];
        let p = plan(now.iter(), &new);
        assert_eq!(
            p.open,
            vec![
                (addr("tcp://127.0.0.1:1"), 0),
                (addr("tcp://127.0.0.1:2"), 0)
            ]
        );
        assert_eq!(
            p.owners.get(&addr("tcp://127.0.0.1:3")),
            Some(&1),
            "kept, owned by b"
        );
        assert_eq!(
            p.close,
            vec![addr("tcp://127.0.0.1:4"), addr("tcp://127.0.0.1:5")],
            "gone, and disabled"
        );
    }
}
