//! Reading a header from the bytes seen so far. Every answer depends on
//! the bytes alone: a prefix of a good header is `Incomplete`, never
//! `Bad`, and the first byte that cannot belong to one is `Bad` at once
//! (a client is not kept waiting for bytes that could not make it good).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    Addrs, Header, Malformed, Parsed, Version, UNIQUE_ID_MAX, V1_MAX, V2_MAX, V2_SIGNATURE,
};

/// The header at the start of `buf`, as far as `buf` goes, for a service
/// that takes `version`.
pub fn parse(buf: &[u8], version: Version) -> Parsed {
    let Some(&first) = buf.first() else {
        return Parsed::Incomplete;
    };
    match (first, version) {
        (b'P', Version::V1 | Version::Any) => v1(buf),
        (b'\r', Version::V2 | Version::Any) => v2(buf),
        _ => Parsed::Bad(Malformed::NoHeader),
    }
}

// ---- v1 ------------------------------------------------------------

const V1_PREFIX: &[u8] = b"PROXY ";

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN...\r\n`.
fn v1(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Parsed::Bad(Malformed::NoHeader);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.iter().any(|&b| !v1_char(b)) {
            return Parsed::Bad(Malformed::V1("character"));
        }
        return if buf.len() >= V1_MAX {
            Parsed::Bad(Malformed::TooLong)
        } else {
            Parsed::Incomplete
        };
    };
    if window[..cr].iter().any(|&b| !v1_char(b)) {
        return Parsed::Bad(Malformed::V1("character"));
    }
    match window.get(cr + 1) {
        None if cr + 1 >= V1_MAX => Parsed::Bad(Malformed::TooLong),
        None => Parsed::Incomplete,
        Some(b'\n') => match v1_line(&window[V1_PREFIX.len().min(cr)..cr]) {
            Ok(addrs) => Parsed::Done(
                cr + 2,
                Header {
                    // UNKNOWN: what haproxy's checks send over v1.
                    local: addrs.is_none(),
                    addrs,
                    ..Header::default()
                },
            ),
            Err(e) => Parsed::Bad(e),
        },
        Some(_) => Parsed::Bad(Malformed::V1("CR without LF")),
    }
}

/// What a v1 line may hold before its CRLF (UNKNOWN's rest included: the
/// spec lets it be anything, but summond takes only what a balancer
/// writes there, the same fields).
fn v1_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b' ' | b'.' | b':')
}

/// The fields after "PROXY ", CRLF excluded.
fn v1_line(line: &[u8]) -> Result<Option<Addrs>, Malformed> {
    // Only the characters of v1_char: ASCII.
    let line = std::str::from_utf8(line).map_err(|_| Malformed::V1("character"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    let v6 = match family {
        "UNKNOWN" => return Ok(None),
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(Malformed::V1("protocol")),
    };
    let mut next = |what| fields.next().ok_or(Malformed::V1(what));
    let (src, dst) = (next("source address")?, next("destination address")?);
    let (sport, dport) = (next("source port")?, next("destination port")?);
    if fields.next().is_some() {
        return Err(Malformed::V1("extra field"));
    }
    let ip = |s: &str, what| -> Result<IpAddr, Malformed> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| Malformed::V1(what))
    };
    let source = SocketAddr::new(ip(src, "source address")?, port(sport, "source port")?);
    let destination = SocketAddr::new(
        ip(dst, "destination address")?,
        port(dport, "destination port")?,
    );
    Ok(Some(Addrs {
        source,
        destination,
    }))
}

/// A port as the spec writes it: decimal, no leading zero, 0 to 65535.
fn port(s: &str, what: &'static str) -> Result<u16, Malformed> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(Malformed::V1(what));
    }
    s.parse().map_err(|_| Malformed::V1(what))
}

// ---- v2 ------------------------------------------------------------

const LOCAL: u8 = 0x0;
const PROXY: u8 = 0x1;
const DGRAM: u8 = 0x2;
const TLV_ALPN: u8 = 0x01;
const TLV_AUTHORITY: u8 = 0x02;
const TLV_UNIQUE_ID: u8 = 0x05;

/// The 16-byte prefix (signature, version and command, family and
/// transport, length), then the address block and the TLVs.
fn v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Bad(Malformed::NoHeader);
    }
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Parsed::Bad(Malformed::V2Version);
        }
        if !matches!(ver_cmd & 0xf, LOCAL | PROXY) {
            return Parsed::Bad(Malformed::V2Command);
        }
    }
    if let Some(&fam) = buf.get(13) {
        // AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX; UNSPEC, STREAM, DGRAM.
        if fam >> 4 > 3 || fam & 0xf > DGRAM {
            return Parsed::Bad(Malformed::V2Family);
        }
        // Every service that reads headers is a stream service: a PROXY
        // command for a UDP client describes some other connection. LOCAL
        // discards the block, family and transport included.
        if fam & 0xf == DGRAM && buf[12] & 0xf == PROXY {
            return Parsed::Bad(Malformed::V2Datagram);
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Parsed::Incomplete;
    };
    let total = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if total > V2_MAX {
        return Parsed::Bad(Malformed::TooLong);
    }
    let Some(body) = buf.get(16..total) else {
        return Parsed::Incomplete;
    };
    match v2_body(buf[12] & 0xf, buf[13], body) {
        Ok(header) => Parsed::Done(total, header),
        Err(e) => Parsed::Bad(e),
    }
}

/// The address block and TLVs of a complete header. LOCAL's block is
/// discarded whole, family included, as the spec asks.
fn v2_body(command: u8, fam: u8, body: &[u8]) -> Result<Header, Malformed> {
    if command == LOCAL {
        let mut header = Header {
            local: true,
            ..Header::default()
        };
        // With no address block (UNSPEC), what follows is TLVs: haproxy's
        // LOCAL for a client of a `bind unix@` frontend carries those its
        // server line asks for, a unique ID among them, which its health
        // checks never have. Another block is discarded whole, family
        // included, as the spec asks; TLVs that do not parse are ignored
        // (LOCAL takes nothing else from them).
        if fam >> 4 == 0 && v2_tlvs(body, &mut header).is_err() {
            header.unique_id = None;
        }
        return Ok(header);
    }
    let need = match fam >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        _ => 216,
    };
    let (block, tlvs) = body.split_at_checked(need).ok_or(Malformed::V2Short)?;
    // UNSPEC transport with an address family means nothing either.
    let addrs = match (fam >> 4, fam & 0xf) {
        (1 | 2, 1) => Some(v2_addrs(block)),
        _ => None,
    };
    let mut header = Header {
        addrs,
        ..Header::default()
    };
    v2_tlvs(tlvs, &mut header)?;
    Ok(header)
}

/// src, dst, sport, dport, as the block's length says (12 or 36 bytes).
fn v2_addrs(block: &[u8]) -> Addrs {
    let ip_len = (block.len() - 4) / 2;
    let ip = |b: &[u8]| -> IpAddr {
        match <[u8; 4]>::try_from(b) {
            Ok(a) => IpAddr::V4(a.into()),
            Err(_) => IpAddr::V6(<[u8; 16]>::try_from(b).unwrap_or([0; 16]).into()),
        }
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Addrs {
        source: SocketAddr::new(ip(&block[..ip_len]), port(2 * ip_len)),
        destination: SocketAddr::new(ip(&block[ip_len..2 * ip_len]), port(2 * ip_len + 2)),
    }
}

/// Type, 16-bit length, value, to the end; the three summond passes on
/// are kept, the others (CRC32C, NOOP, SSL, vendors') skipped.
fn v2_tlvs(mut rest: &[u8], header: &mut Header) -> Result<(), Malformed> {
    while !rest.is_empty() {
        let [kind, hi, lo, ..] = *rest else {
            return Err(Malformed::V2Tlv);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = rest.get(3..3 + len).ok_or(Malformed::V2Tlv)?;
        match kind {
            TLV_ALPN => header.alpn = Some(text(value)),
            TLV_AUTHORITY => header.authority = Some(text(value)),
            TLV_UNIQUE_ID if len > UNIQUE_ID_MAX => return Err(Malformed::V2UniqueId),
            TLV_UNIQUE_ID => header.unique_id = Some(text(value)),
            _ => {}
        }
        rest = &rest[3 + len..];
    }
    Ok(())
}

/// A TLV's value for the child's environment: as it is if printable
/// ASCII, in hex otherwise (no NUL, no control character, no space or
/// newline). Printable still means the client's own text (the end
/// client's SNI reaches `PROXY_AUTHORITY`): `$`, `*`, `;` and a leading
/// `-` pass, so a script quotes it as it would any input.
fn text(value: &[u8]) -> String {
    if value.iter().all(|b| b.is_ascii_graphic()) {
        // Checked just above: ASCII.
        String::from_utf8_lossy(value).into_owned()
    } else {
        value.iter().map(|b| format!("{b:02x}")).collect()
    }
}
