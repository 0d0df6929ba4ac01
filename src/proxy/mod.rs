//! HAProxy's PROXY protocol (haproxy's doc/proxy-protocol.txt), versions 1
//! (text) and 2 (binary): `parse` reads a header from the bytes a
//! connection has delivered so far and says whether it is incomplete,
//! done (and how long it is, so the caller takes exactly that much and not
//! one byte of the client's own), or bad; `encode_v1` and `encode_v2`
//! write one for a backend (forward mode). Plain functions over bytes: no
//! sockets, no clock, nothing kept between calls, so a header read again
//! from the start (after more bytes arrived, or after an upgrade) gives
//! the same answer.
//!
//! `parse.rs` the reader, `encode.rs` the writer.

use std::fmt;
use std::net::SocketAddr;

mod encode;
mod parse;

pub use encode::{encode_v1, encode_v2};
pub use parse::parse;

/// The most a v1 header may take, CRLF included (the spec's own bound).
pub const V1_MAX: usize = 107;
/// The most a v2 header may take here, its 16-byte prefix, addresses and
/// TLVs included. The format allows 64 KiB; a balancer sends a few dozen
/// bytes plus its TLVs, and 4 KiB is what summond is willing to hold for
/// a client before it is served.
pub const V2_MAX: usize = 4096;
/// The spec's bound on a `PP2_TYPE_UNIQUE_ID` value ("up to 128 bytes").
pub const UNIQUE_ID_MAX: usize = 128;
/// SPEC: a header has this many seconds to arrive once summond has the
/// connection (the loop's deadline).
pub const HEADER_SECS: u32 = 5;
/// TCP_DEFER_ACCEPT on the listener of a service that takes headers (and
/// of a TLS service, whose client also speaks first): the
/// kernel holds a connection that has sent nothing about this long (one
/// SYN-ACK retransmission) before summond accepts it. Short: a balancer
/// sends its header at once, and a silent peer held longer would only
/// sit longer in the kernel's queue before its 5 s start.
pub const DEFER_SECS: u32 = 1;
/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Which headers a service takes (`proxy_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V1,
    V2,
    /// Either, told apart by the first byte ('P' or CR).
    Any,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
            Version::Any => "any",
        }
    }
}

/// What the bytes seen so far make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still follow: wait for more bytes.
    Incomplete,
    /// A header of this many bytes; the client's own data starts after.
    Done(usize, Header),
    Bad(Malformed),
}

/// One header's meaning. Serialized: a connection that waits after a
/// header its balancer sent for itself crosses an upgrade with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The client and the address it connected to, for a PROXY command
    /// over TCP or UDP; None for LOCAL (a health check), UNSPEC, UNKNOWN
    /// and AF_UNIX: the connection's own peer is the client.
    pub addrs: Option<Addrs>,
    /// A v2 LOCAL or a v1 UNKNOWN header: the balancer speaks for
    /// itself, not for a client (what haproxy's health checks send).
    pub local: bool,
    /// v2 `PP2_TYPE_AUTHORITY` (the SNI the balancer saw).
    pub authority: Option<String>,
    /// v2 `PP2_TYPE_ALPN`.
    pub alpn: Option<String>,
    /// v2 `PP2_TYPE_UNIQUE_ID`, hex if not printable text.
    pub unique_id: Option<String>,
}

/// The addresses of a PROXY command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Addrs {
    /// The client.
    pub source: SocketAddr,
    /// Where the client connected to (the balancer's front).
    pub destination: SocketAddr,
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Neither signature (or not the version the service takes).
    NoHeader,
    /// No end within `V1_MAX`, or a v2 length over `V2_MAX`.
    TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6|UNKNOWN ...\r\n` with the
    /// spec's fields; the field named.
    V1(&'static str),
    /// A v2 version nibble other than 2.
    V2Version,
    /// A v2 command other than LOCAL or PROXY.
    V2Command,
    /// A v2 family or transport byte the spec does not define.
    V2Family,
    /// A v2 address block shorter than its family needs.
    V2Short,
    /// A TLV running past the header's end.
    V2Tlv,
    /// A PROXY command for a datagram transport (0x12, 0x22, 0x32) on
    /// a stream service: no UDP client is behind this connection.
    V2Datagram,
    /// A `PP2_TYPE_UNIQUE_ID` over the spec's 128 bytes.
    V2UniqueId,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NoHeader => f.write_str("no PROXY header"),
            Malformed::TooLong => f.write_str("PROXY header too long"),
            Malformed::V1(field) => write!(f, "malformed PROXY v1 header ({field})"),
            Malformed::V2Version => f.write_str("PROXY v2 header of an unknown version"),
            Malformed::V2Command => f.write_str("PROXY v2 header with an unknown command"),
            Malformed::V2Family => f.write_str("PROXY v2 header with an unknown address family"),
            Malformed::V2Short => f.write_str("PROXY v2 address block too short"),
            Malformed::V2Tlv => f.write_str("PROXY v2 TLV past the header's end"),
            Malformed::V2Datagram => f.write_str("PROXY v2 header for a datagram transport"),
            Malformed::V2UniqueId => write!(f, "PROXY v2 UNIQUE_ID over {UNIQUE_ID_MAX} bytes"),
        }
    }
}

