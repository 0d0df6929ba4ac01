//! Writing a header for a backend (forward mode's
//! `forward_proxy_protocol`): the client's address and the one it
//! connected to, as v1 text or v2 binary. Into the caller's buffer, so a
//! connection can reuse one.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use super::V2_SIGNATURE;

/// Both addresses in one family: an IPv4 one beside an IPv6 one is
/// written as its IPv4-mapped IPv6 form (the header has one family).
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n` (or TCP6) appended to `out`; with
/// no addresses (the client is not an IP client) `PROXY UNKNOWN\r\n`.
pub fn encode_v1(addrs: Option<(SocketAddr, SocketAddr)>, out: &mut Vec<u8>) {
    let Some((source, destination)) = addrs else {
        out.extend_from_slice(b"PROXY UNKNOWN\r\n");
        return;
    };
    let (s, d) = same_family(source, destination);
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    );
}

/// A v2 header appended to `out`: PROXY over TCP with the addresses and
/// the TLVs given (type, value; each value at most 64 KiB and all of it
/// within the length field, which the caller's few short values are), or
/// LOCAL with no addresses (the client is not an IP client).
pub fn encode_v2(addrs: Option<(SocketAddr, SocketAddr)>, tlvs: &[(u8, &[u8])], out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    let start = out.len();
    match addrs.map(|(s, d)| same_family(s, d)) {
        None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some((s, d)) => {
            let family = if s.is_ipv4() { 0x11 } else { 0x21 };
            out.extend_from_slice(&[0x21, family, 0, 0]);
            for ip in [s.ip(), d.ip()] {
                match ip {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
            }
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    for (kind, value) in tlvs {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        out.push(*kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&value[..usize::from(len)]);
    }
    let len = u16::try_from(out.len() - start - 4).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}
