//! The certificate, key and client CA files, read by summond (as root) at
//! load, the way OpenSSH's StrictModes reads a key: the path is resolved
//! once (Let's Encrypt's `live/` names are links into `archive/`), then
//! every directory on the resolved path is reached without following a
//! link (`safe_dir::walk`) and must be held by root or summond alone, and
//! the file itself is opened in the last of them with `O_NOFOLLOW`: it
//! must be a regular file of root's or summond's, writable by no one
//! else; a key must not be readable by every user either. So another
//! user can neither swap in a key or CA of their own (a CA they made would
//! admit their client certificates) nor make summond read a file of
//! theirs as root. Each file is read to at most `MAX_FILE` bytes.

use std::ffi::CString;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{CertPair, KeyKind, MinVersion, SniEntry, TlsSpec};
use crate::safe_dir::{strict_refusal, DirectoryRefusal};

/// A certificate chain or CA bundle is a few KiB; a file far larger is a
/// mistake (a whole trust store, a log) and is not read into memory.
const MAX_FILE: u64 = 1024 * 1024;

/// Which file of the `tls` table an error is about, so the config error
/// points at that entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
    ClientCa,
    /// The cert (false) or key (true) of the nth `sni` entry.
    Sni(usize, bool),
}

/// Why the files of a `tls` table cannot be used.
#[derive(Debug)]
pub struct LoadError {
    pub which: Which,
    pub path: PathBuf,
    pub why: Why,
}

#[derive(Debug)]
pub enum Why {
    Read(io::Error),
    /// A directory on the resolved path another user could write.
    Directory(PathBuf, DirectoryRefusal),
    NotRegular,
    /// The file's owner is neither root nor summond's uid.
    Owner(u32),
    /// Writable by group or others (this mode).
    Writable(u32),
    /// A key readable by every user (this mode).
    ReadableByAll(u32),
    TooLarge,
    NoCertificate,
    BadPem(String),
    NoKey,
    /// The key is not the certificate's, or rustls cannot use it.
    KeyMismatch(String),
    BadCa(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.why {
            Why::Read(e) => write!(f, "cannot read {p}: {e}"),
            Why::Directory(d, why) => write!(
                f,
                "{p}: the directory {} {why}; another user could swap the file",
                d.display()
            ),
            Why::NotRegular => write!(f, "{p} is not a regular file"),
            Why::Owner(uid) => write!(
                f,
                "{p} is owned by uid {uid}, neither root nor summond's uid {}",
                nix::unistd::geteuid()
            ),
            Why::Writable(m) => {
                write!(f, "{p} is writable by others than its owner (mode {m:04o})")
            }
            Why::ReadableByAll(m) => write!(
                f,
                "{p} is a private key readable by every user (mode {m:04o}); chmod o-r it"
            ),
            Why::TooLarge => write!(f, "{p} is larger than {} KiB", MAX_FILE / 1024),
            Why::NoCertificate => write!(f, "{p} holds no PEM certificate"),
            Why::BadPem(e) => write!(f, "{p}: {e}"),
            Why::NoKey => write!(f, "{p} holds no PEM private key"),
            Why::KeyMismatch(e) => write!(f, "{p} does not fit its certificate: {e}"),
            Why::BadCa(e) => write!(f, "{p}: not a usable CA certificate: {e}"),
        }
    }
}

/// What the config file says, before the files are read.
pub struct Named {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub alpn: Vec<String>,
    pub min_version: MinVersion,
    /// Host name, cert, key.
    pub sni: Vec<(String, PathBuf, PathBuf)>,
}

/// Read and check every file `named` names; the spec, or the first
/// error. The pairs are checked as rustls will use them (the key fits
/// the certificate) and the configuration is built once, so a spec that
/// loads is one the loop can serve with.
pub fn load(named: Named) -> Result<TlsSpec, LoadError> {
    let pair = read_pair(&named.cert, &named.key, Which::Cert, Which::Key)?;
    let mut sni = Vec::with_capacity(named.sni.len());
    for (i, (name, cert, key)) in named.sni.into_iter().enumerate() {
        let pair = read_pair(&cert, &key, Which::Sni(i, false), Which::Sni(i, true))?;
        sni.push(SniEntry {
            name,
            cert,
            key,
            pair,
        });
    }
    let client_roots = match &named.client_ca {
        None => Vec::new(),
        Some(path) => read_certs(path, Which::ClientCa)?,
    };
    let spec = TlsSpec {
        cert: named.cert,
        key: named.key,
        pair,
        client_ca: named.client_ca,
        client_roots,
        alpn: named.alpn,
        min_version: named.min_version,
        sni,
    };
    if let Err(e) = super::config::server_config(&spec) {
        let path = spec.client_ca.clone().unwrap_or_default();
        return Err(LoadError {
            which: Which::ClientCa,
            path,
            why: Why::BadCa(e),
        });
    }
    Ok(spec)
}