impl std::error::Error for Malformed {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LOCAL or UNKNOWN header: no addresses, no TLVs.
    const LOCAL: Header = Header {
        local: true,
        addrs: None,
        authority: None,
        alpn: None,
        unique_id: None,
    };

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn inet(src: &str, dst: &str) -> Option<Addrs> {
        Some(Addrs {
            source: sa(src),
            destination: sa(dst),
        })
    }

    fn done(buf: &[u8], v: Version) -> (usize, Header) {
        match parse(buf, v) {
            Parsed::Done(n, h) => (n, h),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// Every prefix of `buf` shorter than `len` is Incomplete.
    fn prefixes_incomplete(buf: &[u8], len: usize, v: Version) {
        for n in 0..len {
            assert_eq!(parse(&buf[..n], v), Parsed::Incomplete, "prefix {n}");
        }
    }

    // The examples of haproxy's doc/proxy-protocol.txt, section 2.1.
    #[test]
    fn v1_examples_of_the_spec() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (n, h) = done(line, Version::V1);
        assert_eq!(n, 47);
        assert_eq!(h.addrs, inet("192.168.0.1:56324", "192.168.0.11:443"));
        prefixes_incomplete(line, n, Version::V1);
        let worst4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(done(worst4, Version::Any).0, 56);
        let worst6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let (n, h) = done(worst6, Version::V1);
        assert_eq!(n, 104);
        assert_eq!(h.addrs.unwrap().source.port(), 65535);
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(done(unknown, Version::V1), (15, LOCAL));
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX);
        assert_eq!(done(longest, Version::V1).0, V1_MAX);
    }

