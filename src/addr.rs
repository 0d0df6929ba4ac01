//! Listen addresses as the config writes them (`tcp://127.0.0.1:7007`,
//! `udp://[::1]:53`, `unix:///run/app.sock`, `unixgram:///run/log.sock`,
//! `unix://@name`): parsing, a `Display` that round-trips, and what kind of
//! socket each one needs. No syscalls here; `listener.rs` builds the sockets.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// `sun_path` is 108 bytes including the terminating NUL (abstract names
/// have no NUL but lose the leading one), so 107 usable bytes either way.
const SUN_PATH_MAX: usize = 107;

/// Where a Unix socket lives: a file on disk or a Linux abstract name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnixPath {
    File(PathBuf),
    /// The name without the leading `@` (the kernel's leading NUL).
    Abstract(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(UnixPath),
    UnixGram(UnixPath),
}

impl ListenAddr {
    /// Stream sockets can be accepted on; datagram sockets cannot.
    pub fn is_stream(&self) -> bool {
        matches!(self, ListenAddr::Tcp(_) | ListenAddr::Unix(_))
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, ListenAddr::Unix(_) | ListenAddr::UnixGram(_))
    }

    /// The file this address creates on disk, if any (abstract names and IP
    /// addresses create none).
    pub fn socket_file(&self) -> Option<&PathBuf> {
        match self {
            ListenAddr::Unix(UnixPath::File(p)) | ListenAddr::UnixGram(UnixPath::File(p)) => {
                Some(p)
            }
            _ => None,
        }
    }
}

/// Why an address string was rejected; the message names what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    NoScheme,
    UnknownScheme(String),
    BadInetAddr(String),
    PortZero,
    EmptyPath,
    RelativePath(String),
    PathTooLong(usize),
    NulInPath,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::NoScheme => write!(
                f,
                "address needs a scheme: tcp://, udp://, unix:// or unixgram://"
            ),
            AddrError::UnknownScheme(s) => write!(
                f,
                "unknown address scheme \"{s}://\" (expected tcp, udp, unix or unixgram)"
            ),
            AddrError::BadInetAddr(s) => write!(
                f,
                "\"{s}\" is not IP:PORT (an IP literal, [brackets] around IPv6, and a port)"
            ),
            AddrError::PortZero => write!(f, "port 0 is not allowed: name the port to listen on"),
            AddrError::EmptyPath => write!(f, "unix socket address has no path"),
            AddrError::RelativePath(p) => {
                write!(
                    f,
                    "unix socket path \"{p}\" must be absolute (unix:///path)"
                )
            }
            AddrError::PathTooLong(n) => write!(
                f,
                "unix socket path is {n} bytes, more than the {SUN_PATH_MAX} the kernel allows"
            ),
            AddrError::NulInPath => write!(f, "unix socket path contains a NUL byte"),
        }
    }
}

impl std::error::Error for AddrError {}

fn parse_inet(rest: &str) -> Result<SocketAddr, AddrError> {
    let sa = SocketAddr::from_str(rest).map_err(|_| AddrError::BadInetAddr(rest.to_string()))?;
    if sa.port() == 0 {
        return Err(AddrError::PortZero);
    }
    Ok(sa)
}

fn parse_unix(rest: &str) -> Result<UnixPath, AddrError> {
    if rest.contains('\0') {
        return Err(AddrError::NulInPath);
    }
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(AddrError::EmptyPath);
        }
        if name.len() > SUN_PATH_MAX {
            return Err(AddrError::PathTooLong(name.len()));
        }
        return Ok(UnixPath::Abstract(name.to_string()));
    }
    if rest.is_empty() {
        return Err(AddrError::EmptyPath);
    }
    if !rest.starts_with('/') {
        return Err(AddrError::RelativePath(rest.to_string()));
    }
    if rest.len() > SUN_PATH_MAX {
        return Err(AddrError::PathTooLong(rest.len()));
    }
    Ok(UnixPath::File(PathBuf::from(rest)))
}

/// As its text (`tcp://127.0.0.1:7`), which `FromStr` reads back.
impl serde::Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse()
            .map_err(|e: AddrError| serde::de::Error::custom(e.to_string()))
    }
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or(AddrError::NoScheme)?;
        match scheme {
            "tcp" => parse_inet(rest).map(ListenAddr::Tcp),
            "udp" => parse_inet(rest).map(ListenAddr::Udp),
            "unix" => parse_unix(rest).map(ListenAddr::Unix),
            "unixgram" => parse_unix(rest).map(ListenAddr::UnixGram),
            other => Err(AddrError::UnknownScheme(other.to_string())),
        }
    }
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPath::File(p) => write!(f, "{}", p.display()),
            UnixPath::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(sa) => write!(f, "tcp://{sa}"),
            ListenAddr::Udp(sa) => write!(f, "udp://{sa}"),
            ListenAddr::Unix(p) => write!(f, "unix://{p}"),
            ListenAddr::UnixGram(p) => write!(f, "unixgram://{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_round_trip() {
        for s in [
            "tcp://127.0.0.1:7007",
            "tcp://[::1]:7007",
            "tcp://0.0.0.0:80",
            "tcp://[::]:80",
            "udp://127.0.0.1:6969",
            "unix:///run/app.sock",
            "unixgram:///run/log.sock",
            "unix://@name",
            "unixgram://@abstract.gram",
        ] {
            let a: ListenAddr = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn kinds_are_reported() {
        let tcp: ListenAddr = "tcp://127.0.0.1:1".parse().unwrap();
        let gram: ListenAddr = "unixgram:///x".parse().unwrap();
        let abs: ListenAddr = "unix://@x".parse().unwrap();
        assert!(tcp.is_stream() && !tcp.is_unix());
        assert!(!gram.is_stream() && gram.is_unix());
        assert_eq!(gram.socket_file(), Some(&PathBuf::from("/x")));
        assert_eq!(abs.socket_file(), None);
    }

    #[test]
    fn bad_addresses_are_rejected_with_a_reason() {
        let cases: &[(&str, AddrError)] = &[
            ("127.0.0.1:80", AddrError::NoScheme),
            (
                "http://127.0.0.1:80",
                AddrError::UnknownScheme("http".into()),
            ),
            (
                "tcp://localhost:80",
                AddrError::BadInetAddr("localhost:80".into()),
            ),
            (
                "tcp://127.0.0.1",
                AddrError::BadInetAddr("127.0.0.1".into()),
            ),
            ("tcp://::1:80", AddrError::BadInetAddr("::1:80".into())),
            (
                "tcp://127.0.0.1:70000",
                AddrError::BadInetAddr("127.0.0.1:70000".into()),
            ),
            ("udp://127.0.0.1:0", AddrError::PortZero),
            ("unix://", AddrError::EmptyPath),
            ("unix://@", AddrError::EmptyPath),
            (
                "unix://run/x.sock",
                AddrError::RelativePath("run/x.sock".into()),
            ),
            ("unix://a\0b", AddrError::NulInPath),
        ];
        for (s, want) in cases {
            assert_eq!(&s.parse::<ListenAddr>().unwrap_err(), want, "{s:?}");
        }
        let long = format!("unix:///{}", "a".repeat(200));
        assert!(matches!(
            long.parse::<ListenAddr>(),
            Err(AddrError::PathTooLong(201))
        ));
    }
}
