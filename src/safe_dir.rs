//! Reaching a directory as root without following a symbolic link: the
//! path is opened from `/` one component at a time with `O_NOFOLLOW |
//! O_DIRECTORY`, each step relative to the fd of the directory before it,
//! so no component can be swapped for a link to somewhere else on the
//! way. A missing component can be made on the way (`mkdirat` in the fd
//! of its parent). The fd at the end names the directory for good: what
//! is changed on it afterwards (`fchown`, `fchmod`) is changed on that
//! directory, whatever its name leads to by then.
//!
//! Used for the pidfile's directory, `runtime_directory`,
//! `socket_directory_mode` and the directories above a systemd
//! EnvironmentFile= that `summond import` reads.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

/// Why a directory on a path root uses is refused (OpenSSH's StrictModes):
/// another user could swap what it holds under summond.
#[derive(Debug, PartialEq, Eq)]
pub enum DirectoryRefusal {
    /// Owned by this uid, neither root nor summond's.
    Owner(u32),
    /// Writable by group or others (this mode) without the sticky bit.
    Writable(u32),
}

impl fmt::Display for DirectoryRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryRefusal::Owner(uid) => write!(
                f,
                "is owned by uid {uid}, neither root nor summond's uid {}",
                nix::unistd::geteuid()
            ),
            DirectoryRefusal::Writable(mode) => write!(
                f,
                "is writable by others than its owner (mode {mode:04o}, no sticky bit)"
            ),
        }
    }
}

/// What is wrong with a directory (its owner and mode) on a path root
/// uses, if anything: owned by root or summond's uid, and writable by no
/// one else unless sticky.
pub fn strict_refusal(uid: u32, mode: u32) -> Option<DirectoryRefusal> {
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Some(DirectoryRefusal::Owner(uid));
    }
    if mode & 0o022 != 0 && mode & nix::libc::S_ISVTX == 0 {
        return Some(DirectoryRefusal::Writable(mode & 0o7777));
    }
    None
}

/// Why a directory could not be reached.
#[derive(Debug)]
pub enum WalkError {
    /// This component of the path is a symbolic link.
    Symlink(PathBuf),
    /// This component exists and is not a directory.
    NotDirectory(PathBuf),
    /// Not absolute, or holds `..` or a NUL byte.
    BadPath(PathBuf),
    /// Opening or making this component failed.
    Io(PathBuf, io::Error),
}