    #[test]
    fn v1_mistakes_are_bad_at_the_first_byte_that_shows_them() {
        let bad = |s: &[u8]| match parse(s, Version::V1) {
            Parsed::Bad(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        };
        assert_eq!(bad(b"GET / HTTP/1.0\r\n"), Malformed::NoHeader);
        assert_eq!(bad(b"PROXX"), Malformed::NoHeader);
        assert_eq!(
            bad(b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"),
            Malformed::V1("protocol")
        );
        assert_eq!(
            bad(b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n"),
            Malformed::V1("source port")
        );
        assert_eq!(
            bad(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n"),
            Malformed::V1("destination port")
        );
        assert_eq!(
            bad(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n"),
            Malformed::V1("source address")
        );
        assert_eq!(
            bad(b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n"),
            Malformed::V1("destination address")
        );
        assert_eq!(
            bad(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n"),
            Malformed::V1("extra field")
        );
        assert_eq!(
            bad(b"PROXY TCP4  1.2.3.4 1 2\r\n"),
            Malformed::V1("source address")
        );
        assert_eq!(
            bad(b"PROXY TCP4 1.2.3.4\r\n"),
            Malformed::V1("destination address")
        );
        assert_eq!(bad(b"PROXY TCP4 1.2.3.4\n"), Malformed::V1("character"));
        assert_eq!(bad(b"PROXY TCP4\rx"), Malformed::V1("CR without LF"));
        assert_eq!(
            bad(&[b'P', b'R', b'O', b'X', b'Y', b' ', 0]),
            Malformed::V1("character")
        );
        let long = [b"PROXY ".as_slice(), &[b'A'; V1_MAX]].concat();
        assert_eq!(bad(&long[..V1_MAX]), Malformed::TooLong);
        assert_eq!(parse(&long[..V1_MAX - 1], Version::V1), Parsed::Incomplete);
        // A v2 header where only v1 is taken, and the other way round.
        assert_eq!(bad(&V2_SIGNATURE), Malformed::NoHeader);
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", Version::V2),
            Parsed::Bad(Malformed::NoHeader)
        );
    }

    /// haproxy 2.x's `send-proxy-v2` for 172.19.0.1:42578 →
    /// 172.19.0.3:80, followed by the client's request, as captured.
    const HAPROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xac\x13\x00\x01\xac\x13\x00\x03\xa6\x52\x00\x50GET / HTTP/1.1\r\n";

    #[test]
    fn v2_as_haproxy_sends_it() {
        let (n, h) = done(HAPROXY_V2, Version::V2);
        assert_eq!(n, 28);
        assert_eq!(&HAPROXY_V2[n..n + 3], b"GET");
        assert_eq!(h.addrs, inet("172.19.0.1:42578", "172.19.0.3:80"));
        prefixes_incomplete(HAPROXY_V2, n, Version::Any);
    }

    #[test]
    fn v2_tlvs_local_unspec_unix_and_ipv6() {
        let tlvs: &[(u8, &[u8])] = &[
            (0x01, b"h2"),
            (0x02, b"example.com"),
            (0x04, b"\0\0\0"),
            (0x05, b"\x01\xff"),
            (0x20, b"\x01\0\0\0\0"),
        ];
        let mut buf = Vec::new();
        let (src, dst) = (sa("[2001:db8::1]:4000"), sa("[2001:db8::2]:443"));
        encode_v2(Some((src, dst)), tlvs, &mut buf);
        let (n, h) = done(&buf, Version::Any);
        assert_eq!(n, buf.len());
        assert_eq!(h.addrs, inet("[2001:db8::1]:4000", "[2001:db8::2]:443"));
        assert_eq!(h.alpn.as_deref(), Some("h2"));
        assert_eq!(h.authority.as_deref(), Some("example.com"));
        assert_eq!(h.unique_id.as_deref(), Some("01ff"));
        prefixes_incomplete(&buf, n, Version::V2);
        // LOCAL (a health check): the block is discarded, family and all.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0, 3, 9, 9, 9]);
        assert_eq!(done(&local, Version::V2), (19, LOCAL));
        // UNSPEC and AF_UNIX under PROXY: the real peer is the client.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(done(&unspec, Version::V2), (16, Header::default()));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[b'/'; 216]);
        assert_eq!(done(&unix, Version::V2), (232, Header::default()));
    }

    /// haproxy's LOCAL for a client of a `bind unix@` frontend (UNSPEC,
    /// then the TLVs its server line asks for): the unique ID marks it a
    /// client's. TLVs that do not parse leave a plain LOCAL.
    #[test]
    fn v2_local_unspec_keeps_its_unique_id() {
        let mut buf = Vec::new();
        encode_v2(None, &[(0x05, b"abc"), (0x04, b"\0\0\0\0")], &mut buf);
        let (n, h) = done(&buf, Version::V2);
        assert_eq!(n, buf.len());
        assert!(h.local && h.addrs.is_none());
        assert_eq!(h.unique_id.as_deref(), Some("abc"));
        let mut broken = V2_SIGNATURE.to_vec();
        broken.extend_from_slice(&[0x20, 0x00, 0, 8, 0x05, 0, 3, b'a', b'b', b'c', 0x01, 9]);
        assert_eq!(done(&broken, Version::V2), (24, LOCAL));
    }

    #[test]
    fn v2_mistakes_are_bad() {
        let with = |b12: u8, b13: u8, len: u16, body: &[u8]| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[b12, b13]);
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(body);
            parse(&h, Version::V2)
        };
        assert_eq!(with(0x11, 0x11, 0, &[]), Parsed::Bad(Malformed::V2Version));
        assert_eq!(with(0x22, 0x11, 0, &[]), Parsed::Bad(Malformed::V2Command));
        assert_eq!(with(0x21, 0x41, 0, &[]), Parsed::Bad(Malformed::V2Family));
        assert_eq!(with(0x21, 0x13, 0, &[]), Parsed::Bad(Malformed::V2Family));
        assert_eq!(
            with(0x21, 0x11, 8, &[0; 8]),
            Parsed::Bad(Malformed::V2Short)
        );
        assert_eq!(
            with(0x21, 0x11, 14, &[0; 14]),
            Parsed::Bad(Malformed::V2Tlv)
        );
        assert_eq!(
            with(
                0x21,
                0x11,
                15,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]
            ),
            Parsed::Bad(Malformed::V2Tlv)
        );
        // A UDP client's addresses on a stream connection; LOCAL's block
        // is discarded whatever its transport.
        for fam in [0x12, 0x22, 0x32, 0x02] {
            assert_eq!(with(0x21, fam, 0, &[]), Parsed::Bad(Malformed::V2Datagram));
        }
        assert_eq!(with(0x20, 0x12, 0, &[]), Parsed::Done(16, LOCAL));
        // UNIQUE_ID: up to 128 bytes (the spec's bound), not one more.
        let unique = |n: usize| {
            let mut buf = Vec::new();
            let id = vec![b'u'; n];
            let (s, d) = (sa("192.0.2.1:1"), sa("192.0.2.2:2"));
            encode_v2(Some((s, d)), &[(0x05, &id)], &mut buf);
            parse(&buf, Version::V2)
        };
        assert!(matches!(unique(128), Parsed::Done(..)));
        assert_eq!(unique(129), Parsed::Bad(Malformed::V2UniqueId));
        assert_eq!(with(0x21, 0x11, 4081, &[]), Parsed::Bad(Malformed::TooLong));
        assert_eq!(with(0x21, 0x11, 4080, &[]), Parsed::Incomplete);
        let mut wrong = V2_SIGNATURE.to_vec();
        wrong[11] = b'X';
        assert_eq!(parse(&wrong, Version::V2), Parsed::Bad(Malformed::NoHeader));
        assert_eq!(
            parse(b"\r\n\r\nX", Version::Any),
            Parsed::Bad(Malformed::NoHeader)
        );
    }

    #[test]
    fn what_is_encoded_reads_back() {
        let (s4, d4) = (sa("203.0.113.7:51000"), sa("10.0.0.2:443"));
        let mut v1 = Vec::new();
        encode_v1(Some((s4, d4)), &mut v1);
        assert_eq!(v1, b"PROXY TCP4 203.0.113.7 10.0.0.2 51000 443\r\n");
        assert_eq!(
            done(&v1, Version::V1).1.addrs,
            inet("203.0.113.7:51000", "10.0.0.2:443")
        );
        // Mixed families: both as IPv6.
        let d6 = sa("[2001:db8::2]:443");
        let mut mixed = Vec::new();
        encode_v1(Some((s4, d6)), &mut mixed);
        assert_eq!(
            done(&mixed, Version::V1).1.addrs.unwrap().source,
            sa("[::ffff:203.0.113.7]:51000")
        );
        let mut unknown = Vec::new();
        encode_v1(None, &mut unknown);
        assert_eq!(done(&unknown, Version::V1), (15, LOCAL));
        let mut v2 = Vec::new();
        encode_v2(Some((s4, d4)), &[], &mut v2);
        assert_eq!(v2.len(), 28);
        assert_eq!(
            done(&v2, Version::V2).1.addrs,
            inet("203.0.113.7:51000", "10.0.0.2:443")
        );
        let mut local = Vec::new();
        encode_v2(None, &[], &mut local);
        assert_eq!(done(&local, Version::V2), (16, LOCAL));
    }
}
