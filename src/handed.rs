//! Sockets handed to summond by a service manager (systemd, an fd holder,
//! `systemd-socket-activate`) with `LISTEN_FDS`/`LISTEN_PID`: each one is
//! identified by its kind and address, so the server can adopt it for the
//! configured `listen` it matches instead of binding anew. Taking the fds
//! is `daemonize::take_listen_fds`; this module only looks at them.

use std::fmt;
use std::io;
use std::path::PathBuf;

use socket2::{Domain, Socket, Type};

use crate::addr::{ListenAddr, UnixPath};

/// Why a passed fd cannot be used.
#[derive(Debug)]
pub enum HandedError {
    Inspect(io::Error),
    /// A stream socket that is not listening (a connection, say).
    NotListening,
    /// A kind of socket summond does not serve (raw, seqpacket, netlink…).
    Unsupported(String),
}

impl fmt::Display for HandedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandedError::Inspect(e) => write!(f, "cannot inspect it: {e}"),
            HandedError::NotListening => f.write_str("a stream socket that is not listening"),
            HandedError::Unsupported(what) => write!(f, "{what} sockets are not served"),
        }
    }
}

/// The address a configured `listen` would have to name to match `s`.
pub fn address_of(s: &Socket) -> Result<ListenAddr, HandedError> {
    let ty = s.r#type().map_err(HandedError::Inspect)?;
    let local = s.local_addr().map_err(HandedError::Inspect)?;
    let stream = ty == Type::STREAM;
    if !stream && ty != Type::DGRAM {
        return Err(HandedError::Unsupported(format!("{ty:?}")));
    }
    if stream && !s.is_listener().map_err(HandedError::Inspect)? {
        return Err(HandedError::NotListening);
    }
    if let Some(sa) = local.as_socket() {
        return Ok(if stream {
            ListenAddr::Tcp(sa)
        } else {
            ListenAddr::Udp(sa)
        });
    }
    if local.domain() != Domain::UNIX {
        return Err(HandedError::Unsupported(format!("{:?}", local.domain())));
    }
    let path = if let Some(p) = local.as_pathname() {
        UnixPath::File(PathBuf::from(p))
    } else if let Some(name) = local.as_abstract_namespace() {
        UnixPath::Abstract(String::from_utf8_lossy(name).into_owned())
    } else {
        return Err(HandedError::Unsupported("unnamed unix".into()));
    };
    Ok(if stream {
        ListenAddr::Unix(path)
    } else {
        ListenAddr::UnixGram(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn listeners_and_datagram_sockets_are_identified_connections_are_not() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = Socket::from(l);
        assert_eq!(
            address_of(&s).unwrap(),
            format!("tcp://127.0.0.1:{port}").parse().unwrap()
        );
        let u = Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        let uport = u.local_addr().unwrap().as_socket().unwrap().port();
        assert_eq!(
            address_of(&u).unwrap(),
            format!("udp://127.0.0.1:{uport}").parse().unwrap()
        );
        let c = Socket::from(TcpStream::connect(("127.0.0.1", port)).unwrap());
        assert!(matches!(address_of(&c), Err(HandedError::NotListening)));
        let abs = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        abs.bind(&socket2::SockAddr::unix("\0summond-handed-test").unwrap())
            .unwrap();
        abs.listen(1).unwrap();
        assert_eq!(
            address_of(&abs).unwrap(),
            "unix://@summond-handed-test".parse().unwrap()
        );
    }
}