impl WalkError {
    /// As an `io::Error`, for callers that report the whole path.
    pub fn into_io(self) -> io::Error {
        match self {
            WalkError::Symlink(_) => Errno::ELOOP.into(),
            WalkError::NotDirectory(_) => Errno::ENOTDIR.into(),
            WalkError::BadPath(_) => io::ErrorKind::InvalidInput.into(),
            WalkError::Io(_, e) => e,
        }
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Symlink(p) => write!(
                f,
                "{} is a symbolic link, which summond does not follow here",
                p.display()
            ),
            WalkError::NotDirectory(p) => {
                write!(f, "{} exists and is not a directory", p.display())
            }
            WalkError::BadPath(p) => {
                write!(f, "{} is not an absolute path without \"..\"", p.display())
            }
            WalkError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for WalkError {}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Open the directory at the absolute `path` without following a link.
/// `visit` sees each directory as it is opened, `/` first, with the path
/// walked so far (the pidfile checks each one's owner and mode there);
/// its error ends the walk. With `create = Some(mode)`, a missing
/// component is made, owned by summond's uid, with exactly `mode` (the
/// umask does not narrow it); without, it is an error.
pub fn walk<E>(
    path: &Path,
    create: Option<u32>,
    visit: impl FnMut(&OwnedFd, &Path) -> Result<(), E>,
    fail: impl Fn(WalkError) -> E,
) -> Result<OwnedFd, E> {
    match path.strip_prefix("/") {
        Ok(below) => walk_below(Path::new("/"), below, create, visit, fail),
        Err(_) => Err(fail(WalkError::BadPath(path.into()))),
    }
}

/// `walk` to `base` (which must exist), then on through the relative
/// `below`, whose missing components `create` makes.
fn walk_below<E>(
    base: &Path,
    below: &Path,
    create: Option<u32>,
    mut visit: impl FnMut(&OwnedFd, &Path) -> Result<(), E>,
    fail: impl Fn(WalkError) -> E,
) -> Result<OwnedFd, E> {
    if !base.is_absolute() || below.is_absolute() {
        return Err(fail(WalkError::BadPath(base.join(below))));
    }
    let mut walked = PathBuf::from("/");
    let mut dir = nix::fcntl::open(c"/", DIR_FLAGS, Mode::empty())
        .map_err(|e| fail(WalkError::Io(walked.clone(), e.into())))?;
    visit(&dir, &walked)?;
    let base_parts = base.components().map(|c| (c, None));
    let below_parts = below.components().map(|c| (c, create));
    for (part, create) in base_parts.chain(below_parts) {
        let part = match part {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(p) => p,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(fail(WalkError::BadPath(base.join(below))))
            }
        };
        walked.push(part);
        let name = CString::new(part.as_bytes())
            .map_err(|_| fail(WalkError::BadPath(base.join(below))))?;
        dir = step(&dir, &name, &walked, create).map_err(&fail)?;
        visit(&dir, &walked)?;
    }
    Ok(dir)
}

/// Make `base/name` (and the parents below `base` it needs, mode 0755,
/// summond's uid), then give that innermost directory `uid`, `gid` and
/// `mode` through its own fd, as systemd does for RuntimeDirectory=. An
/// existing directory is taken as it is and given the same; a link or
/// another kind of file anywhere on the way is refused.
pub fn make_owned(
    base: &Path,
    name: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), WalkError> {
    let fd = walk_below(base, name, Some(0o755), |_, _| Ok(()), |e| e)?;
    let path = base.join(name);
    let io = |e: Errno| WalkError::Io(path.clone(), e.into());
    nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into())).map_err(io)?;
    // After the chown, which clears set-id bits.
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(io)
}

/// Open `name` in `dir` as a directory, making it first when missing
/// and `create` says with which mode.
fn step(
    dir: &OwnedFd,
    name: &CStr,
    shown: &Path,
    create: Option<u32>,
) -> Result<OwnedFd, WalkError> {
    let open = || nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty());
    match (open(), create) {
        (Ok(fd), _) => Ok(fd),
        (Err(Errno::ENOENT), Some(mode)) => {
            match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
                // Made by someone else in the meantime: opened below as
                // whatever it is, and refused if it is no directory.
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(WalkError::Io(shown.into(), e.into())),
            }
            let fd = open().map_err(|e| refusal(dir, name, shown, e))?;
            // Born 0700 (nobody else can enter it before its mode is
            // set), then given the mode through its own fd.
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(|e| WalkError::Io(shown.into(), e.into()))?;
            Ok(fd)
        }
        (Err(e), _) => Err(refusal(dir, name, shown, e)),
    }
}

/// What an `openat` error means: ELOOP or ENOTDIR are told apart by what
/// the name is (a link, or another kind of file).
fn refusal(dir: &OwnedFd, name: &CStr, shown: &Path, err: Errno) -> WalkError {
    if !matches!(err, Errno::ELOOP | Errno::ENOTDIR) {
        return WalkError::Io(shown.into(), err.into());
    }
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            WalkError::Symlink(shown.into())
        }
        Ok(_) => WalkError::NotDirectory(shown.into()),
        Err(e) => WalkError::Io(shown.into(), e.into()),
    }
}

/// Why root may not connect to a unix socket path (forward mode's
/// `unix://` backend): another user could point it somewhere else.
#[derive(Debug)]
pub enum SocketPathRefusal {
    /// A component is a link, not a directory, or the path is not clean.
    Walk(WalkError),
    /// This directory on the way fails `strict_refusal`.
    Directory(PathBuf, DirectoryRefusal),
    /// This directory on the way does not exist (yet).
    Missing(PathBuf),
    /// The last component is not a socket (a link, a file, nothing).
    NotSocket(PathBuf),
}

