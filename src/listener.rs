//! `ListenAddr` → a bound, listening, non-blocking, close-on-exec socket.
//! TCP and UDP get `SO_REUSEADDR` (a restart must not wait out TIME_WAIT),
//! IPv6 addresses are v6-only so `[::]:80` sits beside `0.0.0.0:80`. A Unix
//! path is probed before it is replaced: a file nobody answers on is stale
//! and removed, a live one is an error (inetd and systemfd unlink blindly
//! and can steal a running server's path). The file a `Listener` created is
//! removed when it drops, but only if it is still the file we bound.
//! Knows nothing of services, limits or poll tokens.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, umask, Mode, SFlag};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::addr::{ListenAddr, UnixPath};

/// The kernel caps this at `net.core.somaxconn` (4096 on current kernels).
/// Clients held back by `max_instances` wait here, so bigger is better;
/// systemd uses the same default.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// How a listening socket is made; from a service's keys (`socket_mode`,
/// `socket_user`, `socket_group`, `backlog`, `v6only`, `reuse_port`,
/// `keepalive`, `nodelay`, `freebind`). Options that do not apply to the
/// address's kind are not set (the config checker rejects them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenOptions {
    pub socket_mode: Option<u32>,
    /// uid and gid for the socket file (`socket_user`, `socket_group`).
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub backlog: Option<i32>,
    /// IPv6 addresses only: false makes one dual-stack socket.
    pub v6only: bool,
    pub reuse_port: bool,
    /// Set on the listener; accepted TCP sockets inherit both.
    pub keepalive: bool,
    pub nodelay: bool,
    pub freebind: bool,
    /// `socket_directory_mode`: missing parent directories of a socket
    /// file are made with this mode before bind. Absent in the options an
    /// older image hands over.
    #[serde(default)]
    pub directory_mode: Option<u32>,
    /// TCP_DEFER_ACCEPT, in seconds: a connection is accepted once its
    /// first bytes are in (a service with `proxy_protocol`, whose clients
    /// always speak first, gets its header at accept). Absent in the
    /// options an older image hands over.
    #[serde(default)]
    pub defer_accept: Option<u32>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            socket_mode: None,
            owner: None,
            group: None,
            backlog: None,
            v6only: true,
            reuse_port: false,
            keepalive: false,
            nodelay: false,
            freebind: false,
            directory_mode: None,
            defer_accept: None,
        }
    }
}

#[derive(Debug)]
pub enum ListenError {
    Socket(io::Error),
    Bind(io::Error),
    Listen(io::Error),
    Chmod(io::Error),
    Chown(io::Error),
    /// Something answered on the socket file: another server owns it.
    Live(PathBuf),
    /// The path exists and is not a socket: never removed.
    NotASocket(PathBuf),
    RemoveStale(PathBuf, io::Error),
    /// The path no longer names the socket file summond bound (renamed,
    /// replaced by a symlink or another file): its mode and owner are
    /// left alone.
    Replaced(PathBuf),
    /// `socket_directory_mode`: the socket's directory could not be made.
    Directory(crate::safe_dir::WalkError),
    /// With socket_directory_mode: a directory on the socket's path that
    /// another user controls.
    UnsafeDirectory(PathBuf, crate::safe_dir::DirectoryRefusal),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Socket(e) => write!(f, "socket: {e}"),
            ListenError::Bind(e) => write!(f, "{e}"),
            ListenError::Listen(e) => write!(f, "listen: {e}"),
            ListenError::Chmod(e) => write!(f, "chmod: {e}"),
            ListenError::Chown(e) => write!(f, "chown: {e}"),
            ListenError::Directory(e) => write!(f, "socket directory: {e}"),
            ListenError::UnsafeDirectory(dir, why) => write!(
                f,
                "socket directory: {} {why}: another user could swap a directory on the path",
                dir.display()
            ),
            ListenError::Live(p) => write!(
                f,
                "{} is in use: another process is listening on it",
                p.display()
            ),
            ListenError::NotASocket(p) => {
                write!(
                    f,
                    "{} exists and is not a socket; not replacing it",
                    p.display()
                )
            }
            ListenError::RemoveStale(p, e) => {
                write!(f, "cannot remove stale socket {}: {e}", p.display())
            }
            ListenError::Replaced(p) => write!(
                f,
                "{} is no longer the socket summond bound; not changing its mode or owner",
                p.display()
            ),
        }
    }
}

impl std::error::Error for ListenError {}

