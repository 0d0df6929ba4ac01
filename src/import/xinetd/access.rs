//! only_from and no_access as xinetd reads them (addr.c): numeric IPv4
//! addresses whose zero octets at the right are wildcards, `a.b.{c,d}`,
//! CIDR blocks, IPv6 addresses, and names summond cannot match; then as
//! summond's allow and deny, never wider open than xinetd's lists.

use std::net::{IpAddr, Ipv4Addr};

use super::super::list;
use super::{Shape, Svc};

/// An address list item: a CIDR block, or `?word` for what summond cannot
/// match (a host, domain or network name, or no address xinetd reads).
pub fn address_items(word: &str) -> Vec<String> {
    if word == "localhost" {
        // The addresses whose reverse lookup is `localhost` in Debian's
        // /etc/hosts; all of 127.0.0.0/8 would be wider than xinetd.
        return vec!["127.0.0.1/32".into(), "::1/128".into()];
    }
    if word.contains('{') {
        return factorized(word).unwrap_or_else(|| vec![format!("?{word}")]);
    }
    if word.contains('/') {
        return match word.parse::<crate::access::Cidr>() {
            Ok(c) => vec![c.to_string()],
            Err(_) => vec![format!("?{word}")],
        };
    }
    match word.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) if word.split('.').count() == 4 => vec![trailing_zeros(a)],
        // IPv6 addresses match exactly (addr.c: the zero rule is IPv4's).
        Ok(IpAddr::V6(_)) => match format!("{word}/128").parse::<crate::access::Cidr>() {
            Ok(c) => vec![c.to_string()],
            Err(_) => vec![format!("?{word}")],
        },
        _ => vec![format!("?{word}")],
    }
}

/// xinetd's numeric IPv4 rule: zero octets at the right are wildcards
/// (`10.0.0.0` is 10/8, `0.0.0.0` every IPv4 address).
fn trailing_zeros(a: Ipv4Addr) -> String {
    let bits = u32::from(a);
    let prefix = if bits == 0 {
        0
    } else {
        32 - (bits.trailing_zeros() / 8) * 8
    };
    format!("{a}/{prefix}")
}

/// `a.b.{c,d}`: one block per number, the braces standing for the octet
/// after the given ones and the prefix covering up to it (addr.c).
fn factorized(word: &str) -> Option<Vec<String>> {
    let (head, rest) = word.split_once('{')?;
    let body = rest.strip_suffix('}')?;
    let given: Vec<u8> = if head.is_empty() {
        Vec::new()
    } else {
        let h = head.strip_suffix('.')?;
        h.split('.')
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?
    };
    if given.len() > 3 {
        return None;
    }
    let mut out = Vec::new();
    for n in body.split(',') {
        let mut octets = given.clone();
        octets.push(n.trim().parse().ok()?);
        let prefix = octets.len() * 8;
        octets.resize(4, 0);
        let a = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
        out.push(format!("{a}/{prefix}"));
    }
    Some(out)
}

/// only_from and no_access as allow and deny. A name summond cannot
/// match, or any restriction on a server that accepts its own clients,
/// refuses the service (never served wider open than xinetd's list).
pub fn access(svc: &mut Svc, shape: &Shape) {
    let allow = svc.r.get("only_from").cloned();
    let deny = svc.r.get("no_access").cloned();
    for (attr, items) in [("only_from", &allow), ("no_access", &deny)] {
        let names: Vec<&str> = items
            .iter()
            .flatten()
            .filter_map(|x| x.strip_prefix('?'))
            .collect();
        if !names.is_empty() {
            svc.refuse(attr, format!(
                "{attr} {}: xinetd matches host, domain and network names by looking each client up, summond only by address; write the addresses or CIDR blocks they stand for",
                names.join(" ")
            ));
        }
    }
    let blocks = |v: &Option<Vec<String>>| -> Option<Vec<String>> {
        v.as_ref().map(|v| {
            let mut out: Vec<String> = Vec::new();
            for x in v.iter().filter(|x| !x.starts_with('?')) {
                if !out.contains(x) {
                    out.push(x.clone());
                }
            }
            out
        })
    };
    let (allow, deny) = (blocks(&allow), blocks(&deny));
    if shape.child_accepts {
        let everyone = |a: &Vec<String>| {
            a.iter().any(|x| x == "0.0.0.0/0") && (shape.v4_only || a.iter().any(|x| x == "::/0"))
        };
        let open =
            deny.as_ref().is_none_or(|d| d.is_empty()) && allow.as_ref().is_none_or(everyone);
        for attr in ["only_from", "no_access"] {
            if open {
                svc.drop(
                    attr,
                    "restricts no client of this socket, so there is nothing to check",
                );
            } else if svc.has(attr) {
                svc.refuse(attr, format!(
                    "{attr}: with wait = yes the server accepts its own clients, so summond never sees them to check (xinetd checks only the datagram that starts such a server, and no stream client); restrict them in the server or a firewall and remove {attr}"
                ));
            }
        }
        return;
    }
    if let Some(a) = allow {
        // Empty: xinetd serves nobody, and so does allow = [].
        svc.e.set("allow", list(a.iter().map(String::as_str)));
        svc.carry("only_from");
    }
    if let Some(d) = deny {
        if !d.is_empty() {
            svc.e.set("deny", list(d.iter().map(String::as_str)));
        }
        svc.carry("no_access");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_as_xinetd_reads_them() {
        let one = |w: &str| address_items(w);
        assert_eq!(one("10.0.0.0"), ["10.0.0.0/8"]);
        assert_eq!(one("192.168.1.0"), ["192.168.1.0/24"]);
        assert_eq!(one("10.1.0.3"), ["10.1.0.3/32"], "only zeros at the right");
        assert_eq!(one("0.0.0.0"), ["0.0.0.0/0"]);
        assert_eq!(one("10.1.2.3/16"), ["10.1.0.0/16"]);
        assert_eq!(one("192.168.1.{4,5}"), ["192.168.1.4/32", "192.168.1.5/32"]);
        assert_eq!(one("10.{1,2}"), ["10.1.0.0/16", "10.2.0.0/16"]);
        assert_eq!(one("2001:db8::1"), ["2001:db8::1/128"]);
        assert_eq!(one("localhost"), ["127.0.0.1/32", "::1/128"]);
        for name in [
            "host.example",
            ".example.com",
            "10.1",
            "loopnet",
            "1.2.{3,x}",
        ] {
            assert_eq!(one(name), [format!("?{name}")], "{name}");
        }
    }
}