fn read_pair(cert: &Path, key: &Path, wc: Which, wk: Which) -> Result<CertPair, LoadError> {
    let chain = read_certs(cert, wc)?;
    let err = |why| LoadError {
        which: wk,
        path: key.to_path_buf(),
        why,
    };
    let text = read_strict(key, true).map_err(err)?;
    let der = PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => err(Why::NoKey),
        e => err(Why::BadPem(e.to_string())),
    })?;
    let (kind, bytes) = match &der {
        PrivateKeyDer::Pkcs8(k) => (KeyKind::Pkcs8, k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => (KeyKind::Pkcs1, k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => (KeyKind::Sec1, k.secret_sec1_der()),
        _ => return Err(err(Why::NoKey)),
    };
    let pair = CertPair {
        chain,
        key: bytes.to_vec(),
        key_kind: kind,
    };
    super::config::certified_key(&pair).map_err(|e| err(Why::KeyMismatch(e)))?;
    Ok(pair)
}

/// The PEM certificates in `path`, at least one.
fn read_certs(path: &Path, which: Which) -> Result<Vec<Vec<u8>>, LoadError> {
    let err = |why| LoadError {
        which,
        path: path.to_path_buf(),
        why,
    };
    let text = read_strict(path, false).map_err(err)?;
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(&text) {
        let c = c.map_err(|e| err(Why::BadPem(e.to_string())))?;
        out.push(c.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(err(Why::NoCertificate));
    }
    Ok(out)
}

/// The contents of `path`, read as the header says; `secret`: a key.
fn read_strict(path: &Path, secret: bool) -> Result<Vec<u8>, Why> {
    check_written(path)?;
    let resolved = std::fs::canonicalize(path).map_err(Why::Read)?;
    let parent = resolved.parent().unwrap_or(Path::new("/"));
    let name = resolved.file_name().ok_or(Why::NotRegular)?;
    let name = CString::new(name.as_bytes()).map_err(|_| Why::NotRegular)?;
    let dir = crate::safe_dir::walk(parent, None, check_dir, |e| Why::Read(e.into_io()))?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = nix::fcntl::openat(&dir, name.as_c_str(), flags, Mode::empty())
        .map_err(|e| Why::Read(e.into()))?;
    check_file(&fd, secret)?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE + 1)
        .read_to_end(&mut out)
        .map_err(Why::Read)?;
    if out.len() as u64 > MAX_FILE {
        return Err(Why::TooLarge);
    }
    Ok(out)
}

/// Every directory on the path as written is held by root or summond
/// alone (`strict_refusal`), as every directory of the resolved path is
/// below: a link in a directory another user can write could point
/// root's read at any file (another site's key), and the resolved path
/// never shows the directory that held the link. Let's Encrypt's `live/`
/// links sit in root's directories and pass.
fn check_written(path: &Path) -> Result<(), Why> {
    let mut dirs: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    dirs.reverse();
    for dir in dirs {
        let st = nix::sys::stat::stat(dir).map_err(|e| Why::Read(e.into()))?;
        if let Some(why) = strict_refusal(st.st_uid, st.st_mode) {
            return Err(Why::Directory(dir.to_path_buf(), why));
        }
    }
    Ok(())
}

fn check_dir(dir: &OwnedFd, walked: &Path) -> Result<(), Why> {
    let st = nix::sys::stat::fstat(dir).map_err(|e| Why::Read(e.into()))?;
    match strict_refusal(st.st_uid, st.st_mode) {
        None => Ok(()),
        Some(why) => Err(Why::Directory(walked.to_path_buf(), why)),
    }
}

fn check_file(fd: &OwnedFd, secret: bool) -> Result<(), Why> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Why::Read(e.into()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Why::NotRegular);
    }
    if st.st_uid != 0 && st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(Why::Owner(st.st_uid));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Why::Writable(mode));
    }
    if secret && mode & 0o004 != 0 {
        return Err(Why::ReadableByAll(mode));
    }
    Ok(())
}