/// A socket file we bound, identified by device and inode so we never
/// remove a file someone else put there since.
#[derive(Debug)]
struct OwnedPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

#[derive(Debug)]
pub struct Listener {
    pub addr: ListenAddr,
    pub socket: Socket,
    created: Option<OwnedPath>,
    /// The options the socket (and its file) were opened or last set
    /// with; none for one handed over, until some are applied.
    applied: Option<ListenOptions>,
    /// A socket the service manager handed (LISTEN_FDS): the
    /// TCP_DEFER_ACCEPT it came with (seconds as the kernel reads it
    /// back; 0 for other sockets), the only option summond sets on it,
    /// and puts back when it lets the socket go (`give_back`).
    handed: Option<u32>,
}

impl Listener {
    /// The socket file summond created for it: path, device, inode.
    pub fn created_file(&self) -> Option<(PathBuf, u64, u64)> {
        self.created
            .as_ref()
            .map(|o| (o.path.clone(), o.dev, o.ino))
    }

    /// Move the socket to the lowest free fd at or above `base` (see
    /// `spawn/mod.rs` for why); where there is none it stays where it is.
    pub fn lift(&mut self, base: RawFd) {
        if self.socket.as_raw_fd() >= base {
            return;
        }
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
        let fd =
            unsafe { nix::libc::fcntl(self.socket.as_raw_fd(), nix::libc::F_DUPFD_CLOEXEC, base) };
        if fd >= 0 {
            // SAFETY: just created; the old socket closes on replacement.
            self.socket = unsafe { Socket::from_raw_fd(fd) };
        }
    }

    /// The options it was opened or last set with, if known.
    pub fn applied(&self) -> Option<&ListenOptions> {
        self.applied.as_ref()
    }

    /// What the previous image of an upgrade says it applied.
    pub fn set_applied(&mut self, opts: Option<ListenOptions>) {
        self.applied = opts;
    }

    /// The TCP_DEFER_ACCEPT a socket the service manager handed came
    /// with; none for another socket.
    pub fn handed(&self) -> Option<u32> {
        self.handed
    }

    /// A socket handed by the service manager, which came with `came`
    /// (the previous image's word, across an upgrade): its defer follows
    /// `opts` from now on (`defer_handed`).
    pub fn set_handed(&mut self, came: u32) {
        self.handed = Some(came);
    }

    /// summond lets a handed socket go (its stop, or a reload that drops
    /// it; not an upgrade): the service manager's copy gets back the
    /// TCP_DEFER_ACCEPT it came with.
    pub fn give_back(&self) {
        if let (Some(came), ListenAddr::Tcp(_)) = (self.handed, &self.addr) {
            let _ = set_defer_accept(&self.socket, came);
        }
    }

    /// `reapply` `opts`, and remember them only if that worked: a change
    /// refused now (the file was not the one bound) is tried again by the
    /// next reload.
    pub fn apply(&mut self, opts: &ListenOptions) -> Result<(), ListenError> {
        reapply(self, opts)?;
        self.applied = Some(*opts);
        Ok(())
    }

    /// Take over the removal of a socket file the previous image created
    /// (live upgrade): removed when this listener closes, if it is still
    /// that file.
    pub fn claim_file(&mut self, (path, dev, ino): (PathBuf, u64, u64)) {
        self.created = Some(OwnedPath { path, dev, ino });
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(owned) = &self.created {
            remove_created_file((owned.path.clone(), owned.dev, owned.ino));
        }
    }
}

