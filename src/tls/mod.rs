//! TLS in front of a program that does not speak it (SPEC "TLS for
//! programs that do not speak it"): the `tls = { ... }` key's model and
//! the files it names, read at load (`files.rs`: as root, never through a
//! directory another user could write); the rustls configuration built
//! from them (`config.rs`); the server handshake as a state machine the
//! loop drives on readiness (`handshake.rs`; a step of the server's front
//! table, bounded by `HANDSHAKE_TIMEOUT` and `HANDSHAKE_LIMIT`); and the
//! `SSL_*` variables in mod_ssl's formats (`vars.rs`, `dn.rs`). Once the
//! handshake is done, the session is one side of a relayed connection
//! (`crate::relay`, its TLS side in `relay/tls.rs`).
//!
//! Nothing here knows `Server`: the loop owns the table and decides.
//!
//! The crypto provider is ring: it builds with the C compiler alone
//! (aws-lc-rs compiles a whole libcrypto, minutes on this 2-core host, and
//! some setups need cmake), and its P-256, X25519 and AES-GCM are
//! BoringSSL's assembly, the costs of a server handshake.

mod config;
mod dn;
mod files;
mod handshake;
mod vars;

use std::fmt;
use std::path::PathBuf;

use crate::config::raw_path;

pub use config::{server_config, TlsConfig};
pub use files::{load, LoadError, Named, Which};
pub use handshake::{Failure, Handshake, Step, HANDSHAKE_LIMIT, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT};

/// How long a TLS client whose child (or backend) has ended may go
/// without taking any of the rest, or without closing (the relay's
/// `linger`): it would otherwise hold summond's socket and rustls's
/// state with no child counted for it.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an accept-mode TLS child's EOF (all it wrote sent) waits for
/// its exit status before `close_notify` goes anyway. A dying process
/// closes its files just before it becomes a zombie, and summond reaps it
/// in the same turn or the next, so only a child that closed its output
/// and runs on waits this long; its client gets `close_notify` then.
pub const END_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
pub use vars::SslVars;

/// The lowest protocol version offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// A certificate chain and its key, as DER, read from the files at load.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertPair {
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8, PKCS#1 or SEC1 (`key_kind`).
    key: Vec<u8>,
    key_kind: KeyKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum KeyKind {
    Pkcs8,
    Pkcs1,
    Sec1,
}

impl fmt::Debug for CertPair {
    /// Never the key, not even in a debug line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertPair({} certificates, key)", self.chain.len())
    }
}

/// One `sni` entry: a host name and its own pair.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SniEntry {
    pub name: String,
    #[serde(with = "raw_path")]
    pub cert: PathBuf,
    #[serde(with = "raw_path")]
    pub key: PathBuf,
    pub pair: CertPair,
}

/// The `tls` key as the file says it, with the files' contents read at
/// load: a renewed certificate makes the spec differ, so a reload takes
/// it (and a broken one fails the reload, the old pair staying).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsSpec {
    #[serde(with = "raw_path")]
    pub cert: PathBuf,
    #[serde(with = "raw_path")]
    pub key: PathBuf,
    pub pair: CertPair,
    #[serde(with = "raw_path::option")]
    pub client_ca: Option<PathBuf>,
    /// The client CA file's certificates (DER).
    pub client_roots: Vec<Vec<u8>>,
    pub alpn: Vec<String>,
    pub min_version: MinVersion,
    pub sni: Vec<SniEntry>,
}

#[cfg(test)]
mod tests;
