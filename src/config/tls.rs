//! The `tls` key: `{ cert, key, client_ca, alpn, min_version, sni }`. The
//! table is checked here; its files are read and checked by `tls::load`
//! (as root, strictly: see `src/tls/files.rs`), and a file that cannot be
//! used is an error at the entry that names it, with its line.

use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

use super::draft::Draft;
use super::error::ErrorKind;
use super::parse::{Checker, Value};
use crate::tls::{self, MinVersion, Named, Which};

/// The keys of the `tls` table, and of an `sni` entry.
const TLS_KEYS: &[&str] = &["cert", "key", "client_ca", "alpn", "min_version", "sni"];
const SNI_KEYS: &[&str] = &["cert", "key"];

fn invalid(reason: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        key: "tls",
        reason: reason.into(),
    }
}

/// A file named in the table: its path (a relative one is taken from the
/// config file's directory) and the value that named it.
type Named_<'v> = (PathBuf, &'v Value<'v>);

/// An `sni` entry: the host name, its cert and key.
type SniValue<'v> = (String, Named_<'v>, Named_<'v>);

fn field<'v>(t: &'v DeTable<'v>, key: &str) -> Option<&'v Value<'v>> {
    t.iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// The handler of `tls`.
pub(super) fn tls<'v>(cx: &mut Checker<'_>, k: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let DeValue::Table(table) = v.get_ref() else {
        cx.wrong_type(k, v, "a table like { cert = \"PATH\", key = \"PATH\" }");
        return;
    };
    cx.check_keys(table, "tls", TLS_KEYS);
    // A TLS client speaks first (its ClientHello): accepted once that is
    // in, its handshake starts at accept, and a silent peer waits in the
    // kernel's queue, not in a handshake place.
    d.socket.defer_accept = Some(crate::proxy::DEFER_SECS);
    let cert = cx.tls_file(v, field(table, "cert"), "cert");
    let key = cx.tls_file(v, field(table, "key"), "key");
    let client_ca = field(table, "client_ca").map(|c| cx.tls_file(v, Some(c), "client_ca"));
    let alpn = field(table, "alpn").map(|a| cx.alpn(a));
    let min_version = field(table, "min_version").map(|m| {
        cx.choice(
            "tls",
            m,
            &[("1.2", MinVersion::Tls12), ("1.3", MinVersion::Tls13)],
        )
    });
    let sni = field(table, "sni").map(|s| cx.sni(s));
    let (Some(cert), Some(key), Some(client_ca), Some(alpn), Some(min_version), Some(sni)) = (
        cert,
        key,
        client_ca.map_or(Some(None), |c| c.map(Some)),
        alpn.unwrap_or(Some(Vec::new())),
        min_version.unwrap_or(Some(MinVersion::Tls12)),
        sni.unwrap_or(Some(Vec::new())),
    ) else {
        return;
    };
    let named = Named {
        cert: cert.0.clone(),
        key: key.0.clone(),
        client_ca: client_ca.as_ref().map(|c| c.0.clone()),
        alpn,
        min_version,
        sni: sni
            .iter()
            .map(|(n, c, k)| (n.clone(), c.0.clone(), k.0.clone()))
            .collect(),
    };
    match tls::load(named) {
        Ok(spec) => d.tls = Some(Box::new(spec)),
        Err(e) => {
            let at = match e.which {
                Which::Cert => cert.1,
                Which::Key => key.1,
                Which::ClientCa => client_ca.map_or(v, |c| c.1),
                Which::Sni(i, false) => sni.get(i).map_or(v, |e| e.1 .1),
                Which::Sni(i, true) => sni.get(i).map_or(v, |e| e.2 .1),
            };
            cx.at(at.span(), invalid(e.to_string()));
        }
    }
}

impl Checker<'_> {
    /// The file `name` of the table at `table`; a missing one is reported.
    fn tls_file<'v>(
        &mut self,
        table: &Value<'_>,
        v: Option<&'v Value<'v>>,
        name: &'static str,
    ) -> Option<Named_<'v>> {
        let Some(v) = v else {
            self.at(table.span(), invalid(format!("needs {name} = \"PATH\"")));
            return None;
        };
        let s = self.string(name, v)?;
        if s.is_empty() || s.contains('\0') {
            self.at(v.span(), invalid(format!("{name} is not a path")));
            return None;
        }
        let path = if s.starts_with('/') {
            PathBuf::from(s)
        } else {
            let dir = match self.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::canonicalize(&dir).unwrap_or(dir).join(s)
        };
        Some((path, v))
    }

    /// `alpn`: protocol names, each 1 to 255 bytes.
    fn alpn(&mut self, v: &Value<'_>) -> Option<Vec<String>> {
        let items = self.string_list("alpn", v)?;
        let mut out = Vec::with_capacity(items.len());
        for (s, span) in items {
            if s.is_empty() || s.len() > 255 {
                self.at(
                    span,
                    invalid(format!("alpn \"{s}\" must be 1 to 255 bytes")),
                );
                return None;
            }
            out.push(s.to_string());
        }
        Some(out)
    }

    /// `sni = { "host" = { cert, key }, ... }`.
    fn sni<'v>(&mut self, v: &'v Value<'v>) -> Option<Vec<SniValue<'v>>> {
        let DeValue::Table(entries) = v.get_ref() else {
            self.wrong_type(
                "sni",
                v,
                "a table like { \"host.example\" = { cert, key } }",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (name, entry) in entries.iter() {
            let host = name.get_ref().as_ref();
            if rustls::pki_types::DnsName::try_from(host).is_err() {
                self.at(
                    name.span(),
                    invalid(format!("sni \"{host}\" is not a host name")),
                );
                ok = false;
                continue;
            }
            let DeValue::Table(pair) = entry.get_ref() else {
                self.wrong_type(
                    host,
                    entry,
                    "a table like { cert = \"PATH\", key = \"PATH\" }",
                );
                ok = false;
                continue;
            };
            self.check_keys(pair, "tls.sni", SNI_KEYS);
            let cert = self.tls_file(entry, field(pair, "cert"), "cert");
            let key = self.tls_file(entry, field(pair, "key"), "key");
            match (cert, key) {
                (Some(c), Some(k)) => out.push((host.to_string(), c, k)),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }
}