/// Remove the socket file summond created at `path`, if the path still
/// names it (device and inode as recorded at bind): a file or symlink put
/// there since is someone else's. Also for the file of a socket the
/// previous image of an upgrade created and the new config no longer has.
pub fn remove_created_file((path, dev, ino): (PathBuf, u64, u64)) {
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if meta.dev() == dev && meta.ino() == ino {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Decide whether an existing socket file may be replaced.
fn clear_stale(path: &Path, stream: bool) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ListenError::Bind(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    match probe(path, stream) {
        Ok(()) => Err(ListenError::Live(path.to_path_buf())),
        // A full backlog (or a full datagram queue) is a live server.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(ListenError::Live(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {
            // The probe took time: remove the file only if the path still
            // names the dead socket it reached, not something swapped in.
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {
                    std::fs::remove_file(path)
                        .map_err(|e| ListenError::RemoveStale(path.to_path_buf(), e))
                }
                Ok(_) => Err(ListenError::NotASocket(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ListenError::Bind(e)),
            }
        }
        // EPROTOTYPE: a socket of the other type is bound there and alive.
        Err(e) if e.raw_os_error() == Some(nix::libc::EPROTOTYPE) => {
            Err(ListenError::Live(path.to_path_buf()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ListenError::Bind(e)),
    }
}

/// Connect to the socket file at `path` without ever blocking: a server
/// whose backlog is full makes a blocking unix connect() wait for room,
/// and this runs in the event loop on reload.
fn probe(path: &Path, stream: bool) -> io::Result<()> {
    let ty = if stream { Type::STREAM } else { Type::DGRAM };
    let s = Socket::new(Domain::UNIX, ty, None)?;
    s.set_nonblocking(true)?;
    s.connect(&SockAddr::unix(path)?)
}

pub(crate) fn unix_sockaddr(path: &UnixPath) -> io::Result<SockAddr> {
    match path {
        UnixPath::File(p) => SockAddr::unix(p),
        UnixPath::Abstract(name) => {
            // socket2 takes an abstract name as a path starting with NUL.
            let mut raw = vec![0u8];
            raw.extend_from_slice(name.as_bytes());
            SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))
        }
    }
}

/// Sets the process umask and puts the old one back when dropped. Used
/// around bind(2), which creates a socket file with mode `0777 & ~umask`:
/// the file is born with the wanted mode, so it is never wider for a
/// moment and no chmod by path (which follows symlinks) is needed. The
/// umask is process-wide; summond has one thread and spawns no child
/// while the guard lives, so no child sees it.
struct UmaskGuard(Mode);

impl UmaskGuard {
    fn set(mask: u32) -> UmaskGuard {
        UmaskGuard(umask(Mode::from_bits_truncate(mask & 0o777)))
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        umask(self.0);
    }
}

/// An `O_PATH` handle on the file at `owned.path`, if it is still the
/// socket file summond bound (same device and inode; `O_NOFOLLOW`: a
/// symlink is a file of its own and does not match). Mode and owner are
/// then changed through the handle, never by path, so a file swapped in
/// after the check is not touched either.
fn open_owned(owned: &OwnedPath) -> Result<OwnedFd, ListenError> {
    let fd = nix::fcntl::open(
        &owned.path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOENT => ListenError::Replaced(owned.path.clone()),
        e => ListenError::Chmod(e.into()),
    })?;
    let st = fstat(&fd).map_err(|e| ListenError::Chmod(e.into()))?;
    if st.st_dev != owned.dev || st.st_ino != owned.ino {
        return Err(ListenError::Replaced(owned.path.clone()));
    }
    Ok(fd)
}

/// Set the mode of the file behind an `O_PATH` handle. fchmod(2) refuses
/// O_PATH descriptors and fchmodat(2) cannot be told not to follow a
/// symlink on Linux; chmod of the handle's /proc/self/fd entry reaches
/// exactly the inode the handle holds (what systemd's fchmod_opath does).
fn chmod_handle(fd: &OwnedFd, mode: u32) -> Result<(), ListenError> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::set_permissions(link, std::fs::Permissions::from_mode(mode))
        .map_err(ListenError::Chmod)
}

/// Give the file behind an `O_PATH` handle the owner and group of `opts`,
/// if any (fchownat with AT_EMPTY_PATH works on O_PATH handles).
fn chown_handle(fd: &OwnedFd, opts: &ListenOptions) -> Result<(), ListenError> {
    if opts.owner.is_none() && opts.group.is_none() {
        return Ok(());
    }
    nix::unistd::fchownat(
        fd,
        "",
        opts.owner.map(nix::unistd::Uid::from_raw),
        opts.group.map(nix::unistd::Gid::from_raw),
        AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| ListenError::Chown(e.into()))
}

/// Re-apply to a socket kept across a reload what can change on an open
/// listening socket: the file's mode and owner, the backlog (listen(2)
/// again), keepalive and nodelay. v6only, reuse_port and freebind only
/// matter at bind time; they apply when the address is opened anew.
pub fn reapply(listener: &Listener, opts: &ListenOptions) -> Result<(), ListenError> {
    if let Some(owned) = &listener.created {
        if opts.socket_mode.is_some() || opts.owner.is_some() || opts.group.is_some() {
            let fd = open_owned(owned)?;
            if let Some(mode) = opts.socket_mode {
                chmod_handle(&fd, mode)?;
            }
            chown_handle(&fd, opts)?;
        }
    }
    if listener.addr.is_stream() {
        let backlog = opts.backlog.unwrap_or(DEFAULT_BACKLOG);
        listener
            .socket
            .listen(backlog)
            .map_err(ListenError::Listen)?;
    }
    if matches!(listener.addr, ListenAddr::Tcp(_)) {
        let s = &listener.socket;
        s.set_keepalive(opts.keepalive)
            .map_err(ListenError::Socket)?;
        s.set_tcp_nodelay(opts.nodelay)
            .map_err(ListenError::Socket)?;
        set_defer_accept(s, opts.defer_accept.unwrap_or(0)).map_err(ListenError::Socket)?;
    }
    Ok(())
}