impl fmt::Display for SocketPathRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketPathRefusal::Walk(e) => e.fmt(f),
            SocketPathRefusal::Directory(p, why) => write!(f, "directory {} {why}", p.display()),
            SocketPathRefusal::Missing(p) => write!(f, "directory {} does not exist", p.display()),
            SocketPathRefusal::NotSocket(p) => write!(
                f,
                "{} is not a socket (a symbolic link is not followed)",
                p.display()
            ),
        }
    }
}

/// The directories above the socket `path`, `/` first, each as
/// `strict_refusal` wants it, none a link: then only root or summond can
/// change what the path names (a sticky directory's other users cannot
/// replace an entry they do not own), so a later `lstat` and `connect` see
/// the same file. Checked with `lstat` per component, top down: each step
/// sits in a directory already found safe.
pub fn socket_parents(path: &Path) -> Result<(), SocketPathRefusal> {
    let bad = || SocketPathRefusal::Walk(WalkError::BadPath(path.into()));
    let parent = path.parent().ok_or_else(bad)?;
    if !path.is_absolute() {
        return Err(bad());
    }
    let mut walked = PathBuf::from("/");
    let check = |dir: &Path| -> Result<(), SocketPathRefusal> {
        let st = match nix::sys::stat::lstat(dir) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(SocketPathRefusal::Missing(dir.into())),
            Err(e) => return Err(SocketPathRefusal::Walk(WalkError::Io(dir.into(), e.into()))),
        };
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => {}
            SFlag::S_IFLNK => return Err(SocketPathRefusal::Walk(WalkError::Symlink(dir.into()))),
            _ => return Err(SocketPathRefusal::Walk(WalkError::NotDirectory(dir.into()))),
        }
        match strict_refusal(st.st_uid, st.st_mode as u32) {
            Some(why) => Err(SocketPathRefusal::Directory(dir.into(), why)),
            None => Ok(()),
        }
    };
    check(&walked)?;
    for c in parent.components() {
        match c {
            Component::RootDir => continue,
            Component::Normal(name) => walked.push(name),
            _ => return Err(bad()),
        }
        check(&walked)?;
    }
    Ok(())
}

/// `socket_parents`, and the path itself a socket (not a link to one).
pub fn connectable_socket(path: &Path) -> Result<(), SocketPathRefusal> {
    socket_parents(path)?;
    match nix::sys::stat::lstat(path) {
        Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFSOCK.bits() => Ok(()),
        _ => Err(SocketPathRefusal::NotSocket(path.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("summond-safe-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::canonicalize(&dir).unwrap()
    }

    fn open(path: &Path, create: Option<u32>) -> Result<OwnedFd, WalkError> {
        walk(path, create, |_, _| Ok(()), |e| e)
    }

    #[test]
    fn missing_directories_are_made_with_the_mode_and_links_are_refused() {
        let base = temp_dir("make");
        let deep = base.join("a/b/c");
        assert!(matches!(open(&deep, None), Err(WalkError::Io(p, _)) if p == base.join("a")));
        open(&deep, Some(0o750)).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(base.join(p))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o750, "{p}");
        }
        // An existing directory keeps its mode.
        open(&deep, Some(0o700)).unwrap();
        let mode = std::fs::metadata(&deep).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o750);

        std::os::unix::fs::symlink(base.join("a"), base.join("link")).unwrap();
        let err = open(&base.join("link/b"), Some(0o755)).unwrap_err();
        assert!(
            matches!(&err, WalkError::Symlink(p) if *p == base.join("link")),
            "{err}"
        );
        std::fs::write(base.join("file"), "").unwrap();
        let err = open(&base.join("file/x"), Some(0o755)).unwrap_err();
        assert!(
            matches!(&err, WalkError::NotDirectory(p) if *p == base.join("file")),
            "{err}"
        );
        // A dangling link is not followed to make its target.
        std::os::unix::fs::symlink(base.join("nowhere"), base.join("dangling")).unwrap();
        let err = open(&base.join("dangling"), Some(0o755)).unwrap_err();
        assert!(matches!(err, WalkError::Symlink(_)), "{err}");
        assert!(!base.join("nowhere").exists());
        assert!(matches!(
            open(Path::new("relative/x"), None),
            Err(WalkError::BadPath(_))
        ));
        assert!(matches!(
            open(&base.join("a/../a"), None),
            Err(WalkError::BadPath(_))
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
