//! What a drainer writes first on its end of a drained TLS handshake's
//! socket pair (`relay::Pending`, `server/drained.rs`): how the
//! handshake ended and, done, what the client asked for in it (ALPN
//! protocol, server name). Never a PROXY header: the image on the other
//! end builds that from its own config (a reload or the upgrade may
//! have changed `forward_proxy_protocol` since the fork), so the bytes
//! after the preamble are the client's alone. The image made the pair:
//! whatever comes first on its end is the drainer's, but it is bounded
//! and checked all the same.

use serde::{Deserialize, Serialize};

use crate::tls::Failure;

/// The handshake is done: the names follow, then the client's bytes.
/// (Not the `+` of the drainers before, whose PROXY header followed:
/// an image reading one closes that client as malformed.)
const DONE: u8 = b'=';

/// The longest preamble: the mark, then each name as one length byte
/// and at most 255 bytes (an ALPN protocol id is at most 255 by RFC
/// 7301, a DNS name 253).
pub const PREAMBLE_MAX: usize = 1 + 2 * (1 + 255);

/// What the client asked for in its handshake, for its PROXY v2 header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    pub alpn: Option<Vec<u8>>,
    pub sni: Option<String>,
}

impl Names {
    pub fn of(tls: &rustls::ServerConnection) -> Names {
        Names {
            alpn: tls.alpn_protocol().map(<[u8]>::to_vec),
            sni: tls.server_name().map(str::to_string),
        }
    }

    /// The preamble of a handshake done (a name over 255 bytes, which
    /// rustls does not let through, would go as none).
    pub fn preamble(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREAMBLE_MAX);
        out.push(DONE);
        for name in [self.alpn.as_deref(), self.sni.as_deref().map(str::as_bytes)] {
            match name.filter(|n| n.len() <= 255) {
                Some(n) => {
                    out.push(n.len() as u8);
                    out.extend_from_slice(n);
                }
                None => out.push(0),
            }
        }
        out
    }
}

/// The one byte a drainer writes before closing its end when the
/// handshake failed: how (a control byte, like nothing a client or an
/// older drainer sends first).
pub fn failed(why: Failure) -> u8 {
    match why {
        Failure::Timeout => 1,
        Failure::Closed => 2,
        Failure::NotTls => 3,
        Failure::ClientCertificate => 4,
        Failure::NoOverlap => 5,
        Failure::Protocol => 6,
        _ => 7,
    }
}

/// What the bytes at the start of an image's end say.
#[derive(Debug, PartialEq, Eq)]
pub enum Preamble {
    /// Not all there yet.
    Incomplete,
    /// Done: the names, and the preamble's length (to read off).
    Done(Names, usize),
    /// The handshake failed, so (the byte is read off with the close).
    Failed(Failure),
    /// Not a preamble this image knows.
    Malformed,
}

pub fn parse(bytes: &[u8]) -> Preamble {
    let Some((&mark, mut rest)) = bytes.split_first() else {
        return Preamble::Incomplete;
    };
    let why = match mark {
        DONE => None,
        1 => Some(Failure::Timeout),
        2 => Some(Failure::Closed),
        3 => Some(Failure::NotTls),
        4 => Some(Failure::ClientCertificate),
        5 => Some(Failure::NoOverlap),
        6 => Some(Failure::Protocol),
        7 => Some(Failure::Io),
        _ => return Preamble::Malformed,
    };
    if let Some(why) = why {
        return Preamble::Failed(why);
    }
    let mut names: [Option<&[u8]>; 2] = [None, None];
    for name in &mut names {
        let Some((&len, after)) = rest.split_first() else {
            return Preamble::Incomplete;
        };
        let Some((n, after)) = after.split_at_checked(len as usize) else {
            return Preamble::Incomplete;
        };
        *name = (len > 0).then_some(n);
        rest = after;
    }
    let sni = match names[1].map(std::str::from_utf8) {
        None => None,
        Some(Ok(s)) if s.bytes().all(|b| b.is_ascii_graphic()) => Some(s.to_string()),
        Some(_) => return Preamble::Malformed,
    };
    let names = Names {
        alpn: names[0].map(<[u8]>::to_vec),
        sni,
    };
    Preamble::Done(names, bytes.len() - rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preamble_reads_back_and_stops_where_the_client_starts() {
        let names = Names {
            alpn: Some(b"h2".to_vec()),
            sni: Some("example.test".into()),
        };
        let mut bytes = names.preamble();
        let len = bytes.len();
        bytes.extend_from_slice(b"PROXY TCP4 6.6.6.6 1.1.1.1 1 2\r\n");
        assert_eq!(parse(&bytes), Preamble::Done(names, len));
        let none = Names::default().preamble();
        assert_eq!(none, [DONE, 0, 0]);
        assert_eq!(parse(&none), Preamble::Done(Names::default(), 3));
    }

    #[test]
    fn a_preamble_in_part_waits_and_a_stranger_is_malformed() {
        let bytes = Names {
            alpn: None,
            sni: Some("example.test".into()),
        }
        .preamble();
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Preamble::Incomplete, "{n}");
        }
        // An older drainer's mark (a PROXY header after it), a client's
        // own bytes, a name that is not one.
        assert_eq!(parse(b"+PROXY TCP4"), Preamble::Malformed);
        assert_eq!(parse(b"PROXY TCP4"), Preamble::Malformed);
        assert_eq!(parse(b"=\0\x03a\nb"), Preamble::Malformed);
        assert_eq!(parse(b"=\0\x02\xff\xfe"), Preamble::Malformed);
    }

    #[test]
    fn a_failure_says_how() {
        for why in [Failure::Timeout, Failure::Closed, Failure::Protocol] {
            assert_eq!(parse(&[failed(why)]), Preamble::Failed(why));
        }
        let long = Names {
            alpn: Some(vec![b'a'; 255]),
            sni: Some("b".repeat(255)),
        };
        assert_eq!(long.preamble().len(), PREAMBLE_MAX);
    }
}