/// A handed socket (LISTEN_FDS) keeps the options its service manager
/// gave it, at adoption, reload and upgrade alike, but one whose clients
/// speak first (`defer_accept`: PROXY headers, TLS) gets TCP_DEFER_ACCEPT
/// as summond's own would: accepted with its first bytes in, not parked
/// in the loop. A non-zero value it came with (`DeferAcceptSec=`) is the
/// admin's and stays; a service whose clients need not speak first gets
/// back what it came with. TCP only; the first call reads what it came
/// with.
pub fn defer_handed(listener: &mut Listener, opts: &ListenOptions) -> Result<(), ListenError> {
    if !matches!(listener.addr, ListenAddr::Tcp(_)) {
        listener.handed.get_or_insert(0);
        return Ok(());
    }
    let came = match listener.handed {
        Some(came) => came,
        None => get_defer_accept(&listener.socket).map_err(ListenError::Socket)?,
    };
    listener.handed = Some(came);
    let secs = match opts.defer_accept {
        Some(secs) if came == 0 => secs,
        _ => came,
    };
    set_defer_accept(&listener.socket, secs).map_err(ListenError::Socket)
}

/// TCP_DEFER_ACCEPT now, in seconds (as the kernel rounds it).
fn get_defer_accept(s: &Socket) -> io::Result<u32> {
    let mut value: nix::libc::c_int = 0;
    let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(value).unwrap_or(0))
}

