//! A certificate's subject as mod_ssl writes `SSL_CLIENT_S_DN`: OpenSSL's
//! `X509_NAME_print_ex` with `XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB`,
//! that is RFC 2253 (the last RDN first, `,` between RDNs and `+` inside
//! one, short names such as CN and O, the specials escaped with `\`,
//! UTF-8 left as it is, a value that is not a string as `#` and its DER
//! in hex). The certificate was verified by rustls already; this walks
//! the DER only as far as the subject, and gives None for anything it
//! does not expect rather than guess.

/// A DER element: tag, contents, the rest after it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject Name (its contents) of a DER certificate.
fn subject(cert: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version, when there.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serial, signature algorithm, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    match element(rest)? {
        (SEQUENCE, name, _) => Some(name),
        _ => None,
    }
}

/// The dotted form of an OID's contents.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc = 0u64;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < 8 {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// OpenSSL's short name for the attribute types certificates use.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    const X520: &[u8] = &[0x55, 0x04];
    Some(match oid {
        [0x55, 0x04, t] => match t {
            3 => "CN",
            4 => "SN",
            5 => "serialNumber",
            6 => "C",
            7 => "L",
            8 => "ST",
            9 => "street",
            10 => "O",
            11 => "OU",
            12 => "title",
            42 => "GN",
            46 => "dnQualifier",
            _ => return None,
        },
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ if oid.starts_with(X520) => return None,
        _ => return None,
    })
}

/// A string value as text, or None for a type that is not a string.
fn text(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => Some(String::from_utf8_lossy(v).into_owned()),
        // T61String: taken as Latin-1, as OpenSSL does.
        0x14 => Some(v.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UCS-2 big-endian.
        0x1e => {
            let units = v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            Some(
                char::decode_utf16(units)
                    .map(|c| c.unwrap_or('\u{fffd}'))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// RFC 2253's escaping of one value.
fn escape(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

/// One attribute, `TYPE=value`.
fn attribute(atv: &[u8], out: &mut String) -> Option<()> {
    let (OID, oid, rest) = element(atv)? else {
        return None;
    };
    let (tag, value, _) = element(rest)?;
    match short_name(oid) {
        Some(n) => out.push_str(n),
        None => out.push_str(&dotted(oid)),
    }
    out.push('=');
    match text(tag, value) {
        Some(t) => escape(&t, out),
        None => {
            out.push('#');
            let whole = &rest[..rest.len() - element(rest)?.2.len()];
            for b in whole {
                out.push_str(&format!("{b:02X}"));
            }
        }
    }
    Some(())
}

/// The subject of DER certificate `cert` in mod_ssl's `SSL_CLIENT_S_DN`
/// form; None if the DER is not a certificate as expected.
pub fn subject_dn(cert: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = subject(cert)?;
    while !rest.is_empty() {
        let (SET, set, after) = element(rest)? else {
            return None;
        };
        rdns.push(set);
        rest = after;
    }
    let mut out = String::new();
    for (i, set) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut atvs = *set;
        let mut first = true;
        while !atvs.is_empty() {
            let (SEQUENCE, atv, after) = element(atvs)? else {
                return None;
            };
            if !first {
                out.push('+');
            }
            attribute(atv, &mut out)?;
            first = false;
            atvs = after;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER of a TLV.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let atv = [tlv(OID, oid), tlv(tag, value)].concat();
        tlv(SET, &tlv(SEQUENCE, &atv))
    }

    /// A certificate shaped enough for `subject` to find `name`.
    fn cert_with(name: &[u8]) -> Vec<u8> {
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            tlv(SEQUENCE, &tlv(OID, &[0x2a])),
            tlv(SEQUENCE, &[]),
            tlv(SEQUENCE, &[]),
            tlv(SEQUENCE, name),
        ]
        .concat();
        tlv(SEQUENCE, &tlv(SEQUENCE, &tbs))
    }

    #[test]
    fn rfc2253_order_names_and_escapes() {
        let name = [
            rdn(&[0x55, 4, 6], 0x13, b"DE"),
            rdn(&[0x55, 4, 10], 0x0c, b"Acme, Inc"),
            rdn(&[0x55, 4, 3], 0x0c, b"#client "),
        ]
        .concat();
        assert_eq!(
            subject_dn(&cert_with(&name)).unwrap(),
            "CN=\\#client\\ ,O=Acme\\, Inc,C=DE"
        );
    }

    #[test]
    fn unknown_types_are_dotted_and_non_strings_hex() {
        let name = rdn(&[0x2b, 6, 1], 0x02, &[5]);
        assert_eq!(subject_dn(&cert_with(&name)).unwrap(), "1.3.6.1=#020105");
        let email = rdn(
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            0x16,
            b"a@b",
        );
        assert_eq!(subject_dn(&cert_with(&email)).unwrap(), "emailAddress=a@b");
    }

    #[test]
    fn truncated_der_is_none_not_a_guess() {
        let c = cert_with(&rdn(&[0x55, 4, 3], 0x0c, b"x"));
        for cut in 0..c.len() {
            assert_eq!(subject_dn(&c[..cut]), None, "cut at {cut}");
        }
    }
}