/// TCP_DEFER_ACCEPT (0 clears it); socket2 does not offer it.
fn set_defer_accept(s: &Socket, secs: u32) -> io::Result<()> {
    let value = nix::libc::c_int::try_from(secs).unwrap_or(nix::libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from `value`.
    let rc = unsafe {
        nix::libc::setsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket summond was handed for `addr` (LISTEN_FDS, or the previous
/// image of an upgrade): used as it is; its file (if any) is not summond's
/// to remove. O_NONBLOCK is left as it came: it lives on the open file
/// description, which a wait child handed the socket before an upgrade
/// shares and may be blocked reading (its next read would fail with
/// EAGAIN). Whoever reads the socket itself makes it non-blocking first.
pub fn adopt(addr: ListenAddr, socket: Socket) -> Result<Listener, ListenError> {
    socket.set_cloexec(true).map_err(ListenError::Socket)?;
    Ok(Listener {
        addr,
        socket,
        created: None,
        applied: None,
        handed: None,
    })
}

/// `socket_directory_mode`: the directory the socket file goes in, made
/// with its missing parents (`mode`, summond's uid), never through a
/// symbolic link: the walk from / refuses one anywhere on the path.
fn make_parent(path: &Path, mode: u32) -> Result<(), ListenError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    // Every directory on the way held by root or summond alone (as the
    // pidfile's): one another user may write could have a component
    // swapped for a link between this walk and bind(2), which goes by
    // the path again (and moved a root socket elsewhere).
    let strict = |dir: &OwnedFd, walked: &Path| {
        let st = fstat(dir).map_err(|e| ListenError::Bind(e.into()))?;
        match crate::safe_dir::strict_refusal(st.st_uid, st.st_mode) {
            None => Ok(()),
            Some(why) => Err(ListenError::UnsafeDirectory(walked.to_path_buf(), why)),
        }
    };
    crate::safe_dir::walk(parent, Some(mode), strict, ListenError::Directory)?;
    Ok(())
}

/// Create, bind and (for stream sockets) listen on `addr`.
pub fn open(addr: &ListenAddr, opts: ListenOptions) -> Result<Listener, ListenError> {
    let backlog = opts.backlog.unwrap_or(DEFAULT_BACKLOG);
    let (socket, sockaddr, unix_path) = match addr {
        ListenAddr::Tcp(sa) | ListenAddr::Udp(sa) => {
            let s = inet_socket(sa, matches!(addr, ListenAddr::Tcp(_)), &opts)?;
            (s, SockAddr::from(*sa), None)
        }
        ListenAddr::Unix(p) | ListenAddr::UnixGram(p) => unix_socket(p, addr.is_stream(), &opts)?,
    };
    {
        // The file is born with socket_mode (see UmaskGuard); the guard
        // goes before anything else can run.
        let _mask = match (&unix_path, opts.socket_mode) {
            (Some(_), Some(mode)) => Some(UmaskGuard::set(!mode)),
            _ => None,
        };
        socket.bind(&sockaddr).map_err(ListenError::Bind)?;
    }
    let mut listener = Listener {
        addr: addr.clone(),
        socket,
        created: None,
        applied: Some(opts),
        handed: None,
    };
    if let Some(path) = unix_path {
        own_socket_file(&mut listener, path, &opts)?;
    }
    if addr.is_stream() {
        listener
            .socket
            .listen(backlog)
            .map_err(ListenError::Listen)?;
    }
    Ok(listener)
}

/// A TCP or UDP socket for `sa` with the options set that must be set
/// before bind. socket2 creates every socket with SOCK_CLOEXEC on Linux;
/// non-blocking from the start too (no fcntl per socket: 10,000 add up).
fn inet_socket(
    sa: &std::net::SocketAddr,
    stream: bool,
    opts: &ListenOptions,
) -> Result<Socket, ListenError> {
    let ty = if stream { Type::STREAM } else { Type::DGRAM };
    let s = Socket::new(Domain::for_address(*sa), ty.nonblocking(), None)
        .map_err(ListenError::Socket)?;
    s.set_reuse_address(true).map_err(ListenError::Socket)?;
    if sa.is_ipv6() {
        s.set_only_v6(opts.v6only).map_err(ListenError::Socket)?;
    }
    if opts.reuse_port {
        s.set_reuse_port(true).map_err(ListenError::Socket)?;
    }
    if opts.freebind {
        if sa.is_ipv6() {
            s.set_freebind_v6(true).map_err(ListenError::Socket)?;
        } else {
            s.set_freebind_v4(true).map_err(ListenError::Socket)?;
        }
    }
    if stream {
        // accept() copies both to each connection.
        if opts.keepalive {
            s.set_keepalive(true).map_err(ListenError::Socket)?;
        }
        if opts.nodelay {
            s.set_tcp_nodelay(true).map_err(ListenError::Socket)?;
        }
        if let Some(secs) = opts.defer_accept {
            set_defer_accept(&s, secs).map_err(ListenError::Socket)?;
        }
    }
    Ok(s)
}

/// A Unix socket for `p`, with its address and, for a file, the path
/// bind will create: its missing directories made (socket_directory_mode)
/// and a stale socket file cleared first.
fn unix_socket(
    p: &UnixPath,
    stream: bool,
    opts: &ListenOptions,
) -> Result<(Socket, SockAddr, Option<PathBuf>), ListenError> {
    if let UnixPath::File(path) = p {
        if let Some(mode) = opts.directory_mode {
            make_parent(path, mode)?;
        }
        clear_stale(path, stream)?;
    }
    let ty = if stream { Type::STREAM } else { Type::DGRAM };
    let s = Socket::new(Domain::UNIX, ty.nonblocking(), None).map_err(ListenError::Socket)?;
    let sockaddr = unix_sockaddr(p).map_err(ListenError::Bind)?;
    let file = match p {
        UnixPath::File(path) => Some(path.clone()),
        UnixPath::Abstract(_) => None,
    };
    Ok((s, sockaddr, file))
}

/// Make the socket file bind(2) just created at `path` the listener's:
/// what the path names now must be that socket, a socket file owned by
/// summond's euid (no one else can make one of those, and
/// protected_hardlinks forbids linking one). Something else means the
/// path was swapped under us: refuse, and never remove or chown it.
/// Then its mode bits beyond 0777 and its owner, before listen(): no
/// client connects before the owner is right.
fn own_socket_file(
    listener: &mut Listener,
    path: PathBuf,
    opts: &ListenOptions,
) -> Result<(), ListenError> {
    let fd = nix::fcntl::open(
        &path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ListenError::Bind(e.into()))?;
    let st = fstat(&fd).map_err(|e| ListenError::Bind(e.into()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK
        || st.st_uid != nix::unistd::geteuid().as_raw()
    {
        return Err(ListenError::Replaced(path));
    }
    // From here on the file is ours: dropping the listener (a failure
    // below included) removes it.
    listener.created = Some(OwnedPath {
        path,
        dev: st.st_dev,
        ino: st.st_ino,
    });
    // Bits beyond 0777 (setgid, sticky) are not made by bind(2).
    if let Some(mode) = opts.socket_mode.filter(|m| m & !0o777 != 0) {
        chmod_handle(&fd, mode)?;
    }
    chown_handle(&fd, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("summond-listener-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn stale_socket_file_is_replaced_and_removed_on_drop() {
        let dir = temp_dir("stale");
        let path = dir.join("s.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves a dead socket file
        assert!(path.exists());
        let addr: ListenAddr = format!("unix://{}", path.display()).parse().unwrap();
        let l = open(
            &addr,
            ListenOptions {
                socket_mode: Some(0o600),
                ..ListenOptions::default()
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        UnixStream::connect(&path).unwrap();
        drop(l);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reapply_changes_only_the_socket_file_it_bound() {
        let dir = temp_dir("reapply");
        let path = dir.join("s.sock");
        let addr: ListenAddr = format!("unix://{}", path.display()).parse().unwrap();
        let opts = |mode| ListenOptions {
            socket_mode: Some(mode),
            ..ListenOptions::default()
        };
        let l = open(&addr, opts(0o600)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        reapply(&l, &opts(0o640)).unwrap();
        assert_eq!(mode(&path), 0o640, "the bound file itself changes");
        // Swapped for a symlink to a file of someone else's.
        let target = dir.join("target");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&path, dir.join("moved.sock")).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            reapply(&l, &opts(0o666)),
            Err(ListenError::Replaced(_))
        ));
        assert_eq!(mode(&target), 0o600, "nothing followed the symlink");
        drop(l);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "and the symlink is not removed at drop"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn live_socket_and_plain_file_are_refused() {
        let dir = temp_dir("live");
        let path = dir.join("live.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let addr: ListenAddr = format!("unix://{}", path.display()).parse().unwrap();
        assert!(matches!(
            open(&addr, ListenOptions::default()),
            Err(ListenError::Live(_))
        ));
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let addr: ListenAddr = format!("unixgram://{}", file.display()).parse().unwrap();
        assert!(matches!(
            open(&addr, ListenOptions::default()),
            Err(ListenError::NotASocket(_))
        ));
        assert!(file.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_live_server_with_a_full_backlog_is_refused_without_blocking() {
        let dir = temp_dir("full");
        let path = dir.join("full.sock");
        let server = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        server.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        server.listen(0).unwrap();
        // Fill the backlog; the server never accepts.
        let mut clients = Vec::new();
        for _ in 0..64 {
            let c = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            c.set_nonblocking(true).unwrap();
            match c.connect(&SockAddr::unix(&path).unwrap()) {
                Ok(()) => clients.push(c),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        let addr: ListenAddr = format!("unix://{}", path.display()).parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(matches!(
                open(&addr, ListenOptions::default()),
                Err(ListenError::Live(_))
            ));
        });
        let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(outcome, Ok(true), "the probe must not wait for room");
        drop(clients);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A test that cannot run here: in CI (which has IPv6 loopback) that
    /// is a failure, elsewhere a line on stderr. The integration tests'
    /// `skip()`, which a unit test cannot import.
    fn skip(test: &str, reason: &str) {
        if std::env::var_os("CI").is_some() {
            panic!("{test} cannot run in CI: {reason}");
        }
        eprintln!("SKIPPED {test}: {reason}");
    }

    #[test]
    fn ipv6_listeners_are_v6_only() {
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            skip("ipv6_listeners_are_v6_only", "no IPv6 loopback here");
            return;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr: ListenAddr = format!("tcp://[::1]:{port}").parse().unwrap();
        let l = open(&addr, ListenOptions::default()).unwrap();
        assert!(
            l.socket.only_v6().unwrap(),
            "[::] must be able to sit beside 0.0.0.0"
        );
    }

    #[test]
    fn tcp_listener_is_nonblocking_and_cloexec() {
        let addr: ListenAddr = "tcp://127.0.0.1:1".parse().unwrap();
        // port 1 needs root to bind; use an ephemeral one instead
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr = match addr {
            ListenAddr::Tcp(mut sa) => {
                sa.set_port(port);
                ListenAddr::Tcp(sa)
            }
            _ => unreachable!(),
        };
        let l = open(&addr, ListenOptions::default()).unwrap();
        assert!(l.socket.nonblocking().unwrap());
        let flags = nix::fcntl::fcntl(&l.socket, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & nix::libc::FD_CLOEXEC != 0);
        assert!(l.socket.reuse_address().unwrap());
    }
}
